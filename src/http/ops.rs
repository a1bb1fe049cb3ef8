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

pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/yaml")],
        include_str!("../../openapi.yaml"),
    )
        .into_response()
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
