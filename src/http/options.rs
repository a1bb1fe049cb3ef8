//! Request options, from the query string, multipart fields or JSON members alike: each arrives
//! as text (JSON numbers and booleans are taken by their text), is checked here, and an invalid
//! or unknown one is refused with what is allowed.

use super::problem::ApiError;
use crate::backend::{ExplainOptions, Layer, MAX_TOP_K};
use crate::cam::Method;
use crate::render::{Colormap, OverlayOptions};

/// Names accepted by `/explain`.
pub const EXPLAIN_OPTIONS: &[&str] = &[
    "class",
    "top_k",
    "layer",
    "method",
    "colormap",
    "alpha",
    "overlay",
    "overlay_max_side",
];
/// Names accepted by `/predict`.
pub const PREDICT_OPTIONS: &[&str] = &["top_k"];
/// Most predictions `/predict` lists.
pub const MAX_PREDICT_TOP_K: usize = 1000;

#[derive(Debug, Clone, PartialEq)]
pub struct ExplainRequest {
    pub explain: ExplainOptions,
    pub overlay: Option<OverlayOptions>,
}

/// Raw option pairs in arrival order (later ones override earlier ones).
#[derive(Debug, Default, Clone)]
pub struct RawOptions(pub Vec<(String, String)>);

fn invalid(name: &str, v: &str, allowed: &str) -> ApiError {
    ApiError::InvalidOption(format!("{name} {v:?} is not valid; allowed: {allowed}"))
}

/// Parses a number and checks its range; the message names both.
fn ranged<T>(name: &str, v: &str, range: std::ops::RangeInclusive<T>) -> Result<T, ApiError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let allowed = format!("{}..={}", range.start(), range.end());
    let x: T = v.trim().parse().map_err(|_| invalid(name, v, &allowed))?;
    if range.contains(&x) {
        Ok(x)
    } else {
        Err(invalid(name, v, &allowed))
    }
}

fn named<T: std::str::FromStr<Err = String>>(v: &str) -> Result<T, ApiError> {
    v.trim().parse().map_err(ApiError::InvalidOption)
}

impl RawOptions {
    /// Options of `/explain`; `max_side` is the server's overlay limit. Every occurrence of an
    /// option is checked, and the last one counts.
    pub fn explain(&self, max_side: u32) -> Result<ExplainRequest, ApiError> {
        let mut explain = ExplainOptions::default();
        let mut overlay = OverlayOptions {
            max_side,
            ..Default::default()
        };
        let mut with_overlay = true;
        for (k, v) in &self.0 {
            match k.as_str() {
                "class" => explain.class = Some(ranged(k, v, 0..=999)?),
                "top_k" => explain.top_k = ranged(k, v, 1..=MAX_TOP_K)?,
                "layer" => explain.layer = named::<Layer>(v)?,
                "method" => explain.method = named::<Method>(v)?,
                "colormap" => overlay.colormap = named::<Colormap>(v)?,
                // f64, so that a tiny negative such as -1e-300 is refused rather than rounded to -0.
                "alpha" => overlay.alpha = ranged::<f64>(k, v, 0.0..=1.0)? as f32,
                "overlay" => {
                    with_overlay = v
                        .trim()
                        .parse()
                        .map_err(|_| invalid(k, v, "true or false"))?
                }
                "overlay_max_side" => overlay.max_side = ranged(k, v, 16..=max_side)?,
                _ => return Err(unknown(k, EXPLAIN_OPTIONS)),
            }
        }
        explain.validate().map_err(ApiError::InvalidOption)?;
        Ok(ExplainRequest {
            explain,
            overlay: with_overlay.then_some(overlay),
        })
    }

    /// `top_k` of `/predict` (default 5).
    pub fn predict(&self) -> Result<usize, ApiError> {
        let mut top_k = 5;
        for (k, v) in &self.0 {
            match k.as_str() {
                "top_k" => top_k = ranged(k, v, 1..=MAX_PREDICT_TOP_K)?,
                _ => return Err(unknown(k, PREDICT_OPTIONS)),
            }
        }
        Ok(top_k)
    }
}

fn unknown(name: &str, allowed: &[&str]) -> ApiError {
    ApiError::InvalidOption(format!(
        "unknown option {name:?}; allowed: {}",
        allowed.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&str, &str)]) -> RawOptions {
        RawOptions(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn defaults_are_the_seed() {
        let r = raw(&[]).explain(1024).unwrap();
        assert_eq!(r.explain, ExplainOptions::default());
        assert_eq!(r.overlay, Some(OverlayOptions::default()));
    }

    #[test]
    fn all_options_parse_and_later_values_win() {
        let r = raw(&[
            ("method", "hirescam"),
            ("method", "gradcam++"),
            ("layer", "layer3"),
            ("class", "281"),
            ("top_k", "2"),
            ("colormap", "viridis"),
            ("alpha", "0.7"),
            ("overlay_max_side", "256"),
        ])
        .explain(1024)
        .unwrap();
        assert_eq!(r.explain.method, Method::GradCamPlusPlus);
        assert_eq!(r.explain.layer, Layer::Layer3);
        assert_eq!(r.explain.class, Some(281));
        assert_eq!(r.explain.top_k, 2);
        assert_eq!(
            r.overlay,
            Some(OverlayOptions {
                colormap: Colormap::Viridis,
                alpha: 0.7,
                max_side: 256
            })
        );
        assert_eq!(
            raw(&[("overlay", "false")]).explain(1024).unwrap().overlay,
            None
        );
    }

    #[test]
    fn bad_options_say_what_is_allowed() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("class", "1000")], "0..=999"),
            (&[("class", "cat")], "0..=999"),
            (&[("top_k", "11")], "1..=10"),
            (&[("top_k", "11"), ("top_k", "1")], "1..=10"),
            (&[("alpha", "1.5")], "0..=1"),
            (&[("alpha", "NaN")], "0..=1"),
            (&[("alpha", "-0.1")], "0..=1"),
            (&[("alpha", "-2.2e-313")], "0..=1"),
            (&[("overlay_max_side", "4096")], "16..=1024"),
            (&[("overlay", "maybe")], "true or false"),
            (&[("method", "scorecam")], "layercam"),
            (&[("colour", "jet")], "colormap"),
        ];
        for (pairs, needle) in cases {
            match raw(pairs).explain(1024) {
                Err(ApiError::InvalidOption(m)) => assert!(m.contains(needle), "{pairs:?}: {m}"),
                other => panic!("{pairs:?}: {other:?}"),
            }
        }
        assert!(matches!(
            raw(&[("method", "gradcam")]).predict(),
            Err(ApiError::InvalidOption(_))
        ));
        assert_eq!(raw(&[("top_k", "1000")]).predict().unwrap(), 1000);
    }
}
