//! The figures, and the verdict on the whole run.

use crate::malformed::Bad;
use crate::memory;
use crate::probe::Probe;
use crate::schedule::{Outcome, Plan};
use crate::settings::Settings;
use std::collections::BTreeMap;
use std::time::Duration;

/// The saturation throughput and what the overload will offer.
pub fn offer(settings: &Settings, saturation: f64, plan: &Plan) {
    let (clients, sat_secs) = (settings.clients, settings.saturation_secs);
    let (warmup, secs) = (settings.warmup_secs, settings.secs);
    let good_rate = plan.good_rate;
    println!(
        "saturation: {saturation:.2} req/s ({clients} closed-loop clients, {sat_secs} s, RSS {:.0} MiB); \
         offering {good_rate:.2} good + {:.2} malformed req/s for {warmup} s of warm-up and {secs} s measured",
        memory::mib(settings.pid, "VmRSS:"),
        plan.total_rate - good_rate
    );
}

/// Everything measured during and after the overload.
pub struct Results<'a> {
    pub settings: &'a Settings,
    pub bads: &'a [Bad],
    pub saturation: f64,
    pub n_warm: usize,
    pub outcomes: Vec<Outcome>,
    /// Seconds from the start of the measured window until the last answer.
    pub elapsed: f64,
    pub memory: memory::Sampler,
    pub probes: Vec<Probe>,
    /// Readiness status at the end.
    pub ready: u16,
}

impl Results<'_> {
    fn measured(&self) -> Vec<&Outcome> {
        self.outcomes.iter().filter(|o| !o.warmup).collect()
    }

    /// Prints the figures: answers by kind and status, latencies, served rate, memory and
    /// readiness probes.
    pub fn print(&self) {
        let (secs, n_warm, elapsed) = (self.settings.secs, self.n_warm, self.elapsed);
        let measured = self.measured();
        let mut by_status: BTreeMap<(&str, u16), usize> = BTreeMap::new();
        for o in &measured {
            let kind = o.bad.map_or("good", |k| self.bads[k].name);
            *by_status.entry((kind, o.status)).or_default() += 1;
        }
        println!(
            "measured: {} requests sent in {secs} s ({:.2} req/s offered), after {n_warm} in the warm-up; \
             the last answer came {elapsed:.1} s after the first",
            measured.len(),
            measured.len() as f64 / secs
        );
        for ((kind, status), count) in &by_status {
            println!("  {kind:>18} {status}: {count}");
        }
        print_latencies("good, answered 200", &measured, |o| {
            o.bad.is_none() && o.status == 200
        });
        print_latencies("good, refused 429/503", &measured, |o| {
            o.bad.is_none() && (o.status == 429 || o.status == 503)
        });
        print_latencies("malformed", &measured, |o| o.bad.is_some());
        let served = measured
            .iter()
            .filter(|o| o.bad.is_none() && o.status == 200)
            .count();
        let m = &self.memory;
        println!(
            "served {:.2} good req/s ({:.2}x saturation); RSS (MiB) at the end of the warm-up \
             {:.0}, highest until mid-run {:.0}, highest while measured \
             {:.0}, at the end {:.0}, 2 s later \
             {:.0}, process peak {:.0}; \
             readiness at the end: {}",
            served as f64 / elapsed,
            served as f64 / elapsed / self.saturation,
            m.before,
            m.first_half,
            m.max,
            m.end,
            m.after,
            m.peak,
            self.ready,
        );
        println!(
            "RSS every 10 s from the start of the warm-up (MiB): {}",
            m.trace
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut probe_times: Vec<Duration> = self.probes.iter().map(|p| p.latency).collect();
        probe_times.sort();
        println!(
            "readiness probes during the run: {} ({} not 200), p50 {:.1} ms, p99 {:.1} ms",
            self.probes.len(),
            self.probes_failed(),
            percentile(&probe_times, 0.5),
            percentile(&probe_times, 0.99)
        );
    }

    fn probes_failed(&self) -> usize {
        self.probes.iter().filter(|p| p.status != 200).count()
    }

    /// Prints every violation of the run and returns whether there was none: a bad answer to
    /// any request (warm-up included), a readiness probe not answered 200, readiness not 200
    /// at the end, or resident memory not flat.
    pub fn verdict(&self) -> bool {
        let violations: Vec<&String> = self
            .outcomes
            .iter()
            .filter_map(|o| o.violation.as_ref())
            .collect();
        let mut failed = false;
        if !violations.is_empty() {
            failed = true;
            println!("VIOLATIONS: {}", violations.len());
            for v in violations.iter().take(10) {
                println!("  {v}");
            }
        }
        let probes_failed = self.probes_failed();
        if probes_failed > 0 {
            failed = true;
            println!("VIOLATION: {probes_failed} readiness probes were not answered 200");
        }
        if self.ready != 200 {
            failed = true;
            println!("VIOLATION: readiness {} at the end", self.ready);
        }
        // Memory rises with the work in flight (the allocator keeps what it once needed); a
        // leak keeps rising. Flat: at the end no more than 10% above the highest level of the
        // first half.
        let (first_half, end) = (self.memory.first_half, self.memory.end);
        if end > first_half * 1.1 {
            failed = true;
            println!(
                "VIOLATION: resident memory grew from {first_half:.0} (highest in the first half) \
                 to {end:.0} MiB"
            );
        }
        !failed
    }
}

/// Prints the count, median and 99th percentile of the latencies of the `measured` outcomes
/// in `class`.
fn print_latencies(label: &str, measured: &[&Outcome], class: impl Fn(&Outcome) -> bool) {
    let mut latencies: Vec<Duration> = measured
        .iter()
        .filter(|o| class(o))
        .map(|o| o.latency)
        .collect();
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    let count = latencies.len();
    println!("  {label:>22}: {count:5}  p50 {p50:8.1} ms  p99 {p99:8.1} ms");
}

/// The p-quantile of sorted latencies, in milliseconds; NaN when there are none.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}
