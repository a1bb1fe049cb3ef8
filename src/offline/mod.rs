//! `gradcam-serve explain`: explains image files without the server, from one photograph to a
//! whole dataset. Pictures stream through the model in batches (see [`pipeline`]); for each it
//! writes the overlay PNGs (one per explained class) and a JSON document with predictions and
//! maps, and, when asked, one summary record; `--resume` skips pictures already done.

pub mod bench;
mod inputs;
mod outputs;
mod pipeline;
mod progress;

use crate::backend::{Backend, ExplainOptions, Prediction};
use crate::config::ExplainConfig;
use crate::model;
use crate::render::{self, OverlayOptions};
use anyhow::{Context, Result, bail};
use inputs::Picture;
use outputs::Summary;
use pipeline::{Finished, Settings};
use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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

pub fn run(args: ExplainConfig) -> Result<Outcome> {
    let opts = ExplainOptions {
        class: args.class,
        top_k: args.top_k,
        layer: args.layer,
        method: args.method,
        faithfulness: args.faithfulness,
    };
    // The class is checked against the model's classes once it is loaded.
    opts.validate(usize::MAX).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.alpha),
        "--alpha {} is out of range; allowed: 0 to 1",
        args.alpha
    );
    anyhow::ensure!(
        args.max_side >= 16,
        "--max-side {} is out of range; allowed: 16 and more (as the server's overlay_max_side)",
        args.max_side
    );
    anyhow::ensure!(
        args.batch_size.is_none_or(|b| (1..=256).contains(&b)),
        "--batch-size must be 1 to 256"
    );
    let (overlay, json) = (!args.no_overlay, !args.no_json);
    if !overlay && !json && args.summary.is_none() {
        bail!("--no-overlay and --no-json leave nothing to write: add --summary FILE");
    }
    anyhow::ensure!(
        args.max_inflight_pixels >= 1024,
        "--max-inflight-pixels must be at least 1024"
    );

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let out = args
        .out
        .canonicalize()
        .with_context(|| format!("reading {}", args.out.display()))?;
    let summary_path = args.summary.as_ref().and_then(|s| s.canonicalize().ok());
    let found = inputs::find(
        &args.images,
        args.from_list.as_deref(),
        &out,
        summary_path.as_deref(),
    )?;
    let pictures = found.pictures;
    if pictures.is_empty() {
        bail!("no image files found in the given inputs");
    }
    let explained = args.class.map_or(args.top_k, |_| 1);
    let files_of = |p: &Picture| outputs::files(&p.stem, explained, overlay, json);
    inputs::check_clashes(&pictures, files_of)?;
    let files_done = |p: &Picture| {
        let files = files_of(p);
        files.iter().all(|f| args.out.join(f).is_file())
    };
    let by_path: std::collections::HashMap<String, &Picture> = pictures
        .iter()
        .map(|p| (p.path.to_string_lossy().into_owned(), p))
        .collect();
    let summary = match &args.summary {
        Some(path) => Some(Summary::open(
            path,
            args.summary_format,
            args.resume,
            |p| by_path.get(p).is_some_and(|pic| files_done(pic)),
        )?),
        None => None,
    };
    let todo: Vec<Picture> = pictures
        .iter()
        .filter(|p| {
            let done = match &summary {
                Some(s) => s.has(&p.path.to_string_lossy()) && files_done(p),
                None => files_done(p),
            };
            !(args.resume && done)
        })
        .cloned()
        .collect();

    let model = model::load(&args.model)?;
    let description = model.describe();
    opts.validate(description.classes)
        .map_err(anyhow::Error::msg)?;
    let settings = Settings {
        preprocess: description.input,
        batch_size: args
            .batch_size
            .unwrap_or_else(|| default_batch(args.model.device)),
        threads: std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
        options: opts,
        overlay_side: overlay.then_some(args.max_side),
        max_inflight_pixels: args.max_inflight_pixels,
        strict: args.strict,
    };
    let overlay_opts = OverlayOptions {
        colormap: args.colormap,
        alpha: args.alpha,
        max_side: args.max_side,
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
    let write = |f: Finished| {
        let (path, record) = match f {
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
                let t = Instant::now();
                let files = files_of(p);
                let written = (|| -> Result<()> {
                    let mut names = files.iter();
                    let mut explanations = Vec::new();
                    for e in &result.explanations {
                        let mut v = serde_json::to_value(e)?;
                        let ready = &prepared.ready;
                        if let Some(base) = &ready.overlay_base {
                            let region = ready.region.fraction_of(ready.width, ready.height);
                            let png = render::encode_png(&render::overlay(
                                base,
                                &e.normalized,
                                e.heatmap.width,
                                e.heatmap.height,
                                &overlay_opts,
                                region.as_ref(),
                            ));
                            let name = names.next().context("an overlay name")?;
                            outputs::write_atomic(&args.out.join(name), &png)?;
                            v["overlay"] = file_name(name).into();
                        }
                        explanations.push(v);
                    }
                    if json {
                        let doc = json!({
                            "image": p.path.to_string_lossy(),
                            "width": prepared.ready.width,
                            "height": prepared.ready.height,
                            "map_region": prepared.ready.region,
                            "model": description.model,
                            "device": description.device,
                            "precision": description.precision,
                            "weights_sha256": description.weights.sha256,
                            "predictions": result.predictions,
                            "explanations": explanations,
                            "timings_ms": {
                                "decode": prepared.decode_ms,
                                "inference_batch": batch_ms,
                                "batch_size": batch_size,
                                "render": t.elapsed().as_secs_f64() * 1e3,
                            },
                        });
                        let name = names.next().context("the document's name")?;
                        outputs::write_atomic(
                            &args.out.join(name),
                            &serde_json::to_vec_pretty(&doc)?,
                        )?;
                    }
                    Ok(())
                })();
                match written {
                    Ok(()) => {
                        let s = sink.lock().unwrap_or_else(|e| e.into_inner());
                        s.progress
                            .suspend(|| print_predictions(&p.path, &result.predictions));
                        (p, outputs::record(&p.path, Ok((&result, &files))))
                    }
                    Err(e) => {
                        stop.store(true, Ordering::SeqCst);
                        sink.lock().unwrap_or_else(|e| e.into_inner()).failure =
                            Some(format!("{e:#}"));
                        return;
                    }
                }
            }
        };
        let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
        s.finished(path, &record);
    };
    pipeline::run(&model, &todo, &settings, &stop, write)?;
    let mut sink = sink.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(failure) = sink.failure.take() {
        bail!(failure);
    }
    let (done, rate) = sink.progress.finish();
    let order: Vec<String> = pictures
        .iter()
        .map(|p| p.path.to_string_lossy().into_owned())
        .collect();
    if let Some(summary) = sink.summary {
        summary.finish(&order)?;
    }
    let skipped = sink.skipped.len();
    if !args.quiet {
        eprintln!(
            "explain: {done} of {} pictures in {:.1} s ({rate:.1} pictures/s){}{}; outputs in {}",
            todo.len(),
            started.elapsed().as_secs_f64(),
            if skipped > 0 {
                format!(", {skipped} skipped")
            } else {
                String::new()
            },
            if found.not_images > 0 {
                format!(", {} files that are not images ignored", found.not_images)
            } else {
                String::new()
            },
            args.out.display()
        );
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

fn file_name(p: &Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
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
