//! Saturation throughput, measured in a closed loop.

use crate::http::Target;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `clients` clients each post the photo, one request at a time, for `secs`; returns the
/// rate of 200s per second.
pub async fn measure(target: &Target, photo: &Arc<Vec<u8>>, clients: usize, secs: f64) -> f64 {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (target, photo) = (target.clone(), photo.clone());
            tokio::spawn(async move {
                let mut ok = 0u64;
                while Instant::now() < until {
                    if matches!(target.explain(&photo).await, Ok(a) if a.status == 200) {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let mut answered = 0;
    for t in tasks {
        answered += t.await.expect("a client task does not panic");
    }
    answered as f64 / started.elapsed().as_secs_f64()
}
