//! gradcam-serve: an image classifier (ResNet-50, ImageNet-1k) that says not only what it sees
//! but where it looked.
//!
//! Module map, in the order a request flows through it:
//!
//! - [`input`]: bytes to image (format by magic bytes, EXIF orientation, any colour type to
//!   RGB, pixel limits) and image to network input (Pillow-style antialiased resize to 224x224,
//!   ImageNet normalisation). Pure Rust.
//! - [`model`]: ResNet-50 on libtorch with torchvision's parameter names, weight files
//!   (safetensors or PyTorch zip, local or downloaded once with a hash check), and the batched
//!   forward + partial backward pass that yields activations and gradients.
//! - [`cam`]: the Grad-CAM family (GradCAM, HiResCAM, GradCAM++, XGradCAM, LayerCAM) and
//!   normalisation, as plain arithmetic on those activations and gradients.
//! - [`render`]: bilinear upsampling, colour maps, blending onto the photograph, PNG.
//! - [`engine`]: the worker queue: a bounded queue and one model thread that batches.
//! - [`http`]: the axum service (`POST /explain`, `POST /predict`, health, metrics, info),
//!   problem responses, URL fetching, start-up and graceful shutdown.
//! - [`metrics`]: Prometheus counters and histograms.
//! - [`config`]: `serve` settings (flags and `GRADCAM_*` environment variables).
//! - [`cli`]: the `gradcam-serve` command line.

pub mod cam;
pub mod cli;
pub mod config;
pub mod engine;
pub mod http;
pub mod input;
pub mod metrics;
pub mod model;
pub mod render;
