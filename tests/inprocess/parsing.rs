//! The three input forms on one route: a raw image body, a multipart upload, and (in
//! url_form.rs) JSON naming a URL. Whatever the form, the model must see the photograph and the
//! options the client sent.

use crate::support::{Form, app, assert_explained, fixture_bytes, post, send, upload};
use axum::body::Body;
use axum::http::Request;
use gradcam_serve::backend::{ExplainOptions, Layer};
use gradcam_serve::cam::Method;

struct Case {
    name: &'static str,
    photo: &'static str,
    request: Request<Body>,
    /// The options the model must have been given.
    options: ExplainOptions,
    format: &'static str,
}

fn options(method: Method, layer: Layer, class: Option<i64>, top_k: usize) -> ExplainOptions {
    ExplainOptions {
        class,
        top_k,
        layer,
        method,
        faithfulness: false,
    }
}

#[tokio::test]
async fn every_input_form_reaches_the_model_with_its_options() {
    let (app, _) = app(&[]);
    let photo = |name| fixture_bytes(name);
    let cases = vec![
        Case {
            name: "raw image/png",
            photo: "chelsea.png",
            request: upload("/explain", "image/png", photo("chelsea.png")),
            options: ExplainOptions::default(),
            format: "png",
        },
        Case {
            name: "raw image/jpeg with options in the query",
            photo: "coffee.jpg",
            request: upload(
                "/explain?method=hirescam&layer=layer3&top_k=2",
                "image/jpeg",
                photo("coffee.jpg"),
            ),
            options: options(Method::HiResCam, Layer::Layer3, None, 2),
            format: "jpeg",
        },
        Case {
            name: "raw application/octet-stream",
            photo: "rocket.jpg",
            request: post(
                "/explain?class=281",
                "application/octet-stream",
                photo("rocket.jpg"),
            ),
            options: options(Method::GradCam, Layer::Layer4, Some(281), 1),
            format: "jpeg",
        },
        Case {
            name: "raw with parameters and capitals in the content type",
            photo: "camera.png",
            request: post(
                "/explain?method=gradcam%2B%2B",
                "Image/PNG; name=camera.png",
                photo("camera.png"),
            ),
            options: options(Method::GradCamPlusPlus, Layer::Layer4, None, 1),
            format: "png",
        },
        Case {
            name: "raw PNG declared as JPEG: the bytes decide",
            photo: "chelsea.png",
            request: post("/explain?layer=layer1", "image/jpeg", photo("chelsea.png")),
            options: options(Method::GradCam, Layer::Layer1, None, 1),
            format: "png",
        },
        Case {
            name: "multipart with options as fields",
            photo: "coffee.jpg",
            request: Form::new()
                .file("image", "coffee.jpg", "image/jpeg", &photo("coffee.jpg"))
                .text("method", "layercam")
                .text("layer", "layer2")
                .text("top_k", "3")
                .text("overlay", "false")
                .request("/explain"),
            options: options(Method::LayerCam, Layer::Layer2, None, 3),
            format: "jpeg",
        },
        Case {
            name: "multipart with fields before the file and a misleading part type",
            photo: "rocket.jpg",
            request: Form::new()
                .text("class", "7")
                .text("method", "xgradcam")
                .file(
                    "image",
                    "rocket.png",
                    "application/octet-stream",
                    &photo("rocket.jpg"),
                )
                .request("/explain"),
            options: options(Method::XGradCam, Layer::Layer4, Some(7), 1),
            format: "jpeg",
        },
        Case {
            name: "multipart fields override the query",
            photo: "camera.png",
            request: Form::new()
                .file("image", "camera.png", "image/png", &photo("camera.png"))
                .text("method", "layercam")
                .request("/explain?method=hirescam&top_k=2&overlay=false"),
            options: options(Method::LayerCam, Layer::Layer4, None, 2),
            format: "png",
        },
        Case {
            name: "repeated query option: the last wins",
            photo: "chelsea.png",
            request: upload(
                "/explain?top_k=3&top_k=2&method=xgradcam&method=hirescam",
                "image/png",
                photo("chelsea.png"),
            ),
            options: options(Method::HiResCam, Layer::Layer4, None, 2),
            format: "png",
        },
    ];
    for c in cases {
        let a = send(&app, c.request).await;
        assert_eq!(
            a.status,
            200,
            "{}: {}",
            c.name,
            String::from_utf8_lossy(&a.body)
        );
        assert_eq!(a.header("content-type"), "application/json", "{}", c.name);
        let body = a.json();
        assert_eq!(body["model"], "toy", "{}", c.name);
        assert_eq!(body["image"]["format"], c.format, "{}", c.name);
        let (decoded, _) = crate::support::prepared(&fixture_bytes(c.photo));
        assert_eq!(
            (
                body["image"]["width"].as_u64(),
                body["image"]["height"].as_u64()
            ),
            (
                Some(u64::from(decoded.image.width())),
                Some(u64::from(decoded.image.height()))
            ),
            "{}",
            c.name
        );
        assert_explained(c.name, &body, &fixture_bytes(c.photo), c.options);
    }
}

#[tokio::test]
async fn predict_takes_every_form_too() {
    let (app, _) = app(&[]);
    let bytes = fixture_bytes("coffee.jpg");
    let cases = [
        (
            "raw",
            upload("/predict?top_k=2", "image/jpeg", bytes.clone()),
        ),
        (
            "multipart",
            Form::new()
                .file("image", "coffee.jpg", "image/jpeg", &bytes)
                .text("top_k", "2")
                .request("/predict"),
        ),
    ];
    let want = crate::support::as_json(&gradcam_serve::backend::top_predictions(
        &crate::toy::logits_one(&crate::support::prepared(&bytes).1),
        2,
        &Default::default(),
    ));
    for (name, req) in cases {
        let a = send(&app, req).await;
        assert_eq!(a.status, 200, "{name}");
        assert_eq!(a.json()["predictions"], want, "{name}");
    }
}
