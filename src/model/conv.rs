//! The network's building block and its number types: a convolution with its batch norm
//! folded in, and how a precision maps to libtorch's kinds and layouts.

use crate::backend::Precision;
use tch::{Kind, TchError, Tensor};

/// The libtorch kind of a precision.
pub fn kind_of(precision: Precision) -> Kind {
    match precision {
        Precision::Fp32 => Kind::Float,
        Precision::Bf16 => Kind::BFloat16,
        Precision::Fp16 => Kind::Half,
    }
}

/// The same values laid out channels-last (`NHWC` in memory, still indexed `NCHW`): libtorch
/// tells the layout from the strides.
pub fn channels_last(t: &Tensor) -> Result<Tensor, TchError> {
    t.f_permute([0, 2, 3, 1])?
        .f_contiguous()?
        .f_permute([0, 3, 1, 2])
}

/// A convolution with its batch norm folded in.
#[derive(Debug)]
pub struct ConvBn {
    pub weight: Tensor,
    pub bias: Tensor,
    pub stride: i64,
    pub padding: i64,
    pub groups: i64,
    /// On a GPU: let cuDNN pick its fastest algorithm per shape (benchmark mode).
    pub cuda: bool,
}

impl ConvBn {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        // `conv2d` with its context flags spelled out: cuDNN's TF32 (a 10-bit mantissa, on by
        // default in libtorch) is never allowed, so fp32 is fp32 on a GPU too; reduced
        // precision is asked for with `--precision`, not slipped in.
        x.f_internal_convolution(
            &self.weight,
            Some(&self.bias),
            [self.stride; 2],
            [self.padding; 2],
            [1, 1],
            false,
            [0, 0],
            self.groups,
            self.cuda,
            false,
            true,
            false,
        )
    }
}
