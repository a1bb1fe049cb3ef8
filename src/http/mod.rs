//! The HTTP service: routes, shared state, middleware, and serving a bound listener until
//! shutdown.
//!
//! Knows nothing of tensors: it turns requests into preprocessed images (on the blocking pool),
//! hands them to the [`Engine`], and renders the answers (on the blocking pool again). Any
//! backend behind the engine will do, which is how the in-process tests run without a model.

mod answer;
mod auth;
mod bodies;
mod budget;
mod explain;
mod input;
mod listen;
mod negotiate;
mod ops;
pub mod options;
pub mod problem;
mod protocols;
mod traced;
mod ui;
mod work;

use crate::config::ServeConfig;
use crate::engine::Engine;
use crate::fetch::Fetcher;
use crate::metrics::Metrics;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use problem::{ApiError, InternalDetail, ProblemType};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::{CompressionLayer, CompressionLevel};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ServeConfig>,
    pub engine: Arc<Engine>,
    pub metrics: Arc<Metrics>,
    pub fetcher: Fetcher,
    /// API keys and the routes that need one.
    keys: auth::ApiKeys,
    /// Decoded pixels in flight, over all requests.
    budget: budget::PixelBudget,
    /// Permits to decode, preprocess or render on the blocking pool (`--image-threads`).
    image_work: Arc<tokio::sync::Semaphore>,
    /// Shutdown has begun: readiness is 503 (work is still served during the drain delay).
    draining: Arc<AtomicBool>,
    /// The drain delay is over: the listener is closed and new work is refused.
    closing: Arc<AtomicBool>,
}

impl AppState {
    /// State for a started engine; the URL fetcher follows the configuration.
    pub fn new(config: Arc<ServeConfig>, engine: Arc<Engine>, metrics: Arc<Metrics>) -> Self {
        let fetcher = Fetcher::new(config.fetch_config());
        Self::with_fetcher(config, engine, metrics, fetcher)
    }

    /// State with a URL fetcher of the caller's (tests use a stub name resolver).
    pub fn with_fetcher(
        config: Arc<ServeConfig>,
        engine: Arc<Engine>,
        metrics: Arc<Metrics>,
        fetcher: Fetcher,
    ) -> Self {
        let budget = budget::PixelBudget::new(
            config.max_inflight_pixels,
            std::time::Duration::from_millis(config.inflight_wait_ms),
            metrics.clone(),
        );
        let keys = auth::ApiKeys::new(config.api_keys(), &config.api_key_paths);
        let image_work = Arc::new(tokio::sync::Semaphore::new(config.image_threads()));
        Self {
            config,
            engine,
            metrics,
            fetcher,
            keys,
            budget,
            image_work,
            draining: Arc::new(AtomicBool::new(false)),
            closing: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Shutdown has begun: readiness is 503.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Readiness turns 503; work is still taken until [`Self::stop_taking_work`].
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// New work is refused with 503 `draining` (readiness turns 503 too).
    pub fn stop_taking_work(&self) {
        self.start_draining();
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Whether this instance is ready for new work: what `/health/ready` says.
    fn ready(&self) -> Result<(), ApiError> {
        if self.is_draining() {
            return Err(ApiError::Draining);
        }
        self.serving()
    }

    /// Whether this instance takes new work now: still during the drain delay, so that a
    /// balancer that has not yet seen readiness turn 503 gets answers, not refusals.
    fn serving(&self) -> Result<(), ApiError> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(ApiError::Draining);
        }
        if !self.engine.is_alive() {
            return Err(ApiError::ModelStopped);
        }
        if !self.engine.is_healthy() {
            return Err(ApiError::NotReady);
        }
        Ok(())
    }
}

/// The router with every route and layer.
pub fn app(state: AppState) -> Router {
    let model_routes = Router::new()
        .route("/explain", post(explain::explain))
        .route("/predict", post(explain::predict))
        .merge(protocols::model_routes());
    // Test builds: the fault a request to the model names travels beside its job (see
    // `crate::fault`); the other routes never reach the model and ignore the header.
    #[cfg(feature = "fault-injection")]
    let model_routes = model_routes.route_layer(middleware::from_fn(injected_fault));
    let router = Router::new()
        .merge(model_routes)
        .merge(protocols::routes())
        .route("/health/live", get(ops::live))
        .route("/health/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/info", get(ops::info))
        .route("/labels", get(ops::labels))
        .route("/openapi.yaml", get(ops::openapi));
    let router = ui::routes(router, state.config.ui)
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::guard))
        .route_layer(middleware::from_fn(tag_route))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(middleware::from_fn(protocols::error_shape))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        // Our own body limit check gives the problem response; this one stops axum's default
        // 2 MB cap on multipart from getting in first.
        .layer(axum::extract::DefaultBodyLimit::max(
            state.config.body_limit,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("a request handler panicked".into()).into_response()
        }))
        // JSON, YAML, HTML and text are compressed when the client accepts gzip or br; images
        // (PNG, JPEG, WebP) and bodies under 32 bytes are sent as they are. At the fastest
        // level: a JSON answer is mostly base64 of an already compressed picture, whose only
        // redundancy (6 bits in each 8) the entropy coder alone takes out, and compression runs
        // on the async runtime's threads (see README's "Compact answers").
        .layer(CompressionLayer::new().quality(CompressionLevel::Fastest))
        // Failures are logged by `observe`, with the route and the problem type, at the level
        // their cause deserves (the default logs every 5xx, expected overload too, at ERROR).
        .layer(TraceLayer::new_for_http().on_failure(()));
    let origins = state.config.cors();
    let router = if origins.is_empty() {
        router
    } else {
        router.layer(cors(&origins))
    };
    // Outermost: the request's span covers everything the server does for it.
    let router = if crate::telemetry::enabled() {
        router.layer(middleware::from_fn(traced::rest))
    } else {
        router
    };
    router.with_state(state)
}

fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            axum::http::header::CONTENT_TYPE,
            axum::http::header::ACCEPT,
            axum::http::header::AUTHORIZATION,
        ])
        .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
        .max_age(std::time::Duration::from_secs(PREFLIGHT_MAX_AGE_S))
}

/// Every response header the documentation promises that a page on another origin could not
/// read otherwise (CORS safelists only a few, such as Content-Type and Content-Length).
pub const EXPOSED_HEADERS: [&str; 11] = [
    answer::TIMING_HEADERS[0],
    answer::TIMING_HEADERS[1],
    answer::TIMING_HEADERS[2],
    "x-class-index",
    "x-class-label",
    "x-method",
    "x-layer",
    "retry-after",
    "www-authenticate",
    "allow",
    "traceresponse",
];

/// How long a browser may cache a preflight answer, in seconds (Chromium caps it at 2 hours).
pub const PREFLIGHT_MAX_AGE_S: u64 = 3600;

/// Test builds: reads `x-gradcam-fault` (400 when it is not a fault, see
/// [`crate::fault::Fault`]) and handles the request within it.
#[cfg(feature = "fault-injection")]
async fn injected_fault(req: Request, next: Next) -> Response {
    let value = req
        .headers()
        .get("x-gradcam-fault")
        .map(HeaderValue::as_bytes);
    match fault_named(value) {
        Ok(fault) => crate::fault::within(fault, next.run(req)).await,
        Err(e) => e.into_response(),
    }
}

/// Test builds: the fault an `x-gradcam-fault` header (or gRPC metadata) names, if any.
#[cfg(feature = "fault-injection")]
fn fault_named(value: Option<&[u8]>) -> Result<Option<crate::fault::Fault>, ApiError> {
    value
        .map(|v| {
            std::str::from_utf8(v)
                .map_err(|_| "not text".to_string())
                .and_then(str::parse)
                .map_err(|e| ApiError::Malformed(format!("x-gradcam-fault: {e}")))
        })
        .transpose()
}

/// The route an answer came from, for [`observe`] (which runs before routing has happened).
#[derive(Debug, Clone)]
struct Route(String);

/// Copies the matched route onto the answer.
async fn tag_route(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let mut res = next.run(req).await;
    if let Some(r) = route {
        res.extensions_mut().insert(Route(r));
    }
    res
}

/// Counts every answer (routes, 404s and 405s alike) by route and status and refusals by
/// problem type, and logs internal errors (whose detail never reaches the client).
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let route = res
        .extensions()
        .get::<Route>()
        .map_or("unmatched", |r| r.0.as_str())
        .to_string();
    state.metrics.request(&route, res.status().as_u16());
    state
        .metrics
        .protocol_request(protocols::of_route(&route), res.status().as_u16());
    if let Some(&ProblemType(problem)) = res.extensions().get::<ProblemType>() {
        state.metrics.rejection(problem);
        log_refusal(&route, res.status().as_u16(), problem);
    }
    if let Some(InternalDetail(detail)) = res.extensions_mut().remove() {
        tracing::error!(%route, %detail, "internal error");
    }
    if state.is_draining() {
        // Clients leave this connection after the answer and open their next one where the
        // balancer now sends them (HTTP/1; HTTP/2 has its own GOAWAY at the end).
        res.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    res
}

/// Logs a refusal at the level its cause deserves: load (a full queue, a deadline, memory, a
/// drain) is a warning an operator watches for, not an error; a model that stopped is an
/// error; a client's mistake is debug. Internal errors are logged with their detail above.
fn log_refusal(route: &str, status: u16, problem: &'static str) {
    match (status, problem) {
        (_, "model_stopped") => tracing::error!(route, status, problem, "refused"),
        (_, "internal") => {}
        (429 | 503 | 504, _) => tracing::warn!(route, status, problem, "refused"),
        _ => tracing::debug!(route, status, problem, "refused"),
    }
}

/// Serves `state`'s routes on `listener` (and the gRPC services on `grpc`, if given) until
/// `shutdown` resolves. Then readiness turns 503 at
/// once while the server goes on accepting and serving for the drain delay; then it stops
/// accepting, refuses new work, and lets accepted requests finish within the drain timeout. The
/// engine is the caller's to stop.
pub async fn serve(
    listener: TcpListener,
    grpc: Option<TcpListener>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let draining = state.clone();
    let delay = state.config.drain_delay();
    tokio::spawn(async move {
        shutdown.await;
        draining.start_draining();
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            "shutdown requested: readiness 503, still serving"
        );
        tokio::time::sleep(delay).await;
        draining.stop_taking_work();
        tracing::info!("draining: no longer accepting");
        let _ = stop_tx.send(true);
    });
    let limits = listen::ConnectionLimits {
        header_read_timeout: std::time::Duration::from_millis(state.config.header_read_timeout_ms),
        max_connections: state.config.max_connections,
    };
    let drain_timeout = state.config.drain_timeout();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let grpc = grpc.map(|l| {
        let router = protocols::grpc::router(state.clone());
        listen::serve(l, router, limits, slots.clone(), stop_rx.clone())
    });
    let rest = listen::serve(listener, app(state), limits, slots, stop_rx.clone());
    // Both accept loops on this task (each connection has its own).
    let mut server = std::pin::pin!(async move {
        let grpc = async move {
            if let Some(g) = grpc {
                g.await;
            }
        };
        tokio::join!(rest, grpc);
    });
    tokio::select! {
        () = &mut server => {},
        _ = stop_rx.wait_for(|s| *s) => {
            if tokio::time::timeout(drain_timeout, &mut server).await.is_err() {
                tracing::warn!("drain timeout passed with requests still in flight");
            }
        }
    }
}
