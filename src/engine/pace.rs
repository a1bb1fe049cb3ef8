//! The model's recent pace, for admission by expected wait: how long a batch of each size has
//! taken lately, and how many images the batch in flight holds. From these, [`Pace::expected_wait`]
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

    /// Seconds a batch of `size` takes: its own figure, or else the nearest measured size's time
    /// per image times `size`; `None` before any batch has run.
    fn seconds(table: &[f64], size: usize) -> Option<f64> {
        if table[size] > 0.0 {
            return Some(table[size]);
        }
        let nearest = (1..table.len())
            .filter(|&s| table[s] > 0.0)
            .min_by_key(|&s| s.abs_diff(size))?;
        Some(table[nearest] / nearest as f64 * size as f64)
    }

    /// How long a job queued now behind `queued` others waits for its answer from the model:
    /// half of the batch in flight (on average half of it is still to run), then the queue in
    /// batches of the largest size, its own batch last. `None` until a batch has been measured.
    pub(super) fn expected_wait(&self, queued: usize) -> Option<Duration> {
        let table = self.batch_seconds.lock().unwrap_or_else(|e| e.into_inner());
        let largest = table.len() - 1;
        let n = queued + 1;
        let mut seconds = (n / largest) as f64 * Self::seconds(&table, largest)?;
        if n % largest > 0 {
            seconds += Self::seconds(&table, n % largest)?;
        }
        let in_flight = self.in_flight.load(Ordering::SeqCst).min(largest);
        if in_flight > 0 {
            seconds += Self::seconds(&table, in_flight)? / 2.0;
        }
        Some(Duration::from_secs_f64(seconds))
    }

    /// The model's recent time per image at the largest batch size (estimated from the nearest
    /// measured size); `None` before any batch has run.
    pub(super) fn seconds_per_image(&self) -> Option<f64> {
        let table = self.batch_seconds.lock().unwrap_or_else(|e| e.into_inner());
        let largest = table.len() - 1;
        Some(Self::seconds(&table, largest)? / largest as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_counts_the_queue_in_full_batches_and_half_the_batch_in_flight() {
        let pace = Pace::new(4);
        assert_eq!(pace.expected_wait(10), None, "nothing measured yet");
        pace.started(4);
        pace.finished(4, 0.4, true);
        pace.finished(1, 0.2, true);
        pace.finished(1, 9.0, false);
        // 9 ahead + itself: two batches of 4 (0.4 s each) and one of 2 (from 1's 0.2 s/image).
        assert_eq!(pace.expected_wait(9), Some(Duration::from_secs_f64(1.2)));
        pace.started(4);
        // The same with a batch of 4 in flight: half of its 0.4 s.
        assert_eq!(pace.expected_wait(9), Some(Duration::from_secs_f64(1.4)));
        // The newest batch weighs 0.3 in its size's average.
        pace.finished(4, 0.8, true);
        assert!((pace.seconds_per_image().unwrap() - 0.13).abs() < 1e-9);
    }
}
