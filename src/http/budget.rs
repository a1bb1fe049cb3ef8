//! The budget of decoded pixels in flight. A request reserves its image's pixel count (read
//! from the header) before it decodes, so that however many large images arrive at once, the
//! memory their decoding takes is bounded. Once the image is reduced to what the answer needs,
//! the reservation shrinks to that; it ends with the request.

use super::problem::ApiError;
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

    /// An empty reservation, to grow as the request comes to hold memory.
    pub fn reservation(&self) -> Reservation {
        let permit = self
            .permits
            .clone()
            .try_acquire_many_owned(0)
            .expect("zero permits are always available while the budget is open");
        Reservation {
            permit,
            budget: self.clone(),
        }
    }
}

/// Fetched or uploaded bytes, counted in pixels: a byte is a third of an RGB pixel.
pub fn pixels_of_bytes(bytes: u64) -> u64 {
    bytes.div_ceil(3)
}

/// What a request holds of the budget; returned when dropped.
pub struct Reservation {
    permit: OwnedSemaphorePermit,
    budget: PixelBudget,
}

impl Reservation {
    /// Pixels held now.
    pub fn held(&self) -> u64 {
        self.permit.num_permits() as u64 * UNIT
    }

    /// Grows the reservation to `pixels` in all, waiting at most the configured time for room.
    /// When `pixels` is more than the whole budget, `too_large(limit)` is the refusal, at once;
    /// when no room is found in time, 503 `memory_busy`.
    pub async fn grow_to(
        &mut self,
        pixels: u64,
        too_large: impl FnOnce(u64) -> ApiError,
    ) -> Result<(), ApiError> {
        let b = &self.budget;
        if units(pixels) > b.limit / UNIT {
            return Err(too_large(b.limit));
        }
        let held = self.permit.num_permits() as u64;
        let Some(more) = units(pixels).checked_sub(held).filter(|&n| n > 0) else {
            return Ok(());
        };
        let n = u32::try_from(more).map_err(|_| ApiError::MemoryBusy)?;
        let extra = tokio::time::timeout(b.wait, b.permits.clone().acquire_many_owned(n))
            .await
            .map_err(|_| ApiError::MemoryBusy)?
            .map_err(|_| ApiError::Internal("the pixel budget was closed".into()))?;
        b.metrics
            .inflight_pixels
            .fetch_add(more * UNIT, Ordering::Relaxed);
        self.permit.merge(extra);
        Ok(())
    }

    /// Grows the reservation to `pixels` for decoding a `width` x `height` image (fewer than
    /// the product for a reduced decoding; with the encoded bytes it is decoded from). An image
    /// that needs more than the whole budget is refused (422) at once.
    pub async fn grow_for_image(
        &mut self,
        width: u32,
        height: u32,
        pixels: u64,
    ) -> Result<(), ApiError> {
        self.grow_to(pixels, |limit| ApiError::OverBudget {
            width,
            height,
            pixels,
            limit,
        })
        .await
    }

    /// Keeps only `pixels` of the reservation (what the request still holds in memory).
    pub fn shrink(&mut self, pixels: u64) {
        let keep = units(pixels).max(1) as usize;
        let held = self.permit.num_permits();
        if keep < held
            && let Some(extra) = self.permit.split(held - keep)
        {
            self.budget
                .metrics
                .inflight_pixels
                .fetch_sub(((held - keep) as u64) * UNIT, Ordering::Relaxed);
            drop(extra);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget
            .metrics
            .inflight_pixels
            .fetch_sub(self.held(), Ordering::Relaxed);
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
        let image = |b: &PixelBudget| {
            let b = b.clone();
            async move {
                let mut r = b.reservation();
                r.grow_for_image(2048, 2048, 2048 * 2048).await.map(|()| r)
            }
        };
        let mut a = image(&b).await.unwrap(); // 4 Mi pixels
        let c = image(&b).await.unwrap();
        assert_eq!(held(&m), 8 * 1024 * 1024);
        // 4 Mi more do not fit: refused once the wait is over, and nothing is kept.
        assert!(matches!(image(&b).await, Err(ApiError::MemoryBusy)));
        assert_eq!(held(&m), 8 * 1024 * 1024);
        a.shrink(1000 * 1000);
        assert_eq!(held(&m), 4 * 1024 * 1024 + units(1_000_000) * UNIT);
        let mut d = image(&b).await.unwrap();
        // Growing step by step (fetched bytes) adds only the difference.
        d.shrink(0);
        d.grow_to(3 * 1024 * 1024, |_| unreachable!())
            .await
            .unwrap();
        d.grow_to(2 * 1024 * 1024, |_| unreachable!())
            .await
            .unwrap();
        assert_eq!(d.held(), 3 * 1024 * 1024);
        drop((a, c, d));
        assert_eq!(held(&m), 0);
    }

    #[tokio::test]
    async fn an_image_larger_than_the_whole_budget_is_refused_at_once() {
        let (b, _) = budget(1_000_000);
        match b.reservation().grow_for_image(2000, 1000, 2_000_000).await {
            Err(ApiError::OverBudget { limit, .. }) => {
                assert_eq!(limit, 1_000_000)
            }
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("2 MP fit a 1 MP budget"),
        }
    }
}
