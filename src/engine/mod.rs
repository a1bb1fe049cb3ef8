//! The worker queue: one OS thread owns the backend on its device and runs batches from a
//! bounded queue. The async runtime never runs model code; it only submits preprocessed images
//! and awaits a oneshot reply.
//!
//! The model thread ([`worker`]) takes the first waiting job, then whatever else arrives within
//! the batch delay (up to the batch size), drops jobs whose client has gone or whose deadline
//! has passed, runs one batched call to the [`Backend`] and answers each job.
//!
//! Faults stay inside their request: a backend error in a batch of several images is retried
//! image by image, so only the image that causes it fails (an out-of-memory batch is split the
//! same way). A panic fails its batch with a 500, and the backend is rebuilt before the next
//! batch; readiness is false meanwhile. A lost device (or a [`Fatal`](crate::backend::Fatal)
//! panic) cannot be recovered in this process: the model thread answers its batch and
//! everything still queued with [`EngineError::Lost`] (503 `model_stopped`) and ends, so that
//! liveness fails and the instance is restarted.

mod pace;
mod worker;

use pace::Pace;

use crate::backend::{Description, ExplainOptions, ExplainResult, Loader, Prediction};
use crate::metrics::Metrics;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
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
    /// The queue would keep the job past its deadline: refused at admission.
    #[error(
        "the model would answer this job in at least {} ms (about {} ms at its recent pace), past its deadline",
        at_least.as_millis(),
        likely.as_millis()
    )]
    Overloaded {
        at_least: Duration,
        likely: Duration,
    },
    #[error("the request's deadline passed while it waited in the queue")]
    Expired,
    #[error("the engine is shutting down")]
    Stopped,
    #[error("the device ran out of memory")]
    OutOfMemory,
    #[error("model failure: {0}")]
    Model(String),
    /// The model thread has ended for good (a lost device): only a new process can serve.
    #[error("the model thread has stopped: {0}")]
    Lost(String),
}

/// A queued image with its reply channel. The request's span travels with it, so that the
/// model thread's log lines and spans belong to the request.
struct Job {
    input: Vec<f32>,
    task: Task,
    deadline: Instant,
    enqueued: Instant,
    span: tracing::Span,
    /// The job's part of the request's trace: `queue` until its batch starts, then `inference`
    /// until it is answered (each span closes as the next replaces it).
    stage: tracing::Span,
    reply: oneshot::Sender<Result<Done, EngineError>>,
    /// Test builds: the fault the request asked for, made to happen by the model thread.
    #[cfg(feature = "fault-injection")]
    fault: Option<crate::fault::Fault>,
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
    thread: Mutex<Option<JoinHandle<()>>>,
    status: Arc<Status>,
    description: Description,
    metrics: Arc<Metrics>,
    pace: Arc<Pace>,
}

/// The model thread's state as the rest of the server sees it.
#[derive(Debug)]
struct Status {
    /// The backend is loaded and serving.
    healthy: AtomicBool,
    /// The model thread has not ended.
    alive: AtomicBool,
    /// Shutdown has begun: a failing rebuild gives up instead of retrying.
    stopping: AtomicBool,
}

impl Engine {
    /// Starts the model thread with `load` run on it (so the backend, and a GPU context, belong
    /// to that thread), warms the backend up, and returns once it is ready or has failed.
    /// `load` runs again whenever the backend has to be rebuilt after a panic.
    pub fn start(load: Loader, config: BatchConfig, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Job>(config.queue_capacity);
        let status = Arc::new(Status {
            healthy: AtomicBool::new(false),
            alive: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
        });
        let pace = Arc::new(Pace::new(config.max_batch_size));
        let (thread, description) = worker::spawn(
            load,
            config,
            metrics.clone(),
            status.clone(),
            pace.clone(),
            rx,
        )?;
        Ok(Self {
            tx: RwLock::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            status,
            description,
            metrics,
            pace,
        })
    }

    /// What the backend said about itself when it was first built.
    pub fn description(&self) -> &Description {
        &self.description
    }

    /// Queues one preprocessed image. Refuses at once when the queue is full, or when the
    /// model's recent pace says the job would not reach it before `deadline` (admission by
    /// expected wait; see [`pace`]).
    pub fn submit(
        &self,
        input: Vec<f32>,
        task: Task,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<Result<Done, EngineError>>, EngineError> {
        let queued = self.metrics.queue_depth.load(Ordering::SeqCst).max(0) as usize;
        if let Some(wait) = self.pace.expected_wait(queued) {
            self.metrics
                .set_expected_wait(wait.at_least, wait.per_image);
            // An idle model admits every job: only a backlog can keep one past its deadline, and
            // what it runs keeps the estimate current (a stall once measured cannot shut the
            // door for good). Refused only when even the model's own pace cannot make it.
            let idle = queued == 0 && !self.pace.busy();
            if !idle && Instant::now() + wait.at_least > deadline {
                return Err(EngineError::Overloaded {
                    at_least: wait.at_least,
                    likely: wait.likely,
                });
            }
        }
        let (reply, rx) = oneshot::channel();
        let job = Job {
            input,
            task,
            deadline,
            enqueued: Instant::now(),
            span: tracing::Span::current(),
            stage: tracing::info_span!("queue"),
            reply,
            #[cfg(feature = "fault-injection")]
            fault: crate::fault::current(),
        };
        let guard = self.tx.read().unwrap_or_else(|e| e.into_inner());
        let tx = guard.as_ref().ok_or(EngineError::Stopped)?;
        match tx.try_send(job) {
            Ok(()) => {
                // Counted once it is in the queue, so a depth of N means N jobs really are
                // there; the model thread may already have taken (and uncounted) it, which
                // the signed gauge absorbs.
                self.metrics.queue_depth.fetch_add(1, Ordering::SeqCst);
                Ok(rx)
            }
            Err(e) => Err(match e {
                TrySendError::Full(_) => EngineError::QueueFull,
                TrySendError::Disconnected(_) => EngineError::Stopped,
            }),
        }
    }

    /// True while the backend is loaded and serving; false before start-up completes, while
    /// the backend is being rebuilt after a panic, and once the model thread has stopped.
    pub fn is_healthy(&self) -> bool {
        self.status.healthy.load(Ordering::SeqCst)
    }

    /// False once the model thread has ended, whether stopped or dead.
    pub fn is_alive(&self) -> bool {
        self.status.alive.load(Ordering::SeqCst)
    }

    /// Closes the queue, lets the model thread finish what is queued, and waits for it.
    pub fn shutdown(&self) {
        self.status.stopping.store(true, Ordering::SeqCst);
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
