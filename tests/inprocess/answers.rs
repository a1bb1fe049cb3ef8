//! The answers: the JSON explanation is exactly what the toy backend computes for the same
//! preprocessed photograph and options, overlays are the renderer's drawing of that map,
//! `Accept: image/png` gets the overlay itself, `/predict` the best classes, and requests
//! batched together each get their own answer.

use crate::support::{
    PHOTOS, as_json, assert_explained, assert_timing_headers, base64_decode, expected,
    fixture_bytes, prepared, scripted_app, send, until, upload,
};
use crate::toy::{self, Act, Gate, Script};
use gradcam_serve::backend::{ExplainOptions, Layer, top_predictions};
use gradcam_serve::cam::Method;
use gradcam_serve::render::{self, Colormap, OverlayOptions};
use serde_json::Value;
use std::sync::atomic::Ordering;

/// The query string that asks for `o`.
fn query(o: &ExplainOptions) -> String {
    // '+' means a space in a query string: gradcam++ is percent-encoded.
    let mut q = format!(
        "method={}&layer={}&top_k={}",
        o.method.name().replace('+', "%2B"),
        o.layer,
        o.top_k
    );
    if let Some(c) = o.class {
        q.push_str(&format!("&class={c}"));
    }
    q
}

/// Options that vary with `i`: every method at every layer over 20 values, some with a class.
fn varied(i: usize) -> ExplainOptions {
    ExplainOptions {
        method: Method::ALL[i % 5],
        layer: Layer::ALL[(i / 5) % 4],
        class: (i % 3 == 1).then_some((i * 37 % 1000) as i64),
        top_k: 1 + i % 2,
        faithfulness: false,
    }
}

/// The overlay the renderer draws for the toy's explanation of `photo`.
fn drawn(photo: &[u8], o: ExplainOptions, rank: usize, overlay: &OverlayOptions) -> Vec<u8> {
    let (decoded, x) = prepared(photo);
    let e = &toy::explain_one(&x, o).explanations[rank];
    render::overlay_png(
        &decoded.image,
        &e.normalized,
        e.heatmap.width,
        e.heatmap.height,
        overlay,
    )
}

#[tokio::test]
async fn explain_answers_are_the_toy_result_for_every_method_and_layer() {
    let (app, _) = scripted_app(&[], &Script::default());
    for i in 0..20 {
        let (photo, ct) = PHOTOS[i % 4];
        let o = varied(i);
        let case = format!("{photo} with {}", query(&o));
        let bytes = fixture_bytes(photo);
        let a = send(
            &app,
            upload(&format!("/explain?{}", query(&o)), ct, bytes.clone()),
        )
        .await;
        assert_eq!(
            a.status,
            200,
            "{case}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert_timing_headers(&case, &a);
        let body = a.json();
        assert_eq!(
            (body["model"].as_str(), body["device"].as_str()),
            (Some("toy"), Some("cpu")),
            "{case}"
        );
        assert_explained(&case, &body, &bytes, o);
        for k in [
            "decode_ms",
            "queue_ms",
            "inference_ms",
            "render_ms",
            "total_ms",
        ] {
            assert!(
                body["timings"][k].as_f64().is_some_and(|v| v >= 0.0),
                "{case}: {k}"
            );
        }
        assert_eq!(body["timings"]["batch_size"], 1, "{case}");
        assert!(
            body["timings"].get("fetch_ms").is_none(),
            "{case}: nothing fetched"
        );
        for (rank, e) in body["explanations"].as_array().unwrap().iter().enumerate() {
            let png = base64_decode(e["overlay_png"].as_str().expect("an overlay by default"));
            assert!(
                png == drawn(&bytes, o, rank, &OverlayOptions::default()),
                "{case}: overlay {rank} is the renderer's drawing of the map"
            );
        }
    }
}

#[tokio::test]
async fn overlay_options_shape_the_png_or_leave_it_out() {
    let (app, _) = scripted_app(&[], &Script::default());
    let bytes = fixture_bytes("rocket.jpg");
    let (decoded, _) = prepared(&bytes);
    let (w, h) = decoded.image.dimensions();
    let cases = [
        ("defaults", "", Some(OverlayOptions::default())),
        (
            "colormap, alpha and side",
            "colormap=viridis&alpha=0.7&overlay_max_side=200",
            Some(OverlayOptions {
                colormap: Colormap::Viridis,
                alpha: 0.7,
                max_side: 200,
            }),
        ),
        (
            "gray, no heat",
            "colormap=gray&alpha=0",
            Some(OverlayOptions {
                colormap: Colormap::Gray,
                alpha: 0.0,
                max_side: 1024,
            }),
        ),
        ("overlay=false", "overlay=false", None),
        (
            "overlay=false wins over its options",
            "colormap=turbo&overlay=false",
            None,
        ),
    ];
    for (case, q, overlay) in cases {
        let a = send(
            &app,
            upload(&format!("/explain?{q}"), "image/jpeg", bytes.clone()),
        )
        .await;
        assert_eq!(a.status, 200, "{case}");
        let e = &a.json()["explanations"][0];
        match overlay {
            None => assert!(e.get("overlay_png").is_none(), "{case}: no overlay"),
            Some(o) => {
                let png = base64_decode(e["overlay_png"].as_str().unwrap());
                assert!(
                    png == drawn(&bytes, ExplainOptions::default(), 0, &o),
                    "{case}: the renderer's drawing with these options"
                );
                let img = image::load_from_memory(&png).unwrap();
                let want = render::overlay_size(w, h, o.max_side);
                assert_eq!((img.width(), img.height()), want, "{case}: size");
                assert!(
                    w.max(h) <= o.max_side || want.0.max(want.1) == o.max_side,
                    "{case}"
                );
            }
        }
    }
}

#[tokio::test]
async fn accept_png_answers_with_the_overlay_and_says_what_it_shows() {
    let (app, _) = scripted_app(&[], &Script::default());
    let bytes = fixture_bytes("rocket.jpg");
    let top = expected(&bytes, ExplainOptions::default()).predictions[0].index;
    let layercam = ExplainOptions {
        method: Method::LayerCam,
        layer: Layer::Layer3,
        class: Some(281),
        top_k: 1,
        faithfulness: false,
    };
    let gray = OverlayOptions {
        colormap: Colormap::Gray,
        max_side: 256,
        ..Default::default()
    };
    // (case, query, options, overlay, class index, label)
    let cases = [
        (
            "a class at layer3 with LayerCAM",
            "class=281&method=layercam&layer=layer3&overlay_max_side=256&colormap=gray",
            layercam,
            gray,
            281,
            "tabby",
        ),
        (
            "overlay=false still draws the first class",
            "overlay=false&top_k=3",
            ExplainOptions {
                top_k: 3,
                ..Default::default()
            },
            OverlayOptions::default(),
            top,
            gradcam_serve::backend::labels()[top as usize],
        ),
    ];
    for (case, q, o, overlay, class, label) in cases {
        let mut req = upload(&format!("/explain?{q}"), "image/jpeg", bytes.clone());
        req.headers_mut()
            .insert("accept", "image/png".parse().unwrap());
        let a = send(&app, req).await;
        assert_eq!(a.status, 200, "{case}");
        assert_eq!(a.header("content-type"), "image/png", "{case}");
        assert_eq!(a.header("x-class-index"), class.to_string(), "{case}");
        assert_eq!(a.header("x-class-label"), label, "{case}");
        assert_eq!(a.header("x-method"), o.method.name(), "{case}");
        assert_eq!(a.header("x-layer"), o.layer.name(), "{case}");
        // JSON or a picture by Accept: caches must key on it.
        assert_eq!(a.header("vary"), "accept", "{case}");
        assert_timing_headers(case, &a);
        assert!(
            a.body.as_ref() == drawn(&bytes, o, 0, &overlay).as_slice(),
            "{case}: the body is the overlay PNG"
        );
    }
    for accept in ["image/png, application/json", "application/json", "*/*"] {
        let mut req = upload("/explain?overlay=false", "image/jpeg", bytes.clone());
        req.headers_mut().insert("accept", accept.parse().unwrap());
        let a = send(&app, req).await;
        assert_eq!(a.status, 200, "Accept: {accept}");
        assert_eq!(
            a.header("content-type"),
            "application/json",
            "Accept: {accept}"
        );
    }
}

#[tokio::test]
async fn predict_lists_the_toys_best_classes_without_explaining() {
    let (app, _) = scripted_app(&[], &Script::default());
    for (photo, ct) in PHOTOS {
        let bytes = fixture_bytes(photo);
        let logits = toy::logits_one(&prepared(&bytes).1);
        for (case, q, k) in [
            ("default top_k", "", 5),
            ("top_k=3", "?top_k=3", 3),
            ("top_k=1", "?top_k=1", 1),
            ("every class", "?top_k=1000", 1000),
        ] {
            let case = format!("{photo}, {case}");
            let a = send(&app, upload(&format!("/predict{q}"), ct, bytes.clone())).await;
            assert_eq!(a.status, 200, "{case}");
            assert_timing_headers(&case, &a);
            let body = a.json();
            let want = top_predictions(&logits, k, &Default::default());
            assert_eq!(body["predictions"], as_json(&want), "{case}");
            assert_eq!(body["model"], "toy", "{case}");
            assert!(body.get("explanations").is_none(), "{case}");
            assert!(
                body["timings"].get("render_ms").is_none(),
                "{case}: nothing drawn"
            );
            assert!(body["timings"]["inference_ms"].as_f64().is_some(), "{case}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_are_batched_and_each_gets_its_own_answer() {
    let script = Script::default();
    let (app, state) = scripted_app(&["--max-batch-size", "8"], &script);
    let gate = Gate::default();
    script.push(Act::Hold(gate.clone()));
    let spawn = |req| {
        let app = app.clone();
        tokio::spawn(async move { send(&app, req).await })
    };
    let held = spawn(upload("/predict", "image/png", fixture_bytes("camera.png")));
    until("the model thread to hold the first request", || {
        script.calls() == 1
    })
    .await;
    let cases: Vec<(&str, ExplainOptions)> = (0..8)
        .map(|i| (PHOTOS[i % 4].0, varied(3 * i + 1)))
        .collect();
    let queued: Vec<_> = cases
        .iter()
        .map(|(photo, o)| {
            let ct = if photo.ends_with(".png") {
                "image/png"
            } else {
                "image/jpeg"
            };
            spawn(upload(
                &format!("/explain?overlay=false&{}", query(o)),
                ct,
                fixture_bytes(photo),
            ))
        })
        .collect();
    let metrics = state.metrics.clone();
    until("eight requests in the queue", || {
        metrics.queue_depth.load(Ordering::SeqCst) == 8
    })
    .await;
    gate.open();
    assert_eq!(held.await.unwrap().status, 200, "the held request");
    for ((photo, o), answer) in cases.iter().zip(queued) {
        let a = answer.await.unwrap();
        let case = format!("{photo} with {}", query(o));
        assert_eq!(a.status, 200, "{case}");
        let body: Value = a.json();
        assert_eq!(
            body["timings"]["batch_size"], 8,
            "{case}: one batch of eight"
        );
        assert_explained(&case, &body, &fixture_bytes(photo), *o);
    }
    assert_eq!(script.calls(), 2, "the eight ran in one backend call");
}
