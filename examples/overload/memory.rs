//! The server's resident memory, read from /proc.

use crate::schedule::Plan;
use std::time::Duration;

/// A `/proc/PID/status` field in MiB (`VmRSS:` now, `VmHWM:` the process peak); NaN when it
/// cannot be read.
pub fn mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Resident memory sampled as the open-loop schedule sends its requests, and after it.
pub struct Sampler {
    pid: u32,
    n_warm: usize,
    n_mid: usize,
    per_10s: usize,
    /// At the end of the warm-up.
    pub before: f64,
    /// Highest while measured.
    pub max: f64,
    /// Highest until the middle of the measured window: the level a leak would grow past.
    pub first_half: f64,
    /// Every 10 s of the schedule, warm-up included.
    pub trace: Vec<f64>,
    /// When the last answer came.
    pub end: f64,
    /// 2 s after that.
    pub after: f64,
    /// The process peak, 2 s after the end.
    pub peak: f64,
}

impl Sampler {
    pub fn new(pid: u32, plan: &Plan) -> Self {
        Sampler {
            pid,
            n_warm: plan.n_warm,
            n_mid: plan.n_warm + (plan.n - plan.n_warm) / 2,
            per_10s: (10.0 * plan.total_rate).round().max(1.0) as usize,
            before: f64::NAN,
            max: 0.0,
            first_half: 0.0,
            trace: Vec::new(),
            end: f64::NAN,
            after: f64::NAN,
            peak: f64::NAN,
        }
    }

    fn rss(&self) -> f64 {
        mib(self.pid, "VmRSS:")
    }

    /// Called as request `i` of the schedule leaves: the level at the end of the warm-up,
    /// every 10 s for the trace, and every 25 requests for the highest levels.
    pub fn at_request(&mut self, i: usize) {
        if i == self.n_warm {
            self.before = self.rss();
        }
        if i.is_multiple_of(self.per_10s) {
            self.trace.push(self.rss());
        }
        if i.is_multiple_of(25) {
            let r = self.rss();
            if i > self.n_warm {
                self.max = self.max.max(r);
            }
            if i <= self.n_mid {
                self.first_half = self.first_half.max(r);
            }
        }
    }

    /// The level when every answer has come.
    pub fn at_end(&mut self) {
        self.end = self.rss();
    }

    /// Waits 2 s, then reads the level and the process peak.
    pub async fn two_seconds_later(&mut self) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.after = self.rss();
        self.peak = mib(self.pid, "VmHWM:");
    }
}
