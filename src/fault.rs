//! Test builds only (cargo feature `fault-injection`): a [`Backend`] wrapper that makes real
//! faults happen on the model thread, so that tests can drive the engine's recovery paths
//! through the real server.
//!
//! A request names its fault in the header `x-gradcam-fault` (see [`Fault`]'s syntax). The HTTP
//! layer appends it to the request's preprocessed image as a short trailer ([`attach`]); the
//! engine carries the image as it carries any other, and the wrapper ([`wrap`]) strips the
//! trailer before the real backend sees the image, then does what it says. The fault thus
//! travels with its image through batching and per-image retries, and nothing in the engine's
//! API knows about it. Builds without the feature contain none of this.

use crate::backend::{
    Backend, BackendError, Description, ExplainOptions, ExplainResult, Fatal, Loader,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A fault injected into one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Hold the model thread this long, then run the job normally (`sleep=MS`).
    Sleep(Duration),
    /// Panic in the model thread; the rebuild that follows takes at least `rebuild_delay`
    /// (`panic` or `panic=MS`), so that tests can watch readiness while it runs.
    Panic { rebuild_delay: Duration },
    /// A real libtorch error: a shape mismatch through a fallible `f_` call (`error`).
    TorchError,
    /// A real libtorch allocation failure: a tensor larger than any address space (`oom`).
    OutOfMemory,
    /// The same failure, but only while the call carries more than this many images
    /// (`oom-above=N`): memory that a large batch needs and a smaller one does not.
    OutOfMemoryAbove(usize),
    /// A panic that the engine does not contain: the model thread itself ends (`die`).
    Die,
}

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ms = |v: &str| {
            v.parse::<u64>()
                .ok()
                .filter(|ms| *ms <= 60_000)
                .map(Duration::from_millis)
                .ok_or_else(|| format!("{v:?} is not a number of milliseconds up to 60000"))
        };
        match s.split_once('=') {
            None if s == "panic" => Ok(Fault::Panic {
                rebuild_delay: Duration::ZERO,
            }),
            None if s == "error" => Ok(Fault::TorchError),
            None if s == "oom" => Ok(Fault::OutOfMemory),
            None if s == "die" => Ok(Fault::Die),
            Some(("sleep", v)) => ms(v).map(Fault::Sleep),
            Some(("panic", v)) => ms(v).map(|rebuild_delay| Fault::Panic { rebuild_delay }),
            Some(("oom-above", v)) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1024).contains(n))
                .map(Fault::OutOfMemoryAbove)
                .ok_or_else(|| format!("{v:?} is not a batch size from 1 to 1024")),
            _ => Err(format!(
                "unknown fault {s:?}; use sleep=MS, panic, panic=MS, error, oom, oom-above=N or die"
            )),
        }
    }
}

/// First value of the trailer: a NaN with a payload that no preprocessed image contains.
const MARK: u32 = 0x7FC0_FA17;
const TRAILER_LEN: usize = 3;

/// Appends `fault` to a preprocessed image.
pub fn attach(input: &mut Vec<f32>, fault: Fault) {
    let (code, ms) = match fault {
        Fault::Sleep(d) => (0, d),
        Fault::Panic { rebuild_delay } => (1, rebuild_delay),
        Fault::TorchError => (2, Duration::ZERO),
        Fault::OutOfMemory => (3, Duration::ZERO),
        Fault::Die => (4, Duration::ZERO),
        Fault::OutOfMemoryAbove(n) => (5, Duration::from_millis(n as u64)),
    };
    // Milliseconds up to 60000 are exact in an f32.
    input.extend([f32::from_bits(MARK), code as f32, ms.as_millis() as f32]);
}

/// The image without its trailer, and the fault the trailer names.
fn detach(input: &[f32]) -> (&[f32], Option<Fault>) {
    // Whatever the input size, the trailer is the last three values.
    let Some(len) = input.len().checked_sub(TRAILER_LEN) else {
        return (input, None);
    };
    if input[len].to_bits() != MARK {
        return (input, None);
    }
    let ms = Duration::from_millis(input[len + 2] as u64);
    let fault = match input[len + 1] as u32 {
        0 => Fault::Sleep(ms),
        1 => Fault::Panic { rebuild_delay: ms },
        2 => Fault::TorchError,
        3 => Fault::OutOfMemory,
        5 => Fault::OutOfMemoryAbove(ms.as_millis() as usize),
        _ => Fault::Die,
    };
    (&input[..len], Some(fault))
}

/// How long the next build must take at least, set by a `panic=MS` fault.
static REBUILD_DELAY_MS: AtomicU64 = AtomicU64::new(0);

/// Wraps every backend `load` builds in the fault injector.
pub fn wrap(load: Loader) -> Loader {
    Box::new(move || {
        let delay = REBUILD_DELAY_MS.swap(0, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(delay));
        let inner = load()?;
        let device =
            crate::config::parse_device(&inner.describe().device).unwrap_or(tch::Device::Cpu);
        Ok(Box::new(FaultBackend { inner, device }) as Box<dyn Backend>)
    })
}

struct FaultBackend {
    inner: Box<dyn Backend>,
    device: tch::Device,
}

impl FaultBackend {
    /// Strips the trailers and makes their faults happen, in input order.
    fn strip<'a>(
        &self,
        inputs: impl ExactSizeIterator<Item = &'a [f32]>,
    ) -> Result<Vec<&'a [f32]>, BackendError> {
        let batch = inputs.len();
        let mut clean = Vec::new();
        for x in inputs {
            let (x, fault) = detach(x);
            if let Some(f) = fault {
                self.inject(f, batch)?;
            }
            clean.push(x);
        }
        Ok(clean)
    }

    fn inject(&self, fault: Fault, batch: usize) -> Result<(), BackendError> {
        use tch::{Kind, Tensor};
        let on = (Kind::Float, self.device);
        let torch = |e: tch::TchError| BackendError::from_message(e.to_string());
        match fault {
            Fault::Sleep(d) => std::thread::sleep(d),
            Fault::Panic { rebuild_delay } => {
                REBUILD_DELAY_MS.store(rebuild_delay.as_millis() as u64, Ordering::SeqCst);
                panic!("injected fault");
            }
            Fault::TorchError => {
                let a = Tensor::f_zeros([2, 3], on).map_err(torch)?;
                let _ = a.f_matmul(&a).map_err(torch)?;
            }
            Fault::OutOfMemory => {
                // 2^48 bytes: more than a 47-bit user address space, whatever the overcommit
                // policy.
                let _ = Tensor::f_empty([1i64 << 46], on).map_err(torch)?;
            }
            Fault::OutOfMemoryAbove(n) if batch > n => {
                let _ = Tensor::f_empty([1i64 << 46], on).map_err(torch)?;
            }
            Fault::OutOfMemoryAbove(_) => {}
            Fault::Die => {
                std::panic::panic_any(Fatal("injected fault: the model thread dies".into()))
            }
        }
        Ok(())
    }
}

impl Backend for FaultBackend {
    fn describe(&self) -> Description {
        self.inner.describe()
    }

    fn labels(&self) -> crate::backend::Labels {
        self.inner.labels()
    }

    fn logits(&self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, BackendError> {
        let clean = self.strip(inputs.iter().copied())?;
        self.inner.logits(&clean)
    }

    fn explain(
        &self,
        items: &[(&[f32], ExplainOptions)],
    ) -> Result<Vec<ExplainResult>, BackendError> {
        let clean = self.strip(items.iter().map(|(x, _)| *x))?;
        let items: Vec<(&[f32], ExplainOptions)> = clean
            .into_iter()
            .zip(items.iter().map(|(_, o)| *o))
            .collect();
        self.inner.explain(&items)
    }

    fn warm_up(&self, max_batch: usize) -> Result<(), BackendError> {
        self.inner.warm_up(max_batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_and_bad_ones_say_what_is_allowed() {
        assert_eq!(
            "sleep=250".parse(),
            Ok(Fault::Sleep(Duration::from_millis(250)))
        );
        assert_eq!(
            "panic".parse(),
            Ok(Fault::Panic {
                rebuild_delay: Duration::ZERO
            })
        );
        assert_eq!(
            "panic=3000".parse(),
            Ok(Fault::Panic {
                rebuild_delay: Duration::from_secs(3)
            })
        );
        assert_eq!("error".parse(), Ok(Fault::TorchError));
        assert_eq!("oom".parse(), Ok(Fault::OutOfMemory));
        assert_eq!("die".parse(), Ok(Fault::Die));
        assert_eq!("oom-above=2".parse(), Ok(Fault::OutOfMemoryAbove(2)));
        for bad in ["", "sleep", "sleep=-1", "sleep=60001", "panic=x", "boom"] {
            let e = bad.parse::<Fault>().unwrap_err();
            assert!(e.contains("sleep=MS") || e.contains("milliseconds"), "{e}");
        }
        for bad in ["oom-above=0", "oom-above=x", "oom-above=1025"] {
            let e = bad.parse::<Fault>().unwrap_err();
            assert!(e.contains("batch size from 1 to 1024"), "{e}");
        }
    }

    #[test]
    fn a_fault_travels_with_its_image_and_is_stripped_before_the_backend() {
        let image: Vec<f32> = (0..crate::backend::INPUT_LEN)
            .map(|i| i as f32 * 1e-3)
            .collect();
        assert_eq!(detach(&image), (&image[..], None));
        for fault in [
            Fault::Sleep(Duration::from_millis(60_000)),
            Fault::Panic {
                rebuild_delay: Duration::from_millis(3000),
            },
            Fault::TorchError,
            Fault::OutOfMemory,
            Fault::Die,
        ] {
            let mut tagged = image.clone();
            attach(&mut tagged, fault);
            assert_eq!(detach(&tagged), (&image[..], Some(fault)));
        }
    }
}
