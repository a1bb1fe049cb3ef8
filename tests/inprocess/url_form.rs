//! The JSON form (`{"url": ...}`) with a stub name resolver and a tiny origin on loopback: the
//! fetched photo is explained like an uploaded one, and every refusal of the fetcher has its
//! problem type. Refused sources are never connected to.

use crate::common::origin::Origin;
use crate::support::{
    assert_explained, detail, fetching_app, fixture_bytes, post_json, problem, send,
};
use gradcam_serve::backend::ExplainOptions;
use gradcam_serve::cam::Method;
use gradcam_serve::fetch::Lookup;
use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;

/// A loopback HTTP origin: `/rocket.jpg` is the photo, anything else is 404. Counts
/// connections.
fn photo_origin() -> Origin {
    let photo = fixture_bytes("rocket.jpg");
    Origin::answer("127.0.0.1", move |path| {
        let (status, body): (&str, &[u8]) = if path == "/rocket.jpg" {
            ("200 OK", &photo)
        } else {
            ("404 Not Found", b"not here")
        };
        let mut answer = format!(
            "HTTP/1.1 {status}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        answer.extend_from_slice(body);
        answer
    })
}

/// `images.test` is loopback, `internal.test` a private address, `mixed.test` a public and a
/// private one; other names do not resolve.
fn stub_resolver() -> Lookup {
    Arc::new(|host: String| {
        let answer: std::io::Result<Vec<IpAddr>> = match host.as_str() {
            "images.test" => Ok(vec!["127.0.0.1".parse().unwrap()]),
            "internal.test" => Ok(vec!["10.0.0.7".parse().unwrap()]),
            "mixed.test" => Ok(vec![
                "93.184.216.34".parse().unwrap(),
                "192.168.1.1".parse().unwrap(),
            ]),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such name",
            )),
        };
        Box::pin(async move { answer })
    })
}

/// A loopback port with nothing listening on it.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_fetched_through_the_stub_resolver_is_explained() {
    let origin = photo_origin();
    let port = origin.addr.port().to_string();
    let (app, _) = fetching_app(
        &["--fetch-allow", "127.0.0.1/32", "--fetch-ports", &port],
        stub_resolver(),
    );
    let url = format!("http://images.test:{port}/rocket.jpg");
    let doc = json!({ "url": url, "method": "xgradcam", "class": 1, "top_k": 2, "overlay": false });
    let a = send(&app, post_json("/explain", &doc)).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let body = a.json();
    assert!(
        body["timings"]["fetch_ms"].as_f64().is_some(),
        "fetch timed"
    );
    assert!(
        body["explanations"][0].get("overlay_png").is_none(),
        "overlay=false as a JSON boolean"
    );
    assert_eq!(body["image"]["format"], "jpeg");
    let o = ExplainOptions {
        method: Method::XGradCam,
        class: Some(1),
        top_k: 2,
        ..Default::default()
    };
    assert_explained("URL form", &body, &fixture_bytes("rocket.jpg"), o);
    // Predict takes the URL form too, with options from the query.
    let a = send(&app, post_json("/predict?top_k=2", &json!({ "url": url }))).await;
    assert_eq!(a.status, 200, "predict");
    assert_eq!(a.json()["predictions"].as_array().map(Vec::len), Some(2));
    assert_eq!(origin.hits(), 2, "one fetch per request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fetch_refusal_has_its_problem_type() {
    let origin = photo_origin();
    let port = origin.addr.port();
    let closed = closed_port();
    let ports = format!("{port},{closed}");
    let (app, _) = fetching_app(
        &["--fetch-allow", "127.0.0.1/32", "--fetch-ports", &ports],
        stub_resolver(),
    );
    // (case, url, status, type, what the detail says)
    let cases: Vec<(&str, String, u16, &str, &str)> = vec![
        (
            "not a URL",
            "not a url".into(),
            422,
            "invalid_url",
            "not valid",
        ),
        (
            "a relative URL",
            "/cat.jpg".into(),
            422,
            "invalid_url",
            "not valid",
        ),
        (
            "a file URL",
            "file:///etc/passwd".into(),
            422,
            "invalid_url",
            "scheme \"file\"",
        ),
        (
            "an FTP URL",
            "ftp://images.test/a.jpg".into(),
            422,
            "invalid_url",
            "scheme \"ftp\"",
        ),
        (
            "credentials",
            format!("http://user:pw@images.test:{port}/rocket.jpg"),
            422,
            "invalid_url",
            "credentials",
        ),
        (
            "a loopback address not allowed",
            format!("http://127.0.0.2:{port}/rocket.jpg"),
            403,
            "forbidden_source",
            "loopback",
        ),
        (
            "loopback spelled as a number",
            format!("http://2130706434:{port}/rocket.jpg"),
            403,
            "forbidden_source",
            "loopback",
        ),
        (
            "cloud metadata",
            format!("http://169.254.169.254:{port}/latest/meta-data/"),
            403,
            "forbidden_source",
            "link-local",
        ),
        (
            "a port not allowed",
            "http://93.184.216.34:8080/cat.jpg".into(),
            403,
            "forbidden_source",
            "port 8080",
        ),
        (
            "a name that resolves to a private address",
            format!("http://internal.test:{port}/rocket.jpg"),
            403,
            "forbidden_source",
            "internal.test resolves to a forbidden address",
        ),
        (
            "a name with a public and a private address",
            format!("http://mixed.test:{port}/rocket.jpg"),
            403,
            "forbidden_source",
            "mixed.test resolves to a forbidden address",
        ),
        (
            "a name that does not resolve",
            format!("http://nowhere.test:{port}/rocket.jpg"),
            422,
            "source_unreachable",
            "could not be reached",
        ),
        (
            "nothing listening",
            format!("http://images.test:{closed}/rocket.jpg"),
            422,
            "source_unreachable",
            "could not be reached",
        ),
        (
            "the source answers 404",
            format!("http://images.test:{port}/missing.jpg"),
            422,
            "upstream_error",
            "HTTP 404",
        ),
    ];
    for (case, url, status, kind, needle) in cases {
        let p = problem(
            case,
            &send(&app, post_json("/explain", &json!({ "url": url }))).await,
            status,
            kind,
        );
        assert!(detail(&p).contains(needle), "{case}: {p}");
        assert!(
            !detail(&p).contains("not here"),
            "{case}: the source's answer is not repeated"
        );
    }
    assert_eq!(origin.hits(), 1, "only the 404 reached the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_above_the_fetch_limit_is_source_too_large() {
    let origin = photo_origin();
    let port = origin.addr.port().to_string();
    let (app, _) = fetching_app(
        &[
            "--fetch-allow",
            "127.0.0.1/32",
            "--fetch-ports",
            &port,
            "--fetch-max-bytes",
            "4096",
        ],
        stub_resolver(),
    );
    let url = format!("http://images.test:{port}/rocket.jpg");
    let p = problem(
        "rocket.jpg above 4096 bytes",
        &send(&app, post_json("/explain", &json!({ "url": url }))).await,
        422,
        "source_too_large",
    );
    assert!(detail(&p).contains("4096 bytes"), "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_are_checked_before_anything_is_fetched() {
    let origin = photo_origin();
    let port = origin.addr.port().to_string();
    let (app, _) = fetching_app(
        &["--fetch-allow", "127.0.0.1/32", "--fetch-ports", &port],
        stub_resolver(),
    );
    let url = format!("http://images.test:{port}/rocket.jpg");
    for (case, path, doc) in [
        (
            "a bad member",
            "/explain",
            json!({ "url": url, "top_k": 0 }),
        ),
        (
            "an unknown member",
            "/explain",
            json!({ "url": url, "colour": "red" }),
        ),
        (
            "a bad query option",
            "/explain?method=scorecam",
            json!({ "url": url }),
        ),
        (
            "a predict option on explain",
            "/predict",
            json!({ "url": url, "layer": "layer3" }),
        ),
    ] {
        problem(
            case,
            &send(&app, post_json(path, &doc)).await,
            422,
            "invalid_option",
        );
    }
    assert_eq!(origin.hits(), 0, "a refused request fetches nothing");
}

/// A source that accepts the connection and never answers is cut off at the fetch timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_never_answers_is_source_timeout() {
    // Holds every connection open without a byte of answer (far longer than the timeout).
    let origin = Origin::stream("127.0.0.1", |_, _conn| {
        std::thread::sleep(std::time::Duration::from_secs(30))
    });
    let port = origin.addr.port();
    let ports = port.to_string();
    let (app, _) = fetching_app(
        &[
            "--fetch-allow",
            "127.0.0.1/32",
            "--fetch-ports",
            &ports,
            "--fetch-timeout-ms",
            "300",
        ],
        stub_resolver(),
    );
    let url = format!("http://images.test:{port}/rocket.jpg");
    let a = send(&app, post_json("/explain", &json!({ "url": url }))).await;
    let p = problem("a silent source", &a, 422, "source_timeout");
    assert!(detail(&p).contains("did not answer in time"), "{p}");
    assert_eq!(origin.hits(), 1, "the fetch reached the silent source");
}
