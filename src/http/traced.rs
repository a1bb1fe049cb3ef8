//! Each request's span, when traces are on: the root of the request's trace, or the next span
//! of its client's (W3C `traceparent` and `tracestate`). It carries the HTTP semantic
//! conventions' attributes (method, route, status, body sizes; for gRPC the service, method
//! and code), the problem type of a refusal as `error.type`, and the answer names it back in
//! `traceresponse`. The path only of a route the server has (a client's made-up path is not
//! kept), and never the query, the headers (API keys) or the body. Installed only when traces
//! are exported; `/health/*` and `/metrics` are not traced.

use super::Route;
use super::problem::ProblemType;
use crate::telemetry;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use tracing::field::Empty;

/// The REST side's requests.
pub async fn rest(req: Request, next: Next) -> Response {
    traced(req, next, None).await
}

/// A gRPC call; `method` is the route it is counted under (`/service/method`, or `unmatched`).
pub async fn grpc(method: &'static str, req: Request, next: Next) -> Response {
    traced(req, next, Some(method)).await
}

/// Names the span as the semantic conventions do (`POST /explain`, `service/method`), once
/// the route is known.
fn rename(span: &tracing::Span, name: String) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    span.context().span().update_name(name);
}

fn length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

async fn traced(req: Request, next: Next, grpc: Option<&'static str>) -> Response {
    // Probes and scrapes are not traced: a trace every few seconds per replica says nothing.
    let path = req.uri().path().to_string();
    if grpc.is_none() && (path.starts_with("/health/") || path == "/metrics") {
        return next.run(req).await;
    }
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = Empty,
        http.request.body.size = Empty,
        http.response.status_code = Empty,
        http.response.body.size = Empty,
        url.path = Empty,
        url.scheme = "http",
        network.protocol.version = ?req.version(),
        error.type = Empty,
        rpc.system = Empty,
        rpc.service = Empty,
        rpc.method = Empty,
        rpc.grpc.status_code = Empty,
    );
    telemetry::continue_from(&span, req.headers());
    if let Some(n) = length(req.headers()) {
        span.record("http.request.body.size", n as i64);
    }
    if let Some(route) = grpc {
        span.record("rpc.system", "grpc");
        let name = route.trim_start_matches('/');
        if let Some((service, rpc)) = name.split_once('/') {
            span.record("rpc.service", service);
            span.record("rpc.method", rpc);
        }
        rename(&span, name.to_string());
    }
    let mut res = next.run(req).instrument(span.clone()).await;
    let status = res.status().as_u16();
    span.record("http.response.status_code", i64::from(status));
    if let Some(n) = length(res.headers()) {
        span.record("http.response.body.size", n as i64);
    }
    if grpc.is_some() {
        let code = res
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
            .unwrap_or(0);
        span.record("rpc.grpc.status_code", i64::from(code));
        if code != 0 {
            // The problem type when ours refused it, else the code (tonic's own refusals).
            let problem = res
                .extensions()
                .get::<tonic::Status>()
                .and_then(|s| std::error::Error::source(s)?.downcast_ref::<ProblemType>())
                .map(|p| p.0.to_string());
            let code = format!("{:?}", tonic::Code::from_i32(code));
            span.record("error.type", problem.unwrap_or(code));
        }
        // The server's fault: INTERNAL, UNAVAILABLE, UNKNOWN, DATA_LOSS, DEADLINE_EXCEEDED.
        if [2, 4, 13, 14, 15].contains(&code) {
            span.record("otel.status_code", "ERROR");
        }
    } else {
        let route = res.extensions().get::<Route>().map(|r| r.0.clone());
        match &route {
            Some(r) => {
                span.record("http.route", r.as_str());
                span.record("url.path", path.as_str());
                rename(&span, format!("{method} {r}"));
            }
            None => {
                rename(&span, method.to_string());
            }
        }
        if status >= 400 {
            let problem = res.extensions().get::<ProblemType>().map(|p| p.0);
            span.record("error.type", problem.unwrap_or(res.status().as_str()));
        }
        if status >= 500 {
            span.record("otel.status_code", "ERROR");
        }
    }
    if let Some(value) =
        telemetry::traceresponse(&span).and_then(|v| HeaderValue::from_str(&v).ok())
    {
        res.headers_mut().insert("traceresponse", value);
    }
    res
}
