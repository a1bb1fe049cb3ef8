//! The blocking pool's share of a request: decoding, preprocessing and rendering, a few
//! requests at a time.

use super::AppState;
use super::problem::ApiError;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

/// One of the `--image-threads` turns at picture work: many concurrent requests take turns on
/// the cores instead of all decoding at once, and the model thread keeps its share.
pub struct Turn {
    _permit: OwnedSemaphorePermit,
}

/// Waits for a turn (within the request's deadline, which cancels the wait).
pub async fn turn(state: &AppState) -> Result<Turn, ApiError> {
    let wait = tracing::info_span!("picture work wait");
    state
        .image_work
        .clone()
        .acquire_owned()
        .instrument(wait)
        .await
        .map(|permit| Turn { _permit: permit })
        .map_err(|_| ApiError::Internal("the picture workers are closed".into()))
}

/// Runs CPU-heavy work on the blocking pool, never on the async runtime, inside the caller's
/// span (so that its own spans belong to the request's trace).
pub async fn on_pool<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| ApiError::Internal(format!("blocking task failed: {e}")))
}

/// [`on_pool`] in a turn of its own. The turn travels with the work, so a request that gives
/// up (its deadline, its client gone) frees it only when the work has ended.
pub async fn blocking<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let turn = turn(state).await?;
    on_pool(move || {
        let _turn = turn;
        f()
    })
    .await
}
