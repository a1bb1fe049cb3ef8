//! What `explain` writes: per picture its overlays and JSON document, and one summary record
//! (a JSON line or a CSV row). Every file is written whole under a temporary name and renamed
//! into place, so that an interrupted run never leaves a half-written file under a final name;
//! a picture's summary record follows its files, so that a record means the files are there.

use crate::backend::ExplainResult;
pub use crate::config::SummaryFormat;
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically (a temporary file beside it, then a rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.partial"));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// The files a picture's outputs take under `out` (relative names), in the order written:
/// overlays first, the JSON document last.
pub fn files(stem: &Path, explained: usize, overlay: bool, json: bool) -> Vec<PathBuf> {
    // The name as the file system has it (it need not be UTF-8), plus a suffix.
    let name = stem.file_name().unwrap_or_default();
    let with = |suffix: String| {
        let mut n = name.to_os_string();
        n.push(suffix);
        stem.with_file_name(n)
    };
    let mut files = Vec::new();
    if overlay {
        files.push(with(".png".into()));
        for rank in 1..explained {
            files.push(with(format!(".{rank}.png")));
        }
    }
    if json {
        files.push(with(".json".into()));
    }
    files
}

/// A picture's summary record: predictions, the first explained class and its map's
/// statistics, the files written; or the reason it was skipped.
pub fn record(path: &Path, result: Result<(&ExplainResult, &[PathBuf]), &str>) -> Value {
    let path = path.to_string_lossy();
    match result {
        Err(error) => json!({ "path": path, "status": "skipped", "error": error }),
        Ok((r, files)) => {
            let e = &r.explanations[0];
            let n = e.normalized.len().max(1);
            let (peak, _) =
                e.normalized
                    .iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                        if v > best.1 { (i, v) } else { best }
                    });
            let w = e.heatmap.width.max(1);
            json!({
                "path": path,
                "status": "ok",
                "predictions": r.predictions.iter().take(5).collect::<Vec<_>>(),
                "class_index": e.class_index,
                "label": e.label,
                "map": {
                    "width": e.heatmap.width,
                    "height": e.heatmap.height,
                    "raw_max": e.heatmap.data.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                    "mean": e.normalized.iter().sum::<f32>() / n as f32,
                    "peak": { "x": peak % w, "y": peak / w },
                    "empty": e.empty,
                },
                "files": files.iter().map(|f| f.to_string_lossy()).collect::<Vec<_>>(),
            })
        }
    }
}

/// The CSV summary's columns: everything the JSONL record holds, flattened (the top-5 as five
/// triples, empty where a model has fewer classes; files joined with `;`).
const CSV_COLUMNS: [&str; 28] = [
    "path",
    "status",
    "top1_index",
    "top1_label",
    "top1_probability",
    "top2_index",
    "top2_label",
    "top2_probability",
    "top3_index",
    "top3_label",
    "top3_probability",
    "top4_index",
    "top4_label",
    "top4_probability",
    "top5_index",
    "top5_label",
    "top5_probability",
    "class_index",
    "label",
    "map_width",
    "map_height",
    "map_raw_max",
    "map_mean",
    "map_peak_x",
    "map_peak_y",
    "map_empty",
    "files",
    "error",
];

fn csv_field(v: &Value) -> String {
    let s = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// One line of the summary in `format` (without the newline).
pub fn line(format: SummaryFormat, record: &Value) -> String {
    match format {
        SummaryFormat::Jsonl => record.to_string(),
        SummaryFormat::Csv => {
            let m = &record["map"];
            let files = record["files"].as_array().map(|f| {
                let names: Vec<&str> = f.iter().filter_map(Value::as_str).collect();
                Value::String(names.join(";"))
            });
            let mut fields: Vec<&Value> = vec![&record["path"], &record["status"]];
            for rank in 0..5 {
                let p = &record["predictions"][rank];
                fields.extend([&p["index"], &p["label"], &p["probability"]]);
            }
            fields.extend([&record["class_index"], &record["label"]]);
            for k in ["width", "height", "raw_max", "mean"] {
                fields.push(&m[k]);
            }
            fields.extend([&m["peak"]["x"], &m["peak"]["y"], &m["empty"]]);
            fields.push(files.as_ref().unwrap_or(&Value::Null));
            fields.push(&record["error"]);
            debug_assert_eq!(fields.len(), CSV_COLUMNS.len());
            fields
                .into_iter()
                .map(csv_field)
                .collect::<Vec<_>>()
                .join(",")
        }
    }
}

/// The path a summary line is about, read back for `--resume`; `None` for a header, a broken
/// (half-written) line, or a skipped picture's line.
fn line_path(format: SummaryFormat, line: &str) -> Option<String> {
    match format {
        SummaryFormat::Jsonl => {
            let v: Value = serde_json::from_str(line).ok()?;
            (v["status"] == "ok").then(|| v["path"].as_str().map(str::to_string))?
        }
        SummaryFormat::Csv => {
            let fields = split_csv(line)?;
            (fields.len() == CSV_COLUMNS.len() && fields[1] == "ok" && fields[0] != "path")
                .then(|| fields[0].clone())
        }
    }
}

/// Splits one CSV row as [`csv_field`] writes it; `None` if a quote is left open.
fn split_csv(line: &str) -> Option<Vec<String>> {
    let (mut fields, mut cur, mut quoted, mut chars) =
        (Vec::new(), String::new(), false, line.chars().peekable());
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    fields.push(cur);
    (!quoted).then_some(fields)
}

/// The summary file: records appended (and flushed) as pictures finish, then rewritten in the
/// pictures' order when the run ends.
pub struct Summary {
    path: PathBuf,
    format: SummaryFormat,
    file: std::fs::File,
    /// Every line so far, by picture path.
    lines: HashMap<String, String>,
}

impl Summary {
    /// Opens the summary; with `resume`, keeps the lines of an earlier run that `complete`
    /// accepts (its picture's files are all there) and returns their paths.
    pub fn open(
        path: &Path,
        format: SummaryFormat,
        resume: bool,
        complete: impl Fn(&str) -> bool,
    ) -> Result<Summary> {
        let mut lines = HashMap::new();
        if resume && let Ok(text) = std::fs::read_to_string(path) {
            for l in text.lines() {
                if let Some(p) = line_path(format, l).filter(|p| complete(p)) {
                    lines.insert(p, l.to_string());
                }
            }
        }
        let mut s = Summary {
            path: path.to_path_buf(),
            format,
            file: std::fs::File::create(path)
                .with_context(|| format!("writing {}", path.display()))?,
            lines: HashMap::new(),
        };
        if format == SummaryFormat::Csv {
            writeln!(s.file, "{}", CSV_COLUMNS.join(","))?;
        }
        for (p, l) in lines {
            s.append_line(p, l)?;
        }
        Ok(s)
    }

    /// True when the summary holds a finished record of the picture.
    pub fn has(&self, path: &str) -> bool {
        self.lines.contains_key(path)
    }

    pub fn append(&mut self, record: &Value) -> Result<()> {
        let path = record["path"].as_str().unwrap_or_default().to_string();
        let line = line(self.format, record);
        self.append_line(path, line)
    }

    fn append_line(&mut self, path: String, line: String) -> Result<()> {
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.flush())
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.lines.insert(path, line);
        Ok(())
    }

    /// Rewrites the summary with one line per picture in `order`, atomically.
    pub fn finish(self, order: &[String]) -> Result<()> {
        let mut text = String::new();
        if self.format == SummaryFormat::Csv {
            text.push_str(&CSV_COLUMNS.join(","));
            text.push('\n');
        }
        for p in order {
            if let Some(l) = self.lines.get(p) {
                text.push_str(l);
                text.push('\n');
            }
        }
        write_atomic(&self.path, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_read_back_with_quotes_and_commas() {
        let record = json!({ "path": "a, \"b\".jpg", "status": "ok", "predictions": [] });
        let row = line(SummaryFormat::Csv, &record);
        assert_eq!(
            line_path(SummaryFormat::Csv, &row).as_deref(),
            Some("a, \"b\".jpg")
        );
        assert_eq!(line_path(SummaryFormat::Csv, &CSV_COLUMNS.join(",")), None);
        assert_eq!(line_path(SummaryFormat::Csv, "\"half"), None);
        let skipped = json!({ "path": "x.jpg", "status": "skipped", "error": "bad" });
        assert_eq!(line_path(SummaryFormat::Jsonl, &skipped.to_string()), None);
        assert_eq!(line_path(SummaryFormat::Jsonl, "{\"path\": \"x.jp"), None);
    }

    #[test]
    fn files_are_overlays_then_the_document() {
        let f = files(Path::new("a/cat"), 3, true, true);
        let names: Vec<_> = f.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        assert_eq!(
            names,
            ["a/cat.png", "a/cat.1.png", "a/cat.2.png", "a/cat.json"]
        );
        assert!(files(Path::new("cat"), 3, false, false).is_empty());
    }
}
