//! Moving a batch between the host and the model's device.
//!
//! On a GPU the images are written straight into a page-locked (pinned) host buffer kept from
//! batch to batch, and copied to the device without blocking, so the copy overlaps the host's
//! work until the first kernel needs it. Everything the host needs back from a batch (logits,
//! the classes explained, activations, gradients) comes back in one copy at the end: the
//! batch's one synchronisation with the device. On the CPU both directions are plain views.

use std::cell::{Cell, RefCell};
use tch::{Device, Kind, TchError, Tensor};

pub struct Staging {
    device: Device,
    /// The pinned buffer (CUDA only), grown to the largest batch seen.
    pinned: RefCell<Option<Tensor>>,
    /// An upload from `pinned` may still be in flight: the batch that made it has not reached
    /// its download (it failed part way). The next upload waits for the device first.
    in_flight: Cell<bool>,
}

impl Staging {
    pub fn new(device: Device) -> Self {
        Self {
            device,
            pinned: RefCell::new(None),
            in_flight: Cell::new(false),
        }
    }

    /// One `[N, 3, side, side]` f32 tensor on the device from `N` images of `3 * side * side`
    /// values each (lengths already checked).
    pub fn upload(&self, inputs: &[&[f32]], side: i64) -> Result<Tensor, TchError> {
        let n = inputs.len();
        let len = (3 * side * side) as usize;
        let shape = [n as i64, 3, side, side];
        let Device::Cuda(index) = self.device else {
            // On the CPU the images are written straight into the batch tensor.
            let batch = Tensor::f_empty(shape, (Kind::Float, Device::Cpu))?;
            // SAFETY: a new contiguous f32 tensor of exactly `n * len` elements, not yet
            // shared with anything.
            unsafe { fill(&batch, inputs, len) };
            return Ok(batch);
        };
        if self.in_flight.replace(true) {
            tch::Cuda::synchronize(index as i64);
        }
        let mut slot = self.pinned.borrow_mut();
        if slot.as_ref().is_none_or(|t| (t.numel()) < n * len) {
            let host = Tensor::f_empty([(n * len) as i64], (Kind::Float, Device::Cpu))?;
            *slot = Some(host.f_pin_memory(self.device)?);
        }
        let buffer = slot.as_ref().expect("allocated above");
        // SAFETY: the buffer is a contiguous f32 tensor of at least `n * len` elements that
        // nothing else reads or writes now: the only reader is the copy below, and any earlier
        // copy from it has finished (the batch that made it downloaded its results, which waits
        // for the device, or `in_flight` made this call wait above).
        unsafe { fill(buffer, inputs, len) };
        buffer
            .f_narrow(0, 0, (n * len) as i64)?
            .f_view(shape)?
            .f_to_device_(self.device, Kind::Float, true, false)
    }

    /// The tensors' values as f32 on the host, in order; on a GPU in one copy, which waits
    /// for everything queued before it.
    pub fn download(&self, tensors: &[&Tensor]) -> Result<Vec<Vec<f32>>, TchError> {
        let flat = |t: &Tensor| t.f_to_kind(Kind::Float)?.f_contiguous()?.f_view(-1);
        if !self.device.is_cuda() {
            return tensors
                .iter()
                .map(|t| Vec::<f32>::try_from(&flat(t)?))
                .collect();
        }
        let pieces = tensors
            .iter()
            .map(|t| flat(t))
            .collect::<Result<Vec<_>, _>>()?;
        let all = Tensor::f_cat(&pieces, 0)?.f_to_device(Device::Cpu)?;
        self.in_flight.set(false);
        let lens: Vec<usize> = pieces.iter().map(Tensor::numel).collect();
        split(&all, &lens)
    }
}

/// Writes `inputs` (`len` values each) one after another at the start of `buffer`.
///
/// # Safety
/// `buffer` is a contiguous f32 tensor in host memory with at least `inputs.len() * len`
/// elements, which nothing else reads or writes while this runs.
unsafe fn fill(buffer: &Tensor, inputs: &[&[f32]], len: usize) {
    if inputs.is_empty() || len == 0 {
        // An empty tensor may have no storage at all (a null data pointer).
        return;
    }
    debug_assert!(buffer.numel() >= inputs.len() * len && buffer.kind() == Kind::Float);
    // SAFETY: by the caller's contract, the data pointer is valid for `inputs.len() * len`
    // f32s (contiguous, host memory, non-null since the tensor is not empty) and nothing else
    // reads or writes them, so one exclusive slice over them aliases nothing while it lives,
    // though the tensor handle is shared (`&Tensor`): libtorch's storage is interior memory.
    let host = unsafe {
        std::slice::from_raw_parts_mut(buffer.data_ptr().cast::<f32>(), inputs.len() * len)
    };
    for (dst, x) in host.chunks_exact_mut(len).zip(inputs) {
        dst.copy_from_slice(x);
    }
}

/// A 1-D host tensor cut into consecutive pieces of `lens` values, each copied out once.
fn split(all: &Tensor, lens: &[usize]) -> Result<Vec<Vec<f32>>, TchError> {
    let mut at = 0;
    lens.iter()
        .map(|&len| {
            let piece = all.f_narrow(0, at, len as i64)?;
            at += len as i64;
            Vec::<f32>::try_from(&piece)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_written_into_the_batch_in_order() {
        let (side, len) = (4i64, 48usize);
        let a: Vec<f32> = (0..len).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..len).map(|i| -(i as f32) - 0.5).collect();
        let batch = Staging::new(Device::Cpu).upload(&[&a, &b], side).unwrap();
        assert_eq!(batch.size(), [2, 3, side, side]);
        let back = Vec::<f32>::try_from(&batch.view(-1)).unwrap();
        assert_eq!(back, [a, b].concat());
    }

    #[test]
    fn one_host_buffer_is_cut_into_the_tensors_it_came_from() {
        let x = Tensor::arange(6, (Kind::Float, Device::Cpu)).view([2, 3]);
        let y = Tensor::from_slice(&[7.5f32]);
        let z = Tensor::arange(4, (Kind::Double, Device::Cpu)) * -1.0;
        let each = Staging::new(Device::Cpu).download(&[&x, &y, &z]).unwrap();
        assert_eq!(
            each,
            [
                vec![0., 1., 2., 3., 4., 5.],
                vec![7.5],
                vec![0., -1., -2., -3.]
            ]
        );
        // The GPU's way: one buffer, then cut; the same pieces as one copy each.
        let flat: Vec<Tensor> = [&x, &y, &z]
            .iter()
            .map(|t| t.to_kind(Kind::Float).view(-1))
            .collect();
        let all = Tensor::cat(&flat, 0);
        assert_eq!(split(&all, &[6, 1, 4]).unwrap(), each);
        assert!(split(&all, &[6, 1, 5]).is_err(), "past the end is an error");
    }
}
