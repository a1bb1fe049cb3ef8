//! The worker queue: one OS thread owns the model on its device and runs batches from a bounded
//! queue. The async runtime never runs model code; it only submits preprocessed images and
//! awaits a oneshot reply.
//!
//! The model thread takes the first waiting job, then whatever else arrives within the batch
//! delay (up to the batch size), drops jobs whose client has gone or whose deadline has passed,
//! runs one batched forward (and partial backward for explanations) and answers each job.
//!
//! Faults stay inside their request: a libtorch error in a batch of several images is retried
//! image by image, so only the image that causes it fails (an out-of-memory batch is split the
//! same way). A panic fails its batch with a 500, and the model is rebuilt from its weights
//! before the next batch; readiness is false meanwhile.

use crate::metrics::Metrics;
use crate::model::{ExplainOptions, ExplainResult, Model, ModelError, Prediction};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What to do with one image.
#[derive(Debug, Clone, Copy)]
pub enum Task {
    Explain(ExplainOptions),
    /// Classification only: no backward pass.
    Predict {
        top_k: usize,
    },
}

#[derive(Debug)]
pub enum Output {
    Explain(ExplainResult),
    Predict(Vec<Prediction>),
}

/// A finished job with its timings.
#[derive(Debug)]
pub struct Done {
    pub output: Output,
    /// Time from submission until its batch started.
    pub queue: Duration,
    /// Time the batch spent in the model.
    pub inference: Duration,
    pub batch_size: usize,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum EngineError {
    #[error("the queue is full")]
    QueueFull,
    #[error("the request's deadline passed while it waited in the queue")]
    Expired,
    #[error("the engine is shutting down")]
    Stopped,
    #[error("the device ran out of memory")]
    OutOfMemory,
    #[error("model failure: {0}")]
    Model(String),
}

/// A fault injected into one job by the test build (cargo feature `fault-injection`, which
/// reads it from a request header). In every other build nothing creates one.
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
    /// A panic outside the per-batch guard: the model thread itself ends (`die`).
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
            _ => Err(format!(
                "unknown fault {s:?}; use sleep=MS, panic, panic=MS, error, oom or die"
            )),
        }
    }
}

struct Job {
    input: Vec<f32>,
    task: Task,
    fault: Option<Fault>,
    deadline: Instant,
    enqueued: Instant,
    span: tracing::Span,
    reply: oneshot::Sender<Result<Done, EngineError>>,
}

/// Batching settings.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_batch_size: usize,
    pub max_batch_delay: Duration,
    pub queue_capacity: usize,
}

/// Handle to the model thread.
pub struct Engine {
    tx: RwLock<Option<SyncSender<Job>>>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    healthy: Arc<AtomicBool>,
    alive: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

/// Sets the flag to false when dropped: the model thread holds one, so that readiness turns
/// false however the thread ends.
struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Engine {
    /// Starts the model thread with `load` run on it (so the model, and a GPU context, belong
    /// to that thread), warms the model up, and returns once it is ready or has failed. `load`
    /// runs again whenever the model has to be rebuilt after a panic.
    pub fn start(
        load: impl Fn() -> anyhow::Result<Model> + Send + 'static,
        config: BatchConfig,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Job>(config.queue_capacity);
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
        let healthy = Arc::new(AtomicBool::new(false));
        let alive = Arc::new(AtomicBool::new(true));
        let stopping = Arc::new(AtomicBool::new(false));
        let thread_alive = alive.clone();
        let worker = Worker {
            load: Box::new(load),
            config,
            metrics: metrics.clone(),
            healthy: healthy.clone(),
            stopping: stopping.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("model".into())
            .spawn(move || {
                let _clear = ClearOnDrop(worker.healthy.clone());
                let _alive = ClearOnDrop(thread_alive);
                let model = match worker.build() {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                worker.healthy.store(true, Ordering::SeqCst);
                let _ = ready_tx.send(Ok(()));
                worker.run(model, &rx);
            })
            .expect("spawning a thread only fails when the OS is out of resources");
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => anyhow::bail!("the model thread died while loading the model"),
        }
        Ok(Self {
            tx: RwLock::new(Some(tx)),
            thread: std::sync::Mutex::new(Some(thread)),
            healthy,
            alive,
            stopping,
            metrics,
        })
    }

    /// Queues one preprocessed image. Refuses at once when the queue is full. `fault` is for
    /// the test build only; pass `None`.
    pub fn submit(
        &self,
        input: Vec<f32>,
        task: Task,
        deadline: Instant,
        fault: Option<Fault>,
    ) -> Result<oneshot::Receiver<Result<Done, EngineError>>, EngineError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            input,
            task,
            fault,
            deadline,
            enqueued: Instant::now(),
            span: tracing::Span::current(),
            reply,
        };
        let guard = self.tx.read().unwrap_or_else(|e| e.into_inner());
        let tx = guard.as_ref().ok_or(EngineError::Stopped)?;
        // Count before sending: the worker may take the job before try_send returns.
        self.metrics.queue_depth.fetch_add(1, Ordering::SeqCst);
        match tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => EngineError::QueueFull,
                    TrySendError::Disconnected(_) => EngineError::Stopped,
                })
            }
        }
    }

    /// True while the model is loaded and serving; false before start-up completes, while the
    /// model is being rebuilt after a panic, and once the model thread has stopped.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// False once the model thread has ended, whether stopped or dead.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Closes the queue, lets the model thread finish what is queued, and waits for it.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.tx.write().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Everything the model thread owns besides the model.
struct Worker {
    load: Box<dyn Fn() -> anyhow::Result<Model> + Send>,
    config: BatchConfig,
    metrics: Arc<Metrics>,
    healthy: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
}

/// How a batch left the model.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Health {
    Fine,
    /// A panic happened: rebuild the model (taking at least this long) before the next batch.
    Broken(Duration),
}

/// Why one attempt at a group of jobs failed.
enum Failure {
    Error(EngineError),
    Panic(String, Duration),
}

impl Worker {
    /// Loads and warms up the model; a panic in either counts as a failure.
    fn build(&self) -> anyhow::Result<Model> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| {
            let m = (self.load)()?;
            m.warm_up()?;
            Ok(m)
        })) {
            Ok(r) => r,
            Err(p) => Err(anyhow::anyhow!(
                "panic while loading the model: {}",
                panic_message(&*p)
            )),
        }
    }

    fn run(&self, mut model: Model, rx: &mpsc::Receiver<Job>) {
        let take = |job: Job| {
            self.metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
            job
        };
        while let Ok(first) = rx.recv() {
            let mut batch = vec![take(first)];
            let until = Instant::now() + self.config.max_batch_delay;
            while batch.len() < self.config.max_batch_size {
                match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok(job) => batch.push(take(job)),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            let now = Instant::now();
            batch.retain(|job| {
                if job.reply.is_closed() {
                    // The client has gone: do not spend the model on it.
                    self.metrics.rejection("client_gone");
                    false
                } else {
                    true
                }
            });
            let (live, expired): (Vec<Job>, Vec<Job>) =
                batch.into_iter().partition(|j| j.deadline > now);
            for job in expired {
                self.metrics.rejection("queue_timeout");
                let _ = job.reply.send(Err(EngineError::Expired));
            }
            if live.is_empty() {
                continue;
            }
            if live.iter().any(|j| j.fault == Some(Fault::Die)) {
                panic!("injected fault: the model thread dies");
            }
            if let Health::Broken(delay) = self.run_batch(&model, live) {
                drop(model);
                match self.rebuild(delay) {
                    Some(m) => model = m,
                    None => break,
                }
                self.healthy.store(true, Ordering::SeqCst);
            }
        }
        // Whatever is still queued when the thread stops is answered, not dropped. (Readiness
        // turns false as the thread ends, through its `ClearOnDrop`.)
        while let Ok(job) = rx.try_recv() {
            take(job).reply.send(Err(EngineError::Stopped)).ok();
        }
    }

    /// Loads the model again after a panic, retrying with backoff until it works or the engine
    /// is stopping (then `None`). Readiness is false throughout.
    fn rebuild(&self, delay: Duration) -> Option<Model> {
        tracing::warn!("rebuilding the model after a panic");
        std::thread::sleep(delay);
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.build() {
                Ok(m) => {
                    self.metrics.rebuild(true);
                    tracing::info!("model rebuilt");
                    return Some(m);
                }
                Err(e) => {
                    self.metrics.rebuild(false);
                    tracing::error!(error = %e, "rebuilding the model failed");
                }
            }
            if self.stopping.load(Ordering::SeqCst) {
                return None;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    fn run_batch(&self, model: &Model, jobs: Vec<Job>) -> Health {
        let started = Instant::now();
        let size = jobs.len();
        self.metrics.batch(size);
        let (explain, predict): (Vec<Job>, Vec<Job>) = jobs
            .into_iter()
            .partition(|j| matches!(j.task, Task::Explain(_)));
        let mut health = Health::Fine;
        let explain_out = self.run_group(model, &explain, &mut health);
        let predict_out = self.run_group(model, &predict, &mut health);
        let inference = started.elapsed();
        if health != Health::Fine {
            // Readiness must already be false when the failed requests get their answers.
            self.healthy.store(false, Ordering::SeqCst);
        }
        for (jobs, outs) in [(explain, explain_out), (predict, predict_out)] {
            for (job, out) in jobs.into_iter().zip(outs) {
                let queue = started.saturating_duration_since(job.enqueued);
                let reply = match out {
                    Ok(output) => {
                        job.span.in_scope(|| {
                            tracing::debug!(batch_size = size, ?queue, ?inference, "inference done")
                        });
                        Ok(Done {
                            output,
                            queue,
                            inference,
                            batch_size: size,
                        })
                    }
                    Err(e) => {
                        job.span
                            .in_scope(|| tracing::error!(error = %e, "model failure"));
                        Err(e)
                    }
                };
                let _ = job.reply.send(reply);
            }
        }
        health
    }

    /// Runs jobs of one kind together; on an error (not a panic) with more than one job, runs
    /// each alone so that only the job that causes it fails.
    fn run_group(
        &self,
        model: &Model,
        jobs: &[Job],
        health: &mut Health,
    ) -> Vec<Result<Output, EngineError>> {
        if jobs.is_empty() {
            return Vec::new();
        }
        match attempt(model, jobs) {
            Ok(outputs) => outputs.into_iter().map(Ok).collect(),
            Err(Failure::Panic(msg, delay)) => {
                *health = Health::Broken(delay);
                let e = EngineError::Model(format!("panic in the model thread: {msg}"));
                jobs.iter().map(|_| Err(e.clone())).collect()
            }
            Err(Failure::Error(e)) if jobs.len() == 1 => vec![Err(e)],
            Err(Failure::Error(e)) => {
                tracing::warn!(error = %e, size = jobs.len(), "batch failed: retrying its images one by one");
                jobs.iter()
                    .flat_map(|j| self.run_group(model, std::slice::from_ref(j), health))
                    .collect()
            }
        }
    }
}

/// One try at a group of jobs of the same kind, with libtorch errors and panics caught.
fn attempt(model: &Model, jobs: &[Job]) -> Result<Vec<Output>, Failure> {
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        for fault in jobs.iter().filter_map(|j| j.fault) {
            inject(fault, model)?;
        }
        if let Task::Predict { .. } = jobs[0].task {
            let inputs: Vec<&[f32]> = jobs.iter().map(|j| j.input.as_slice()).collect();
            let rows = model.logits(&inputs)?;
            return Ok(rows
                .iter()
                .zip(jobs)
                .map(|(row, j)| {
                    let k = match j.task {
                        Task::Predict { top_k } => top_k,
                        Task::Explain(_) => 1,
                    };
                    Output::Predict(crate::model::top_predictions(row, k))
                })
                .collect());
        }
        let items: Vec<(&[f32], ExplainOptions)> = jobs
            .iter()
            .filter_map(|j| match j.task {
                Task::Explain(o) => Some((j.input.as_slice(), o)),
                Task::Predict { .. } => None,
            })
            .collect();
        Ok(model
            .explain(&items)?
            .into_iter()
            .map(Output::Explain)
            .collect())
    }));
    match result {
        Ok(Ok(v)) => Ok(v),
        // Out of memory is the load's fault, not the request's: the caller may retry.
        Ok(Err(e)) if is_out_of_memory(&e) => Err(Failure::Error(EngineError::OutOfMemory)),
        Ok(Err(e)) => Err(Failure::Error(EngineError::Model(e.to_string()))),
        Err(panic) => {
            let delay = jobs
                .iter()
                .find_map(|j| match j.fault {
                    Some(Fault::Panic { rebuild_delay }) => Some(rebuild_delay),
                    _ => None,
                })
                .unwrap_or_default();
            Err(Failure::Panic(panic_message(&*panic), delay))
        }
    }
}

/// CUDA says "CUDA out of memory"; the CPU allocator says "not enough memory" or "can't
/// allocate memory".
fn is_out_of_memory(e: &ModelError) -> bool {
    let msg = e.to_string().to_ascii_lowercase();
    [
        "out of memory",
        "not enough memory",
        "can't allocate memory",
    ]
    .iter()
    .any(|m| msg.contains(m))
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Makes an injected fault happen for real on the model thread.
fn inject(fault: Fault, model: &Model) -> Result<(), ModelError> {
    use tch::{Kind, Tensor};
    let on = (Kind::Float, model.device());
    match fault {
        Fault::Sleep(d) => std::thread::sleep(d),
        Fault::Panic { .. } => panic!("injected fault"),
        Fault::TorchError => {
            let a = Tensor::f_zeros([2, 3], on)?;
            let _ = a.f_matmul(&a)?;
        }
        Fault::OutOfMemory => {
            // 2^48 bytes: more than a 47-bit user address space, whatever the overcommit policy.
            let _ = Tensor::f_empty([1i64 << 46], on)?;
        }
        Fault::Die => unreachable!("handled by the worker loop before the batch runs"),
    }
    Ok(())
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
        for bad in ["", "sleep", "sleep=-1", "sleep=60001", "panic=x", "boom"] {
            let e = bad.parse::<Fault>().unwrap_err();
            assert!(e.contains("sleep=MS") || e.contains("milliseconds"), "{e}");
        }
    }

    #[test]
    fn out_of_memory_is_recognised_from_cuda_and_cpu_messages() {
        for msg in [
            "CUDA out of memory. Tried to allocate 2.00 GiB",
            "DefaultCPUAllocator: not enough memory: you tried to allocate 281474976710656 bytes.",
            "DefaultCPUAllocator: can't allocate memory: you tried to allocate 281474976710656 bytes.",
        ] {
            assert!(is_out_of_memory(&ModelError::Torch(msg.into())), "{msg}");
        }
        assert!(!is_out_of_memory(&ModelError::Torch(
            "mat1 and mat2 shapes cannot be multiplied (2x3 and 2x3)".into()
        )));
    }
}
