//! What operators see: liveness, readiness, build and weight information, labels, the OpenAPI
//! document, Prometheus metrics, and CORS.

use super::{default_server, problem};
use crate::common::server::{client, post_fixture};
use serde_json::{Value, json};

#[test]
fn operations_endpoints() {
    let server = default_server();
    let c = client();
    let get = |path: &str| c.get(server.url(path)).send().unwrap();
    let live: Value = get("/health/live").json().unwrap();
    let ready = get("/health/ready").status().as_u16();
    let info: Value = get("/info").json().unwrap();
    let labels: Value = get("/labels").json().unwrap();
    let sha = gradcam_serve::model::weights::sha256_file(
        &crate::common::reference_dir().join("weights.safetensors"),
    )
    .unwrap();
    // (what, what the server said, what it must say)
    let checks = [
        ("/health/live status", live["status"].clone(), json!("live")),
        ("/health/ready status code", json!(ready), json!(200)),
        (
            "/info weights.sha256",
            info["weights"]["sha256"].clone(),
            json!(sha),
        ),
        ("/info device", info["device"].clone(), json!("cpu")),
        (
            "/info batching.max_batch_size",
            info["batching"]["max_batch_size"].clone(),
            json!(8),
        ),
        (
            "/labels count",
            json!(labels["labels"].as_array().unwrap().len()),
            json!(1000),
        ),
        (
            "/labels 281",
            labels["labels"][281]["label"].clone(),
            json!("tabby"),
        ),
    ];
    for (what, got, want) in checks {
        assert_eq!(got, want, "{what}");
    }
    assert_eq!(
        get("/openapi.yaml").text().unwrap(),
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap(),
        "/openapi.yaml serves the document in the repository"
    );
    // Make sure at least one inference and one refusal are counted, then read the metrics.
    server.assert_predicts();
    problem(
        "top_k=0",
        post_fixture(server.url("/predict?top_k=0"), "chelsea.png")
            .send()
            .unwrap(),
        422,
        "invalid_option",
    );
    let text = get("/metrics").text().unwrap();
    for needle in [
        "gradcam_requests_total{route=\"/predict\",status=\"200\"}",
        "gradcam_rejections_total{reason=\"invalid_option\"}",
        "gradcam_stage_seconds_bucket{stage=\"inference\",le=\"+Inf\"}",
        "gradcam_batch_size_count",
        "gradcam_queue_depth 0",
        "gradcam_model_info{model=\"resnet50\",device=\"cpu\"} 1",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}

#[test]
fn cors_allows_only_the_configured_origin() {
    let server = default_server();
    // (Origin header, the Access-Control-Allow-Origin it must get, if any)
    let cases = [
        ("https://app.example", Some("https://app.example")),
        ("https://evil.example", None),
    ];
    for (origin, allowed) in cases {
        let res = client()
            .get(server.url("/info"))
            .header("origin", origin)
            .send()
            .unwrap();
        assert_eq!(
            res.headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap()),
            allowed,
            "origin {origin}"
        );
    }
}

/// Response header names that openapi.yaml promises (every key of a `headers:` map).
fn documented_headers() -> Vec<String> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let lines: Vec<&str> = doc.lines().collect();
    let mut names = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.trim() != "headers:" {
            continue;
        }
        let at = indent(l);
        for inner in lines[i + 1..].iter().take_while(|x| indent(x) > at) {
            let key = inner.trim().split(':').next().unwrap_or_default();
            // Header maps here, but not the components that define them (QueueTime, ...).
            if indent(inner) == at + 2 && (key.contains('-') || key == "Allow") {
                names.push(key.to_ascii_lowercase());
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

#[test]
fn a_page_on_another_origin_reads_every_promised_header() {
    let server = default_server();
    let origin = "https://app.example";
    let documented = documented_headers();
    for h in [
        "x-class-index",
        "x-class-label",
        "x-method",
        "x-layer",
        "retry-after",
    ] {
        assert!(documented.contains(&h.to_string()), "{h} in {documented:?}");
    }
    let preflight = client()
        .request(reqwest::Method::OPTIONS, server.url("/explain"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,authorization",
        )
        .send()
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(
        preflight.headers()["access-control-max-age"],
        gradcam_serve::http::PREFLIGHT_MAX_AGE_S
            .to_string()
            .as_str()
    );
    let res = post_fixture(server.url("/explain"), "chelsea.png")
        .header("origin", origin)
        .header("accept", "image/png")
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let exposed: Vec<String> = res.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    for h in &documented {
        assert!(
            exposed.contains(h),
            "{h} is documented but not exposed: {exposed:?}"
        );
    }
    for h in [
        "x-class-index",
        "x-class-label",
        "x-method",
        "x-layer",
        "x-total-time",
    ] {
        assert!(res.headers().contains_key(h), "{h} sent with the PNG");
    }
}

#[test]
fn json_is_compressed_when_accepted_and_images_are_not() {
    use std::io::Read;
    let server = default_server();
    let url = server.url("/explain?top_k=2");
    let plain = post_fixture(&url, "rocket.jpg").send().unwrap();
    assert_eq!(plain.headers().get("content-encoding"), None);
    let plain_len = plain.bytes().unwrap().len();
    let gzip = post_fixture(&url, "rocket.jpg")
        .header("accept-encoding", "gzip")
        .send()
        .unwrap();
    assert_eq!(gzip.headers()["content-encoding"], "gzip");
    let packed = gzip.bytes().unwrap();
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(&packed[..])
        .read_to_end(&mut json)
        .unwrap();
    let body: Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(body["explanations"].as_array().unwrap().len(), 2);
    assert!(
        packed.len() < json.len(),
        "{} vs {}",
        packed.len(),
        json.len()
    );
    eprintln!(
        "JSON answer: {plain_len} bytes, gzip {} ({:.2})",
        packed.len(),
        packed.len() as f64 / json.len() as f64
    );
    let br = post_fixture(&url, "rocket.jpg")
        .header("accept-encoding", "br")
        .send()
        .unwrap();
    assert_eq!(br.headers()["content-encoding"], "br");
    let problem = post_fixture(server.url("/explain?top_k=0"), "rocket.jpg")
        .header("accept-encoding", "gzip, br")
        .send()
        .unwrap();
    assert_eq!(problem.status(), 422);
    assert!(
        problem.headers().contains_key("content-encoding"),
        "problems are JSON too"
    );
    for accept in ["image/png", "image/jpeg"] {
        let res = post_fixture(&url, "rocket.jpg")
            .header("accept-encoding", "gzip, br")
            .header("accept", accept)
            .send()
            .unwrap();
        assert_eq!(res.status(), 200, "{accept}");
        assert_eq!(res.headers()["content-type"], accept);
        assert_eq!(res.headers().get("content-encoding"), None, "{accept}");
    }
}
