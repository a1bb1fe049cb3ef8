//! The rules `serve` checks at start-up, written once for the check and for `serve --help`.

/// Writes the start-up rules once: the list that [`super::ServeConfig::validate`] checks in order, and
/// the text `serve --help` prints after the flags. README.md names every rule (a unit test
/// checks it).
macro_rules! rules {
    ($($rule:literal),+ $(,)?) => {
        /// The cross-field and range rules `serve` checks at start-up, in order.
        pub const SERVE_RULES: [&str; [$($rule),+].len()] = [$($rule),+];
        /// [`SERVE_RULES`] as `serve --help` prints them.
        pub const SERVE_RULES_HELP: &str =
            concat!("Checked at start-up:", $("\n  - ", $rule),+);
    };
}

rules![
    "max batch size must be at least 1",
    "queue capacity must be at least 1",
    "queue capacity must be at least the max batch size",
    "request timeout must be at least 100 ms",
    "max batch delay must be shorter than the request timeout",
    "fetch timeout must be shorter than the request timeout",
    "body limit must be at least 1024 bytes",
    "max image pixels must be at least 1",
    "max inflight pixels must be at least 1024",
    "max overlay side must be within 16..=8192",
    "max connections and the header and body read timeouts must be at least 1",
    "CORS origins must be `*` or start with http:// or https://",
    "the API keys file must be readable and hold at least one key",
    "API key paths must be routes of the server: /explain, /predict, /v1, /v2, /info, /labels, /metrics, /health/live, /health/ready, /openapi.yaml, /docs, /",
    "the model name must be 1 to 64 letters, digits, `.`, `_` or `-`",
];
