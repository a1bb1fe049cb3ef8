//! The observability files (deploy/observability): the Prometheus rules pass `promtool check
//! rules` and their unit tests (`promtool test rules`), every expression of the Grafana
//! dashboard is valid PromQL, and every metric, label and label value that the rules, their
//! tests' input series and the dashboard name is one the real server exports: its live
//! /metrics after a request, or, for a label value that only shows once something happens
//! (`reason="memory_busy"`), README's documentation of it. A small PromQL reader (below)
//! finds the names; the checker itself is shown to catch misspellings.

mod read;

use crate::common::server::{Server, client, post_fixture};
use read::{Dashboard, Exposition, Refs, RuleFile, family, legend_labels};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/observability");
/// Labels Prometheus adds to every series it scrapes: never in the exposition itself.
const TARGET_LABELS: &[&str] = &["job", "instance"];
/// The alerts the rules must hold.
const ALERTS: &[&str] = &[
    "GradcamQueueSaturated",
    "GradcamHigh5xxRate",
    "GradcamMemoryBusy",
    "GradcamReadinessFlapping",
    "GradcamLatencyBudgetBurn",
    "GradcamModelStopped",
    "GradcamDown",
];
/// The series the dashboard must show (each in at least one panel).
const DASHBOARD_METRICS: &[&str] = &[
    "gradcam_requests_total",
    "gradcam_stage_seconds_bucket",
    "gradcam_queue_depth",
    "gradcam_queue_capacity",
    "gradcam_rejections_total",
    "gradcam_inflight_pixels",
    "gradcam_inflight_pixels_limit",
    "gradcam_batch_size_bucket",
    "gradcam_model_seconds_per_image",
    "gradcam_model_work_seconds_per_image",
    "gradcam_protocol_requests_total",
    "gradcam_ready",
];

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{DIR}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Runs promtool with `args`; its output, after asserting that it succeeded.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "promtool does not run ({e}): scripts/setup.sh unpacks it into the cache (from \
                 Debian's prometheus package) and scripts/env.sh puts it on PATH"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn observability_rules_pass_promtool() {
    let rules = format!("{DIR}/rules.yaml");
    let checked = promtool(&["check", "rules", &rules]);
    // promtool counts the rules it read: as many as this test's reader finds, so that the
    // other test checks every expression.
    let found = RuleFile::parse(&read("rules.yaml")).exprs.len();
    assert!(
        checked.contains(&format!("SUCCESS: {found} rules found")),
        "the reader found {found} rules; promtool says:\n{checked}"
    );
    promtool(&["test", "rules", &format!("{DIR}/rules.test.yaml")]);

    // Every expression of the dashboard is valid PromQL, with Grafana's variables as they are
    // when it runs them: checked as recording rules.
    let mut yaml = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (place, expr)) in Dashboard::parse(&read("grafana-dashboard.json"))
        .exprs
        .iter()
        .enumerate()
    {
        let expr = expr.replace("$__rate_interval", "5m").replace('\'', "''");
        yaml.push_str(&format!(
            "      # {place}\n      - record: dashboard:expr_{i}:check\n        expr: '{expr}'\n"
        ));
    }
    let dir = std::env::temp_dir().join(format!("gradcam-observability-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("dashboard-exprs.yaml");
    std::fs::write(&file, yaml).unwrap();
    promtool(&["check", "rules", file.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn observability_names_exist_in_live_metrics() {
    let server = Server::start(&[]);
    // One explanation fills the stage histograms and the batch sizes; one refusal gives
    // gradcam_rejections_total a sample, with its `reason` label.
    let explained = post_fixture(server.url("/explain"), "coffee.jpg")
        .send()
        .unwrap();
    assert_eq!(explained.status().as_u16(), 200);
    let refused = post_fixture(server.url("/predict?top_k=0"), "chelsea.png")
        .send()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 422);
    let text = client()
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let live = Exposition::parse(&text);
    let rules_text = read("rules.yaml");
    let tests_text = read("rules.test.yaml");
    let dashboard_text = read("grafana-dashboard.json");

    let problems = check_all(&live, &readme, &rules_text, &tests_text, &dashboard_text);
    assert!(
        problems.is_empty(),
        "{} problems:\n{}\n\nthe live exposition:\n{text}",
        problems.len(),
        problems.join("\n")
    );

    // The checker catches what it is for: each misspelling in a copy is reported.
    let misspelt = [
        // (file, from, to, what the report must name)
        (
            "rules.yaml",
            "avg_over_time(gradcam_queue_depth[",
            "avg_over_time(gradcam_queue_dept[",
            "gradcam_queue_dept",
        ),
        (
            "rules.yaml",
            "gradcam_ready[15m]",
            "gradcam_readiness[15m]",
            "gradcam_readiness",
        ),
        (
            "rules.yaml",
            "reason=\"memory_busy\"",
            "reason=\"memory_bussy\"",
            "memory_bussy",
        ),
        (
            "rules.yaml",
            "{stage=\"total\",le=",
            "{stag=\"total\",le=",
            "no label stag ",
        ),
        ("rules.yaml", "le=\"2.5\"", "le=\"2.4\"", "2.4"),
        (
            "rules.yaml",
            "by (job, reason)",
            "by (job, raeson)",
            "raeson",
        ),
        (
            "rules.yaml",
            "        for: 0m\n",
            "",
            "GradcamModelStopped: no `for`",
        ),
        (
            "rules.yaml",
            "gradcam:model_requests:rate5m > 0.05",
            "gradcam:model_request:rate5m > 0.05",
            "gradcam:model_request:rate5m",
        ),
        (
            "rules.test.yaml",
            "'gradcam_queue_capacity{",
            "'gradcam_queue_capacty{",
            "gradcam_queue_capacty",
        ),
        (
            "grafana-dashboard.json",
            "sum by (reason)",
            "sum by (reasons)",
            "reasons",
        ),
        (
            "grafana-dashboard.json",
            "gradcam_inflight_pixels_limit{",
            "gradcam_inflight_pixel_limit{",
            "gradcam_inflight_pixel_limit",
        ),
        (
            "grafana-dashboard.json",
            "stage!=\\\"total\\\"",
            "stage!=\\\"totals\\\"",
            "totals",
        ),
        (
            "grafana-dashboard.json",
            "{{protocol}}",
            "{{protocols}}",
            "protocols",
        ),
        (
            "grafana-dashboard.json",
            "(gradcam_queue_depth{job=~\\\"$job\\\",instance=~\\\"$instance\\\"})",
            "(gradcam_queue_depth{instance=~\\\"$instance\\\"})",
            "$job",
        ),
    ];
    for (file, from, to, named) in misspelt {
        let edit = |name: &str, original: &str| {
            if name != file {
                return original.to_string();
            }
            assert!(original.contains(from), "{file} no longer has {from}");
            original.replacen(from, to, 1)
        };
        let problems = check_all(
            &live,
            &readme,
            &edit("rules.yaml", &rules_text),
            &edit("rules.test.yaml", &tests_text),
            &edit("grafana-dashboard.json", &dashboard_text),
        );
        assert!(
            problems.iter().any(|p| p.contains(named)),
            "{from} -> {to} in {file} went unnoticed: {problems:#?}"
        );
    }
}

/// Everything wrong with the three files against the live exposition and README.
fn check_all(
    live: &Exposition,
    readme: &str,
    rules_text: &str,
    tests_text: &str,
    dashboard_text: &str,
) -> Vec<String> {
    let rules = RuleFile::parse(rules_text);
    let checker = Checker {
        live,
        readme,
        records: &rules.records,
    };
    let mut problems = Vec::new();
    for name in ALERTS {
        if !rules.alerts.contains(*name) {
            problems.push(format!("rules.yaml: no alert {name}"));
        }
    }
    problems.extend(rules.problems.iter().cloned());
    for (place, expr) in &rules.exprs {
        checker.check(&format!("rules.yaml {place}"), expr, true, &mut problems);
    }
    // The unit tests' input series and expressions: real metrics and labels (their values are
    // made up to drive the rules).
    for (place, expr) in RuleFile::parse(tests_text).test_exprs {
        checker.check(
            &format!("rules.test.yaml {place}"),
            &expr,
            false,
            &mut problems,
        );
    }

    let dashboard = Dashboard::parse(dashboard_text);
    problems.extend(dashboard.problems.iter().cloned());
    let mut shown = BTreeSet::new();
    for (place, expr) in &dashboard.exprs {
        let grouped = checker.check(place, expr, true, &mut problems);
        let refs = Refs::of(expr);
        // Every selector follows the dashboard's job and instance filters.
        for (metric, matchers) in &refs.metrics {
            shown.insert(metric.clone());
            for (label, var) in [("job", "$job"), ("instance", "$instance")] {
                if !matchers
                    .iter()
                    .any(|(l, op, v)| l == label && op == "=~" && v == var)
                {
                    problems.push(format!(
                        "{place}: {metric} is not filtered by {label}=~\"{var}\""
                    ));
                }
            }
        }
        // The legend names labels the query's result has.
        if let Some(legend) = dashboard.legends.get(place) {
            for label in legend_labels(legend) {
                let ok = if grouped.is_empty() {
                    checker.known_labels(&refs).contains(&label)
                } else {
                    grouped.contains(&label)
                };
                if !ok {
                    problems.push(format!(
                        "{place}: the legend names {{{{{label}}}}}, which its query's result lacks"
                    ));
                }
            }
        }
    }
    for query in &dashboard.variable_queries {
        checker.check("a template variable", query, true, &mut problems);
    }
    for metric in DASHBOARD_METRICS {
        if !shown.contains(*metric) {
            problems.push(format!("the dashboard has no panel showing {metric}"));
        }
    }
    problems
}

struct Checker<'a> {
    live: &'a Exposition,
    readme: &'a str,
    /// Recording rule -> its expression.
    records: &'a BTreeMap<String, String>,
}

impl Checker<'_> {
    /// Whether README documents `value` of `label` (a problem type in the Errors table, a
    /// stage in the list of stages, `reason="client_gone"`).
    fn documented(&self, label: &str, value: &str) -> bool {
        self.readme.contains(&format!("`{value}`"))
            || self.readme.contains(&format!("{label}=\"{value}\""))
    }

    /// Labels the series an expression reads have: the target's, those of the metrics it
    /// names (through the recording rules it reads too), and those label_replace makes.
    fn known_labels(&self, refs: &Refs) -> BTreeSet<String> {
        let mut known: BTreeSet<String> = TARGET_LABELS.iter().map(|s| s.to_string()).collect();
        known.extend(refs.made.iter().cloned());
        for (metric, _) in &refs.metrics {
            known.extend(self.live.labels_of(metric));
        }
        for record in &refs.records {
            if let Some(expr) = self.records.get(record) {
                known.extend(self.known_labels(&Refs::of(expr)));
            }
        }
        known
    }

    /// Checks one expression's names; `values`: its label values too. Returns the labels of
    /// its `by` clauses.
    fn check(
        &self,
        place: &str,
        expr: &str,
        values: bool,
        problems: &mut Vec<String>,
    ) -> BTreeSet<String> {
        let refs = Refs::of(expr);
        for (metric, matchers) in &refs.metrics {
            if !self.live.samples.contains_key(metric) {
                problems.push(format!("{place}: {metric} is not in the live /metrics"));
            }
            if !self.live.families.contains(family(metric)) {
                problems.push(format!(
                    "{place}: no family {} in the live /metrics",
                    family(metric)
                ));
            }
            let labels = self.live.labels_of(metric);
            for (label, op, value) in matchers {
                if TARGET_LABELS.contains(&label.as_str()) {
                    continue;
                }
                if !labels.contains(label) {
                    problems.push(format!(
                        "{place}: {metric} has no label {label} in the live /metrics"
                    ));
                } else if values
                    && (op == "=" || op == "!=")
                    && !self.live.has_value(metric, label, value)
                    && !self.documented(label, value)
                {
                    problems.push(format!(
                        "{place}: {metric}{{{label}=\"{value}\"}} is neither in the live /metrics nor documented in README"
                    ));
                }
            }
        }
        for record in &refs.records {
            if !self.records.contains_key(record) {
                problems.push(format!("{place}: no recording rule {record} in rules.yaml"));
            }
        }
        let known = self.known_labels(&refs);
        for label in refs.grouping.iter().chain(&refs.read) {
            if !known.contains(label) {
                problems.push(format!(
                    "{place}: label {label} is on none of the series it reads ({:?})",
                    refs.metrics.iter().map(|m| &m.0).collect::<BTreeSet<_>>()
                ));
            }
        }
        refs.by
    }
}
