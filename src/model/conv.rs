//! The network's building block and its number types: a convolution with its batch norm
//! folded in, and how a precision maps to libtorch's kinds and layouts.

use crate::backend::Precision;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Kind, TchError, Tensor};

/// Whether cuDNN may benchmark the convolutions of the pass about to run: see [`benchmark`].
static BENCHMARK: AtomicBool = AtomicBool::new(false);

/// Lets cuDNN benchmark its algorithms (on a GPU), or not, for the passes that follow, forward
/// and backward. In benchmark mode cuDNN times every algorithm the first time it meets a
/// shape, which takes far longer than the pass itself: the model turns it on only for the
/// batch sizes that warm-up has tuned (and during warm-up), so that a batch of a size the
/// queue forms for the first time under load runs on cuDNN's heuristics instead of stalling.
pub fn benchmark(on: bool) {
    if BENCHMARK.swap(on, Ordering::Relaxed) != on {
        // The backward convolutions read the process-wide flag.
        tch::Cuda::cudnn_set_benchmark(on);
    }
}

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

/// The batch sizes warm-up runs: on a GPU every power of two below `max_batch` and
/// `max_batch` itself, which cuDNN's benchmark mode tunes (see [`benchmark`]); on the CPU one
/// image.
pub fn warm_up_sizes(cuda: bool, max_batch: usize) -> Vec<usize> {
    if !cuda {
        return vec![1];
    }
    let mut sizes: Vec<usize> = std::iter::successors(Some(1usize), |n| Some(n * 2))
        .take_while(|&n| n < max_batch)
        .collect();
    sizes.push(max_batch.max(1));
    sizes
}

/// A convolution with its batch norm folded in.
#[derive(Debug)]
pub struct ConvBn {
    pub weight: Tensor,
    pub bias: Tensor,
    pub stride: i64,
    pub padding: i64,
    pub groups: i64,
    /// On a GPU: cuDNN may pick its fastest algorithm per shape (benchmark mode) when
    /// [`benchmark`] allows it.
    pub cuda: bool,
}

impl ConvBn {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        // `conv2d` with its context flags spelled out: cuDNN's TF32 (a 10-bit mantissa, on by
        // default in libtorch) is never allowed, so fp32 is fp32 on a GPU too; reduced
        // precision is asked for with `--precision`, not slipped in. The flag covers this
        // forward call only: the backward convolutions read the process-wide setting, which
        // `strict_fp32_convolutions` turns off.
        x.f_internal_convolution(
            &self.weight,
            Some(&self.bias),
            [self.stride; 2],
            [self.padding; 2],
            [1, 1],
            false,
            [0, 0],
            self.groups,
            self.cuda && BENCHMARK.load(Ordering::Relaxed),
            false,
            true,
            false,
        )
    }
}

/// Turns off cuDNN's TF32 for fp32 convolutions in this whole process, which covers what the
/// per-call flag cannot: autograd's backward convolutions (`convolution_backward`) read the
/// global setting, on by default. tch has no binding for it, so libtorch's own
/// `at::globalContext().setFloat32Precision(CUDA, CONV, IEEE)` is called by its symbol (the
/// Itanium C++ ABI: a member function takes `this` first; the three enums are `int`s). The
/// symbols are those of the libtorch release this build links (tch 0.24 accepts no other); a
/// libtorch without them fails to load the binary at all.
pub fn strict_fp32_convolutions() {
    // SAFETY: `globalContext` returns the process's one context, which lives as long as the
    // process; the setter writes one entry of its precision table (called only while one
    // thread loads the model).
    unsafe { at::set_float32_precision(at::global_context(), at::CUDA, at::CONV, at::IEEE) }
}

/// The fp32 precision libtorch's context now gives CUDA convolutions.
#[cfg(test)]
fn cuda_conv_precision() -> i32 {
    // SAFETY: a const getter on the process's context.
    unsafe { at::float32_precision(at::global_context(), at::CUDA, at::CONV) }
}

/// libtorch's `at::Context` by its C++ symbols.
mod at {
    use std::ffi::c_void;

    /// `at::Float32Backend::CUDA`, `at::Float32Op::CONV`, `at::Float32Precision::{IEEE, TF32}`.
    pub const CUDA: i32 = 1;
    pub const CONV: i32 = 1;
    pub const IEEE: i32 = 1;
    #[cfg(test)]
    pub const TF32: i32 = 2;

    // SAFETY: each declaration matches its C++ function as the Itanium ABI passes it: the
    // context pointer is `this`, the three enums are `int`-sized, `float32Precision` returns
    // one; the mangled names are those of the libtorch this build links (tch 0.24's), and a
    // library without them fails to load the binary, so no call can reach another function.
    unsafe extern "C" {
        #[link_name = "_ZN2at13globalContextEv"]
        pub fn global_context() -> *mut c_void;
        #[link_name = "_ZN2at7Context19setFloat32PrecisionENS_14Float32BackendENS_9Float32OpENS_16Float32PrecisionE"]
        pub fn set_float32_precision(context: *mut c_void, backend: i32, op: i32, precision: i32);
        #[cfg(test)]
        #[link_name = "_ZNK2at7Context16float32PrecisionENS_14Float32BackendENS_9Float32OpE"]
        pub fn float32_precision(context: *mut c_void, backend: i32, op: i32) -> i32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_tunes_powers_of_two_and_the_largest_batch_on_a_gpu() {
        assert_eq!(warm_up_sizes(false, 64), [1]);
        assert_eq!(warm_up_sizes(true, 1), [1]);
        assert_eq!(warm_up_sizes(true, 64), [1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(warm_up_sizes(true, 48), [1, 2, 4, 8, 16, 32, 48]);
    }

    #[test]
    fn tf32_is_turned_off_for_the_backward_convolutions_too() {
        // libtorch's default lets cuDNN use TF32 for fp32 convolutions.
        assert_eq!(cuda_conv_precision(), at::TF32);
        strict_fp32_convolutions();
        assert_eq!(cuda_conv_precision(), at::IEEE);
    }
}
