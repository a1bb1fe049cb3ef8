//! The operational routes: health, metrics, `/info`, the label list, the OpenAPI document, and
//! the answer for routes that do not exist.

use super::AppState;
use super::bodies::{InfoBody, Label, LabelsBody, StatusBody};
use super::problem::ApiError;
use axum::Json;
use axum::extract::{Request, State};
use axum::http::header;
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
    let description = state.engine.description();
    (
        [(header::CONTENT_TYPE, "application/yaml")],
        document_for(description.classes, &description.model).into_owned(),
    )
        .into_response()
}

/// openapi.yaml as this server's model makes it true: the document is written for ImageNet's
/// ResNet-50; the model named, the class indexes, the number of labels and `top_k` (for fewer
/// classes than its limits) follow the model's.
pub fn document_for(classes: usize, model: &str) -> std::borrow::Cow<'static, str> {
    const DOC: &str = include_str!("../../openapi.yaml");
    if classes == 1000 && model == "resnet50" {
        return DOC.into();
    }
    let last = classes.saturating_sub(1);
    let mut doc = DOC.replace(
        "ResNet-50 (ImageNet-1k) image classification",
        &format!("A {model} ({classes} classes): image classification"),
    );
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
    use super::document_for;

    #[test]
    fn the_document_follows_the_class_count() {
        let default = document_for(1000, "resnet50");
        assert_eq!(default.matches("maximum: 999 }").count(), 6);
        let seven = document_for(7, "resnet18");
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
        let many = document_for(5000, "resnet50");
        assert_eq!(many.matches("minimum: 0, maximum: 4999 }").count(), 6);
        assert_eq!(many.matches("minimum: 1, maximum: 10 }").count(), 2);
    }
}
