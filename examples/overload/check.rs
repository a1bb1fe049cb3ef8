//! Checks of single answers.

use crate::http::Answer;
use crate::malformed::Bad;
use crate::reference::Reference;
use serde_json::Value;

/// A good request must be answered 200 with the reference's class and heatmap (within 1e-4
/// of its largest magnitude) and an overlay, or refused with 429/503 and Retry-After.
/// Returns what was wrong, if anything.
pub fn good(reference: &Reference, answer: &Answer) -> Option<String> {
    let body = &answer.body;
    match answer.status {
        200 => {
            let v: Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return Some(format!("200 with a body that is not JSON: {e}")),
            };
            let e = &v["explanations"][0];
            if e["class_index"].as_u64() != Some(reference.class) {
                return Some(format!(
                    "class {} instead of {}",
                    e["class_index"], reference.class
                ));
            }
            let map: Vec<f64> =
                serde_json::from_value(e["heatmap"]["data"].clone()).unwrap_or_default();
            let scale = reference.heatmap.iter().fold(0f64, |m, x| m.max(x.abs()));
            let diff = map
                .iter()
                .zip(&reference.heatmap)
                .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            if map.len() != reference.heatmap.len() || diff > 1e-4 * scale {
                return Some(format!("heatmap differs from the reference by {diff}"));
            }
            if e["overlay_png"].as_str().is_none_or(str::is_empty) {
                return Some("no overlay".into());
            }
            None
        }
        429 | 503 if answer.retry_after.is_some() => None,
        s => Some(format!(
            "good request answered {s}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )),
    }
}

/// A malformed request must get its own status and problem type; a near-limit image its
/// explanation or a refusal with Retry-After. Returns what was wrong, if anything.
pub fn malformed(bad: &Bad, answer: &Answer) -> Option<String> {
    let v: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    let status = answer.status;
    if bad.status == 200 {
        return match status {
            200 if v["explanations"][0]["overlay_png"].is_string() => None,
            429 | 503 if answer.retry_after.is_some() => None,
            _ => Some(format!("{}: got {status} {}", bad.name, v["type"])),
        };
    }
    (status != bad.status || v["type"] != bad.problem).then(|| {
        format!(
            "{}: expected {} {}, got {status} {}",
            bad.name, bad.status, bad.problem, v["type"]
        )
    })
}
