//! End-to-end tests of `gradcam-serve serve`: the real binary on port 0, real photographs in
//! every input form, answers checked against the engine's own numbers for the same image.
//!
//! One test binary, `server`, in four parts: the input forms and what they answer (`forms`),
//! bad input and refused sources (`errors`), health, metrics, info and CORS (`operations`), and
//! the limits on bodies, queue, deadlines and slow clients (`limits`).

mod compact;
mod errors;
mod forms;
mod keys;
mod limits;
mod operations;
mod promises;

use crate::common::server::Server;
use crate::common::{MODEL, fixture, max_diff};
use gradcam_serve::backend::{Backend, ExplainOptions, ExplainResult};
use gradcam_serve::input;
use serde_json::Value;

/// A server with default settings (and one CORS origin). Each test starts its own: a server in
/// a static would never be dropped, so its process would outlive the tests.
fn default_server() -> Server {
    Server::start(&["--cors-origins", "https://app.example"])
}

/// The engine's own answer for a fixture photograph, without the server.
fn engine(file: &str, opts: ExplainOptions) -> ExplainResult {
    let bytes = std::fs::read(fixture(file)).unwrap();
    let d = input::decode(&bytes, Default::default()).unwrap();
    let x = input::preprocess(&d.image);
    MODEL
        .lock()
        .unwrap()
        .explain(&[(&x, opts)])
        .unwrap()
        .remove(0)
}

/// The JSON answer must carry the engine's numbers for the same image and options.
fn assert_matches_engine(body: &Value, file: &str, opts: ExplainOptions) {
    let want = engine(file, opts);
    assert_eq!(
        body["predictions"][0]["index"], want.predictions[0].index,
        "{file}"
    );
    let got = body["explanations"].as_array().unwrap();
    assert_eq!(got.len(), want.explanations.len(), "{file}");
    for (g, w) in got.iter().zip(&want.explanations) {
        assert_eq!(g["class_index"], w.class_index);
        assert_eq!(g["method"], w.method.name());
        assert_eq!(g["layer"], w.layer.name());
        assert_eq!(g["heatmap"]["width"], w.heatmap.width);
        let data: Vec<f32> = serde_json::from_value(g["heatmap"]["data"].clone()).unwrap();
        let (d, scale) = max_diff(&data, &w.heatmap.data);
        assert!(
            d <= 1e-4 * scale.max(1e-12),
            "{file}: heatmap differs by {d} (scale {scale})"
        );
        let norm: Vec<f32> = serde_json::from_value(g["normalized"].clone()).unwrap();
        assert!(max_diff(&norm, &w.normalized).0 <= 1e-4);
    }
}

/// `res` must be an RFC 9457 problem with `status` and `kind`, and a detail that says something;
/// returns its body. `case` names the request in every failure message.
fn problem(case: &str, res: reqwest::blocking::Response, status: u16, kind: &str) -> Value {
    let got = res.status().as_u16();
    let content_type = res.headers().get("content-type").cloned();
    let text = res.text().unwrap();
    assert_eq!(got, status, "{case}: {text}");
    assert_eq!(
        content_type.as_ref().map(|v| v.to_str().unwrap()),
        Some("application/problem+json"),
        "{case}: {text}"
    );
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{case}: the problem is not JSON ({e}): {text}"));
    assert_eq!(body["type"], kind, "{case}: {body}");
    assert_eq!(body["status"], status, "{case}: {body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{case}: {body}"
    );
    body
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}
