//! Every error the HTTP layer can answer, and the one place that maps them to status codes and
//! RFC 9457 problem details (`application/problem+json`). Errors of the other layers (decoding,
//! fetching, the engine) arrive through `From` conversions and leave through [`ApiError::parts`].
//! Nothing here logs: an internal error's detail rides along in the response's extensions, and
//! the HTTP layer's middleware logs it and keeps it from the client.

use crate::engine::EngineError;
use crate::fetch::FetchError;
use crate::input::DecodeError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Malformed(String),
    #[error("the request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error(transparent)]
    Image(#[from] DecodeError),
    #[error(
        "decoding this {width}x{height} image would hold {pixels} pixels (what its decoding \
         keeps, plus a third of a pixel per byte of the file), more than the server's whole \
         budget of {limit} pixels in flight"
    )]
    OverBudget {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    #[error("{0}")]
    InvalidOption(String),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{0}")]
    Unauthorized(AuthFailure),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("the multipart form has more than one field \"image\"; send exactly one")]
    MultipleImages,
    #[error("the queue is full; retry shortly")]
    QueueFull,
    #[error(
        "the model would answer this request in at least {at_least_ms} ms (about {likely_ms} ms \
         at its recent pace), past its deadline; retry in {retry_after_s} s or on another instance"
    )]
    Overloaded {
        at_least_ms: u64,
        likely_ms: u64,
        retry_after_s: u64,
    },
    #[error("the model is not ready yet")]
    NotReady,
    #[error("too many large images are being decoded; retry shortly")]
    MemoryBusy,
    #[error("the server is shutting down; retry on another instance")]
    Draining,
    #[error("the model's device is out of memory; retry shortly")]
    OutOfMemory,
    #[error("the model thread has stopped; this instance needs a restart")]
    ModelStopped,
    #[error("the request did not finish within {0} ms")]
    Timeout(u64),
    #[error("the request's deadline passed while it waited for the model")]
    Expired,
    #[error("the request body did not arrive within {0} ms")]
    BodyTimeout(u64),
    /// Details go to the log, never to the client.
    #[error("internal error")]
    Internal(String),
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: String,
}

impl ApiError {
    /// One error of every kind the server answers with, for the tests that hold README.md and
    /// openapi.yaml to this table. The match below has no wildcard, so a new variant does not
    /// compile until it is listed here too.
    pub fn examples() -> Vec<ApiError> {
        let text = String::new;
        let all = vec![
            ApiError::Malformed(text()),
            ApiError::BodyTooLarge { limit: 0 },
            ApiError::UnsupportedMediaType(text()),
            ApiError::Image(DecodeError::Empty),
            ApiError::Image(DecodeError::TooManyPixels {
                width: 0,
                height: 0,
                pixels: 0,
                limit: 0,
            }),
            ApiError::OverBudget {
                width: 0,
                height: 0,
                pixels: 0,
                limit: 0,
            },
            ApiError::InvalidOption(text()),
            ApiError::Fetch(FetchError::InvalidUrl(text())),
            ApiError::Fetch(FetchError::Forbidden(text())),
            ApiError::Fetch(FetchError::Unreachable),
            ApiError::Fetch(FetchError::Timeout),
            ApiError::Fetch(FetchError::TooLarge(0)),
            ApiError::Fetch(FetchError::Upstream(0)),
            ApiError::Unauthorized(AuthFailure::Missing),
            ApiError::NotFound(text()),
            ApiError::MethodNotAllowed(text()),
            ApiError::NotAcceptable(text()),
            ApiError::MultipleImages,
            ApiError::QueueFull,
            ApiError::Overloaded {
                at_least_ms: 0,
                likely_ms: 0,
                retry_after_s: 1,
            },
            ApiError::NotReady,
            ApiError::MemoryBusy,
            ApiError::Draining,
            ApiError::OutOfMemory,
            ApiError::ModelStopped,
            ApiError::Timeout(0),
            ApiError::Expired,
            ApiError::BodyTimeout(0),
            ApiError::Internal(text()),
        ];
        for e in &all {
            match e {
                ApiError::Malformed(_)
                | ApiError::BodyTooLarge { .. }
                | ApiError::UnsupportedMediaType(_)
                | ApiError::Image(_)
                | ApiError::OverBudget { .. }
                | ApiError::InvalidOption(_)
                | ApiError::Fetch(_)
                | ApiError::Unauthorized(_)
                | ApiError::NotFound(_)
                | ApiError::MethodNotAllowed(_)
                | ApiError::NotAcceptable(_)
                | ApiError::MultipleImages
                | ApiError::QueueFull
                | ApiError::Overloaded { .. }
                | ApiError::NotReady
                | ApiError::MemoryBusy
                | ApiError::Draining
                | ApiError::OutOfMemory
                | ApiError::ModelStopped
                | ApiError::Timeout(_)
                | ApiError::Expired
                | ApiError::BodyTimeout(_)
                | ApiError::Internal(_) => {}
            }
        }
        all
    }

    /// Status, stable snake_case type and title.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use StatusCode as S;
        match self {
            ApiError::Malformed(_) => (S::BAD_REQUEST, "malformed_request", "Malformed request"),
            ApiError::BodyTooLarge { .. } => (
                S::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "Request body too large",
            ),
            ApiError::UnsupportedMediaType(_) => (
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
            ),
            ApiError::Image(DecodeError::TooManyPixels { .. }) | ApiError::OverBudget { .. } => (
                S::UNPROCESSABLE_ENTITY,
                "image_too_large",
                "Image too large",
            ),
            ApiError::Image(_) => (S::UNPROCESSABLE_ENTITY, "invalid_image", "Invalid image"),
            ApiError::InvalidOption(_) => {
                (S::UNPROCESSABLE_ENTITY, "invalid_option", "Invalid option")
            }
            ApiError::Fetch(FetchError::InvalidUrl(_)) => {
                (S::UNPROCESSABLE_ENTITY, "invalid_url", "Invalid image URL")
            }
            ApiError::Fetch(FetchError::Forbidden(_)) => {
                (S::FORBIDDEN, "forbidden_source", "Forbidden image source")
            }
            ApiError::Fetch(FetchError::Unreachable) => (
                S::UNPROCESSABLE_ENTITY,
                "source_unreachable",
                "Image source unreachable",
            ),
            ApiError::Fetch(FetchError::Timeout) => (
                S::UNPROCESSABLE_ENTITY,
                "source_timeout",
                "Image source timed out",
            ),
            ApiError::Fetch(FetchError::TooLarge(_)) => (
                S::UNPROCESSABLE_ENTITY,
                "source_too_large",
                "Image at source too large",
            ),
            ApiError::Fetch(FetchError::Upstream(_)) => (
                S::UNPROCESSABLE_ENTITY,
                "upstream_error",
                "Image source error",
            ),
            ApiError::QueueFull => (S::TOO_MANY_REQUESTS, "queue_full", "Too many requests"),
            ApiError::Overloaded { .. } => (S::SERVICE_UNAVAILABLE, "overloaded", "Overloaded"),
            ApiError::NotReady => (S::SERVICE_UNAVAILABLE, "not_ready", "Not ready"),
            ApiError::MemoryBusy => (S::SERVICE_UNAVAILABLE, "memory_busy", "Memory busy"),
            ApiError::Draining => (S::SERVICE_UNAVAILABLE, "draining", "Shutting down"),
            ApiError::OutOfMemory => (
                S::SERVICE_UNAVAILABLE,
                "out_of_memory",
                "Out of device memory",
            ),
            ApiError::ModelStopped => (
                S::SERVICE_UNAVAILABLE,
                "model_stopped",
                "Model thread stopped",
            ),
            ApiError::Unauthorized(_) => (S::UNAUTHORIZED, "unauthorized", "API key required"),
            ApiError::NotFound(_) => (S::NOT_FOUND, "not_found", "Not found"),
            ApiError::MethodNotAllowed(_) => (
                S::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
            ),
            ApiError::NotAcceptable(_) => (S::NOT_ACCEPTABLE, "not_acceptable", "Not acceptable"),
            ApiError::MultipleImages => (
                S::UNPROCESSABLE_ENTITY,
                "multiple_images",
                "More than one image",
            ),
            ApiError::Timeout(_) | ApiError::Expired => {
                (S::GATEWAY_TIMEOUT, "timeout", "Request timed out")
            }
            ApiError::BodyTimeout(_) => {
                (S::REQUEST_TIMEOUT, "body_timeout", "Request body timed out")
            }
            ApiError::Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal", "Internal error"),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::QueueFull => ApiError::QueueFull,
            EngineError::Overloaded { at_least, likely } => ApiError::Overloaded {
                at_least_ms: at_least.as_millis() as u64,
                likely_ms: likely.as_millis() as u64,
                // When the queue ahead will have been served, at the pace clients see.
                retry_after_s: likely.as_secs_f64().ceil().max(1.0) as u64,
            },
            EngineError::Expired => ApiError::Expired,
            EngineError::Stopped => ApiError::Draining,
            EngineError::OutOfMemory => ApiError::OutOfMemory,
            EngineError::Model(m) => ApiError::Internal(m),
            // The reason is in the model thread's log; the client learns where to go.
            EngineError::Lost(_) => ApiError::ModelStopped,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, title) = self.parts();
        let detail = self.to_string();
        let shown = ProblemDetail(detail.clone());
        let body = Problem {
            kind,
            title,
            status: status.as_u16(),
            detail,
        };
        let mut res = (status, axum::Json(body)).into_response();
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if matches!(
            self,
            ApiError::QueueFull
                | ApiError::NotReady
                | ApiError::MemoryBusy
                | ApiError::Draining
                | ApiError::OutOfMemory
        ) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let ApiError::Overloaded { retry_after_s, .. } = &self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
        }
        if let ApiError::Unauthorized(failure) = &self {
            // RFC 6750: a missing key gets the bare challenge, a bad one says why.
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(match failure {
                    AuthFailure::Missing => "Bearer realm=\"gradcam-serve\"",
                    AuthFailure::Malformed => {
                        "Bearer realm=\"gradcam-serve\", error=\"invalid_request\""
                    }
                    AuthFailure::Invalid => {
                        "Bearer realm=\"gradcam-serve\", error=\"invalid_token\""
                    }
                }),
            );
        }
        // Lets the middleware count refusals by reason without parsing the body, and log what
        // went wrong inside without telling the client.
        res.extensions_mut().insert(ProblemType(kind));
        res.extensions_mut().insert(shown);
        if let ApiError::Internal(detail) = self {
            res.extensions_mut().insert(InternalDetail(detail));
        }
        res
    }
}

/// The problem type of an error response, for metrics and traces (also the `source` of a
/// gRPC refusal's status, which never leaves the process).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("{0}")]
pub struct ProblemType(pub &'static str);

/// The problem's `detail`, for the inference protocols, which answer it in their own shape.
#[derive(Debug, Clone)]
pub struct ProblemDetail(pub String);

/// What an internal error was, for the log only.
#[derive(Debug, Clone)]
pub struct InternalDetail(pub String);

/// Why a request was refused for its API key (the reason of a 401 problem; `super::auth`
/// checks the keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is not `Bearer` and a token.
    Malformed,
    /// A token that is no configured key.
    Invalid,
}

impl AuthFailure {
    /// The label of `gradcam_auth_failures_total`.
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Invalid => "invalid",
        }
    }
}

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthFailure::Missing => {
                "this route needs an API key: send the header Authorization: Bearer KEY"
            }
            AuthFailure::Malformed => {
                "the Authorization header must be the word Bearer, a space and the API key"
            }
            AuthFailure::Invalid => "the API key is not valid",
        })
    }
}
