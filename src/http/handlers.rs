//! Route handlers.

use super::AppState;
use super::body;
use super::options::ExplainRequest;
use super::problem::ApiError;
use crate::engine::{Done, Fault, Output, Task};
use crate::input::{self, DecodeLimits, Decoded};
use crate::model::{self, Explanation, Prediction};
use crate::render;
use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub const TIMING_HEADERS: [&str; 3] = ["x-queue-time", "x-inference-time", "x-total-time"];

#[derive(Debug, Serialize)]
struct ImageInfo {
    width: u32,
    height: u32,
    format: String,
}

#[derive(Debug, Serialize, Default)]
struct Timings {
    #[serde(skip_serializing_if = "Option::is_none")]
    fetch_ms: Option<f64>,
    decode_ms: f64,
    queue_ms: f64,
    inference_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    render_ms: Option<f64>,
    total_ms: f64,
    batch_size: usize,
}

#[derive(Serialize)]
struct ExplanationBody<'a> {
    #[serde(flatten)]
    explanation: &'a Explanation,
    /// The overlay PNG, base64; absent with `overlay=false`.
    #[serde(skip_serializing_if = "Option::is_none")]
    overlay_png: Option<String>,
}

#[derive(Serialize)]
struct ExplainBody<'a> {
    model: &'static str,
    device: &'a str,
    image: ImageInfo,
    timings: Timings,
    predictions: &'a [Prediction],
    explanations: Vec<ExplanationBody<'a>>,
}

#[derive(Serialize)]
struct PredictBody<'a> {
    model: &'static str,
    device: &'a str,
    image: ImageInfo,
    timings: Timings,
    predictions: &'a [Prediction],
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Runs CPU-heavy work on the blocking pool, never on the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("blocking task failed: {e}")))
}

/// Shared front half of `/explain` and `/predict`: refuse when not serving, read the input,
/// decode and preprocess, queue, await the model; all under the request deadline.
async fn infer(
    state: &AppState,
    req: Request,
    started: Instant,
    task_of: impl FnOnce(&body::Incoming) -> Result<(Task, Option<ExplainRequest>), ApiError>,
) -> Result<(Decoded, Done, Timings, Option<ExplainRequest>), ApiError> {
    serving(state)?;
    let deadline = started + state.config.request_timeout();
    let fault = injected_fault(req.headers())?;
    let incoming = body::read(state, req).await?;
    let (task, explain) = task_of(&incoming)?;
    let mut timings = Timings {
        fetch_ms: incoming.fetch.map(ms),
        ..Default::default()
    };
    if let Some(f) = incoming.fetch {
        state.metrics.stage("fetch", f.as_secs_f64());
    }

    let t = Instant::now();
    let limits = DecodeLimits {
        max_pixels: state.config.max_image_pixels,
        ..Default::default()
    };
    let bytes = incoming.bytes;
    let (decoded, x) = blocking(move || {
        input::decode(&bytes, limits).map(|d| {
            let x = input::preprocess(&d.image);
            (d, x)
        })
    })
    .await??;
    timings.decode_ms = ms(t.elapsed());
    state.metrics.stage("decode", t.elapsed().as_secs_f64());

    let reply = state.engine.submit(x, task, deadline, fault)?;
    // If the client goes away, this future is dropped with the receiver, and the model thread
    // skips the job.
    let done = reply
        .await
        .map_err(|_| ApiError::Internal("the model thread dropped a job".into()))?
        .map_err(|e| match e {
            crate::engine::EngineError::Expired => {
                ApiError::Timeout(state.config.request_timeout_ms)
            }
            e => e.into(),
        })?;
    timings.queue_ms = ms(done.queue);
    timings.inference_ms = ms(done.inference);
    timings.batch_size = done.batch_size;
    state.metrics.stage("queue", done.queue.as_secs_f64());
    state
        .metrics
        .stage("inference", done.inference.as_secs_f64());
    Ok((decoded, done, timings, explain))
}

/// The test build's fault hook: header `x-gradcam-fault` (see [`Fault`]'s syntax).
#[cfg(feature = "fault-injection")]
fn injected_fault(headers: &HeaderMap) -> Result<Option<Fault>, ApiError> {
    headers
        .get("x-gradcam-fault")
        .map(|v| {
            v.to_str()
                .map_err(|_| "not text".to_string())
                .and_then(str::parse)
                .map_err(|e| ApiError::Malformed(format!("x-gradcam-fault: {e}")))
        })
        .transpose()
}

/// Builds without the `fault-injection` feature ignore the header.
#[cfg(not(feature = "fault-injection"))]
fn injected_fault(_: &HeaderMap) -> Result<Option<Fault>, ApiError> {
    Ok(None)
}

/// Applies the whole-request deadline to a handler body.
async fn with_deadline(
    state: &AppState,
    started: Instant,
    f: impl std::future::Future<Output = Result<Response, ApiError>>,
) -> Result<Response, ApiError> {
    let r = tokio::time::timeout(state.config.request_timeout(), f)
        .await
        .unwrap_or(Err(ApiError::Timeout(state.config.request_timeout_ms)));
    state
        .metrics
        .stage("total", started.elapsed().as_secs_f64());
    r
}

fn timing_headers(res: &mut Response, t: &Timings) {
    let h = res.headers_mut();
    for (name, v) in TIMING_HEADERS
        .iter()
        .zip([t.queue_ms, t.inference_ms, t.total_ms])
    {
        h.insert(
            *name,
            HeaderValue::from_str(&format!("{v:.3}")).expect("a number is a valid header value"),
        );
    }
}

fn image_info(d: &Decoded) -> ImageInfo {
    ImageInfo {
        width: d.image.width(),
        height: d.image.height(),
        format: format!("{:?}", d.format).to_lowercase(),
    }
}

fn wants_png(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("image/png") && !a.contains("application/json"))
}

pub async fn explain(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let started = Instant::now();
    let png = wants_png(req.headers());
    let max_side = state.config.max_overlay_side;
    with_deadline(&state, started, async {
        let (decoded, done, mut timings, req) = infer(&state, req, started, |incoming| {
            let r = incoming.options.explain(max_side)?;
            Ok((Task::Explain(r.explain), Some(r)))
        })
        .await?;
        let req = req.expect("explain requests carry options: this is a bug");
        let Output::Explain(result) = done.output else {
            return Err(ApiError::Internal(
                "the engine answered an explain job with predictions".into(),
            ));
        };
        let t = Instant::now();
        if png {
            // The overlay is the answer (even with overlay=false): draw only the first class's.
            let o = req.overlay.unwrap_or_default();
            let drawn = blocking(move || {
                let e = result.explanations.into_iter().next()?;
                let png = draw(&decoded, &e, &o);
                Some((e, png))
            })
            .await?;
            let (first, bytes) =
                drawn.ok_or_else(|| ApiError::Internal("no explanation".into()))?;
            timings.render_ms = Some(ms(t.elapsed()));
            state.metrics.stage("render", t.elapsed().as_secs_f64());
            timings.total_ms = ms(started.elapsed());
            let mut res = ([(header::CONTENT_TYPE, "image/png")], bytes).into_response();
            let h = res.headers_mut();
            h.insert("x-class-index", HeaderValue::from(first.class_index));
            h.insert(
                "x-class-label",
                HeaderValue::from_str(first.label).unwrap_or(HeaderValue::from_static("")),
            );
            h.insert("x-method", HeaderValue::from_static(first.method.name()));
            h.insert("x-layer", HeaderValue::from_static(first.layer.name()));
            timing_headers(&mut res, &timings);
            return Ok(res);
        }
        // Overlays, base64 and the (megabytes of) JSON are all built on the blocking pool.
        let device = state.device.clone();
        let overlay = req.overlay;
        let (json, timings) = blocking(move || {
            let b64 = base64::engine::general_purpose::STANDARD;
            let explanations = result
                .explanations
                .iter()
                .map(|e| ExplanationBody {
                    explanation: e,
                    overlay_png: overlay.map(|o| b64.encode(draw(&decoded, e, &o))),
                })
                .collect();
            timings.render_ms = Some(ms(t.elapsed()));
            timings.total_ms = ms(started.elapsed());
            let body = ExplainBody {
                model: model::MODEL_NAME,
                device: &device,
                image: image_info(&decoded),
                predictions: &result.predictions,
                explanations,
                timings,
            };
            let json = serde_json::to_vec(&body).expect("the answer serialises: this is a bug");
            (json, body.timings)
        })
        .await?;
        state
            .metrics
            .stage("render", timings.render_ms.unwrap_or_default() / 1e3);
        let mut res = ([(header::CONTENT_TYPE, "application/json")], json).into_response();
        timing_headers(&mut res, &timings);
        Ok(res)
    })
    .await
}

/// The overlay PNG of one explanation.
fn draw(decoded: &Decoded, e: &Explanation, o: &render::OverlayOptions) -> Vec<u8> {
    let img = render::overlay(
        &decoded.image,
        &e.normalized,
        e.heatmap.width,
        e.heatmap.height,
        o,
    );
    render::encode_png(&img)
}

pub async fn predict(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let started = Instant::now();
    with_deadline(&state, started, async {
        let (decoded, done, mut timings, _) = infer(&state, req, started, |incoming| {
            Ok((
                Task::Predict {
                    top_k: incoming.options.predict()?,
                },
                None,
            ))
        })
        .await?;
        let Output::Predict(predictions) = done.output else {
            return Err(ApiError::Internal(
                "the engine answered a predict job with an explanation".into(),
            ));
        };
        timings.total_ms = ms(started.elapsed());
        let body = PredictBody {
            model: model::MODEL_NAME,
            device: &state.device,
            image: image_info(&decoded),
            predictions: &predictions,
            timings,
        };
        let mut res = Json(&body).into_response();
        timing_headers(&mut res, &body.timings);
        Ok(res)
    })
    .await
}

/// Live unless the model thread has died outside a shutdown: then only a restart helps.
pub async fn live(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if !state.engine.is_alive() && !state.draining.load(Ordering::SeqCst) {
        return Err(ApiError::ModelStopped);
    }
    Ok(Json(serde_json::json!({ "status": "live" })))
}

/// Whether this instance takes new work now; the same test gates `/explain` and `/predict`.
fn serving(state: &AppState) -> Result<(), ApiError> {
    if state.draining.load(Ordering::SeqCst) {
        return Err(ApiError::Draining);
    }
    if !state.engine.is_alive() {
        return Err(ApiError::ModelStopped);
    }
    if !state.ready.load(Ordering::SeqCst) || !state.engine.is_healthy() {
        return Err(ApiError::NotReady);
    }
    Ok(())
}

pub async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    serving(&state)?;
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

pub async fn info(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json((*state.info).clone())
}

pub async fn labels() -> Json<serde_json::Value> {
    let labels: Vec<_> = model::labels()
        .iter()
        .enumerate()
        .map(|(i, l)| serde_json::json!({ "index": i, "label": l }))
        .collect();
    Json(serde_json::json!({ "labels": labels }))
}

pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/yaml")],
        include_str!("../../openapi.yaml"),
    )
        .into_response()
}

pub async fn not_found(req: Request) -> Response {
    let detail = format!(
        "no route {} {}; see /openapi.yaml",
        req.method(),
        req.uri().path()
    );
    let body = serde_json::json!({ "type": "not_found", "title": "Not found", "status": 404, "detail": detail });
    let mut res = (StatusCode::NOT_FOUND, Json(body)).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    res
}
