//! What happens to a gRPC call before and after its service sees it, as the REST side's
//! middleware does for a request: the API key is checked on the headers, before a byte of the
//! message is read; the message must arrive within `--body-read-timeout-ms`; a panic becomes
//! INTERNAL; and every call is counted, whatever answered it (the service, tonic's own refusals
//! such as a message over the size limit, the health service) or if the client left first.

use super::convert;
use crate::http::AppState;
use crate::http::problem::ApiError;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Response as HttpResponse};
use axum::middleware::Next;
use axum::response::Response;
use http_body::Frame;
use std::cell::Cell;
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};

tokio::task_local! {
    /// Set by the service when it has counted the call itself (with the exact status).
    static COUNTED: Cell<bool>;
}

/// The service's methods that need a key when the REST side's `/v2/models` routes do.
const KEYED: [&str; 3] = ["ModelReady", "ModelMetadata", "ModelInfer"];

/// Every method this port serves, as metric routes (others are `unmatched`).
const METHODS: [&str; 8] = [
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    "/inference.GRPCInferenceService/ModelReady",
    "/inference.GRPCInferenceService/ServerMetadata",
    "/inference.GRPCInferenceService/ModelMetadata",
    "/inference.GRPCInferenceService/ModelInfer",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
];

/// The route a call to `path` is counted (and traced) under.
pub fn route_of(path: &str) -> &'static str {
    METHODS
        .into_iter()
        .find(|m| *m == path)
        .unwrap_or("unmatched")
}

/// Called by the service for a call it counts and logs itself.
pub fn counted() {
    let _ = COUNTED.try_with(|c| c.set(true));
}

/// The HTTP status a gRPC code means, for the metrics (`gradcam_requests_total`'s `status`).
fn http_status(code: tonic::Code) -> u16 {
    use tonic::Code as C;
    match code {
        C::Ok => 200,
        C::Cancelled => 499,
        C::InvalidArgument | C::FailedPrecondition => 400,
        C::Unauthenticated => 401,
        C::PermissionDenied => 403,
        C::NotFound | C::Unimplemented => 404,
        // tonic's refusal of a message over the size limit.
        C::OutOfRange => 413,
        C::ResourceExhausted => 429,
        C::Unavailable => 503,
        C::DeadlineExceeded => 504,
        _ => 500,
    }
}

/// A call's answer as an axum response.
fn answer(status: tonic::Status) -> Response {
    status.into_http::<Body>()
}

/// Counts a call that the service did not count, when it ends or is dropped.
struct Tally {
    state: AppState,
    route: &'static str,
    /// The answer's status, once known; `None` when the call is dropped (the client left).
    status: Option<u16>,
}

impl Drop for Tally {
    fn drop(&mut self) {
        if COUNTED.try_with(Cell::get).unwrap_or(false) {
            return;
        }
        let status = self.status.unwrap_or(499);
        self.state.metrics.request(self.route, status);
        self.state.metrics.protocol_request("oip_grpc", status);
    }
}

/// The layer: keys, the message's deadline, counting.
pub async fn edge(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = route_of(req.uri().path());
    let keyed = route
        .strip_prefix("/inference.GRPCInferenceService/")
        .is_some_and(|m| KEYED.contains(&m));
    COUNTED
        .scope(Cell::new(false), async move {
            let mut tally = Tally {
                state: state.clone(),
                route,
                status: None,
            };
            if keyed && let Err(e) = authorize(&state, &req) {
                tally.status = Some(401);
                crate::http::log_refusal(route, 401, "unauthorized");
                return answer(convert::status(&e));
            }
            let limit = state.config.body_read_timeout();
            let req = req.map(|body| Body::new(Deadline::new(body, limit)));
            let res = next.run(req).await;
            let code = res
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
                .map_or(tonic::Code::Ok, tonic::Code::from_i32);
            tally.status = Some(http_status(code));
            res
        })
        .await
}

/// The key, in the `authorization` header as REST's (`Bearer KEY`), counted and logged when
/// it is missing or wrong.
fn authorize(state: &AppState, req: &Request) -> Result<(), ApiError> {
    if !state.keys.guards("/v2/models") {
        return Ok(());
    }
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    state.keys.check(presented).map_err(|failure| {
        state.metrics.auth_failure(failure.reason());
        state.metrics.rejection("unauthorized");
        ApiError::Unauthorized(failure)
    })
}

/// A request body that fails once `limit` has passed since the call began: a message that
/// trickles in holds its buffer no longer than a REST body may take to arrive.
struct Deadline {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
    limit_ms: u64,
}

impl Deadline {
    fn new(inner: Body, limit: std::time::Duration) -> Self {
        Self {
            inner,
            sleep: Box::pin(tokio::time::sleep(limit)),
            limit_ms: limit.as_millis() as u64,
        }
    }
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if this.sleep.as_mut().poll(cx).is_ready() {
            let e = ApiError::BodyTimeout(this.limit_ms);
            return Poll::Ready(Some(Err(axum::Error::new(e.to_string()))));
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// What a panic in a call answers: INTERNAL, as the REST side's 500.
pub fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> HttpResponse<Body> {
    answer(tonic::Status::internal("internal error"))
}
