//! The model's recent pace, for admission by expected wait: how long a batch of each size has
//! taken lately (a moving average per size), and how many images the batch in flight holds. From these, [`Pace::expected_wait`]
//! says how long a job queued now will wait for its answer, so that one its deadline cannot
//! cover is refused at once (with a `Retry-After` from the same figure) instead of waiting the
//! deadline out.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The weight of the newest batch in the moving average of its size's time.
const NEWEST: f64 = 0.3;

#[derive(Debug)]
pub(super) struct Pace {
    /// Seconds per batch by size (index = images in the batch), exponentially weighted; 0 where
    /// no batch of that size has run yet.
    batch_seconds: Mutex<Vec<f64>>,
    /// Images in the batch the model thread runs now (0 when idle).
    in_flight: AtomicUsize,
}

impl Pace {
    pub(super) fn new(max_batch: usize) -> Self {
        Pace {
            batch_seconds: Mutex::new(vec![0.0; max_batch.max(1) + 1]),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// A batch of `size` images starts.
    pub(super) fn started(&self, size: usize) {
        self.in_flight.store(size, Ordering::SeqCst);
    }

    /// Whether a batch is in the model now.
    pub(super) fn busy(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) > 0
    }

    /// The batch that started took `seconds` in the model; `normal` when it ran without a
    /// fault (only then does its time say how fast the model is).
    pub(super) fn finished(&self, size: usize, seconds: f64, normal: bool) {
        self.in_flight.store(0, Ordering::SeqCst);
        if !normal {
            return;
        }
        let mut table = self.batch_seconds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = table.get_mut(size) {
            *t = if *t == 0.0 {
                seconds
            } else {
                (1.0 - NEWEST) * *t + NEWEST * seconds
            };
        }
    }

    /// The best time per image over the batch sizes measured lately: the pace of the model at
    /// its most efficient batching. `None` before any batch has run.
    fn best_per_image(table: &[f64]) -> Option<f64> {
        (1..table.len())
            .filter(|&s| table[s] > 0.0)
            .map(|s| table[s] / s as f64)
            .min_by(f64::total_cmp)
    }

    /// How long a job queued now behind `queued` others waits for its answer from the model,
    /// at its best recent pace: the images ahead (half of the batch in flight, on average
    /// half of it still to run, and the queue) and its own. A lower bound on purpose, so that a
    /// job refused for it could not have been answered in time even at that pace. `None` until
    /// a batch has been measured.
    pub(super) fn expected_wait(&self, queued: usize) -> Option<Duration> {
        let table = self.batch_seconds.lock().unwrap_or_else(|e| e.into_inner());
        let per_image = Self::best_per_image(&table)?;
        let in_flight = self.in_flight.load(Ordering::SeqCst).min(table.len() - 1) as f64;
        let images = (queued + 1) as f64 + in_flight / 2.0;
        Some(Duration::from_secs_f64(per_image * images))
    }

    /// The model's best recent time per image (see [`Pace::expected_wait`]); `None` before any
    /// batch has run.
    pub(super) fn seconds_per_image(&self) -> Option<f64> {
        let table = self.batch_seconds.lock().unwrap_or_else(|e| e.into_inner());
        Self::best_per_image(&table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_counts_the_images_ahead_at_the_best_recent_pace() {
        let pace = Pace::new(4);
        assert_eq!(pace.expected_wait(10), None, "nothing measured yet");
        pace.started(4);
        pace.finished(4, 0.4, true);
        pace.finished(1, 0.2, true);
        pace.finished(1, 9.0, false);
        // Batches of 4 run at 0.1 s an image, of 1 at 0.2: 9 ahead and itself at 0.1.
        let close = |d: Option<Duration>, s: f64| (d.unwrap().as_secs_f64() - s).abs() < 1e-6;
        assert!(close(pace.expected_wait(9), 1.0));
        pace.started(4);
        // The same with a batch of 4 in flight: half of it still to run.
        assert!(close(pace.expected_wait(9), 1.2));
        assert!(pace.busy());
        // The newest batch weighs 0.3 in its size's average: 0.52 s for 4.
        pace.finished(4, 0.8, true);
        assert!(!pace.busy());
        assert!((pace.seconds_per_image().unwrap() - 0.13).abs() < 1e-9);
    }
}
