//! `gradcam-load`: a closed-loop HTTP load generator for the service, small enough to travel
//! with the binary to a machine that has no load tool.
//!
//! `--concurrency` clients each post the same file (raw body, the given content type) again
//! as soon as the previous answer has been read, for `--seconds`. Prints and optionally writes
//! as JSON: requests, answers by status, transport errors, throughput, and latency quantiles
//! over every request answered within the window. Each client's last request, answered after
//! the window, is left out of those figures and counted apart (`late`), so that a run on a
//! machine slower than the window still shows whether answers came.

use clap::Parser;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    name = "gradcam-load",
    version,
    about = "Closed-loop HTTP load for gradcam-serve"
)]
struct Args {
    /// Where to post, e.g. http://127.0.0.1:8080/explain?overlay=false
    #[arg(long)]
    url: String,
    /// The request body.
    #[arg(long)]
    file: PathBuf,
    #[arg(long, default_value = "image/jpeg")]
    content_type: String,
    /// Another request header, `NAME: VALUE` (repeatable), e.g. the binary tensor data
    /// extension's `Inference-Header-Content-Length: 123`.
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Clients, each with one request in flight.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds of load (answers that arrive later are not counted).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Runtime threads for the clients.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Give up on a request after this many seconds (counted as a transport error).
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Write the figures as JSON to FILE too.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not `NAME: VALUE`"))?;
    Ok((name.trim().to_string(), value.trim().to_string()))
}

/// What one client saw.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    status: BTreeMap<u16, u64>,
    transport_errors: u64,
    first_error: Option<String>,
    /// Answers that arrived after the window, by status.
    late: BTreeMap<u16, u64>,
    /// Bytes of the answers' bodies counted in `latencies_us`.
    answer_bytes: u64,
}

async fn client(
    http: reqwest::Client,
    args: std::sync::Arc<Args>,
    body: bytes::Bytes,
    until: Instant,
) -> Tally {
    let mut t = Tally::default();
    while Instant::now() < until {
        let started = Instant::now();
        let mut request = http
            .post(&args.url)
            .header("content-type", &args.content_type);
        for (name, value) in &args.headers {
            request = request.header(name, value);
        }
        let sent = request.body(body.clone()).send().await;
        let answer = match sent {
            Ok(r) => {
                let status = r.status().as_u16();
                r.bytes().await.map(|b| (status, b.len() as u64))
            }
            Err(e) => Err(e),
        };
        if Instant::now() > until {
            if let Ok((status, _)) = answer {
                *t.late.entry(status).or_default() += 1;
            }
            break;
        }
        match answer {
            Ok((status, bytes)) => {
                t.latencies_us.push(started.elapsed().as_micros() as u64);
                t.answer_bytes += bytes;
                *t.status.entry(status).or_default() += 1;
            }
            Err(e) => {
                t.transport_errors += 1;
                t.first_error.get_or_insert_with(|| e.to_string());
                // A refused connection fails at once: do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    t
}

fn quantile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64 / 1e3
}

fn main() -> anyhow::Result<()> {
    let args = std::sync::Arc::new(Args::parse());
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(args.seconds > 0.0, "--seconds must be positive");
    let body = bytes::Bytes::from(std::fs::read(&args.file)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs_f64(args.timeout))
        .build()?;
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.seconds);
    let tallies: Vec<Tally> = runtime.block_on(async {
        let tasks: Vec<_> = (0..args.concurrency)
            .map(|_| tokio::spawn(client(http.clone(), args.clone(), body.clone(), until)))
            .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await.expect("a client task panicked"));
        }
        out
    });
    let elapsed = started.elapsed().as_secs_f64().min(args.seconds);
    let mut latencies: Vec<u64> = Vec::new();
    let mut status: BTreeMap<u16, u64> = BTreeMap::new();
    let mut transport_errors = 0;
    let mut first_error = None;
    let mut late: BTreeMap<u16, u64> = BTreeMap::new();
    let mut answer_bytes = 0;
    for t in tallies {
        answer_bytes += t.answer_bytes;
        for (s, n) in t.late {
            *late.entry(s).or_default() += n;
        }
        latencies.extend(t.latencies_us);
        for (s, n) in t.status {
            *status.entry(s).or_default() += n;
        }
        transport_errors += t.transport_errors;
        first_error = first_error.or(t.first_error);
    }
    latencies.sort_unstable();
    let answered = latencies.len() as u64;
    let ok = status.get(&200).copied().unwrap_or(0);
    let doc = json!({
        "url": args.url,
        "file": args.file,
        "body_bytes": body.len(),
        "concurrency": args.concurrency,
        "seconds": elapsed,
        "requests": answered + transport_errors,
        "status": status.iter().map(|(s, n)| (s.to_string(), *n)).collect::<BTreeMap<_, _>>(),
        "transport_errors": transport_errors,
        "first_transport_error": first_error,
        "late": late.iter().map(|(s, n)| (s.to_string(), *n)).collect::<BTreeMap<_, _>>(),
        "throughput_per_s": answered as f64 / elapsed,
        "mean_answer_bytes": answer_bytes as f64 / answered.max(1) as f64,
        "ok_per_s": ok as f64 / elapsed,
        "latency_ms": {
            "p50": quantile(&latencies, 0.5),
            "p90": quantile(&latencies, 0.9),
            "p99": quantile(&latencies, 0.99),
            "max": quantile(&latencies, 1.0),
        },
    });
    println!(
        "clients={} answered={} ok/s={:.1} p50={:.1}ms p99={:.1}ms status={:?} transport_errors={}",
        args.concurrency,
        answered,
        ok as f64 / elapsed,
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        status,
        transport_errors
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)?;
    }
    Ok(())
}
