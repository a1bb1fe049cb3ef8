//! Overload run against a running server: a load generator, not a benchmark. scripts/overload.sh
//! starts a server and runs this with `cargo run --release --example overload`.
//!
//! 1. Reference: one `/explain` of the photo, alone.
//! 2. Saturation: `OVERLOAD_CLIENTS` closed-loop clients post the photo for
//!    `OVERLOAD_SATURATION_SECS`; the rate of 200s is the saturation throughput.
//! 3. Overload: an open-loop schedule (requests leave on time whether or not earlier ones were
//!    answered): good requests at `OVERLOAD_FACTOR` x saturation, plus one malformed request
//!    for every two good ones (a third of all), cycling through several kinds of bad input
//!    and two near-limit images (49 MP, JPEG and PNG).
//!    The first `OVERLOAD_WARMUP_SECS` fill the queue and the server's memory to their
//!    overload level; the figures are for the `OVERLOAD_SECS` after that.
//!
//! Checked, for every request: each good one is answered 200 with the reference's class and
//! heatmap, or refused with 429/503 and Retry-After; each malformed one gets its own 4xx and
//! problem type, each near-limit image its answer or a refusal with Retry-After; no other
//! status; readiness probes every 250 ms all answered 200. Then:
//! readiness true at the end, and resident memory flat
//! (at the end no more than 10% above the highest level seen until the middle of the measured
//! window). Prints the figures and exits 1 on any violation.
//!
//! Environment: OVERLOAD_URL (base URL), OVERLOAD_PHOTO (a JPEG), OVERLOAD_PID (the server's
//! process id, for memory), OVERLOAD_SECS (60), OVERLOAD_WARMUP_SECS (15), OVERLOAD_FACTOR
//! (1.5), OVERLOAD_CLIENTS (16), OVERLOAD_SATURATION_SECS (20).

mod check;
mod http;
mod malformed;
mod memory;
mod probe;
mod reference;
mod report;
mod saturation;
mod schedule;
mod settings;

use std::sync::Arc;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let settings = settings::Settings::from_env();
    let photo =
        Arc::new(std::fs::read(&settings.photo).expect("OVERLOAD_PHOTO names a readable JPEG"));
    let bads = malformed::bad_requests(&photo);
    let target = http::Target::new(settings.url.clone());

    // 1. Reference answer, alone.
    let reference = reference::request(&target, &photo).await;

    // 2. Saturation, closed loop.
    let saturation =
        saturation::measure(&target, &photo, settings.clients, settings.saturation_secs).await;
    let plan = schedule::Plan::new(&settings, saturation);
    report::offer(&settings, saturation, &plan);

    // 3. Overload, open loop, with readiness probes all along and memory sampled.
    let mut memory = memory::Sampler::new(settings.pid, &plan);
    let prober = probe::Prober::start(&target);
    let load = Arc::new(schedule::Load {
        target: target.clone(),
        photo,
        bads,
        reference,
    });
    let run = schedule::run(&plan, &load, &mut memory).await;
    let probes = prober.stop().await;
    memory.at_end();
    let elapsed = run.measured_from.elapsed().as_secs_f64();
    memory.two_seconds_later().await;
    let ready = target.ready_status().await;

    let results = report::Results {
        settings: &settings,
        bads: &load.bads,
        saturation,
        n_warm: plan.n_warm,
        outcomes: run.outcomes,
        elapsed,
        memory,
        probes,
        ready,
    };
    results.print();
    if !results.verdict() {
        std::process::exit(1);
    }
    println!("overload: OK");
}
