//! `gradcam-serve explain`: explains image files without the server and writes, for each, the
//! overlay PNG (one per explained class) and a JSON document with predictions and maps.

use crate::backend::{Backend, ExplainOptions, Prediction};
use crate::config::ExplainConfig;
use crate::input::{self, DecodeLimits};
use crate::model;
use crate::render::{self, OverlayOptions};
use anyhow::{Context, Result};
use std::path::Path;
use std::time::Instant;

pub fn run(args: ExplainConfig) -> Result<()> {
    let opts = ExplainOptions {
        class: args.class,
        top_k: args.top_k,
        layer: args.layer,
        method: args.method,
    };
    opts.validate().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.alpha),
        "--alpha {} is out of range; allowed: 0 to 1",
        args.alpha
    );
    anyhow::ensure!(args.max_side >= 1, "--max-side must be at least 1");
    let overlay = OverlayOptions {
        colormap: args.colormap,
        alpha: args.alpha,
        max_side: args.max_side,
    };

    let model = model::load(&args.model)?;
    let description = model.describe();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let t = Instant::now();
    let mut decoded = Vec::with_capacity(args.images.len());
    for path in &args.images {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (d, x) =
            prepare(&bytes, args.max_side).with_context(|| format!("{}", path.display()))?;
        decoded.push((d, x));
    }
    let decode_ms = ms(t);

    let t = Instant::now();
    let items: Vec<(&[f32], ExplainOptions)> =
        decoded.iter().map(|(_, x)| (x.as_slice(), opts)).collect();
    let results = model.explain(&items)?;
    let inference_ms = ms(t);

    for ((path, (d, _)), result) in args.images.iter().zip(&decoded).zip(results) {
        let t = Instant::now();
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let mut overlays = Vec::new();
        for (rank, e) in result.explanations.iter().enumerate() {
            let png = render::overlay_png(
                &d.image,
                &e.normalized,
                e.heatmap.width,
                e.heatmap.height,
                &overlay,
            );
            let name = if rank == 0 {
                format!("{stem}.png")
            } else {
                format!("{stem}.{rank}.png")
            };
            write(&args.out.join(&name), &png)?;
            overlays.push(name);
        }
        let mut explanations = Vec::new();
        for (e, o) in result.explanations.iter().zip(&overlays) {
            let mut v = serde_json::to_value(e)?;
            v["overlay"] = o.as_str().into();
            explanations.push(v);
        }
        let doc = serde_json::json!({
            "image": path,
            "width": d.width,
            "height": d.height,
            "model": description.model,
            "device": description.device,
            "weights_sha256": description.weights.sha256,
            "predictions": result.predictions,
            "explanations": explanations,
            "timings_ms": {
                "decode_batch": decode_ms,
                "inference_batch": inference_ms,
                "render": ms(t),
            },
        });
        write(
            &args.out.join(format!("{stem}.json")),
            &serde_json::to_vec_pretty(&doc)?,
        )?;
        print_predictions(path, &result.predictions[..5.min(result.predictions.len())]);
    }
    Ok(())
}

/// Decodes (a large JPEG at a fraction of its size when that still leaves enough), makes the
/// network's input, and keeps the picture only at the overlay's size, as the server does.
fn prepare(bytes: &[u8], max_side: u32) -> Result<(input::Decoded, Vec<f32>), input::DecodeError> {
    let opened = input::open(bytes, DecodeLimits::default())?;
    let (w, h) = opened.display_size();
    let overlay = render::overlay_size(w, h, max_side);
    let mut d = opened.decode_reduced(overlay)?;
    let x = input::preprocess(&d.image);
    d.image = input::resize_rgb(&d.image, overlay.0, overlay.1);
    Ok((d, x))
}

fn print_predictions(path: &Path, predictions: &[Prediction]) {
    println!("{}", path.display());
    for p in predictions {
        println!(
            "  {:>3}  {:6.2}%  {}",
            p.index,
            100.0 * p.probability,
            p.label
        );
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
