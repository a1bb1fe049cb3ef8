//! One explained picture's files: its overlays (PNG, one per explained class) and its JSON
//! document, typed like the server's answers and made of the same parts (the backend's
//! [`Prediction`]s and [`Explanation`]s, the input's [`Region`]), with each overlay named by
//! its file instead of carried in base64.

use super::inputs::Picture;
use super::outputs;
use super::pipeline::Prepared;
use crate::backend::{Description, ExplainResult, Explanation, Precision, Prediction};
use crate::input::Region;
use crate::render::{self, OverlayOptions};
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A picture's JSON document (`NAME.json`).
#[derive(Serialize)]
pub struct Document<'a> {
    /// The picture's path, as given or found.
    pub image: String,
    pub width: u32,
    pub height: u32,
    /// The rectangle of the picture the network saw and the maps cover.
    pub map_region: Region,
    pub model: &'a str,
    pub device: &'a str,
    pub precision: Precision,
    pub weights_sha256: &'a str,
    pub predictions: &'a [Prediction],
    pub explanations: Vec<ExplanationFile<'a>>,
    pub timings_ms: FileTimings,
}

/// One explained class: the explanation as the server sends it, and its overlay's file name.
#[derive(Serialize)]
pub struct ExplanationFile<'a> {
    #[serde(flatten)]
    pub explanation: &'a Explanation,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay: Option<String>,
}

/// Milliseconds per stage for one picture; the model's time is its whole batch's.
#[derive(Serialize)]
pub struct FileTimings {
    pub decode: f64,
    pub inference_batch: f64,
    pub batch_size: usize,
    pub render: f64,
}

/// Writes the files of explained pictures.
pub struct Writer<'a> {
    pub out: &'a Path,
    pub description: &'a Description,
    pub overlay: OverlayOptions,
    /// Whether the JSON document is written (`--no-json` leaves it out).
    pub json: bool,
}

/// The model's answer for one picture, as the pipeline hands it over.
pub struct Answer<'a> {
    pub prepared: &'a Prepared,
    pub result: &'a ExplainResult,
    pub batch_ms: f64,
    pub batch_size: usize,
}

impl Writer<'_> {
    /// Writes `files` (as [`outputs::files`] names them: overlays first, the document last),
    /// each atomically.
    pub fn write(&self, picture: &Picture, files: &[PathBuf], answer: &Answer) -> Result<()> {
        let started = Instant::now();
        let ready = &answer.prepared.ready;
        let mut names = files.iter();
        let mut explanations = Vec::new();
        for e in &answer.result.explanations {
            let mut overlay = None;
            if let Some(base) = &ready.overlay_base {
                let region = ready.region.fraction_of(ready.width, ready.height);
                let png = render::encode_png(&render::overlay(
                    base,
                    &e.normalized,
                    e.heatmap.width,
                    e.heatmap.height,
                    &self.overlay,
                    region.as_ref(),
                ));
                let name = names.next().context("an overlay name")?;
                outputs::write_atomic(&self.out.join(name), &png)?;
                overlay = Some(file_name(name));
            }
            explanations.push(ExplanationFile {
                explanation: e,
                overlay,
            });
        }
        if !self.json {
            return Ok(());
        }
        let d = self.description;
        let doc = Document {
            image: picture.path.to_string_lossy().into_owned(),
            width: ready.width,
            height: ready.height,
            map_region: ready.region,
            model: &d.model,
            device: &d.device,
            precision: d.precision,
            weights_sha256: &d.weights.sha256,
            predictions: &answer.result.predictions,
            explanations,
            timings_ms: FileTimings {
                decode: answer.prepared.decode_ms,
                inference_batch: answer.batch_ms,
                batch_size: answer.batch_size,
                render: started.elapsed().as_secs_f64() * 1e3,
            },
        };
        let name = names.next().context("the document's name")?;
        outputs::write_atomic(&self.out.join(name), &serde_json::to_vec_pretty(&doc)?)
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}
