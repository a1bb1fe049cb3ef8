//! Every refusal is an `application/problem+json` answer with `type`, `title`, `status` and
//! `detail`, under the status and type that README.md's "Errors" table and openapi.yaml give.
//! The engine's own refusals (429, 500, 503, 504) are in faults.rs.

use crate::support::{
    Form, app, detail, fixture_bytes, get, metric, metrics_text, post, post_json, problem,
    scripted_app, send, upload,
};
use crate::toy::Script;
use axum::body::Body;
use axum::http::{Request, header};
use serde_json::json;

#[tokio::test]
async fn unreadable_requests_are_400_malformed_request() {
    let script = Script::default();
    let (app, _) = scripted_app(&[], &script);
    let photo = fixture_bytes("chelsea.png");
    let cases: Vec<(&str, Request<Body>, &str)> = vec![
        (
            "multipart without an image field",
            Form::new().text("method", "gradcam").request("/explain"),
            "no field \"image\"",
        ),
        (
            "multipart with the file under another name",
            Form::new()
                .file("photo", "chelsea.png", "image/png", &photo)
                .request("/explain"),
            "no field \"image\"",
        ),
        (
            "multipart without a boundary",
            post("/explain", "multipart/form-data", photo.clone()),
            "boundary",
        ),
        (
            "multipart cut off before its end",
            post(
                "/explain",
                &Form::content_type(),
                Form::new()
                    .file("image", "chelsea.png", "image/png", &photo)
                    .into_bytes()[..1000]
                    .to_vec(),
            ),
            "multipart",
        ),
        (
            "JSON that does not parse",
            post("/explain", "application/json", "{not json"),
            "not a JSON object",
        ),
        (
            "JSON that is not an object",
            post_json("/explain", &json!(["http://example.com/cat.jpg"])),
            "not a JSON object",
        ),
        (
            "JSON without url",
            post_json("/explain", &json!({ "method": "gradcam" })),
            "no \"url\" member",
        ),
        (
            "predict: JSON without url",
            post_json("/predict", &json!({ "top_k": 3 })),
            "no \"url\" member",
        ),
    ];
    for (case, req, needle) in cases {
        let p = problem(case, &send(&app, req).await, 400, "malformed_request");
        assert!(detail(&p).contains(needle), "{case}: {p}");
    }
    assert_eq!(script.calls(), 0, "nothing unreadable reaches the model");
}

/// A query string that cannot be decoded is unreadable, like a body that is not JSON: 400.
#[tokio::test]
async fn a_query_with_broken_percent_encoding_is_400() {
    let (app, _) = app(&[]);
    for query in ["top_k=%ZZ", "top_k=%FF", "%FF=1", "method=%", "%"] {
        let req = upload(
            &format!("/explain?{query}"),
            "image/png",
            fixture_bytes("chelsea.png"),
        );
        let p = problem(query, &send(&app, req).await, 400, "malformed_request");
        assert!(detail(&p).contains("query string"), "{query}: {p}");
    }
}

/// A body whose length is not known in advance, as with chunked transfer encoding.
fn streamed(bytes: Vec<u8>) -> Body {
    Body::from_stream(Body::from(bytes).into_data_stream())
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_however_they_arrive() {
    let script = Script::default();
    let (app, _) = scripted_app(&["--body-limit", "100000"], &script);
    let big = fixture_bytes("chelsea.png");
    assert!(big.len() > 100_000);
    let form = || {
        Form::new()
            .file("image", "chelsea.png", "image/png", &big)
            .into_bytes()
    };
    let with_length = |ct: &str, len: usize, body: Body| {
        Request::post("/explain")
            .header(header::CONTENT_TYPE, ct)
            .header(header::CONTENT_LENGTH, len)
            .body(body)
            .unwrap()
    };
    let cases: Vec<(&str, Request<Body>)> = vec![
        (
            "raw, Content-Length above the limit",
            upload("/explain", "image/png", big.clone()),
        ),
        (
            "raw, only the Content-Length above the limit",
            with_length("image/png", 100_001, Body::from(big[..1000].to_vec())),
        ),
        (
            "raw, streamed",
            post("/explain", "image/png", streamed(big.clone())),
        ),
        (
            "raw, a Content-Length that understates the body",
            with_length("image/png", 1000, Body::from(big.clone())),
        ),
        (
            "predict, raw, streamed",
            post("/predict", "image/png", streamed(big.clone())),
        ),
        (
            "multipart with its Content-Length",
            with_length(&Form::content_type(), form().len(), Body::from(form())),
        ),
        (
            "multipart, streamed",
            post("/explain", &Form::content_type(), streamed(form())),
        ),
        (
            "JSON, streamed",
            post(
                "/explain",
                "application/json",
                streamed(
                    json!({ "url": format!("http://example.com/{}", "a".repeat(100_000)) })
                        .to_string()
                        .into_bytes(),
                ),
            ),
        ),
    ];
    for (case, req) in cases {
        let p = problem(case, &send(&app, req).await, 413, "body_too_large");
        assert!(detail(&p).contains("100000 bytes"), "{case}: {p}");
    }
    assert_eq!(script.calls(), 0);
    // Within the limit, the same server answers.
    let a = send(
        &app,
        upload("/predict", "image/jpeg", fixture_bytes("coffee.jpg")),
    )
    .await;
    assert_eq!(a.status, 200, "a body within the limit");
}

#[tokio::test]
async fn bodies_without_a_supported_type_are_415() {
    let (app, _) = app(&[]);
    let photo = fixture_bytes("chelsea.png");
    for (case, content_type, needle) in [
        ("no content type", "", "has no Content-Type"),
        (
            "text/plain",
            "text/plain",
            "\"text/plain\" is not supported",
        ),
        (
            "a form",
            "application/x-www-form-urlencoded",
            "is not supported",
        ),
        (
            "an image type we do not read",
            "image/svg+xml",
            "is not supported",
        ),
        ("a content type without a type", ";;", "has no Content-Type"),
    ] {
        for route in ["/explain", "/predict"] {
            let case = format!("{route}: {case}");
            let p = problem(
                &case,
                &send(&app, post(route, content_type, photo.clone())).await,
                415,
                "unsupported_media_type",
            );
            let d = detail(&p);
            assert!(d.contains(needle), "{case}: {p}");
            for allowed in [
                "multipart/form-data",
                "application/json",
                "image/jpeg",
                "image/png",
                "application/octet-stream",
            ] {
                assert!(
                    d.contains(allowed),
                    "{case}: the refusal lists {allowed}: {p}"
                );
            }
        }
    }
}

/// An ICO file: recognised by its magic bytes, not a supported format.
fn ico() -> Vec<u8> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::ico::IcoEncoder::new(&mut out)
        .write_image(&[0u8; 4 * 4 * 4], 4, 4, image::ExtendedColorType::Rgba8)
        .unwrap();
    out
}

#[tokio::test]
async fn bytes_that_are_no_supported_image_are_422_invalid_image() {
    let script = Script::default();
    let (app, _) = scripted_app(&[], &script);
    let png = fixture_bytes("camera.png");
    let jpeg = fixture_bytes("coffee.jpg");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "empty"),
        ("zeros", vec![0u8; 100], "unrecognised image format"),
        (
            "text",
            b"hello, this is not an image".to_vec(),
            "unrecognised image format",
        ),
        ("truncated PNG", png[..png.len() / 2].to_vec(), "PNG"),
        (
            "truncated JPEG",
            jpeg[..jpeg.len() / 2].to_vec(),
            "truncated",
        ),
        (
            "ICO",
            ico(),
            "not supported; supported: JPEG, PNG, WebP, GIF, BMP, TIFF",
        ),
    ];
    for (case, bytes, needle) in cases {
        for form in ["raw", "multipart"] {
            let req = match form {
                "raw" => post("/explain", "application/octet-stream", bytes.clone()),
                _ => Form::new()
                    .file("image", "x", "application/octet-stream", &bytes)
                    .request("/predict"),
            };
            let case = format!("{case} ({form})");
            let p = problem(&case, &send(&app, req).await, 422, "invalid_image");
            assert!(detail(&p).contains(needle), "{case}: {p}");
        }
    }
    assert_eq!(script.calls(), 0);
}

/// A real JPEG whose frame header claims `width x height`: the pixel check must refuse it from
/// the header, before anything is decoded.
fn jpeg_claiming(width: u16, height: u16) -> Vec<u8> {
    let mut bytes = fixture_bytes("coffee.jpg");
    let mut pos = 2;
    loop {
        assert_eq!(bytes[pos], 0xFF, "a JPEG marker at {pos}");
        let marker = bytes[pos + 1];
        let len = usize::from(u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]));
        if matches!(marker, 0xC0..=0xC3) {
            bytes[pos + 5..pos + 7].copy_from_slice(&height.to_be_bytes());
            bytes[pos + 7..pos + 9].copy_from_slice(&width.to_be_bytes());
            return bytes;
        }
        pos += 2 + len;
    }
}

#[tokio::test]
async fn images_above_the_pixel_limit_are_422_image_too_large() {
    let script = Script::default();
    let (app, _) = scripted_app(&["--max-image-pixels", "200000"], &script);
    let cases = [
        (
            "a JPEG header claiming 65000x65000",
            jpeg_claiming(65000, 65000),
            "image/jpeg",
            "65000x65000 = 4225000000 pixels",
        ),
        (
            "a real 600x400 photo above a 200000 pixel limit",
            fixture_bytes("coffee.jpg"),
            "image/jpeg",
            "600x400 = 240000 pixels, above the limit of 200000",
        ),
    ];
    for (case, bytes, ct, needle) in cases {
        for route in ["/explain", "/predict"] {
            let case = format!("{route}: {case}");
            let p = problem(
                &case,
                &send(&app, upload(route, ct, bytes.clone())).await,
                422,
                "image_too_large",
            );
            assert!(detail(&p).contains(needle), "{case}: {p}");
        }
    }
    assert_eq!(script.calls(), 0);
    // A 451x300 photo, within the limit, is answered.
    let a = send(
        &app,
        upload("/predict", "image/png", fixture_bytes("chelsea.png")),
    )
    .await;
    assert_eq!(a.status, 200, "a photo within the pixel limit");
}

#[tokio::test]
async fn unknown_routes_are_404_problems() {
    let (without_ui, _) = app(&["--ui", "false"]);
    for (case, req) in [
        ("root without the playground", get("/")),
        (
            "the playground's script without it",
            get("/ui/playground.js"),
        ),
        ("unknown path", get("/nope")),
        ("below a route", post("/explain/extra", "image/png", "x")),
        ("a route's prefix", get("/health")),
    ] {
        let p = problem(case, &send(&without_ui, req).await, 404, "not_found");
        assert!(detail(&p).contains("/openapi.yaml"), "{case}: {p}");
    }
    // With the playground (the default), `/` is its page; `/docs` is there either way.
    let (with_ui, _) = app(&[]);
    for (path, router) in [("/", &with_ui), ("/docs", &without_ui)] {
        let a = send(router, get(path)).await;
        assert_eq!(a.status, 200, "{path}");
        assert!(a.header("content-type").starts_with("text/html"), "{path}");
    }
}

/// Every refusal is a problem answer, including a known route asked with the wrong method.
#[tokio::test]
async fn wrong_methods_are_405_problems() {
    let (app, _) = app(&[]);
    for (case, req) in [
        ("GET /explain", get("/explain")),
        ("POST /info", post("/info", "application/json", "{}")),
        (
            "DELETE /health/ready",
            Request::delete("/health/ready")
                .body(Body::empty())
                .unwrap(),
        ),
    ] {
        let a = send(&app, req).await;
        problem(case, &a, 405, "method_not_allowed");
        assert!(!a.header("allow").is_empty(), "{case}: no Allow header");
    }
    let text = metrics_text(&app).await;
    assert_eq!(
        metric(
            &text,
            "gradcam_rejections_total{reason=\"method_not_allowed\"}"
        ),
        3.0,
        "{text}"
    );
}

/// During the drain delay readiness says 503 while work is still served.
#[tokio::test]
async fn during_the_drain_delay_readiness_is_503_and_work_is_served() {
    let (app, state) = app(&[]);
    state.start_draining();
    let a = send(&app, get("/health/ready")).await;
    problem("readiness", &a, 503, "draining");
    let a = send(
        &app,
        upload("/explain", "image/png", fixture_bytes("chelsea.png")),
    )
    .await;
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn draining_refuses_new_work_with_retry_after() {
    let script = Script::default();
    let (app, state) = scripted_app(&[], &script);
    assert_eq!(send(&app, get("/health/ready")).await.status, 200);
    state.stop_taking_work();
    for (case, req) in [
        (
            "explain",
            upload("/explain", "image/png", fixture_bytes("chelsea.png")),
        ),
        (
            "predict",
            upload("/predict", "image/jpeg", fixture_bytes("coffee.jpg")),
        ),
        (
            "explain, JSON",
            post_json("/explain", &json!({ "url": "http://example.com/cat.jpg" })),
        ),
        ("readiness", get("/health/ready")),
    ] {
        let a = send(&app, req).await;
        let p = problem(case, &a, 503, "draining");
        assert_eq!(a.header("retry-after"), "1", "{case}");
        assert!(detail(&p).contains("shutting down"), "{case}: {p}");
    }
    assert_eq!(
        script.calls(),
        0,
        "nothing reaches the model while draining"
    );
    // Still live, and the operational routes still answer.
    assert_eq!(send(&app, get("/health/live")).await.status, 200);
    assert_eq!(send(&app, get("/info")).await.status, 200);
    let text = metrics_text(&app).await;
    assert_eq!(
        metric(&text, "gradcam_rejections_total{reason=\"draining\"}"),
        4.0,
        "{text}"
    );
}

/// The next frame of a body, as `HttpBody::poll_frame` returns it.
type NextFrame = <http_body_util::combinators::Frame<'static, Body> as std::future::Future>::Output;

/// A body that sends its start and then nothing more, as a client that stalls.
struct Stalling(Body);

impl axum::body::HttpBody for Stalling {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<NextFrame> {
        match std::pin::Pin::new(&mut self.0).poll_frame(cx) {
            std::task::Poll::Ready(None) => std::task::Poll::Pending,
            other => other,
        }
    }
}

fn stalling(start: Vec<u8>) -> Body {
    Body::new(Stalling(Body::from(start)))
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_408() {
    let script = Script::default();
    let (app, _) = scripted_app(&["--body-read-timeout-ms", "100"], &script);
    let photo = fixture_bytes("chelsea.png");
    let form = Form::new()
        .file("image", "chelsea.png", "image/png", &photo)
        .into_bytes();
    let multipart = Form::content_type();
    let cases = [
        ("raw", "image/png", stalling(photo[..1000].to_vec())),
        ("multipart", &multipart, stalling(form[..1000].to_vec())),
        (
            "JSON",
            "application/json",
            stalling(b"{\"url\": \"http://exa".to_vec()),
        ),
        ("nothing at all", "image/jpeg", stalling(Vec::new())),
    ];
    for (case, ct, body) in cases {
        let started = std::time::Instant::now();
        let p = problem(
            case,
            &send(&app, post("/explain", ct, body)).await,
            408,
            "body_timeout",
        );
        assert!(detail(&p).contains("100 ms"), "{case}: {p}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{case}: cut off at the body-read timeout"
        );
    }
    assert_eq!(script.calls(), 0);
    let text = metrics_text(&app).await;
    assert_eq!(
        metric(&text, "gradcam_rejections_total{reason=\"body_timeout\"}"),
        4.0,
        "{text}"
    );
}
