//! What operators see: liveness, readiness, build and weight information, labels, the OpenAPI
//! document, Prometheus metrics, and CORS.

use super::{default_server, problem};
use crate::common;
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
        &common::reference_dir().join("weights.safetensors"),
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
    assert_eq!(
        post_fixture(server.url("/predict"), "chelsea.png")
            .send()
            .unwrap()
            .status(),
        200
    );
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
