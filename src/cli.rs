//! The `gradcam-serve` command line.

use crate::cam::Method;
use crate::input::{self, DecodeLimits};
use crate::model::{self, ExplainOptions, Layer, Model};
use crate::render::{self, Colormap, OverlayOptions};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Parser)]
#[command(
    name = "gradcam-serve",
    version,
    about = "ResNet-50 classification with Grad-CAM explanations"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service.
    Serve(crate::config::ServeConfig),
    /// Classify images and write a heatmap overlay (PNG) and the maps (JSON) for each.
    Explain(ExplainArgs),
}

/// Where the model comes from and where it runs.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Weights: a local .safetensors or PyTorch .pth file, or an http(s) URL downloaded once into
    /// the cache (torchvision's ResNet-50 IMAGENET1K_V2 checkpoint by default).
    #[arg(long, env = "GRADCAM_WEIGHTS", default_value = model::DEFAULT_WEIGHTS_URL)]
    pub weights: String,
    /// Directory for downloaded weights. Default: $XDG_CACHE_HOME/gradcam-serve or
    /// ~/.cache/gradcam-serve.
    #[arg(long, env = "GRADCAM_CACHE")]
    pub cache_dir: Option<PathBuf>,
    /// Device: auto (first GPU if there is one), cpu, cuda or cuda:N.
    #[arg(long, env = "GRADCAM_DEVICE", default_value = "auto", value_parser = model::parse_device)]
    pub device: tch::Device,
}

impl ModelArgs {
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(|| {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(std::env::temp_dir);
            base.join("gradcam-serve")
        })
    }

    /// Resolves (downloading if needed), reads and checks the weights, and places the model.
    pub fn load(&self) -> Result<Model> {
        let file = model::weights::resolve(&self.weights, &self.cache_dir())?;
        tracing::info!(path = %file.path.display(), sha256 = %file.sha256, "weights");
        if let tch::Device::Cuda(n) = self.device {
            let count = tch::Cuda::device_count();
            anyhow::ensure!(
                (n as i64) < count,
                "device cuda:{n} requested but {count} CUDA device(s) are available"
            );
        }
        Ok(Model::load(file, self.device)?)
    }
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Image files (JPEG, PNG, WebP, GIF, BMP, TIFF).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Explain this ImageNet class index (0-999) instead of the top-ranked classes.
    #[arg(long = "class")]
    pub class: Option<i64>,
    /// Explain the k best classes (from the same forward pass).
    #[arg(long, default_value_t = 1)]
    pub top_k: usize,
    /// Layer whose output is explained: layer1, layer2, layer3 or layer4.
    #[arg(long, default_value = "layer4")]
    pub layer: Layer,
    /// gradcam, hirescam, gradcam++, xgradcam or layercam.
    #[arg(long, default_value = "gradcam")]
    pub method: Method,
    /// jet, turbo, viridis, inferno or gray.
    #[arg(long, default_value = "jet")]
    pub colormap: Colormap,
    /// Weight of the heatmap colour in the overlay, 0 to 1.
    #[arg(long, default_value_t = 0.4)]
    pub alpha: f32,
    /// The overlay's longer side is at most this many pixels.
    #[arg(long, default_value_t = 1024)]
    pub max_side: u32,
    /// Output directory for IMAGE.png (and IMAGE.N.png for the N-th further class) and
    /// IMAGE.json.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Explain(args) => explain(args),
        Command::Serve(config) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(crate::http::serve(config, shutdown_signal()))
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what container runtimes send).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

fn explain(args: ExplainArgs) -> Result<()> {
    let opts = ExplainOptions {
        class: args.class,
        top_k: args.top_k,
        layer: args.layer,
        method: args.method,
    };
    opts.validate().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.alpha),
        "--alpha {} is out of range; allowed: 0 to 1",
        args.alpha
    );
    anyhow::ensure!(args.max_side >= 1, "--max-side must be at least 1");
    let overlay = OverlayOptions {
        colormap: args.colormap,
        alpha: args.alpha,
        max_side: args.max_side,
    };

    let model = args.model.load()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let t = Instant::now();
    let mut decoded = Vec::with_capacity(args.images.len());
    for path in &args.images {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let d = input::decode(&bytes, DecodeLimits::default())
            .with_context(|| format!("{}", path.display()))?;
        let x = input::preprocess(&d.image);
        decoded.push((d, x));
    }
    let decode_ms = ms(t);

    let t = Instant::now();
    let items: Vec<(&[f32], ExplainOptions)> =
        decoded.iter().map(|(_, x)| (x.as_slice(), opts)).collect();
    let results = model.explain(&items)?;
    let inference_ms = ms(t);

    for ((path, (d, _)), result) in args.images.iter().zip(&decoded).zip(results) {
        let t = Instant::now();
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let mut overlays = Vec::new();
        for (rank, e) in result.explanations.iter().enumerate() {
            let img = render::overlay(
                &d.image,
                &e.normalized,
                e.heatmap.width,
                e.heatmap.height,
                &overlay,
            );
            let name = if rank == 0 {
                format!("{stem}.png")
            } else {
                format!("{stem}.{rank}.png")
            };
            write(&args.out.join(&name), &render::encode_png(&img))?;
            overlays.push(name);
        }
        let doc = serde_json::json!({
            "image": path,
            "width": d.image.width(),
            "height": d.image.height(),
            "model": model::MODEL_NAME,
            "device": model::device_name(model.device()),
            "weights_sha256": model.weights().sha256,
            "predictions": result.predictions,
            "explanations": result.explanations.iter().zip(&overlays).map(|(e, o)| {
                let mut v = serde_json::to_value(e).expect("explanations serialise: this is a bug");
                v["overlay"] = o.as_str().into();
                v
            }).collect::<Vec<_>>(),
            "timings_ms": {
                "decode_batch": decode_ms,
                "inference_batch": inference_ms,
                "render": ms(t),
            },
        });
        let json = serde_json::to_vec_pretty(&doc).expect("JSON values serialise: this is a bug");
        write(&args.out.join(format!("{stem}.json")), &json)?;
        print_predictions(path, &result.predictions[..5.min(result.predictions.len())]);
    }
    Ok(())
}

fn print_predictions(path: &Path, predictions: &[model::Prediction]) {
    println!("{}", path.display());
    for p in predictions {
        println!(
            "  {:>3}  {:6.2}%  {}",
            p.index,
            100.0 * p.probability,
            p.label
        );
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
