//! The HTTP service: routes, shared state, middleware, and serving a bound listener until
//! shutdown.
//!
//! Knows nothing of tensors: it turns requests into preprocessed images (on the blocking pool),
//! hands them to the [`Engine`], and renders the answers (on the blocking pool again). Any
//! backend behind the engine will do, which is how the in-process tests run without a model.

mod bodies;
mod explain;
mod input;
mod listen;
mod ops;
pub mod options;
pub mod problem;

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
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ServeConfig>,
    pub engine: Arc<Engine>,
    pub metrics: Arc<Metrics>,
    pub fetcher: Fetcher,
    draining: Arc<AtomicBool>,
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
        Self {
            config,
            engine,
            metrics,
            fetcher,
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Shutdown has begun: readiness is 503 and new work is refused.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether this instance takes new work now.
    fn serving(&self) -> Result<(), ApiError> {
        if self.is_draining() {
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
    let router = Router::new()
        .route("/explain", post(explain::explain))
        .route("/predict", post(explain::predict))
        .route("/health/live", get(ops::live))
        .route("/health/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/info", get(ops::info))
        .route("/labels", get(ops::labels))
        .route("/openapi.yaml", get(ops::openapi))
        .route_layer(middleware::from_fn_with_state(state.clone(), observe))
        .fallback(ops::not_found)
        // Our own body limit check gives the problem response; this one stops axum's default
        // 2 MB cap on multipart from getting in first.
        .layer(axum::extract::DefaultBodyLimit::max(
            state.config.body_limit,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("a request handler panicked".into()).into_response()
        }))
        .layer(TraceLayer::new_for_http());
    let origins = state.config.cors();
    let router = if origins.is_empty() {
        router
    } else {
        router.layer(cors(&origins))
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
        .allow_headers([axum::http::header::CONTENT_TYPE, axum::http::header::ACCEPT])
        .expose_headers(explain::TIMING_HEADERS.map(HeaderName::from_static))
}

/// Counts every answer by route and status and refusals by problem type, and logs internal
/// errors (whose detail never reaches the client).
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let mut res = next.run(req).await;
    state.metrics.request(&route, res.status().as_u16());
    if let Some(p) = res.extensions().get::<ProblemType>() {
        state.metrics.rejection(p.0);
    }
    if let Some(InternalDetail(detail)) = res.extensions_mut().remove() {
        tracing::error!(%route, %detail, "internal error");
    }
    res
}

/// Serves `state`'s routes on `listener` until `shutdown` resolves; then refuses new work
/// (readiness 503), stops accepting, and lets accepted requests finish within the drain
/// timeout. The engine is the caller's to stop.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let draining = state.clone();
    tokio::spawn(async move {
        shutdown.await;
        draining.start_draining();
        tracing::info!("shutdown requested: draining");
        let _ = stop_tx.send(true);
    });
    let limits = listen::ConnectionLimits {
        header_read_timeout: std::time::Duration::from_millis(state.config.header_read_timeout_ms),
        max_connections: state.config.max_connections,
    };
    let drain_timeout = state.config.drain_timeout();
    let mut server = std::pin::pin!(listen::serve(listener, app(state), limits, stop_rx.clone()));
    tokio::select! {
        () = &mut server => {},
        _ = stop_rx.wait_for(|s| *s) => {
            if tokio::time::timeout(drain_timeout, &mut server).await.is_err() {
                tracing::warn!("drain timeout passed with requests still in flight");
            }
        }
    }
}
