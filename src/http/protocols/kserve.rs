//! KServe's v1 protocol (TF-Serving's REST API as KServe speaks it): the model list, the
//! model's readiness, `:predict` and `:explain`.
//!
//! A request is `{"instances": [...]}` (or `{"inputs": [...]}`) with `/explain`'s options as
//! its other members. An instance is `{"b64": "..."}` (an image file in base64), an image URL
//! (a string, or `{"url": "..."}`, fetched under the URL form's rules), or the network's input
//! as nested lists (3 x S x S, already preprocessed). `:predict` answers `{"predictions":
//! [...]}`, one list of classes per instance as `/predict` gives them; `:explain` answers
//! `{"predictions": [...], "explanations": [...]}`, each instance's as `/explain` gives them (an
//! instance given as a tensor has no picture, so no overlay).

use super::run::{Image, check_tensor, model_name, run_all, served};
use super::tensor::flatten;
use crate::backend::Prediction;
use crate::engine::{Output, Task};
use crate::http::AppState;
use crate::http::answer::{RenderTime, explanation_bodies};
use crate::http::bodies::{ExplanationBody, json_with_pictures};
use crate::http::explain::{deadline, with_deadline};
use crate::http::input::read_body;
use crate::http::options::{RawOptions, Value as OptionValue};
use crate::http::problem::ApiError;
use crate::http::work::blocking;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use std::time::Instant;

pub async fn models(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "models": [model_name(&state)] }))
}

/// `GET /v1/models/NAME`: the model and whether it is ready.
pub async fn model(
    State(state): State<AppState>,
    Path(spec): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let name = served(&state, &spec, None)?;
    Ok(Json(
        json!({ "name": name, "ready": state.ready().is_ok() }),
    ))
}

/// `POST /v1/models/NAME:predict` and `NAME:explain`.
pub async fn verb(
    State(state): State<AppState>,
    Path(spec): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let (name, verb) = spec.rsplit_once(':').unwrap_or((&spec, ""));
    served(&state, name, None)?;
    let explain = match verb {
        "predict" => false,
        "explain" => true,
        _ => {
            return Err(ApiError::NotFound(format!(
                "POST /v1/models/{spec}: no such verb; allowed: /v1/models/{name}:predict, \
                 /v1/models/{name}:explain"
            )));
        }
    };
    with_deadline(&state, started, async {
        state.serving()?;
        let body = read_body(req, &state).await?;
        let size = state.engine.description().input.size;
        // Megabytes of JSON and base64 are picture work: parsed on the blocking pool.
        let (images, options) = blocking(&state, move || {
            let (instances, options) = request(&body)?;
            let images = instances
                .into_iter()
                .map(|v| instance(v, size))
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, ApiError>((images, options))
        })
        .await??;
        let classes = state.engine.description().classes;
        if !explain {
            let top_k = options.predict(classes)?;
            let answered = run_all(
                &state,
                images,
                Task::Predict { top_k },
                None,
                deadline(&state, started),
            )
            .await?;
            let predictions: Vec<&[Prediction]> = answered
                .iter()
                .map(|a| match &a.output {
                    Output::Predict(p) => p.as_slice(),
                    Output::Explain(r) => r.predictions.as_slice(),
                })
                .collect();
            return Ok(Json(Predicted { predictions }).into_response());
        }
        let r = options.explain(state.config.max_overlay_side, classes)?;
        let keep = r.overlay.map(|o| o.max_side);
        let answered = run_all(
            &state,
            images,
            Task::Explain(r.explain),
            keep,
            deadline(&state, started),
        )
        .await?;
        let (json, time) = blocking(&state, move || {
            let mut time = RenderTime::default();
            let mut answer = Explained::default();
            for a in &answered {
                let Output::Explain(result) = &a.output else {
                    return Err(ApiError::Internal(
                        "an explain job answered predictions".into(),
                    ));
                };
                answer.predictions.push(&result.predictions);
                answer.explanations.push(match &a.decoded {
                    Some(decoded) => {
                        explanation_bodies(decoded, result, r.overlay, &r.pictures, &mut time)?
                    }
                    None => result
                        .explanations
                        .iter()
                        .map(ExplanationBody::new)
                        .collect(),
                });
            }
            let pictures = answer.explanations.iter().flatten();
            let pictures = pictures.flat_map(ExplanationBody::pictures).collect();
            let json = json_with_pictures(&answer, pictures)
                .map_err(|e| ApiError::Internal(format!("the answer did not serialise: {e}")))?;
            Ok::<_, ApiError>((json, time))
        })
        .await??;
        time.record(&state.metrics, true);
        Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
    })
    .await
}

#[derive(Serialize)]
struct Predicted<'a> {
    predictions: Vec<&'a [Prediction]>,
}

#[derive(Default, Serialize)]
struct Explained<'a> {
    predictions: Vec<&'a [Prediction]>,
    explanations: Vec<Vec<ExplanationBody<'a>>>,
}

/// The instances and the options of a request body.
fn request(body: &[u8]) -> Result<(Vec<Value>, RawOptions), ApiError> {
    let doc: serde_json::Map<String, Value> = serde_json::from_slice(body).map_err(|e| {
        ApiError::Malformed(format!(
            "the body is not a JSON object with \"instances\": {e}"
        ))
    })?;
    let mut instances = None;
    let mut options = RawOptions::default();
    for (k, v) in doc {
        match (k.as_str(), v) {
            ("instances" | "inputs", _) if instances.is_some() => {
                return Err(ApiError::Malformed(
                    "send \"instances\" or \"inputs\", not both".into(),
                ));
            }
            ("instances" | "inputs", Value::Array(list)) => instances = Some(list),
            ("instances" | "inputs", _) => {
                return Err(ApiError::Malformed(format!("{k} must be a list")));
            }
            // Each option checks its own type when the options are read.
            (_, v) => options.0.push((k, OptionValue::Json(v))),
        }
    }
    let instances = instances
        .ok_or_else(|| ApiError::Malformed("the body has no \"instances\" list".into()))?;
    Ok((instances, options))
}

/// One instance: an image file in base64, an image URL, or the network's input.
fn instance(v: Value, size: u32) -> Result<Image, ApiError> {
    let what = format!(
        "an instance is {{\"b64\": an image file in base64}}, an image URL (a string or \
         {{\"url\": ...}}), or the network's input as nested lists of 3 x {size} x {size} numbers"
    );
    match v {
        Value::String(url) => Ok(Image::Url(url)),
        Value::Object(o) if o.len() == 1 => match o.into_iter().next() {
            Some((k, Value::String(text))) if k == "b64" => base64_simd::STANDARD
                .decode_to_vec(&text)
                .map(|b| Image::File(Bytes::from(b)))
                .map_err(|_| ApiError::Malformed("an instance's \"b64\" is not base64".into())),
            Some((k, Value::String(url))) if k == "url" => Ok(Image::Url(url)),
            _ => Err(ApiError::Malformed(what)),
        },
        Value::Array(_) => {
            let mut flat = Vec::new();
            flatten(&v, &mut flat);
            let values = flat
                .into_iter()
                .map(|n| n.as_f64().map(|f| f as f32))
                .collect::<Option<Vec<f32>>>()
                .ok_or(ApiError::Malformed(what))?;
            check_tensor(&values, size)?;
            Ok(Image::Tensor(values))
        }
        _ => Err(ApiError::Malformed(what)),
    }
}
