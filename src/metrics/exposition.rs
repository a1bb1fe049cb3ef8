//! The text of the exposition: histograms with their buckets (and, for OpenMetrics, each
//! bucket's latest exemplar: the trace of a request that fell in it), and the Prometheus text
//! rewritten as OpenMetrics for a scraper that asks for it.

use std::fmt::Write;

/// A sampled trace's observation, shown beside the bucket it fell in.
#[derive(Debug, Clone)]
pub struct Exemplar {
    trace_id: String,
    value: f64,
    /// Seconds since the Unix epoch.
    at: f64,
}

impl Exemplar {
    /// The exemplar of `value` observed now, in the sampled trace current on this thread.
    fn now(value: f64) -> Option<Self> {
        let trace_id = crate::telemetry::current_sampled_trace()?;
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Some(Self {
            trace_id,
            value,
            at,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    /// One per bucket, `+Inf` last.
    exemplars: Vec<Option<Exemplar>>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            exemplars: vec![None; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        let bucket = self.bounds.iter().position(|b| v <= *b);
        if let Some(i) = bucket {
            self.counts[i] += 1;
        }
        if let Some(e) = Exemplar::now(v) {
            self.exemplars[bucket.unwrap_or(self.bounds.len())] = Some(e);
        }
        self.sum += v;
        self.count += 1;
    }

    /// The buckets, sum and count; as OpenMetrics (canonical bounds, exemplars) when
    /// `exemplars`.
    pub fn render(&self, out: &mut String, name: &str, labels: &str, exemplars: bool) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        // OpenMetrics wants canonical numbers (`1.0`, not `1`); Prometheus's text takes either.
        let les = self
            .bounds
            .iter()
            .map(|b| {
                if exemplars {
                    format!("{b:?}")
                } else {
                    b.to_string()
                }
            })
            .chain(["+Inf".into()]);
        let counts = self.counts.iter().copied().chain([0]);
        for ((le, c), e) in les.zip(counts).zip(&self.exemplars) {
            cumulative += c;
            let n = if le == "+Inf" { self.count } else { cumulative };
            let _ = write!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {n}");
            if let Some(e) = e.as_ref().filter(|_| exemplars) {
                let _ = write!(
                    out,
                    " # {{trace_id=\"{}\"}} {} {:.3}",
                    e.trace_id, e.value, e.at
                );
            }
            out.push('\n');
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// The media type of the OpenMetrics text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Prometheus text as OpenMetrics: a counter's family is named without `_total` in its HELP
/// and TYPE lines (its samples keep it), and the text ends with `# EOF`.
pub fn openmetrics(text: &str) -> String {
    let counters: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.lines() {
        let family = ["# HELP ", "# TYPE "].into_iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let name = rest.split(' ').next()?;
            counters
                .contains(&name)
                .then_some((p, name, &rest[name.len()..]))
        });
        match family {
            Some((p, name, rest)) => {
                let _ = writeln!(out, "{p}{}{rest}", name.trim_end_matches("_total"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out.push_str("# EOF\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_family_and_the_text_ends() {
        let text = "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n\
                    # HELP g A gauge.\n# TYPE g gauge\ng 1\n";
        assert_eq!(
            openmetrics(text),
            "# HELP a Things.\n# TYPE a counter\na_total{x=\"1\"} 2\n\
             # HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n"
        );
    }

    #[test]
    fn no_exemplar_without_a_sampled_trace() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.5);
        h.observe(5.0);
        let mut out = String::new();
        h.render(&mut out, "t", "", true);
        // (Prometheus's text keeps the shortest form of a bound.)
        let mut plain = String::new();
        h.render(&mut plain, "t", "", false);
        assert!(plain.contains("t_bucket{le=\"1\"} 1\n"), "{plain}");
        assert_eq!(
            out,
            "t_bucket{le=\"0.1\"} 0\nt_bucket{le=\"1.0\"} 1\nt_bucket{le=\"+Inf\"} 2\nt_sum 5.5\nt_count 2\n"
        );
    }
}
