//! What one request costs around the model, stage by stage, for a photograph of about one
//! megapixel with the default options (an overlay of at most 1024 pixels a side): reading the
//! header and decoding the pixels, preprocessing (the network's 224x224 input and the
//! photograph at the overlay's size), the overlay (map upsampled, coloured and blended in one
//! pass), its encoding in each format, and the serialisation (base64 into the JSON answer).
//! Each stage is what `gradcam_stage_seconds` and `gradcam_stage_cpu_seconds_total` time in the
//! server. Run with `scripts/pipeline_bench.sh` (the photo: `GRADCAM_BENCH_PHOTO`, by default
//! scikit-image's hubble_deep_field.jpg from the project's Python environment, else a fixture).

#![allow(clippy::unwrap_used)] // a test fails on an unexpected error by panicking

use criterion::{Criterion, criterion_group, criterion_main};
use gradcam_serve::input::{self, DecodeLimits, Preprocess};
use gradcam_serve::render::{self, OverlayOptions, PictureFormat};
use std::hint::black_box;

fn photo() -> (String, Vec<u8>) {
    let path = std::env::var("GRADCAM_BENCH_PHOTO").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rocket.jpg").to_string()
    });
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (path, bytes)
}

/// A 7x7 map with one warm region, as layer4 gives for 224x224.
fn map() -> Vec<f32> {
    (0..49)
        .map(|i| {
            let (x, y) = ((i % 7) as f32 - 4.0, (i / 7) as f32 - 3.0);
            (-(x * x + y * y) / 6.0).exp()
        })
        .collect()
}

fn stages(c: &mut Criterion) {
    let (path, bytes) = photo();
    let preprocess = Preprocess::default();
    let opts = OverlayOptions::default();
    let limits = DecodeLimits::default();
    let opened = input::open(&bytes, limits).unwrap();
    let (w, h) = opened.display_size();
    let keep = Some(render::overlay_size(w, h, opts.max_side));
    let decoded = opened.decode_for(&preprocess, keep).unwrap();
    let (ready, _) = decoded.clone().prepare(&preprocess, keep);
    let base = ready.overlay_base.clone().unwrap();
    let map = map();
    let overlay = render::overlay(&base, &map, 7, 7, &opts, None);
    let png = render::encode_png(&overlay);
    eprintln!(
        "{path}: {w}x{h}, overlay {}x{}, PNG {} bytes, JPEG q85 {} bytes",
        overlay.width(),
        overlay.height(),
        png.len(),
        render::encode(&overlay, PictureFormat::Jpeg, 85).len()
    );

    let mut group = c.benchmark_group(format!("stages_{w}x{h}"));
    group.sample_size(30);
    group.bench_function("decode_pixels", |b| {
        b.iter(|| {
            let opened = input::open(black_box(&bytes), limits).unwrap();
            opened.decode_for(&preprocess, keep).unwrap()
        })
    });
    group.bench_function("preprocess", |b| {
        b.iter_batched(
            || decoded.clone(),
            |d| d.prepare(&preprocess, keep),
            criterion::BatchSize::LargeInput,
        )
    });
    group.bench_function("overlay", |b| {
        b.iter(|| render::overlay(black_box(&base), &map, 7, 7, &opts, None))
    });
    for format in PictureFormat::ALL {
        group.bench_function(format!("encode_{format}"), |b| {
            b.iter(|| render::encode(black_box(&overlay), format, 85))
        });
    }
    // What the JSON answer adds to the picture: its base64, written straight into the answer's
    // bytes (the rest of the answer is a few kilobytes).
    group.bench_function("serialize", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(png.len().div_ceil(3) * 4 + 2);
            base64_simd::STANDARD.encode_append(black_box(&png), &mut out);
            out
        })
    });
    group.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
