//! Configuration types: where the model comes from and runs ([`ModelConfig`]) and the `serve`
//! settings ([`ServeConfig`]). Every flag is also an environment variable; `serve` settings are
//! checked together once at start-up so that a bad deployment fails before it binds a port.
//! The command line derives its parser from these types; nothing here depends on it.

mod bench;
mod explain;
mod keys;
mod protocols;
mod rules;

pub use bench::BenchConfig;
pub use explain::{ExplainConfig, SummaryFormat};
use keys::parse_api_key;
pub use keys::{ApiKey, KEYED_PATHS_ALLOWED};
pub use protocols::ProtocolConfig;
pub use rules::{SERVE_RULES, SERVE_RULES_HELP};

use crate::backend::Precision;
use crate::fetch::FetchConfig;
use crate::fetch::addr::{AddressPolicy, Cidr};
use crate::input::{Preprocess, Resize};
use clap::{Args, ValueEnum};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;
use tch::Device;

/// torchvision's ResNet-50 ImageNet-1k checkpoint (IMAGENET1K_V2, top-1 80.858%).
pub const DEFAULT_WEIGHTS_URL: &str = "https://download.pytorch.org/models/resnet50-11ad3fa6.pth";

/// Where the model comes from and where it runs.
#[derive(Debug, Clone, Args)]
pub struct ModelConfig {
    /// Weights: a local .safetensors or PyTorch .pth file, or an http(s) URL downloaded once into
    /// the cache (torchvision's ResNet-50 IMAGENET1K_V2 checkpoint by default).
    #[arg(long, env = "GRADCAM_WEIGHTS", default_value = DEFAULT_WEIGHTS_URL)]
    pub weights: String,
    /// Directory for downloaded weights. Default: $XDG_CACHE_HOME/gradcam-serve or
    /// ~/.cache/gradcam-serve.
    #[arg(long, env = "GRADCAM_CACHE")]
    pub cache_dir: Option<PathBuf>,
    /// Device: auto (first GPU if there is one), cpu, cuda or cuda:N.
    #[arg(long, env = "GRADCAM_DEVICE", default_value = "auto", value_parser = parse_device)]
    pub device: Device,
    /// Number type of the network's trunk: fp32, bf16 (CPU and GPU) or fp16 (GPU only). Maps,
    /// heatmaps and probabilities are computed in f32 whichever it is.
    #[arg(long, env = "GRADCAM_PRECISION", default_value = "fp32", value_parser = parse_precision)]
    pub precision: Precision,
    /// Insist on one member of torchvision's ResNet family (resnet18, 34, 50, 101, 152,
    /// resnext50_32x4d, resnext101_32x8d, resnext101_64x4d, wide_resnet50_2, wide_resnet101_2);
    /// weights that do not fit it are refused, naming the tensors that disagree. By default the
    /// architecture is read from the weights.
    #[arg(long, env = "GRADCAM_ARCH", value_name = "NAME")]
    pub arch: Option<String>,
    /// Keep only the tensors whose names start with this and remove it (`module.`, `model.`,
    /// ...). By default the prefix in front of a whole ResNet is found and removed when there is
    /// exactly one.
    #[arg(long, env = "GRADCAM_WEIGHTS_PREFIX", value_name = "PREFIX")]
    pub weights_prefix: Option<String>,
    /// Class names: one per line, or JSON (a list, or an object from index to name). Default:
    /// ImageNet's for 1000 classes, otherwise class_0, class_1, ...
    #[arg(long, env = "GRADCAM_LABELS", value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// Threads libtorch uses for one batch on the CPU (its intra-op threads). 0: libtorch's
    /// default, one per physical core. On a CPU-only host the model and the picture work
    /// (--image-threads) share the cores; fewer here leaves more to decoding and rendering.
    #[arg(long, env = "GRADCAM_TORCH_THREADS", default_value_t = 0)]
    pub torch_threads: usize,
    /// Side of the square input the model was trained with (the map grows with it).
    #[arg(long, env = "GRADCAM_INPUT_SIZE", default_value_t = crate::input::DEFAULT_SIDE)]
    pub input_size: u32,
    /// How a picture becomes the square input: squash (the whole picture, any aspect ratio) or
    /// center-crop (shorter side to N/0.875, then the centre N x N, as torchvision evaluates).
    #[arg(long, env = "GRADCAM_RESIZE", value_enum, default_value_t = Resize::Squash)]
    pub resize: Resize,
    /// Channel means of the normalisation, R,G,B (ImageNet's by default).
    #[arg(long, env = "GRADCAM_MEAN", value_parser = parse_triple, default_value = "0.485,0.456,0.406")]
    pub mean: [f32; 3],
    /// Channel standard deviations of the normalisation, R,G,B (ImageNet's by default).
    #[arg(long, env = "GRADCAM_STD", value_parser = parse_triple, default_value = "0.229,0.224,0.225")]
    pub std: [f32; 3],
}

/// Parses three comma-separated numbers.
fn parse_triple(s: &str) -> Result<[f32; 3], String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|p| p.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{s:?} is not three comma-separated numbers"))?;
    v.try_into()
        .map_err(|_| format!("{s:?} is not three comma-separated numbers"))
}

impl ModelConfig {
    /// The preprocessing these settings describe, checked.
    pub fn preprocess(&self) -> Result<Preprocess, String> {
        let p = Preprocess {
            size: self.input_size,
            resize: self.resize,
            mean: self.mean,
            std: self.std,
        };
        crate::input::check_preprocess(&p)?;
        Ok(p)
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(|| {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(std::env::temp_dir);
            base.join("gradcam-serve")
        })
    }
}

fn parse_precision(s: &str) -> Result<Precision, String> {
    s.parse()
}

/// Parses `auto`, `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device, String> {
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .map(Device::Cuda)
            .ok_or_else(|| format!("unknown device {s:?}; allowed: auto, cpu, cuda, cuda:N")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable, coloured when on a terminal.
    Pretty,
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "GRADCAM_HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,
    /// Port to listen on (0 picks a free one; the "ready" log line says which).
    #[arg(long, env = "GRADCAM_PORT", default_value_t = 8080)]
    pub port: u16,
    #[command(flatten)]
    pub model: ModelConfig,
    #[command(flatten)]
    pub protocols: ProtocolConfig,
    /// Most images the model thread runs in one batch. On the CPU batching gains little
    /// (measured: 15.2 vs 14.3 images/s at 8 vs 1); on a GPU use 16-32.
    #[arg(long, env = "GRADCAM_MAX_BATCH_SIZE", default_value_t = 8)]
    pub max_batch_size: usize,
    /// After the first queued image, wait at most this many milliseconds for more to batch.
    /// On the CPU a batch gains little, so by default the model thread takes only what is
    /// already queued (under load, what arrived during the previous batch); on a GPU 2-5 ms
    /// pays off.
    #[arg(long, env = "GRADCAM_MAX_BATCH_DELAY_MS", default_value_t = 0)]
    pub max_batch_delay_ms: u64,
    /// Images that may wait for the model; when full, requests are refused at once with 429
    /// and Retry-After.
    #[arg(long, env = "GRADCAM_QUEUE_CAPACITY", default_value_t = 64)]
    pub queue_capacity: usize,
    /// Whole-request deadline in milliseconds (fetch, decode, queue, inference, render).
    /// Queued work past it is dropped before it reaches the model and answered with 504.
    #[arg(long, env = "GRADCAM_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// A connection must deliver its request headers within this many milliseconds.
    #[arg(long, env = "GRADCAM_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// The request body (upload or JSON) must arrive within this many milliseconds once the
    /// handler starts reading it; otherwise 408.
    #[arg(long, env = "GRADCAM_BODY_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_read_timeout_ms: u64,
    /// Connections served at once; further clients wait in the listen backlog.
    #[arg(long, env = "GRADCAM_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Largest request body in bytes (an uploaded image, or the JSON).
    #[arg(long, env = "GRADCAM_BODY_LIMIT", default_value_t = 20 * 1024 * 1024)]
    pub body_limit: usize,
    /// Largest image, in pixels, read from its header before decoding.
    #[arg(long, env = "GRADCAM_MAX_IMAGE_PIXELS", default_value_t = 50_000_000)]
    pub max_image_pixels: u64,
    /// Pixels that may be decoding at once, over all requests (each reserves its image's pixel
    /// count, read from the header, before decoding). About 7 bytes per pixel at the peak of a
    /// decode: the default, 100 000 000 (two 50 MP images), bounds decoding to about 700 MB.
    #[arg(
        long,
        env = "GRADCAM_MAX_INFLIGHT_PIXELS",
        default_value_t = 100_000_000
    )]
    pub max_inflight_pixels: u64,
    /// How long a request waits for room in the pixel budget before it is refused with 503
    /// `memory_busy` and Retry-After.
    #[arg(long, env = "GRADCAM_INFLIGHT_WAIT_MS", default_value_t = 2_000)]
    pub inflight_wait_ms: u64,
    /// Requests that may decode, preprocess or render on the blocking pool at once (others
    /// wait their turn, within their deadline). 0: one per core the process may use. The model
    /// thread's libtorch work is not counted here (see --torch-threads); on a CPU-only host the
    /// two share the cores, on a GPU host this is the whole of the host's part.
    #[arg(long, env = "GRADCAM_IMAGE_THREADS", default_value_t = 0)]
    pub image_threads: usize,
    /// Largest longer side of the overlay PNG; requests may ask for less.
    #[arg(long, env = "GRADCAM_MAX_OVERLAY_SIDE", default_value_t = 1024)]
    pub max_overlay_side: u32,
    /// Largest image fetched from a URL, in bytes.
    #[arg(long, env = "GRADCAM_FETCH_MAX_BYTES", default_value_t = 20 * 1024 * 1024)]
    pub fetch_max_bytes: u64,
    /// Timeout for fetching an image URL, in milliseconds.
    #[arg(long, env = "GRADCAM_FETCH_TIMEOUT_MS", default_value_t = 10_000)]
    pub fetch_timeout_ms: u64,
    /// Addresses or CIDR blocks the URL fetcher may reach even though they are private,
    /// loopback or otherwise internal (comma-separated; off by default).
    #[arg(long, env = "GRADCAM_FETCH_ALLOW", value_delimiter = ',')]
    pub fetch_allow: Vec<Cidr>,
    /// Ports the URL fetcher may connect to (comma-separated).
    #[arg(
        long,
        env = "GRADCAM_FETCH_PORTS",
        value_delimiter = ',',
        default_value = "80,443"
    )]
    pub fetch_ports: Vec<u16>,
    /// Origins allowed by CORS, comma-separated; `*` allows any; empty allows none.
    #[arg(
        long,
        env = "GRADCAM_CORS_ORIGINS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub cors_origins: Vec<String>,
    /// After SIGTERM or SIGINT, readiness answers 503 at once but the server keeps accepting
    /// and serving for this many milliseconds, so that a load balancer that learns about the
    /// change late (Kubernetes endpoints, a health-checking proxy) sends no request to a closed
    /// port; then it stops accepting and drains. 5 s covers a few readiness-probe periods of
    /// propagation; 0 stops accepting at once.
    #[arg(long, env = "GRADCAM_DRAIN_DELAY_MS", default_value_t = 5_000)]
    pub drain_delay_ms: u64,
    /// After the drain delay, wait at most this many milliseconds for queued and running
    /// requests before exiting.
    #[arg(long, env = "GRADCAM_DRAIN_TIMEOUT_MS", default_value_t = 30_000)]
    pub drain_timeout_ms: u64,
    /// Serve the playground at `/` (`false` answers `/` with 404; `/docs` stays).
    #[arg(long, env = "GRADCAM_UI", default_value_t = true, action = clap::ArgAction::Set)]
    pub ui: bool,
    /// A file of API keys, one per line (blank lines and lines starting with `#` ignored).
    /// With keys set, the routes of --api-key-paths need `Authorization: Bearer KEY`.
    #[arg(long, env = "GRADCAM_API_KEYS_FILE", value_name = "FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// API keys, comma-separated, added to the file's. Prefer the variable or the file: a
    /// flag's value shows in the process list.
    #[arg(
        long,
        env = "GRADCAM_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true,
        value_parser = parse_api_key
    )]
    pub api_keys: Vec<ApiKey>,
    /// The routes that need a key when keys are set (comma-separated); the others stay open.
    #[arg(
        long,
        env = "GRADCAM_API_KEY_PATHS",
        value_delimiter = ',',
        default_value = "/explain,/predict,/v1,/v2"
    )]
    pub api_key_paths: Vec<String>,
    /// Log format.
    #[arg(long, env = "GRADCAM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
}

impl ServeConfig {
    /// The number of requests that may work on pictures at once (`--image-threads`, or the
    /// cores this process may use).
    pub fn image_threads(&self) -> usize {
        match self.image_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }

    /// Settings from `serve`'s flags, the rest from `GRADCAM_*` variables and defaults: for
    /// embedding the server and for tests.
    pub fn from_args<I: IntoIterator<Item = S>, S: Into<std::ffi::OsString> + Clone>(
        args: I,
    ) -> Result<Self, clap::Error> {
        use clap::Parser;
        #[derive(Parser)]
        struct Serve {
            #[command(flatten)]
            config: ServeConfig,
        }
        let args = std::iter::once(std::ffi::OsString::from("serve"))
            .chain(args.into_iter().map(Into::into));
        Serve::try_parse_from(args).map(|s| s.config)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn max_batch_delay(&self) -> Duration {
        Duration::from_millis(self.max_batch_delay_ms)
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }

    pub fn drain_delay(&self) -> Duration {
        Duration::from_millis(self.drain_delay_ms)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// Checks [`SERVE_RULES`] together; the message states the first rule broken and the
    /// values that break it.
    pub fn validate(&self) -> Result<(), String> {
        let cors_ok = self
            .cors()
            .iter()
            .all(|o| o == "*" || o.starts_with("http://") || o.starts_with("https://"));
        let checks: [(bool, String); SERVE_RULES.len()] = [
            (self.max_batch_size >= 1, format!("{}", self.max_batch_size)),
            (self.queue_capacity >= 1, format!("{}", self.queue_capacity)),
            (
                self.queue_capacity >= self.max_batch_size,
                format!(
                    "queue capacity {}, max batch size {}: batches would never fill",
                    self.queue_capacity, self.max_batch_size
                ),
            ),
            (
                self.request_timeout_ms >= 100,
                format!("{} ms", self.request_timeout_ms),
            ),
            (
                self.max_batch_delay_ms < self.request_timeout_ms,
                format!(
                    "max batch delay {} ms, request timeout {} ms",
                    self.max_batch_delay_ms, self.request_timeout_ms
                ),
            ),
            (
                self.fetch_timeout_ms < self.request_timeout_ms,
                format!(
                    "fetch timeout {} ms, request timeout {} ms",
                    self.fetch_timeout_ms, self.request_timeout_ms
                ),
            ),
            (
                self.body_limit >= 1024,
                format!("{} bytes", self.body_limit),
            ),
            (
                self.max_image_pixels >= 1,
                format!("{}", self.max_image_pixels),
            ),
            (
                self.max_inflight_pixels >= 1024,
                format!("{}", self.max_inflight_pixels),
            ),
            (
                (16..=8192).contains(&self.max_overlay_side),
                format!("{}", self.max_overlay_side),
            ),
            (
                self.max_connections >= 1
                    && self.header_read_timeout_ms >= 1
                    && self.body_read_timeout_ms >= 1,
                format!(
                    "max connections {}, header read timeout {} ms, body read timeout {} ms",
                    self.max_connections, self.header_read_timeout_ms, self.body_read_timeout_ms
                ),
            ),
            (cors_ok, self.cors().join(",")),
            match self.api_keys() {
                Ok(_) => (true, String::new()),
                Err(e) => (false, e),
            },
            (
                self.api_key_paths
                    .iter()
                    .all(|p| KEYED_PATHS_ALLOWED.contains(&p.as_str())),
                self.api_key_paths.join(","),
            ),
            self.protocols.check(),
        ];
        match checks.iter().zip(SERVE_RULES).find(|((ok, _), _)| !ok) {
            Some(((_, got), rule)) => Err(format!("{rule} (got {got})")),
            None => Ok(()),
        }
    }

    /// The URL fetcher's settings.
    pub fn fetch_config(&self) -> FetchConfig {
        FetchConfig {
            timeout: Duration::from_millis(self.fetch_timeout_ms),
            max_bytes: self.fetch_max_bytes,
            allowed_ports: self.fetch_ports.clone(),
            policy: AddressPolicy {
                allow: self.fetch_allow.clone(),
            },
        }
    }

    /// Allowed CORS origins without empty entries.
    pub fn cors(&self) -> Vec<String> {
        self.cors_origins
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_start_up_rule_is_checked_and_named_in_readme() {
        let readme = include_str!("../README.md");
        for rule in SERVE_RULES {
            assert!(
                readme.contains(rule),
                "README.md does not name the rule {rule:?}"
            );
            assert!(SERVE_RULES_HELP.contains(rule));
        }
        let ok = ServeConfig::from_args(["--port", "0"]).unwrap();
        assert_eq!(ok.validate(), Ok(()));
        // One setting that breaks each rule, in the order of SERVE_RULES.
        let breaking: [&[&str]; SERVE_RULES.len()] = [
            &["--max-batch-size", "0", "--queue-capacity", "0"],
            &["--queue-capacity", "0"],
            &["--queue-capacity", "4", "--max-batch-size", "8"],
            &["--request-timeout-ms", "99"],
            &["--max-batch-delay-ms", "30000"],
            &["--fetch-timeout-ms", "30000"],
            &["--body-limit", "1000"],
            &["--max-image-pixels", "0"],
            &["--max-inflight-pixels", "1000"],
            &["--max-overlay-side", "8193"],
            &["--max-connections", "0"],
            &["--cors-origins", "app.example"],
            &["--api-keys-file", "/nonexistent/keys"],
            &["--api-key-paths", "/explain,/secret"],
            &["--model-name", "resnet/50"],
        ];
        for (args, rule) in breaking.iter().zip(SERVE_RULES) {
            let e = ServeConfig::from_args(*args)
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(e.starts_with(rule), "{args:?}: {e}");
        }
    }

    #[test]
    fn devices_parse_and_bad_ones_say_what_is_allowed() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_device("cuda").unwrap(), Device::Cuda(0));
        assert_eq!(parse_device("cuda:1").unwrap(), Device::Cuda(1));
        assert!(parse_device("tpu").unwrap_err().contains("cuda:N"));
    }
}
