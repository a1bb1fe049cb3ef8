//! `gradcam-serve explain`: explains image files without the server, from one photograph to a
//! whole dataset. Pictures stream through the model in batches (see [`pipeline`]); for each it
//! writes the overlay PNGs (one per explained class) and a JSON document with predictions and
//! maps, and, when asked, one summary record; `--resume` skips pictures already done.

pub mod bench;
mod document;
mod inputs;
mod outputs;
mod pipeline;
mod plan;
mod progress;

use crate::backend::{Backend, ExplainOptions, Prediction};
use crate::config::ExplainConfig;
use crate::input::Preprocess;
use crate::model;
use crate::render::OverlayOptions;
use anyhow::{Result, bail};
use document::{Answer, Writer};
use inputs::Picture;
use outputs::Summary;
use pipeline::{Finished, Settings};
use plan::{Outputs, Work};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// How a run ended, for the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every picture explained: status 0.
    Complete,
    /// Some pictures could not be read or decoded and were skipped: status 2.
    Skipped,
    /// Stopped by Ctrl-C after the batch in flight: status 130.
    Interrupted,
}

/// Pictures per batch when `--batch-size` is not given. Measured on a 2-core CPU
/// (scripts/dataset_bench.sh, 200 pictures): 15.4, 15.0, 13.5, 12.4 and 10.7 pictures/s at
/// batch 1, 4, 8, 16 and 32, peak RSS growing from 642 to 1074 MiB; 4 is within noise of the
/// best and leaves batching its gain on CPUs with more cores. A GPU wants larger batches.
fn default_batch(device: tch::Device) -> usize {
    if device.is_cuda() { 32 } else { 4 }
}

/// The run, step by step: check the arguments, find the work, load the model, stream the
/// pictures through it writing each one's files and record, then close the summary and say
/// how it went.
pub fn run(args: ExplainConfig) -> Result<Outcome> {
    let opts = plan::options(&args)?;
    let outputs = Outputs::of(&args);
    let Work {
        pictures,
        todo,
        summary,
        not_images,
    } = Work::find(&args, &outputs)?;

    let model = model::load(&args.model)?;
    let description = model.describe();
    opts.validate(description.classes)
        .map_err(anyhow::Error::msg)?;
    let settings = settings(&args, opts, description.input);
    let writer = Writer {
        out: &args.out,
        description: &description,
        overlay: OverlayOptions {
            colormap: args.colormap,
            alpha: args.alpha,
            max_side: args.max_side,
        },
        json: outputs.json,
    };

    let progress = progress::Progress::new(todo.len(), args.quiet);
    if todo.len() < pictures.len() {
        progress.println(&format!(
            "explain: {} of {} pictures already done, resuming with the other {}",
            pictures.len() - todo.len(),
            pictures.len(),
            todo.len()
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let interrupted = on_ctrl_c(stop.clone());
    let sink = Mutex::new(Sink {
        summary,
        progress,
        skipped: Vec::new(),
        failure: None,
    });
    let started = Instant::now();
    pipeline::run(&model, &todo, &settings, &stop, |f| {
        finished(f, &todo, &outputs, &writer, &sink, &stop)
    })?;

    let mut sink = sink.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(failure) = sink.failure.take() {
        bail!(failure);
    }
    let (done, rate) = sink.progress.finish();
    if let Some(summary) = sink.summary.take() {
        let order: Vec<String> = pictures
            .iter()
            .map(|p| p.path.to_string_lossy().into_owned())
            .collect();
        summary.finish(&order)?;
    }
    let skipped = sink.skipped.len();
    if !args.quiet {
        let seconds = started.elapsed().as_secs_f64();
        let mut line = format!(
            "explain: {done} of {} pictures in {seconds:.1} s ({rate:.1} pictures/s)",
            todo.len()
        );
        if skipped > 0 {
            line += &format!(", {skipped} skipped");
        }
        if not_images > 0 {
            line += &format!(", {not_images} files that are not images ignored");
        }
        eprintln!("{line}; outputs in {}", args.out.display());
    }
    if interrupted.load(Ordering::SeqCst) {
        eprintln!(
            "explain: interrupted after the batch in flight; run the same command with \
             --resume to explain the other {} pictures",
            todo.len() - done as usize
        );
        return Ok(Outcome::Interrupted);
    }
    if args.strict && skipped > 0 {
        bail!("stopped at {} (--strict)", sink.skipped[0]);
    }
    Ok(if skipped > 0 {
        Outcome::Skipped
    } else {
        Outcome::Complete
    })
}

/// How the pipeline runs for these arguments on this model.
fn settings(args: &ExplainConfig, options: ExplainOptions, preprocess: Preprocess) -> Settings {
    Settings {
        preprocess,
        batch_size: args
            .batch_size
            .unwrap_or_else(|| default_batch(args.model.device)),
        threads: std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
        options,
        overlay_side: (!args.no_overlay).then_some(args.max_side),
        max_inflight_pixels: args.max_inflight_pixels,
        strict: args.strict,
    }
}

/// One picture out of the pipeline: its files written and its predictions printed, then its
/// record. A file that cannot be written stops the run (after the batch in flight).
fn finished(
    f: Finished,
    todo: &[Picture],
    outputs: &Outputs,
    writer: &Writer,
    sink: &Mutex<Sink>,
    stop: &AtomicBool,
) {
    let (p, record) = match f {
        Finished::Skipped { index, reason } => {
            let p = &todo[index];
            (p, outputs::record(&p.path, Err(&reason)))
        }
        Finished::Explained {
            index,
            prepared,
            result,
            batch_ms,
            batch_size,
        } => {
            let p = &todo[index];
            let files = outputs.files(p);
            let answer = Answer {
                prepared: &prepared,
                result: &result,
                batch_ms,
                batch_size,
            };
            if let Err(e) = writer.write(p, &files, &answer) {
                stop.store(true, Ordering::SeqCst);
                lock(sink).failure = Some(format!("{e:#}"));
                return;
            }
            lock(sink)
                .progress
                .suspend(|| print_predictions(&p.path, &result.predictions));
            (p, outputs::record(&p.path, Ok((&result, &files))))
        }
    };
    lock(sink).finished(p, &record);
}

fn lock(sink: &Mutex<Sink>) -> MutexGuard<'_, Sink> {
    sink.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where finished pictures go: the summary, the progress display, the skipped list.
struct Sink {
    summary: Option<Summary>,
    progress: progress::Progress,
    skipped: Vec<String>,
    failure: Option<String>,
}

impl Sink {
    fn finished(&mut self, p: &Picture, record: &serde_json::Value) {
        let ok = record["status"] == "ok";
        if !ok {
            let line = format!(
                "{}: skipped: {}",
                p.path.display(),
                record["error"].as_str().unwrap_or_default()
            );
            self.progress.println(&line);
            self.skipped.push(line);
        }
        if let Some(s) = &mut self.summary
            && let Err(e) = s.append(record)
        {
            self.failure.get_or_insert(format!("{e:#}"));
        }
        self.progress.tick(ok);
    }
}

/// Ctrl-C sets `stop` (the run ends after the batch in flight); a second one exits at once
/// with status 130. The handler is in place when this returns. Returns whether it was pressed.
fn on_ctrl_c(stop: Arc<AtomicBool>) -> Arc<AtomicBool> {
    let pressed = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let Ok(runtime) = runtime else {
        return pressed;
    };
    #[cfg(unix)]
    let listener = {
        use tokio::signal::unix::{SignalKind, signal};
        runtime.block_on(async { signal(SignalKind::interrupt()) })
    };
    #[cfg(unix)]
    let Ok(mut listener) = listener else {
        return pressed;
    };
    let flag = pressed.clone();
    std::thread::spawn(move || {
        runtime.block_on(async move {
            #[cfg(unix)]
            let mut next = async || listener.recv().await.is_some();
            #[cfg(not(unix))]
            let mut next = async || tokio::signal::ctrl_c().await.is_ok();
            if !next().await {
                return;
            }
            flag.store(true, Ordering::SeqCst);
            stop.store(true, Ordering::SeqCst);
            eprintln!("explain: stopping after the batch in flight (Ctrl-C again to stop at once)");
            if next().await {
                std::process::exit(130);
            }
        });
    });
    pressed
}

/// Prints the top-5 classes to standard output; a closed output (`explain ... | head`) is not
/// an error of the run.
fn print_predictions(path: &Path, predictions: &[Prediction]) {
    use std::io::Write;
    let mut text = format!("{}\n", path.display());
    for p in &predictions[..5.min(predictions.len())] {
        text.push_str(&format!(
            "  {:>3}  {:6.2}%  {}\n",
            p.index,
            100.0 * p.probability,
            p.label
        ));
    }
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}
