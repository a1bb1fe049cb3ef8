//! The JSON answers, as types: each matches its schema in openapi.yaml (`ExplainResponse`,
//! `PredictResponse`, `Status`, `Info`, `Labels`), so that a change to one shows up in review
//! next to the other, and the contract test checks them against each other.

use crate::backend::{Description, Explanation, LibtorchInfo, Precision, Prediction, WeightsInfo};
use crate::config::ServeConfig;
use crate::input::{Preprocess, Region};
use crate::render::PictureFormat;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct ImageInfo {
    pub width: u32,
    pub height: u32,
    pub format: String,
    /// The rectangle of the picture the network saw and the maps cover.
    pub map_region: Region,
}

impl ImageInfo {
    pub fn of(p: &super::explain::Prepared) -> Self {
        ImageInfo {
            width: p.width,
            height: p.height,
            format: format!("{:?}", p.format).to_lowercase(),
            map_region: p.region,
        }
    }
}

/// Milliseconds spent in each stage of one request.
#[derive(Debug, Serialize, Default, Clone)]
pub struct Timings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch_ms: Option<f64>,
    pub decode_ms: f64,
    pub queue_ms: f64,
    pub inference_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub render_ms: Option<f64>,
    pub total_ms: f64,
    pub batch_size: usize,
}

#[derive(Serialize)]
pub struct ExplanationBody<'a> {
    #[serde(flatten)]
    pub explanation: &'a Explanation,
    /// The overlay, base64, in the one of these that `overlay_format` names; none with
    /// `overlay=false`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay_png: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay_jpeg: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay_webp: Option<String>,
    /// `heatmap_image=true`: the colour-mapped map alone, RGBA PNG with alpha from the map.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heatmap_png: Option<String>,
}

impl<'a> ExplanationBody<'a> {
    pub fn new(explanation: &'a Explanation) -> Self {
        Self {
            explanation,
            overlay_png: None,
            overlay_jpeg: None,
            overlay_webp: None,
            heatmap_png: None,
        }
    }

    /// The overlay (base64) in the member for its format.
    pub fn set_overlay(&mut self, format: PictureFormat, base64: String) {
        let member = match format {
            PictureFormat::Png => &mut self.overlay_png,
            PictureFormat::Jpeg => &mut self.overlay_jpeg,
            PictureFormat::Webp => &mut self.overlay_webp,
        };
        *member = Some(base64);
    }
}

/// `/explain`'s answer: `/predict`'s, plus the explanations.
#[derive(Serialize)]
pub struct ExplainBody<'a> {
    #[serde(flatten)]
    pub answer: PredictBody<'a>,
    pub explanations: Vec<ExplanationBody<'a>>,
}

#[derive(Serialize)]
pub struct PredictBody<'a> {
    pub model: &'a str,
    pub device: &'a str,
    /// The number type the network's trunk ran in for this answer.
    pub precision: Precision,
    pub image: ImageInfo,
    pub timings: Timings,
    pub predictions: &'a [Prediction],
}

/// `/health/live` and `/health/ready` when all is well.
#[derive(Debug, Serialize)]
pub struct StatusBody {
    pub status: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Label<'a> {
    pub index: usize,
    pub label: &'a str,
}

#[derive(Debug, Serialize)]
pub struct LabelsBody<'a> {
    pub labels: Vec<Label<'a>>,
}

/// `/info`: what runs, and the limits a client must respect.
#[derive(Debug, Serialize)]
pub struct InfoBody {
    pub model: String,
    /// The architecture, one of torchvision's ResNet family.
    pub architecture: String,
    pub classes: usize,
    /// Where the class names come from: a labels file, `imagenet` or `generic`.
    pub labels: String,
    /// The preprocessing the model expects.
    pub input: Preprocess,
    pub weights: WeightsInfo,
    pub device: String,
    /// The number type of the network's trunk (maps and probabilities are f32 in all).
    pub precision: Precision,
    pub versions: Versions,
    pub limits: Limits,
    pub batching: Batching,
}

#[derive(Debug, Serialize)]
pub struct Versions {
    pub gradcam_serve: &'static str,
    /// The libtorch release in use at run time, e.g. `2.11.0+cu130`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub libtorch: Option<String>,
    /// Where it was loaded from, what the binary was built for, its CUDA version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub libtorch_detail: Option<LibtorchInfo>,
}

#[derive(Debug, Serialize)]
pub struct Limits {
    pub body_limit_bytes: usize,
    pub max_image_pixels: u64,
    pub max_overlay_side: u32,
    pub fetch_max_bytes: u64,
    pub fetch_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub max_top_k: usize,
}

#[derive(Debug, Serialize)]
pub struct Batching {
    pub max_batch_size: usize,
    pub max_batch_delay_ms: u64,
    pub queue_capacity: usize,
}

impl InfoBody {
    pub fn new(backend: &Description, config: &ServeConfig) -> Self {
        InfoBody {
            model: backend.model.clone(),
            architecture: backend.model.clone(),
            classes: backend.classes,
            labels: backend.labels_source.clone(),
            input: backend.input,
            weights: backend.weights.clone(),
            device: backend.device.clone(),
            precision: backend.precision,
            versions: Versions {
                gradcam_serve: env!("CARGO_PKG_VERSION"),
                libtorch: backend.libtorch.as_ref().map(|l| l.version.clone()),
                libtorch_detail: backend.libtorch.clone(),
            },
            limits: Limits {
                body_limit_bytes: config.body_limit,
                max_image_pixels: config.max_image_pixels,
                max_overlay_side: config.max_overlay_side,
                fetch_max_bytes: config.fetch_max_bytes,
                fetch_timeout_ms: config.fetch_timeout_ms,
                request_timeout_ms: config.request_timeout_ms,
                max_top_k: crate::backend::MAX_TOP_K,
            },
            batching: Batching {
                max_batch_size: config.max_batch_size,
                max_batch_delay_ms: config.max_batch_delay_ms,
                queue_capacity: config.queue_capacity,
            },
        }
    }
}
