//! Option checks: every bad or unknown option is refused with 422 `invalid_option` and a
//! message that says what is allowed, in the query, as a multipart field and as a JSON member,
//! before anything reaches the model (or, for JSON, before anything is fetched).

use crate::support::{Form, detail, fixture_bytes, post_json, problem, scripted_app, send, upload};
use crate::toy::Script;
use serde_json::json;

const EXPLAIN_ALLOWED: &str =
    "allowed: class, top_k, layer, method, colormap, alpha, overlay, overlay_max_side";

/// (route, option, value, what the refusal must say)
const BAD: &[(&str, &str, &str, &str)] = &[
    (
        "/explain",
        "class",
        "1000",
        "class \"1000\" is not valid; allowed: 0..=999",
    ),
    ("/explain", "class", "-1", "allowed: 0..=999"),
    ("/explain", "class", "cat", "allowed: 0..=999"),
    ("/explain", "class", "", "allowed: 0..=999"),
    (
        "/explain",
        "top_k",
        "0",
        "top_k \"0\" is not valid; allowed: 1..=10",
    ),
    ("/explain", "top_k", "11", "allowed: 1..=10"),
    ("/explain", "top_k", "1.5", "allowed: 1..=10"),
    (
        "/explain",
        "layer",
        "layer5",
        "unknown layer \"layer5\"; allowed: layer1, layer2, layer3, layer4",
    ),
    (
        "/explain",
        "method",
        "scorecam",
        "unknown method \"scorecam\"; allowed: gradcam, hirescam, gradcam++, xgradcam, layercam",
    ),
    (
        "/explain",
        "colormap",
        "rainbow",
        "unknown colormap \"rainbow\"; allowed: jet, turbo, viridis, inferno, gray",
    ),
    (
        "/explain",
        "alpha",
        "1.5",
        "alpha \"1.5\" is not valid; allowed: 0..=1",
    ),
    ("/explain", "alpha", "-0.1", "allowed: 0..=1"),
    ("/explain", "alpha", "NaN", "allowed: 0..=1"),
    (
        "/explain",
        "overlay",
        "maybe",
        "overlay \"maybe\" is not valid; allowed: true or false",
    ),
    ("/explain", "overlay_max_side", "8", "allowed: 16..=1024"),
    ("/explain", "overlay_max_side", "4096", "allowed: 16..=1024"),
    ("/explain", "colour", "jet", "unknown option \"colour\""),
    ("/explain", "colour", "jet", EXPLAIN_ALLOWED),
    (
        "/predict",
        "top_k",
        "0",
        "top_k \"0\" is not valid; allowed: 1..=1000",
    ),
    ("/predict", "top_k", "1001", "allowed: 1..=1000"),
    (
        "/predict",
        "method",
        "gradcam",
        "unknown option \"method\"; allowed: top_k",
    ),
];

/// Percent-encodes a query value (enough for the values above).
fn encoded(v: &str) -> String {
    v.replace('+', "%2B").replace(' ', "%20")
}

/// The value as a JSON member: a number or boolean where the text is one, else a string.
fn json_value(name: &str, value: &str) -> serde_json::Value {
    match name {
        "class" | "top_k" | "alpha" | "overlay_max_side" | "overlay" => {
            serde_json::from_str(value).unwrap_or_else(|_| json!(value))
        }
        _ => json!(value),
    }
}

/// Whether a JSON member has the type the schema gives the option.
fn json_typed(name: &str, v: &serde_json::Value) -> bool {
    match name {
        "class" | "top_k" | "overlay_max_side" => v.is_i64(),
        "alpha" => v.is_number(),
        "overlay" => v.is_boolean(),
        _ => v.is_string(),
    }
}

#[tokio::test]
async fn every_bad_option_is_refused_with_what_is_allowed_in_every_form() {
    let script = Script::default();
    let (app, _) = scripted_app(&[], &script);
    let photo = fixture_bytes("chelsea.png");
    for (route, name, value, needle) in BAD {
        let forms = [
            (
                "query",
                upload(
                    &format!("{route}?{name}={}", encoded(value)),
                    "image/png",
                    photo.clone(),
                ),
            ),
            (
                "multipart",
                Form::new()
                    .file("image", "chelsea.png", "image/png", &photo)
                    .text(name, value)
                    .request(route),
            ),
            // A URL the fetcher would refuse (403): options are checked before it is looked at.
            (
                "json",
                post_json(route, &{
                    let mut doc = json!({ "url": "http://127.0.0.1/cat.jpg" });
                    doc[*name] = json_value(name, value);
                    doc
                }),
            ),
        ];
        for (form, req) in forms {
            let case = format!("{route} {name}={value:?} in the {form}");
            let p = problem(&case, &send(&app, req).await, 422, "invalid_option");
            let want = if form != "json" {
                *needle
            } else if !json_typed(name, &json_value(name, value)) {
                // JSON members must have their schema's type first of all.
                "must be"
            } else {
                // JSON numbers are quoted as numbers, not as text.
                needle.rsplit("; ").next().unwrap_or(needle)
            };
            assert!(detail(&p).contains(want), "{case}: {p}");
        }
    }
    assert_eq!(script.calls(), 0, "no refused request reaches the model");
}

#[tokio::test]
async fn the_server_overlay_limit_is_what_refusals_quote() {
    let script = Script::default();
    let (app, _) = scripted_app(&["--max-overlay-side", "512"], &script);
    let a = send(
        &app,
        upload(
            "/explain?overlay_max_side=1024",
            "image/png",
            fixture_bytes("chelsea.png"),
        ),
    )
    .await;
    let p = problem(
        "overlay_max_side above the server's",
        &a,
        422,
        "invalid_option",
    );
    assert!(detail(&p).contains("allowed: 16..=512"), "{p}");
    assert_eq!(script.calls(), 0);
}

#[tokio::test]
async fn every_occurrence_of_an_option_is_checked() {
    let script = Script::default();
    let (app, _) = scripted_app(&[], &script);
    let cases = [
        (
            "bad then good in the query",
            "/explain?top_k=11&top_k=1",
            None,
        ),
        (
            "good then bad in the query",
            "/explain?top_k=1&top_k=11",
            None,
        ),
        (
            "bad in the query, good in the form",
            "/explain?top_k=11",
            Some("1"),
        ),
    ];
    for (case, path, field) in cases {
        let req = match field {
            None => upload(path, "image/png", fixture_bytes("chelsea.png")),
            Some(v) => Form::new()
                .file("image", "c.png", "image/png", &fixture_bytes("chelsea.png"))
                .text("top_k", v)
                .request(path),
        };
        let p = problem(case, &send(&app, req).await, 422, "invalid_option");
        assert!(detail(&p).contains("1..=10"), "{case}: {p}");
    }
    assert_eq!(script.calls(), 0);
}

#[tokio::test]
async fn json_members_must_have_their_schema_type() {
    let script = Script::default();
    let (app, _) = scripted_app(&[], &script);
    for (case, doc) in [
        (
            "class must be an integer, not an array",
            json!({ "url": "http://127.0.0.1/cat.jpg", "class": [1] }),
        ),
        (
            "top_k must be an integer, not an object",
            json!({ "url": "http://127.0.0.1/cat.jpg", "top_k": { "n": 1 } }),
        ),
        (
            "method must be a string, not null",
            json!({ "url": "http://127.0.0.1/cat.jpg", "method": null }),
        ),
        (
            "top_k must be an integer, not a string",
            json!({ "url": "http://127.0.0.1/cat.jpg", "top_k": "2" }),
        ),
        (
            "overlay must be a boolean, not a string",
            json!({ "url": "http://127.0.0.1/cat.jpg", "overlay": "false" }),
        ),
    ] {
        let p = problem(
            case,
            &send(&app, post_json("/explain", &doc)).await,
            422,
            "invalid_option",
        );
        assert!(detail(&p).contains(case), "{case}: {p}");
    }
    assert_eq!(script.calls(), 0);
}
