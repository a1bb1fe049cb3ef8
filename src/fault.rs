//! Test builds only (cargo feature `fault-injection`): makes real faults happen on the model
//! thread, so that tests can drive the engine's recovery paths through the real server.
//!
//! A request names its fault in the header `x-gradcam-fault` (see [`Fault`]'s syntax). The
//! router reads it and handles the request [`within`] it; the engine copies it ([`current`])
//! into the request's job, a test-only field beside the image, and the model thread makes it
//! happen ([`Injector::inject`]) inside the same guard as the backend call. The fault thus
//! travels with its job through batching and per-image retries, the backend and the image know
//! nothing of it, and builds without the feature contain none of this.

use crate::backend::{BackendError, Fatal};
use std::cell::Cell;
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

tokio::task_local! {
    /// The fault of the request being handled.
    static FAULT: Option<Fault>;
}

/// Runs `f` (the handling of one request) with `fault` as its [`current`] fault.
pub async fn within<F: std::future::Future>(fault: Option<Fault>, f: F) -> F::Output {
    FAULT.scope(fault, f).await
}

/// The fault of the request this task handles, if any (read when its job is queued).
pub fn current() -> Option<Fault> {
    FAULT.try_with(|f| *f).ok().flatten()
}

/// The model thread's side: makes the faults of a group of jobs happen, and remembers how long
/// the next rebuild must take (set by `panic=MS`).
#[derive(Debug, Default)]
pub struct Injector {
    rebuild_delay: Cell<Duration>,
}

impl Injector {
    /// Makes `faults` happen, in job order, before a backend call of `batch` images on
    /// `device`: a sleep, a panic, or a real libtorch error.
    pub fn inject(
        &self,
        faults: impl Iterator<Item = Fault>,
        batch: usize,
        device: &str,
    ) -> Result<(), BackendError> {
        use tch::{Kind, Tensor};
        let device = crate::config::parse_device(device).unwrap_or(tch::Device::Cpu);
        let on = (Kind::Float, device);
        let torch = |e: tch::TchError| BackendError::from_message(e.to_string());
        for fault in faults {
            match fault {
                Fault::Sleep(d) => std::thread::sleep(d),
                Fault::Panic { rebuild_delay } => {
                    self.rebuild_delay.set(rebuild_delay);
                    panic!("injected fault");
                }
                Fault::TorchError => {
                    let a = Tensor::f_zeros([2, 3], on).map_err(torch)?;
                    let _ = a.f_matmul(&a).map_err(torch)?;
                }
                Fault::OutOfMemory => {
                    // 2^48 bytes: more than a 47-bit user address space, whatever the
                    // overcommit policy.
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
        }
        Ok(())
    }

    /// Holds a rebuild for as long as the last `panic=MS` asked.
    pub fn before_rebuild(&self) {
        std::thread::sleep(self.rebuild_delay.take());
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
}
