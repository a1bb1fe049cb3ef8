//! ResNet-50 (torchvision's v1.5 layout: the stride sits on the 3x3 convolution) written with
//! libtorch's functional operators.
//!
//! Weights are read by torchvision's state-dict names, so the official checkpoints load
//! unchanged. The network only ever runs in inference mode, so each batch norm is folded into
//! the convolution before it once at load time: `w' = w * g / sqrt(v + eps)`,
//! `b' = beta - mean * g / sqrt(v + eps)`. That removes a full pass over every activation.
//!
//! The forward pass is split at a [`Layer`]: [`ResNet50::features`] runs the stem and the layers
//! up to and including it, [`ResNet50::head`] runs the rest. Grad-CAM runs `features` without
//! autograd and `head` with it, so gradients flow only above the target layer.

use crate::backend::{Layer, NUM_CLASSES};
use std::collections::HashMap;
use tch::{Device, Kind, TchError, Tensor};

const BN_EPS: f64 = 1e-5;
/// Blocks per stage and the bottleneck width of each stage.
const STAGES: [(usize, i64); 4] = [(3, 64), (4, 128), (6, 256), (3, 512)];
const EXPANSION: i64 = 4;

/// A convolution with its batch norm folded in.
#[derive(Debug)]
struct ConvBn {
    weight: Tensor,
    bias: Tensor,
    stride: i64,
    padding: i64,
}

impl ConvBn {
    fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        x.f_conv2d(
            &self.weight,
            Some(&self.bias),
            [self.stride; 2],
            [self.padding; 2],
            [1, 1],
            1,
        )
    }
}

#[derive(Debug)]
struct Bottleneck {
    conv1: ConvBn,
    conv2: ConvBn,
    conv3: ConvBn,
    downsample: Option<ConvBn>,
}

impl Bottleneck {
    fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let y = self.conv1.forward(x)?.f_relu()?;
        let y = self.conv2.forward(&y)?.f_relu()?;
        let y = self.conv3.forward(&y)?;
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x)?,
            None => x.shallow_clone(),
        };
        (y + shortcut).f_relu()
    }
}

#[derive(Debug)]
pub struct ResNet50 {
    stem: ConvBn,
    stages: Vec<Vec<Bottleneck>>,
    fc_weight: Tensor,
    fc_bias: Tensor,
}

/// Every tensor of torchvision's `resnet50().state_dict()` with its shape, except the batch
/// norms' `num_batches_tracked` counters (training bookkeeping, accepted and ignored).
pub fn expected_tensors() -> Vec<(String, Vec<i64>)> {
    let mut out = Vec::new();
    let mut conv_bn = |conv: &str, bn: &str, shape: [i64; 4]| {
        out.push((format!("{conv}.weight"), shape.to_vec()));
        for p in ["weight", "bias", "running_mean", "running_var"] {
            out.push((format!("{bn}.{p}"), vec![shape[0]]));
        }
    };
    conv_bn("conv1", "bn1", [64, 3, 7, 7]);
    let mut in_ch = 64;
    for (s, &(blocks, width)) in STAGES.iter().enumerate() {
        for b in 0..blocks {
            let p = format!("layer{}.{b}", s + 1);
            conv_bn(
                &format!("{p}.conv1"),
                &format!("{p}.bn1"),
                [width, in_ch, 1, 1],
            );
            conv_bn(
                &format!("{p}.conv2"),
                &format!("{p}.bn2"),
                [width, width, 3, 3],
            );
            conv_bn(
                &format!("{p}.conv3"),
                &format!("{p}.bn3"),
                [width * EXPANSION, width, 1, 1],
            );
            if b == 0 {
                conv_bn(
                    &format!("{p}.downsample.0"),
                    &format!("{p}.downsample.1"),
                    [width * EXPANSION, in_ch, 1, 1],
                );
            }
            in_ch = width * EXPANSION;
        }
    }
    out.push(("fc.weight".into(), vec![NUM_CLASSES, 2048]));
    out.push(("fc.bias".into(), vec![NUM_CLASSES]));
    out
}

/// True for state-dict entries that carry no weights.
pub fn ignorable(name: &str) -> bool {
    name.ends_with(".num_batches_tracked")
}

impl ResNet50 {
    /// Builds the network from a state dict already checked with [`expected_tensors`].
    pub fn from_state_dict(sd: &HashMap<String, Tensor>, device: Device) -> Result<Self, TchError> {
        let get = |name: &str| -> Result<Tensor, TchError> {
            sd.get(name)
                .ok_or_else(|| TchError::TensorNameNotFound(name.to_string(), "state dict".into()))?
                .f_to_kind(Kind::Double)
        };
        let fold = |conv: &str, bn: &str, stride: i64, padding: i64| -> Result<ConvBn, TchError> {
            let w = get(&format!("{conv}.weight"))?;
            let gamma = get(&format!("{bn}.weight"))?;
            let beta = get(&format!("{bn}.bias"))?;
            let mean = get(&format!("{bn}.running_mean"))?;
            let var = get(&format!("{bn}.running_var"))?;
            let scale = gamma.f_div(&(var + BN_EPS).f_sqrt()?)?;
            let weight = w.f_mul(&scale.f_view([-1, 1, 1, 1])?)?;
            let bias = beta.f_sub(&mean.f_mul(&scale)?)?;
            Ok(ConvBn {
                weight: weight
                    .f_to_kind(Kind::Float)?
                    .f_to_device(device)?
                    .f_contiguous()?,
                bias: bias.f_to_kind(Kind::Float)?.f_to_device(device)?,
                stride,
                padding,
            })
        };
        let _guard = tch::no_grad_guard();
        let stem = fold("conv1", "bn1", 2, 3)?;
        let mut stages = Vec::with_capacity(STAGES.len());
        for (s, &(blocks, _)) in STAGES.iter().enumerate() {
            let mut stage = Vec::with_capacity(blocks);
            for b in 0..blocks {
                let p = format!("layer{}.{b}", s + 1);
                // v1.5: the first block of stages 2-4 downsamples in its 3x3 convolution.
                let stride = if b == 0 && s > 0 { 2 } else { 1 };
                stage.push(Bottleneck {
                    conv1: fold(&format!("{p}.conv1"), &format!("{p}.bn1"), 1, 0)?,
                    conv2: fold(&format!("{p}.conv2"), &format!("{p}.bn2"), stride, 1)?,
                    conv3: fold(&format!("{p}.conv3"), &format!("{p}.bn3"), 1, 0)?,
                    downsample: if b == 0 {
                        Some(fold(
                            &format!("{p}.downsample.0"),
                            &format!("{p}.downsample.1"),
                            stride,
                            0,
                        )?)
                    } else {
                        None
                    },
                });
            }
            stages.push(stage);
        }
        let fc_weight = get("fc.weight")?
            .f_to_kind(Kind::Float)?
            .f_to_device(device)?;
        let fc_bias = get("fc.bias")?
            .f_to_kind(Kind::Float)?
            .f_to_device(device)?;
        Ok(Self {
            stem,
            stages,
            fc_weight,
            fc_bias,
        })
    }

    /// Stem and stages up to and including `upto`: `[N, C, H, W]` activations of that layer.
    pub fn features(&self, x: &Tensor, upto: Layer) -> Result<Tensor, TchError> {
        let mut x =
            self.stem
                .forward(x)?
                .f_relu()?
                .f_max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)?;
        for stage in &self.stages[..=upto.index()] {
            for block in stage {
                x = block.forward(&x)?;
            }
        }
        Ok(x)
    }

    /// The stages after `from`, global average pooling and the classifier: `[N, 1000]` logits.
    pub fn head(&self, a: &Tensor, from: Layer) -> Result<Tensor, TchError> {
        let mut x = a.shallow_clone();
        for stage in &self.stages[from.index() + 1..] {
            for block in stage {
                x = block.forward(&x)?;
            }
        }
        x.f_mean_dim([2i64, 3].as_slice(), false, Kind::Float)?
            .f_linear(&self.fc_weight, Some(&self.fc_bias))
    }
}
