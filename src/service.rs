//! `gradcam-serve serve` from start to stop: check the configuration, build the model on the
//! engine's thread and warm it up, bind, log "ready", serve until the shutdown signal, drain,
//! stop the engine.

use crate::backend::Loader;
use crate::config::ServeConfig;
use crate::engine::{BatchConfig, Engine};
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Runs the service with the libtorch model the configuration names.
pub async fn run(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let engine = start_engine(&config, model_loader(&config), metrics.clone()).await?;
    let listener = TcpListener::bind((config.host, config.port)).await?;
    let grpc = match config.protocols.grpc_port {
        Some(port) => Some(TcpListener::bind((config.host, port)).await?),
        None => None,
    };
    let state = AppState::new(config, engine.clone(), metrics);
    log_ready(&listener, grpc.as_ref(), &engine)?;
    http::serve(listener, grpc, state, shutdown).await;
    tokio::task::spawn_blocking(move || engine.shutdown()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Builds the libtorch ResNet.
fn model_loader(config: &ServeConfig) -> Loader {
    let model = config.model.clone();
    Box::new(move || Ok(Box::new(crate::model::load(&model)?) as _))
}

/// Starts the engine (loading and warming up the backend on its thread) without blocking the
/// runtime.
async fn start_engine(
    config: &ServeConfig,
    load: Loader,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Arc<Engine>> {
    let batch = BatchConfig {
        max_batch_size: config.max_batch_size,
        max_batch_delay: config.max_batch_delay(),
        queue_capacity: config.queue_capacity,
    };
    let engine = tokio::task::spawn_blocking(move || {
        let engine = Engine::start(load, batch, metrics.clone())?;
        let d = engine.description();
        metrics.set_model(&d.model, &d.device);
        anyhow::Ok(engine)
    })
    .await??;
    Ok(Arc::new(engine))
}

fn log_ready(
    listener: &TcpListener,
    grpc: Option<&TcpListener>,
    engine: &Engine,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let grpc_addr = grpc.map(TcpListener::local_addr).transpose()?;
    #[cfg(feature = "fault-injection")]
    tracing::warn!("built with fault injection (header x-gradcam-fault): for tests only");
    let d = engine.description();
    match grpc_addr {
        Some(grpc_addr) => {
            tracing::info!(%addr, %grpc_addr, device = %d.device, model = %d.model, sha256 = %d.weights.sha256, "ready")
        }
        None => {
            tracing::info!(%addr, device = %d.device, model = %d.model, sha256 = %d.weights.sha256, "ready")
        }
    }
    Ok(())
}
