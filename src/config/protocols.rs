//! Settings of the inference protocols the server speaks besides its own API: KServe's v1 and
//! the Open Inference Protocol (v2).

use clap::Args;

#[derive(Debug, Clone, Default, Args)]
pub struct ProtocolConfig {
    /// The model's name in the inference protocols (`/v1/models/NAME`, `/v2/models/NAME`); by
    /// default the architecture read from the weights (`resnet50`, `resnet18`, ...).
    #[arg(long, env = "GRADCAM_MODEL_NAME", value_name = "NAME")]
    pub model_name: Option<String>,

    /// Serve the Open Inference Protocol over gRPC (and `grpc.health.v1`) on this port, beside
    /// the HTTP port, on the same host; off unless set (0: any free port, named in the "ready"
    /// log line).
    #[arg(long, env = "GRADCAM_GRPC_PORT", value_name = "PORT")]
    pub grpc_port: Option<u16>,
}

impl ProtocolConfig {
    /// The rule on the model name, as [`super::ServeConfig::validate`] checks it.
    pub(super) fn check(&self) -> (bool, String) {
        match &self.model_name {
            None => (true, String::new()),
            Some(name) => (valid_name(name), name.clone()),
        }
    }

    /// The name the protocols use: the configured one, or `architecture`.
    pub fn name<'a>(&'a self, architecture: &'a str) -> &'a str {
        self.model_name.as_deref().unwrap_or(architecture)
    }
}

/// 1 to 64 of `A-Z a-z 0-9 . _ -`: a path segment that needs no escaping anywhere.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}
