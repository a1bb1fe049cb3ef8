//! The seam between the engine and whatever runs the network.
//!
//! The engine (queue, batching, deadlines, fault recovery) talks to a [`Backend`]: it hands over
//! batches of preprocessed images and gets back logits or explanations. The libtorch ResNet (in
//! the `model` module) is one implementation; in-process tests use a small deterministic one.
//! Nothing here knows about
//! libtorch or HTTP: these are the request and result types both sides share.

mod labels;

use crate::input::{INPUT_SIDE, Preprocess};
use crate::names::named_enum;
pub use labels::Labels;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// Values in one preprocessed image at the default input size: `[3, 224, 224]`, planar,
/// normalised. A backend's own size is in its [`Description::input`].
pub const INPUT_LEN: usize = 3 * (INPUT_SIDE as usize) * (INPUT_SIDE as usize);
/// Classes of ImageNet-1k, the classifier's output size of the default model.
pub const NUM_CLASSES: i64 = 1000;
/// The share of the picture that the faithfulness score blurs out (or keeps).
pub const FAITHFULNESS_FRACTION: f32 = 0.2;
/// At most this many classes are explained per image (each costs one partial backward pass).
pub const MAX_TOP_K: usize = 10;
/// Answers list at least this many predictions.
pub const MIN_PREDICTIONS: usize = 5;

/// The 1000 ImageNet-1k class names in the order of torchvision's checkpoints.
pub fn labels() -> &'static [&'static str] {
    static LABELS: OnceLock<Vec<&'static str>> = OnceLock::new();
    LABELS.get_or_init(|| include_str!("imagenet_classes.txt").lines().collect())
}

named_enum! {
    /// A stage of the ResNet whose output can be explained.
    pub enum Layer("layer") {
        Layer1 => "layer1",
        Layer2 => "layer2",
        Layer3 => "layer3",
        /// The last bottleneck's output, as in the seed.
        #[default]
        Layer4 => "layer4",
    }
}

named_enum! {
    /// The number type the network's trunk runs in. The map arithmetic, the returned heatmaps
    /// and the probabilities are f32 whatever it is.
    pub enum Precision("precision") {
        #[default]
        Fp32 => "fp32",
        /// bfloat16: f32's range with 8 bits of mantissa; fast on CPUs with AVX-512 BF16 and on
        /// GPUs.
        Bf16 => "bf16",
        /// IEEE half precision: GPUs only.
        Fp16 => "fp16",
    }
}

/// The libtorch a backend runs on, as found at run time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LibtorchInfo {
    /// The version of the libtorch actually loaded, e.g. `2.11.0+cu130`.
    pub version: String,
    /// The directory it was loaded from.
    pub directory: String,
    /// The version this binary was built against.
    pub built_for: String,
    /// The CUDA version the libtorch was built with, when it is a CUDA build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cuda: Option<String>,
}

impl Layer {
    /// 0 for `layer1` up to 3 for `layer4`.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What to explain for one image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ExplainOptions {
    /// Explain this class instead of the top-ranked ones.
    pub class: Option<i64>,
    /// Explain the `top_k` best classes (ignored when `class` is given).
    pub top_k: usize,
    pub layer: Layer,
    pub method: crate::cam::Method,
    /// Also score how much the class depends on the map's most salient part ([`Faithfulness`]).
    #[serde(default)]
    pub faithfulness: bool,
}

impl Default for ExplainOptions {
    fn default() -> Self {
        Self {
            class: None,
            top_k: 1,
            layer: Layer::Layer4,
            method: crate::cam::Method::GradCam,
            faithfulness: false,
        }
    }
}

impl ExplainOptions {
    /// Checks the options a client can get wrong against a model with `classes` classes; the
    /// message says what is allowed.
    /// `usize::MAX` stands for a model not loaded yet: any class index is then in range.
    pub fn validate(&self, classes: usize) -> Result<(), String> {
        let classes = i64::try_from(classes).unwrap_or(i64::MAX);
        if let Some(c) = self.class
            && !(0..classes).contains(&c)
        {
            return Err(format!(
                "class {c} is out of range; allowed: 0..={}",
                classes - 1
            ));
        }
        let max_top_k = MAX_TOP_K.min(classes as usize);
        if !(1..=max_top_k).contains(&self.top_k) {
            return Err(format!(
                "top_k {} is out of range; allowed: 1..={max_top_k}",
                self.top_k
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub index: i64,
    pub label: String,
    pub probability: f32,
    pub logit: f32,
}

/// A raw class-activation map at the layer's resolution.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Heatmap {
    pub width: usize,
    pub height: usize,
    /// Row-major raw values, before the ReLU and scaling.
    pub data: Vec<f32>,
    pub min: f32,
    pub max: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub class_index: i64,
    pub label: String,
    pub layer: Layer,
    pub method: crate::cam::Method,
    pub heatmap: Heatmap,
    /// `relu(raw) / max`, row-major, same size as `heatmap`.
    pub normalized: Vec<f32>,
    /// No positive evidence at all: `normalized` is all zeros.
    pub empty: bool,
    /// Asked for with [`ExplainOptions::faithfulness`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faithfulness: Option<Faithfulness>,
}

/// How much the class's probability depends on the most salient part of the picture by the
/// map: the top [`FAITHFULNESS_FRACTION`] of the network's input, ranked by the map upsampled to
/// it, is blurred out ("deleted") or alone kept sharp ("kept"). A map that points at the
/// evidence gives a large drop when that part is deleted and keeps most of the probability
/// when only that part is kept.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Faithfulness {
    /// The share of the input blurred out or kept.
    pub fraction: f32,
    /// The class's probability on the picture as it is.
    pub probability: f32,
    /// With the salient part blurred out.
    pub deleted_probability: f32,
    /// With everything but the salient part blurred out.
    pub kept_probability: f32,
    /// `probability - deleted_probability`: higher is more faithful.
    pub deletion_drop: f32,
}

impl Explanation {
    /// Builds an explanation from a raw map: normalisation and labelling in one place for
    /// every backend.
    pub fn from_raw(
        class: i64,
        label: String,
        layer: Layer,
        method: crate::cam::Method,
        raw: Vec<f32>,
        width: usize,
        height: usize,
    ) -> Self {
        let norm = crate::cam::normalise(&raw);
        Explanation {
            class_index: class,
            label,
            layer,
            method,
            heatmap: Heatmap {
                width,
                height,
                data: raw,
                min: norm.min,
                max: norm.max,
            },
            normalized: norm.map,
            empty: norm.empty,
            faithfulness: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExplainResult {
    pub predictions: Vec<Prediction>,
    pub explanations: Vec<Explanation>,
    /// Every class's probability, in class order (the inference protocols' `probabilities`).
    #[serde(skip)]
    pub probabilities: Vec<f32>,
}

/// Softmax of one row of logits, in class order.
pub fn probabilities(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let denom: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    logits
        .iter()
        .map(|&l| (f64::from(l - max).exp() / denom) as f32)
        .collect()
}

/// The `k` best classes of one row of logits, with softmax probabilities.
pub fn top_predictions(logits: &[f32], k: usize, labels: &Labels) -> Vec<Prediction> {
    let probabilities = probabilities(logits);
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|i| Prediction {
            index: i as i64,
            label: labels.get(i).to_string(),
            probability: probabilities[i],
            logit: logits[i],
        })
        .collect()
}

/// The targets of one image: the requested class, or the `top_k` best.
pub fn targets(options: &ExplainOptions, predictions: &[Prediction]) -> Vec<i64> {
    match options.class {
        Some(c) => vec![c],
        None => predictions
            .iter()
            .take(options.top_k)
            .map(|p| p.index)
            .collect(),
    }
}

/// Where the weights came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeightsInfo {
    /// What the operator asked for: a path or a URL.
    pub source: String,
    pub sha256: String,
}

/// What a backend is, for `/info`, the start-up log and answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Description {
    /// The model's name in answers: the architecture, e.g. `resnet50`.
    pub model: String,
    /// `cpu` or `cuda:N`.
    pub device: String,
    pub classes: usize,
    /// The class names, `classes` of them.
    #[serde(skip)]
    pub labels: Labels,
    /// Where the labels came from: a file, `imagenet`, or `generic` (`class_0`, ...).
    pub labels_source: String,
    /// The preprocessing the model expects.
    pub input: Preprocess,
    pub weights: WeightsInfo,
    /// The number type of the network's trunk.
    pub precision: Precision,
    /// The libtorch in use, when the backend runs on libtorch.
    pub libtorch: Option<LibtorchInfo>,
}

/// Why a backend call failed. Out of memory is told apart because it is the load's fault, not
/// the request's: the engine splits the batch and the client may retry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// The GPU context is lost: every later call in this process would fail the same way, so
    /// the engine ends its model thread (liveness fails and the instance is restarted).
    #[error("the GPU context is lost, the process must restart: {0}")]
    DeviceLost(String),
    #[error("{0}")]
    Failed(String),
}

impl BackendError {
    /// Classifies a runtime's error message: CUDA says "CUDA out of memory"; the CPU allocator
    /// says "not enough memory" or "can't allocate memory"; CUDA's sticky errors lose the
    /// context ([`device_lost`]).
    pub fn from_message(message: String) -> Self {
        if device_lost(&message) {
            return BackendError::DeviceLost(message);
        }
        let lower = message.to_ascii_lowercase();
        let oom = [
            "out of memory",
            "not enough memory",
            "can't allocate memory",
        ]
        .iter()
        .any(|m| lower.contains(m));
        if oom {
            BackendError::OutOfMemory(message)
        } else {
            BackendError::Failed(message)
        }
    }
}

/// Whether a runtime's error message says the GPU context is lost: CUDA's sticky errors (an
/// illegal address, a failed launch, a device-side assert) poison the context, so every later
/// call in the process fails the same way and only a new process recovers.
fn device_lost(message: &str) -> bool {
    const STICKY: [&str; 6] = [
        "illegal memory access",
        "illegal instruction",
        "misaligned address",
        "unspecified launch failure",
        "device-side assert",
        "uncorrectable ecc error",
    ];
    let lower = message.to_ascii_lowercase();
    lower.contains("cuda error") && STICKY.iter().any(|m| lower.contains(m))
}

/// A panic payload that means the backend cannot go on at all: the engine lets its thread end
/// (liveness turns false) instead of rebuilding. Any other panic fails only its batch.
#[derive(Debug)]
pub struct Fatal(pub String);

/// Runs the network. Calls come from one thread (the engine's model thread, which also built
/// the backend, so a GPU context belongs to it); a backend need not be `Send` or `Sync`.
pub trait Backend {
    fn describe(&self) -> Description;

    /// The class names, for labelling predictions on the model thread without building a
    /// whole [`Description`] per batch.
    fn labels(&self) -> Labels {
        self.describe().labels
    }

    /// Logits `[N, classes]` for a batch of preprocessed images ([`INPUT_LEN`] values each).
    fn logits(&self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, BackendError>;

    /// Explains a batch; entries may differ in options. Results come back in input order and
    /// are the same as if each image had been explained alone.
    fn explain(
        &self,
        items: &[(&[f32], ExplainOptions)],
    ) -> Result<Vec<ExplainResult>, BackendError>;

    /// Explains blank images, so that the first request does not pay for lazy initialisation
    /// (and a broken device fails at start-up). A backend whose speed depends on tuning per
    /// batch size warms up every size up to `max_batch` it needs to; by default one image.
    fn warm_up(&self, max_batch: usize) -> Result<(), BackendError> {
        let _ = max_batch;
        let blank = vec![0f32; self.describe().input.input_len()];
        self.explain(&[(&blank, ExplainOptions::default())])
            .map(|_| ())
    }
}

/// Builds a backend; runs on the model thread at start-up and again after a panic.
pub type Loader = Box<dyn Fn() -> anyhow::Result<Box<dyn Backend>> + Send>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_thousand_imagenet_classes() {
        let l = labels();
        assert_eq!(l.len(), 1000);
        assert_eq!(l[0], "tench");
        assert_eq!(l[281], "tabby");
        assert_eq!(l[999], "toilet tissue");
    }

    #[test]
    fn top_predictions_sorted_with_softmax() {
        let mut logits = vec![0f32; 1000];
        logits[3] = 2.0;
        logits[7] = 1.0;
        let p = top_predictions(&logits, 3, &Labels::imagenet());
        assert_eq!(p[0].label, "tiger shark");
        assert_eq!(p.iter().map(|p| p.index).collect::<Vec<_>>(), vec![3, 7, 0]);
        let denom = 2f64.exp() + 1f64.exp() + 998.0;
        assert!((f64::from(p[0].probability) - 2f64.exp() / denom).abs() < 1e-6);
        let opts = ExplainOptions {
            top_k: 2,
            ..Default::default()
        };
        assert_eq!(targets(&opts, &p), vec![3, 7]);
        let opts = ExplainOptions {
            class: Some(9),
            ..opts
        };
        assert_eq!(targets(&opts, &p), vec![9]);
    }

    #[test]
    fn options_are_validated_with_allowed_ranges() {
        assert!(ExplainOptions::default().validate(1000).is_ok());
        let e = ExplainOptions {
            class: Some(1000),
            ..Default::default()
        }
        .validate(1000)
        .unwrap_err();
        assert!(e.contains("0..=999"), "{e}");
        let e = ExplainOptions {
            class: Some(7),
            ..Default::default()
        }
        .validate(7)
        .unwrap_err();
        assert!(e.contains("0..=6"), "{e}");
        let e = ExplainOptions {
            top_k: 0,
            ..Default::default()
        }
        .validate(1000)
        .unwrap_err();
        assert!(e.contains("1..=10"), "{e}");
        // With fewer classes than the usual most, top_k stops at the class count.
        let e = ExplainOptions {
            top_k: 4,
            ..Default::default()
        }
        .validate(3)
        .unwrap_err();
        assert!(e.contains("1..=3"), "{e}");
    }

    #[test]
    fn layers_parse() {
        assert_eq!("layer3".parse::<Layer>().unwrap(), Layer::Layer3);
        assert_eq!(Layer::Layer3.index(), 2);
        assert!("layer5".parse::<Layer>().is_err());
    }
}
