//! torchvision's ResNet family (v1.5: the stride sits on the 3x3 convolution), written with
//! libtorch's functional operators: resnet18 to 152, the ResNeXts and the wide ResNets.
//!
//! Weights are read by torchvision's state-dict names, so torchvision's and timm's checkpoints
//! load unchanged. Which member a state dict holds is read from the weights themselves ([`Arch`]):
//! the block type from the keys, the depth from the block counts, groups and width from the
//! shapes, the number of classes from `fc.weight`.
//!
//! The network only ever runs in inference mode, so each batch norm is folded into the
//! convolution before it once at load time: `w' = w * g / sqrt(v + eps)`,
//! `b' = beta - mean * g / sqrt(v + eps)`. That removes a full pass over every activation.
//!
//! In reduced precision (bf16, fp16) the folded weights are converted once at load time and
//! stored channels-last, the layout oneDNN and cuDNN run reduced-precision convolutions fastest
//! in; the input is converted as it enters the stem. The classifier stays f32: the pooled
//! features are averaged into f32, so logits and probabilities are f32 in every precision.
//!
//! The forward pass is split at a [`Layer`]: [`ResNet::features`] runs the stem and the layers
//! up to and including it, [`ResNet::head`] runs the rest. Grad-CAM runs `features` without
//! autograd and `head` with it, so gradients flow only above the target layer.

use super::conv::{ConvBn, channels_last, kind_of};
use crate::backend::{Layer, Precision};
use std::collections::HashMap;
use tch::{Device, Kind, TchError, Tensor};

const BN_EPS: f64 = 1e-5;

/// The residual block a ResNet is built of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// Two 3x3 convolutions (resnet18, resnet34).
    Basic,
    /// 1x1, 3x3 (possibly grouped), 1x1 with a 4x wider output (resnet50 and deeper).
    Bottleneck,
}

impl Block {
    fn expansion(self) -> i64 {
        match self {
            Block::Basic => 1,
            Block::Bottleneck => 4,
        }
    }
}

/// One member of the family: what torchvision's constructor arguments say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arch {
    pub block: Block,
    /// Blocks in `layer1`..`layer4`.
    pub blocks: [usize; 4],
    /// Groups of the 3x3 convolutions (ResNeXt).
    pub groups: i64,
    /// Channels per group in `layer1`'s 3x3 convolution (64 for plain ResNets).
    pub width_per_group: i64,
    /// Outputs of the classifier.
    pub classes: i64,
}

/// torchvision's family, by name: block, blocks per stage, groups, width per group.
pub const FAMILY: [(&str, Block, [usize; 4], i64, i64); 10] = [
    ("resnet18", Block::Basic, [2, 2, 2, 2], 1, 64),
    ("resnet34", Block::Basic, [3, 4, 6, 3], 1, 64),
    ("resnet50", Block::Bottleneck, [3, 4, 6, 3], 1, 64),
    ("resnet101", Block::Bottleneck, [3, 4, 23, 3], 1, 64),
    ("resnet152", Block::Bottleneck, [3, 8, 36, 3], 1, 64),
    ("resnext50_32x4d", Block::Bottleneck, [3, 4, 6, 3], 32, 4),
    ("resnext101_32x8d", Block::Bottleneck, [3, 4, 23, 3], 32, 8),
    ("resnext101_64x4d", Block::Bottleneck, [3, 4, 23, 3], 64, 4),
    ("wide_resnet50_2", Block::Bottleneck, [3, 4, 6, 3], 1, 128),
    ("wide_resnet101_2", Block::Bottleneck, [3, 4, 23, 3], 1, 128),
];

/// The number of classes, from the classifier's weight: `[classes, features]`, both at least
/// one.
pub fn classes(sd: &HashMap<String, Tensor>) -> Result<i64, String> {
    let fc = sd
        .get("fc.weight")
        .ok_or("there is no fc.weight (the classifier)")?
        .size();
    match fc.as_slice() {
        &[classes, features] if classes >= 1 && features >= 1 => Ok(classes),
        _ => Err(format!(
            "fc.weight has the shape {fc:?}, but a classifier's weight is [classes, features] \
             with at least one of each (0 classes cannot be served)"
        )),
    }
}

/// The names of [`FAMILY`], for messages and `--help`.
pub fn family_names() -> String {
    FAMILY.map(|f| f.0).join(", ")
}

impl Arch {
    /// A member by its torchvision name, with `classes` outputs.
    pub fn named(name: &str, classes: i64) -> Option<Arch> {
        FAMILY.iter().find(|f| f.0.eq_ignore_ascii_case(name)).map(
            |&(_, block, blocks, groups, width_per_group)| Arch {
                block,
                blocks,
                groups,
                width_per_group,
                classes,
            },
        )
    }

    /// torchvision's name of this member, if it is one.
    pub fn name(&self) -> Option<&'static str> {
        FAMILY
            .iter()
            .find(|f| {
                (f.1, f.2, f.3, f.4) == (self.block, self.blocks, self.groups, self.width_per_group)
            })
            .map(|f| f.0)
    }

    /// Reads the member from a state dict's names and shapes. The result is then checked
    /// tensor by tensor with [`Arch::expected_tensors`], so this only has to look at a few.
    pub fn infer(sd: &HashMap<String, Tensor>) -> Result<Arch, String> {
        let shape = |name: &str| sd.get(name).map(Tensor::size);
        let block = if sd.contains_key("layer1.0.conv3.weight") {
            Block::Bottleneck
        } else if sd.contains_key("layer1.0.conv2.weight") {
            Block::Basic
        } else {
            return Err(
                "there is no layer1.0.conv2.weight, so this is not a ResNet with torchvision's \
                 parameter names"
                    .into(),
            );
        };
        let mut blocks = [0usize; 4];
        for (s, n) in blocks.iter_mut().enumerate() {
            while sd.contains_key(&format!("layer{}.{}.conv1.weight", s + 1, *n)) {
                *n += 1;
            }
            if *n == 0 {
                return Err(format!("there is no layer{}.0.conv1.weight", s + 1));
            }
        }
        let classes = classes(sd)?;
        let (groups, width_per_group) = match block {
            Block::Basic => (1, 64),
            Block::Bottleneck => {
                let width = shape("layer1.0.conv1.weight").and_then(|s| s.first().copied());
                let per_group = shape("layer1.0.conv2.weight").and_then(|s| s.get(1).copied());
                match (width, per_group) {
                    (Some(w), Some(g)) if g > 0 && w % g == 0 => (w / g, g),
                    _ => return Err("layer1.0.conv2.weight has an unexpected shape".into()),
                }
            }
        };
        let arch = Arch {
            block,
            blocks,
            groups,
            width_per_group,
            classes,
        };
        if arch.name().is_none() {
            return Err(format!(
                "the weights describe a ResNet with {:?} blocks {:?}, {} groups of {} channels, \
                 which is not one of torchvision's family ({})",
                arch.block,
                arch.blocks,
                arch.groups,
                arch.width_per_group,
                family_names()
            ));
        }
        Ok(arch)
    }

    /// Channels of a stage's output.
    fn out_channels(&self, stage: usize) -> i64 {
        (64 << stage) * self.block.expansion()
    }

    /// Channels of a bottleneck's inner convolutions in a stage (torchvision's `width`).
    fn inner(&self, stage: usize) -> i64 {
        match self.block {
            Block::Basic => 64 << stage,
            Block::Bottleneck => (64 << stage) * self.width_per_group / 64 * self.groups,
        }
    }

    /// Channels of the pooled features the classifier reads.
    pub fn features(&self) -> i64 {
        self.out_channels(3)
    }

    /// Every tensor of torchvision's `state_dict()` for this member with its shape, except the
    /// batch norms' `num_batches_tracked` counters (training bookkeeping, accepted and ignored).
    pub fn expected_tensors(&self) -> Vec<(String, Vec<i64>)> {
        let mut out = Vec::new();
        let mut conv_bn = |conv: &str, bn: &str, shape: [i64; 4]| {
            out.push((format!("{conv}.weight"), shape.to_vec()));
            for p in ["weight", "bias", "running_mean", "running_var"] {
                out.push((format!("{bn}.{p}"), vec![shape[0]]));
            }
        };
        conv_bn("conv1", "bn1", [64, 3, 7, 7]);
        let mut in_ch = 64;
        for (s, &blocks) in self.blocks.iter().enumerate() {
            let (inner, out_ch) = (self.inner(s), self.out_channels(s));
            for b in 0..blocks {
                let p = format!("layer{}.{b}", s + 1);
                let c = |i: usize| (format!("{p}.conv{i}"), format!("{p}.bn{i}"));
                match self.block {
                    Block::Basic => {
                        let (c1, b1) = c(1);
                        conv_bn(&c1, &b1, [inner, in_ch, 3, 3]);
                        let (c2, b2) = c(2);
                        conv_bn(&c2, &b2, [inner, inner, 3, 3]);
                    }
                    Block::Bottleneck => {
                        let (c1, b1) = c(1);
                        conv_bn(&c1, &b1, [inner, in_ch, 1, 1]);
                        let (c2, b2) = c(2);
                        conv_bn(&c2, &b2, [inner, inner / self.groups, 3, 3]);
                        let (c3, b3) = c(3);
                        conv_bn(&c3, &b3, [out_ch, inner, 1, 1]);
                    }
                }
                if b == 0 && (s > 0 || in_ch != out_ch) {
                    conv_bn(
                        &format!("{p}.downsample.0"),
                        &format!("{p}.downsample.1"),
                        [out_ch, in_ch, 1, 1],
                    );
                }
                in_ch = out_ch;
            }
        }
        out.push(("fc.weight".into(), vec![self.classes, in_ch]));
        out.push(("fc.bias".into(), vec![self.classes]));
        out
    }
}

/// True for state-dict entries that carry no weights.
pub fn ignorable(name: &str) -> bool {
    name.ends_with(".num_batches_tracked")
}

#[derive(Debug)]
struct Residual {
    /// The branch's convolutions, with a ReLU after each but the last.
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl Residual {
    fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let mut y = x.shallow_clone();
        for (i, conv) in self.convs.iter().enumerate() {
            y = conv.forward(&y)?;
            if i + 1 < self.convs.len() {
                y = y.f_relu()?;
            }
        }
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x)?,
            None => x.shallow_clone(),
        };
        (y + shortcut).f_relu()
    }
}

#[derive(Debug)]
pub struct ResNet {
    arch: Arch,
    /// The kind of the convolutions' weights and activations.
    kind: Kind,
    stem: ConvBn,
    stages: Vec<Vec<Residual>>,
    fc_weight: Tensor,
    fc_bias: Tensor,
}

impl ResNet {
    /// Builds the network from a state dict already checked against
    /// [`Arch::expected_tensors`].
    pub fn from_state_dict(
        arch: Arch,
        sd: &HashMap<String, Tensor>,
        device: Device,
        precision: Precision,
    ) -> Result<Self, TchError> {
        let kind = kind_of(precision);
        let place = |t: Tensor| -> Result<Tensor, TchError> {
            let t = t.f_to_kind(kind)?.f_to_device(device)?;
            if kind == Kind::Float {
                t.f_contiguous()
            } else {
                channels_last(&t)
            }
        };
        let get = |name: &str| -> Result<Tensor, TchError> {
            sd.get(name)
                .ok_or_else(|| TchError::TensorNameNotFound(name.to_string(), "state dict".into()))?
                .f_to_kind(Kind::Double)
        };
        let fold = |conv: &str, bn: &str, stride: i64, groups: i64| -> Result<ConvBn, TchError> {
            let w = get(&format!("{conv}.weight"))?;
            let gamma = get(&format!("{bn}.weight"))?;
            let beta = get(&format!("{bn}.bias"))?;
            let mean = get(&format!("{bn}.running_mean"))?;
            let var = get(&format!("{bn}.running_var"))?;
            let scale = gamma.f_div(&(var + BN_EPS).f_sqrt()?)?;
            let weight = w.f_mul(&scale.f_view([-1, 1, 1, 1])?)?;
            let bias = beta.f_sub(&mean.f_mul(&scale)?)?;
            let padding = w.size()[3] / 2;
            Ok(ConvBn {
                weight: place(weight)?,
                bias: bias.f_to_kind(kind)?.f_to_device(device)?,
                stride,
                padding,
                groups,
                cuda: device.is_cuda(),
            })
        };
        let _guard = tch::no_grad_guard();
        let stem = fold("conv1", "bn1", 2, 1)?;
        let mut stages = Vec::with_capacity(4);
        for (s, &blocks) in arch.blocks.iter().enumerate() {
            let mut stage = Vec::with_capacity(blocks);
            for b in 0..blocks {
                let p = format!("layer{}.{b}", s + 1);
                // v1.5: the first block of stages 2-4 downsamples in its 3x3 convolution.
                let stride = if b == 0 && s > 0 { 2 } else { 1 };
                let conv = |i: usize, stride: i64, groups: i64| {
                    fold(
                        &format!("{p}.conv{i}"),
                        &format!("{p}.bn{i}"),
                        stride,
                        groups,
                    )
                };
                let convs = match arch.block {
                    Block::Basic => vec![conv(1, stride, 1)?, conv(2, 1, 1)?],
                    Block::Bottleneck => vec![
                        conv(1, 1, 1)?,
                        conv(2, stride, arch.groups)?,
                        conv(3, 1, 1)?,
                    ],
                };
                let downsample = if sd.contains_key(&format!("{p}.downsample.0.weight")) {
                    Some(fold(
                        &format!("{p}.downsample.0"),
                        &format!("{p}.downsample.1"),
                        stride,
                        1,
                    )?)
                } else {
                    None
                };
                stage.push(Residual { convs, downsample });
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
            arch,
            kind,
            stem,
            stages,
            fc_weight,
            fc_bias,
        })
    }

    pub fn arch(&self) -> &Arch {
        &self.arch
    }

    /// The kind the trunk's activations have.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Stem and stages up to and including `upto`: `[N, C, H, W]` activations of that layer,
    /// of the network's kind. `x` is an f32 batch on the network's device.
    pub fn features(&self, x: &Tensor, upto: Layer) -> Result<Tensor, TchError> {
        let x = if self.kind == Kind::Float {
            x.shallow_clone()
        } else {
            channels_last(&x.f_to_kind(self.kind)?)?
        };
        let mut x =
            self.stem
                .forward(&x)?
                .f_relu()?
                .f_max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)?;
        for stage in &self.stages[..=upto.index()] {
            for block in stage {
                x = block.forward(&x)?;
            }
        }
        Ok(x)
    }

    /// The stages after `from`, global average pooling and the classifier: `[N, classes]`
    /// logits.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn state_dict(arch: &Arch) -> HashMap<String, Tensor> {
        arch.expected_tensors()
            .into_iter()
            .map(|(n, s)| (n, Tensor::zeros(s.as_slice(), (Kind::Float, Device::Cpu))))
            .collect()
    }

    #[test]
    fn every_member_is_read_back_from_its_own_tensors() {
        for (name, ..) in FAMILY {
            let arch = Arch::named(name, 7).unwrap();
            let inferred = Arch::infer(&state_dict(&arch)).unwrap();
            assert_eq!(inferred, arch, "{name}");
            assert_eq!(inferred.name(), Some(name));
        }
    }

    #[test]
    fn parameter_counts_match_torchvision() {
        // torchvision's documented parameter counts (1000 classes), batch-norm statistics
        // excluded as torchvision's count excludes buffers.
        for (name, params) in [
            ("resnet18", 11_689_512),
            ("resnet34", 21_797_672),
            ("resnet50", 25_557_032),
            ("resnet101", 44_549_160),
            ("resnet152", 60_192_808),
            ("resnext50_32x4d", 25_028_904),
            ("resnext101_32x8d", 88_791_336),
            ("resnext101_64x4d", 83_455_272),
            ("wide_resnet50_2", 68_883_240),
            ("wide_resnet101_2", 126_886_696),
        ] {
            let count: i64 = Arch::named(name, 1000)
                .unwrap()
                .expected_tensors()
                .iter()
                .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
                .map(|(_, s)| s.iter().product::<i64>())
                .sum();
            assert_eq!(count, params, "{name}");
        }
    }

    #[test]
    fn something_else_is_refused_with_what_was_found() {
        let mut sd = state_dict(&Arch::named("resnet50", 10).unwrap());
        sd.remove("layer3.5.conv1.weight");
        let e = Arch::infer(&sd).unwrap_err();
        assert!(e.contains("[3, 4, 5, 3]") && e.contains("resnet18"), "{e}");
        let e = Arch::infer(&HashMap::new()).unwrap_err();
        assert!(e.contains("layer1.0.conv2.weight"), "{e}");
    }
}
