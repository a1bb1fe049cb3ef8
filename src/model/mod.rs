//! The libtorch backend: torchvision's ResNet family with torchvision's parameter names,
//! checkpoints as training code writes them, and the batched forward + partial backward pass
//! that feeds the Grad-CAM family in [`crate::cam`].

pub mod checkpoint;
mod conv;
mod error;
mod faithful;
mod format;
pub mod resnet;
pub mod runtime;
mod transfer;
pub mod weights;

use crate::backend::{
    self, Backend, BackendError, Description, ExplainOptions, ExplainResult, Explanation, Labels,
    Layer, LibtorchInfo, MIN_PREDICTIONS, Precision, Prediction, WeightsInfo,
};
use crate::cam;
use crate::config::ModelConfig;
use crate::input::Preprocess;
pub use error::ModelError;
use resnet::{Arch, ResNet};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;
use tch::{Device, Kind, Tensor};
pub use weights::{WeightsError, WeightsFile};

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
    let lib = runtime::detect();
    tracing::info!(
        version = %lib.version,
        directory = %lib.directory,
        built_for = %lib.built_for,
        cuda = lib.cuda.as_deref().unwrap_or("none"),
        device = %device_name(config.device),
        precision = %config.precision,
        "libtorch"
    );
    runtime::check(&lib, config.device, config.precision)?;
    // On the thread that will run the model: OpenMP keeps the setting per thread.
    if config.torch_threads > 0 {
        tch::set_num_threads(i32::try_from(config.torch_threads).unwrap_or(i32::MAX));
    }
    // libgomp reads how its idle threads wait once, when it is loaded: reported, not set.
    let wait = |k: &str| std::env::var(k).unwrap_or_else(|_| "unset".into());
    tracing::info!(
        threads = tch::get_num_threads(),
        gomp_spincount = %wait("GOMP_SPINCOUNT"),
        omp_wait_policy = %wait("OMP_WAIT_POLICY"),
        "libtorch intra-op threads"
    );
    let file = weights::resolve(&config.weights, &config.cache_dir())?;
    tracing::info!(path = %file.path.display(), sha256 = %file.sha256, "weights");
    let spec = LoadSpec {
        arch: config.arch.as_deref(),
        prefix: config.weights_prefix.as_deref(),
        labels: config.labels.as_deref(),
        preprocess,
        precision: config.precision,
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
    /// The number type of the trunk.
    pub precision: Precision,
}

/// A ResNet resident on one device.
pub struct Model {
    net: ResNet,
    device: Device,
    weights: WeightsFile,
    labels: Labels,
    labels_source: String,
    preprocess: Preprocess,
    precision: Precision,
    libtorch: LibtorchInfo,
    /// Host-to-device staging of input batches.
    staging: transfer::Staging,
    /// Batch sizes cuDNN has benchmarked its algorithms for (in warm-up, on a GPU).
    tuned: RefCell<BTreeSet<usize>>,
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
        let arch = match spec.arch {
            Some(name) => {
                // Without a classifier the layout check below names it missing.
                let classes = match sd.tensors.get("fc.weight") {
                    None => 1000,
                    Some(_) => {
                        resnet::classes(&sd.tensors).map_err(|why| WeightsError::Architecture {
                            path: weights.path.clone(),
                            why,
                        })?
                    }
                };
                Arch::named(name, classes)
                    .ok_or_else(|| ModelError::UnknownArch(name.to_string()))?
            }
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
            prefix = %format::escape(&sd.prefix),
            labels = %labels_source,
            "model"
        );
        if device.is_cuda() {
            // fp32 is IEEE fp32 in the backward convolutions too. (cuDNN's benchmark mode is
            // turned on per batch size, for the sizes warm-up tunes: `Model::tune_for`.)
            conv::strict_fp32_convolutions();
        }
        let net = ResNet::from_state_dict(arch, &sd.tensors, device, spec.precision)?;
        Ok(Self {
            net,
            device,
            weights,
            labels,
            labels_source,
            preprocess: spec.preprocess,
            precision: spec.precision,
            libtorch: runtime::detect(),
            staging: transfer::Staging::new(device),
            tuned: RefCell::new(BTreeSet::new()),
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

    /// On a GPU, lets cuDNN benchmark the passes of a batch of `n` only where warm-up tuned
    /// that size: elsewhere it takes its heuristics' choice rather than time every algorithm
    /// in the middle of serving.
    pub(crate) fn tune_for(&self, n: usize) {
        if self.device.is_cuda() {
            conv::benchmark(self.tuned.borrow().contains(&n));
        }
    }

    /// Stacks preprocessed images (`[3, N, N]` each) into one f32 batch on the model's device.
    fn batch(&self, inputs: &[&[f32]]) -> Result<Tensor, ModelError> {
        self.tune_for(inputs.len());
        let len = self.preprocess.input_len();
        if let Some((index, x)) = inputs.iter().enumerate().find(|(_, x)| x.len() != len) {
            return Err(ModelError::InputShape {
                index,
                len: x.len(),
                side: self.preprocess.size,
            });
        }
        Ok(self
            .staging
            .upload(inputs, i64::from(self.preprocess.size))?)
    }

    /// Logits `[N, classes]` for a batch, without autograd.
    fn forward(&self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        let _guard = tch::no_grad_guard();
        let _span = tracing::info_span!("forward", batch.size = inputs.len() as i64).entered();
        let x = self.batch(inputs)?;
        let a = self.net.features(&x, Layer::Layer4)?;
        let logits = self.net.head(&a, Layer::Layer4)?;
        let host = self.staging.download(&[&logits])?;
        Ok(rows(&host[0], self.net.arch().classes as usize))
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
        // The classes to explain are chosen on the device, so that nothing has to come back
        // before the backward passes: rank r is the requested class, or the r-th best. What
        // the requests fix goes to the device first, while the stream is still idle (a copy
        // from ordinary host memory waits for the stream).
        let wanted: Vec<usize> = opts
            .iter()
            .map(|o| if o.class.is_some() { 1 } else { o.top_k })
            .collect();
        let ranks = wanted.iter().copied().max().unwrap_or(0).max(1);
        let mut fixed = vec![-1i64; n * ranks];
        let mut live = vec![0f32; n * ranks];
        for (i, o) in opts.iter().enumerate() {
            if let Some(c) = o.class {
                fixed[i * ranks] = c;
            }
            live[i * ranks..i * ranks + wanted[i]].fill(1.0);
        }
        let shape = [n as i64, ranks as i64];
        let fixed = Tensor::f_from_slice(&fixed)?
            .f_view(shape)?
            .f_to_device(self.device)?;
        let live = Tensor::f_from_slice(&live)?
            .f_view(shape)?
            .f_to_device(self.device)?;

        // On a GPU these spans time the launches; the device's remaining work is waited for
        // in `download`.
        let forward =
            tracing::info_span!("forward", batch.size = n as i64, layer = layer.name()).entered();
        let x = self.batch(inputs)?;
        // Below the target layer nothing needs gradients: run it without autograd, then make
        // its output the only leaf that requires a gradient. No parameter requires one.
        let acts = tch::no_grad(|| self.net.features(&x, layer))?
            .f_detach()?
            .set_requires_grad(true);
        let logits = self.net.head(&acts, layer)?;
        let classes = self.net.arch().classes;
        let (_, best) = tch::no_grad(|| logits.f_topk(ranks as i64, 1, true, true))?;
        let chosen = fixed.f_where_self(&fixed.f_ge(0)?, &best)?;
        drop(forward);
        let backward = tracing::info_span!("backward", passes = ranks as i64).entered();

        let mut grads = Vec::with_capacity(ranks);
        for rank in 0..ranks as i64 {
            // One backward pass for the whole batch: in eval mode images do not interact, so
            // the gradient of the sum of each image's target score is each image's gradient.
            let one_hot = Tensor::f_zeros([n as i64, classes], (Kind::Float, self.device))?
                .f_scatter(
                    1,
                    &chosen.f_narrow(1, rank, 1)?,
                    &live.f_narrow(1, rank, 1)?,
                )?;
            let score = logits.f_mul(&one_hot)?.f_sum(Kind::Float)?;
            let keep_graph = rank + 1 < ranks as i64;
            grads.extend(Tensor::f_run_backward(
                &[&score],
                &[&acts],
                keep_graph,
                false,
            )?);
        }

        drop(backward);
        let download = tracing::info_span!("download").entered();
        let size = acts.size();
        let (channels, h, w) = (size[1] as usize, size[2] as usize, size[3] as usize);
        let plane = channels * h * w;
        let detached = acts.f_detach()?;
        let logits = logits.f_detach()?;
        let mut wanted_back: Vec<&Tensor> = vec![&logits, &chosen, &detached];
        wanted_back.extend(grads.iter());
        let mut host = self.staging.download(&wanted_back)?.into_iter();
        drop(download);
        let _maps = tracing::info_span!("maps").entered();
        let mut next = || host.next().expect("one host copy per tensor downloaded");
        let logit_rows = rows(&next(), classes as usize);
        let chosen = next();
        let acts_host = next();

        let predictions: Vec<Vec<Prediction>> = logit_rows
            .iter()
            .zip(opts)
            .map(|(l, o)| backend::top_predictions(l, o.top_k.max(MIN_PREDICTIONS), &self.labels))
            .collect();
        let mut explanations: Vec<Vec<Explanation>> = vec![Vec::new(); n];
        for rank in 0..ranks {
            let grads_host = next();
            for i in (0..n).filter(|&i| rank < wanted[i]) {
                let class = chosen[i * ranks + rank] as i64;
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
            .zip(&logit_rows)
            .map(|((predictions, explanations), logits)| ExplainResult {
                predictions,
                explanations,
                probabilities: backend::probabilities(logits),
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
            precision: self.precision,
            libtorch: Some(self.libtorch.clone()),
        }
    }

    fn warm_up(&self, max_batch: usize) -> Result<(), BackendError> {
        let started = std::time::Instant::now();
        let _span = tracing::info_span!("warm-up").entered();
        let blank = vec![0f32; self.preprocess.input_len()];
        let sizes = conv::warm_up_sizes(self.device.is_cuda(), max_batch);
        // layer4 runs every convolution forward; layer1 also every one backward.
        let layers: &[Layer] = if self.device.is_cuda() {
            &[Layer::Layer4, Layer::Layer1]
        } else {
            &[Layer::Layer4]
        };
        for &n in &sizes {
            self.tuned.borrow_mut().insert(n);
            for &layer in layers {
                let options = ExplainOptions {
                    layer,
                    ..ExplainOptions::default()
                };
                let items = vec![(blank.as_slice(), options); n];
                self.explain_batch(&items)?;
            }
        }
        tracing::info!(
            batch_sizes = ?sizes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "warm-up"
        );
        Ok(())
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

/// Rows of `cols` values.
fn rows(flat: &[f32], cols: usize) -> Vec<Vec<f32>> {
    flat.chunks_exact(cols).map(<[f32]>::to_vec).collect()
}
