//! Readers of what the observability test checks: the text exposition of /metrics, PromQL
//! (the names an expression uses), the rules files (line by line: they keep each `expr:` inline
//! or as a block scalar, and each input series quoted on its line) and the dashboard's JSON.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// The samples of a text exposition: metric name -> each sample's labels.
pub struct Exposition {
    pub samples: BTreeMap<String, Vec<BTreeMap<String, String>>>,
    /// Families declared by `# TYPE`.
    pub families: BTreeSet<String>,
}

impl Exposition {
    pub fn parse(text: &str) -> Self {
        let mut samples: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
        let mut families = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                families.insert(rest.split(' ').next().unwrap().to_string());
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let end = line.find(['{', ' ']).expect("a sample line has a value");
            let name = &line[..end];
            let mut labels = BTreeMap::new();
            if line[end..].starts_with('{') {
                let mut chars = line[end + 1..].chars().peekable();
                loop {
                    let label: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    assert_eq!(chars.next(), Some('"'), "{line}");
                    let mut value = String::new();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => value.push(chars.next().unwrap()),
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                    labels.insert(label, value);
                    if chars.peek() == Some(&',') {
                        chars.next();
                    }
                    if chars.peek() == Some(&'}') {
                        break;
                    }
                }
            }
            samples.entry(name.to_string()).or_default().push(labels);
        }
        Self { samples, families }
    }

    pub fn labels_of(&self, metric: &str) -> BTreeSet<String> {
        self.samples
            .get(metric)
            .into_iter()
            .flatten()
            .flat_map(|l| l.keys().cloned())
            .collect()
    }

    pub fn has_value(&self, metric: &str, label: &str, value: &str) -> bool {
        self.samples
            .get(metric)
            .into_iter()
            .flatten()
            .any(|l| l.get(label).is_some_and(|v| v == value))
    }
}

/// The family of a sample name: a histogram's series without their suffix.
pub fn family(metric: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| metric.strip_suffix(s))
        .unwrap_or(metric)
}

/// A PromQL token.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num,
    Range,
    Op(String),
}

fn tokens(expr: &str) -> Vec<Tok> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            // A comment, to the end of the line.
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '"' || c == '\'' || c == '`' {
            let mut s = String::new();
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && c != '`' && i + 1 < chars.len() {
                    i += 1;
                }
                s.push(chars[i]);
                i += 1;
            }
            i += 1;
            out.push(Tok::Str(s));
        } else if c == '[' {
            // A range or subquery: its durations and Grafana's variables are not names.
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
            out.push(Tok::Range);
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            out.push(Tok::Num);
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            if ["=~", "!~", "!=", "==", ">=", "<="].contains(&two.as_str()) {
                out.push(Tok::Op(two));
                i += 2;
            } else {
                out.push(Tok::Op(c.to_string()));
                i += 1;
            }
        }
    }
    out
}

/// A label matcher: label, operator (`=`, `!=`, `=~`, `!~`), value.
pub type Matcher = (String, String, String);

/// What an expression names.
#[derive(Debug, Default)]
pub struct Refs {
    /// Each `gradcam_*` selector with its matchers (label, operator, value).
    pub metrics: Vec<(String, Vec<Matcher>)>,
    /// Recording rules (`gradcam:*`) it reads.
    pub records: BTreeSet<String>,
    /// Labels of `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`.
    pub grouping: BTreeSet<String>,
    /// Of those, the ones of `by` (what an aggregation's result keeps).
    pub by: BTreeSet<String>,
    /// label_replace's destination labels (made) and source labels (read).
    pub made: BTreeSet<String>,
    pub read: BTreeSet<String>,
}

impl Refs {
    pub fn of(expr: &str) -> Self {
        let toks = tokens(expr);
        let mut refs = Refs::default();
        let mut i = 0;
        while i < toks.len() {
            let Tok::Ident(word) = &toks[i] else {
                i += 1;
                continue;
            };
            let next_is = |t: &str| toks.get(i + 1) == Some(&Tok::Op(t.into()));
            if next_is("{") {
                // A selector: its matchers, `label op "value"`, up to the closing brace.
                let mut matchers = Vec::new();
                let mut j = i + 2;
                while j < toks.len() && toks[j] != Tok::Op("}".into()) {
                    if let (Some(Tok::Ident(l)), Some(Tok::Op(op)), Some(Tok::Str(v))) =
                        (toks.get(j), toks.get(j + 1), toks.get(j + 2))
                    {
                        matchers.push((l.clone(), op.clone(), v.clone()));
                        j += 3;
                    } else {
                        j += 1;
                    }
                }
                if word.starts_with("gradcam_") {
                    refs.metrics.push((word.clone(), matchers));
                } else if word.starts_with("gradcam:") {
                    refs.records.insert(word.clone());
                }
                i = j + 1;
                continue;
            }
            if word.starts_with("gradcam_") {
                refs.metrics.push((word.clone(), Vec::new()));
            } else if word.starts_with("gradcam:") {
                refs.records.insert(word.clone());
            } else if next_is("(")
                && [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&word.as_str())
            {
                let mut j = i + 2;
                while j < toks.len() && toks[j] != Tok::Op(")".into()) {
                    if let Tok::Ident(l) = &toks[j] {
                        refs.grouping.insert(l.clone());
                        if word == "by" {
                            refs.by.insert(l.clone());
                        }
                    }
                    j += 1;
                }
                i = j;
                continue;
            } else if word == "label_replace" && next_is("(") {
                // label_replace(v, "dst", "replacement", "src", "regex"): the strings of its
                // arguments 1 and 3, at its own depth.
                let (mut depth, mut arg) = (0, 0);
                for t in &toks[i + 1..] {
                    match t {
                        Tok::Op(o) if o == "(" => depth += 1,
                        Tok::Op(o) if o == ")" => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        Tok::Op(o) if o == "," && depth == 1 => arg += 1,
                        Tok::Str(s) if depth == 1 && arg == 1 => {
                            refs.made.insert(s.clone());
                        }
                        Tok::Str(s) if depth == 1 && arg == 3 => {
                            refs.read.insert(s.clone());
                        }
                        _ => {}
                    }
                }
            }
            i += 1;
        }
        refs
    }
}

/// Labels a legend (`{{route}} {{code}}`) names.
pub fn legend_labels(legend: &str) -> Vec<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|s| s.split_once("}}"))
        .map(|(l, _)| l.trim().to_string())
        .collect()
}

/// What a rules file (or a rules test file) holds, read line by line: the files keep each
/// `expr:` inline or as a block scalar, and each series quoted on its line.
#[derive(Default)]
pub struct RuleFile {
    /// (where, expression) of every rule.
    pub exprs: Vec<(String, String)>,
    pub records: BTreeMap<String, String>,
    pub alerts: BTreeSet<String>,
    /// A test file's input series and expressions.
    pub test_exprs: Vec<(String, String)>,
    pub problems: Vec<String>,
}

impl RuleFile {
    pub fn parse(text: &str) -> Self {
        let lines: Vec<&str> = text.lines().collect();
        let mut file = RuleFile::default();
        // The rule being read ("alert NAME" or "record NAME") and the keys of its block.
        let mut current: Option<(String, BTreeSet<String>)> = None;
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i];
            let trimmed = line.trim_start();
            let body = trimmed.strip_prefix("- ").unwrap_or(trimmed);
            // The key's column: a block scalar's lines are indented deeper.
            let column = line.len() - body.len();
            i += 1;
            if body.starts_with('#') {
                continue;
            }
            let Some((key, value)) = body.split_once(':') else {
                continue;
            };
            let mut value = value.trim().to_string();
            if ["|", "|-", ">", ">-"].contains(&value.as_str()) {
                let mut block = Vec::new();
                while i < lines.len() {
                    let l = lines[i];
                    if !l.trim().is_empty() && l.len() - l.trim_start().len() <= column {
                        break;
                    }
                    block.push(l.trim());
                    i += 1;
                }
                value = block.join(" ");
            }
            match key {
                "record" | "alert" => {
                    finish_rule(current.take(), &mut file.problems);
                    if key == "alert" {
                        file.alerts.insert(value.clone());
                    }
                    current = Some((format!("{key} {value}"), BTreeSet::new()));
                }
                "expr" => match &current {
                    Some((rule, _)) => {
                        if let Some(record) = rule.strip_prefix("record ") {
                            file.records.insert(record.to_string(), value.clone());
                        }
                        file.exprs.push((rule.clone(), value));
                    }
                    None => file.test_exprs.push((format!("expr {value}"), value)),
                },
                "series" => {
                    let series = value.trim_matches('\'').to_string();
                    file.test_exprs.push((format!("series {series}"), series));
                }
                other => {
                    if let Some((_, keys)) = current.as_mut() {
                        keys.insert(other.to_string());
                    }
                }
            }
        }
        finish_rule(current.take(), &mut file.problems);
        file
    }
}

/// An alert's block must say how long it waits, how severe it is, and what it means.
fn finish_rule(rule: Option<(String, BTreeSet<String>)>, problems: &mut Vec<String>) {
    if let Some((name, keys)) = rule
        && name.starts_with("alert ")
    {
        for key in ["for", "severity", "summary", "description"] {
            if !keys.contains(key) {
                problems.push(format!("rules.yaml {name}: no `{key}`"));
            }
        }
    }
}

/// The dashboard's queries and what its structure must be.
pub struct Dashboard {
    /// (panel title and query, expression)
    pub exprs: Vec<(String, String)>,
    /// The legend of each query, by the same place.
    pub legends: BTreeMap<String, String>,
    pub variable_queries: Vec<String>,
    pub problems: Vec<String>,
}

impl Dashboard {
    pub fn parse(text: &str) -> Self {
        let d: Value = serde_json::from_str(text).expect("the dashboard is JSON");
        let mut dash = Dashboard {
            exprs: Vec::new(),
            legends: BTreeMap::new(),
            variable_queries: Vec::new(),
            problems: Vec::new(),
        };
        let problems = &mut dash.problems;
        if d["schemaVersion"].as_u64().unwrap_or(0) < 36 {
            problems.push(format!(
                "dashboard: schemaVersion {} (at least 36)",
                d["schemaVersion"]
            ));
        }
        let vars = d["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let var = |name: &str| vars.iter().find(|v| v["name"] == name);
        match var("datasource") {
            Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
            _ => {
                problems.push("dashboard: no datasource variable of Prometheus data sources".into())
            }
        }
        for name in ["job", "instance"] {
            match var(name) {
                Some(v) if v["type"] == "query" => {
                    let query = v["query"]["query"]
                        .as_str()
                        .or(v["query"].as_str())
                        .unwrap_or("");
                    dash.variable_queries.push(query.to_string());
                }
                _ => problems.push(format!("dashboard: no query variable {name}")),
            }
        }
        // Panels, those inside rows included.
        let mut panels = Vec::new();
        for p in d["panels"].as_array().into_iter().flatten() {
            panels.push(p.clone());
            panels.extend(p["panels"].as_array().into_iter().flatten().cloned());
        }
        let mut ids = BTreeSet::new();
        let mut cells = BTreeMap::new();
        let ours = |ds: &Value| ds["uid"] == "${datasource}" && ds["type"] == "prometheus";
        for p in &panels {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            if !ids.insert(p["id"].as_u64()) {
                problems.push(format!("panel {title}: id {} is taken", p["id"]));
            }
            if p["type"] == "row" {
                continue;
            }
            if !ours(&p["datasource"]) {
                problems.push(format!(
                    "panel {title}: its data source is not ${{datasource}}"
                ));
            }
            let g = &p["gridPos"];
            let pos = |k: &str| g[k].as_u64().unwrap_or(0);
            let (x, y, w, h) = (pos("x"), pos("y"), pos("w"), pos("h"));
            if w == 0 || h == 0 || x + w > 24 {
                problems.push(format!(
                    "panel {title}: gridPos {g} is outside the 24 columns"
                ));
            }
            for cx in x..x + w {
                for cy in y..y + h {
                    if let Some(other) = cells.insert((cx, cy), title.clone()) {
                        problems.push(format!("panel {title} overlaps {other}"));
                    }
                }
            }
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                problems.push(format!("panel {title}: no query"));
            }
            for t in targets {
                let place = format!("panel {title} query {}", t["refId"].as_str().unwrap_or("?"));
                if !ours(&t["datasource"]) {
                    problems.push(format!("{place}: its data source is not ${{datasource}}"));
                }
                let expr = t["expr"].as_str().unwrap_or("").to_string();
                if expr.is_empty() {
                    problems.push(format!("{place}: no expression"));
                }
                if let Some(legend) = t["legendFormat"].as_str() {
                    dash.legends.insert(place.clone(), legend.to_string());
                }
                dash.exprs.push((place, expr));
            }
        }
        dash
    }
}
