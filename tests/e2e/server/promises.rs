//! What the README and openapi.yaml promise, point by point, against the real binary over real
//! HTTP: exact option values, 405 and 404 as problems, strict query strings, options checked
//! before any fetch, the drain delay, JSON member types, one image per form, content
//! negotiation, and one true reason per refusal in the metrics.

use super::problem;
use crate::common::fixture;
use crate::common::origin::Origin;
use crate::common::server::{Server, client, post_fixture};
use reqwest::blocking::multipart;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn post_photo(server: &Server, path_and_query: &str) -> reqwest::blocking::Response {
    post_fixture(server.url(path_and_query), "chelsea.png")
        .send()
        .unwrap()
}

/// Point 1: `+` in a query string is a space; the value must be exactly a name.
#[test]
fn option_values_are_exact_and_an_unencoded_plus_is_explained() {
    let server = Server::start(&[]);
    let body = problem(
        "gradcam++ unencoded",
        post_photo(&server, "/explain?method=gradcam++&overlay=false"),
        422,
        "invalid_option",
    );
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("gradcam%2B%2B") && detail.contains("gradcampp"),
        "{detail}"
    );
    for (query, method) in [
        ("method=gradcam%2B%2B", "gradcam++"),
        ("method=gradcampp", "gradcam++"),
        ("method=HiResCAM", "hirescam"),
    ] {
        let res = post_photo(&server, &format!("/explain?overlay=false&{query}"));
        assert_eq!(res.status(), 200, "{query}");
        let body: Value = res.json().unwrap();
        assert_eq!(body["explanations"][0]["method"], method, "{query}");
    }
    for query in ["method=%20gradcam", "top_k=%202", "layer=layer4%20"] {
        problem(
            query,
            post_photo(&server, &format!("/explain?{query}")),
            422,
            "invalid_option",
        );
    }
}

/// Points 2 and 3: every non-2xx answer is a problem, 405 with `Allow`; a query string that
/// cannot be decoded is a 400.
#[test]
fn wrong_methods_unknown_paths_and_broken_queries_are_problems() {
    let server = Server::start(&[]);
    let cases = [
        (
            reqwest::Method::GET,
            "/explain",
            405,
            "method_not_allowed",
            Some("POST"),
        ),
        (
            reqwest::Method::DELETE,
            "/info",
            405,
            "method_not_allowed",
            Some("GET"),
        ),
        (
            reqwest::Method::POST,
            "/health/ready",
            405,
            "method_not_allowed",
            Some("GET"),
        ),
        (reqwest::Method::GET, "/nowhere", 404, "not_found", None),
    ];
    for (method, path, status, kind, allow) in cases {
        let name = format!("{method} {path}");
        let res = client()
            .request(method.clone(), server.url(path))
            .send()
            .unwrap();
        let allowed = res
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_string());
        problem(&name, res, status, kind);
        match allow {
            Some(m) => assert!(allowed.is_some_and(|a| a.contains(m)), "{name}"),
            None => assert!(allowed.is_none(), "{name}"),
        }
    }
    for query in ["top_k=%ZZ", "%", "top_k=%FF", "%C3%28=1"] {
        problem(
            query,
            post_photo(&server, &format!("/explain?{query}")),
            400,
            "malformed_request",
        );
    }
    // 404 and 405 are counted like every other answer.
    let unmatched = r#"gradcam_requests_total{route="unmatched",status="404"}"#;
    assert_eq!(server.metric(unmatched), 1.0);
    assert_eq!(
        server.metric(r#"gradcam_rejections_total{reason="method_not_allowed"}"#),
        3.0
    );
}

/// Point 4: options are checked before the URL is fetched.
#[test]
fn json_options_are_checked_before_any_fetch() {
    let origin = Origin::ok(
        "127.0.0.1",
        std::fs::read(fixture("chelsea.png")).unwrap(),
        Some("image/png"),
    );
    let port = origin.addr.port().to_string();
    let server = Server::start(&["--fetch-allow", "127.0.0.1/32", "--fetch-ports", &port]);
    let fetchable = format!("http://{}/chelsea.png", origin.addr);
    let cases = [
        ("fetchable URL", json!({ "url": fetchable, "top_k": 11 })),
        (
            "forbidden URL",
            json!({ "url": "http://169.254.169.254/", "method": "scorecam" }),
        ),
        (
            "string for an integer",
            json!({ "url": fetchable, "top_k": "2" }),
        ),
        (
            "string for a boolean",
            json!({ "url": fetchable, "overlay": "false" }),
        ),
    ];
    for (name, body) in cases {
        let res = client()
            .post(server.url("/explain"))
            .json(&body)
            .send()
            .unwrap();
        let p = problem(name, res, 422, "invalid_option");
        let detail = p["detail"].as_str().unwrap();
        if name.starts_with("string") {
            // Point 6: the member and both types are named.
            assert!(
                detail.contains("must be") && detail.contains("a string"),
                "{name}: {detail}"
            );
        }
    }
    assert_eq!(
        origin.hits(),
        0,
        "no option error may cost an upstream request"
    );
    let res = client()
        .post(server.url("/explain"))
        .json(&json!({ "url": fetchable, "top_k": 2, "overlay": false }))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(origin.hits(), 1);
}

/// Point 5: after SIGTERM, readiness is 503 at once while work is still served for the drain
/// delay; then the listener closes and the process exits 0.
#[test]
fn the_drain_delay_keeps_serving_while_readiness_says_503() {
    // A long delay, so that the checks below fall inside it even on a loaded machine.
    let mut server = Server::start(&["--drain-delay-ms", "10000"]);
    assert_eq!(server.ready(), 200);
    server.signal_term();
    let signalled = Instant::now();
    let deadline = signalled + Duration::from_secs(8);
    while server.ready() != 503 {
        assert!(Instant::now() < deadline, "readiness never turned 503");
        std::thread::sleep(Duration::from_millis(20));
    }
    let res = client().get(server.url("/health/ready")).send().unwrap();
    problem("readiness while draining", res, 503, "draining");
    let res = post_photo(&server, "/explain?overlay=false");
    assert_eq!(res.status(), 200, "a request inside the delay is served");
    assert_eq!(
        res.headers().get("connection").map(|v| v.to_str().unwrap()),
        Some("close"),
        "answers inside the delay tell clients to leave the connection"
    );
    assert!(
        signalled.elapsed() < Duration::from_millis(9000),
        "the checks above must fall inside the 10 s delay (took {:?})",
        signalled.elapsed()
    );
    let status = server.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(10),
        "the server stopped before its drain delay"
    );
    assert!(std::net::TcpStream::connect(server.addr).is_err());
}

/// After SIGTERM, a kept-alive connection that stays idle through the whole drain delay is
/// closed by the server at the delay's end (so that a client's pool sees the close instead of
/// sending its next request into a closed listener), and not before it.
#[test]
fn a_connection_idle_through_the_drain_delay_is_closed_at_its_end() {
    use std::io::{Read, Write};
    let mut server = Server::start(&["--drain-delay-ms", "3000"]);
    let mut conn = std::net::TcpStream::connect(server.addr).unwrap();
    conn.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Read the whole answer (its head, then as many body bytes as it announces).
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let complete = |got: &[u8]| {
        let text = String::from_utf8_lossy(got);
        let Some(end) = text.find("\r\n\r\n") else {
            return false;
        };
        let length = text[..end]
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        got.len() >= end + 4 + length
    };
    while !complete(&got) {
        let n = conn.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        !head.contains("connection: close"),
        "kept alive before SIGTERM: {head}"
    );

    server.signal_term();
    let signalled = Instant::now();
    // Idle from here on: the next thing the connection sees is its end.
    let end = match conn.read(&mut buf) {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!(
            "unexpected bytes {:?}",
            String::from_utf8_lossy(&buf[..n])
        )),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        Err(e) => Err(format!("still open after 30 s: {e}")),
    };
    let closed_after = signalled.elapsed();
    assert_eq!(end, Ok(()));
    assert!(
        closed_after >= Duration::from_millis(2900),
        "closed {closed_after:?} after SIGTERM, inside the 3 s drain delay"
    );
    assert!(
        closed_after < Duration::from_secs(20),
        "closed only {closed_after:?} after SIGTERM"
    );
    let status = server.wait_exit();
    assert!(status.success(), "exit status {status:?}");
}

/// Point 6 (query side): booleans follow the same case rule as names.
#[test]
fn booleans_ignore_case_like_names() {
    let server = Server::start(&[]);
    let res = post_photo(&server, "/explain?overlay=FALSE&method=GRADCAM");
    assert_eq!(res.status(), 200);
    let body: Value = res.json().unwrap();
    assert!(body["explanations"][0].get("overlay_png").is_none());
    problem(
        "overlay=yes",
        post_photo(&server, "/explain?overlay=yes"),
        422,
        "invalid_option",
    );
}

/// Point 7: a form with two images is refused, not silently reduced to the last one.
#[test]
fn a_form_with_two_images_is_refused() {
    let server = Server::start(&[]);
    let part = |f: &str| {
        multipart::Part::bytes(std::fs::read(fixture(f)).unwrap()).file_name(f.to_string())
    };
    let form = multipart::Form::new()
        .part("image", part("chelsea.png"))
        .part("image", part("coffee.jpg"));
    let res = client()
        .post(server.url("/explain"))
        .multipart(form)
        .send()
        .unwrap();
    problem("two images", res, 422, "multiple_images");
}

/// Point 8: ordinary content negotiation between JSON and the PNG overlay.
#[test]
fn accept_is_negotiated_with_quality_values_and_wildcards() {
    let server = Server::start(&[]);
    let cases = [
        ("image/*", Some("image/png")),
        ("image/png", Some("image/png")),
        ("application/json;q=0.5, image/png", Some("image/png")),
        ("application/json, image/png", Some("application/json")),
        ("*/*", Some("application/json")),
        ("text/html", None),
    ];
    for (accept, want) in cases {
        let res = post_fixture(server.url("/explain?overlay=false"), "chelsea.png")
            .header("accept", accept)
            .send()
            .unwrap();
        match want {
            Some(t) => {
                assert_eq!(res.status(), 200, "{accept}");
                assert_eq!(res.headers()["content-type"], t, "{accept}");
            }
            None => {
                problem(accept, res, 406, "not_acceptable");
            }
        }
    }
    let res = post_fixture(server.url("/predict"), "chelsea.png")
        .header("accept", "image/png")
        .send()
        .unwrap();
    problem("predict as a PNG", res, 406, "not_acceptable");
}

/// Point 9: a queued job dropped at its deadline is a timeout, counted once; no client left.
#[test]
fn a_refusal_is_counted_under_one_reason() {
    let server = Server::start(&[
        "--request-timeout-ms",
        "600",
        "--fetch-timeout-ms",
        "500",
        "--max-batch-size",
        "1",
    ]);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..10)
            .map(|_| {
                s.spawn(|| {
                    // Each job holds the model thread for 150 ms besides its own work, so
                    // that ten of them one at a time overrun 600 ms on any machine.
                    post_fixture(server.url("/explain?overlay=false"), "chelsea.png")
                        .header("x-gradcam-fault", "sleep=150")
                        .send()
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let timeouts = statuses.iter().filter(|s| **s == 504).count() as f64;
    assert!(
        timeouts > 0.0,
        "ten images at one per batch take over 600 ms: {statuses:?}"
    );
    // The model thread reaches the expired jobs later; let it drain the queue.
    server.wait_metric("gradcam_queue_depth", 60, |n| n == 0.0);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        server.metric(r#"gradcam_rejections_total{reason="timeout"}"#),
        timeouts
    );
    assert_eq!(
        server.metric(r#"gradcam_rejections_total{reason="client_gone"}"#),
        0.0,
        "a request that got its 504 did not leave"
    );
}
