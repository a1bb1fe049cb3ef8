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
            let mut flat = Vec::with_capacity(n * len);
            inputs.iter().for_each(|x| flat.extend_from_slice(x));
            return Tensor::f_from_slice(&flat)?.f_view(shape);
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
        let host =
            unsafe { std::slice::from_raw_parts_mut(buffer.data_ptr().cast::<f32>(), n * len) };
        for (dst, x) in host.chunks_exact_mut(len).zip(inputs) {
            dst.copy_from_slice(x);
        }
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
        let all = Vec::<f32>::try_from(&all)?;
        let mut out = Vec::with_capacity(pieces.len());
        let mut at = 0;
        for p in &pieces {
            let len = p.numel();
            out.push(all[at..at + len].to_vec());
            at += len;
        }
        Ok(out)
    }
}
