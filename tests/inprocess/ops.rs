//! The operational routes (`/info`, `/labels`, health, `/metrics`, `/openapi.yaml`) and CORS.

use crate::support::{app, fixture_bytes, get, metric, metrics_text, post, problem, send, upload};
use axum::body::Body;
use axum::http::Request;

#[tokio::test]
async fn info_describes_the_backend_and_the_limits() {
    let (app, _) = app(&[
        "--body-limit",
        "100000",
        "--max-image-pixels",
        "1000000",
        "--max-overlay-side",
        "512",
        "--fetch-max-bytes",
        "4096",
        "--fetch-timeout-ms",
        "1000",
        "--request-timeout-ms",
        "5000",
        "--max-batch-size",
        "4",
        "--max-batch-delay-ms",
        "3",
        "--queue-capacity",
        "16",
    ]);
    let a = send(&app, get("/info")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), "application/json");
    let info = a.json();
    let want = serde_json::json!({
        "model": "toy",
        "architecture": "toy",
        "classes": 1000,
        "labels": "imagenet",
        "input": {
            "size": 224,
            "resize": "squash",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        },
        "weights": { "source": "toy", "sha256": "0".repeat(64) },
        "device": "cpu",
        "precision": "fp32",
        "versions": { "gradcam_serve": env!("CARGO_PKG_VERSION") },
        "limits": {
            "body_limit_bytes": 100000,
            "max_image_pixels": 1000000,
            "max_overlay_side": 512,
            "fetch_max_bytes": 4096,
            "fetch_timeout_ms": 1000,
            "request_timeout_ms": 5000,
            "max_top_k": 10,
        },
        "batching": { "max_batch_size": 4, "max_batch_delay_ms": 3, "queue_capacity": 16 },
    });
    assert_eq!(info, want, "no libtorch version for a backend without one");
}

#[tokio::test]
async fn labels_are_the_thousand_imagenet_classes_in_order() {
    let (app, _) = app(&[]);
    let body = send(&app, get("/labels")).await.json();
    let labels = body["labels"].as_array().unwrap();
    assert_eq!(labels.len(), 1000);
    for (i, l) in labels.iter().enumerate() {
        assert_eq!(l["index"], i, "label {i}");
        assert_eq!(l["label"], gradcam_serve::backend::labels()[i], "label {i}");
    }
    assert_eq!(labels[0]["label"], "tench");
    assert_eq!(labels[281]["label"], "tabby");
}

#[tokio::test]
async fn health_routes_say_live_and_ready() {
    let (app, _) = app(&[]);
    for (path, status) in [("/health/live", "live"), ("/health/ready", "ready")] {
        let a = send(&app, get(path)).await;
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(a.json(), serde_json::json!({ "status": status }), "{path}");
    }
}

#[tokio::test]
async fn openapi_document_is_served_as_it_is_but_for_the_model_it_names() {
    let (app, _) = app(&[]);
    let a = send(&app, get("/openapi.yaml")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), "application/yaml");
    // The scripted backend calls itself `toy`, with 1000 classes: only what names the model
    // differs from the file.
    let file = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml"));
    let expected = file
        .replace(
            "ResNet-50 (ImageNet-1k) image classification",
            "A toy (1000 classes): image classification",
        )
        .replace(
            "The 1000 ImageNet class names by index.",
            "The model's 1000 class names by index.",
        );
    assert_eq!(a.text(), expected);
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_and_refusals_by_type() {
    let (app, _) = app(&[]);
    let chelsea = || upload("/explain", "image/png", fixture_bytes("chelsea.png"));
    for req in [
        chelsea(),
        chelsea(),
        upload("/predict", "image/jpeg", fixture_bytes("coffee.jpg")),
        upload(
            "/explain?method=scorecam",
            "image/png",
            fixture_bytes("chelsea.png"),
        ),
        upload(
            "/predict?top_k=0",
            "image/png",
            fixture_bytes("chelsea.png"),
        ),
        post("/explain", "text/plain", "hello"),
        post("/explain", "image/png", vec![0u8; 10]),
        get("/health/ready"),
        get("/info"),
    ] {
        send(&app, req).await;
    }
    let a = send(&app, get("/metrics")).await;
    assert_eq!(a.status, 200);
    assert!(
        a.header("content-type")
            .starts_with("text/plain; version=0.0.4"),
        "{}",
        a.header("content-type")
    );
    let text = a.text();
    for (series, n) in [
        (
            "gradcam_requests_total{route=\"/explain\",status=\"200\"}",
            2.0,
        ),
        (
            "gradcam_requests_total{route=\"/predict\",status=\"200\"}",
            1.0,
        ),
        (
            "gradcam_requests_total{route=\"/explain\",status=\"422\"}",
            2.0,
        ),
        (
            "gradcam_requests_total{route=\"/predict\",status=\"422\"}",
            1.0,
        ),
        (
            "gradcam_requests_total{route=\"/explain\",status=\"415\"}",
            1.0,
        ),
        (
            "gradcam_requests_total{route=\"/health/ready\",status=\"200\"}",
            1.0,
        ),
        (
            "gradcam_requests_total{route=\"/info\",status=\"200\"}",
            1.0,
        ),
        ("gradcam_rejections_total{reason=\"invalid_option\"}", 2.0),
        (
            "gradcam_rejections_total{reason=\"unsupported_media_type\"}",
            1.0,
        ),
        ("gradcam_rejections_total{reason=\"invalid_image\"}", 1.0),
        ("gradcam_stage_seconds_count{stage=\"inference\"}", 3.0),
        ("gradcam_stage_seconds_count{stage=\"decode\"}", 3.0),
        ("gradcam_stage_seconds_count{stage=\"render\"}", 2.0),
        // The parts: decoding and preprocessing for each answered request, the overlay, its
        // encoding and the JSON for each explanation drawn.
        ("gradcam_stage_seconds_count{stage=\"decode_pixels\"}", 3.0),
        ("gradcam_stage_seconds_count{stage=\"preprocess\"}", 3.0),
        ("gradcam_stage_seconds_count{stage=\"overlay\"}", 2.0),
        ("gradcam_stage_seconds_count{stage=\"encode\"}", 2.0),
        ("gradcam_stage_seconds_count{stage=\"serialize\"}", 2.0),
        ("gradcam_batch_size_count", 3.0),
        ("gradcam_queue_depth", 0.0),
        ("gradcam_model_info{model=\"toy\",device=\"cpu\"}", 1.0),
    ] {
        assert_eq!(metric(&text, series), n, "{series} in\n{text}");
    }
    // Their CPU time: some for each (a thread's clock counts nanoseconds).
    for stage in [
        "decode_pixels",
        "preprocess",
        "overlay",
        "encode",
        "serialize",
    ] {
        let series = format!("gradcam_stage_cpu_seconds_total{{stage=\"{stage}\"}}");
        assert!(metric(&text, &series) > 0.0, "{series} in\n{text}");
    }
    // The metrics request itself is counted too, once answered.
    let text = metrics_text(&app).await;
    assert_eq!(
        metric(
            &text,
            "gradcam_requests_total{route=\"/metrics\",status=\"200\"}"
        ),
        1.0,
        "{text}"
    );
}

const ORIGIN: &str = "https://app.example";

fn from(origin: &str, mut req: Request<Body>) -> Request<Body> {
    req.headers_mut().insert("origin", origin.parse().unwrap());
    req
}

fn preflight(origin: &str, path: &str) -> Request<Body> {
    Request::options(path)
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn cors_allows_the_configured_origin_and_no_other() {
    let (app, _) = app(&["--cors-origins", ORIGIN]);
    let photo = fixture_bytes("chelsea.png");
    // Preflights.
    let a = send(&app, preflight(ORIGIN, "/explain")).await;
    assert!(a.status < 300, "preflight from {ORIGIN}: {}", a.status);
    assert_eq!(a.header("access-control-allow-origin"), ORIGIN, "preflight");
    assert!(
        a.header("access-control-allow-methods").contains("POST"),
        "preflight methods"
    );
    assert!(
        a.header("access-control-allow-headers")
            .to_ascii_lowercase()
            .contains("content-type"),
        "preflight headers"
    );
    let a = send(&app, preflight("https://evil.example", "/explain")).await;
    assert_eq!(
        a.header("access-control-allow-origin"),
        "",
        "preflight from another origin"
    );
    // Simple requests, answers and refusals alike.
    let cases = [
        ("GET /info", get("/info")),
        (
            "POST /explain",
            upload("/explain?overlay=false", "image/png", photo.clone()),
        ),
        (
            "a refusal",
            upload("/explain?method=x", "image/png", photo.clone()),
        ),
        ("an unknown route", get("/nope")),
    ];
    for (case, req) in cases {
        let a = send(&app, from(ORIGIN, req)).await;
        assert_eq!(
            a.header("access-control-allow-origin"),
            ORIGIN,
            "{case} from {ORIGIN}"
        );
    }
    for origin in [
        "https://evil.example",
        "http://app.example",
        "https://app.example.evil",
    ] {
        let a = send(&app, from(origin, get("/info"))).await;
        assert_eq!(a.status, 200, "{origin}: still answered");
        assert_eq!(
            a.header("access-control-allow-origin"),
            "",
            "GET /info from {origin}"
        );
    }
}

#[tokio::test]
async fn cors_exposes_the_timing_headers() {
    let (app, _) = app(&["--cors-origins", ORIGIN]);
    let a = send(
        &app,
        from(
            ORIGIN,
            upload("/predict", "image/jpeg", fixture_bytes("coffee.jpg")),
        ),
    )
    .await;
    assert_eq!(a.status, 200);
    let exposed = a
        .header("access-control-expose-headers")
        .to_ascii_lowercase();
    for h in ["x-queue-time", "x-inference-time", "x-total-time"] {
        assert!(exposed.contains(h), "{h} exposed: {exposed:?}");
        assert!(!a.header(h).is_empty(), "{h} sent");
    }
}

#[tokio::test]
async fn cors_any_origin_and_no_cors_by_default() {
    let (any, _) = app(&["--cors-origins", "*"]);
    let a = send(&any, from("https://anyone.example", get("/info"))).await;
    assert_eq!(
        a.header("access-control-allow-origin"),
        "*",
        "--cors-origins '*'"
    );
    let (none, _) = app(&[]);
    let a = send(&none, from(ORIGIN, get("/info"))).await;
    assert_eq!(
        a.header("access-control-allow-origin"),
        "",
        "no --cors-origins"
    );
    let a = send(&none, preflight(ORIGIN, "/explain")).await;
    assert_eq!(
        a.header("access-control-allow-origin"),
        "",
        "no --cors-origins, preflight"
    );
}

/// openapi.yaml's paths, each with the media type of its 200 answer.
fn documented_paths() -> Vec<(String, String)> {
    let doc = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml"));
    let paths = doc.split("\npaths:\n").nth(1).unwrap();
    let paths = &paths[..paths.find("\ncomponents:").unwrap()];
    let mut out: Vec<(String, String)> = Vec::new();
    let mut in_ok = false;
    for line in paths.lines() {
        if let Some(path) = line.strip_prefix("  /") {
            out.push((format!("/{}", path.trim_end_matches(':')), String::new()));
            in_ok = false;
        } else if line.trim() == "'200':" {
            in_ok = true;
        } else if in_ok && line.trim().ends_with(':') && line.contains('/') {
            out.last_mut().unwrap().1 = line.trim().trim_end_matches(':').to_string();
            in_ok = false;
        }
    }
    out
}

/// The paths the router is given (`.route("...", ...)` in the HTTP sources).
fn routed_paths() -> Vec<String> {
    let mut out = Vec::new();
    for source in [
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/mod.rs")),
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/ui.rs")),
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/http/protocols/mod.rs"
        )),
    ] {
        for part in source.split(".route(").skip(1) {
            if let Some(path) = part.trim_start().strip_prefix('"') {
                out.push(path[..path.find('"').unwrap()].to_string());
            }
        }
    }
    out.sort();
    out
}

/// Every route, the web pages and their assets included, is in openapi.yaml, and every GET path
/// there answers with the media type it documents.
#[tokio::test]
async fn every_route_is_in_openapi_yaml_and_answers_as_documented() {
    let documented = documented_paths();
    let mut names: Vec<String> = documented.iter().map(|(p, _)| p.clone()).collect();
    names.sort();
    assert_eq!(
        names,
        routed_paths(),
        "openapi.yaml's paths and the router's"
    );
    let (app, _) = app(&[]);
    let docs = send(&app, get("/docs")).await.text();
    let models = send(&app, get("/v1/models")).await.json();
    let model = models["models"][0].as_str().unwrap().to_string();
    for (path, media) in documented {
        if matches!(path.as_str(), "/explain" | "/predict") || path.ends_with("/infer") {
            continue; // POST only; tests/inprocess/answers.rs, protocols.rs
        }
        // The inference protocols' routes name the model (and its one version).
        let path = path
            .replace("{name}", &model)
            .replace("{spec}", &model)
            .replace("{version}", "1");
        let a = send(&app, get(&path)).await;
        // A build without swagger-ui-dist has no reference assets, and its /docs says so.
        if path.starts_with("/docs/") && docs.contains("no interactive reference") {
            problem(&path, &a, 404, "not_found");
            continue;
        }
        assert_eq!(a.status, 200, "{path}");
        assert!(
            a.header("content-type").starts_with(&media),
            "{path}: {} is not the documented {media}",
            a.header("content-type")
        );
    }
}
