//! Bad input and refused sources: each gets a problem (RFC 9457) with the right status and type
//! and a detail that says what is wrong, and the server stays healthy.

use super::{default_server, problem};
use crate::common::origin::Origin;
use crate::common::server::{Server, client, post_fixture};
use reqwest::blocking::{RequestBuilder, multipart};

/// A request that must be refused, and how.
struct Refused {
    case: &'static str,
    request: RequestBuilder,
    status: u16,
    kind: &'static str,
    /// Words the problem's detail must contain.
    mentions: Option<&'static str>,
}

#[test]
fn bad_input_gets_a_problem_that_says_what_is_wrong() {
    let server = default_server();
    let c = client();
    let explain = || c.post(server.url("/explain"));
    let cases = [
        Refused {
            case: "text body",
            request: explain().header("content-type", "text/plain").body("hello"),
            status: 415,
            kind: "unsupported_media_type",
            mentions: Some("multipart/form-data"),
        },
        Refused {
            case: "no body and no type",
            request: explain(),
            status: 415,
            kind: "unsupported_media_type",
            mentions: None,
        },
        Refused {
            case: "100 zero bytes as PNG",
            request: explain()
                .header("content-type", "image/png")
                .body(vec![0u8; 100]),
            status: 422,
            kind: "invalid_image",
            mentions: None,
        },
        Refused {
            case: "empty PNG",
            request: explain()
                .header("content-type", "image/png")
                .body(Vec::new()),
            status: 422,
            kind: "invalid_image",
            mentions: None,
        },
        Refused {
            case: "unknown method",
            request: post_fixture(server.url("/explain?method=scorecam"), "chelsea.png"),
            status: 422,
            kind: "invalid_option",
            mentions: Some("layercam"),
        },
        Refused {
            case: "class out of range",
            request: post_fixture(server.url("/explain?class=1000"), "chelsea.png"),
            status: 422,
            kind: "invalid_option",
            mentions: None,
        },
        Refused {
            case: "unknown option",
            request: post_fixture(server.url("/explain?color=red"), "chelsea.png"),
            status: 422,
            kind: "invalid_option",
            mentions: None,
        },
        Refused {
            case: "explanation option on /predict",
            request: post_fixture(server.url("/predict?method=gradcam"), "chelsea.png"),
            status: 422,
            kind: "invalid_option",
            mentions: None,
        },
        Refused {
            case: "malformed JSON",
            request: explain()
                .header("content-type", "application/json")
                .body("{not json"),
            status: 400,
            kind: "malformed_request",
            mentions: None,
        },
        Refused {
            case: "JSON without a url",
            request: explain().json(&serde_json::json!({ "method": "gradcam" })),
            status: 400,
            kind: "malformed_request",
            mentions: None,
        },
        Refused {
            case: "file URL",
            request: explain().json(&serde_json::json!({ "url": "file:///etc/passwd" })),
            status: 422,
            kind: "invalid_url",
            mentions: None,
        },
        Refused {
            case: "multipart without an image",
            request: explain().multipart(multipart::Form::new().text("method", "gradcam")),
            status: 400,
            kind: "malformed_request",
            mentions: None,
        },
        Refused {
            case: "unknown path",
            request: c.get(server.url("/nope")),
            status: 404,
            kind: "not_found",
            mentions: None,
        },
    ];
    for r in cases {
        let p = problem(r.case, r.request.send().unwrap(), r.status, r.kind);
        if let Some(words) = r.mentions {
            assert!(
                p["detail"].as_str().unwrap().contains(words),
                "{}: the detail must mention {words}: {p}",
                r.case
            );
        }
    }
    // The server is still healthy and answers correctly after all of that.
    assert_eq!(
        c.get(server.url("/health/ready")).send().unwrap().status(),
        200
    );
    assert_eq!(
        post_fixture(server.url("/explain"), "chelsea.png")
            .send()
            .unwrap()
            .status(),
        200
    );
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
    let canary_port = canary.addr.port();
    // (case, URL, words the detail must contain, words it must not)
    let cases = [
        ("the canary", canary_url, None, Some("hi")),
        // The canary in other spellings of loopback, and a metadata address.
        (
            "loopback as a decimal number",
            format!("http://2130706434:{canary_port}/"),
            None,
            None,
        ),
        (
            "IPv4-mapped IPv6 loopback",
            format!("http://[::ffff:127.0.0.2]:{canary_port}/"),
            None,
            None,
        ),
        (
            "cloud metadata address",
            "http://169.254.169.254/latest/meta-data/".to_string(),
            None,
            None,
        ),
        // A redirect from the allowed origin into the canary, and a chain of four redirects.
        (
            "redirect into the canary",
            format!("http://{}/go", origin.addr),
            None,
            None,
        ),
        (
            "chain of four redirects",
            format!("http://{}/hop0", origin.addr),
            Some("redirects"),
            None,
        ),
        // A port outside the allowed list.
        (
            "port not allowed",
            "http://93.184.216.34:8080/cat.jpg".to_string(),
            None,
            None,
        ),
    ];
    for (case, url, mentions, hides) in cases {
        let res = client()
            .post(server.url("/explain"))
            .json(&serde_json::json!({ "url": url }))
            .send()
            .unwrap();
        let p = problem(case, res, 403, "forbidden_source");
        let detail = p["detail"].as_str().unwrap();
        if let Some(words) = mentions {
            assert!(detail.contains(words), "{case}: must mention {words}: {p}");
        }
        if let Some(words) = hides {
            assert!(
                !detail.contains(words),
                "{case}: must not show {words}: {p}"
            );
        }
    }
    assert_eq!(canary.hits(), 0, "no connection may reach the canary");
}
