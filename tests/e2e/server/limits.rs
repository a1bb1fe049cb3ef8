//! The limits that keep the server standing: request body size, queue capacity, deadlines, and
//! clients that send slowly or not at all.

use super::problem;
use crate::common::server::{Server, post_fixture};
use crate::common::{fixture, raw};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

#[test]
fn body_over_the_limit_is_413_in_every_form() {
    let server = Server::start(&["--body-limit", "100000"]);
    let big = std::fs::read(fixture("chelsea.png")).unwrap();
    assert!(big.len() > 100_000);
    let mut form =
        b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"c.png\"\r\n\r\n"
            .to_vec();
    form.extend_from_slice(&big);
    form.extend_from_slice(b"\r\n--XyZ--\r\n");
    let small = std::fs::read(fixture("coffee.jpg")).unwrap();
    // (case, request line and headers, body, status, problem type if a problem)
    let cases = [
        (
            "raw body over the limit",
            "POST /explain HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n",
            &big,
            413,
            Some("body_too_large"),
        ),
        (
            "multipart over the limit",
            "POST /explain HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n",
            &form,
            413,
            Some("body_too_large"),
        ),
        // Within the limit, the same server answers.
        (
            "raw body within the limit",
            "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n",
            &small,
            200,
            None,
        ),
    ];
    for (case, head, body, status, kind) in cases {
        let (got, answer) = raw::request(server.addr, head, body);
        assert_eq!(got, status, "{case}: {answer}");
        if let Some(kind) = kind {
            assert_eq!(answer["type"].as_str(), Some(kind), "{case}: {answer}");
        }
    }
}

#[test]
fn full_queue_refuses_at_once_with_retry_after() {
    let server = Server::start(&["--queue-capacity", "1", "--max-batch-size", "1"]);
    let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..16)
            .map(|_| {
                s.spawn(|| {
                    let res = post_fixture(server.url("/explain?overlay=false"), "chelsea.png")
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
            .map(|i| {
                let server = &server;
                s.spawn(move || {
                    let res = post_fixture(server.url("/explain?overlay=false"), "chelsea.png")
                        .send()
                        .unwrap();
                    let status = res.status().as_u16();
                    match status {
                        504 => drop(problem(&format!("request {i}"), res, 504, "timeout")),
                        // Sent after the first batch had shown the model's pace: refused at
                        // admission instead (tests/inprocess/faults.rs covers that path).
                        503 => drop(problem(&format!("request {i}"), res, 503, "overloaded")),
                        _ => {}
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
        statuses.iter().all(|s| [200, 503, 504].contains(s)),
        "{statuses:?}"
    );
    assert_eq!(server.ready(), 200);
    // Expected overload is a warning with the route and the problem type, never an error.
    let log = server.wait_log("\"problem\":\"timeout\"");
    let refused: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["fields"]["problem"] == "timeout")
        .collect();
    assert!(!refused.is_empty(), "{log}");
    for v in &refused {
        assert_eq!(v["level"], "WARN", "{v}");
        assert_eq!(v["fields"]["route"], "/explain", "{v}");
        assert_eq!(v["fields"]["status"], 504, "{v}");
    }
    assert!(!log.contains("\"level\":\"ERROR\""), "{log}");
}

/// Slow clients: 500 sockets that send half a request line and stall must not keep a normal
/// request from its answer, and the server must drop them once the header-read timeout passes.
#[test]
fn stalled_connections_neither_block_others_nor_stay_open() {
    let server = Server::start(&["--header-read-timeout-ms", "1500"]);
    let stalled: Vec<std::net::TcpStream> = (0..500)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(server.addr).unwrap();
            s.write_all(b"POST /explain HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    server.assert_predicts();
    println!(
        "answered in {:?} beside 500 stalled sockets",
        started.elapsed()
    );
    std::thread::sleep(Duration::from_millis(2500));
    let mut still_open = 0;
    for mut s in stalled {
        s.set_read_timeout(Some(Duration::from_millis(200)))
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
    let server = Server::start(&["--body-read-timeout-ms", "1000"]);
    // 50000 bytes announced, the first few sent.
    let stall = |content_type: &str, start: &[u8]| {
        let head = format!("POST /explain HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n");
        raw::send(server.addr, &head, 50000, start)
    };
    let raw_body = stall(
        "image/png",
        &std::fs::read(fixture("chelsea.png")).unwrap()[..100],
    );
    let form = stall(
        "multipart/form-data; boundary=XyZ",
        b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n\x89PNG",
    );
    // Meanwhile a normal request is answered.
    server.assert_predicts();
    for (name, s) in [("raw", raw_body), ("multipart", form)] {
        let (status, body) = raw::read_answer(s, Duration::from_secs(30));
        assert_eq!(status, 408, "{name}: {body}");
        assert_eq!(body["type"], "body_timeout", "{name}: {body}");
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("1000 ms")),
            "{name}: {body}"
        );
    }
    assert_eq!(
        server.metric("gradcam_rejections_total{reason=\"body_timeout\"}"),
        2.0
    );
}
