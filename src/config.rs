//! `gradcam-serve serve` configuration: every flag is also an environment variable, checked
//! once at start-up so that a bad deployment fails before it binds a port.

use crate::cli::ModelArgs;
use clap::{Args, ValueEnum};
use std::net::IpAddr;
use std::time::Duration;

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
    pub model: ModelArgs,
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
    pub fetch_allow: Vec<crate::http::addr::Cidr>,
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
    /// After SIGTERM or SIGINT, wait at most this many milliseconds for queued and running
    /// requests before exiting.
    #[arg(long, env = "GRADCAM_DRAIN_TIMEOUT_MS", default_value_t = 30_000)]
    pub drain_timeout_ms: u64,
    /// Log format.
    #[arg(long, env = "GRADCAM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
}

impl ServeConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn max_batch_delay(&self) -> Duration {
        Duration::from_millis(self.max_batch_delay_ms)
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// Cross-field checks; the message names the setting and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        let checks: [(bool, String); 8] = [
            (
                self.max_batch_size >= 1,
                "max batch size must be at least 1".into(),
            ),
            (
                self.queue_capacity >= 1,
                "queue capacity must be at least 1".into(),
            ),
            (
                self.queue_capacity >= self.max_batch_size,
                format!(
                    "queue capacity ({}) must be at least the max batch size ({}), or batches never fill",
                    self.queue_capacity, self.max_batch_size
                ),
            ),
            (
                self.request_timeout_ms >= 100,
                "request timeout must be at least 100 ms".into(),
            ),
            (
                self.max_batch_delay_ms < self.request_timeout_ms,
                "max batch delay must be shorter than the request timeout".into(),
            ),
            (
                self.body_limit >= 1024,
                "body limit must be at least 1024 bytes".into(),
            ),
            (
                self.max_image_pixels >= 1,
                "max image pixels must be at least 1".into(),
            ),
            (
                (16..=8192).contains(&self.max_overlay_side),
                format!(
                    "max overlay side {} is out of range; allowed: 16..=8192",
                    self.max_overlay_side
                ),
            ),
        ];
        if let Some((_, msg)) = checks.into_iter().find(|(ok, _)| !ok) {
            return Err(msg);
        }
        if self.max_connections == 0
            || self.header_read_timeout_ms == 0
            || self.body_read_timeout_ms == 0
        {
            return Err(
                "max connections and the header and body read timeouts must be at least 1".into(),
            );
        }
        if self.fetch_timeout_ms >= self.request_timeout_ms {
            return Err("fetch timeout must be shorter than the request timeout".into());
        }
        if self
            .cors()
            .iter()
            .any(|o| o != "*" && !(o.starts_with("http://") || o.starts_with("https://")))
        {
            return Err("CORS origins must be `*` or start with http:// or https://".into());
        }
        Ok(())
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
