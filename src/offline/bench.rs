//! `gradcam-serve bench`: the engine alone, on the configured device and precision.
//!
//! For each batch size: one untimed batch (libtorch and cuDNN tune per shape), then explain
//! calls back to back for the given time, each timed from the host copy of the inputs to the
//! maps on the host (so every call includes its device synchronisation); then forward-only
//! calls (logits) for half that time. The input is synthetic: a ResNet costs the same whatever
//! the pixels.

use crate::backend::{Backend, BackendError, ExplainOptions};
use crate::config::BenchConfig;
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Timings of one batch size.
struct Measured {
    iterations: usize,
    images_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Calls `f` until `seconds` have passed (at least three times) and measures each call.
fn measure(
    batch: usize,
    seconds: f64,
    mut f: impl FnMut() -> Result<(), BackendError>,
) -> Result<Measured, BackendError> {
    let mut times: Vec<Duration> = Vec::new();
    let started = Instant::now();
    while times.len() < 3 || started.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed());
    }
    let total: f64 = times.iter().map(Duration::as_secs_f64).sum();
    times.sort_unstable();
    let at = |q: f64| {
        let i = ((times.len() - 1) as f64 * q).round() as usize;
        times[i].as_secs_f64() * 1e3
    };
    Ok(Measured {
        iterations: times.len(),
        images_per_s: (batch * times.len()) as f64 / total,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    })
}

/// A fixed pseudo-random input, normalised-pixel sized.
fn synthetic(len: usize) -> Vec<f32> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
        })
        .collect()
}

pub fn run(config: BenchConfig) -> Result<()> {
    anyhow::ensure!(
        !config.batches.is_empty() && config.batches.iter().all(|b| (1..=1024).contains(b)),
        "--batches must list sizes from 1 to 1024"
    );
    anyhow::ensure!(
        config.seconds > 0.0 && config.seconds <= 600.0,
        "--seconds must be more than 0 and at most 600"
    );
    let model = crate::model::load(&config.model)?;
    let description = model.describe();
    let max = config.batches.iter().copied().max().unwrap_or(1);
    model.warm_up(max)?;
    let x = synthetic(description.input.input_len());
    let options = ExplainOptions {
        layer: config.layer,
        method: config.method,
        ..ExplainOptions::default()
    };
    let mut results = Vec::new();
    let mut skipped = Vec::new();
    println!(
        "{} on {} in {}, {} {}",
        description.model, description.device, description.precision, config.method, config.layer
    );
    println!("| batch | explain images/s | batch p50 ms | batch p99 ms | forward images/s |");
    println!("|---|---|---|---|---|");
    for &batch in &config.batches {
        let items = vec![(x.as_slice(), options); batch];
        let inputs = vec![x.as_slice(); batch];
        let run = || -> Result<(Measured, Measured), BackendError> {
            model.explain(&items)?;
            let explain = measure(batch, config.seconds, || model.explain(&items).map(drop))?;
            model.logits(&inputs)?;
            let forward = measure(batch, config.seconds / 2.0, || {
                model.logits(&inputs).map(drop)
            })?;
            Ok((explain, forward))
        };
        match run() {
            Ok((e, f)) => {
                println!(
                    "| {batch} | {:.1} | {:.2} | {:.2} | {:.1} |",
                    e.images_per_s, e.p50_ms, e.p99_ms, f.images_per_s
                );
                results.push(json!({
                    "batch": batch,
                    "iterations": e.iterations,
                    "images_per_s": e.images_per_s,
                    "batch_ms_p50": e.p50_ms,
                    "batch_ms_p99": e.p99_ms,
                    "forward_images_per_s": f.images_per_s,
                    "forward_batch_ms_p50": f.p50_ms,
                }));
            }
            Err(e) => {
                println!("| {batch} | skipped: {e} | | | |");
                skipped.push(json!({ "batch": batch, "why": e.to_string() }));
            }
        }
    }
    if let Some(path) = &config.json {
        let doc: Value = json!({
            "model": description.model,
            "arch": description.model,
            "device": description.device,
            "precision": description.precision,
            "libtorch": description.libtorch,
            "layer": config.layer,
            "method": config.method,
            "seconds": config.seconds,
            "results": results,
            "skipped": skipped,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measuring_counts_every_call_and_orders_the_quantiles() {
        let mut calls = 0;
        let m = measure(4, 0.0, || {
            calls += 1;
            std::thread::sleep(Duration::from_millis(calls));
            Ok(())
        })
        .unwrap();
        assert_eq!((m.iterations, calls), (3, 3));
        assert!(
            m.p50_ms >= 2.0 && m.p99_ms >= m.p50_ms,
            "{} {}",
            m.p50_ms,
            m.p99_ms
        );
        assert!(m.images_per_s > 0.0 && m.images_per_s < 4.0 * 3.0 / 0.006);
    }

    #[test]
    fn the_synthetic_input_is_spread_over_normalised_values() {
        let x = synthetic(10_000);
        assert!(x.iter().all(|v| (-2.0..2.0).contains(v)));
        let mean = x.iter().sum::<f32>() / x.len() as f32;
        assert!(mean.abs() < 0.1, "{mean}");
    }
}
