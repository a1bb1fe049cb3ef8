//! The worker queue: one OS thread owns the model on its device and runs batches from a bounded
//! queue. The async runtime never runs model code; it only submits preprocessed images and
//! awaits a oneshot reply.
//!
//! The model thread takes the first waiting job, then whatever else arrives within the batch
//! delay (up to the batch size), drops jobs whose client has gone or whose deadline has passed,
//! runs one batched forward (and partial backward for explanations) and answers each job.

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

struct Job {
    input: Vec<f32>,
    task: Task,
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
    metrics: Arc<Metrics>,
}

impl Engine {
    /// Starts the model thread with `load` run on it (so the model, and a GPU context, belong
    /// to that thread), warms the model up, and returns once it is ready or has failed.
    pub fn start(
        load: impl FnOnce() -> anyhow::Result<Model> + Send + 'static,
        config: BatchConfig,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Job>(config.queue_capacity);
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
        let healthy = Arc::new(AtomicBool::new(false));
        let thread_metrics = metrics.clone();
        let thread_healthy = healthy.clone();
        let thread = std::thread::Builder::new()
            .name("model".into())
            .spawn(move || {
                let model = match load().and_then(|m| m.warm_up().map(|_| m).map_err(Into::into)) {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                thread_healthy.store(true, Ordering::SeqCst);
                let _ = ready_tx.send(Ok(()));
                worker_loop(&model, &rx, config, &thread_metrics, &thread_healthy);
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
            metrics,
        })
    }

    /// Queues one preprocessed image. Refuses at once when the queue is full.
    pub fn submit(
        &self,
        input: Vec<f32>,
        task: Task,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<Result<Done, EngineError>>, EngineError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            input,
            task,
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

    /// False once the model thread has stopped (or never started).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// Closes the queue, lets the model thread finish what is queued, and waits for it.
    pub fn shutdown(&self) {
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

fn worker_loop(
    model: &Model,
    rx: &mpsc::Receiver<Job>,
    config: BatchConfig,
    metrics: &Metrics,
    healthy: &AtomicBool,
) {
    let take = |job: Job| {
        metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
        job
    };
    while let Ok(first) = rx.recv() {
        let mut batch = vec![take(first)];
        let until = Instant::now() + config.max_batch_delay;
        while batch.len() < config.max_batch_size {
            match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(job) => batch.push(take(job)),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let now = Instant::now();
        batch.retain(|job| {
            if job.reply.is_closed() {
                // The client has gone: do not spend the model on it.
                metrics.rejection("client_gone");
                false
            } else {
                true
            }
        });
        let (live, expired): (Vec<Job>, Vec<Job>) =
            batch.into_iter().partition(|j| j.deadline > now);
        for job in expired {
            metrics.rejection("queue_timeout");
            let _ = job.reply.send(Err(EngineError::Expired));
        }
        if !live.is_empty() {
            run_batch(model, live, metrics);
        }
    }
    healthy.store(false, Ordering::SeqCst);
}

fn run_batch(model: &Model, jobs: Vec<Job>, metrics: &Metrics) {
    let started = Instant::now();
    let size = jobs.len();
    metrics.batch(size);
    let (explain, predict): (Vec<Job>, Vec<Job>) = jobs
        .into_iter()
        .partition(|j| matches!(j.task, Task::Explain(_)));

    let explain_out = (!explain.is_empty()).then(|| {
        let items: Vec<(&[f32], ExplainOptions)> = explain
            .iter()
            .map(|j| match j.task {
                Task::Explain(o) => (j.input.as_slice(), o),
                Task::Predict { .. } => unreachable!("partitioned above"),
            })
            .collect();
        guarded(|| model.explain(&items))
            .map(|r| r.into_iter().map(Output::Explain).collect::<Vec<_>>())
    });
    let predict_out = (!predict.is_empty()).then(|| {
        let inputs: Vec<&[f32]> = predict.iter().map(|j| j.input.as_slice()).collect();
        guarded(|| model.logits(&inputs)).map(|rows| {
            rows.iter()
                .zip(&predict)
                .map(|(row, j)| {
                    let k = match j.task {
                        Task::Predict { top_k } => top_k,
                        Task::Explain(_) => unreachable!("partitioned above"),
                    };
                    Output::Predict(crate::model::top_predictions(row, k))
                })
                .collect::<Vec<_>>()
        })
    });
    let inference = started.elapsed();
    for (jobs, out) in [(explain, explain_out), (predict, predict_out)] {
        let Some(out) = out else { continue };
        match out {
            Ok(outputs) => {
                for (job, output) in jobs.into_iter().zip(outputs) {
                    let queue = started.saturating_duration_since(job.enqueued);
                    job.span.in_scope(|| {
                        tracing::debug!(batch_size = size, ?queue, ?inference, "inference done")
                    });
                    let _ = job.reply.send(Ok(Done {
                        output,
                        queue,
                        inference,
                        batch_size: size,
                    }));
                }
            }
            Err(e) => {
                for job in jobs {
                    job.span
                        .in_scope(|| tracing::error!(error = %e, "model failure"));
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Runs model code, turning libtorch errors and panics into an [`EngineError`] so that one bad
/// batch cannot take the model thread down.
fn guarded<T>(f: impl FnOnce() -> Result<T, ModelError>) -> Result<T, EngineError> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        // A CUDA out-of-memory is the load's fault, not the request's: the caller may retry.
        Ok(Err(e)) if e.to_string().to_ascii_lowercase().contains("out of memory") => {
            Err(EngineError::OutOfMemory)
        }
        Ok(Err(e)) => Err(EngineError::Model(e.to_string())),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            Err(EngineError::Model(format!(
                "panic in the model thread: {msg}"
            )))
        }
    }
}
