//! The inference protocols of the platforms the service is deployed on, beside its own API and
//! behind the same queue, batching, deadlines, pixel budget, keys and metrics: KServe's v1
//! (`/v1/...`) and the Open Inference Protocol, KServe's v2 and Triton's REST API (`/v2/...`).
//! Refusals on their routes come in their shape, `{"error": "..."}`, with the status and
//! headers the service's own API gives them.

pub mod grpc;
mod kserve;
mod oip;
mod run;
mod tensor;

use super::AppState;
use super::problem::ProblemDetail;
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};

/// The routes that run the model.
pub fn model_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/models/{spec}", get(kserve::model).post(kserve::verb))
        .route("/v2/models/{name}/infer", post(oip::infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(oip::infer),
        )
}

/// Health, metadata and readiness.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/models", get(kserve::models))
        .route("/v2", get(oip::server_metadata))
        .route("/v2/health/live", get(oip::live))
        .route("/v2/health/ready", get(oip::ready))
        .route("/v2/models/{name}", get(oip::model_metadata))
        .route("/v2/models/{name}/ready", get(oip::model_ready))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(oip::model_metadata),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(oip::model_ready),
        )
}

/// The protocol a REST route (or, unmatched, `unmatched`) belongs to, for the metrics:
/// `kserve_v1`, `oip_rest`, or `own` (the service's API, and its unknown routes).
pub fn of_route(route: &str) -> &'static str {
    match route {
        r if r.starts_with("/v1/") => "kserve_v1",
        r if r == "/v2" || r.starts_with("/v2/") => "oip_rest",
        _ => "own",
    }
}

/// Whether a path is one of the protocols'.
fn is_protocol_path(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v1/") || path.starts_with("/v2/")
}

/// A problem (`application/problem+json`) on a protocol's path, unknown routes included, as
/// `{"error": DETAIL}`: the shape both protocols give errors. Status, headers (Retry-After,
/// WWW-Authenticate) and what the metrics read stay; the detail comes with the answer (every
/// problem is made by `ApiError`), so the body is replaced, never parsed.
pub async fn error_shape(req: Request, next: Next) -> Response {
    let protocol = is_protocol_path(req.uri().path());
    let mut res = next.run(req).await;
    if !protocol {
        return res;
    }
    let Some(ProblemDetail(detail)) = res.extensions_mut().remove::<ProblemDetail>() else {
        return res;
    };
    let (mut parts, _) = res.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = serde_json::json!({ "error": detail }).to_string();
    Response::from_parts(parts, Body::from(body))
}
