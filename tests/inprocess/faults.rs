//! The engine's refusals as the client sees them, with a scripted toy backend: a failure is a
//! 500 that keeps its detail to the log, out of memory a 503 with Retry-After, a panic a 500
//! followed by `not_ready` until the backend is rebuilt, a dead model thread 503
//! `model_stopped`, a full queue 429 with Retry-After, a request past its deadline 504. After
//! each (but the death) the same app answers normally again.

use crate::support::{
    assert_explained, detail, fixture_bytes, get, metric, metrics_text, problem, protocol_error,
    protocol_requests, scripted_app, send, until, upload,
};
use crate::toy::{Act, Gate, Script};
use axum::Router;
use axum::body::Body;
use axum::http::Request;
use gradcam_serve::backend::ExplainOptions;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

fn explain_chelsea() -> Request<Body> {
    upload(
        "/explain?overlay=false",
        "image/png",
        fixture_bytes("chelsea.png"),
    )
}

fn predict_coffee() -> Request<Body> {
    upload("/predict", "image/jpeg", fixture_bytes("coffee.jpg"))
}

/// Sends in the background.
fn spawn(app: &Router, req: Request<Body>) -> JoinHandle<crate::support::Answer> {
    let app = app.clone();
    tokio::spawn(async move { send(&app, req).await })
}

/// The app answers a normal request correctly.
async fn assert_serves(case: &str, app: &Router) {
    let a = send(app, explain_chelsea()).await;
    assert_eq!(a.status, 200, "{case}: then a normal request is answered");
    assert_explained(
        case,
        &a.json(),
        &fixture_bytes("chelsea.png"),
        ExplainOptions::default(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failure_is_500_internal_and_its_detail_stays_inside() {
    let script = Script::default();
    let (app, _) = scripted_app(&[], &script);
    for (case, req) in [
        ("explain", explain_chelsea()),
        ("predict", predict_coffee()),
    ] {
        script.push(Act::Fail("secret: shape [7, 7] vs [2, 3]".into()));
        let p = problem(case, &send(&app, req).await, 500, "internal");
        assert_eq!(detail(&p), "internal error", "{case}: {p}");
        assert!(!p.to_string().contains("secret"), "{case}: {p}");
    }
    assert_serves("after a failure", &app).await;
    let text = metrics_text(&app).await;
    for (series, n) in [
        ("gradcam_rejections_total{reason=\"internal\"}", 2.0),
        (
            "gradcam_requests_total{route=\"/explain\",status=\"500\"}",
            1.0,
        ),
        (
            "gradcam_requests_total{route=\"/predict\",status=\"500\"}",
            1.0,
        ),
        ("gradcam_model_rebuilds_total{result=\"ok\"}", 0.0),
    ] {
        assert_eq!(metric(&text, series), n, "{series} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_is_503_with_retry_after() {
    let script = Script::default();
    let (app, _) = scripted_app(&[], &script);
    for (case, req) in [
        ("explain", explain_chelsea()),
        ("predict", predict_coffee()),
    ] {
        script.push(Act::OutOfMemory);
        let a = send(&app, req).await;
        let p = problem(case, &a, 503, "out_of_memory");
        assert_eq!(a.header("retry-after"), "1", "{case}");
        assert!(detail(&p).contains("out of memory"), "{case}: {p}");
    }
    // The inference protocols: the same refusal, in their shape.
    for (case, req) in protocol_requests(&app, &fixture_bytes("coffee.jpg")).await {
        script.push(Act::OutOfMemory);
        let a = send(&app, req).await;
        protocol_error(case, &a, 503, "out of memory");
        assert_eq!(a.header("retry-after"), "1", "{case}");
    }
    assert_eq!(send(&app, get("/health/ready")).await.status, 200);
    assert_serves("after running out of memory", &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_500_then_not_ready_until_the_backend_is_rebuilt() {
    let script = Script::default();
    let (app, _) = scripted_app(&[], &script);
    let rebuild = Gate::default();
    script.push(Act::Panic {
        rebuild: Some(rebuild.clone()),
    });
    let p = problem(
        "the panicking request",
        &send(&app, explain_chelsea()).await,
        500,
        "internal",
    );
    assert_eq!(detail(&p), "internal error", "{p}");
    // Readiness is already false when the failed request gets its answer.
    for (case, req) in [
        ("readiness while rebuilding", get("/health/ready")),
        ("explain while rebuilding", explain_chelsea()),
        ("predict while rebuilding", predict_coffee()),
    ] {
        let a = send(&app, req).await;
        problem(case, &a, 503, "not_ready");
        assert_eq!(a.header("retry-after"), "1", "{case}");
    }
    assert_eq!(
        send(&app, get("/health/live")).await.status,
        200,
        "live while rebuilding"
    );
    // Counted before the wait for readiness below, whose polls may add more (as many as the
    // rebuild takes on a busy machine).
    let text = metrics_text(&app).await;
    assert_eq!(
        metric(&text, "gradcam_rejections_total{reason=\"not_ready\"}"),
        3.0,
        "{text}"
    );
    rebuild.open();
    until("the rebuilt backend", || script.builds() == 2).await;
    let start = Instant::now();
    while send(&app, get("/health/ready")).await.status != 200 {
        assert!(start.elapsed() < Duration::from_secs(5), "ready again");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_serves("after the rebuild", &app).await;
    let text = metrics_text(&app).await;
    assert_eq!(
        metric(&text, "gradcam_model_rebuilds_total{result=\"ok\"}"),
        1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_model_thread_is_503_model_stopped_and_not_live() {
    model_thread_ends_on(Act::Die).await;
}

/// A lost GPU context ends the model thread as a fatal panic does: no retry, no rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_gpu_context_ends_the_model_thread() {
    model_thread_ends_on(Act::DeviceLost).await;
}

async fn model_thread_ends_on(act: Act) {
    let script = Script::default();
    let (app, state) = scripted_app(&[], &script);
    script.push(act);
    let a = send(&app, explain_chelsea()).await;
    let p = problem(
        "the request the model thread ended on",
        &a,
        503,
        "model_stopped",
    );
    assert!(detail(&p).contains("restart"), "{p}");
    let engine = state.engine.clone();
    until("the model thread to end", || !engine.is_alive()).await;
    for (case, req) in [
        ("liveness", get("/health/live")),
        ("readiness", get("/health/ready")),
        ("explain", explain_chelsea()),
        ("predict", predict_coffee()),
    ] {
        let a = send(&app, req).await;
        let p = problem(case, &a, 503, "model_stopped");
        assert!(detail(&p).contains("restart"), "{case}: {p}");
        assert_eq!(
            a.header("retry-after"),
            "",
            "{case}: retrying here cannot help"
        );
    }
    assert_eq!(script.calls(), 1, "nothing reaches a dead model thread");
}

/// A lost device ends the model thread through its normal drain: the jobs queued behind the
/// batch that lost it are answered 503 `model_stopped` (go elsewhere), none is dropped (which
/// would be a 500), and none reaches the device again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_queued_behind_a_lost_device_are_503_model_stopped() {
    let script = Script::default();
    let (app, state) = scripted_app(&["--max-batch-size", "1"], &script);
    let gate = Gate::default();
    script.push(Act::Hold(gate.clone()));
    script.push(Act::DeviceLost);
    let held = spawn(&app, explain_chelsea());
    until("the model thread to hold the first request", || {
        script.calls() == 1
    })
    .await;
    let queued: Vec<_> = (0..3)
        .map(|i| {
            spawn(
                &app,
                if i % 2 == 0 {
                    explain_chelsea()
                } else {
                    predict_coffee()
                },
            )
        })
        .collect();
    let metrics = state.metrics.clone();
    until("three requests to wait in the queue", || {
        metrics.queue_depth.load(Ordering::SeqCst) == 3
    })
    .await;
    gate.open();
    assert_eq!(held.await.unwrap().status, 200, "the batch before the loss");
    for (i, q) in queued.into_iter().enumerate() {
        let a = q.await.unwrap();
        let p = problem(&format!("queued request {i}"), &a, 503, "model_stopped");
        assert!(detail(&p).contains("restart"), "{i}: {p}");
    }
    assert!(!state.engine.is_alive());
    assert_eq!(
        script.calls(),
        2,
        "nothing reaches a lost device after the loss"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_429_with_retry_after_at_once() {
    let script = Script::default();
    let (app, state) = scripted_app(&["--queue-capacity", "1", "--max-batch-size", "1"], &script);
    let gate = Gate::default();
    script.push(Act::Hold(gate.clone()));
    // One request holds the model thread, a second waits in the queue (capacity 1).
    let held = spawn(&app, explain_chelsea());
    until("the model thread to hold the first request", || {
        script.calls() == 1
    })
    .await;
    let queued = spawn(&app, predict_coffee());
    let metrics = state.metrics.clone();
    until("the second request to wait in the queue", || {
        metrics.queue_depth.load(Ordering::SeqCst) == 1
    })
    .await;
    for (case, req) in [
        ("explain", explain_chelsea()),
        ("predict", predict_coffee()),
    ] {
        // Answered while the gate is still closed: refused at once, not after waiting.
        let a = send(&app, req).await;
        let p = problem(case, &a, 429, "queue_full");
        assert_eq!(a.header("retry-after"), "1", "{case}");
        assert!(detail(&p).contains("queue is full"), "{case}: {p}");
    }
    for (case, req) in protocol_requests(&app, &fixture_bytes("coffee.jpg")).await {
        let a = send(&app, req).await;
        protocol_error(case, &a, 429, "queue is full");
        assert_eq!(a.header("retry-after"), "1", "{case}");
    }
    gate.open();
    let (held, queued) = (held.await.unwrap(), queued.await.unwrap());
    assert_eq!(held.status, 200, "the held request");
    assert_eq!(queued.status, 200, "the queued request");
    assert_eq!(
        script.calls(),
        2,
        "the refused requests never reached the model"
    );
    let text = metrics_text(&app).await;
    assert_eq!(
        metric(&text, "gradcam_rejections_total{reason=\"queue_full\"}"),
        4.0,
        "{text}"
    );
    assert_serves("after the queue drained", &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_is_504() {
    let script = Script::default();
    let (app, _) = scripted_app(
        &["--request-timeout-ms", "300", "--fetch-timeout-ms", "100"],
        &script,
    );
    let gate = Gate::default();
    script.push(Act::Hold(gate.clone()));
    let started = Instant::now();
    let held = spawn(&app, explain_chelsea());
    until("the model thread to hold the first request", || {
        script.calls() == 1
    })
    .await;
    // The second waits in the queue behind the held one.
    let queued = send(&app, predict_coffee()).await;
    for (case, a) in [("queued", queued), ("held", held.await.unwrap())] {
        let p = problem(case, &a, 504, "timeout");
        assert!(detail(&p).contains("300 ms"), "{case}: {p}");
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3),
        "answered at the deadline, not before or long after: {elapsed:?}"
    );
    gate.open();
    assert_serves("after the deadline passed", &app).await;
    let text = metrics_text(&app).await;
    assert_eq!(
        metric(&text, "gradcam_rejections_total{reason=\"timeout\"}"),
        2.0,
        "{text}"
    );
}

/// The pixel budget: a request holds its image's pixels while it decodes and, once the image is
/// reduced to what its answer needs, no more than that; one that finds no room in time gets
/// 503 `memory_busy`, and an image larger than the whole budget 422 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pixel_budget_refuses_with_memory_busy_and_too_large_images_at_once() {
    let script = Script::default();
    // A request holds its pixels and, while it decodes, a third of a pixel per byte of the
    // file. chelsea.png is 451x300 (135 300 pixels) in 240 512 bytes: 215 471 in all while
    // decoding, which fits a budget of 276 480 pixels, beside the 224x224 input that a request
    // without overlay keeps (50 176) but not beside one that keeps its overlay (185 476).
    // rocket.jpg (640x427 in 112 525 bytes: 310 789) never fits.
    let (app, state) = scripted_app(
        &[
            "--max-inflight-pixels",
            "276480",
            "--inflight-wait-ms",
            "100",
        ],
        &script,
    );
    let metrics = state.metrics.clone();
    let held_pixels = || metrics.inflight_pixels.load(Ordering::SeqCst);
    let with_overlay = || upload("/explain", "image/png", fixture_bytes("chelsea.png"));

    // With its overlay the first photo keeps all its pixels while it waits for the model.
    let gate = Gate::default();
    script.push(Act::Hold(gate.clone()));
    let held = spawn(&app, with_overlay());
    until("the model thread to hold the first request", || {
        script.calls() == 1
    })
    .await;
    assert!(held_pixels() >= 135_300, "{}", held_pixels());
    let a = send(&app, explain_chelsea()).await;
    problem(
        "a second photo while the first holds the budget",
        &a,
        503,
        "memory_busy",
    );
    assert_eq!(a.header("retry-after"), "1");
    let a = send(
        &app,
        upload("/explain", "image/jpeg", fixture_bytes("rocket.jpg")),
    )
    .await;
    let p = problem("larger than the whole budget", &a, 422, "image_too_large");
    assert!(detail(&p).contains("276480"), "{p}");
    gate.open();
    assert_eq!(held.await.unwrap().status, 200);
    assert_eq!(held_pixels(), 0, "the reservation ends with the request");

    // Without an overlay only the network's input is kept: room for another photo.
    let gate = Gate::default();
    script.push(Act::Hold(gate.clone()));
    let held = spawn(&app, explain_chelsea());
    until("the model thread to hold the third request", || {
        script.calls() == 2
    })
    .await;
    assert_eq!(held_pixels(), 224 * 224, "shrunk to the 224x224 input");
    let queued = spawn(&app, with_overlay());
    let queue = state.metrics.clone();
    until(
        "the fourth request to pass the budget and wait in the queue",
        || queue.queue_depth.load(Ordering::SeqCst) == 1,
    )
    .await;
    gate.open();
    assert_eq!(held.await.unwrap().status, 200);
    assert_eq!(queued.await.unwrap().status, 200);
    let text = metrics_text(&app).await;
    assert_eq!(
        metric(&text, "gradcam_rejections_total{reason=\"memory_busy\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(metric(&text, "gradcam_inflight_pixels_limit"), 276_480.0);
    assert_eq!(metric(&text, "gradcam_inflight_pixels"), 0.0);
}

/// Admission by expected wait: once the model's pace is known (here 400 ms of work an image,
/// taught by a batch that computes that long), a request that the queue ahead would keep past its deadline is refused at once
/// with 503 `overloaded` and a `Retry-After` from the expected wait, while the model is still
/// held: not after waiting its deadline out. Those that fit are admitted and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_queue_cannot_serve_in_time_is_refused_at_once() {
    let script = Script::default();
    let (app, state) = scripted_app(
        &[
            "--max-batch-size",
            "1",
            "--queue-capacity",
            "16",
            "--request-timeout-ms",
            "2000",
            "--fetch-timeout-ms",
            "1000",
        ],
        &script,
    );
    script.push(Act::Work(Duration::from_millis(400)));
    assert_eq!(send(&app, explain_chelsea()).await.status, 200);

    // The model is held again; jobs queue behind it. With one image in flight (half of its
    // 400 ms still to come), the k-th queued job expects 200 + 400 k ms: four fit in 2 s.
    let hold = Gate::default();
    script.push(Act::Hold(hold.clone()));
    let held = spawn(&app, explain_chelsea());
    until("the second batch to start", || script.calls() == 2).await;
    let metrics = state.metrics.clone();
    let mut admitted = Vec::new();
    for k in 1..=4 {
        admitted.push(spawn(&app, predict_coffee()));
        until("the job to be queued", || {
            metrics.queue_depth.load(Ordering::SeqCst) == k
        })
        .await;
    }
    let a = send(&app, predict_coffee()).await;
    let p = problem("the fifth in the queue", &a, 503, "overloaded");
    assert!(
        detail(&p).contains("in at least 2")
            && detail(&p).contains("past its deadline")
            && detail(&p).contains("another instance"),
        "{p}"
    );
    assert_eq!(script.calls(), 2, "refused while the model was still held");
    let text = metrics_text(&app).await;
    // The taught batch's wall time grows when other work shares the cores; its work does not.
    let per_image = metric(&text, "gradcam_model_seconds_per_image");
    let work = metric(&text, "gradcam_model_work_seconds_per_image");
    assert!((0.4..0.6).contains(&work) && work <= per_image, "{text}");
    // Retry-After: five and a half images at the wall's pace, rounded up.
    let retry: u64 = a.header("retry-after").parse().unwrap();
    assert_eq!(retry, (per_image * 5.5).ceil() as u64, "{text}");
    assert!(
        metric(&text, "gradcam_expected_wait_seconds") > 2.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "gradcam_rejections_total{reason=\"overloaded\"}"),
        1.0
    );

    hold.open();
    assert_eq!(held.await.unwrap().status, 200);
    for (k, a) in admitted.into_iter().enumerate() {
        assert_eq!(a.await.unwrap().status, 200, "admitted job {k}");
    }
}
