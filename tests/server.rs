//! End-to-end tests of `gradcam-serve serve`: the real binary on port 0, real photographs in
//! every input form, answers checked against the engine's own numbers for the same image.

mod common;

use common::server::{Origin, Server, client};
use common::{MODEL, fixture, max_diff};
use gradcam_serve::cam::Method;
use gradcam_serve::input;
use gradcam_serve::model::{ExplainOptions, ExplainResult, Layer};
use reqwest::blocking::multipart;
use serde_json::Value;

/// A server with default settings (and one CORS origin). Each test starts its own: a server in
/// a static would never be dropped, so its process would outlive the tests.
fn default_server() -> Server {
    Server::start(&["--cors-origins", "https://app.example"])
}

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

fn post_raw(
    server: &Server,
    path: &str,
    file: &str,
    content_type: &str,
) -> reqwest::blocking::Response {
    client()
        .post(server.url(path))
        .header("content-type", content_type)
        .body(std::fs::read(fixture(file)).unwrap())
        .send()
        .unwrap()
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

fn problem(res: reqwest::blocking::Response, status: u16, kind: &str) -> Value {
    assert_eq!(res.status().as_u16(), status);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body: Value = res.json().unwrap();
    assert_eq!(body["type"], kind, "{body}");
    assert_eq!(body["status"], status);
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    body
}

#[test]
fn raw_body_explain_matches_the_engine_with_timing_headers() {
    let server = default_server();
    let res = post_raw(&server, "/explain", "chelsea.png", "image/png");
    assert_eq!(res.status(), 200);
    for h in ["x-queue-time", "x-inference-time", "x-total-time"] {
        assert!(
            res.headers()[h].to_str().unwrap().parse::<f64>().unwrap() >= 0.0,
            "{h}"
        );
    }
    let body: Value = res.json().unwrap();
    assert_eq!(body["model"], "resnet50");
    assert_eq!(body["device"], "cpu");
    assert_eq!(body["image"]["width"], 451);
    assert_eq!(body["image"]["format"], "png");
    for k in [
        "decode_ms",
        "queue_ms",
        "inference_ms",
        "render_ms",
        "total_ms",
    ] {
        assert!(body["timings"][k].as_f64().is_some(), "{k}");
    }
    assert_matches_engine(&body, "chelsea.png", ExplainOptions::default());
    let png = base64_decode(body["explanations"][0]["overlay_png"].as_str().unwrap());
    let img = image::load_from_memory(&png).unwrap();
    assert_eq!((img.width(), img.height()), (451, 300));
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[test]
fn multipart_upload_with_options() {
    let server = default_server();
    let form = multipart::Form::new()
        .part(
            "image",
            multipart::Part::bytes(std::fs::read(fixture("coffee.jpg")).unwrap())
                .file_name("coffee.jpg"),
        )
        .text("method", "layercam")
        .text("layer", "layer3")
        .text("top_k", "2")
        .text("overlay_max_side", "100")
        .text("colormap", "inferno");
    let res = client()
        .post(server.url("/explain"))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().unwrap();
    let opts = ExplainOptions {
        method: Method::LayerCam,
        layer: Layer::Layer3,
        top_k: 2,
        class: None,
    };
    assert_matches_engine(&body, "coffee.jpg", opts);
    let png = base64_decode(body["explanations"][1]["overlay_png"].as_str().unwrap());
    let img = image::load_from_memory(&png).unwrap();
    assert_eq!(
        (img.width(), img.height()),
        (100, 67),
        "600x400 capped at 100"
    );
}

#[test]
fn url_form_fetches_from_an_allowed_loopback_origin() {
    let origin = Origin::serve(std::fs::read(fixture("rocket.jpg")).unwrap(), "image/jpeg");
    let port = origin.addr.port().to_string();
    let server = Server::start(&["--fetch-allow", "127.0.0.1/32", "--fetch-ports", &port]);
    let url = format!("http://{}/rocket.jpg", origin.addr);
    let res = client()
        .post(server.url("/explain"))
        .json(
            &serde_json::json!({ "url": url, "method": "xgradcam", "class": 1, "overlay": false }),
        )
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().unwrap();
    assert!(body["timings"]["fetch_ms"].as_f64().is_some());
    assert!(
        body["explanations"][0].get("overlay_png").is_none(),
        "overlay=false omits the PNG"
    );
    let opts = ExplainOptions {
        method: Method::XGradCam,
        class: Some(1),
        ..Default::default()
    };
    assert_matches_engine(&body, "rocket.jpg", opts);
    assert_eq!(origin.hits(), 1);
}

/// URLs that lead into the server's own network are refused without a connection to it: a
/// canary origin on another loopback address must never see one.
#[test]
fn url_form_refuses_internal_targets_and_redirects_into_them() {
    let canary = Origin::answer("127.0.0.2", |_| {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi".to_vec()
    });
    let canary_url = format!("http://{}/secret", canary.addr);
    let target = canary_url.clone();
    // An allowed origin that redirects: to the canary, or along a chain of 4 hops.
    let origin = Origin::answer("127.0.0.1", move |path| {
        let location = match path.strip_prefix("/hop") {
            Some(n) => format!("/hop{}", n.parse::<u32>().unwrap_or(0) + 1),
            None => target.clone(),
        };
        format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .into_bytes()
    });
    let ports = format!("{},{}", origin.addr.port(), canary.addr.port());
    let server = Server::start(&["--fetch-allow", "127.0.0.1/32", "--fetch-ports", &ports]);
    let post = |url: &str| {
        client()
            .post(server.url("/explain"))
            .json(&serde_json::json!({ "url": url }))
            .send()
            .unwrap()
    };
    // The canary directly, in several spellings of loopback and metadata addresses.
    let p = problem(post(&canary_url), 403, "forbidden_source");
    assert!(!p["detail"].as_str().unwrap().contains("hi"));
    for url in [
        format!("http://2130706434:{}/", canary.addr.port()),
        format!("http://[::ffff:127.0.0.2]:{}/", canary.addr.port()),
        "http://169.254.169.254/latest/meta-data/".to_string(),
    ] {
        problem(post(&url), 403, "forbidden_source");
    }
    // A redirect from the allowed origin into the canary, and a chain of four redirects.
    problem(
        post(&format!("http://{}/go", origin.addr)),
        403,
        "forbidden_source",
    );
    let p = problem(
        post(&format!("http://{}/hop0", origin.addr)),
        403,
        "forbidden_source",
    );
    assert!(p["detail"].as_str().unwrap().contains("redirects"), "{p}");
    assert_eq!(canary.hits(), 0, "no connection may reach the canary");
    // A port outside the allowed list.
    problem(
        post("http://93.184.216.34:8080/cat.jpg"),
        403,
        "forbidden_source",
    );
}

#[test]
fn accept_png_answers_with_the_overlay_itself() {
    let server = default_server();
    let res = client()
        .post(server.url("/explain?overlay_max_side=256&class=281"))
        .header("content-type", "image/jpeg")
        .header("accept", "image/png")
        .body(std::fs::read(fixture("rocket.jpg")).unwrap())
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/png");
    assert_eq!(res.headers()["x-class-index"], "281");
    assert_eq!(res.headers()["x-class-label"], "tabby");
    assert!(res.headers().contains_key("x-total-time"));
    let img = image::load_from_memory(&res.bytes().unwrap()).unwrap();
    assert_eq!((img.width(), img.height()), (256, 171));
}

#[test]
fn predict_classifies_without_explanations() {
    let server = default_server();
    let res = client()
        .post(server.url("/predict?top_k=3"))
        .header("content-type", "image/png")
        .body(std::fs::read(fixture("camera.png")).unwrap())
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().unwrap();
    let want = engine("camera.png", ExplainOptions::default());
    let preds = body["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 3);
    for (p, w) in preds.iter().zip(&want.predictions) {
        assert_eq!(p["index"], w.index);
        assert!((p["probability"].as_f64().unwrap() - f64::from(w.probability)).abs() < 1e-5);
    }
    assert!(body.get("explanations").is_none());
}

#[test]
fn concurrent_requests_with_different_options_get_their_own_answers() {
    let server = default_server();
    let cases: Vec<(&str, ExplainOptions)> = (0..12)
        .map(|i| {
            let file = ["chelsea.png", "coffee.jpg", "rocket.jpg", "camera.png"][i % 4];
            let opts = ExplainOptions {
                method: Method::ALL[i % 5],
                layer: if i % 3 == 0 {
                    Layer::Layer3
                } else {
                    Layer::Layer4
                },
                class: (i % 4 == 1).then_some(i as i64 * 7),
                top_k: 1 + i % 2,
            };
            (file, opts)
        })
        .collect();
    let server = &server;
    let answers: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(file, o)| {
                s.spawn(move || {
                    // '+' means a space in a query string: gradcam++ must be percent-encoded.
                    let method = o.method.name().replace('+', "%2B");
                    let mut q = format!(
                        "/explain?overlay=false&method={method}&layer={}&top_k={}",
                        o.layer, o.top_k
                    );
                    if let Some(c) = o.class {
                        q.push_str(&format!("&class={c}"));
                    }
                    let ct = if file.ends_with(".png") {
                        "image/png"
                    } else {
                        "image/jpeg"
                    };
                    let res = post_raw(server, &q, file, ct);
                    assert_eq!(res.status(), 200);
                    res.json::<Value>().unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let batched = answers
        .iter()
        .filter(|a| a["timings"]["batch_size"].as_u64().unwrap() > 1)
        .count();
    println!(
        "{batched} of {} answers came from batches of more than one image",
        answers.len()
    );
    for ((file, opts), body) in cases.iter().zip(&answers) {
        assert_matches_engine(body, file, *opts);
    }
}

#[test]
fn bad_input_gets_a_problem_that_says_what_is_wrong() {
    let server = default_server();
    let c = client();
    let res = c
        .post(server.url("/explain"))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .unwrap();
    let p = problem(res, 415, "unsupported_media_type");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("multipart/form-data")
    );
    problem(
        c.post(server.url("/explain")).send().unwrap(),
        415,
        "unsupported_media_type",
    );
    let res = c
        .post(server.url("/explain"))
        .header("content-type", "image/png")
        .body(vec![0u8; 100])
        .send()
        .unwrap();
    problem(res, 422, "invalid_image");
    let res = c
        .post(server.url("/explain"))
        .header("content-type", "image/png")
        .body(Vec::new())
        .send()
        .unwrap();
    problem(res, 422, "invalid_image");
    let p = problem(
        post_raw(
            &server,
            "/explain?method=scorecam",
            "chelsea.png",
            "image/png",
        ),
        422,
        "invalid_option",
    );
    assert!(p["detail"].as_str().unwrap().contains("layercam"));
    problem(
        post_raw(&server, "/explain?class=1000", "chelsea.png", "image/png"),
        422,
        "invalid_option",
    );
    problem(
        post_raw(&server, "/explain?color=red", "chelsea.png", "image/png"),
        422,
        "invalid_option",
    );
    problem(
        post_raw(
            &server,
            "/predict?method=gradcam",
            "chelsea.png",
            "image/png",
        ),
        422,
        "invalid_option",
    );
    let res = c
        .post(server.url("/explain"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .unwrap();
    problem(res, 400, "malformed_request");
    let res = c
        .post(server.url("/explain"))
        .json(&serde_json::json!({ "method": "gradcam" }))
        .send()
        .unwrap();
    problem(res, 400, "malformed_request");
    let res = c
        .post(server.url("/explain"))
        .json(&serde_json::json!({ "url": "file:///etc/passwd" }))
        .send()
        .unwrap();
    problem(res, 422, "invalid_url");
    let form = multipart::Form::new().text("method", "gradcam");
    problem(
        c.post(server.url("/explain"))
            .multipart(form)
            .send()
            .unwrap(),
        400,
        "malformed_request",
    );
    problem(c.get(server.url("/nope")).send().unwrap(), 404, "not_found");
    // The server is still healthy and answers correctly after all of that.
    assert_eq!(
        c.get(server.url("/health/ready")).send().unwrap().status(),
        200
    );
    assert_eq!(
        post_raw(&server, "/explain", "chelsea.png", "image/png").status(),
        200
    );
}

#[test]
fn operations_endpoints() {
    let server = default_server();
    let c = client();
    let live: Value = c
        .get(server.url("/health/live"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(live["status"], "live");
    assert_eq!(
        c.get(server.url("/health/ready")).send().unwrap().status(),
        200
    );
    let info: Value = c.get(server.url("/info")).send().unwrap().json().unwrap();
    let sha = gradcam_serve::model::weights::sha256_file(
        &common::reference_dir().join("weights.safetensors"),
    )
    .unwrap();
    assert_eq!(info["weights"]["sha256"], sha);
    assert_eq!(info["device"], "cpu");
    assert_eq!(info["batching"]["max_batch_size"], 8);
    let labels: Value = c.get(server.url("/labels")).send().unwrap().json().unwrap();
    assert_eq!(labels["labels"].as_array().unwrap().len(), 1000);
    assert_eq!(labels["labels"][281]["label"], "tabby");
    let spec = c
        .get(server.url("/openapi.yaml"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(
        spec,
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap()
    );
    // Make sure at least one inference and one refusal are counted, then read the metrics.
    assert_eq!(
        post_raw(&server, "/predict", "chelsea.png", "image/png").status(),
        200
    );
    problem(
        post_raw(&server, "/predict?top_k=0", "chelsea.png", "image/png"),
        422,
        "invalid_option",
    );
    let text = c
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
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
    let c = client();
    let ok = c
        .get(server.url("/info"))
        .header("origin", "https://app.example")
        .send()
        .unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let other = c
        .get(server.url("/info"))
        .header("origin", "https://evil.example")
        .send()
        .unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
}

/// Sends one whole HTTP/1.1 request over a plain socket and returns status and body. (An HTTP
/// client library may give up on reading the answer when the server refuses a body before it
/// has all been sent; a whole request written at once always gets its answer read.)
fn raw_request(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut req = format!(
        "{head}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    let _ = s.write_all(&req);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn body_over_the_limit_is_413_in_every_form() {
    let server = Server::start(&["--body-limit", "100000"]);
    let big = std::fs::read(fixture("chelsea.png")).unwrap();
    assert!(big.len() > 100_000);
    let head = "POST /explain HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n";
    let (status, body) = raw_request(server.addr, head, &big);
    assert_eq!(
        (status, body["type"].as_str()),
        (413, Some("body_too_large")),
        "{body}"
    );
    let mut form =
        b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"c.png\"\r\n\r\n"
            .to_vec();
    form.extend_from_slice(&big);
    form.extend_from_slice(b"\r\n--XyZ--\r\n");
    let head =
        "POST /explain HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n";
    let (status, body) = raw_request(server.addr, head, &form);
    assert_eq!(
        (status, body["type"].as_str()),
        (413, Some("body_too_large")),
        "{body}"
    );
    // Within the limit, the same server answers.
    let small = std::fs::read(fixture("coffee.jpg")).unwrap();
    let head = "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n";
    assert_eq!(raw_request(server.addr, head, &small).0, 200);
}

#[test]
fn full_queue_refuses_at_once_with_retry_after() {
    let server = Server::start(&["--queue-capacity", "1", "--max-batch-size", "1"]);
    let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..16)
            .map(|_| {
                s.spawn(|| {
                    let res = client()
                        .post(server.url("/explain?overlay=false"))
                        .header("content-type", "image/png")
                        .body(std::fs::read(fixture("chelsea.png")).unwrap())
                        .send()
                        .unwrap();
                    let retry = res
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_string());
                    (res.status().as_u16(), retry)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let refused = statuses.iter().filter(|(s, _)| *s == 429).count();
    assert!(
        refused > 0,
        "16 concurrent requests into a queue of 1 must see refusals: {statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|(s, r)| *s == 200 || (*s == 429 && r.as_deref() == Some("1"))),
        "{statuses:?}"
    );
    assert_eq!(
        server.metric("gradcam_rejections_total{reason=\"queue_full\"}"),
        refused as f64
    );
}

#[test]
fn queued_work_past_its_deadline_is_refused_with_504() {
    let server = Server::start(&[
        "--request-timeout-ms",
        "300",
        "--fetch-timeout-ms",
        "200",
        "--max-batch-size",
        "1",
    ]);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..12)
            .map(|_| {
                s.spawn(|| {
                    let res = client()
                        .post(server.url("/explain?overlay=false"))
                        .header("content-type", "image/png")
                        .body(std::fs::read(fixture("chelsea.png")).unwrap())
                        .send()
                        .unwrap();
                    let status = res.status().as_u16();
                    if status == 504 {
                        let _ = problem(res, 504, "timeout");
                    }
                    status
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Twelve images at one per batch take well over 300 ms on any CPU we run on.
    assert!(statuses.contains(&504), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 504),
        "{statuses:?}"
    );
    assert_eq!(server.ready(), 200);
}

#[test]
fn the_bytes_decide_the_format_and_overlays_are_upright() {
    let server = default_server();
    // PNG bytes sent as JPEG: the declared type is only a hint.
    let res = post_raw(
        &server,
        "/explain?overlay=false",
        "chelsea.png",
        "image/jpeg",
    );
    assert_eq!(res.status(), 200);
    let body: Value = res.json().unwrap();
    assert_eq!(body["image"]["format"], "png");
    // A photo stored sideways with EXIF orientation 6 is explained and drawn upright.
    let stored = std::fs::read(common::synthetic("orientation6.jpg")).unwrap();
    let res = client()
        .post(server.url("/explain"))
        .header("content-type", "image/jpeg")
        .header("accept", "image/png")
        .body(stored)
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let img = image::load_from_memory(&res.bytes().unwrap()).unwrap();
    assert_eq!(
        (img.width(), img.height()),
        (451, 300),
        "overlay in display orientation"
    );
}

/// Slow clients: 500 sockets that send half a request line and stall must not keep a normal
/// request from its answer, and the server must drop them once the header-read timeout passes.
#[test]
fn stalled_connections_neither_block_others_nor_stay_open() {
    use std::io::{Read, Write};
    let server = Server::start(&["--header-read-timeout-ms", "1500"]);
    let stalled: Vec<std::net::TcpStream> = (0..500)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(server.addr).unwrap();
            s.write_all(b"POST /explain HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    let started = std::time::Instant::now();
    assert_eq!(
        post_raw_to(&server, "/predict", "chelsea.png").status(),
        200
    );
    println!(
        "answered in {:?} beside 500 stalled sockets",
        started.elapsed()
    );
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let mut still_open = 0;
    for mut s in stalled {
        s.set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 512];
        // A closed connection reads as end-of-file (or a 408 answer, or a reset) at once; an
        // open one times out.
        match s.read(&mut buf) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(_) => still_open += 1,
        }
    }
    assert_eq!(
        still_open, 0,
        "stalled connections outlived the header-read timeout"
    );
    assert_eq!(server.ready(), 200);
}

/// A client that sends its headers and then stalls (or trickles) the body gets a 408 once the
/// body-read timeout passes, in the raw and the multipart form, while others are served.
#[test]
fn a_body_that_does_not_arrive_gets_408() {
    use std::io::{Read, Write};
    let server = Server::start(&["--body-read-timeout-ms", "1000"]);
    let stall = |content_type: &str, start: &[u8]| {
        let mut s = std::net::TcpStream::connect(server.addr).unwrap();
        let head = format!(
            "POST /explain HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: 50000\r\nConnection: close\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(start).unwrap();
        s
    };
    let raw = stall(
        "image/png",
        &std::fs::read(fixture("chelsea.png")).unwrap()[..100],
    );
    let form = stall(
        "multipart/form-data; boundary=XyZ",
        b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n\x89PNG",
    );
    // Meanwhile a normal request is answered.
    assert_eq!(
        post_raw_to(&server, "/predict", "chelsea.png").status(),
        200
    );
    for (name, mut s) in [("raw", raw), ("multipart", form)] {
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 408"), "{name}: {text}");
        let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["type"], "body_timeout", "{name}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains("1000 ms"),
            "{body}"
        );
    }
    assert_eq!(
        server.metric("gradcam_rejections_total{reason=\"body_timeout\"}"),
        2.0
    );
}

fn post_raw_to(server: &Server, path: &str, file: &str) -> reqwest::blocking::Response {
    client()
        .post(server.url(path))
        .header("content-type", "image/png")
        .body(std::fs::read(fixture(file)).unwrap())
        .send()
        .unwrap()
}
