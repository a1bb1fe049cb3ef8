//! Forward-only against explain (forward + partial backward + CAM), batch 1, 4 and 8, at layer4
//! and layer3, on the CPU; explain in fp32 against bf16 at batch 1 and 8 (the `precision`
//! group); and explain for three depths of the ResNet family. Run with `scripts/bench.sh` (which sets up libtorch and the test
//! weights). Throughput is in images per second.

#![allow(clippy::unwrap_used)] // a test fails on an unexpected error by panicking

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gradcam_serve::backend::{Backend, ExplainOptions, Layer, Precision};
use gradcam_serve::cam::Method;
use gradcam_serve::input;
use gradcam_serve::model::{LoadSpec, Model, weights};
use std::path::PathBuf;

fn model() -> Model {
    model_in(Precision::Fp32)
}

fn model_in(precision: Precision) -> Model {
    let path = std::env::var_os("GRADCAM_BENCH_WEIGHTS")
        .map(PathBuf::from)
        .expect(
            "GRADCAM_BENCH_WEIGHTS must name a ResNet-50 weights file (scripts/bench.sh sets it)",
        );
    let w = weights::resolve(path.to_str().unwrap(), &std::env::temp_dir()).unwrap();
    let spec = LoadSpec {
        precision,
        ..Default::default()
    };
    let m = Model::load(w, tch::Device::Cpu, &spec).unwrap();
    m.warm_up(1).unwrap();
    m
}

fn photo() -> Vec<f32> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chelsea.png");
    let img = input::decode(&std::fs::read(path).unwrap(), Default::default()).unwrap();
    input::preprocess(&img.image)
}

fn engine(c: &mut Criterion) {
    let model = model();
    let x = photo();
    let mut group = c.benchmark_group("engine");
    group
        .sample_size(10)
        .measurement_time(std::time::Duration::from_secs(8));
    for batch in [1usize, 4, 8] {
        let inputs: Vec<&[f32]> = vec![x.as_slice(); batch];
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(BenchmarkId::new("forward", batch), |b| {
            b.iter(|| model.logits(&inputs).unwrap())
        });
        for layer in [Layer::Layer4, Layer::Layer3] {
            let opts = ExplainOptions {
                layer,
                method: Method::GradCam,
                ..Default::default()
            };
            let items: Vec<(&[f32], ExplainOptions)> = inputs.iter().map(|x| (*x, opts)).collect();
            group.bench_function(BenchmarkId::new(format!("explain_{layer}"), batch), |b| {
                b.iter(|| model.explain(&items).unwrap())
            });
        }
    }
    group.finish();
}

/// Explain at `layer4`, batch 1 and 8, in fp32 and in bf16 (trunk in bfloat16, channels-last),
/// in the same run: scripts/bench.sh prints the ratios.
fn precision(c: &mut Criterion) {
    let x = photo();
    let mut group = c.benchmark_group("precision");
    group
        .sample_size(10)
        .measurement_time(std::time::Duration::from_secs(8));
    for precision in [Precision::Fp32, Precision::Bf16] {
        let model = model_in(precision);
        for batch in [1usize, 8] {
            let items: Vec<(&[f32], ExplainOptions)> =
                vec![(x.as_slice(), ExplainOptions::default()); batch];
            // One more pass per batch size: oneDNN builds its bf16 kernels per shape.
            model.explain(&items).unwrap();
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(
                BenchmarkId::new(format!("explain_{precision}"), batch),
                |b| b.iter(|| model.explain(&items).unwrap()),
            );
        }
    }
    group.finish();
}

/// Explain at `layer4`, batch 1 and 8, for resnet18, resnet50 and resnet152 (the weights of
/// tests/family.py, in `GRADCAM_BENCH_FAMILY`; skipped without it).
fn family(c: &mut Criterion) {
    let Some(dir) = std::env::var_os("GRADCAM_BENCH_FAMILY").map(PathBuf::from) else {
        return;
    };
    let x = photo();
    let mut group = c.benchmark_group("family");
    group
        .sample_size(10)
        .measurement_time(std::time::Duration::from_secs(8));
    for arch in ["resnet18", "resnet50", "resnet152"] {
        let path = dir.join("family").join(format!("{arch}.safetensors"));
        let w = weights::resolve(path.to_str().unwrap(), &std::env::temp_dir()).unwrap();
        let model = Model::load(w, tch::Device::Cpu, &Default::default()).unwrap();
        model.warm_up(1).unwrap();
        for batch in [1usize, 8] {
            let items: Vec<(&[f32], ExplainOptions)> =
                vec![(x.as_slice(), ExplainOptions::default()); batch];
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(BenchmarkId::new(format!("{arch}_explain"), batch), |b| {
                b.iter(|| model.explain(&items).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, engine, precision, family);
criterion_main!(benches);
