//! The dataset pipeline: decoding threads ahead of the model, the model on the calling thread
//! in batches, rendering and writing threads behind it, joined by bounded channels. Memory is
//! bounded by the channels' capacity (a few batches of pictures, each kept only at the overlay's
//! size) and by a budget of decoded pixels, whatever the number of pictures.

use super::inputs::Picture;
use crate::backend::{Backend, ExplainOptions, ExplainResult};
use crate::input::{self, DecodeLimits, Preprocess};
use crate::render;
use anyhow::Result;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

pub struct Settings {
    pub batch_size: usize,
    /// Threads for decoding, and as many for rendering and writing.
    pub threads: usize,
    pub options: ExplainOptions,
    /// The overlay's longer side; `None` when no overlay is drawn.
    pub overlay_side: Option<u32>,
    /// The model's preprocessing.
    pub preprocess: Preprocess,
    pub max_inflight_pixels: u64,
    /// Stop at the first picture that cannot be read or decoded.
    pub strict: bool,
}

/// A picture ready for the model and its outputs, and how long that took.
pub struct Prepared {
    pub ready: input::Ready,
    pub decode_ms: f64,
}

/// What comes out of the pipeline for one picture.
pub enum Finished {
    Explained {
        index: usize,
        prepared: Prepared,
        result: ExplainResult,
        batch_ms: f64,
        batch_size: usize,
    },
    Skipped {
        index: usize,
        reason: String,
    },
}

/// Decoded pixels in flight, shared by the decoding threads (the server's budget, blocking).
struct Budget {
    used: Mutex<u64>,
    freed: Condvar,
    limit: u64,
}

impl Budget {
    /// Takes `pixels` of the budget, waiting for room; refuses at once what can never fit,
    /// saying what the pixels are for (`what`: "reading the file holds ...").
    fn acquire(&self, pixels: u64, what: impl Fn() -> String) -> Result<BudgetGuard<'_>, String> {
        if pixels > self.limit {
            return Err(format!(
                "{}, more than --max-inflight-pixels {}",
                what(),
                self.limit
            ));
        }
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used + pixels > self.limit {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += pixels;
        Ok(BudgetGuard {
            budget: self,
            pixels,
        })
    }
}

struct BudgetGuard<'a> {
    budget: &'a Budget,
    pixels: u64,
}

impl<'a> BudgetGuard<'a> {
    /// Grows to `pixels` in all if there is room now; gives itself back otherwise.
    fn try_grow(mut self, pixels: u64) -> Result<BudgetGuard<'a>, BudgetGuard<'a>> {
        let extra = pixels.saturating_sub(self.pixels);
        let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
        if pixels > self.budget.limit || *used + extra > self.budget.limit {
            drop(used);
            return Err(self);
        }
        *used += extra;
        drop(used);
        self.pixels += extra;
        Ok(self)
    }
}

impl Drop for BudgetGuard<'_> {
    fn drop(&mut self) {
        *self.budget.used.lock().unwrap_or_else(|e| e.into_inner()) -= self.pixels;
        self.budget.freed.notify_all();
    }
}

/// Reads and decodes one picture, keeping only what its outputs need. The file's bytes are
/// reserved before it is read; once the header says what decoding will hold, the reservation
/// grows to that if there is room, or else is given back and taken again whole (never held
/// while waiting, so that two threads cannot wait on each other).
fn prepare(
    path: &std::path::Path,
    overlay_side: Option<u32>,
    preprocess: &Preprocess,
    budget: &Budget,
) -> Result<(Prepared, Vec<f32>), String> {
    let t = Instant::now();
    let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    let bytes_held = size.div_ceil(3);
    let held = budget.acquire(bytes_held, || {
        format!(
            "reading the file holds {bytes_held} pixels of the budget (its {size} bytes, at a \
             third of a pixel per byte)"
        )
    })?;
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let opened = input::open(&bytes, DecodeLimits::default()).map_err(|e| e.to_string())?;
    let (width, height) = opened.display_size();
    let overlay = overlay_side.map(|side| render::overlay_size(width, height, side));
    // Measured on a second opening: `ready_pixels` consumes the first.
    let total = opened.ready_pixels(preprocess, overlay) + bytes_held;
    let _held = match held.try_grow(total) {
        Ok(grown) => grown,
        Err(held) => {
            drop(held);
            budget.acquire(total, || {
                format!(
                    "decoding this {width}x{height} picture holds {total} pixels (what decoding \
                     and the outputs keep, and a third of a pixel per byte of the file)"
                )
            })?
        }
    };
    let opened = input::open(&bytes, DecodeLimits::default()).map_err(|e| e.to_string())?;
    let (ready, x) = opened
        .ready(preprocess, overlay)
        .map_err(|e| e.to_string())?;
    Ok((
        Prepared {
            ready,
            decode_ms: t.elapsed().as_secs_f64() * 1e3,
        },
        x,
    ))
}

type Decoded = (usize, Result<(Prepared, Vec<f32>), String>);

/// Runs the pictures through the model; `finish` renders and writes one picture's outputs (on
/// a writing thread). Returns when every picture is done, or after the batch in flight once
/// `stop` is set (Ctrl-C, or the first failure with `strict`).
pub fn run(
    model: &dyn Backend,
    pictures: &[Picture],
    s: &Settings,
    stop: &AtomicBool,
    finish: impl Fn(Finished) + Sync,
) -> Result<()> {
    let budget = Budget {
        used: Mutex::new(0),
        freed: Condvar::new(),
        limit: s.max_inflight_pixels,
    };
    let next = AtomicUsize::new(0);
    let (decoded_tx, decoded_rx) = sync_channel::<Decoded>(2 * s.batch_size);
    let (done_tx, done_rx) = sync_channel::<Finished>(s.batch_size);
    // The writers own the receiver: if they all die, the model's next send fails instead of
    // waiting for ever.
    let done_rx = std::sync::Arc::new(Mutex::new(done_rx));
    std::thread::scope(|scope| {
        for _ in 0..s.threads {
            let tx = decoded_tx.clone();
            let (next, budget) = (&next, &budget);
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= pictures.len() || stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let path = &pictures[i].path;
                    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        prepare(path, s.overlay_side, &s.preprocess, budget)
                    }))
                    .unwrap_or_else(|_| Err("the decoder failed on this file (a panic)".into()));
                    if tx.send((i, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(decoded_tx);
        for _ in 0..s.threads {
            let (rx, finish) = (done_rx.clone(), &finish);
            scope.spawn(move || {
                loop {
                    let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match job {
                        Ok(f) => {
                            if std::panic::catch_unwind(AssertUnwindSafe(|| finish(f))).is_err() {
                                stop.store(true, Ordering::SeqCst);
                                break;
                            }
                        }
                        Err(_) => break,
                    }
                }
            });
        }
        drop(done_rx);
        let r = model_loop(model, s, stop, decoded_rx, &done_tx);
        drop(done_tx);
        r
    })
}

/// Takes batches of decoded pictures, explains them, and passes the results on.
fn model_loop(
    model: &dyn Backend,
    s: &Settings,
    stop: &AtomicBool,
    decoded: Receiver<Decoded>,
    done: &SyncSender<Finished>,
) -> Result<()> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut batch = Vec::with_capacity(s.batch_size);
        while batch.len() < s.batch_size {
            match decoded.recv() {
                Ok((index, Err(reason))) => {
                    if s.strict {
                        stop.store(true, Ordering::SeqCst);
                    }
                    let _ = done.send(Finished::Skipped { index, reason });
                    if s.strict {
                        return Ok(());
                    }
                }
                Ok((index, Ok(p))) => batch.push((index, p)),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        let t = Instant::now();
        let items: Vec<(&[f32], ExplainOptions)> = batch
            .iter()
            .map(|(_, (_, x))| (x.as_slice(), s.options))
            .collect();
        let results = model.explain(&items)?;
        let batch_ms = t.elapsed().as_secs_f64() * 1e3;
        let batch_size = batch.len();
        for ((index, (prepared, _)), result) in batch.into_iter().zip(results) {
            let sent = done.send(Finished::Explained {
                index,
                prepared,
                result,
                batch_ms,
                batch_size,
            });
            if sent.is_err() {
                anyhow::bail!("the threads that write the outputs have stopped");
            }
        }
    }
}
