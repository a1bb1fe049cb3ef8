//! Request options, from the query string, multipart fields or JSON members alike: each arrives
//! as text (JSON numbers and booleans are taken by their text), is checked here, and an invalid
//! or unknown one is refused with what is allowed.

use super::problem::ApiError;
use crate::cam::Method;
use crate::model::{ExplainOptions, Layer, MAX_TOP_K};
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

impl RawOptions {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn check_known(&self, allowed: &[&str]) -> Result<(), ApiError> {
        match self.0.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            Some((k, _)) => Err(ApiError::InvalidOption(format!(
                "unknown option {k:?}; allowed: {}",
                allowed.join(", ")
            ))),
            None => Ok(()),
        }
    }

    fn parse<T: std::str::FromStr>(
        &self,
        name: &str,
        allowed: &str,
    ) -> Result<Option<T>, ApiError> {
        self.get(name)
            .map(|v| {
                v.trim().parse::<T>().map_err(|_| {
                    ApiError::InvalidOption(format!(
                        "{name} {v:?} is not valid; allowed: {allowed}"
                    ))
                })
            })
            .transpose()
    }

    /// Options of `/explain`; `max_side` is the server's overlay limit.
    pub fn explain(&self, max_side: u32) -> Result<ExplainRequest, ApiError> {
        self.check_known(EXPLAIN_OPTIONS)?;
        let invalid = |m: String| ApiError::InvalidOption(m);
        let layer = self
            .get("layer")
            .map(str::parse::<Layer>)
            .transpose()
            .map_err(invalid)?
            .unwrap_or_default();
        let method = self
            .get("method")
            .map(str::parse::<Method>)
            .transpose()
            .map_err(invalid)?
            .unwrap_or_default();
        let colormap = self
            .get("colormap")
            .map(str::parse::<Colormap>)
            .transpose()
            .map_err(invalid)?
            .unwrap_or_default();
        let explain = ExplainOptions {
            class: self.parse("class", "an integer in 0..=999")?,
            top_k: self
                .parse("top_k", &format!("an integer in 1..={MAX_TOP_K}"))?
                .unwrap_or(1),
            layer,
            method,
        };
        explain.validate().map_err(ApiError::InvalidOption)?;
        let alpha: f32 = self
            .parse("alpha", "a number in 0..=1")?
            .unwrap_or(OverlayOptions::default().alpha);
        if !(0.0..=1.0).contains(&alpha) {
            return Err(invalid(format!(
                "alpha {alpha} is out of range; allowed: 0..=1"
            )));
        }
        let side: u32 = self
            .parse(
                "overlay_max_side",
                &format!("an integer in 16..={max_side}"),
            )?
            .unwrap_or(max_side);
        if !(16..=max_side).contains(&side) {
            return Err(invalid(format!(
                "overlay_max_side {side} is out of range; allowed: 16..={max_side}"
            )));
        }
        let overlay = self
            .parse::<bool>("overlay", "true or false")?
            .unwrap_or(true);
        Ok(ExplainRequest {
            explain,
            overlay: overlay.then_some(OverlayOptions {
                colormap,
                alpha,
                max_side: side,
            }),
        })
    }

    /// `top_k` of `/predict` (default 5).
    pub fn predict(&self) -> Result<usize, ApiError> {
        self.check_known(PREDICT_OPTIONS)?;
        let allowed = format!("an integer in 1..={MAX_PREDICT_TOP_K}");
        let k = self.parse::<usize>("top_k", &allowed)?.unwrap_or(5);
        if !(1..=MAX_PREDICT_TOP_K).contains(&k) {
            return Err(ApiError::InvalidOption(format!(
                "top_k {k} is out of range; allowed: {allowed}"
            )));
        }
        Ok(k)
    }
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
            (&[("alpha", "1.5")], "0..=1"),
            (&[("alpha", "NaN")], "0..=1"),
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
