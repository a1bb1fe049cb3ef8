//! The operational routes: health, metrics, `/info`, the label list, the OpenAPI document, and
//! the answer for routes that do not exist.

use super::AppState;
use super::bodies::{InfoBody, Label, LabelsBody, StatusBody};
use super::problem::ApiError;
use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

/// Live unless the model thread has died outside a shutdown: then only a restart helps.
pub async fn live(State(state): State<AppState>) -> Result<Json<StatusBody>, ApiError> {
    if !state.engine.is_alive() && !state.is_draining() {
        return Err(ApiError::ModelStopped);
    }
    Ok(Json(StatusBody { status: "live" }))
}

/// Ready when new work is welcome: the model serves and no shutdown has begun.
pub async fn ready(State(state): State<AppState>) -> Result<Json<StatusBody>, ApiError> {
    state.ready()?;
    Ok(Json(StatusBody { status: "ready" }))
}

/// The Prometheus text format, or OpenMetrics (with latency exemplars: the traces of requests
/// in each bucket) for a scraper whose `Accept` prefers it.
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let open = super::negotiate::choose(accept, &["text/plain", "application/openmetrics-text"])
        .is_ok_and(|t| t == "application/openmetrics-text");
    let mut text = state.metrics.render(open);
    // What the instance is now, read at the scrape: alerts on readiness flapping and on a
    // saturated queue need them beside the counters.
    crate::metrics::gauge(
        &mut text,
        "gradcam_ready",
        "Whether this instance takes new work: 1 when /health/ready answers 200, else 0.",
        u64::from(state.ready().is_ok()),
    );
    crate::metrics::gauge(
        &mut text,
        "gradcam_queue_capacity",
        "Images the queue holds at most (--queue-capacity).",
        state.config.queue_capacity as u64,
    );
    crate::telemetry::render_metrics(&mut text);
    if open {
        let text = crate::metrics::openmetrics(&text);
        return ([(header::CONTENT_TYPE, crate::metrics::OPENMETRICS)], text).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

pub async fn info(State(state): State<AppState>) -> Json<InfoBody> {
    Json(InfoBody::new(state.engine.description(), &state.config))
}

pub async fn labels(State(state): State<AppState>) -> Response {
    let names = &state.engine.description().labels;
    let labels = names
        .iter()
        .enumerate()
        .map(|(index, label)| Label { index, label })
        .collect();
    Json(LabelsBody { labels }).into_response()
}

pub async fn openapi(State(state): State<AppState>) -> Response {
    let d = state.engine.description();
    let example = example_class(d.classes);
    let model = DocModel {
        name: &d.model,
        classes: d.classes,
        labels_source: &d.labels_source,
        example: (example, d.labels.get(example)),
    };
    (
        [(header::CONTENT_TYPE, "application/yaml")],
        document_for(&model).into_owned(),
    )
        .into_response()
}

/// The class the documents and the playground show as an example: 281 (ImageNet's "tabby"),
/// or the last class of a model with fewer.
pub fn example_class(classes: usize) -> usize {
    281.min(classes.saturating_sub(1))
}

/// What the served document says about the model.
pub struct DocModel<'a> {
    /// The architecture, e.g. `resnet50`.
    pub name: &'a str,
    pub classes: usize,
    /// Where the labels come from: a file, `imagenet` or `generic`.
    pub labels_source: &'a str,
    /// The example class of the answers' examples: its index and name.
    pub example: (usize, &'a str),
}

/// openapi.yaml as this server's model makes it true: the document is written for ImageNet's
/// ResNet-50; the model named, the class indexes, the number of labels, `top_k` (for fewer
/// classes than its limits) and the example class of the answers follow the model's.
pub fn document_for(model: &DocModel) -> std::borrow::Cow<'static, str> {
    const DOC: &str = include_str!("../../openapi.yaml");
    let DocModel {
        name,
        classes,
        labels_source,
        example: (index, label),
    } = *model;
    if classes == 1000 && name == "resnet50" && labels_source == "imagenet" {
        return DOC.into();
    }
    let last = classes.saturating_sub(1);
    let mut doc = DOC.replace(
        "ResNet-50 (ImageNet-1k) image classification",
        &format!("A {name} ({classes} classes): image classification"),
    );
    // The examples' class (another than ImageNet's tabby), as a YAML scalar (JSON's quoting is
    // valid YAML).
    if (index, label) != (281, "tabby") {
        let quoted = serde_json::Value::from(label).to_string();
        doc = doc.replace(
            "{ index: 281, label: tabby,",
            &format!("{{ index: {index}, label: {quoted},"),
        );
        doc = doc.replace("class_index: 281\n", &format!("class_index: {index}\n"));
        doc = doc.replace("label: tabby\n", &format!("label: {quoted}\n"));
    }
    doc = doc.replace(
        "The 1000 ImageNet class names by index.",
        &format!("The model's {classes} class names by index."),
    );
    for bound in ["minItems", "maxItems"] {
        doc = doc.replace(
            &format!("{bound}: 1000\n"),
            &format!("{bound}: {classes}\n"),
        );
    }
    let predict = crate::http::options::MAX_PREDICT_TOP_K;
    if classes < predict {
        doc = doc.replace(
            &format!("minimum: 1, maximum: {predict}, default: 5 }}"),
            &format!(
                "minimum: 1, maximum: {classes}, default: {} }}",
                classes.min(5)
            ),
        );
        doc = doc.replace(
            &format!("top_k: {{ type: integer, minimum: 1, maximum: {predict} }}"),
            &format!("top_k: {{ type: integer, minimum: 1, maximum: {classes} }}"),
        );
    }
    doc = doc.replace(
        "minimum: 0, maximum: 999 }",
        &format!("minimum: 0, maximum: {last} }}"),
    );
    let top_k = crate::backend::MAX_TOP_K;
    if classes < top_k {
        doc = doc.replace(
            &format!("top_k: {{ type: integer, minimum: 1, maximum: {top_k} }}"),
            &format!("top_k: {{ type: integer, minimum: 1, maximum: {classes} }}"),
        );
        doc = doc.replace(
            &format!("schema: {{ type: integer, minimum: 1, maximum: {top_k}, default: 1 }}"),
            &format!("schema: {{ type: integer, minimum: 1, maximum: {classes}, default: 1 }}"),
        );
    }
    doc.into()
}

pub async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!(
        "no route {} {}; see /openapi.yaml",
        req.method(),
        req.uri().path()
    ))
}

/// A known route with a method it does not have; axum adds the `Allow` header.
pub async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{} is not allowed on {}; the Allow header lists the methods that are",
        req.method(),
        req.uri().path()
    ))
}

#[cfg(test)]
mod tests {
    use super::{DocModel, document_for, example_class};

    fn model<'a>(name: &'a str, classes: usize, labels: &'a str, example: &'a str) -> DocModel<'a> {
        DocModel {
            name,
            classes,
            labels_source: labels,
            example: (example_class(classes), example),
        }
    }

    #[test]
    fn the_document_follows_the_class_count() {
        let default = document_for(&model("resnet50", 1000, "imagenet", "tabby"));
        assert_eq!(default.matches("maximum: 999 }").count(), 6);
        let seven = document_for(&model("resnet18", 7, "labels7.txt", "seven: \"7\""));
        assert!(!seven.contains("maximum: 999"));
        assert_eq!(seven.matches("minimum: 0, maximum: 6 }").count(), 6);
        // top_k of /explain and /predict in the form and the JSON body.
        assert_eq!(seven.matches("minimum: 1, maximum: 7 }").count(), 4);
        assert_eq!(
            seven
                .matches("minimum: 1, maximum: 7, default: 1 }")
                .count(),
            1
        );
        // The model, the labels and /predict's top_k follow too.
        assert!(default.contains("ResNet-50 (ImageNet-1k)") && default.contains("maxItems: 1000"));
        assert!(!seven.contains("ResNet-50") && seven.contains("A resnet18 (7 classes)"));
        assert_eq!(seven.matches("minItems: 7\n").count(), 1);
        assert_eq!(seven.matches("maxItems: 7\n").count(), 1);
        assert_eq!(
            seven
                .matches("minimum: 1, maximum: 7, default: 5 }")
                .count(),
            1
        );
        assert_eq!(
            seven
                .matches("top_k: { type: integer, minimum: 1, maximum: 7 }")
                .count(),
            4
        );
        assert!(!seven.contains("maximum: 1000"));
        // The answers' examples name the model's own class, quoted as YAML reads it back.
        assert!(default.contains("{ index: 281, label: tabby,"));
        assert!(!seven.contains("tabby") && !seven.contains("281"));
        assert_eq!(
            seven
                .matches("{ index: 6, label: \"seven: \\\"7\\\"\",")
                .count(),
            2
        );
        assert!(
            seven.contains("class_index: 6\n") && seven.contains("label: \"seven: \\\"7\\\"\"\n")
        );
        // ImageNet's class count with other names is not ImageNet.
        let own = document_for(&model("resnet50", 1000, "mine.txt", "x"));
        assert!(!own.contains("ImageNet-1k") && own.contains("{ index: 281, label: \"x\","));
        let many = document_for(&model("resnet50", 5000, "generic", "class_281"));
        assert_eq!(many.matches("minimum: 0, maximum: 4999 }").count(), 6);
        assert_eq!(many.matches("minimum: 1, maximum: 10 }").count(), 2);
    }
}
