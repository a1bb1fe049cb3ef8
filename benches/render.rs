//! Rendering cost per request: overlay (upsample, colour, blend) and PNG encoding of a photo of
//! about one megapixel, and decoding + preprocessing it. Run with `scripts/bench.sh render`.

use criterion::{Criterion, criterion_group, criterion_main};
use gradcam_serve::{input, render};

fn photo() -> Vec<u8> {
    let path = std::env::var("GRADCAM_BENCH_PHOTO").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rocket.jpg").to_string()
    });
    std::fs::read(path).unwrap()
}

fn rendering(c: &mut Criterion) {
    let bytes = photo();
    let decoded = input::decode(&bytes, Default::default()).unwrap();
    let map: Vec<f32> = (0..49).map(|i| (i as f32 / 48.0).sin().abs()).collect();
    let opts = render::OverlayOptions::default();
    let (w, h) = decoded.image.dimensions();
    let mut group = c.benchmark_group(format!("render_{w}x{h}"));
    group.sample_size(20);
    group.bench_function("decode_preprocess", |b| {
        b.iter(|| input::preprocess(&input::decode(&bytes, Default::default()).unwrap().image))
    });
    group.bench_function("overlay", |b| {
        b.iter(|| render::overlay(&decoded.image, &map, 7, 7, &opts, None))
    });
    let img = render::overlay(&decoded.image, &map, 7, 7, &opts, None);
    group.bench_function("encode_png", |b| b.iter(|| render::encode_png(&img)));
    group.finish();
}

criterion_group!(benches, rendering);
criterion_main!(benches);
