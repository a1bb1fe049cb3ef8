//! Prometheus metrics in the text exposition format, kept in memory with plain locks: a few
//! counters and histograms do not need a metrics framework.

mod exposition;

use exposition::Histogram;
pub use exposition::{OPENMETRICS, openmetrics};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Latency buckets in seconds, from 0.1 ms (the parts of decoding and rendering) to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// Every metric the service exports.
#[derive(Debug)]
pub struct Metrics {
    /// The model's name and device, known once the backend is built.
    model: std::sync::OnceLock<(String, String)>,
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Requests by the protocol they spoke (see [`Metrics::protocol_request`]) and status.
    protocols: Mutex<BTreeMap<(&'static str, u16), u64>>,
    rejections: Mutex<BTreeMap<String, u64>>,
    /// Requests refused for want of a valid API key, by reason (`missing`, `malformed`,
    /// `invalid`).
    auth_failures: Mutex<BTreeMap<&'static str, u64>>,
    stages: Mutex<BTreeMap<String, Histogram>>,
    /// CPU seconds spent in the stages that run on one thread of the blocking pool.
    stage_cpu: Mutex<BTreeMap<&'static str, f64>>,
    batch_sizes: Mutex<Histogram>,
    /// Images waiting for the model thread (set by the engine). Signed: the model thread may
    /// take a job an instant before the sender counts it, and reads clamp at zero.
    pub queue_depth: AtomicI64,
    /// Decoded pixels requests hold of the budget now (set by the HTTP layer).
    pub inflight_pixels: AtomicU64,
    /// The budget of decoded pixels in flight.
    pub inflight_pixels_limit: AtomicU64,
    /// Model rebuilds after a panic: (succeeded, failed).
    rebuilds: Mutex<(u64, u64)>,
    /// The expected wait the latest job was given at admission, in microseconds.
    expected_wait_us: AtomicU64,
    /// The model's best recent wall time per image, in microseconds.
    model_us_per_image: AtomicU64,
    /// The same, of the model's own work (its thread's CPU time on the CPU), in microseconds.
    model_work_us_per_image: AtomicU64,
}

/// One gauge with its help and type lines.
pub fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a metrics lock leaves consistent counters behind: keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            model: std::sync::OnceLock::new(),
            requests: Mutex::default(),
            protocols: Mutex::default(),
            rejections: Mutex::default(),
            auth_failures: Mutex::default(),
            stages: Mutex::default(),
            stage_cpu: Mutex::default(),
            batch_sizes: Mutex::new(Histogram::new(BATCH_BUCKETS)),
            queue_depth: AtomicI64::new(0),
            inflight_pixels: AtomicU64::new(0),
            inflight_pixels_limit: AtomicU64::new(0),
            rebuilds: Mutex::default(),
            expected_wait_us: AtomicU64::new(0),
            model_us_per_image: AtomicU64::new(0),
            model_work_us_per_image: AtomicU64::new(0),
        }
    }

    /// What admission estimated for the latest job: its wait for the model at the model's own
    /// pace, and the model's time per image (wall, own work) behind it.
    pub fn set_expected_wait(&self, wait: std::time::Duration, (wall, work): (f64, f64)) {
        self.expected_wait_us
            .store(wait.as_micros() as u64, Ordering::Relaxed);
        self.model_us_per_image
            .store((wall * 1e6) as u64, Ordering::Relaxed);
        self.model_work_us_per_image
            .store((work * 1e6) as u64, Ordering::Relaxed);
    }

    /// Names the model and its device in `gradcam_model_info` (the first call counts).
    pub fn set_model(&self, model: &str, device: &str) {
        let _ = self.model.set((model.to_string(), device.to_string()));
    }

    pub fn request(&self, route: &str, status: u16) {
        *lock(&self.requests)
            .entry((route.to_string(), status))
            .or_default() += 1;
    }

    /// A request in `protocol` (`own`: the service's API; `kserve_v1`, `oip_rest`,
    /// `oip_grpc`), answered with `status` (for gRPC, the HTTP status its outcome means).
    pub fn protocol_request(&self, protocol: &'static str, status: u16) {
        *lock(&self.protocols).entry((protocol, status)).or_default() += 1;
    }

    /// A request refused for `reason` (a problem type such as `queue_full`).
    pub fn rejection(&self, reason: &str) {
        *lock(&self.rejections)
            .entry(reason.to_string())
            .or_default() += 1;
    }

    /// A request refused for want of a valid API key.
    pub fn auth_failure(&self, reason: &'static str) {
        *lock(&self.auth_failures).entry(reason).or_default() += 1;
    }

    /// Time spent in one stage (`fetch`, `decode`, `queue`, `inference`, `render`, `total`).
    pub fn stage(&self, stage: &str, seconds: f64) {
        lock(&self.stages)
            .entry(stage.to_string())
            .or_insert_with(|| Histogram::new(LATENCY_BUCKETS))
            .observe(seconds);
    }

    /// A part of a request's work on one thread: its time in `gradcam_stage_seconds` and its
    /// thread's CPU time in `gradcam_stage_cpu_seconds_total` (see [`Clock`]).
    pub fn stage_timed(&self, stage: &'static str, time: StageTime) {
        self.stage(stage, time.wall.as_secs_f64());
        *lock(&self.stage_cpu).entry(stage).or_default() += time.cpu.as_secs_f64();
    }

    pub fn batch(&self, size: usize) {
        lock(&self.batch_sizes).observe(size as f64);
    }

    /// One attempt to rebuild the model after a panic.
    pub fn rebuild(&self, ok: bool) {
        let mut r = lock(&self.rebuilds);
        if ok { r.0 += 1 } else { r.1 += 1 }
    }

    /// The exposition text; with exemplars (for OpenMetrics) when `exemplars`.
    pub fn render(&self, exemplars: bool) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP gradcam_requests_total Requests answered, by route and status code.\n",
        );
        out.push_str("# TYPE gradcam_requests_total counter\n");
        for ((route, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "gradcam_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP gradcam_protocol_requests_total Requests answered, by protocol and status \
             code (for gRPC, the HTTP status its code means).\n",
        );
        out.push_str("# TYPE gradcam_protocol_requests_total counter\n");
        for ((protocol, status), n) in lock(&self.protocols).iter() {
            let _ = writeln!(
                out,
                "gradcam_protocol_requests_total{{protocol=\"{protocol}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP gradcam_rejections_total Requests refused, by reason (problem type).\n",
        );
        out.push_str("# TYPE gradcam_rejections_total counter\n");
        for (reason, n) in lock(&self.rejections).iter() {
            let _ = writeln!(out, "gradcam_rejections_total{{reason=\"{reason}\"}} {n}");
        }
        out.push_str(
            "# HELP gradcam_auth_failures_total Requests without a valid API key, by reason.\n",
        );
        out.push_str("# TYPE gradcam_auth_failures_total counter\n");
        for (reason, n) in lock(&self.auth_failures).iter() {
            let _ = writeln!(
                out,
                "gradcam_auth_failures_total{{reason=\"{reason}\"}} {n}"
            );
        }
        out.push_str("# HELP gradcam_stage_seconds Time per request stage.\n");
        out.push_str("# TYPE gradcam_stage_seconds histogram\n");
        for (stage, h) in lock(&self.stages).iter() {
            h.render(
                &mut out,
                "gradcam_stage_seconds",
                &format!("stage=\"{stage}\""),
                exemplars,
            );
        }
        out.push_str(
            "# HELP gradcam_stage_cpu_seconds_total CPU time of the stages that run on one \
             thread (decode, preprocess, overlay, encode, serialize).\n",
        );
        out.push_str("# TYPE gradcam_stage_cpu_seconds_total counter\n");
        for (stage, seconds) in lock(&self.stage_cpu).iter() {
            let _ = writeln!(
                out,
                "gradcam_stage_cpu_seconds_total{{stage=\"{stage}\"}} {seconds}"
            );
        }
        out.push_str("# HELP gradcam_batch_size Images per model batch.\n");
        out.push_str("# TYPE gradcam_batch_size histogram\n");
        lock(&self.batch_sizes).render(&mut out, "gradcam_batch_size", "", exemplars);
        gauge(
            &mut out,
            "gradcam_inflight_pixels",
            "Decoded pixels held by requests now, of the budget.",
            self.inflight_pixels.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "gradcam_inflight_pixels_limit",
            "The budget of decoded pixels.",
            self.inflight_pixels_limit.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "gradcam_queue_depth",
            "Images waiting for the model.",
            self.queue_depth.load(Ordering::Relaxed).max(0) as u64,
        );
        for (name, help, us) in [
            (
                "gradcam_expected_wait_seconds",
                "The wait for the model that admission expected for the latest job, at the model's own pace (a job whose deadline it passes is refused, 503 overloaded).",
                &self.expected_wait_us,
            ),
            (
                "gradcam_model_seconds_per_image",
                "The model's best recent wall time per image (over batch sizes), which Retry-After of an overloaded refusal uses.",
                &self.model_us_per_image,
            ),
            (
                "gradcam_model_work_seconds_per_image",
                "The model's best recent time per image of its own work (on the CPU its thread's CPU time, unaffected by decoding beside it), which admission uses.",
                &self.model_work_us_per_image,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                us.load(Ordering::Relaxed) as f64 / 1e6
            );
        }
        out.push_str(
            "# HELP gradcam_model_rebuilds_total Attempts to rebuild the model after a panic.\n",
        );
        out.push_str("# TYPE gradcam_model_rebuilds_total counter\n");
        let (ok, failed) = *lock(&self.rebuilds);
        let _ = writeln!(out, "gradcam_model_rebuilds_total{{result=\"ok\"}} {ok}");
        let _ = writeln!(
            out,
            "gradcam_model_rebuilds_total{{result=\"failed\"}} {failed}"
        );
        if let Some((model, device)) = self.model.get() {
            out.push_str("# HELP gradcam_model_info The model and the device it runs on.\n");
            out.push_str("# TYPE gradcam_model_info gauge\n");
            let _ = writeln!(
                out,
                "gradcam_model_info{{model=\"{model}\",device=\"{device}\"}} 1"
            );
        }
        out
    }
}

/// Wall-clock and CPU time of a piece of work on one thread.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTime {
    pub wall: Duration,
    /// The thread's CPU time (user and system): what the work cost the host, whatever else
    /// was running beside it.
    pub cpu: Duration,
}

impl std::ops::AddAssign for StageTime {
    fn add_assign(&mut self, other: Self) {
        self.wall += other.wall;
        self.cpu += other.cpu;
    }
}

/// Starts timing work on the current thread; [`Clock::stop`] on the same thread says what it
/// took.
#[derive(Debug)]
pub struct Clock {
    wall: Instant,
    cpu: Duration,
}

impl Clock {
    pub fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: thread_cpu_time(),
        }
    }

    pub fn stop(self) -> StageTime {
        StageTime {
            wall: self.wall.elapsed(),
            cpu: thread_cpu_time().saturating_sub(self.cpu),
        }
    }

    /// Runs `f` and says what it took.
    pub fn time<T>(f: impl FnOnce() -> T) -> (T, StageTime) {
        let clock = Self::start();
        let value = f();
        (value, clock.stop())
    }
}

/// The CPU time the calling thread has used (zero where the clock cannot be read).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call, and
    // CLOCK_THREAD_CPUTIME_ID is a clock every Linux and macOS kernel we build for provides.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::new();
        m.set_model("resnet50", "cpu");
        for v in [0.0005, 0.003, 0.003, 100.0] {
            m.stage("queue", v);
        }
        m.request("/explain", 200);
        m.request("/explain", 200);
        m.rejection("queue_full");
        let text = m.render(false);
        assert!(
            text.contains("gradcam_stage_seconds_bucket{stage=\"queue\",le=\"0.001\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gradcam_stage_seconds_bucket{stage=\"queue\",le=\"0.005\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("gradcam_stage_seconds_bucket{stage=\"queue\",le=\"+Inf\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("gradcam_stage_seconds_count{stage=\"queue\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("gradcam_requests_total{route=\"/explain\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("gradcam_rejections_total{reason=\"queue_full\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gradcam_model_info{model=\"resnet50\",device=\"cpu\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn clock_counts_the_threads_cpu_not_its_sleep() {
        let ((), slept) = Clock::time(|| std::thread::sleep(Duration::from_millis(40)));
        assert!(slept.wall >= Duration::from_millis(40), "{slept:?}");
        assert!(
            slept.cpu < slept.wall / 2,
            "a sleeping thread uses no CPU: {slept:?}"
        );
        let (sum, busy) = Clock::time(|| {
            let started = Instant::now();
            let mut x = 0u64;
            while started.elapsed() < Duration::from_millis(20) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            x
        });
        std::hint::black_box(sum);
        assert!(busy.cpu > Duration::ZERO, "{busy:?}");
        let m = Metrics::new();
        m.stage_timed("encode", busy);
        m.stage_timed("encode", slept);
        let text = m.render(false);
        let line = text
            .lines()
            .find(|l| l.starts_with("gradcam_stage_cpu_seconds_total{stage=\"encode\"}"))
            .expect("the counter is rendered");
        let total: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(
            (total - (busy.cpu + slept.cpu).as_secs_f64()).abs() < 1e-9,
            "{line}"
        );
        assert!(
            text.contains("gradcam_stage_seconds_count{stage=\"encode\"} 2"),
            "{text}"
        );
    }
}
