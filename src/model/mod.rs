//! The libtorch backend: torchvision's ResNet family with torchvision's parameter names,
//! checkpoints as training code writes them, and the batched forward + partial backward pass
//! that feeds the Grad-CAM family in [`crate::cam`].

mod archive;
pub mod checkpoint;
mod faithful;
pub mod pickle;
mod rebuild;
pub mod resnet;
pub mod weights;

use crate::backend::{
    self, Backend, BackendError, Description, ExplainOptions, ExplainResult, Explanation, Labels,
    Layer, MIN_PREDICTIONS, Prediction, WeightsInfo,
};
use crate::cam;
use crate::config::ModelConfig;
use crate::input::Preprocess;
use resnet::{Arch, ResNet};
use std::path::Path;
use tch::{Device, Kind, TchError, Tensor};
pub use weights::{WeightsError, WeightsFile};

/// The libtorch version this build links (tch 0.26 refuses to build against any other).
pub const LIBTORCH_VERSION: &str = "2.13.0";

pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Resolves (downloading if needed), reads and checks the weights and the labels, and places
/// the model on the configured device.
pub fn load(config: &ModelConfig) -> anyhow::Result<Model> {
    let preprocess = config.preprocess().map_err(anyhow::Error::msg)?;
    let file = weights::resolve(&config.weights, &config.cache_dir())?;
    tracing::info!(path = %file.path.display(), sha256 = %file.sha256, "weights");
    if let Device::Cuda(n) = config.device {
        let count = tch::Cuda::device_count();
        anyhow::ensure!(
            (n as i64) < count,
            "device cuda:{n} requested but {count} CUDA device(s) are available"
        );
    }
    let spec = LoadSpec {
        arch: config.arch.as_deref(),
        prefix: config.weights_prefix.as_deref(),
        labels: config.labels.as_deref(),
        preprocess,
    };
    Ok(Model::load(file, config.device, &spec)?)
}

/// What, besides the weights file and the device, decides how a model is built.
#[derive(Debug, Clone, Default)]
pub struct LoadSpec<'a> {
    /// Insist on this member of the family.
    pub arch: Option<&'a str>,
    /// Remove this prefix from the names (by default, the one found in front of a ResNet).
    pub prefix: Option<&'a str>,
    /// A labels file.
    pub labels: Option<&'a Path>,
    pub preprocess: Preprocess,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("libtorch: {0}")]
    Torch(String),
    #[error("input {index} has {len} values, expected 3x{side}x{side}")]
    InputShape { index: usize, len: usize, side: u32 },
    #[error("unknown architecture {0:?}; allowed: {family}", family = resnet::family_names())]
    UnknownArch(String),
    #[error("labels file {path}: {why}")]
    Labels { path: String, why: String },
}

impl From<TchError> for ModelError {
    fn from(e: TchError) -> Self {
        let s = e.to_string();
        ModelError::Torch(s.lines().next().unwrap_or(&s).to_string())
    }
}

impl From<ModelError> for BackendError {
    fn from(e: ModelError) -> Self {
        BackendError::from_message(e.to_string())
    }
}

/// A ResNet resident on one device.
pub struct Model {
    net: ResNet,
    device: Device,
    weights: WeightsFile,
    labels: Labels,
    labels_source: String,
    preprocess: Preprocess,
}

/// The labels for a model with `classes` classes: from a file (which must name exactly that
/// many), ImageNet's for 1000, or generic names (with a warning).
fn labels_for(classes: usize, file: Option<&Path>) -> Result<(Labels, String), ModelError> {
    let Some(path) = file else {
        if classes == 1000 {
            return Ok((Labels::imagenet(), "imagenet".into()));
        }
        tracing::warn!(
            classes,
            "no --labels file: classes are named class_0 .. class_{}",
            classes - 1
        );
        return Ok((Labels::generic(classes), "generic".into()));
    };
    let fail = |why: String| ModelError::Labels {
        path: path.display().to_string(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let labels = Labels::parse(&text).map_err(fail)?;
    if labels.len() != classes {
        return Err(fail(format!(
            "it names {} classes but the model has {classes} (fc.weight has {classes} rows)",
            labels.len()
        )));
    }
    Ok((labels, path.display().to_string()))
}

impl Model {
    /// Reads, checks and places the weights. Never falls back to random weights: a file that
    /// is not a complete member of torchvision's ResNet family is an error naming what is
    /// wrong.
    pub fn load(weights: WeightsFile, device: Device, spec: &LoadSpec) -> Result<Self, ModelError> {
        let sd = checkpoint::read_state_dict(&weights.path, spec.prefix)?;
        let classes = sd.tensors.get("fc.weight").map(|t| t.size()[0]);
        let arch = match spec.arch {
            Some(name) => Arch::named(name, classes.unwrap_or(1000))
                .ok_or_else(|| ModelError::UnknownArch(name.to_string()))?,
            None => Arch::infer(&sd.tensors).map_err(|why| {
                let mut names: Vec<&str> = sd.tensors.keys().map(String::as_str).collect();
                names.sort_unstable();
                WeightsError::Architecture {
                    path: weights.path.clone(),
                    why: format!("{why} (tensors: {})", checkpoint::sample(&names)),
                }
            })?,
        };
        let name = arch.name().unwrap_or("resnet");
        weights::check_layout(
            &weights.path,
            name,
            &sd.tensors,
            &arch.expected_tensors(),
            resnet::ignorable,
        )?;
        let (labels, labels_source) = labels_for(arch.classes as usize, spec.labels)?;
        tracing::info!(
            arch = name,
            classes = arch.classes,
            format = sd.format,
            found = %sd.location,
            prefix = %sd.prefix,
            labels = %labels_source,
            "model"
        );
        let net = ResNet::from_state_dict(arch, &sd.tensors, device)?;
        Ok(Self {
            net,
            device,
            weights,
            labels,
            labels_source,
            preprocess: spec.preprocess,
        })
    }

    pub fn arch(&self) -> &Arch {
        self.net.arch()
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn weights(&self) -> &WeightsFile {
        &self.weights
    }

    /// Stacks preprocessed images (`[3, N, N]` each) into one batch on the model's device.
    fn batch(&self, inputs: &[&[f32]]) -> Result<Tensor, ModelError> {
        let len = self.preprocess.input_len();
        let mut flat = Vec::with_capacity(inputs.len() * len);
        for (index, x) in inputs.iter().enumerate() {
            if x.len() != len {
                return Err(ModelError::InputShape {
                    index,
                    len: x.len(),
                    side: self.preprocess.size,
                });
            }
            flat.extend_from_slice(x);
        }
        let side = i64::from(self.preprocess.size);
        Ok(Tensor::f_from_slice(&flat)?
            .f_view([inputs.len() as i64, 3, side, side])?
            .f_to_device(self.device)?)
    }

    /// Logits `[N, classes]` for a batch, without autograd.
    fn forward(&self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        let _guard = tch::no_grad_guard();
        let x = self.batch(inputs)?;
        let a = self.net.features(&x, Layer::Layer4)?;
        rows(&self.net.head(&a, Layer::Layer4)?)
    }

    /// Explains a batch of images in one forward pass per distinct layer, with one partial
    /// backward pass (from the target layer up) per explained rank. Entries may differ in
    /// method, class and top-k; results come back in input order and are the same as if each
    /// image had been explained alone.
    fn explain_batch(
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
            .map(|(l, o)| backend::top_predictions(l, o.top_k.max(MIN_PREDICTIONS), &self.labels))
            .collect();
        let targets: Vec<Vec<i64>> = opts
            .iter()
            .zip(&predictions)
            .map(|(o, p)| backend::targets(o, p))
            .collect();

        let size = acts.size();
        let (channels, h, w) = (size[1] as usize, size[2] as usize, size[3] as usize);
        let plane = channels * h * w;
        let acts_host = to_host(&acts.f_detach()?)?;
        let mut explanations: Vec<Vec<Explanation>> = vec![Vec::new(); n];
        let ranks = targets.iter().map(Vec::len).max().unwrap_or(0);
        let classes = self.net.arch().classes;
        for rank in 0..ranks {
            // One backward pass for the whole batch: in eval mode images do not interact, so
            // the gradient of the sum of each image's target score is each image's gradient.
            let mut one_hot = vec![0f32; n * classes as usize];
            for (i, t) in targets.iter().enumerate() {
                if let Some(&c) = t.get(rank) {
                    one_hot[i * classes as usize + c as usize] = 1.0;
                }
            }
            let one_hot = Tensor::f_from_slice(&one_hot)?
                .f_view([n as i64, classes])?
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
                let label = self.labels.get(class as usize).to_string();
                explanations[i].push(Explanation::from_raw(
                    class, label, layer, method, raw, w, h,
                ));
            }
        }
        if opts.iter().any(|o| o.faithfulness) {
            drop(acts_host);
            faithful::score(self, &x, &logit_rows, opts, &mut explanations)?;
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
}

impl Backend for Model {
    fn labels(&self) -> Labels {
        self.labels.clone()
    }

    fn describe(&self) -> Description {
        Description {
            model: self.net.arch().name().unwrap_or("resnet").into(),
            device: device_name(self.device),
            classes: self.labels.len(),
            labels: self.labels.clone(),
            labels_source: self.labels_source.clone(),
            input: self.preprocess,
            weights: WeightsInfo {
                source: self.weights.source.clone(),
                sha256: self.weights.sha256.clone(),
            },
            libtorch: Some(LIBTORCH_VERSION.into()),
        }
    }

    fn logits(&self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, BackendError> {
        Ok(self.forward(inputs)?)
    }

    fn explain(
        &self,
        items: &[(&[f32], ExplainOptions)],
    ) -> Result<Vec<ExplainResult>, BackendError> {
        Ok(self.explain_batch(items)?)
    }
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
    fn out_of_memory_is_recognised_from_cuda_and_cpu_messages() {
        for msg in [
            "CUDA out of memory. Tried to allocate 2.00 GiB",
            "DefaultCPUAllocator: not enough memory: you tried to allocate 281474976710656 bytes.",
            "DefaultCPUAllocator: can't allocate memory: you tried to allocate 281474976710656 bytes.",
        ] {
            let e = BackendError::from(ModelError::Torch(msg.into()));
            assert!(matches!(e, BackendError::OutOfMemory(_)), "{msg}");
        }
        let e = BackendError::from(ModelError::Torch(
            "mat1 and mat2 shapes cannot be multiplied (2x3 and 2x3)".into(),
        ));
        assert!(matches!(e, BackendError::Failed(_)));
    }
}
