//! The model thread: builds the backend, batches queued jobs, runs them, answers each, and
//! recovers from faults (per-image retry after an error, rebuild after a panic, the end of the
//! thread through the normal drain when the device is lost).

use super::{BatchConfig, Done, EngineError, Job, Output, Pace, Status, Task};
use crate::backend::{self, Backend, BackendError, Description, ExplainOptions, Fatal, Loader};
use crate::metrics::Metrics;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Starts the thread, builds the backend on it, and waits until it is ready (or has failed).
pub(super) fn spawn(
    load: Loader,
    config: BatchConfig,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    pace: Arc<Pace>,
    rx: mpsc::Receiver<Job>,
) -> anyhow::Result<(JoinHandle<()>, Description)> {
    let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<Description>>();
    let worker = Worker {
        load,
        config,
        metrics,
        status,
        pace,
        #[cfg(feature = "fault-injection")]
        faults: crate::fault::Injector::default(),
    };
    let thread = std::thread::Builder::new()
        .name("model".into())
        .spawn(move || {
            // Readiness and liveness turn false however the thread ends, a panic included.
            let _healthy = ClearOnDrop(&worker.status.healthy);
            let _alive = ClearOnDrop(&worker.status.alive);
            let backend = match worker.build() {
                Ok(b) => b,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            worker.status.healthy.store(true, Ordering::SeqCst);
            let _ = ready_tx.send(Ok(backend.describe()));
            worker.run(backend, &rx);
        })?;
    match ready_rx.recv() {
        Ok(Ok(description)) => Ok((thread, description)),
        Ok(Err(e)) => Err(e),
        Err(_) => anyhow::bail!("the model thread died while loading the model"),
    }
}

/// Sets the flag to false when dropped.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Everything the model thread owns besides the backend.
struct Worker {
    load: Loader,
    config: BatchConfig,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    /// The model's recent pace, which admission reads.
    pace: Arc<Pace>,
    /// Test builds: makes the faults that jobs carry happen.
    #[cfg(feature = "fault-injection")]
    faults: crate::fault::Injector,
}

/// How a batch left the backend.
#[derive(Debug, Clone, PartialEq)]
enum Health {
    Fine,
    /// A panic happened: rebuild the backend before the next batch.
    Broken,
    /// The device is lost (or the backend panicked with [`Fatal`]): nothing in this process
    /// can serve again, so the thread ends.
    Lost(String),
}

impl Health {
    /// Records a worse state; a lost device is never downgraded to a rebuild.
    fn worsen(&mut self, to: Health) {
        if !matches!(self, Health::Lost(_)) {
            *self = to;
        }
    }
}

/// What the model thread says of its backend in each batch's span (and how it times it).
struct Model {
    device: String,
    precision: String,
    on_cpu: bool,
}

/// Why one attempt at a group of jobs failed.
enum Failure {
    Error(EngineError),
    Panic(String),
    Lost(String),
}

impl Worker {
    /// Loads and warms up the backend; a panic in either counts as a failure.
    fn build(&self) -> anyhow::Result<Box<dyn Backend>> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| {
            let b = (self.load)()?;
            b.warm_up(self.config.max_batch_size)?;
            Ok(b)
        })) {
            Ok(r) => r,
            Err(p) => Err(anyhow::anyhow!(
                "panic while loading the model: {}",
                panic_message(&*p)
            )),
        }
    }

    fn run(&self, mut backend: Box<dyn Backend>, rx: &mpsc::Receiver<Job>) {
        let mut end = EngineError::Stopped;
        let described = backend.describe();
        let on_cpu = matches!(
            crate::config::parse_device(&described.device),
            Ok(tch::Device::Cpu)
        );
        let model = Model {
            device: described.device,
            precision: described.precision.to_string(),
            on_cpu,
        };
        while let Some(batch) = self.next_batch(rx) {
            if batch.is_empty() {
                continue;
            }
            match self.run_batch(&*backend, batch, &model) {
                Health::Fine => {}
                Health::Broken => {
                    drop(backend);
                    match self.rebuild() {
                        Some(b) => backend = b,
                        None => break,
                    }
                    self.status.healthy.store(true, Ordering::SeqCst);
                }
                Health::Lost(reason) => {
                    tracing::error!(%reason, "the model cannot go on in this process: the model thread ends, restart the instance");
                    // New requests are refused from now on; what is queued is answered below.
                    self.status.alive.store(false, Ordering::SeqCst);
                    end = EngineError::Lost(reason);
                    break;
                }
            }
        }
        // Whatever is still queued when the thread stops is answered, not dropped. (Readiness
        // turns false as the thread ends, through its `ClearOnDrop`.)
        while let Ok(job) = rx.try_recv() {
            self.take(job).reply.send(Err(end.clone())).ok();
        }
    }

    fn take(&self, job: Job) -> Job {
        self.metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
        job
    }

    /// Waits for the first job, gathers more for up to the batch delay, and answers or drops
    /// the ones that must not reach the model. `None` once the queue is closed and empty.
    fn next_batch(&self, rx: &mpsc::Receiver<Job>) -> Option<Vec<Job>> {
        let first = rx.recv().ok()?;
        let mut batch = vec![self.take(first)];
        let until = Instant::now() + self.config.max_batch_delay;
        while batch.len() < self.config.max_batch_size {
            match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(job) => batch.push(self.take(job)),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        // Each job that does not reach the model is counted once, under its one true reason.
        let now = Instant::now();
        let mut live = Vec::with_capacity(batch.len());
        for job in batch {
            if job.deadline <= now {
                // Past its deadline: the HTTP layer answers 504 (or already has, if its own
                // timer fired first) and counts it as a timeout there.
                let _ = job.reply.send(Err(EngineError::Expired));
            } else if job.reply.is_closed() {
                // The client has gone: do not spend the model on it.
                self.metrics.rejection("client_gone");
            } else {
                live.push(job);
            }
        }
        Some(live)
    }

    /// Builds the backend again after a panic, retrying with backoff until it works or the
    /// engine is stopping (then `None`). Readiness is false throughout.
    fn rebuild(&self) -> Option<Box<dyn Backend>> {
        tracing::warn!("rebuilding the model after a panic");
        #[cfg(feature = "fault-injection")]
        self.faults.before_rebuild();
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.build() {
                Ok(b) => {
                    self.metrics.rebuild(true);
                    tracing::info!("model rebuilt");
                    return Some(b);
                }
                Err(e) => {
                    self.metrics.rebuild(false);
                    tracing::error!(error = %e, "rebuilding the model failed");
                }
            }
            if self.status.stopping.load(Ordering::SeqCst) {
                return None;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    fn run_batch(&self, backend: &dyn Backend, mut jobs: Vec<Job>, model: &Model) -> Health {
        let started = Instant::now();
        let cpu_started = crate::metrics::thread_cpu_time();
        let size = jobs.len();
        self.pace.started(size);
        // The batch's own trace, linked to each request it serves; each request's `queue` span
        // ends here and its `inference` span, linked to the batch, begins.
        let batch = tracing::info_span!(
            "batch",
            batch.size = size as i64,
            model.device = %model.device,
            model.precision = %model.precision,
        );
        for job in &mut jobs {
            batch.follows_from(&job.span);
            job.stage =
                tracing::info_span!(parent: &job.span, "inference", batch.size = size as i64);
            job.stage.follows_from(&batch);
        }
        let entered = batch.enter();
        // Inside the batch's span: a traced batch is the size's exemplar.
        self.metrics.batch(size);
        let (explain, predict): (Vec<Job>, Vec<Job>) = jobs
            .into_iter()
            .partition(|j| matches!(j.task, Task::Explain(_)));
        let mut health = Health::Fine;
        let explain_out = self.run_group(backend, &explain, &mut health);
        let predict_out = self.run_group(backend, &predict, &mut health);
        drop(entered);
        let inference = started.elapsed();
        // Only a batch that ran normally says how fast the model is; on the CPU its work is the
        // model thread's own CPU time (see `pace`).
        let work = if model.on_cpu {
            crate::metrics::thread_cpu_time().saturating_sub(cpu_started)
        } else {
            inference
        };
        self.pace.finished(
            size,
            inference.as_secs_f64(),
            work.as_secs_f64(),
            health == Health::Fine,
        );
        if health != Health::Fine {
            // Readiness must already be false when the failed requests get their answers.
            self.status.healthy.store(false, Ordering::SeqCst);
        }
        for (jobs, outs) in [(explain, explain_out), (predict, predict_out)] {
            for (job, out) in jobs.into_iter().zip(outs) {
                let queue = started.saturating_duration_since(job.enqueued);
                let reply = match out {
                    Ok(output) => {
                        // In the job's own span, not the request's: entering that here would
                        // move its end to now, though it may have been answered already.
                        job.stage.in_scope(|| {
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
                        job.stage
                            .in_scope(|| tracing::error!(error = %e, "model failure"));
                        Err(e)
                    }
                };
                let _ = job.reply.send(reply);
            }
        }
        health
    }

    /// Runs jobs of one kind together. When that runs out of memory, runs each half of the
    /// batch the same way; on another error (not a panic) with more than one job, runs each
    /// alone so that only the job that causes it fails.
    fn run_group(
        &self,
        backend: &dyn Backend,
        jobs: &[Job],
        health: &mut Health,
    ) -> Vec<Result<Output, EngineError>> {
        if let Health::Lost(reason) = health {
            // Nothing more reaches a lost device.
            return jobs
                .iter()
                .map(|_| Err(EngineError::Lost(reason.clone())))
                .collect();
        }
        if jobs.is_empty() {
            return Vec::new();
        }
        match self.attempt(backend, jobs) {
            Ok(outputs) => outputs.into_iter().map(Ok).collect(),
            Err(Failure::Panic(msg)) => {
                health.worsen(Health::Broken);
                let e = EngineError::Model(format!("panic in the model thread: {msg}"));
                jobs.iter().map(|_| Err(e.clone())).collect()
            }
            Err(Failure::Lost(reason)) => {
                health.worsen(Health::Lost(reason.clone()));
                jobs.iter()
                    .map(|_| Err(EngineError::Lost(reason.clone())))
                    .collect()
            }
            Err(Failure::Error(e)) if jobs.len() == 1 => vec![Err(e)],
            Err(Failure::Error(EngineError::OutOfMemory)) => {
                // The batch did not fit: two halves may, and keep most of the batching's gain.
                let (a, b) = jobs.split_at(jobs.len() / 2);
                tracing::warn!(
                    size = jobs.len(),
                    "out of memory at batch {}: retrying as {} and {}",
                    jobs.len(),
                    a.len(),
                    b.len()
                );
                let mut out = self.run_group(backend, a, health);
                out.extend(self.run_group(backend, b, health));
                out
            }
            Err(Failure::Error(e)) => {
                tracing::warn!(error = %e, size = jobs.len(), "batch failed: retrying its images one by one");
                jobs.iter()
                    .flat_map(|j| self.run_group(backend, std::slice::from_ref(j), health))
                    .collect()
            }
        }
    }

    /// One try at a group of jobs of the same kind, with backend errors and panics caught and
    /// told apart: a lost device, or a [`Fatal`] panic, is [`Failure::Lost`].
    fn attempt(&self, backend: &dyn Backend, jobs: &[Job]) -> Result<Vec<Output>, Failure> {
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            // Only a job that names a fault asks the backend where it runs.
            #[cfg(feature = "fault-injection")]
            if jobs.iter().any(|j| j.fault.is_some()) {
                self.faults.inject(
                    jobs.iter().filter_map(|j| j.fault),
                    jobs.len(),
                    &backend.describe().device,
                )?;
            }
            call(backend, jobs)
        }));
        match result {
            Ok(Ok(v)) => Ok(v),
            // Out of memory is the load's fault, not the request's: the caller may retry.
            Ok(Err(BackendError::OutOfMemory(_))) => Err(Failure::Error(EngineError::OutOfMemory)),
            Ok(Err(BackendError::Failed(m))) => Err(Failure::Error(EngineError::Model(m))),
            // Neither a retry nor a rebuild in this process can help.
            Ok(Err(e @ BackendError::DeviceLost(_))) => Err(Failure::Lost(e.to_string())),
            Err(panic) => match panic.downcast::<Fatal>() {
                Ok(fatal) => Err(Failure::Lost(fatal.0)),
                Err(panic) => Err(Failure::Panic(panic_message(&*panic))),
            },
        }
    }
}

/// The backend call for a group of jobs of one kind.
fn call(backend: &dyn Backend, jobs: &[Job]) -> Result<Vec<Output>, BackendError> {
    if let Task::Predict { .. } = jobs[0].task {
        let inputs: Vec<&[f32]> = jobs.iter().map(|j| j.input.as_slice()).collect();
        let rows = backend.logits(&inputs)?;
        let labels = backend.labels();
        return Ok(rows
            .iter()
            .zip(jobs)
            .map(|(row, j)| {
                let k = match j.task {
                    Task::Predict { top_k } => top_k,
                    Task::Explain(_) => 1,
                };
                Output::Predict(backend::top_predictions(row, k, &labels))
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
    Ok(backend
        .explain(&items)?
        .into_iter()
        .map(Output::Explain)
        .collect())
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}
