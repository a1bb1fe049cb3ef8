//! Faults and overload against the real server, built with the test-only fault hook (cargo
//! feature `fault-injection`, which scripts/test.sh turns on). The request header
//! `x-gradcam-fault` makes the model thread sleep, panic, or run into a real libtorch error or a
//! real allocation failure while it works on that request.

use crate::common::fixture;
use crate::common::server::{Server, client, post_fixture};
use serde_json::Value;
use std::time::{Duration, Instant};

const HOOK: &str = "x-gradcam-fault";
const NO_HOOK: &str = "the fault hook had no effect: the server must be built with \
                       --features fault-injection (scripts/test.sh does)";

fn post(
    server: &Server,
    path: &str,
    file: &str,
    fault: Option<&str>,
) -> reqwest::blocking::Response {
    let mut req = post_fixture(server.url(path), file);
    if let Some(f) = fault {
        req = req.header(HOOK, f);
    }
    req.send().unwrap()
}

fn explain(server: &Server, fault: Option<&str>) -> reqwest::blocking::Response {
    post(server, "/explain?overlay=false", "chelsea.png", fault)
}

/// Status, Retry-After and body of an answer.
fn parts(res: reqwest::blocking::Response) -> (u16, Option<String>, Value) {
    let status = res.status().as_u16();
    let retry = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, res.json().unwrap_or(Value::Null))
}

/// Sends one request per fault at once; the answers in the same order.
fn explain_together(server: &Server, faults: &[Option<&str>]) -> Vec<(u16, Option<String>, Value)> {
    std::thread::scope(|s| {
        let hs: Vec<_> = faults
            .iter()
            .map(|f| s.spawn(move || parts(explain(server, *f))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn heatmap(body: &Value) -> Vec<f64> {
    serde_json::from_value(body["explanations"][0]["heatmap"]["data"].clone()).unwrap()
}

#[test]
fn a_panic_fails_its_request_then_the_model_is_rebuilt_and_serves_again() {
    let server = Server::start(&[]);
    let (status, _, before) = parts(explain(&server, None));
    assert_eq!(status, 200);

    // The rebuild is held for 3 s so that readiness can be watched while it runs.
    let (status, _, body) = parts(explain(&server, Some("panic=3000")));
    assert_eq!(status, 500, "{NO_HOOK}: {body}");
    assert_eq!(body["type"], "internal", "{body}");
    assert_eq!(
        body["detail"], "internal error",
        "details stay in the log: {body}"
    );
    // Readiness was turned false before the 500 was sent, and new work is refused meanwhile.
    assert_eq!(
        server.ready(),
        503,
        "readiness must be false during the rebuild"
    );
    let (status, retry, body) = parts(explain(&server, None));
    assert_eq!(
        (status, retry.as_deref(), body["type"].as_str()),
        (503, Some("1"), Some("not_ready")),
        "{body}"
    );

    let started = Instant::now();
    while server.ready() != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the model was never rebuilt"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _, after) = parts(explain(&server, None));
    assert_eq!(status, 200);
    assert_eq!(
        after["predictions"][0]["index"],
        before["predictions"][0]["index"]
    );
    let (a, b) = (heatmap(&after), heatmap(&before));
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert!(
        a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-5 * scale),
        "the rebuilt model must answer as before"
    );
    assert_eq!(
        server.metric("gradcam_model_rebuilds_total{result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        server.metric("gradcam_requests_total{route=\"/explain\",status=\"500\"}"),
        1.0
    );
    let log = server.log.lock().unwrap().join("\n");
    assert!(
        log.contains("injected fault") && log.contains("model rebuilt"),
        "the log says what happened: {log}"
    );
}

/// A libtorch error, then an allocation failure, each inside a batch of four: only its own
/// request fails (500, then 503 with Retry-After); the other three images of the same batch are
/// answered, and the server stays ready without a rebuild. The two faults go in separate
/// batches, because within one batch whichever comes first decides the recovery path.
#[test]
fn libtorch_errors_fail_only_their_own_request_in_a_batch() {
    // A long batch delay: four requests sent together are sure to share one batch (it closes
    // at four).
    let server = Server::start(&["--max-batch-size", "4", "--max-batch-delay-ms", "3000"]);
    let check_others = |answers: &[(u16, Option<String>, Value)]| {
        for (status, _, body) in &answers[1..] {
            assert_eq!(*status, 200, "{body}");
            assert_eq!(
                body["timings"]["batch_size"], 4,
                "the good images shared the batch with the failing one"
            );
        }
    };

    // Another error: the batch is retried image by image, and only the faulty one fails.
    let answers = explain_together(&server, &[Some("error"), None, None, None]);
    let error = &answers[0];
    assert_eq!(error.0, 500, "{NO_HOOK}: {:?}", error.2);
    assert_eq!(error.2["type"], "internal");
    check_others(&answers);
    let log = server.wait_log("retrying its images one by one");
    assert_eq!(
        log.matches("retrying its images one by one").count(),
        1,
        "{log}"
    );

    // Out of memory: the batch is halved until the failing image is alone.
    let answers = explain_together(&server, &[Some("oom"), None, None, None]);
    let oom = &answers[0];
    assert_eq!(
        (oom.0, oom.1.as_deref(), oom.2["type"].as_str()),
        (503, Some("1"), Some("out_of_memory")),
        "a real libtorch allocation failure is a 503: {:?}",
        oom.2
    );
    check_others(&answers);
    let log = server.wait_log("out of memory at batch 2: retrying as 1 and 1");
    for step in [
        "out of memory at batch 4: retrying as 2 and 2",
        "out of memory at batch 2: retrying as 1 and 1",
    ] {
        assert_eq!(log.matches(step).count(), 1, "{step}: {log}");
    }
    assert_eq!(
        log.matches("retrying its images one by one").count(),
        1,
        "out of memory is not retried one by one: {log}"
    );

    assert_eq!(server.ready(), 200);
    assert_eq!(parts(explain(&server, None)).0, 200);
    assert_eq!(
        server.metric("gradcam_model_rebuilds_total{result=\"ok\"}"),
        0.0
    );
    assert_eq!(
        server.metric("gradcam_requests_total{route=\"/explain\",status=\"200\"}"),
        7.0
    );
}

/// A batch that runs out of memory (a real libtorch allocation failure while the call carries
/// more than two images) is retried as two halves, which fit: every request of the batch of
/// four is answered, none alone, and the server stays ready.
#[test]
fn a_batch_that_runs_out_of_memory_is_split_in_halves() {
    let server = Server::start(&["--max-batch-size", "4", "--max-batch-delay-ms", "3000"]);
    let faults = [Some("oom-above=2"), None, None, None];
    let answers = explain_together(&server, &faults);
    for (status, _, body) in &answers {
        assert_eq!(*status, 200, "{NO_HOOK}: {body}");
        assert_eq!(body["timings"]["batch_size"], 4, "{body}");
    }
    let log = server.wait_log("out of memory at batch 4: retrying as 2 and 2");
    assert_eq!(
        log.matches("out of memory at batch 4: retrying as 2 and 2")
            .count(),
        1,
        "{log}"
    );
    assert!(
        !log.contains("out of memory at batch 2") && !log.contains("one by one"),
        "the halves fitted: {log}"
    );
    assert_eq!(server.ready(), 200);
}

#[test]
fn a_client_that_leaves_while_queued_never_reaches_the_model() {
    use std::io::Write;
    let server = Server::start(&["--max-batch-size", "1"]);
    std::thread::scope(|s| {
        // A holds the model thread for 8 s: time enough for B's steps below on a busy machine.
        let a = s.spawn(|| parts(explain(&server, Some("sleep=8000"))).0);
        server.wait_metric("gradcam_batch_size_count", 60, |n| n >= 1.0);
        // B sends a whole request, waits in the queue behind A, and hangs up.
        let body = std::fs::read(fixture("chelsea.png")).unwrap();
        let mut b = std::net::TcpStream::connect(server.addr).unwrap();
        let head = format!(
            "POST /explain HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        b.write_all(head.as_bytes()).unwrap();
        b.write_all(&body).unwrap();
        server.wait_metric("gradcam_queue_depth", 60, |n| n == 1.0);
        assert_eq!(
            server.metric("gradcam_batch_size_count"),
            1.0,
            "{NO_HOOK}: A should still hold the model"
        );
        drop(b);
        assert_eq!(a.join().unwrap(), 200);
    });
    server.wait_metric(
        "gradcam_rejections_total{reason=\"client_gone\"}",
        60,
        |n| n == 1.0,
    );
    assert_eq!(
        server.metric("gradcam_batch_size_sum"),
        1.0,
        "only A's image may have reached the model"
    );
    assert_eq!(parts(explain(&server, None)).0, 200);
    assert_eq!(server.metric("gradcam_batch_size_sum"), 2.0);
}

/// SIGTERM while 48 requests are accepted (one on the model, the rest queued), a mix of
/// `/explain` and `/predict` on four photos: every one gets its full answer, nothing new is
/// accepted meanwhile, and the process exits 0.
#[test]
fn sigterm_under_heavy_load_answers_every_accepted_request_then_exits_zero() {
    const N: usize = 48;
    // A long deadline: this is about draining, and 48 explanations on a busy 2-core machine can
    // take longer than the default 30 s.
    let mut server = Server::start(&[
        "--request-timeout-ms",
        "300000",
        "--drain-timeout-ms",
        "300000",
    ]);
    let photos = ["chelsea.png", "coffee.jpg", "rocket.jpg", "camera.png"];
    let results: Vec<(usize, u16, Value)> = std::thread::scope(|s| {
        let server_ref = &server;
        let holder = s.spawn(move || {
            let (status, _, body) = parts(explain(server_ref, Some("sleep=1500")));
            (0, status, body)
        });
        server.wait_metric("gradcam_batch_size_count", 60, |n| n >= 1.0);
        let hs: Vec<_> = (1..N)
            .map(|i| {
                s.spawn(move || {
                    let path = if i % 3 == 0 {
                        "/predict?top_k=3"
                    } else {
                        "/explain?overlay_max_side=64"
                    };
                    let (status, _, body) = parts(post(server_ref, path, photos[i % 4], None));
                    (i, status, body)
                })
            })
            .collect();
        // Every request read and decoded, i.e. accepted: then the signal.
        server.wait_metric("gradcam_stage_seconds_count{stage=\"decode\"}", 120, |n| {
            n >= N as f64
        });
        server.signal_term();
        // Draining: readiness (or the connection) now refuses.
        let late = client().get(server.url("/health/ready")).send();
        assert!(
            late.as_ref().map_or(true, |r| r.status() == 503),
            "after SIGTERM nothing new is accepted: {late:?}"
        );
        std::iter::once(holder)
            .chain(hs)
            .map(|h| h.join().unwrap())
            .collect()
    });
    let status = server.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(results.len(), N);
    for (i, status, body) in &results {
        assert_eq!(*status, 200, "request {i}: {body}");
        assert!(
            body["predictions"]
                .as_array()
                .is_some_and(|p| !p.is_empty()),
            "request {i}: {body}"
        );
        if *i % 3 != 0 {
            assert!(body["explanations"][0]["overlay_png"].is_string(), "{i}");
        }
    }
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("draining") && log.contains("stopped"), "{log}");
}

/// A model thread that cannot go on (a backend's fatal panic, as a lost device is) ends through
/// its normal drain: the request it ended on gets 503 `model_stopped`, liveness fails so that
/// an orchestrator restarts the instance, new requests get 503 `model_stopped` at once instead
/// of hanging; SIGTERM still exits 0.
#[test]
fn a_dead_model_thread_fails_liveness_and_refuses_work() {
    let mut server = Server::start(&[]);
    let live = |server: &Server| parts(client().get(server.url("/health/live")).send().unwrap());
    assert_eq!(live(&server).0, 200);
    let (status, _, body) = parts(explain(&server, Some("die")));
    assert_eq!(
        (status, body["type"].as_str()),
        (503, Some("model_stopped")),
        "{NO_HOOK}: {body}"
    );
    let started = Instant::now();
    let (status, _, body) = loop {
        let answer = live(&server);
        if answer.0 != 200 || started.elapsed() > Duration::from_secs(30) {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        (status, body["type"].as_str()),
        (503, Some("model_stopped")),
        "{body}"
    );
    assert_eq!(server.ready(), 503);
    let (status, _, body) = parts(explain(&server, None));
    assert_eq!(
        (status, body["type"].as_str()),
        (503, Some("model_stopped")),
        "{body}"
    );
    let exit = server.terminate();
    assert!(exit.success(), "exit status {exit:?}");
}
