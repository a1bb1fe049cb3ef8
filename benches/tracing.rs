//! What tracing costs one request, apart from the noise of a whole server on a shared machine:
//! the spans of one traced `POST /explain` (the server span with its attributes and a client's
//! `traceparent` continued, the 16 stage spans, the batch span with its links, the model's
//! four, `traceresponse`) and the stage histograms' observations with their exemplars, made
//! under the server's own subscriber (`telemetry::Telemetry::build`): with traces off, and on
//! at 100% sampling, exported over OTLP/HTTP to a sink on loopback that answers every export
//! with 200. Timed as the process's CPU time (every thread's: the export thread's included,
//! each sample ending with a flush of what it made), per request. Run with
//! `cargo bench --bench tracing` (`scripts/trace_bench.sh` measures the whole server).

#![allow(clippy::unwrap_used)] // a bench fails on an unexpected error by panicking

use criterion::{Criterion, criterion_group, criterion_main};
use gradcam_serve::config::LogFormat;
use gradcam_serve::metrics::Metrics;
use gradcam_serve::telemetry::{self, Protocol, Telemetry};
use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

/// An OTLP/HTTP collector that takes everything and keeps nothing; its address.
fn sink() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\n\
                                  content-length: 0\r\n\r\n";
                    stream.write_all(answer.as_bytes()).unwrap();
                }
            });
        }
    });
    format!("http://{addr}")
}

/// One traced `/explain`, span for span as the server makes it.
/// (`traced`: the server's trace layer is installed, as it is only when traces are on.)
fn request(metrics: &Metrics, headers: &axum::http::HeaderMap, traced: bool) -> Option<String> {
    use tracing::info_span;
    let request = info_span!(target: "gradcam_serve::http", "request",
        otel.kind = "server", otel.status_code = tracing::field::Empty,
        http.request.method = "POST", http.route = tracing::field::Empty,
        http.request.body.size = 1_000_000i64, http.response.status_code = tracing::field::Empty,
        url.path = tracing::field::Empty, url.scheme = "http", network.protocol.version = "HTTP/1.1");
    if traced {
        telemetry::continue_from(&request, headers);
    }
    let in_request = request.enter();
    for stage in [
        info_span!(target: "gradcam_serve::http", "options"),
        info_span!(target: "gradcam_serve::http", "picture work wait"),
        info_span!(target: "gradcam_serve::http", "read header"),
        info_span!(target: "gradcam_serve::http", "pixel budget wait", image.pixels = 2_000_000i64),
        info_span!(target: "gradcam_serve::http", "decode", image.bytes = 1_000_000i64),
        info_span!(target: "gradcam_serve::http", "preprocess"),
    ] {
        let _in = stage.enter();
    }
    metrics.stage("decode_pixels", 0.005);
    metrics.stage("preprocess", 0.001);
    metrics.stage("decode", 0.006);
    let queue = info_span!(target: "gradcam_serve::engine", "queue");
    drop(in_request);
    // The model thread.
    let batch = info_span!(target: "gradcam_serve::engine", "batch", batch.size = 1i64,
        model.device = "cpu", model.precision = "fp32");
    batch.follows_from(&request);
    drop(queue);
    let inference = info_span!(target: "gradcam_serve::engine", parent: &request, "inference", batch.size = 1i64);
    inference.follows_from(&batch);
    {
        let _in_batch = batch.enter();
        metrics.batch(1);
        for stage in [
            info_span!(target: "gradcam_serve::model", "forward", batch.size = 1i64, layer = "layer4"),
            info_span!(target: "gradcam_serve::model", "backward", passes = 1i64),
            info_span!(target: "gradcam_serve::model", "download"),
            info_span!(target: "gradcam_serve::model", "maps"),
        ] {
            let _in = stage.enter();
        }
    }
    drop(batch);
    drop(inference);
    let _in_request = request.enter();
    metrics.stage("queue", 0.001);
    metrics.stage("inference", 0.07);
    {
        let render = info_span!(target: "gradcam_serve::http", "render");
        let _in = render.enter();
        for stage in [
            info_span!(target: "gradcam_serve::http", "picture work wait"),
            info_span!(target: "gradcam_serve::http", "overlay"),
            info_span!(target: "gradcam_serve::http", "encode", picture.format = "image/png"),
            info_span!(target: "gradcam_serve::http", "serialize"),
        ] {
            let _in = stage.enter();
        }
    }
    metrics.stage("overlay", 0.002);
    metrics.stage("encode", 0.004);
    metrics.stage("serialize", 0.001);
    metrics.stage("render", 0.007);
    metrics.stage("total", 0.09);
    request.record("http.route", "/explain");
    request.record("url.path", "/explain");
    request.record("http.response.status_code", 200i64);
    traced.then(|| telemetry::traceresponse(&request)).flatten()
}

/// The process's CPU time so far (all threads).
fn process_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

fn bench(c: &mut Criterion) {
    // SAFETY: set before any other thread of this process reads the environment.
    unsafe {
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", sink());
        std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
    }
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    let metrics = Metrics::new();
    let (off, _) = Telemetry::build(LogFormat::Json, None).unwrap();
    let (on, exporting) = Telemetry::build(LogFormat::Json, Some(Protocol::HttpProtobuf)).unwrap();
    let mut group = c.benchmark_group("tracing one /explain (process CPU)");
    for (name, dispatch, telemetry) in [("off", &off, None), ("on", &on, Some(&exporting))] {
        group.bench_function(name, |b| {
            b.iter_custom(|n| {
                tracing::dispatcher::with_default(dispatch, || {
                    let start = process_cpu();
                    for _ in 0..n {
                        std::hint::black_box(request(&metrics, &headers, telemetry.is_some()));
                    }
                    if let Some(t) = telemetry {
                        t.flush();
                    }
                    process_cpu() - start
                })
            })
        });
    }
    group.finish();
    let mut text = String::new();
    telemetry::render_metrics(&mut text);
    eprintln!(
        "{}",
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
