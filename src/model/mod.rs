//! The libtorch backend: ResNet-50 with torchvision's parameter names, weight files, and the
//! batched forward + partial backward pass that feeds the Grad-CAM family in [`crate::cam`].

pub mod resnet;
pub mod weights;

use crate::backend::{
    self, Backend, BackendError, Description, ExplainOptions, ExplainResult, Explanation,
    INPUT_LEN, Layer, MIN_PREDICTIONS, NUM_CLASSES, Prediction, WeightsInfo,
};
use crate::cam;
use crate::config::ModelConfig;
use crate::input::INPUT_SIDE;
use resnet::ResNet50;
use tch::{Device, Kind, TchError, Tensor};
pub use weights::{WeightsError, WeightsFile};

/// The libtorch version this build links (tch 0.26 refuses to build against any other).
pub const LIBTORCH_VERSION: &str = "2.13.0";

/// The model's name in answers.
pub const MODEL_NAME: &str = "resnet50";

pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Resolves (downloading if needed), reads and checks the weights, and places the model on
/// the configured device.
pub fn load(config: &ModelConfig) -> anyhow::Result<Model> {
    let file = weights::resolve(&config.weights, &config.cache_dir())?;
    tracing::info!(path = %file.path.display(), sha256 = %file.sha256, "weights");
    if let Device::Cuda(n) = config.device {
        let count = tch::Cuda::device_count();
        anyhow::ensure!(
            (n as i64) < count,
            "device cuda:{n} requested but {count} CUDA device(s) are available"
        );
    }
    Ok(Model::load(file, config.device)?)
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

impl From<ModelError> for BackendError {
    fn from(e: ModelError) -> Self {
        BackendError::from_message(e.to_string())
    }
}

/// ResNet-50 resident on one device.
pub struct Model {
    net: ResNet50,
    device: Device,
    weights: WeightsFile,
}

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
            .map(|(l, o)| backend::top_predictions(l, o.top_k.max(MIN_PREDICTIONS)))
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
                explanations[i].push(Explanation::from_raw(class, layer, method, raw, w, h));
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
}

impl Backend for Model {
    fn describe(&self) -> Description {
        Description {
            model: MODEL_NAME.into(),
            device: device_name(self.device),
            classes: NUM_CLASSES as usize,
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
