//! The budget of decoded pixels in flight. A request reserves its image's pixel count (read
//! from the header) before it decodes, so that however many large images arrive at once, the
//! memory their decoding takes is bounded. Once the image is reduced to what the answer needs,
//! the reservation shrinks to that; it ends with the request.

use super::problem::ApiError;
use crate::input::DecodeError;
use crate::metrics::Metrics;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Pixels per permit: the semaphore counts in units of 1024 pixels, so that a permit count
/// fits the semaphore's `u32` requests for any image.
const UNIT: u64 = 1024;

fn units(pixels: u64) -> u64 {
    pixels.div_ceil(UNIT)
}

#[derive(Clone)]
pub struct PixelBudget {
    permits: Arc<Semaphore>,
    limit: u64,
    wait: Duration,
    metrics: Arc<Metrics>,
}

impl PixelBudget {
    pub fn new(limit: u64, wait: Duration, metrics: Arc<Metrics>) -> Self {
        metrics
            .inflight_pixels_limit
            .store(limit, Ordering::Relaxed);
        let permits = usize::try_from(limit / UNIT)
            .unwrap_or(Semaphore::MAX_PERMITS)
            .min(Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(permits)),
            limit,
            wait,
            metrics,
        }
    }

    /// Reserves a `width` x `height` image's pixels, waiting at most the configured time. An
    /// image larger than the whole budget is refused at once (422), one that finds no room in
    /// time gets 503 `memory_busy`.
    pub async fn reserve(&self, width: u32, height: u32) -> Result<Reservation, ApiError> {
        let pixels = u64::from(width) * u64::from(height);
        if units(pixels) > self.limit / UNIT {
            return Err(ApiError::Image(DecodeError::TooManyPixels {
                width,
                height,
                pixels,
                limit: self.limit,
            }));
        }
        let n = u32::try_from(units(pixels)).map_err(|_| ApiError::MemoryBusy)?;
        let permit = tokio::time::timeout(self.wait, self.permits.clone().acquire_many_owned(n))
            .await
            .map_err(|_| ApiError::MemoryBusy)?
            .map_err(|_| ApiError::Internal("the pixel budget was closed".into()))?;
        self.metrics
            .inflight_pixels
            .fetch_add(u64::from(n) * UNIT, Ordering::Relaxed);
        Ok(Reservation {
            permit,
            metrics: self.metrics.clone(),
        })
    }
}

/// Pixels a request holds of the budget; returned when dropped.
pub struct Reservation {
    permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Reservation {
    /// Keeps only `pixels` of the reservation (what the request still holds in memory).
    pub fn shrink(&mut self, pixels: u64) {
        let keep = units(pixels).max(1) as usize;
        let held = self.permit.num_permits();
        if keep < held
            && let Some(extra) = self.permit.split(held - keep)
        {
            self.metrics
                .inflight_pixels
                .fetch_sub(((held - keep) as u64) * UNIT, Ordering::Relaxed);
            drop(extra);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.metrics
            .inflight_pixels
            .fetch_sub(self.permit.num_permits() as u64 * UNIT, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: u64) -> (PixelBudget, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let b = PixelBudget::new(limit, Duration::from_millis(50), metrics.clone());
        (b, metrics)
    }

    #[tokio::test]
    async fn reservations_are_bounded_shrink_and_return_on_drop() {
        let (b, m) = budget(10 * 1024 * 1024);
        let held = |m: &Metrics| m.inflight_pixels.load(Ordering::Relaxed);
        let mut a = b.reserve(2048, 2048).await.unwrap(); // 4 Mi pixels
        let c = b.reserve(2048, 2048).await.unwrap();
        assert_eq!(held(&m), 8 * 1024 * 1024);
        // 4 Mi more do not fit: refused once the wait is over.
        assert!(matches!(
            b.reserve(2048, 2048).await,
            Err(ApiError::MemoryBusy)
        ));
        a.shrink(1000 * 1000);
        assert_eq!(held(&m), 4 * 1024 * 1024 + units(1_000_000) * UNIT);
        let d = b.reserve(2048, 2048).await.unwrap();
        drop((a, c, d));
        assert_eq!(held(&m), 0);
    }

    #[tokio::test]
    async fn an_image_larger_than_the_whole_budget_is_refused_at_once() {
        let (b, _) = budget(1_000_000);
        match b.reserve(2000, 1000).await {
            Err(ApiError::Image(DecodeError::TooManyPixels { limit, .. })) => {
                assert_eq!(limit, 1_000_000)
            }
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("2 MP fit a 1 MP budget"),
        }
    }
}
