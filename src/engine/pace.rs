//! The model's recent pace, for admission by expected wait: how long a batch of each size has
//! taken lately (moving averages per size) and how many images the batch in flight holds. From
//! these, [`Pace::expected_wait`] says how long a job queued now will wait for its answer, so
//! that one its deadline cannot cover is refused at once (with a `Retry-After` from the same
//! figures) instead of waiting the deadline out.
//!
//! Two times are kept per batch. Its wall time is what clients saw. Its work is what the model
//! needed: on the CPU the model thread's own CPU time, which does not grow while decoding and
//! rendering take the cores from it (a burst of large uploads would otherwise make every batch
//! look slow, and the model faster again the moment the decoding ends); on a GPU, where the
//! device does the work, the wall time. Admission refuses only on the work's estimate (the
//! wait at the model's own pace, not at its most disturbed); `Retry-After` tells the wall's.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The weight of the newest batch in the moving averages of its size's times.
const NEWEST: f64 = 0.3;

/// How long a job queued now can expect to wait for its answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Wait {
    /// At the model's own pace: what admission compares with the deadline.
    pub at_least: Duration,
    /// At the pace clients saw lately (never less than `at_least`): what `Retry-After` says.
    pub likely: Duration,
    /// The best recent seconds per image behind the two: (wall, work).
    pub per_image: (f64, f64),
}

/// Seconds per batch by size (index = images in the batch), exponentially weighted; 0 where no
/// batch of that size has run yet.
#[derive(Debug)]
struct Table {
    wall: Vec<f64>,
    work: Vec<f64>,
}

#[derive(Debug)]
pub(super) struct Pace {
    table: Mutex<Table>,
    /// Images in the batch the model thread runs now (0 when idle).
    in_flight: AtomicUsize,
}

fn average(slot: &mut f64, seconds: f64) {
    *slot = if *slot == 0.0 {
        seconds
    } else {
        (1.0 - NEWEST) * *slot + NEWEST * seconds
    };
}

/// The best time per image over the batch sizes measured lately: the pace of the model at its
/// most efficient batching. `None` before any batch has run.
fn best_per_image(by_size: &[f64]) -> Option<f64> {
    (1..by_size.len())
        .filter(|&s| by_size[s] > 0.0)
        .map(|s| by_size[s] / s as f64)
        .min_by(f64::total_cmp)
}

impl Pace {
    pub(super) fn new(max_batch: usize) -> Self {
        let sizes = max_batch.max(1) + 1;
        Pace {
            table: Mutex::new(Table {
                wall: vec![0.0; sizes],
                work: vec![0.0; sizes],
            }),
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

    /// The batch that started took `wall` seconds, of which the model needed `work` (see the
    /// module's comment); `normal` when it ran without a fault (only then do its times say how
    /// fast the model is).
    pub(super) fn finished(&self, size: usize, wall: f64, work: f64, normal: bool) {
        self.in_flight.store(0, Ordering::SeqCst);
        if !normal || size == 0 {
            return;
        }
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if size < table.wall.len() {
            average(&mut table.wall[size], wall);
            average(&mut table.work[size], work.min(wall));
        }
    }

    /// How long a job queued now behind `queued` others waits for its answer from the model:
    /// the images ahead (half of the batch in flight, on average half of it still to run, and
    /// the queue) and its own, at the best recent time per image. `None` until a batch has
    /// been measured.
    pub(super) fn expected_wait(&self, queued: usize) -> Option<Wait> {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let wall = best_per_image(&table.wall)?;
        let work = best_per_image(&table.work).unwrap_or(wall);
        let in_flight = self
            .in_flight
            .load(Ordering::SeqCst)
            .min(table.wall.len() - 1) as f64;
        let images = (queued + 1) as f64 + in_flight / 2.0;
        Some(Wait {
            at_least: Duration::from_secs_f64(work * images),
            likely: Duration::from_secs_f64(wall.max(work) * images),
            per_image: (wall, work),
        })
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
        pace.finished(4, 0.4, 0.4, true);
        pace.finished(1, 0.2, 0.2, true);
        pace.finished(1, 9.0, 9.0, false);
        // Batches of 4 run at 0.1 s an image, of 1 at 0.2: 9 ahead and itself at 0.1.
        let close = |d: Duration, s: f64| (d.as_secs_f64() - s).abs() < 1e-6;
        let w = pace.expected_wait(9).unwrap();
        assert!(close(w.at_least, 1.0) && close(w.likely, 1.0), "{w:?}");
        pace.started(4);
        // The same with a batch of 4 in flight: half of it still to run.
        assert!(close(pace.expected_wait(9).unwrap().at_least, 1.2));
        assert!(pace.busy());
        // The newest batch weighs 0.3 in its size's average: 0.52 s for 4.
        pace.finished(4, 0.8, 0.8, true);
        assert!(!pace.busy());
        let (wall, work) = pace.expected_wait(0).unwrap().per_image;
        assert!((wall - 0.13).abs() < 1e-9 && (work - 0.13).abs() < 1e-9);
    }

    #[test]
    fn admission_counts_the_work_and_retry_after_the_wall() {
        let pace = Pace::new(1);
        // The cores were busy elsewhere: 0.5 s of wall for 0.1 s of the model's own work.
        pace.finished(1, 0.5, 0.1, true);
        let w = pace.expected_wait(3).unwrap();
        let close = |d: Duration, s: f64| (d.as_secs_f64() - s).abs() < 1e-6;
        assert!(close(w.at_least, 0.4) && close(w.likely, 2.0), "{w:?}");
        // Work is never counted above the wall (a clock's rounding).
        let pace = Pace::new(1);
        pace.finished(1, 0.2, 0.3, true);
        let w = pace.expected_wait(0).unwrap();
        assert_eq!(w.at_least, w.likely);
    }
}
