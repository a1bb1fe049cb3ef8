//! `gradcam-load`: a closed-loop HTTP and gRPC load generator for the service, small enough to
//! travel with the binary to a machine that has no load tool.
//!
//! `--concurrency` clients each post the same file (raw body, the given content type) again
//! as soon as the previous answer has been read, for `--seconds`. With a `grpc://HOST:PORT/MODEL`
//! URL each client calls the Open Inference Protocol's `ModelInfer` instead, on a connection of
//! its own, with the file as the one element of the `image` input (raw bytes, every output
//! answered); statuses are then gRPC codes (`OK`, `ResourceExhausted`, ...). Prints and optionally writes
//! as JSON: requests, answers by status, transport errors, throughput, and latency quantiles
//! over every request answered within the window. Each client's last request, answered after
//! the window, is left out of those figures and counted apart (`late`), so that a run on a
//! machine slower than the window still shows whether answers came.

/// The protocol's client, with prost's own codec (build.rs).
#[allow(clippy::all, clippy::pedantic)]
mod pb {
    include!(concat!(env!("OUT_DIR"), "/plain/inference.rs"));
}

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
    /// Where to post, e.g. http://127.0.0.1:8080/explain?overlay=false, or the gRPC port and
    /// model to call, e.g. grpc://127.0.0.1:8081/resnet50
    #[arg(long)]
    url: String,
    /// The request body.
    #[arg(long)]
    file: PathBuf,
    #[arg(long, default_value = "image/jpeg")]
    content_type: String,
    /// Another request header, `NAME: VALUE` (repeatable), e.g. the binary tensor data
    /// extension's `Inference-Header-Content-Length: 123`; over gRPC, metadata (e.g.
    /// `authorization: Bearer KEY`).
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
    /// Answers by status: the HTTP status, or the gRPC code's name.
    status: BTreeMap<String, u64>,
    transport_errors: u64,
    first_error: Option<String>,
    /// Answers that arrived after the window, by status.
    late: BTreeMap<String, u64>,
    /// Bytes of the answers' bodies counted in `latencies_us`.
    answer_bytes: u64,
}

/// One request's outcome: its status and the answer's size, or a transport error.
type Outcome = Result<(String, u64), String>;

/// Where and how the clients send.
#[derive(Clone)]
enum Target {
    Http(reqwest::Client),
    /// A `grpc://` URL's endpoint and model.
    Grpc(Box<tonic::transport::Endpoint>, String),
}

/// One `--url` of the form `grpc://HOST:PORT/MODEL`.
fn grpc_target(url: &str, timeout: Duration) -> anyhow::Result<Option<Target>> {
    let Some(rest) = url.strip_prefix("grpc://") else {
        return Ok(None);
    };
    let (host, model) = rest
        .split_once('/')
        .filter(|(_, m)| !m.is_empty())
        .ok_or_else(|| anyhow::anyhow!("a gRPC URL is grpc://HOST:PORT/MODEL"))?;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{host}"))?
        .timeout(timeout)
        .tcp_nodelay(true);
    Ok(Some(Target::Grpc(Box::new(endpoint), model.to_string())))
}

/// The `ModelInfer` request for `file`: one image, every output.
fn infer_request(model: &str, file: &[u8]) -> pb::ModelInferRequest {
    let mut raw = Vec::with_capacity(4 + file.len());
    raw.extend_from_slice(&(file.len() as u32).to_le_bytes());
    raw.extend_from_slice(file);
    pb::ModelInferRequest {
        model_name: model.to_string(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "image".into(),
            datatype: "BYTES".into(),
            shape: vec![1],
            ..Default::default()
        }],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    }
}

async fn client(
    target: Target,
    args: std::sync::Arc<Args>,
    body: bytes::Bytes,
    until: Instant,
) -> Tally {
    let mut grpc = match &target {
        Target::Grpc(endpoint, _) => match endpoint.connect().await {
            Ok(channel) => Some(
                pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(channel)
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX),
            ),
            Err(e) => {
                return Tally {
                    transport_errors: 1,
                    first_error: Some(e.to_string()),
                    ..Default::default()
                };
            }
        },
        Target::Http(_) => None,
    };
    let request = match &target {
        Target::Grpc(_, model) => Some(infer_request(model, &body)),
        Target::Http(_) => None,
    };
    let mut t = Tally::default();
    while Instant::now() < until {
        let started = Instant::now();
        let answer: Outcome = match (&target, grpc.as_mut(), &request) {
            (Target::Http(http), _, _) => post(http, &args, body.clone()).await,
            (_, Some(c), Some(r)) => match c.model_infer(with_metadata(r, &args.headers)).await {
                Ok(a) => Ok(("OK".into(), prost::Message::encoded_len(a.get_ref()) as u64)),
                Err(s) if std::error::Error::source(&s).is_none() => {
                    Ok((format!("{:?}", s.code()), 0))
                }
                Err(s) => Err(s.to_string()),
            },
            _ => unreachable!("a gRPC target has its client and request"),
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
                t.first_error.get_or_insert(e);
                // A refused connection fails at once: do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    t
}

/// A call carrying the `--header`s as metadata (names in lower case), e.g. `authorization`.
fn with_metadata(
    r: &pb::ModelInferRequest,
    headers: &[(String, String)],
) -> tonic::Request<pb::ModelInferRequest> {
    let mut req = tonic::Request::new(r.clone());
    for (name, value) in headers {
        let key = tonic::metadata::MetadataKey::from_bytes(name.to_lowercase().as_bytes());
        if let (Ok(key), Ok(value)) = (key, value.parse()) {
            req.metadata_mut().insert(key, value);
        }
    }
    req
}

/// One HTTP request: its status and the answer's size.
async fn post(http: &reqwest::Client, args: &Args, body: bytes::Bytes) -> Outcome {
    let mut request = http
        .post(&args.url)
        .header("content-type", &args.content_type);
    for (name, value) in &args.headers {
        request = request.header(name, value);
    }
    let r = request.body(body).send().await.map_err(|e| e.to_string())?;
    let status = r.status().as_u16().to_string();
    let bytes = r.bytes().await.map_err(|e| e.to_string())?;
    Ok((status, bytes.len() as u64))
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
    let timeout = Duration::from_secs_f64(args.timeout);
    let target = match grpc_target(&args.url, timeout)? {
        Some(grpc) => grpc,
        None => Target::Http(
            reqwest::Client::builder()
                .pool_max_idle_per_host(args.concurrency)
                .timeout(timeout)
                .build()?,
        ),
    };
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.seconds);
    let tallies: Vec<Tally> = runtime.block_on(async {
        let tasks: Vec<_> = (0..args.concurrency)
            .map(|_| tokio::spawn(client(target.clone(), args.clone(), body.clone(), until)))
            .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await.expect("a client task panicked"));
        }
        out
    });
    let elapsed = started.elapsed().as_secs_f64().min(args.seconds);
    let mut latencies: Vec<u64> = Vec::new();
    let mut status: BTreeMap<String, u64> = BTreeMap::new();
    let mut transport_errors = 0;
    let mut first_error = None;
    let mut late: BTreeMap<String, u64> = BTreeMap::new();
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
    let ok: u64 = ["200", "OK"].iter().filter_map(|s| status.get(*s)).sum();
    let doc = json!({
        "url": args.url,
        "file": args.file,
        "body_bytes": body.len(),
        "concurrency": args.concurrency,
        "seconds": elapsed,
        "requests": answered + transport_errors,
        "status": status,
        "transport_errors": transport_errors,
        "first_transport_error": first_error,
        "late": late,
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
