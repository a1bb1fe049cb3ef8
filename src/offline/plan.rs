//! Before any model is loaded: the arguments checked, the pictures found, their output files
//! named, and (with `--resume`) the pictures whose outputs and summary record are complete
//! left out.

use super::inputs::{self, Picture};
use super::outputs::{self, Summary};
use crate::backend::ExplainOptions;
use crate::config::ExplainConfig;
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::path::PathBuf;

/// The explanation options of a run, checked as far as they can be without the model (the
/// class is checked against the model's classes once it is loaded).
pub fn options(args: &ExplainConfig) -> Result<ExplainOptions> {
    let opts = ExplainOptions {
        class: args.class,
        top_k: args.top_k,
        layer: args.layer,
        method: args.method,
        faithfulness: args.faithfulness,
    };
    opts.validate(usize::MAX).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.alpha),
        "--alpha {} is out of range; allowed: 0 to 1",
        args.alpha
    );
    anyhow::ensure!(
        args.max_side >= 16,
        "--max-side {} is out of range; allowed: 16 and more (as the server's overlay_max_side)",
        args.max_side
    );
    anyhow::ensure!(
        args.batch_size.is_none_or(|b| (1..=256).contains(&b)),
        "--batch-size must be 1 to 256"
    );
    if args.no_overlay && args.no_json && args.summary.is_none() {
        bail!("--no-overlay and --no-json leave nothing to write: add --summary FILE");
    }
    anyhow::ensure!(
        args.max_inflight_pixels >= 1024,
        "--max-inflight-pixels must be at least 1024"
    );
    Ok(opts)
}

/// Which files each picture's outputs take under `--out`.
pub struct Outputs {
    pub dir: PathBuf,
    /// Classes explained per picture (one overlay each).
    pub explained: usize,
    pub overlay: bool,
    pub json: bool,
}

impl Outputs {
    pub fn of(args: &ExplainConfig) -> Self {
        Outputs {
            dir: args.out.clone(),
            explained: args.class.map_or(args.top_k, |_| 1),
            overlay: !args.no_overlay,
            json: !args.no_json,
        }
    }

    /// The picture's files, relative to the directory, in the order written.
    pub fn files(&self, p: &Picture) -> Vec<PathBuf> {
        outputs::files(&p.stem, self.explained, self.overlay, self.json)
    }

    /// Whether every file of the picture is there.
    fn complete(&self, p: &Picture) -> bool {
        self.files(p).iter().all(|f| self.dir.join(f).is_file())
    }
}

/// What a run has to do.
pub struct Work {
    /// Every picture found, in input order (the summary's order).
    pub pictures: Vec<Picture>,
    /// Those still to explain.
    pub todo: Vec<Picture>,
    pub summary: Option<Summary>,
    /// Files in the given directories that are not images.
    pub not_images: usize,
}

impl Work {
    /// Finds the pictures (never the run's own outputs), refuses two that would write the same
    /// file, opens the summary, and with `--resume` leaves out the pictures already done.
    pub fn find(args: &ExplainConfig, outputs: &Outputs) -> Result<Self> {
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))?;
        let out = args
            .out
            .canonicalize()
            .with_context(|| format!("reading {}", args.out.display()))?;
        let summary_path = args.summary.as_ref().and_then(|s| s.canonicalize().ok());
        let found = inputs::find(
            &args.images,
            args.from_list.as_deref(),
            &out,
            summary_path.as_deref(),
        )?;
        let pictures = found.pictures;
        if pictures.is_empty() {
            bail!("no image files found in the given inputs");
        }
        inputs::check_clashes(&pictures, |p| outputs.files(p))?;
        // With --resume, whether each picture's files are all there, asked once per picture.
        let complete: Vec<bool> = pictures
            .iter()
            .map(|p| args.resume && outputs.complete(p))
            .collect();
        let by_path: HashMap<String, bool> = pictures
            .iter()
            .zip(&complete)
            .map(|(p, c)| (p.path.to_string_lossy().into_owned(), *c))
            .collect();
        let summary = match &args.summary {
            Some(path) => Some(Summary::open(
                path,
                args.summary_format,
                args.resume,
                |p| by_path.get(p).copied().unwrap_or(false),
            )?),
            None => None,
        };
        // Done: every file there and, when there is a summary, its record too.
        let todo: Vec<Picture> = pictures
            .iter()
            .zip(&complete)
            .filter(|(p, complete)| {
                let recorded = summary
                    .as_ref()
                    .is_none_or(|s| s.has(&p.path.to_string_lossy()));
                !(**complete && recorded)
            })
            .map(|(p, _)| p.clone())
            .collect();
        Ok(Work {
            pictures,
            todo,
            summary,
            not_images: found.not_images,
        })
    }
}
