//! OpenTelemetry traces from the real server to a real OTLP receiver (tests/otlp_receiver.py,
//! built on the official `opentelemetry-proto` definitions), over HTTP/protobuf and gRPC: the
//! span tree of a request, a client's trace continued, a batch linked to each request it
//! served, refusals and model failures recorded with their problem type, the URL fetch, no
//! secret in any attribute, trace ids in the log and the answer, exemplars in OpenMetrics; and
//! an unreachable collector that changes no answer and whose lost spans are counted.

use crate::common::origin::Origin;
use crate::common::server::{Server, client, post_fixture};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "trace-test-key-0c4f7d";
/// A client's trace and the span that called us.
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
/// The trace of a call that is refused.
const REFUSED_TRACE: &str = "5c0a7e1b9d3f4a6b8c2d0e1f3a5b7c9d";

/// The receiver, running until the test ends (its standard input closes with it).
struct Receiver {
    child: Child,
    _stdin: ChildStdin,
    out: PathBuf,
    http: String,
    grpc: String,
}

impl Receiver {
    fn start() -> Receiver {
        let dir = std::env::temp_dir().join(format!(
            "gradcam-otlp-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("spans.jsonl");
        let _ = std::fs::remove_file(&out);
        let root = env!("CARGO_MANIFEST_DIR");
        let mut child = Command::new("python")
            .arg(format!("{root}/tests/otlp_receiver.py"))
            .arg(&out)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python with opentelemetry-proto (scripts/setup.sh installs it)");
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ports: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the receiver's first line {line:?}: {e}"));
        Receiver {
            child,
            _stdin: stdin,
            out,
            http: ports["http"].as_str().unwrap().to_string(),
            grpc: ports["grpc"].as_str().unwrap().to_string(),
        }
    }

    /// Every line received so far: export records and spans.
    fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn spans(&self) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l.get("span_id").is_some())
            .collect()
    }

    /// The spans once `done` holds of them (within a minute).
    fn wait(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no {what} among {} spans: {spans:#?}",
                spans.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The variables that send the server's traces to `endpoint` over `protocol`, exported every
/// 100 ms.
fn otel_env(endpoint: &str, protocol: &str) -> Vec<(String, String)> {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_SERVICE_NAME", "gradcam-traced"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=test",
        ),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=trace-test"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .to_vec()
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

/// The server span of the trace `trace`.
fn root<'a>(spans: &'a [Value], trace: &str) -> Option<&'a Value> {
    spans
        .iter()
        .find(|s| s["trace_id"] == trace && s["kind"] == "SERVER")
}

/// The names of the spans under `parent` (children and their descendants), sorted.
fn below(spans: &[Value], parent: &Value) -> Vec<String> {
    let mut names = Vec::new();
    let mut open = vec![parent["span_id"].as_str().unwrap().to_string()];
    while let Some(id) = open.pop() {
        for s in spans.iter().filter(|s| s["parent_span_id"] == id.as_str()) {
            names.push(s["name"].as_str().unwrap().to_string());
            open.push(s["span_id"].as_str().unwrap().to_string());
        }
    }
    names.sort();
    names
}

/// The trace id an answer names in `traceresponse` (`00-TRACE-SPAN-01`).
fn traceresponse(res: &reqwest::blocking::Response) -> (String, String) {
    let v = res.headers()["traceresponse"].to_str().unwrap().to_string();
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "{v}");
    assert_eq!((parts[0], parts[3]), ("00", "01"), "{v}");
    (parts[1].to_string(), parts[2].to_string())
}

#[test]
fn traces_over_otlp_http_follow_each_request_through_the_batch() {
    let receiver = Receiver::start();
    let origin = Origin::ok(
        "127.0.0.1",
        crate::common::fixture_bytes("rocket.jpg"),
        Some("image/jpeg"),
    );
    let port = origin.addr.port().to_string();
    let server = Server::try_start_env(
        &otel_env(&receiver.http, "http/protobuf"),
        &[
            "--api-keys",
            KEY,
            "--max-batch-size",
            "4",
            "--max-batch-delay-ms",
            "500",
            "--fetch-allow",
            "127.0.0.1/32",
            "--fetch-ports",
            &port,
        ],
    )
    .unwrap();
    let auth = format!("Bearer {KEY}");

    // A client's trace, continued: the server span is the client span's child.
    let res = post_fixture(server.url("/explain"), "chelsea.png")
        .header("authorization", &auth)
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .header("tracestate", "vendor=opaque")
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let (trace, server_span) = traceresponse(&res);
    assert_eq!(trace, CLIENT_TRACE);
    // Probes are not traced; a made-up path is, without the path.
    let probe = client().get(server.url("/health/ready")).send().unwrap();
    assert_eq!(probe.status(), 200);
    assert!(probe.headers().get("traceresponse").is_none());
    let res = client()
        .get(server.url("/made-up-path-7f3a"))
        .send()
        .unwrap();
    assert_eq!(res.status(), 404);
    let (made_up, _) = traceresponse(&res);

    // Three requests at once: one batch (the delay gathers them), linked to each.
    let batched: Vec<String> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let res = post_fixture(server.url("/explain?overlay=false"), "rocket.jpg")
                        .header("authorization", &auth)
                        .send()
                        .unwrap();
                    assert_eq!(res.status(), 200);
                    traceresponse(&res).0
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });

    // The URL form: the fetch is a client span naming the host only, and the origin hears no
    // trace context (it is a third party).
    let secret_query = "token=origin-secret-9d2e";
    let res = client()
        .post(server.url("/predict"))
        .header("authorization", &auth)
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .json(&serde_json::json!({ "url": format!("http://{}/rocket.jpg?{secret_query}", origin.addr) }))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let (_, fetched_span) = traceresponse(&res);
    let heads = origin.heads();
    assert_eq!(heads.len(), 1);
    assert!(
        !heads[0].to_ascii_lowercase().contains("traceparent")
            && !heads[0].to_ascii_lowercase().contains("tracestate"),
        "the origin heard the trace: {}",
        heads[0]
    );

    // Refusals: the client's mistake (422, no key: 401) and a model failure (500).
    let res = post_fixture(server.url("/explain"), "chelsea.png")
        .header("authorization", &auth)
        .header("content-type", "image/png")
        .body("not a picture")
        .send()
        .unwrap();
    assert_eq!(res.status(), 422);
    let (refused, _) = traceresponse(&res);
    let res = post_fixture(server.url("/explain"), "chelsea.png")
        .send()
        .unwrap();
    assert_eq!(res.status(), 401);
    let (unauthorized, _) = traceresponse(&res);
    let res = post_fixture(server.url("/explain?overlay=false"), "chelsea.png")
        .header("authorization", &auth)
        .header("x-gradcam-fault", "error")
        .send()
        .unwrap();
    assert_eq!(res.status(), 500);
    let (failed, _) = traceresponse(&res);

    let spans = receiver.wait("the last request's server span", |spans| {
        [&failed, &unauthorized, &refused]
            .into_iter()
            .chain(&batched)
            .all(|t| root(spans, t).is_some())
            && root(spans, CLIENT_TRACE).is_some()
            && root(spans, &made_up).is_some()
            && named(spans, "fetch").len() == 1
    });

    // The continued trace: parent, attributes, and the whole tree of stages.
    let request = spans
        .iter()
        .find(|s| s["span_id"] == server_span.as_str())
        .unwrap();
    assert_eq!(request["parent_span_id"], CLIENT_SPAN);
    assert_eq!(request["trace_state"], "vendor=opaque");
    assert_eq!(request["name"], "POST /explain");
    assert_eq!(attr(request, "http.request.method"), "POST");
    assert_eq!(attr(request, "http.route"), "/explain");
    assert_eq!(attr(request, "url.path"), "/explain");
    assert_eq!(attr(request, "http.response.status_code"), 200);
    assert!(attr(request, "http.request.body.size").as_i64().unwrap() > 1000);
    assert_eq!(request["status"]["code"], "UNSET");
    assert_eq!(request["resource"]["service.name"], "gradcam-traced");
    assert_eq!(request["resource"]["deployment.environment.name"], "test");
    let stages = below(&spans, request);
    for stage in [
        "options",
        "read header",
        "pixel budget wait",
        "decode",
        "preprocess",
        "queue",
        "inference",
        "render",
        "overlay",
        "encode",
        "serialize",
    ] {
        assert!(stages.contains(&stage.to_string()), "{stage} in {stages:?}");
    }

    // Each batched request: queued, then in a batch that links back to it, which ran the
    // model's forward and backward passes.
    let mut sizes = Vec::new();
    for t in &batched {
        let request = root(&spans, t).unwrap();
        let inference = spans
            .iter()
            .find(|s| s["trace_id"] == t.as_str() && s["name"] == "inference")
            .unwrap();
        assert_eq!(inference["parent_span_id"], request["span_id"]);
        let link = &inference["links"][0];
        let batch = spans
            .iter()
            .find(|s| s["span_id"] == link["span_id"] && s["name"] == "batch")
            .unwrap_or_else(|| panic!("the batch of {t}"));
        assert_eq!(batch["parent_span_id"], "");
        assert!(
            batch["links"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["trace_id"] == t.as_str() && l["span_id"] == request["span_id"]),
            "the batch links to {t}: {batch}"
        );
        assert_eq!(attr(batch, "model.device"), "cpu");
        assert_eq!(attr(batch, "model.precision"), "fp32");
        assert_eq!(
            attr(batch, "batch.size").as_i64().unwrap(),
            batch["links"].as_array().unwrap().len() as i64
        );
        sizes.push(attr(batch, "batch.size").as_i64().unwrap());
        let model = below(&spans, batch);
        for stage in ["forward", "backward", "download", "maps"] {
            assert!(model.contains(&stage.to_string()), "{stage} in {model:?}");
        }
    }
    assert!(
        sizes.iter().any(|&n| n >= 2),
        "three requests at once with a 500 ms batch delay rode in batches of {sizes:?}"
    );

    // The fetch: a client span with the host, under the /predict request.
    let fetch = named(&spans, "fetch")[0];
    assert_eq!(fetch["kind"], "CLIENT");
    assert_eq!(fetch["parent_span_id"], fetched_span.as_str());
    assert_eq!(attr(fetch, "server.address"), "127.0.0.1");

    // Refusals carry their problem type; only the server's fault is an error.
    let r = root(&spans, &refused).unwrap();
    assert_eq!(attr(r, "error.type"), "invalid_image");
    assert_eq!(attr(r, "http.response.status_code"), 422);
    assert_eq!(r["status"]["code"], "UNSET");
    let u = root(&spans, &unauthorized).unwrap();
    assert_eq!(attr(u, "error.type"), "unauthorized");
    let f = root(&spans, &failed).unwrap();
    assert_eq!(f["status"]["code"], "ERROR");
    assert_eq!(attr(f, "http.response.status_code"), 500);
    assert!(attr(f, "error.type").is_string(), "{f}");

    // No secret anywhere: not the key, not the URL's query, not the picture.
    let everything = std::fs::read_to_string(&receiver.out).unwrap();
    assert_eq!(
        attr(root(&spans, &made_up).unwrap(), "error.type"),
        "not_found"
    );
    for secret in [
        KEY,
        secret_query,
        "not a picture",
        "origin-secret",
        "made-up-path",
    ] {
        assert!(!everything.contains(secret), "{secret} was exported");
    }
    // The exporter sends the configured headers.
    let exports: Vec<Value> = receiver
        .lines()
        .into_iter()
        .filter(|l| l.get("export").is_some())
        .collect();
    assert!(
        exports
            .iter()
            .all(|e| e["export"] == "http" && e["headers"]["x-tenant"] == "trace-test")
    );

    // The model failure's log line names its trace.
    let log = server.wait_log(&format!("\"trace_id\":\"{failed}\""));
    assert!(
        log.lines()
            .any(|l| l.contains(&failed) && l.contains("\"level\":\"ERROR\"")),
        "{log}"
    );

    // OpenMetrics with exemplars: the traces of requests, beside the latency buckets; the
    // reference parser reads it.
    let res = client()
        .get(server.url("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .send()
        .unwrap();
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = res.text().unwrap();
    assert!(text.ends_with("# EOF\n"));
    let traced: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("gradcam_stage_seconds_bucket{stage=\"total\"")
                && l.contains(" # {trace_id=\"")
        })
        .collect();
    let ours = [&failed, &refused, &trace]
        .into_iter()
        .chain(&batched)
        .collect::<Vec<_>>();
    assert!(
        traced
            .iter()
            .any(|l| ours.iter().any(|t| l.contains(t.as_str()))),
        "no exemplar of our traces in {text}"
    );
    let parsed = Command::new("python")
        .arg("-c")
        .arg(
            "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n\
             n = sum(len([s for s in f.samples if s.exemplar]) for f in p(sys.stdin.read()))\nprint(n)",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = {
        let mut child = parsed;
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    assert!(
        output.status.success(),
        "the OpenMetrics parser: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let exemplars: usize = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(exemplars >= 1);
    // The plain Prometheus text has none (its format has no exemplars).
    let plain = client()
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(!plain.contains("trace_id"));
    assert_eq!(
        server.metric("gradcam_trace_spans_dropped_total{reason=\"export_failed\"}"),
        0.0
    );
    assert!(server.metric("gradcam_trace_spans_exported_total") > 20.0);
}

#[test]
fn traces_over_otlp_grpc_continue_a_grpc_clients_trace() {
    let receiver = Receiver::start();
    let server =
        Server::try_start_env(&otel_env(&receiver.grpc, "grpc"), &["--grpc-port", "0"]).unwrap();
    let rt = super::grpc::runtime();
    rt.block_on(async {
        let mut client = super::grpc::connect(&server).await;
        let parent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
        super::grpc::infer(
            &mut client,
            &[("traceparent", &parent)],
            super::grpc::infer_request("chelsea.png", &["class_index"]),
        )
        .await
        .unwrap();
        // A refusal: another model.
        let mut request = super::grpc::infer_request("chelsea.png", &["class_index"]);
        request.model_name = "another-model".into();
        let refused = format!("00-{REFUSED_TRACE}-{CLIENT_SPAN}-01");
        let e = super::grpc::infer(&mut client, &[("traceparent", &refused)], request)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
    });
    let spans = receiver.wait("the gRPC calls' spans", |spans| {
        root(spans, CLIENT_TRACE).is_some_and(|r| below(spans, r).contains(&"inference".into()))
            && root(spans, REFUSED_TRACE).is_some()
    });
    // The refusal names its problem type, as REST's do; a client's mistake is no error.
    let refused = root(&spans, REFUSED_TRACE).unwrap();
    assert_eq!(attr(refused, "rpc.grpc.status_code"), 5);
    assert_eq!(attr(refused, "error.type"), "not_found");
    assert_eq!(refused["status"]["code"], "UNSET");
    let call = root(&spans, CLIENT_TRACE).unwrap();
    assert_eq!(call["parent_span_id"], CLIENT_SPAN);
    assert_eq!(call["name"], "inference.GRPCInferenceService/ModelInfer");
    assert_eq!(attr(call, "rpc.system"), "grpc");
    assert_eq!(attr(call, "rpc.service"), "inference.GRPCInferenceService");
    assert_eq!(attr(call, "rpc.method"), "ModelInfer");
    assert_eq!(attr(call, "rpc.grpc.status_code"), 0);
    let stages = below(&spans, call);
    for stage in ["decode", "queue", "inference"] {
        assert!(stages.contains(&stage.to_string()), "{stage} in {stages:?}");
    }
    let exports: Vec<Value> = receiver
        .lines()
        .into_iter()
        .filter(|l| l.get("export").is_some())
        .collect();
    assert!(!exports.is_empty());
    assert!(
        exports
            .iter()
            .all(|e| e["export"] == "grpc" && e["headers"]["x-tenant"] == "trace-test")
    );
}

#[test]
fn an_unreachable_collector_changes_no_answer_and_its_lost_spans_are_counted() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut env = otel_env(&endpoint, "http/protobuf");
    // 4 spans held at most, sent every second: each request's 20 overflow the queue.
    env.retain(|(k, _)| k != "OTEL_BSP_SCHEDULE_DELAY");
    env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "1000".into()));
    env.push(("OTEL_BSP_MAX_QUEUE_SIZE".into(), "4".into()));
    env.push(("OTEL_EXPORTER_OTLP_TIMEOUT".into(), "300".into()));
    let traced = Server::try_start_env(&env, &[]).unwrap();
    let plain = Server::start(&[]);
    let answer = |server: &Server| -> Value {
        let res = post_fixture(server.url("/explain?overlay=false&top_k=3"), "rocket.jpg")
            .send()
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json().unwrap()
    };
    let expected = answer(&plain);
    for _ in 0..4 {
        let got = answer(&traced);
        assert_eq!(got["predictions"], expected["predictions"]);
        assert_eq!(
            got["explanations"][0]["heatmap"],
            expected["explanations"][0]["heatmap"]
        );
    }
    // The queue overflowed, and what was sent failed.
    traced.wait_metric(
        "gradcam_trace_spans_dropped_total{reason=\"queue_full\"}",
        60,
        |n| n > 0.0,
    );
    traced.wait_metric(
        "gradcam_trace_spans_dropped_total{reason=\"export_failed\"}",
        60,
        |n| n > 0.0,
    );
    assert_eq!(traced.metric("gradcam_trace_spans_exported_total"), 0.0);
}
