//! `POST /explain` and `POST /predict`: read the input, check the options, fetch (URL form),
//! decode and preprocess on the blocking pool, queue for the engine, and render the answer on
//! the blocking pool again; all under the request's deadline.

use super::AppState;
use super::answer::{Explained, json_answer, ms, overlay_answer, timing_headers};
use super::bodies::{ImageInfo, PredictBody, Timings};
use super::budget;
use super::input::{Incoming, Source};
use super::options::{Pictures, RawOptions};
use super::problem::ApiError;
use super::work;
use crate::engine::{Done, Output, Task};
use crate::input::{self, DecodeLimits, Preprocess};
use crate::metrics::{Clock, StageTime};
use crate::render::{self, PictureFormat};
use axum::Json;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use std::time::Instant;
use tracing::Instrument;

/// The size of the overlay drawn from a `display`-sized picture, longer side `keep`.
fn overlay_of(display: (u32, u32), keep: Option<u32>) -> Option<(u32, u32)> {
    keep.map(|side| render::overlay_size(display.0, display.1, side))
}

/// Reads the header: the full size and the pixels that decoding for this answer will hold.
fn measure(
    bytes: &[u8],
    limits: DecodeLimits,
    preprocess: &Preprocess,
    keep: Option<u32>,
) -> Result<(u32, u32, u64), ApiError> {
    let opened = input::open(bytes, limits)?;
    let display = opened.display_size();
    Ok((
        display.0,
        display.1,
        opened.ready_pixels(preprocess, overlay_of(display, keep)),
    ))
}

/// Decodes and makes the network's input, keeping the photograph only at the size of the
/// overlay (`keep`, its longer side); with the time each half took.
fn prepare(
    bytes: &[u8],
    limits: DecodeLimits,
    preprocess: &Preprocess,
    keep: Option<u32>,
) -> Result<(input::Ready, Vec<f32>, StageTime, StageTime), ApiError> {
    let clock = Clock::start();
    let span = tracing::info_span!("decode", image.bytes = bytes.len() as i64).entered();
    let opened = input::open(bytes, limits)?;
    let overlay = overlay_of(opened.display_size(), keep);
    let decoded = opened.decode_for(preprocess, overlay)?;
    drop(span);
    let decode = clock.stop();
    let ((ready, x), pre) = Clock::time(|| {
        let _span = tracing::info_span!("preprocess").entered();
        decoded.prepare(preprocess, overlay)
    });
    Ok((ready, x, decode, pre))
}

/// Fetches a URL's body, reserving its bytes in the budget as they arrive (all at once when
/// the server announces the length).
async fn fetch_within(
    state: &AppState,
    url: &str,
    reservation: &mut budget::Reservation,
) -> Result<bytes::Bytes, ApiError> {
    let mut download = state.fetcher.start(url).await?;
    let too_large =
        |limit: u64| ApiError::Fetch(crate::fetch::FetchError::TooLarge(limit.saturating_mul(3)));
    if let Some(n) = download.announced_len() {
        reservation
            .grow_to(budget::pixels_of_bytes(n), too_large)
            .await?;
    }
    while let Some(received) = download.next().await? {
        reservation
            .grow_to(budget::pixels_of_bytes(received), too_large)
            .await?;
    }
    Ok(download.into_bytes())
}

/// What the model made of one image, with what the answer needs besides.
pub(super) struct Inferred<T> {
    pub decoded: input::Ready,
    pub done: Done,
    pub timings: Timings,
    pub request: T,
}

/// The front half shared by both routes: refuse when not serving, read the input, then
/// [`infer_incoming`].
async fn infer<T>(
    state: &AppState,
    req: Request,
    started: Instant,
    parse: impl FnOnce(&RawOptions) -> Result<(Task, T, Option<u32>), ApiError>,
) -> Result<(Inferred<T>, budget::Reservation), ApiError> {
    state.serving()?;
    let incoming = Incoming::from_request(req, state).await?;
    infer_incoming(state, incoming, deadline(state, started), parse).await
}

/// When a request that began at `started` must be answered by, under the server's own limit.
pub(super) fn deadline(state: &AppState, started: Instant) -> Instant {
    started + state.config.request_timeout()
}

/// One image read from a request (by any protocol) through the service: check the options
/// (`parse`, before anything is fetched; it also says the longer side of the overlay to keep,
/// if any), fetch, reserve the image's pixels, decode and preprocess, queue, await the model.
pub(super) async fn infer_incoming<T>(
    state: &AppState,
    incoming: Incoming,
    deadline: Instant,
    parse: impl FnOnce(&RawOptions) -> Result<(Task, T, Option<u32>), ApiError>,
) -> Result<(Inferred<T>, budget::Reservation), ApiError> {
    state.serving()?;
    let (task, request, keep) =
        tracing::info_span!("options").in_scope(|| parse(&incoming.options))?;
    let mut timings = Timings::default();
    let mut reservation = state.budget.reservation();
    let bytes = match incoming.source {
        Source::Bytes(b) => b,
        Source::Url(url) => {
            let t = Instant::now();
            // The host only: a URL's path and query may carry its owner's secrets. (A span's
            // fields are evaluated only when it is traced.)
            let span = tracing::info_span!(
                "fetch",
                otel.kind = "client",
                server.address = url::Url::parse(&url)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_string))
                    .unwrap_or_default()
            );
            let bytes = fetch_within(state, &url, &mut reservation)
                .instrument(span)
                .await?;
            timings.fetch_ms = Some(ms(t.elapsed()));
            state.metrics.stage("fetch", t.elapsed().as_secs_f64());
            bytes
        }
    };

    let t = Instant::now();
    let limits = DecodeLimits {
        max_pixels: state.config.max_image_pixels,
        ..Default::default()
    };
    // The header says how many pixels decoding will hold: reserve them (with the encoded
    // bytes, held until decoding ends) first. Reading it costs a copy of the file for some
    // decoders, so it runs on the blocking pool too. All of it in one turn at picture work,
    // taken first: a request waiting for its turn holds none of the pixel budget.
    let preprocess = state.engine.description().input;
    let turn = work::turn(state).await?;
    let (bytes, width, height, pixels, header) = work::on_pool(move || {
        let (measured, header) = Clock::time(|| {
            let _span = tracing::info_span!("read header").entered();
            measure(&bytes, limits, &preprocess, keep)
        });
        let (w, h, pixels) = measured?;
        Ok::<_, ApiError>((bytes, w, h, pixels, header))
    })
    .await??;
    reservation
        .grow_for_image(
            width,
            height,
            pixels + budget::pixels_of_bytes(bytes.len() as u64),
        )
        .instrument(tracing::info_span!(
            "pixel budget wait",
            image.pixels = pixels as i64
        ))
        .await?;
    let (decoded, x, mut decode, pre) = work::on_pool(move || {
        let _turn = turn;
        prepare(&bytes, limits, &preprocess, keep)
    })
    .await??;
    decode += header;
    state.metrics.stage_timed("decode_pixels", decode);
    state.metrics.stage_timed("preprocess", pre);
    let kept = decoded
        .overlay_base
        .as_ref()
        .map_or(0, |b| u64::from(b.width()) * u64::from(b.height()));
    reservation.shrink(kept + u64::from(preprocess.size).pow(2));
    // `decode` (for the answer's `decode_ms` and the metric of that name) is everything from
    // the bytes to the network's input, budget waits included; its parts on their own are
    // `decode_pixels` and `preprocess`.
    timings.decode_ms = ms(t.elapsed());
    state.metrics.stage("decode", t.elapsed().as_secs_f64());

    let done = submit(state, x, task, deadline, &mut timings).await?;
    Ok((
        Inferred {
            decoded,
            done,
            timings,
            request,
        },
        reservation,
    ))
}

/// Queues a preprocessed input for the model and awaits its answer, with the queue and model
/// times in `timings` and the stage metrics.
pub(super) async fn submit(
    state: &AppState,
    x: Vec<f32>,
    task: Task,
    deadline: Instant,
    timings: &mut Timings,
) -> Result<Done, ApiError> {
    let reply = state.engine.submit(x, task, deadline)?;
    // If the client goes away, this future is dropped with the receiver, and the model thread
    // skips the job.
    let done = reply.await.map_err(|_| {
        // A job sent as the model thread ended for good is dropped with its queue.
        if state.engine.is_alive() {
            ApiError::Internal("the model thread dropped a job".into())
        } else {
            ApiError::ModelStopped
        }
    })??;
    timings.queue_ms = ms(done.queue);
    timings.inference_ms = ms(done.inference);
    timings.batch_size = done.batch_size;
    state.metrics.stage("queue", done.queue.as_secs_f64());
    state
        .metrics
        .stage("inference", done.inference.as_secs_f64());
    Ok(done)
}

/// Applies the whole-request deadline to a handler body.
pub(super) async fn with_deadline(
    state: &AppState,
    started: Instant,
    f: impl std::future::Future<Output = Result<Response, ApiError>>,
) -> Result<Response, ApiError> {
    within(state, started, state.config.request_timeout(), f).await
}

/// Runs a handler body for at most `limit` from `started` (a 504 `timeout` after it), and
/// counts its time in the `total` stage.
pub(super) async fn within<T>(
    state: &AppState,
    started: Instant,
    limit: std::time::Duration,
    f: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let r = tokio::time::timeout_at((started + limit).into(), f)
        .await
        .unwrap_or(Err(ApiError::Timeout(limit.as_millis() as u64)));
    state
        .metrics
        .stage("total", started.elapsed().as_secs_f64());
    r
}

/// What the client accepts, among `offered` (see [`super::negotiate`]).
fn negotiate(headers: &HeaderMap, offered: &[&'static str]) -> Result<&'static str, ApiError> {
    let accept = headers.get(header::ACCEPT).map(|v| v.to_str()).transpose();
    let accept = accept.map_err(|_| ApiError::NotAcceptable("Accept is not text".into()))?;
    super::negotiate::choose(accept, offered)
}

/// What `/explain` answers with, in the server's order of preference.
const EXPLAIN_ANSWERS: [&str; 4] = ["application/json", "image/png", "image/jpeg", "image/webp"];

pub async fn explain(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let started = Instant::now();
    // A picture answer: the negotiated image type.
    let picture = PictureFormat::of_media_type(negotiate(req.headers(), &EXPLAIN_ANSWERS)?);
    let max_side = state.config.max_overlay_side;
    let classes = state.engine.description().classes;
    with_deadline(&state, started, async {
        let (inferred, _reservation) = infer(&state, req, started, |options| {
            let r = options.explain(max_side, classes)?;
            // The overlay the answer draws: a picture answer draws one even with overlay=false.
            let drawn = if picture.is_some() {
                Some(r.overlay.unwrap_or_default())
            } else {
                r.overlay
            };
            let keep = drawn.map(|o| o.max_side);
            Ok((Task::Explain(r.explain), (drawn, r.pictures), keep))
        })
        .await?;
        let Inferred {
            decoded,
            done,
            timings,
            request: (drawn, pictures),
        } = inferred;
        let Output::Explain(result) = done.output else {
            return Err(ApiError::Internal(
                "the engine answered an explain job with predictions".into(),
            ));
        };
        let explained = Explained {
            decoded,
            result,
            timings,
        };
        match (picture, drawn) {
            (Some(format), Some(o)) => {
                let pictures = Pictures { format, ..pictures };
                overlay_answer(&state, explained, o, pictures, started).await
            }
            _ => json_answer(&state, explained, drawn, pictures, started).await,
        }
    })
    .await
}

pub async fn predict(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let started = Instant::now();
    negotiate(req.headers(), &["application/json"])?;
    let classes = state.engine.description().classes;
    with_deadline(&state, started, async {
        let (
            Inferred {
                decoded,
                done,
                mut timings,
                ..
            },
            _reservation,
        ) = infer(&state, req, started, |options| {
            Ok((
                Task::Predict {
                    top_k: options.predict(classes)?,
                },
                (),
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
        let d = state.engine.description();
        let body = PredictBody {
            model: &d.model,
            device: &d.device,
            precision: d.precision,
            image: ImageInfo::of(&decoded),
            predictions: &predictions,
            timings,
        };
        let mut res = Json(&body).into_response();
        timing_headers(&mut res, &body.timings);
        Ok(res)
    })
    .await
}
