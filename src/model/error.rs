//! What can go wrong in the model, and how it reaches the engine: out of memory (the caller
//! may retry, the engine splits the batch), a lost GPU context (the model thread ends), or any
//! other failure of its request.

use super::WeightsError;
use super::resnet;
use crate::backend::BackendError;
use tch::TchError;

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
        let e = BackendError::from(ModelError::Torch("CUDA error: invalid argument".into()));
        assert!(matches!(e, BackendError::Failed(_)), "not a lost context");
    }

    #[test]
    fn a_lost_gpu_context_is_told_apart() {
        for msg in [
            "CUDA error: an illegal memory access was encountered",
            "CUDA error: device-side assert triggered",
            "CUDA error: unspecified launch failure",
        ] {
            let e = BackendError::from(ModelError::Torch(msg.into()));
            assert!(matches!(e, BackendError::DeviceLost(_)), "{msg}");
            let shown = e.to_string();
            assert!(
                shown.contains("must restart") && shown.contains(msg),
                "{shown}"
            );
        }
    }
}
