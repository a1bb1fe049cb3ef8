//! The settings of `gradcam-serve bench` (the engine alone: no HTTP, no decoding).

use super::ModelConfig;
use crate::backend::Layer;
use crate::cam::Method;
use clap::Args;
use std::path::PathBuf;

/// `gradcam-serve bench`: explains synthetic batches back to back on the configured device and
/// precision and reports images per second and batch latency for each batch size.
#[derive(Debug, Clone, Args)]
pub struct BenchConfig {
    #[command(flatten)]
    pub model: ModelConfig,
    /// Batch sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub batches: Vec<usize>,
    /// Seconds of measurement per batch size (after one untimed batch).
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Layer whose output is explained.
    #[arg(long, default_value = "layer4")]
    pub layer: Layer,
    /// CAM method.
    #[arg(long, default_value = "gradcam")]
    pub method: Method,
    /// Write the figures as JSON to FILE too (a table goes to standard output either way).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}
