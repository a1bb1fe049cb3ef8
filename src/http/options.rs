//! Request options, from the query string, multipart fields or JSON members alike. Text values
//! (query and multipart) are taken exactly as sent: numbers in plain decimal, names and booleans
//! ignoring ASCII case, nothing trimmed. JSON members must have the type the schema gives them
//! (a number for `top_k`, a boolean for `overlay`, a string for `method`, ...). An invalid or
//! unknown option is refused with what is allowed.

use super::problem::ApiError;
use crate::backend::{ExplainOptions, Layer, MAX_TOP_K};
use crate::cam::Method;
use crate::render::{Colormap, DEFAULT_JPEG_QUALITY, OverlayOptions, PictureFormat};

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
    "overlay_format",
    "overlay_quality",
    "heatmap_image",
    "faithfulness",
];
/// Names accepted by `/predict`.
pub const PREDICT_OPTIONS: &[&str] = &["top_k"];
/// Most predictions `/predict` lists.
pub const MAX_PREDICT_TOP_K: usize = 1000;

#[derive(Debug, Clone, PartialEq)]
pub struct ExplainRequest {
    pub explain: ExplainOptions,
    pub overlay: Option<OverlayOptions>,
    pub pictures: Pictures,
}

/// How the pictures of a JSON answer are encoded, and whether the map comes as a picture too.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pictures {
    /// The overlay's encoding (`overlay_format`).
    pub format: PictureFormat,
    /// JPEG quality (`overlay_quality`), 1..=100; other formats are lossless.
    pub quality: u8,
    /// `heatmap_image`: the colour-mapped map alone as an RGBA PNG, alpha from the map.
    pub heatmap_image: bool,
    /// Its longer side: `overlay_max_side` when given (the map upsampled to the photograph's
    /// aspect), otherwise none (the map's own size).
    pub heatmap_side: Option<u32>,
    /// The colour map of the map picture (the overlay's, `colormap`).
    pub colormap: Colormap,
}

impl Default for Pictures {
    fn default() -> Self {
        Self {
            format: PictureFormat::Png,
            quality: DEFAULT_JPEG_QUALITY,
            heatmap_image: false,
            heatmap_side: None,
            colormap: Colormap::default(),
        }
    }
}

/// One option's value as it arrived.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// From the query string or a multipart field.
    Text(String),
    /// A JSON member.
    Json(serde_json::Value),
}

/// Raw options in arrival order (later ones override earlier ones).
#[derive(Debug, Default, Clone)]
pub struct RawOptions(pub Vec<(String, Value)>);

fn invalid(name: &str, v: impl std::fmt::Display, allowed: &str) -> ApiError {
    ApiError::InvalidOption(format!("{name} {v} is not valid; allowed: {allowed}"))
}

/// A JSON member of the wrong type; the message names the member and both types.
fn wrong_type(name: &str, want: &str, got: &serde_json::Value) -> ApiError {
    let kind = match got {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    };
    ApiError::InvalidOption(format!("{name} must be {want}, not {kind} ({got})"))
}

/// Plain decimal as README promises: an optional minus, digits, and (for numbers) one point
/// with digits after it; no sign `+`, exponent, `inf`, `NaN` or spaces.
fn plain_decimal(t: &str, fraction: bool) -> bool {
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let t = t.strip_prefix('-').unwrap_or(t);
    match t.split_once('.') {
        None => digits(t),
        Some((whole, part)) => fraction && digits(whole) && digits(part),
    }
}

impl Value {
    /// A whole number in `range`: decimal text, or a JSON integer.
    fn integer<T>(&self, name: &str, range: std::ops::RangeInclusive<T>) -> Result<T, ApiError>
    where
        T: std::str::FromStr + TryFrom<i64> + PartialOrd + std::fmt::Display,
    {
        let allowed = format!("{}..={}", range.start(), range.end());
        let (x, shown) = match self {
            Value::Text(t) => (
                plain_decimal(t, false)
                    .then(|| t.parse::<T>().ok())
                    .flatten(),
                format!("{t:?}"),
            ),
            Value::Json(j) => {
                let n = j
                    .as_i64()
                    .ok_or_else(|| wrong_type(name, "an integer", j))?;
                (T::try_from(n).ok(), n.to_string())
            }
        };
        x.filter(|x| range.contains(x))
            .ok_or_else(|| invalid(name, shown, &allowed))
    }

    /// A number in `range`: decimal text, or a JSON number. f64, so that a tiny negative such
    /// as -1e-300 is refused rather than rounded to -0.
    fn number(&self, name: &str, range: std::ops::RangeInclusive<f64>) -> Result<f64, ApiError> {
        let allowed = format!("{}..={}", range.start(), range.end());
        let (x, shown) = match self {
            Value::Text(t) => (
                plain_decimal(t, true)
                    .then(|| t.parse::<f64>().ok())
                    .flatten(),
                format!("{t:?}"),
            ),
            Value::Json(j) => (
                Some(j.as_f64().ok_or_else(|| wrong_type(name, "a number", j))?),
                j.to_string(),
            ),
        };
        x.filter(|x| range.contains(x))
            .ok_or_else(|| invalid(name, shown, &allowed))
    }

    /// `true` or `false`: text ignoring ASCII case, or a JSON boolean.
    fn boolean(&self, name: &str) -> Result<bool, ApiError> {
        match self {
            Value::Text(t) if t.eq_ignore_ascii_case("true") => Ok(true),
            Value::Text(t) if t.eq_ignore_ascii_case("false") => Ok(false),
            Value::Text(t) => Err(invalid(name, format!("{t:?}"), "true or false")),
            Value::Json(serde_json::Value::Bool(b)) => Ok(*b),
            Value::Json(j) => Err(wrong_type(name, "a boolean", j)),
        }
    }

    /// One of a list of names: text ignoring ASCII case, or a JSON string.
    fn name<T: std::str::FromStr<Err = String>>(&self, name: &str) -> Result<T, ApiError> {
        let text = match self {
            Value::Text(t) => t.as_str(),
            Value::Json(serde_json::Value::String(s)) => s.as_str(),
            Value::Json(j) => return Err(wrong_type(name, "a string", j)),
        };
        text.parse().map_err(|e: String| {
            // In a query string `+` means a space: `method=gradcam++` arrives as "gradcam  ".
            let plus = text.replace(' ', "+");
            if text.contains(' ') && plus.parse::<T>().is_ok() {
                let encoded = plus.replace('+', "%2B");
                ApiError::InvalidOption(format!(
                    "{e}. In a query string `+` means a space: write {encoded} for {plus}{}",
                    if plus.eq_ignore_ascii_case("gradcam++") {
                        ", or use the alias gradcampp"
                    } else {
                        ""
                    }
                ))
            } else {
                ApiError::InvalidOption(e)
            }
        })
    }
}

impl RawOptions {
    /// Options of `/explain`; `max_side` is the server's overlay limit, `classes` the model's
    /// class count. Every occurrence of an option is checked, and the last one counts.
    pub fn explain(&self, max_side: u32, classes: usize) -> Result<ExplainRequest, ApiError> {
        let mut explain = ExplainOptions::default();
        let mut overlay = OverlayOptions {
            max_side,
            ..Default::default()
        };
        let mut with_overlay = true;
        let mut pictures = Pictures::default();
        for (k, v) in &self.0 {
            match k.as_str() {
                "class" => explain.class = Some(v.integer(k, 0..=classes as i64 - 1)?),
                "top_k" => explain.top_k = v.integer(k, 1..=MAX_TOP_K.min(classes))?,
                "layer" => explain.layer = v.name::<Layer>(k)?,
                "method" => explain.method = v.name::<Method>(k)?,
                "colormap" => overlay.colormap = v.name::<Colormap>(k)?,
                "alpha" => overlay.alpha = v.number(k, 0.0..=1.0)? as f32,
                "overlay" => with_overlay = v.boolean(k)?,
                "overlay_max_side" => {
                    overlay.max_side = v.integer(k, 16..=max_side)?;
                    pictures.heatmap_side = Some(overlay.max_side);
                }
                "overlay_format" => pictures.format = v.name::<PictureFormat>(k)?,
                "overlay_quality" => pictures.quality = v.integer(k, 1..=100)?,
                "heatmap_image" => pictures.heatmap_image = v.boolean(k)?,
                "faithfulness" => explain.faithfulness = v.boolean(k)?,
                _ => return Err(unknown(k, EXPLAIN_OPTIONS)),
            }
        }
        explain.validate(classes).map_err(ApiError::InvalidOption)?;
        pictures.colormap = overlay.colormap;
        Ok(ExplainRequest {
            explain,
            overlay: with_overlay.then_some(overlay),
            pictures,
        })
    }

    /// `top_k` of `/predict` (default 5, or every class of a smaller model), at most the
    /// model's `classes`.
    pub fn predict(&self, classes: usize) -> Result<usize, ApiError> {
        let mut top_k = 5.min(classes);
        for (k, v) in &self.0 {
            match k.as_str() {
                "top_k" => top_k = v.integer(k, 1..=MAX_PREDICT_TOP_K.min(classes))?,
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
                .map(|(k, v)| (k.to_string(), Value::Text(v.to_string())))
                .collect(),
        )
    }

    fn json(pairs: &[(&str, serde_json::Value)]) -> RawOptions {
        RawOptions(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Value::Json(v.clone())))
                .collect(),
        )
    }

    #[test]
    fn defaults_are_the_seed() {
        let r = raw(&[]).explain(1024, 1000).unwrap();
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
        .explain(1024, 1000)
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
            raw(&[("overlay", "false")])
                .explain(1024, 1000)
                .unwrap()
                .overlay,
            None
        );
        let p = raw(&[
            ("overlay_format", "JPEG"),
            ("overlay_quality", "60"),
            ("heatmap_image", "true"),
            ("colormap", "turbo"),
        ])
        .explain(1024, 1000)
        .unwrap()
        .pictures;
        assert_eq!(
            p,
            Pictures {
                format: PictureFormat::Jpeg,
                quality: 60,
                heatmap_image: true,
                heatmap_side: None,
                colormap: Colormap::Turbo,
            }
        );
        assert_eq!(r.pictures.heatmap_side, Some(256));
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
            (&[("overlay_format", "gif")], "png, jpeg, webp"),
            (&[("overlay_quality", "0")], "1..=100"),
            (&[("overlay_quality", "101")], "1..=100"),
            (&[("heatmap_image", "yes")], "true or false"),
        ];
        for (pairs, needle) in cases {
            match raw(pairs).explain(1024, 1000) {
                Err(ApiError::InvalidOption(m)) => assert!(m.contains(needle), "{pairs:?}: {m}"),
                other => panic!("{pairs:?}: {other:?}"),
            }
        }
        assert!(matches!(
            raw(&[("method", "gradcam")]).predict(1000),
            Err(ApiError::InvalidOption(_))
        ));
        assert_eq!(raw(&[("top_k", "1000")]).predict(1000).unwrap(), 1000);
        // A 7-class model lists at most its 7 classes, and all of them by default below 5.
        assert!(matches!(
            raw(&[("top_k", "8")]).predict(7),
            Err(ApiError::InvalidOption(m)) if m.contains("1..=7")
        ));
        assert_eq!(raw(&[]).predict(3).unwrap(), 3);
    }

    #[test]
    fn values_are_taken_exactly_as_sent() {
        for (name, value) in [
            ("method", "gradcam  "),
            ("method", " gradcam"),
            ("layer", "layer4 "),
            ("top_k", " 2"),
            ("alpha", "0.5 "),
            ("alpha", "0.5e0"),
            ("alpha", "5e-1"),
            ("alpha", "+0.5"),
            ("alpha", ".5"),
            ("alpha", "NaN"),
            ("alpha", "inf"),
            ("top_k", "+2"),
            ("top_k", "2.0"),
            ("overlay", "true "),
        ] {
            assert!(
                matches!(
                    raw(&[(name, value)]).explain(1024, 1000),
                    Err(ApiError::InvalidOption(_))
                ),
                "{name}={value:?}"
            );
        }
        for (alpha, want) in [("0.5", 0.5), ("1", 1.0), ("0", 0.0), ("0.25", 0.25)] {
            let r = raw(&[("alpha", alpha)]).explain(1024, 1000).unwrap();
            assert_eq!(r.overlay.map(|o| f64::from(o.alpha)), Some(want), "{alpha}");
        }
        let r = raw(&[
            ("method", "GradCAMpp"),
            ("overlay", "FALSE"),
            ("layer", "LAYER3"),
        ])
        .explain(1024, 1000)
        .unwrap();
        assert_eq!(r.explain.method, Method::GradCamPlusPlus);
        assert_eq!(r.explain.layer, Layer::Layer3);
        assert_eq!(r.overlay, None);
    }

    #[test]
    fn an_unencoded_plus_gets_a_hint() {
        let Err(ApiError::InvalidOption(m)) = raw(&[("method", "gradcam  ")]).explain(1024, 1000)
        else {
            panic!("gradcam plus two spaces must be refused");
        };
        assert!(
            m.contains("gradcam%2B%2B") && m.contains("gradcampp"),
            "{m}"
        );
    }

    #[test]
    fn json_members_must_have_their_schema_type() {
        use serde_json::json;
        let cases = [
            ("top_k", json!("2"), "must be an integer, not a string"),
            ("top_k", json!(2.5), "must be an integer, not a number"),
            ("class", json!(true), "must be an integer, not a boolean"),
            ("overlay", json!("false"), "must be a boolean, not a string"),
            ("alpha", json!("0.5"), "must be a number, not a string"),
            ("method", json!(3), "must be a string, not a number"),
            ("layer", json!(["layer3"]), "must be a string, not an array"),
        ];
        for (name, value, needle) in cases {
            match json(&[(name, value.clone())]).explain(1024, 1000) {
                Err(ApiError::InvalidOption(m)) => {
                    assert!(
                        m.contains(name) && m.contains(needle),
                        "{name}={value}: {m}"
                    )
                }
                other => panic!("{name}={value}: {other:?}"),
            }
        }
        let r = json(&[
            ("top_k", json!(2)),
            ("overlay", json!(false)),
            ("alpha", json!(0.25)),
            ("method", json!("hirescam")),
        ])
        .explain(1024, 1000)
        .unwrap();
        assert_eq!((r.explain.top_k, r.explain.method), (2, Method::HiResCam));
        assert_eq!(r.overlay, None);
    }
}
