//! Building the app around the toy backend, building requests, reading answers, and the
//! expected answers computed by calling the toy directly.

use crate::toy::{self, Script};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, header};
use gradcam_serve::backend::{ExplainOptions, ExplainResult};
use gradcam_serve::config::ServeConfig;
use gradcam_serve::engine::{BatchConfig, Engine};
use gradcam_serve::fetch::{Fetcher, Lookup};
use gradcam_serve::http::{self, AppState};
use gradcam_serve::input::{self, Decoded};
use gradcam_serve::metrics::Metrics;
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// The photographs in tests/fixtures, with their media types.
pub const PHOTOS: [(&str, &str); 4] = [
    ("chelsea.png", "image/png"),
    ("coffee.jpg", "image/jpeg"),
    ("rocket.jpg", "image/jpeg"),
    ("camera.png", "image/png"),
];

pub use crate::common::fixture_bytes;

/// The app with serve flags `args` around a well-behaved toy backend.
pub fn app(args: &[&str]) -> (Router, AppState) {
    build(args, Script::default(), None)
}

/// The app around a toy backend that follows `script`.
pub fn scripted_app(args: &[&str], script: &Script) -> (Router, AppState) {
    build(args, script.clone(), None)
}

/// The app with a URL fetcher that resolves names through `lookup`.
pub fn fetching_app(args: &[&str], lookup: Lookup) -> (Router, AppState) {
    build(args, Script::default(), Some(lookup))
}

fn build(args: &[&str], script: Script, lookup: Option<Lookup>) -> (Router, AppState) {
    let config = ServeConfig::from_args(args).unwrap_or_else(|e| panic!("flags {args:?}: {e}"));
    config
        .validate()
        .unwrap_or_else(|e| panic!("flags {args:?}: {e}"));
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let batch = BatchConfig {
        max_batch_size: config.max_batch_size,
        max_batch_delay: config.max_batch_delay(),
        queue_capacity: config.queue_capacity,
    };
    let engine = Engine::start(toy::loader(script), batch, metrics.clone()).expect("engine");
    let d = engine.description();
    metrics.set_model(&d.model, &d.device);
    let engine = Arc::new(engine);
    let state = match lookup {
        None => AppState::new(config, engine, metrics),
        Some(lookup) => {
            let fetcher = Fetcher::with_lookup(config.fetch_config(), lookup);
            AppState::with_fetcher(config, engine, metrics, fetcher)
        }
    };
    (http::app(state.clone()), state)
}

/// A status, headers and the whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(500)])
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).expect("text body")
    }

    /// The header's value, or "" when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("text header"))
            .unwrap_or("")
    }
}

pub async fn send(app: &Router, req: Request<Body>) -> Answer {
    let res = app.clone().oneshot(req).await.expect("infallible");
    let (parts, body) = res.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("the body reads");
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

pub fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

/// A POST with a raw body and a content type ("" sends none). No Content-Length, as a streamed
/// upload would be.
pub fn post(path: &str, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    let mut r = Request::post(path);
    if !content_type.is_empty() {
        r = r.header(header::CONTENT_TYPE, content_type);
    }
    r.body(body.into()).unwrap()
}

/// A raw image upload with its Content-Length, as a client sends it.
pub fn upload(path: &str, content_type: &str, bytes: Vec<u8>) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, bytes.len())
        .body(Body::from(bytes))
        .unwrap()
}

pub fn post_json(path: &str, doc: &Value) -> Request<Body> {
    post(path, "application/json", doc.to_string())
}

/// A `multipart/form-data` body, built by hand.
#[derive(Default)]
pub struct Form {
    body: Vec<u8>,
}

pub const BOUNDARY: &str = "in-process-boundary-7MA4YWxkTrZu0gW";

impl Form {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn file(mut self, name: &str, filename: &str, content_type: &str, data: &[u8]) -> Self {
        self.body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        self.body.extend_from_slice(data);
        self.body.extend_from_slice(b"\r\n");
        self
    }

    pub fn text(mut self, name: &str, value: &str) -> Self {
        self.body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
        self
    }

    pub fn into_bytes(mut self) -> Vec<u8> {
        self.body
            .extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
        self.body
    }

    pub fn content_type() -> String {
        format!("multipart/form-data; boundary={BOUNDARY}")
    }

    pub fn request(self, path: &str) -> Request<Body> {
        post(path, &Self::content_type(), self.into_bytes())
    }
}

/// Checks a problem answer (`application/problem+json` with `type`, `title`, `status` and a
/// `detail`) and returns its body.
pub fn problem(case: &str, a: &Answer, status: u16, kind: &str) -> Value {
    assert_eq!(
        a.status,
        status,
        "{case}: status; body {}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(
        a.header("content-type"),
        "application/problem+json",
        "{case}: content type"
    );
    let p = a.json();
    assert_eq!(p["type"], kind, "{case}: {p}");
    assert_eq!(p["status"], status, "{case}: {p}");
    assert!(
        p["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{case}: title in {p}"
    );
    assert!(
        p["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{case}: detail in {p}"
    );
    p
}

/// The problem's detail.
pub fn detail(p: &Value) -> &str {
    p["detail"].as_str().unwrap_or_default()
}

/// A photo as the server decodes and preprocesses it.
pub fn prepared(bytes: &[u8]) -> (Decoded, Vec<f32>) {
    let d = input::decode(bytes, Default::default()).expect("the photo decodes");
    let x = input::preprocess(&d.image);
    (d, x)
}

/// What the toy backend answers for this photo and options.
pub fn expected(bytes: &[u8], o: ExplainOptions) -> ExplainResult {
    toy::explain_one(&prepared(bytes).1, o)
}

/// A value as it reads back from the JSON text the server writes, so that floats compare
/// exactly.
pub fn as_json<T: Serialize + ?Sized>(v: &T) -> Value {
    serde_json::from_str(&serde_json::to_string(v).unwrap()).unwrap()
}

/// Asserts that an explain answer carries exactly the toy's result for the photo and options
/// (overlays aside).
pub fn assert_explained(case: &str, body: &Value, photo: &[u8], o: ExplainOptions) {
    let want = expected(photo, o);
    assert_eq!(
        body["predictions"],
        as_json(&want.predictions),
        "{case}: predictions"
    );
    let got = body["explanations"].as_array().expect("explanations");
    assert_eq!(got.len(), want.explanations.len(), "{case}: explanations");
    for (i, (g, w)) in got.iter().zip(&want.explanations).enumerate() {
        let mut g = g.clone();
        g.as_object_mut().unwrap().remove("overlay_png");
        assert_eq!(g, as_json(w), "{case}: explanation {i}");
    }
}

pub fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

/// Every timing header is present and a non-negative number of milliseconds.
pub fn assert_timing_headers(case: &str, a: &Answer) {
    for h in ["x-queue-time", "x-inference-time", "x-total-time"] {
        let v: f64 = a
            .header(h)
            .parse()
            .unwrap_or_else(|_| panic!("{case}: {h} is {:?}", a.header(h)));
        assert!(v >= 0.0, "{case}: {h} = {v}");
    }
}

/// The value of one sample line in the metrics text, 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

pub async fn metrics_text(app: &Router) -> String {
    send(app, get("/metrics")).await.text()
}

/// Polls `cond` every 2 ms for up to 60 s (a wait, not a speed check).
pub async fn until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "waited 60 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The model's name in the inference protocols.
pub async fn model_name(app: &Router) -> String {
    let a = send(app, get("/v1/models")).await;
    assert_eq!(a.status, 200);
    a.json()["models"][0].as_str().unwrap().to_string()
}

/// A photograph through each inference protocol: KServe v1 `:predict` and OIP REST `infer`.
pub async fn protocol_requests(app: &Router, photo: &[u8]) -> [(&'static str, Request<Body>); 2] {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(photo);
    let name = model_name(app).await;
    let v1 = serde_json::json!({ "instances": [{ "b64": b64 }] });
    let v2 = serde_json::json!({
        "inputs": [{ "name": "image", "shape": [1], "datatype": "BYTES", "data": [b64] }],
        "outputs": [{ "name": "class_index" }],
    });
    [
        (
            "KServe v1",
            post_json(&format!("/v1/models/{name}:predict"), &v1),
        ),
        (
            "OIP REST",
            post_json(&format!("/v2/models/{name}/infer"), &v2),
        ),
    ]
}

/// A refusal in the inference protocols' shape: the status and `{"error": ...}` (alone) that
/// contains `says`.
pub fn protocol_error(case: &str, a: &Answer, status: u16, says: &str) {
    assert_eq!(a.status, status, "{case}: {}", a.text());
    assert_eq!(a.header("content-type"), "application/json", "{case}");
    let e = a.json();
    let message = e["error"].as_str().unwrap_or_else(|| panic!("{case}: {e}"));
    assert!(message.contains(says), "{case}: {message}");
    assert_eq!(e.as_object().unwrap().len(), 1, "{case}: {e}");
}
