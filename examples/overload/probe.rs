//! Readiness probes all along the overload, as a load balancer sends them.

use crate::http::Target;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// One probe: its status (0 when unanswered) and how long the answer took.
pub struct Probe {
    pub status: u16,
    pub latency: Duration,
}

/// Probes `/health/ready` every 250 ms until stopped.
pub struct Prober {
    running: Arc<AtomicBool>,
    task: JoinHandle<Vec<Probe>>,
}

impl Prober {
    pub fn start(target: &Target) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let task = {
            let (target, running) = (target.clone(), running.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while running.load(Ordering::SeqCst) {
                    let sent = Instant::now();
                    let status = target.ready_status().await;
                    seen.push(Probe {
                        status,
                        latency: sent.elapsed(),
                    });
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                seen
            })
        };
        Prober { running, task }
    }

    /// Stops probing (after the probe or pause under way) and returns every probe.
    pub async fn stop(self) -> Vec<Probe> {
        self.running.store(false, Ordering::SeqCst);
        self.task.await.expect("the probe task does not panic")
    }
}
