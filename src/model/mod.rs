//! The classifier and its explanations: ResNet-50 on libtorch, weight loading, and the batched
//! forward + partial backward pass that feeds the Grad-CAM family in [`crate::cam`].

pub mod resnet;
pub mod weights;

use crate::cam::{self, Method};
use crate::input::INPUT_SIDE;
use resnet::{NUM_CLASSES, ResNet50};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;
use tch::{Device, Kind, TchError, Tensor};
pub use weights::{DEFAULT_WEIGHTS_URL, WeightsError, WeightsFile};

/// The 1000 ImageNet-1k class names in the order of torchvision's checkpoints.
pub fn labels() -> &'static [&'static str] {
    static LABELS: OnceLock<Vec<&'static str>> = OnceLock::new();
    LABELS.get_or_init(|| include_str!("imagenet_classes.txt").lines().collect())
}

/// The libtorch version this build links (tch 0.26 refuses to build against any other).
pub const LIBTORCH_VERSION: &str = "2.13.0";

/// The model's name in answers.
pub const MODEL_NAME: &str = "resnet50";

/// A stage of ResNet-50 whose output can be explained.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    Layer1,
    Layer2,
    Layer3,
    /// The last bottleneck's output, as in the seed.
    #[default]
    Layer4,
}

impl Layer {
    pub const ALL: [Layer; 4] = [Layer::Layer1, Layer::Layer2, Layer::Layer3, Layer::Layer4];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        ["layer1", "layer2", "layer3", "layer4"][self.index()]
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Layer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Layer::ALL
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown layer {s:?}; allowed: layer1, layer2, layer3, layer4"))
    }
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

pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// At most this many classes are explained per image (each costs one partial backward pass).
pub const MAX_TOP_K: usize = 10;
/// Answers list at least this many predictions.
pub const MIN_PREDICTIONS: usize = 5;

/// What to explain for one image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ExplainOptions {
    /// Explain this class instead of the top-ranked ones.
    pub class: Option<i64>,
    /// Explain the `top_k` best classes (ignored when `class` is given).
    pub top_k: usize,
    pub layer: Layer,
    pub method: Method,
}

impl Default for ExplainOptions {
    fn default() -> Self {
        Self {
            class: None,
            top_k: 1,
            layer: Layer::Layer4,
            method: Method::GradCam,
        }
    }
}

impl ExplainOptions {
    /// Checks the options a client can get wrong; the message says what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(c) = self.class
            && !(0..NUM_CLASSES).contains(&c)
        {
            return Err(format!(
                "class {c} is out of range; allowed: 0..={}",
                NUM_CLASSES - 1
            ));
        }
        if !(1..=MAX_TOP_K).contains(&self.top_k) {
            return Err(format!(
                "top_k {} is out of range; allowed: 1..={MAX_TOP_K}",
                self.top_k
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub index: i64,
    pub label: &'static str,
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
    pub label: &'static str,
    pub layer: Layer,
    pub method: Method,
    pub heatmap: Heatmap,
    /// `relu(raw) / max`, row-major, same size as `heatmap`.
    pub normalized: Vec<f32>,
    /// No positive evidence at all: `normalized` is all zeros.
    pub empty: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExplainResult {
    pub predictions: Vec<Prediction>,
    pub explanations: Vec<Explanation>,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("libtorch: {0}")]
    Torch(String),
    #[error("input {index} has {len} values, expected 3x{INPUT_SIDE}x{INPUT_SIDE}")]
    InputShape { index: usize, len: usize },
}

impl From<TchError> for ModelError {
    fn from(e: TchError) -> Self {
        let s = e.to_string();
        ModelError::Torch(s.lines().next().unwrap_or(&s).to_string())
    }
}

/// ResNet-50 resident on one device.
pub struct Model {
    net: ResNet50,
    device: Device,
    weights: WeightsFile,
}

const INPUT_LEN: usize = 3 * (INPUT_SIDE as usize) * (INPUT_SIDE as usize);

impl Model {
    /// Reads, checks and places the weights. Never falls back to random weights: a file that
    /// is not a complete torchvision ResNet-50 is an error naming what is wrong.
    pub fn load(weights: WeightsFile, device: Device) -> Result<Self, ModelError> {
        let sd = weights::read_tensors(&weights.path)?;
        weights::check_layout(
            &weights.path,
            &sd,
            &resnet::expected_tensors(),
            resnet::ignorable,
        )?;
        let net = ResNet50::from_state_dict(&sd, device)?;
        Ok(Self {
            net,
            device,
            weights,
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn weights(&self) -> &WeightsFile {
        &self.weights
    }

    /// Stacks preprocessed images (`[3, 224, 224]` each) into one batch on the model's device.
    fn batch(&self, inputs: &[&[f32]]) -> Result<Tensor, ModelError> {
        let mut flat = Vec::with_capacity(inputs.len() * INPUT_LEN);
        for (index, x) in inputs.iter().enumerate() {
            if x.len() != INPUT_LEN {
                return Err(ModelError::InputShape {
                    index,
                    len: x.len(),
                });
            }
            flat.extend_from_slice(x);
        }
        let side = i64::from(INPUT_SIDE);
        Ok(Tensor::f_from_slice(&flat)?
            .f_view([inputs.len() as i64, 3, side, side])?
            .f_to_device(self.device)?)
    }

    /// Logits `[N, 1000]` for a batch, without autograd.
    pub fn logits(&self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        let _guard = tch::no_grad_guard();
        let x = self.batch(inputs)?;
        let a = self.net.features(&x, Layer::Layer4)?;
        rows(&self.net.head(&a, Layer::Layer4)?)
    }

    /// Explains a batch of images in one forward pass per distinct layer, with one partial
    /// backward pass (from the target layer up) per explained rank. Entries may differ in
    /// method, class and top-k; results come back in input order and are the same as if each
    /// image had been explained alone.
    pub fn explain(
        &self,
        items: &[(&[f32], ExplainOptions)],
    ) -> Result<Vec<ExplainResult>, ModelError> {
        let mut results: Vec<Option<ExplainResult>> = vec![None; items.len()];
        let mut layers: Vec<Layer> = items.iter().map(|(_, o)| o.layer).collect();
        layers.sort_unstable();
        layers.dedup();
        for layer in layers {
            let idx: Vec<usize> = (0..items.len())
                .filter(|&i| items[i].1.layer == layer)
                .collect();
            let inputs: Vec<&[f32]> = idx.iter().map(|&i| items[i].0).collect();
            let opts: Vec<ExplainOptions> = idx.iter().map(|&i| items[i].1).collect();
            for (i, r) in idx
                .into_iter()
                .zip(self.explain_layer(&inputs, &opts, layer)?)
            {
                results[i] = Some(r);
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every item belongs to one layer group: this is a bug"))
            .collect())
    }

    fn explain_layer(
        &self,
        inputs: &[&[f32]],
        opts: &[ExplainOptions],
        layer: Layer,
    ) -> Result<Vec<ExplainResult>, ModelError> {
        let n = inputs.len();
        let x = self.batch(inputs)?;
        // Below the target layer nothing needs gradients: run it without autograd, then make
        // its output the only leaf that requires a gradient. No parameter requires one.
        let acts = tch::no_grad(|| self.net.features(&x, layer))?
            .f_detach()?
            .set_requires_grad(true);
        let logits = self.net.head(&acts, layer)?;
        let logit_rows = rows(&logits.f_detach()?)?;

        let predictions: Vec<Vec<Prediction>> = logit_rows
            .iter()
            .zip(opts)
            .map(|(l, o)| top_predictions(l, o.top_k.max(MIN_PREDICTIONS)))
            .collect();
        let targets: Vec<Vec<i64>> = opts
            .iter()
            .zip(&predictions)
            .map(|(o, p)| match o.class {
                Some(c) => vec![c],
                None => p.iter().take(o.top_k).map(|p| p.index).collect(),
            })
            .collect();

        let size = acts.size();
        let (channels, h, w) = (size[1] as usize, size[2] as usize, size[3] as usize);
        let plane = channels * h * w;
        let acts_host = to_host(&acts.f_detach()?)?;
        let mut explanations: Vec<Vec<Explanation>> = vec![Vec::new(); n];
        let ranks = targets.iter().map(Vec::len).max().unwrap_or(0);
        for rank in 0..ranks {
            // One backward pass for the whole batch: in eval mode images do not interact, so
            // the gradient of the sum of each image's target score is each image's gradient.
            let mut one_hot = vec![0f32; n * NUM_CLASSES as usize];
            for (i, t) in targets.iter().enumerate() {
                if let Some(&c) = t.get(rank) {
                    one_hot[i * NUM_CLASSES as usize + c as usize] = 1.0;
                }
            }
            let one_hot = Tensor::f_from_slice(&one_hot)?
                .f_view([n as i64, NUM_CLASSES])?
                .f_to_device(self.device)?;
            let score = logits.f_mul(&one_hot)?.f_sum(Kind::Float)?;
            let keep_graph = rank + 1 < ranks;
            let grads = Tensor::f_run_backward(&[&score], &[&acts], keep_graph, false)?;
            let grads_host = to_host(&grads[0])?;
            for (i, t) in targets.iter().enumerate() {
                let Some(&class) = t.get(rank) else { continue };
                let range = i * plane..(i + 1) * plane;
                let method = opts[i].method;
                let raw = cam::raw_map(
                    method,
                    &acts_host[range.clone()],
                    &grads_host[range],
                    channels,
                    h * w,
                );
                let norm = cam::normalise(&raw);
                explanations[i].push(Explanation {
                    class_index: class,
                    label: labels()[class as usize],
                    layer,
                    method,
                    heatmap: Heatmap {
                        width: w,
                        height: h,
                        data: raw,
                        min: norm.min,
                        max: norm.max,
                    },
                    normalized: norm.map,
                    empty: norm.empty,
                });
            }
        }
        Ok(predictions
            .into_iter()
            .zip(explanations)
            .map(|(predictions, explanations)| ExplainResult {
                predictions,
                explanations,
            })
            .collect())
    }

    /// One forward and backward pass on a blank image, so that the first request does not pay
    /// for libtorch's lazy initialisation (and a broken device fails at start-up).
    pub fn warm_up(&self) -> Result<(), ModelError> {
        let blank = vec![0f32; INPUT_LEN];
        self.explain(&[(&blank, ExplainOptions::default())])
            .map(|_| ())
    }
}

/// The `k` best classes of one row of logits, with softmax probabilities.
pub fn top_predictions(logits: &[f32], k: usize) -> Vec<Prediction> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let denom: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|i| Prediction {
            index: i as i64,
            label: labels()[i],
            probability: (f64::from(logits[i] - max).exp() / denom) as f32,
            logit: logits[i],
        })
        .collect()
}

fn to_host(t: &Tensor) -> Result<Vec<f32>, ModelError> {
    let t = t
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?
        .f_contiguous()?
        .f_view(-1)?;
    Ok(Vec::<f32>::try_from(&t)?)
}

fn rows(t: &Tensor) -> Result<Vec<Vec<f32>>, ModelError> {
    let cols = t.size()[1] as usize;
    Ok(to_host(t)?
        .chunks_exact(cols)
        .map(<[f32]>::to_vec)
        .collect())
}

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
        let p = top_predictions(&logits, 3);
        assert_eq!(p.iter().map(|p| p.index).collect::<Vec<_>>(), vec![3, 7, 0]);
        let denom = 2f64.exp() + 1f64.exp() + 998.0;
        assert!((f64::from(p[0].probability) - 2f64.exp() / denom).abs() < 1e-6);
    }

    #[test]
    fn options_are_validated_with_allowed_ranges() {
        assert!(ExplainOptions::default().validate().is_ok());
        let e = ExplainOptions {
            class: Some(1000),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("0..=999"), "{e}");
        let e = ExplainOptions {
            top_k: 0,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("1..=10"), "{e}");
    }

    #[test]
    fn devices_and_layers_parse() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_device("cuda:1").unwrap(), Device::Cuda(1));
        assert!(parse_device("tpu").unwrap_err().contains("cuda:N"));
        assert_eq!("layer3".parse::<Layer>().unwrap(), Layer::Layer3);
        assert!("layer5".parse::<Layer>().is_err());
    }
}
