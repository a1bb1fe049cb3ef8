//! The JSON answers, as types: each matches its schema in openapi.yaml (`ExplainResponse`,
//! `PredictResponse`, `Status`, `Info`, `Labels`), so that a change to one shows up in review
//! next to the other, and the contract test checks them against each other.

use crate::backend::{Description, Explanation, LibtorchInfo, Precision, Prediction, WeightsInfo};
use crate::config::ServeConfig;
use crate::input::{Preprocess, Ready, Region};
use crate::render::PictureFormat;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct ImageInfo {
    pub width: u32,
    pub height: u32,
    pub format: String,
    /// The rectangle of the picture the network saw and the maps cover.
    pub map_region: Region,
}

impl ImageInfo {
    pub fn of(p: &Ready) -> Self {
        ImageInfo {
            width: p.width,
            height: p.height,
            format: format!("{:?}", p.format).to_lowercase(),
            map_region: p.region,
        }
    }
}

/// Milliseconds spent in each stage of one request.
#[derive(Debug, Serialize, Default, Clone)]
pub struct Timings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch_ms: Option<f64>,
    pub decode_ms: f64,
    pub queue_ms: f64,
    pub inference_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub render_ms: Option<f64>,
    pub total_ms: f64,
    pub batch_size: usize,
}

#[derive(Serialize)]
pub struct ExplanationBody<'a> {
    #[serde(flatten)]
    pub explanation: &'a Explanation,
    /// The overlay, base64, in the one of these that `overlay_format` names; none with
    /// `overlay=false`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay_png: Option<Picture>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay_jpeg: Option<Picture>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay_webp: Option<Picture>,
    /// `heatmap_image=true`: the colour-mapped map alone, RGBA PNG with alpha from the map.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heatmap_png: Option<Picture>,
}

/// An encoded picture in a JSON answer, sent as base64. serde writes a placeholder where it
/// goes and [`ExplainBody::to_json`] writes the base64 there, straight into the answer's bytes:
/// megabytes of base64 are then neither held in a string of their own nor scanned again by
/// serde for characters to escape (base64 has none).
#[derive(Debug)]
pub struct Picture(pub Vec<u8>);

/// What a [`Picture`] is serialised as: one NUL, which JSON writes escaped.
const PLACEHOLDER: &str = "\u{0}";
const PLACEHOLDER_JSON: &[u8] = br#""\u0000""#;
/// The members whose values are pictures, as they precede the value in compact JSON. A string
/// cannot hold these bytes unescaped (its quotes are written `\"`), so a placeholder after one
/// of them is a picture's, whatever the labels say.
const PICTURE_MEMBERS: [&[u8]; 4] = [
    br#""overlay_png":"#,
    br#""overlay_jpeg":"#,
    br#""overlay_webp":"#,
    br#""heatmap_png":"#,
];

impl Serialize for Picture {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(PLACEHOLDER)
    }
}

impl<'a> ExplanationBody<'a> {
    pub fn new(explanation: &'a Explanation) -> Self {
        Self {
            explanation,
            overlay_png: None,
            overlay_jpeg: None,
            overlay_webp: None,
            heatmap_png: None,
        }
    }

    /// The overlay in the member for its format.
    pub fn set_overlay(&mut self, format: PictureFormat, picture: Vec<u8>) {
        let member = match format {
            PictureFormat::Png => &mut self.overlay_png,
            PictureFormat::Jpeg => &mut self.overlay_jpeg,
            PictureFormat::Webp => &mut self.overlay_webp,
        };
        *member = Some(Picture(picture));
    }

    /// The pictures in the order serde writes them.
    pub fn pictures(&self) -> impl Iterator<Item = &[u8]> {
        [
            &self.overlay_png,
            &self.overlay_jpeg,
            &self.overlay_webp,
            &self.heatmap_png,
        ]
        .into_iter()
        .flatten()
        .map(|p| p.0.as_slice())
    }
}

/// `/explain`'s answer: `/predict`'s, plus the explanations.
#[derive(Serialize)]
pub struct ExplainBody<'a> {
    #[serde(flatten)]
    pub answer: PredictBody<'a>,
    pub explanations: Vec<ExplanationBody<'a>>,
}

impl ExplainBody<'_> {
    /// The answer as JSON, each picture in base64 (see [`Picture`]).
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        let pictures = self.explanations.iter().flat_map(ExplanationBody::pictures);
        json_with_pictures(self, pictures.collect())
    }
}

/// `value` as JSON with each [`Picture`] in it in base64: `pictures` are their bytes, in the
/// order serde writes them.
pub fn json_with_pictures(
    value: &impl Serialize,
    pictures: Vec<&[u8]>,
) -> serde_json::Result<Vec<u8>> {
    let skeleton = serde_json::to_vec(value)?;
    let base64: usize = pictures.iter().map(|p| p.len().div_ceil(3) * 4).sum();
    let mut pictures = pictures.into_iter();
    let mut out = Vec::with_capacity(skeleton.len() + base64);
    let mut rest = skeleton.as_slice();
    while let Some(at) = rest
        .windows(PLACEHOLDER_JSON.len())
        .position(|w| w == PLACEHOLDER_JSON)
    {
        let (before, after) = rest.split_at(at);
        out.extend_from_slice(before);
        let picture = PICTURE_MEMBERS
            .iter()
            .any(|m| before.ends_with(m))
            .then(|| pictures.next())
            .flatten();
        match picture {
            Some(p) => {
                out.push(b'"');
                base64_simd::STANDARD.encode_append(p, &mut out);
                out.push(b'"');
            }
            None => out.extend_from_slice(PLACEHOLDER_JSON),
        }
        rest = &after[PLACEHOLDER_JSON.len()..];
    }
    out.extend_from_slice(rest);
    debug_assert!(
        pictures.next().is_none(),
        "a picture was not placed: this is a bug"
    );
    Ok(out)
}

#[derive(Serialize)]
pub struct PredictBody<'a> {
    pub model: &'a str,
    pub device: &'a str,
    /// The number type the network's trunk ran in for this answer.
    pub precision: Precision,
    pub image: ImageInfo,
    pub timings: Timings,
    pub predictions: &'a [Prediction],
}

/// `/health/live` and `/health/ready` when all is well.
#[derive(Debug, Serialize)]
pub struct StatusBody {
    pub status: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Label<'a> {
    pub index: usize,
    pub label: &'a str,
}

#[derive(Debug, Serialize)]
pub struct LabelsBody<'a> {
    pub labels: Vec<Label<'a>>,
}

/// `/info`: what runs, and the limits a client must respect.
#[derive(Debug, Serialize)]
pub struct InfoBody {
    pub model: String,
    /// The architecture, one of torchvision's ResNet family.
    pub architecture: String,
    pub classes: usize,
    /// Where the class names come from: a labels file, `imagenet` or `generic`.
    pub labels: String,
    /// The preprocessing the model expects.
    pub input: Preprocess,
    pub weights: WeightsInfo,
    pub device: String,
    /// The number type of the network's trunk (maps and probabilities are f32 in all).
    pub precision: Precision,
    pub versions: Versions,
    pub limits: Limits,
    pub batching: Batching,
}

#[derive(Debug, Serialize)]
pub struct Versions {
    pub gradcam_serve: &'static str,
    /// The libtorch release in use at run time, e.g. `2.11.0+cu130`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub libtorch: Option<String>,
    /// Where it was loaded from, what the binary was built for, its CUDA version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub libtorch_detail: Option<LibtorchInfo>,
}

#[derive(Debug, Serialize)]
pub struct Limits {
    pub body_limit_bytes: usize,
    pub max_image_pixels: u64,
    pub max_overlay_side: u32,
    pub fetch_max_bytes: u64,
    pub fetch_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub max_top_k: usize,
}

#[derive(Debug, Serialize)]
pub struct Batching {
    pub max_batch_size: usize,
    pub max_batch_delay_ms: u64,
    pub queue_capacity: usize,
}

impl InfoBody {
    pub fn new(backend: &Description, config: &ServeConfig) -> Self {
        InfoBody {
            model: backend.model.clone(),
            architecture: backend.model.clone(),
            classes: backend.classes,
            labels: backend.labels_source.clone(),
            input: backend.input,
            weights: backend.weights.clone(),
            device: backend.device.clone(),
            precision: backend.precision,
            versions: Versions {
                gradcam_serve: env!("CARGO_PKG_VERSION"),
                libtorch: backend.libtorch.as_ref().map(|l| l.version.clone()),
                libtorch_detail: backend.libtorch.clone(),
            },
            limits: Limits {
                body_limit_bytes: config.body_limit,
                max_image_pixels: config.max_image_pixels,
                max_overlay_side: config.max_overlay_side,
                fetch_max_bytes: config.fetch_max_bytes,
                fetch_timeout_ms: config.fetch_timeout_ms,
                request_timeout_ms: config.request_timeout_ms,
                max_top_k: crate::backend::MAX_TOP_K,
            },
            batching: Batching {
                max_batch_size: config.max_batch_size,
                max_batch_delay_ms: config.max_batch_delay_ms,
                queue_capacity: config.queue_capacity,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Heatmap, Layer};
    use crate::cam::Method;
    use image::ImageFormat;

    fn explanation(label: &str) -> Explanation {
        Explanation {
            class_index: 3,
            label: label.to_string(),
            layer: Layer::Layer4,
            method: Method::GradCam,
            heatmap: Heatmap {
                width: 2,
                height: 1,
                data: vec![0.5, -1.0],
                min: -1.0,
                max: 0.5,
            },
            normalized: vec![1.0, 0.0],
            empty: false,
            faithfulness: None,
        }
    }

    #[test]
    fn pictures_are_spliced_in_as_base64_in_their_members_and_labels_stay_as_they_are() {
        // Labels that hold the placeholder, or text that looks like a picture member, must
        // come back exactly; each picture lands in its own member, in order.
        let tricky = ["\u{0}", "x\",\"overlay_png\":\"\u{0}", "plain"];
        let explanations: Vec<Explanation> = tricky.iter().map(|l| explanation(l)).collect();
        let pictures: [&[u8]; 5] = [b"first", b"", b"\x00\xff\x10second", b"heat", b"third!"];
        let mut bodies: Vec<ExplanationBody> =
            explanations.iter().map(ExplanationBody::new).collect();
        bodies[0].set_overlay(PictureFormat::Png, pictures[0].to_vec());
        bodies[0].heatmap_png = Some(Picture(pictures[1].to_vec()));
        bodies[1].set_overlay(PictureFormat::Jpeg, pictures[2].to_vec());
        bodies[1].heatmap_png = Some(Picture(pictures[3].to_vec()));
        bodies[2].set_overlay(PictureFormat::Webp, pictures[4].to_vec());
        let predictions = [Prediction {
            index: 3,
            label: "\u{0}".into(),
            probability: 0.5,
            logit: 1.0,
        }];
        let body = ExplainBody {
            answer: PredictBody {
                model: "resnet50",
                device: "cpu",
                precision: Precision::Fp32,
                image: ImageInfo {
                    width: 2,
                    height: 1,
                    format: format!("{:?}", ImageFormat::Png).to_lowercase(),
                    map_region: Region::whole(2, 1),
                },
                timings: Timings::default(),
                predictions: &predictions,
            },
            explanations: bodies,
        };
        let json: serde_json::Value = serde_json::from_slice(&body.to_json().unwrap()).unwrap();
        let b64 = |p: &[u8]| serde_json::Value::from(base64_simd::STANDARD.encode_to_string(p));
        let e = &json["explanations"];
        assert_eq!(e[0]["overlay_png"], b64(pictures[0]));
        assert_eq!(e[0]["heatmap_png"], b64(pictures[1]));
        assert_eq!(e[1]["overlay_jpeg"], b64(pictures[2]));
        assert_eq!(e[1]["heatmap_png"], b64(pictures[3]));
        assert_eq!(e[2]["overlay_webp"], b64(pictures[4]));
        for (i, label) in tricky.iter().enumerate() {
            assert_eq!(e[i]["label"], *label);
        }
        assert_eq!(json["predictions"][0]["label"], "\u{0}");
        assert_eq!(e[2].get("overlay_png"), None);
    }
}
