//! The blocking pool's share of a request: decoding, preprocessing and rendering, a few
//! requests at a time.

use super::AppState;
use super::problem::ApiError;

/// Runs CPU-heavy picture work on the blocking pool, never on the async runtime, once one of
/// the `--image-threads` permits is free: so many concurrent requests take turns on the cores
/// instead of all decoding at once, and the model thread keeps its share. The permit travels
/// with the work, so a request that gives up (its deadline, its client gone) frees it only
/// when the work has ended.
pub async fn blocking<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let permit = state
        .image_work
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::Internal("the picture workers are closed".into()))?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f()
    })
    .await
    .map_err(|e| ApiError::Internal(format!("blocking task failed: {e}")))
}

