//! Every input form (raw body, multipart, JSON with a URL) and every answer form (JSON, the
//! overlay PNG itself, predictions only), checked against the engine's own numbers.

use super::{assert_matches_engine, base64_decode, default_server, engine};
use crate::common::origin::Origin;
use crate::common::server::{Server, client, post_fixture, post_fixture_as};
use crate::common::{fixture, synthetic};
use gradcam_serve::backend::{ExplainOptions, Layer};
use gradcam_serve::cam::Method;
use reqwest::blocking::multipart;
use serde_json::Value;

#[test]
fn raw_body_explain_matches_the_engine_with_timing_headers() {
    let server = default_server();
    let res = post_fixture(server.url("/explain"), "chelsea.png")
        .send()
        .unwrap();
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
        faithfulness: false,
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
    let origin = Origin::ok(
        "127.0.0.1",
        std::fs::read(fixture("rocket.jpg")).unwrap(),
        Some("image/jpeg"),
    );
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

#[test]
fn accept_png_answers_with_the_overlay_itself() {
    let server = default_server();
    let res = post_fixture(
        server.url("/explain?overlay_max_side=256&class=281"),
        "rocket.jpg",
    )
    .header("accept", "image/png")
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
    let res = post_fixture(server.url("/predict?top_k=3"), "camera.png")
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
                faithfulness: false,
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
                    let res = post_fixture(server.url(&q), file).send().unwrap();
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
fn the_bytes_decide_the_format_and_overlays_are_upright() {
    let server = default_server();
    // PNG bytes sent as JPEG: the declared type is only a hint.
    let res = post_fixture_as(
        server.url("/explain?overlay=false"),
        "chelsea.png",
        "image/jpeg",
    )
    .send()
    .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().unwrap();
    assert_eq!(body["image"]["format"], "png");
    // A photo stored sideways with EXIF orientation 6 is explained and drawn upright.
    let stored = std::fs::read(synthetic("orientation6.jpg")).unwrap();
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
