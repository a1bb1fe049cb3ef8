//! The settings of `gradcam-serve explain` (offline: files in, overlays and maps out).

use super::ModelConfig;
use crate::backend::Layer;
use crate::cam::Method;
use crate::render::Colormap;
use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// `gradcam-serve explain`: image files in, overlays and maps out.
#[derive(Debug, Clone, Args)]
pub struct ExplainConfig {
    /// Image files, directories (searched recursively; image files are told by content) and
    /// glob patterns (quoted: 'photos/**/*.jpg').
    #[arg(
        required_unless_present = "from_list",
        help = format!(
            "Image files ({}), directories (searched recursively, image files told by \
             content) and quoted glob patterns ('photos/**/*.jpg')",
            crate::input::SUPPORTED_NAMES
        )
    )]
    pub images: Vec<PathBuf>,
    /// More inputs, one path per line, from FILE (`-`: standard input).
    #[arg(long, value_name = "FILE")]
    pub from_list: Option<PathBuf>,
    /// Stop at the first picture that cannot be read or decoded (by default it is reported and
    /// skipped, and the exit status is 2).
    #[arg(long)]
    pub strict: bool,
    /// Pictures per forward and backward pass (default 4 on the CPU, 32 on a GPU).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Write one record per picture to FILE: path, top classes, explained class, map
    /// statistics, files written (or why it was skipped).
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
    /// jsonl (one JSON object per line) or csv.
    #[arg(long, default_value = "jsonl")]
    pub summary_format: SummaryFormat,
    /// Do not write overlay PNGs.
    #[arg(long)]
    pub no_overlay: bool,
    /// Do not write a JSON document per picture.
    #[arg(long)]
    pub no_json: bool,
    /// Skip pictures whose outputs (and summary record) an earlier run completed.
    #[arg(long)]
    pub resume: bool,
    /// No progress display.
    #[arg(long)]
    pub quiet: bool,
    /// Decoded pixels in flight across the decoding threads (as `serve`'s budget; a byte of a
    /// file counts as a third of a pixel).
    #[arg(long, default_value_t = 100_000_000)]
    pub max_inflight_pixels: u64,
    #[command(flatten)]
    pub model: ModelConfig,
    /// Explain this class index (0-999 for ImageNet) instead of the top-ranked classes.
    #[arg(long = "class")]
    pub class: Option<i64>,
    /// Explain the k best classes (from the same forward pass).
    #[arg(long, default_value_t = 1)]
    pub top_k: usize,
    /// Also score each map's faithfulness: the class's probability with the map's most salient
    /// 20% of the picture blurred out, and with only that part kept (one more forward pass).
    #[arg(long)]
    pub faithfulness: bool,
    /// Layer whose output is explained: layer1, layer2, layer3 or layer4.
    #[arg(long, default_value = "layer4")]
    pub layer: Layer,
    /// gradcam, hirescam, gradcam++, xgradcam or layercam.
    #[arg(long, default_value = "gradcam")]
    pub method: Method,
    /// jet, turbo, viridis, inferno or gray.
    #[arg(long, default_value = "jet")]
    pub colormap: Colormap,
    /// Weight of the heatmap colour in the overlay, 0 to 1.
    #[arg(long, default_value_t = 0.4)]
    pub alpha: f32,
    /// The overlay's longer side is at most this many pixels.
    #[arg(long, default_value_t = 1024)]
    pub max_side: u32,
    /// Output directory for IMAGE.png (and IMAGE.N.png for the N-th further class) and
    /// IMAGE.json, where IMAGE is the picture's path below the directory or pattern it was
    /// found in, without extension (with it where two pictures would share a name).
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
}

/// The format of `explain --summary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SummaryFormat {
    /// One JSON object per line.
    Jsonl,
    /// A header row, then one row per picture.
    Csv,
}
