//! API keys in the configuration: where they come from, and the routes that may need one.

use super::ServeConfig;

/// The routes `--api-key-paths` may name. `/v1` stands for every route of KServe's v1
/// protocol, `/v2` for every `/v2/models/...` route of the Open Inference Protocol (its health
/// and server metadata routes stay open to probes).
pub const KEYED_PATHS_ALLOWED: [&str; 12] = [
    "/explain",
    "/predict",
    "/v1",
    "/v2",
    "/info",
    "/labels",
    "/metrics",
    "/health/live",
    "/health/ready",
    "/openapi.yaml",
    "/docs",
    "/",
];

/// An API key: never printed (its `Debug` shows asterisks).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(pub String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

pub(super) fn parse_api_key(s: &str) -> Result<ApiKey, String> {
    Ok(ApiKey(s.trim().to_string()))
}

impl ServeConfig {
    /// The API keys of `--api-keys-file` and `--api-keys` together (empty: no key is needed).
    /// Reads the file; an unreadable file, or one without a key, is an error.
    pub fn api_keys(&self) -> Result<Vec<String>, String> {
        let mut keys: Vec<String> = self
            .api_keys
            .iter()
            .map(|k| k.0.clone())
            .filter(|k| !k.is_empty())
            .collect();
        if let Some(path) = &self.api_keys_file {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let before = keys.len();
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
            if keys.len() == before {
                return Err(format!("{}: no key in it", path.display()));
            }
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_come_from_the_file_and_the_list_and_never_print() {
        let file = std::env::temp_dir().join(format!("gradcam-keys-{}", std::process::id()));
        std::fs::write(&file, "# operators\nalpha-key\n\n  beta-key  \n").unwrap();
        let c = ServeConfig::from_args([
            "--api-keys-file",
            file.to_str().unwrap(),
            "--api-keys",
            "gamma-key,",
        ])
        .unwrap();
        assert_eq!(
            c.api_keys().unwrap(),
            ["gamma-key", "alpha-key", "beta-key"]
        );
        assert!(!format!("{c:?}").contains("gamma-key"));
        std::fs::write(&file, "# none yet\n").unwrap();
        assert!(c.validate().unwrap_err().contains("no key in it"));
        std::fs::remove_file(&file).unwrap();
        let open = ServeConfig::from_args(["--port", "0"]).unwrap();
        assert!(open.api_keys().unwrap().is_empty());
        assert_eq!(open.api_key_paths, ["/explain", "/predict", "/v1", "/v2"]);
        assert!(open.ui);
    }
}
