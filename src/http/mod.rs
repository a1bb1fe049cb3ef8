//! The HTTP service: routes, shared state, middleware, start-up and graceful shutdown.
//!
//! Knows nothing of tensors: it turns requests into preprocessed images (on the blocking pool),
//! hands them to the [`Engine`], and renders the answers (on the blocking pool again).

pub mod addr;
mod body;
pub mod fetch;
mod handlers;
mod listen;
pub mod options;
pub mod problem;

use crate::config::ServeConfig;
use crate::engine::{BatchConfig, Engine};
use crate::metrics::Metrics;
use crate::model;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ServeConfig>,
    pub engine: Arc<Engine>,
    pub metrics: Arc<Metrics>,
    pub fetcher: fetch::Fetcher,
    pub ready: Arc<AtomicBool>,
    pub draining: Arc<AtomicBool>,
    /// Static facts for `/info`.
    pub info: Arc<serde_json::Value>,
    pub device: Arc<str>,
}

/// The router with every route and layer.
pub fn app(state: AppState) -> Router {
    let router = Router::new()
        .route("/explain", post(handlers::explain))
        .route("/predict", post(handlers::predict))
        .route("/health/live", get(handlers::live))
        .route("/health/ready", get(handlers::ready))
        .route("/metrics", get(handlers::metrics))
        .route("/info", get(handlers::info))
        .route("/labels", get(handlers::labels))
        .route("/openapi.yaml", get(handlers::openapi))
        .route_layer(middleware::from_fn_with_state(state.clone(), track))
        .fallback(handlers::not_found)
        // Our own body limit check gives the problem response; this one stops axum's default
        // 2 MB cap on multipart from getting in first.
        .layer(axum::extract::DefaultBodyLimit::max(
            state.config.body_limit,
        ))
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
        .expose_headers(handlers::TIMING_HEADERS.map(HeaderName::from_static))
}

/// Counts every answer by route and status, and refusals by problem type.
async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let res = next.run(req).await;
    state.metrics.request(&route, res.status().as_u16());
    if let Some(p) = res.extensions().get::<problem::ProblemType>() {
        state.metrics.rejection(p.0);
    }
    res
}

/// Loads the model on its thread and warms it up, binds, logs "ready", and serves until
/// `shutdown` resolves; then refuses new work (readiness 503), lets accepted requests finish
/// within the drain timeout, stops the model thread and returns.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let config = Arc::new(config);
    let device = model::device_name(config.model.device);
    let metrics = Arc::new(Metrics::new(device.clone()));
    let batch = BatchConfig {
        max_batch_size: config.max_batch_size,
        max_batch_delay: config.max_batch_delay(),
        queue_capacity: config.queue_capacity,
    };
    let model_args = config.model.clone();
    let (weights_tx, weights_rx) = std::sync::mpsc::channel();
    let engine_metrics = metrics.clone();
    let engine = tokio::task::spawn_blocking(move || {
        Engine::start(
            move || {
                let m = model_args.load()?;
                let _ = weights_tx.send(m.weights().clone());
                Ok(m)
            },
            batch,
            engine_metrics,
        )
    })
    .await??;
    let weights = weights_rx.recv()?;
    let info = serde_json::json!({
        "model": model::MODEL_NAME,
        "classes": model::labels().len(),
        "weights": { "source": weights.source, "sha256": weights.sha256 },
        "device": device,
        "versions": { "gradcam_serve": env!("CARGO_PKG_VERSION"), "libtorch": model::LIBTORCH_VERSION },
        "limits": {
            "body_limit_bytes": config.body_limit,
            "max_image_pixels": config.max_image_pixels,
            "max_overlay_side": config.max_overlay_side,
            "fetch_max_bytes": config.fetch_max_bytes,
            "fetch_timeout_ms": config.fetch_timeout_ms,
            "request_timeout_ms": config.request_timeout_ms,
            "max_top_k": model::MAX_TOP_K,
        },
        "batching": {
            "max_batch_size": config.max_batch_size,
            "max_batch_delay_ms": config.max_batch_delay_ms,
            "queue_capacity": config.queue_capacity,
        },
    });
    let state = AppState {
        fetcher: fetch::Fetcher::new(fetch::FetchConfig {
            timeout: std::time::Duration::from_millis(config.fetch_timeout_ms),
            max_bytes: config.fetch_max_bytes,
            allowed_ports: config.fetch_ports.clone(),
            policy: addr::AddressPolicy {
                allow: config.fetch_allow.clone(),
            },
        }),
        config: config.clone(),
        engine: Arc::new(engine),
        metrics,
        ready: Arc::new(AtomicBool::new(false)),
        draining: Arc::new(AtomicBool::new(false)),
        info: Arc::new(info),
        device: device.clone().into(),
    };

    let listener = TcpListener::bind((config.host, config.port)).await?;
    let addr = listener.local_addr()?;
    state.ready.store(true, Ordering::SeqCst);
    #[cfg(feature = "fault-injection")]
    tracing::warn!("built with fault injection (header x-gradcam-fault): for tests only");
    tracing::info!(%addr, device, model = model::MODEL_NAME, sha256 = %weights.sha256, "ready");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let draining = state.draining.clone();
    tokio::spawn(async move {
        shutdown.await;
        draining.store(true, Ordering::SeqCst);
        tracing::info!("shutdown requested: draining");
        let _ = stop_tx.send(true);
    });
    let limits = listen::ConnectionLimits {
        header_read_timeout: std::time::Duration::from_millis(config.header_read_timeout_ms),
        max_connections: config.max_connections,
    };
    let mut server = std::pin::pin!(listen::serve(
        listener,
        app(state.clone()),
        limits,
        stop_rx.clone()
    ));
    let mut stop_rx = stop_rx;
    tokio::select! {
        () = &mut server => {},
        _ = stop_rx.wait_for(|s| *s) => {
            if tokio::time::timeout(config.drain_timeout(), &mut server).await.is_err() {
                tracing::warn!("drain timeout passed with requests still in flight");
            }
        }
    }
    let engine = state.engine.clone();
    tokio::task::spawn_blocking(move || engine.shutdown()).await?;
    tracing::info!("stopped");
    Ok(())
}
