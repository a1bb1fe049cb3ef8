//! The answers of `POST /explain`: the overlay drawn and encoded as a picture answer, or the
//! JSON answer with its pictures in base64, built on the blocking pool, each part timed in
//! the stage metrics.

use super::AppState;
use super::bodies::{ExplainBody, ExplanationBody, ImageInfo, Picture, PredictBody, Timings};
use super::options::Pictures;
use super::problem::ApiError;
use super::work::blocking;
use crate::backend::{ExplainResult, Explanation};
use crate::input::Ready;
use crate::metrics::{Clock, Metrics, StageTime};
use crate::render;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Headers that carry [`Timings`] (milliseconds), on every answer of these routes.
pub const TIMING_HEADERS: [&str; 3] = ["x-queue-time", "x-inference-time", "x-total-time"];

pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// A class name as a header value: as it is when it is printable ASCII; otherwise in RFC 8187's
/// form, `UTF-8''` and the UTF-8 bytes percent-encoded (`caf%C3%A9`), which any client decodes
/// exactly (`decodeURIComponent` after the prefix).
pub fn label_header(label: &str) -> HeaderValue {
    if label.bytes().all(|b| (0x20..0x7f).contains(&b))
        && let Ok(v) = HeaderValue::from_str(label)
    {
        return v;
    }
    let mut out = String::from("UTF-8''");
    for b in label.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or(HeaderValue::from_static(""))
}

/// `/explain` answers JSON or a picture by `Accept`: a shared cache must key on it.
fn vary_on_accept(res: &mut Response) {
    res.headers_mut()
        .append(header::VARY, HeaderValue::from_static("accept"));
}

pub fn timing_headers(res: &mut Response, t: &Timings) {
    let h = res.headers_mut();
    for (name, v) in TIMING_HEADERS
        .iter()
        .zip([t.queue_ms, t.inference_ms, t.total_ms])
    {
        if let Ok(value) = HeaderValue::from_str(&format!("{v:.3}")) {
            h.insert(*name, value);
        }
    }
}

/// An explained image and what its answer needs.
pub struct Explained {
    pub decoded: Ready,
    pub result: ExplainResult,
    pub timings: Timings,
}

/// `Accept: image/png` (or JPEG, WebP): the first class's overlay is the answer, and headers say
/// which class, method and layer it shows.
pub async fn overlay_answer(
    state: &AppState,
    explained: Explained,
    o: render::OverlayOptions,
    pictures: Pictures,
    started: Instant,
) -> Result<Response, ApiError> {
    let Explained {
        decoded,
        result,
        mut timings,
    } = explained;
    let t = Instant::now();
    let drawn = blocking(state, move || {
        let e = result
            .explanations
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::Internal("no explanation".into()))?;
        let mut time = RenderTime::default();
        let picture = draw(&decoded, &e, &o, &pictures, &mut time)?;
        Ok::<_, ApiError>((e, picture, time))
    })
    .instrument(tracing::info_span!("render"))
    .await?;
    let (first, bytes, time) = drawn?;
    time.record(&state.metrics, false);
    timings.render_ms = Some(ms(t.elapsed()));
    state.metrics.stage("render", t.elapsed().as_secs_f64());
    timings.total_ms = ms(started.elapsed());
    let media = pictures.format.media_type();
    let mut res = ([(header::CONTENT_TYPE, media)], bytes).into_response();
    let h = res.headers_mut();
    h.insert("x-class-index", HeaderValue::from(first.class_index));
    h.insert("x-class-label", label_header(&first.label));
    h.insert("x-method", HeaderValue::from_static(first.method.name()));
    h.insert("x-layer", HeaderValue::from_static(first.layer.name()));
    vary_on_accept(&mut res);
    timing_headers(&mut res, &timings);
    Ok(res)
}

/// The JSON answer. Overlays, base64 and the (megabytes of) JSON are all built on the blocking
/// pool.
pub async fn json_answer(
    state: &AppState,
    explained: Explained,
    overlay: Option<render::OverlayOptions>,
    pictures: Pictures,
    started: Instant,
) -> Result<Response, ApiError> {
    let Explained {
        decoded,
        result,
        mut timings,
    } = explained;
    let t = Instant::now();
    let engine = state.engine.clone();
    let (json, timings, time) = blocking(state, move || {
        let mut time = RenderTime::default();
        let explanations = explanation_bodies(&decoded, &result, overlay, &pictures, &mut time)?;
        timings.render_ms = Some(ms(t.elapsed()));
        timings.total_ms = ms(started.elapsed());
        let d = engine.description();
        let body = ExplainBody {
            answer: PredictBody {
                model: &d.model,
                device: &d.device,
                precision: d.precision,
                image: ImageInfo::of(&decoded),
                timings,
                predictions: &result.predictions,
            },
            explanations,
        };
        let (json, took) = Clock::time(|| {
            let _span = tracing::info_span!("serialize").entered();
            body.to_json()
        });
        time.serialize += took;
        json.map(|json| (json, body.answer.timings, time))
            .map_err(|e| ApiError::Internal(format!("the answer did not serialise: {e}")))
    })
    .instrument(tracing::info_span!("render"))
    .await??;
    time.record(&state.metrics, true);
    state
        .metrics
        .stage("render", timings.render_ms.unwrap_or_default() / 1e3);
    let mut res = ([(header::CONTENT_TYPE, "application/json")], json).into_response();
    vary_on_accept(&mut res);
    timing_headers(&mut res, &timings);
    Ok(res)
}

/// The explanations of one image as the JSON answer has them: with the overlay drawn when
/// `overlay` says so and the map as a picture when `pictures` asks for it.
pub fn explanation_bodies<'a>(
    decoded: &Ready,
    result: &'a ExplainResult,
    overlay: Option<render::OverlayOptions>,
    pictures: &Pictures,
    time: &mut RenderTime,
) -> Result<Vec<ExplanationBody<'a>>, ApiError> {
    result
        .explanations
        .iter()
        .map(|e| {
            let mut body = ExplanationBody::new(e);
            if let Some(o) = overlay {
                let picture = draw(decoded, e, &o, pictures, time)?;
                body.set_overlay(pictures.format, picture);
            }
            if pictures.heatmap_image {
                let size = pictures
                    .heatmap_side
                    .map(|side| render::overlay_size(decoded.width, decoded.height, side));
                let (png, took) = Clock::time(|| {
                    let _span = tracing::info_span!("encode", picture.format = "png").entered();
                    render::heatmap_png(
                        &e.normalized,
                        e.heatmap.width,
                        e.heatmap.height,
                        pictures.colormap,
                        size,
                    )
                });
                time.encode += took;
                body.heatmap_png = Some(Picture(png));
            }
            Ok(body)
        })
        .collect()
}

/// Time spent in the parts of rendering one answer (see [`RenderTime::record`]).
#[derive(Debug, Default)]
pub struct RenderTime {
    /// Upsampling the map, colouring it and blending it onto the photograph (one fused pass).
    overlay: StageTime,
    /// Encoding pictures (the overlay, the heatmap image).
    encode: StageTime,
    /// base64 and JSON.
    serialize: StageTime,
}

impl RenderTime {
    /// Counts time spent serialising an answer.
    pub fn serialized(&mut self, took: StageTime) {
        self.serialize += took;
    }

    /// Each part in `gradcam_stage_seconds` and `gradcam_stage_cpu_seconds_total`, those of a
    /// JSON answer only when there was one.
    pub fn record(&self, metrics: &Metrics, json: bool) {
        metrics.stage_timed("overlay", self.overlay);
        metrics.stage_timed("encode", self.encode);
        if json {
            metrics.stage_timed("serialize", self.serialize);
        }
    }
}

/// The overlay of one explanation, encoded as `pictures` says.
pub fn draw(
    decoded: &Ready,
    e: &Explanation,
    o: &render::OverlayOptions,
    pictures: &Pictures,
    time: &mut RenderTime,
) -> Result<Vec<u8>, ApiError> {
    let base = decoded
        .overlay_base
        .as_ref()
        .ok_or_else(|| ApiError::Internal("no photograph kept for the overlay".into()))?;
    let region = decoded.region.fraction_of(decoded.width, decoded.height);
    let (picture, took) = Clock::time(|| {
        let _span = tracing::info_span!("overlay").entered();
        render::overlay(
            base,
            &e.normalized,
            e.heatmap.width,
            e.heatmap.height,
            o,
            region.as_ref(),
        )
    });
    time.overlay += took;
    let (bytes, took) = Clock::time(|| {
        let _span =
            tracing::info_span!("encode", picture.format = pictures.format.media_type()).entered();
        render::encode(&picture, pictures.format, pictures.quality)
    });
    time.encode += took;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::label_header;

    #[test]
    fn labels_are_sent_exactly_in_any_script() {
        assert_eq!(label_header("tabby"), "tabby");
        assert_eq!(label_header("tiger cat, 'x'"), "tiger cat, 'x'");
        assert_eq!(label_header("café crème"), "UTF-8''caf%C3%A9%20cr%C3%A8me");
        assert_eq!(label_header("猫"), "UTF-8''%E7%8C%AB");
        assert_eq!(label_header("a\nb"), "UTF-8''a%0Ab");
    }
}
