//! The Open Inference Protocol (KServe's v2, Triton's HTTP/REST API): health, server and model
//! metadata, readiness and inference, with JSON tensors and the binary tensor data extension.
//!
//! The model takes one input, either `image` (BYTES, shape `[N]`: encoded image files, any
//! format `/explain` takes) or `input` (FP32 `[N, 3, S, S]`: the network's input, already
//! preprocessed). It answers with the outputs asked for (all by default): `probabilities` (FP32
//! `[N, C]`), `class_index` (INT64 `[N, k]`), `label` (BYTES `[N, k]`), `heatmap` and
//! `heatmap_normalized` (FP32 `[N, k, h, w]`) and `overlay` (BYTES `[N, k]`, the picture in
//! `overlay_format`). `/explain`'s options are the request's `parameters`.

use super::run::{Answered, Image, MODEL_VERSION, check_tensor, run_all, served_at};
use super::tensor::{self, Contents, Data, InferRequest, Tensor};
use crate::backend::{self, Description};
use crate::engine::{Output, Task};
use crate::http::AppState;
use crate::http::answer::{RenderTime, draw};
use crate::http::explain::{deadline, with_deadline};
use crate::http::input::read_body;
use crate::http::options::{ExplainRequest, RawOptions, Value as OptionValue};
use crate::http::problem::ApiError;
use crate::http::work::blocking;
use crate::metrics::Clock;
use axum::Json;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use serde_json::{Map, Value, json};
use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Instant;

/// Every output, in the order they are answered by default.
const OUTPUTS: [&str; 6] = [
    "probabilities",
    "class_index",
    "label",
    "heatmap",
    "heatmap_normalized",
    "overlay",
];

/// The outputs that need the backward pass.
const EXPLAINING: [&str; 3] = ["heatmap", "heatmap_normalized", "overlay"];

/// A request parameter that is the protocol's, not one of `/explain`'s options.
const BINARY_OUTPUT: &str = "binary_data_output";

pub async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "gradcam-serve",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

pub async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

pub async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.ready()?;
    Ok(Json(json!({ "ready": true })))
}

pub async fn model_ready(
    State(state): State<AppState>,
    Path(path): Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let name = served_at(&state, &path)?;
    state.ready()?;
    Ok(Json(json!({ "name": name, "ready": true })))
}

pub async fn model_metadata(
    State(state): State<AppState>,
    Path(path): Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let name = served_at(&state, &path)?;
    Ok(Json(metadata(&name, state.engine.description())))
}

/// One tensor of the model's metadata (-1 in a shape: any size).
pub(super) struct TensorSpec {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

/// The platform the metadata names.
pub(super) const PLATFORM: &str = "gradcam-serve";

/// What the model takes and gives: its inputs and its outputs, for both transports.
pub(super) fn tensors(d: &Description) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    let s = i64::from(d.input.size);
    let t = |name, datatype, shape: &[i64]| TensorSpec {
        name,
        datatype,
        shape: shape.to_vec(),
    };
    let inputs = vec![
        t("image", "BYTES", &[-1]),
        t("input", "FP32", &[-1, 3, s, s]),
    ];
    let outputs = vec![
        t("probabilities", "FP32", &[-1, d.classes as i64]),
        t("class_index", "INT64", &[-1, -1]),
        t("label", "BYTES", &[-1, -1]),
        t("heatmap", "FP32", &[-1, -1, -1, -1]),
        t("heatmap_normalized", "FP32", &[-1, -1, -1, -1]),
        t("overlay", "BYTES", &[-1, -1]),
    ];
    (inputs, outputs)
}

/// The model's metadata in JSON.
fn metadata(name: &str, d: &Description) -> Value {
    let (inputs, outputs) = tensors(d);
    let list = |l: Vec<TensorSpec>| -> Vec<Value> {
        l.into_iter()
            .map(|t| json!({ "name": t.name, "datatype": t.datatype, "shape": t.shape }))
            .collect()
    };
    json!({
        "name": name,
        "versions": [MODEL_VERSION],
        "platform": PLATFORM,
        "inputs": list(inputs),
        "outputs": list(outputs),
    })
}

/// What one request asks for.
pub(super) struct Plan {
    /// The outputs to answer, in order, each with whether it goes as binary data.
    outputs: Vec<(&'static str, bool)>,
    options: ExplainRequest,
    task: Task,
    keep: Option<u32>,
}

impl Plan {
    fn of(state: &AppState, request: &InferRequest, images: bool) -> Result<Self, ApiError> {
        let classes = state.engine.description().classes;
        let mut binary_default = false;
        let mut raw = RawOptions::default();
        for (k, v) in &request.parameters {
            if k == BINARY_OUTPUT {
                binary_default = v.as_bool().ok_or_else(|| {
                    ApiError::InvalidOption(format!("{BINARY_OUTPUT} must be true or false"))
                })?;
            } else {
                raw.0.push((k.clone(), OptionValue::Json(v.clone())));
            }
        }
        let options = raw.explain(state.config.max_overlay_side, classes)?;
        let mut outputs = Vec::new();
        for o in &request.outputs {
            let name = OUTPUTS.into_iter().find(|n| *n == o.name).ok_or_else(|| {
                ApiError::Malformed(format!(
                    "unknown output {:?}; allowed: {}",
                    o.name,
                    OUTPUTS.join(", ")
                ))
            })?;
            if outputs.iter().any(|(n, _)| *n == name) {
                return Err(ApiError::Malformed(format!("output {name} is asked twice")));
            }
            let binary = match o.parameters.get("binary_data") {
                None => binary_default,
                Some(v) => v.as_bool().ok_or_else(|| {
                    ApiError::Malformed(format!("output {name}: binary_data must be a boolean"))
                })?,
            };
            outputs.push((name, binary));
        }
        let drawable = images && options.overlay.is_some();
        if outputs.is_empty() {
            outputs = OUTPUTS
                .into_iter()
                .filter(|n| *n != "overlay" || drawable)
                .map(|n| (n, binary_default))
                .collect();
        }
        let overlay = outputs.iter().any(|(n, _)| *n == "overlay");
        if overlay && !drawable {
            return Err(ApiError::InvalidOption(if images {
                "the output overlay was asked for with overlay=false".into()
            } else {
                "the output overlay needs the image input: a tensor has no picture to draw on"
                    .into()
            }));
        }
        let explain = outputs.iter().any(|(n, _)| EXPLAINING.contains(n));
        let task = if explain {
            Task::Explain(options.explain)
        } else {
            Task::Predict { top_k: classes }
        };
        let keep = options.overlay.filter(|_| overlay).map(|o| o.max_side);
        Ok(Plan {
            outputs,
            options,
            task,
            keep,
        })
    }
}

/// The request's images, from its one input (`size`: the network's input side).
pub(super) fn images(
    size: u32,
    request: &InferRequest,
    contents: Vec<Contents>,
) -> Result<Vec<Image>, ApiError> {
    let one = "send one input: image (BYTES, shape [N], encoded image files) or input (FP32, \
               shape [N, 3, S, S], preprocessed)";
    let (Some(input), Some(contents), 1) = (
        request.inputs.first(),
        contents.into_iter().next(),
        request.inputs.len(),
    ) else {
        return Err(ApiError::Malformed(one.into()));
    };
    match (input.name.as_str(), contents) {
        ("image", Contents::Bytes(files)) if matches!(input.shape.as_slice(), [_] | [_, 1]) => {
            Ok(files.into_iter().map(Image::File).collect())
        }
        ("input", Contents::Fp32(mut values)) if matches!(input.shape.as_slice(), [_, 3, h, w] if *h == i64::from(size) && *w == i64::from(size)) =>
        {
            // Each image's values cut from the end, so that the first (the only one, usually)
            // keeps the request's buffer instead of a copy.
            let each = 3 * (size as usize).pow(2);
            if values.is_empty() || values.len() % each != 0 {
                check_tensor(&values, size)?;
            }
            let mut tensors = Vec::with_capacity(values.len() / each);
            while values.len() > each {
                tensors.push(values.split_off(values.len() - each));
            }
            tensors.push(values);
            tensors
                .into_iter()
                .rev()
                .map(|x| check_tensor(&x, size).map(|()| Image::Tensor(x)))
                .collect()
        }
        ("image" | "input", _) => Err(ApiError::Malformed(format!(
            "input {} must be {}; got {} {:?}",
            input.name,
            if input.name == "image" {
                "BYTES of shape [N]".to_string()
            } else {
                format!("FP32 of shape [N, 3, {size}, {size}]")
            },
            input.datatype,
            input.shape
        ))),
        (other, _) => Err(ApiError::Malformed(format!(
            "unknown input {other:?}; {one}"
        ))),
    }
}

pub async fn infer(
    State(state): State<AppState>,
    Path(path): Path<HashMap<String, String>>,
    req: Request,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let name = served_at(&state, &path)?;
    with_deadline(&state, started, async {
        state.serving()?;
        let headers = req.headers().clone();
        let body = read_body(req, &state).await?;
        let size = state.engine.description().input.size;
        // Megabytes of JSON, base64 or binary tensors are picture work: read on the blocking
        // pool, as the answer is made there.
        let (request, images) = blocking(&state, move || {
            let (request, binary) = tensor::split(&headers, body)?;
            let contents = tensor::contents(&request.inputs, binary)?;
            let images = images(size, &request, contents)?;
            Ok::<_, ApiError>((request, images))
        })
        .await??;
        let (plan, answered) =
            run_plan(&state, &request, images, deadline(&state, started)).await?;
        let engine = state.engine.clone();
        let mut head = Map::new();
        head.insert("model_name".into(), Value::String(name));
        head.insert("model_version".into(), Value::String(MODEL_VERSION.into()));
        if let Some(id) = request.id {
            head.insert("id".into(), Value::String(id));
        }
        let (answer, time) = blocking(&state, move || {
            let mut time = RenderTime::default();
            let outputs = outputs(&plan, engine.description(), &answered, &mut time)?;
            let (answer, took) = Clock::time(|| tensor::answer(head, &outputs));
            time.serialized(took);
            Ok::<_, ApiError>((answer?, time))
        })
        .await??;
        time.record(&state.metrics, true);
        Ok(answer)
    })
    .await
}

/// Plans a request (its images read by either transport) and runs its images through the
/// service, to be answered by `deadline`.
pub(super) async fn run_plan(
    state: &AppState,
    request: &InferRequest,
    images: Vec<Image>,
    deadline: Instant,
) -> Result<(Plan, Vec<Answered>), ApiError> {
    let files = matches!(images.first(), Some(Image::File(_)));
    let plan = Plan::of(state, request, files)?;
    let answered = run_all(state, images, plan.task, plan.keep, deadline).await?;
    Ok((plan, answered))
}

/// The classes each image's answer is about, with their labels.
fn targets(plan: &Plan, d: &Description, output: &Output) -> Vec<(i64, String)> {
    match output {
        Output::Explain(r) => r
            .explanations
            .iter()
            .map(|e| (e.class_index, e.label.clone()))
            .collect(),
        Output::Predict(predictions) => backend::targets(&plan.options.explain, predictions)
            .into_iter()
            .map(|c| (c, d.labels.get(c as usize).to_string()))
            .collect(),
    }
}

/// Every class's probability, in class order.
fn probabilities<'a>(d: &Description, output: &'a Output) -> Cow<'a, [f32]> {
    match output {
        Output::Explain(r) => Cow::Borrowed(&r.probabilities),
        Output::Predict(predictions) => {
            let mut p = vec![0.0; d.classes];
            for prediction in predictions {
                p[prediction.index as usize] = prediction.probability;
            }
            Cow::Owned(p)
        }
    }
}

/// The outputs the plan asks for, over all images, drawing overlays where asked.
pub(super) fn outputs(
    plan: &Plan,
    d: &Description,
    answered: &[Answered],
    time: &mut RenderTime,
) -> Result<Vec<Tensor>, ApiError> {
    let n = answered.len();
    let targets: Vec<_> = answered
        .iter()
        .map(|a| targets(plan, d, &a.output))
        .collect();
    let k = targets.first().map_or(0, Vec::len);
    let explanations = || {
        answered.iter().flat_map(|a| match &a.output {
            Output::Explain(r) => r.explanations.as_slice(),
            Output::Predict(_) => &[],
        })
    };
    let (h, w) = explanations()
        .next()
        .map_or((0, 0), |e| (e.heatmap.height, e.heatmap.width));
    let mut out = Vec::with_capacity(plan.outputs.len());
    for &(name, binary) in &plan.outputs {
        let (shape, data) = match name {
            "probabilities" => {
                let mut all = Vec::with_capacity(n * d.classes);
                for a in answered {
                    all.extend_from_slice(&probabilities(d, &a.output));
                }
                (vec![n, d.classes], Data::Fp32(all))
            }
            "class_index" => (
                vec![n, k],
                Data::Int64(targets.iter().flatten().map(|t| t.0).collect()),
            ),
            "label" => (
                vec![n, k],
                Data::Text(targets.iter().flatten().map(|t| t.1.clone()).collect()),
            ),
            "heatmap" => (
                vec![n, k, h, w],
                Data::Fp32(
                    explanations()
                        .flat_map(|e| e.heatmap.data.iter().copied())
                        .collect(),
                ),
            ),
            "heatmap_normalized" => (
                vec![n, k, h, w],
                Data::Fp32(
                    explanations()
                        .flat_map(|e| e.normalized.iter().copied())
                        .collect(),
                ),
            ),
            _ => {
                let overlay = plan.options.overlay.unwrap_or_default();
                let mut files = Vec::with_capacity(n * k);
                for a in answered {
                    let (Some(decoded), Output::Explain(r)) = (&a.decoded, &a.output) else {
                        return Err(ApiError::Internal("an overlay without its picture".into()));
                    };
                    for e in &r.explanations {
                        files.push(draw(decoded, e, &overlay, &plan.options.pictures, time)?);
                    }
                }
                (vec![n, k], Data::Files(files))
            }
        };
        out.push(Tensor {
            name,
            shape,
            data,
            binary,
        });
    }
    Ok(out)
}
