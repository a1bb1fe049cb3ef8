//! gradcam-serve: an image classifier (ResNet-50, ImageNet-1k) that says not only what it sees
//! but where it looked.
//!
//! Module map, in the order a request flows through it:
//!
//! - [`http`]: the axum service (`POST /explain`, `POST /predict`, health, metrics, info): one
//!   extractor per input form, option checks, problem responses, serving a bound listener and
//!   draining. Knows nothing of tensors.
//! - [`fetch`]: the URL form's fetcher and its address policy (SSRF defence). Knows nothing of
//!   HTTP answers: the HTTP layer maps its errors.
//! - [`input`]: bytes to image (format by magic bytes, EXIF orientation, any colour type to
//!   RGB, pixel limits) and image to network input (Pillow-style antialiased resize to 224x224,
//!   ImageNet normalisation). Pure Rust.
//! - [`engine`]: the worker queue: a bounded queue and one model thread that batches, drops
//!   what must not reach the model, and recovers from faults.
//! - [`backend`]: the seam between the engine and the network (the [`backend::Backend`]
//!   trait) and the request and result types both sides share.
//! - [`model`]: the libtorch backend: ResNet-50 with torchvision's parameter names, weight files
//!   (safetensors or PyTorch zip, local or downloaded once with a hash check), and the batched
//!   forward + partial backward pass.
//! - [`cam`]: the Grad-CAM family (GradCAM, HiResCAM, GradCAM++, XGradCAM, LayerCAM) and
//!   normalisation, as plain arithmetic on activations and gradients.
//! - [`render`]: bilinear upsampling, colour maps, blending onto the photograph, PNG.
//! - [`metrics`]: Prometheus counters and histograms.
//! - [`proto`]: the Open Inference Protocol's gRPC messages and service, generated from
//!   `proto/inference.proto`.
//! - [`config`]: settings types (flags and `GRADCAM_*` environment variables), validated at
//!   start-up.
//! - [`service`]: `serve` from start to stop (engine, listener, HTTP, draining);
//!   [`offline`]: `explain` on image files without the server.
//! - [`cli`]: the `gradcam-serve` command line; nothing else depends on it.
//!
//! `fault` (cargo feature `fault-injection`, tests only) lets a request carry a fault beside
//! its job, which the model thread makes happen, so that tests drive the engine's recovery
//! through the real server.

pub mod backend;
pub mod cam;
pub mod cli;
pub mod config;
pub mod engine;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod fetch;
pub mod http;
pub mod input;
pub mod metrics;
pub mod model;
mod names;
pub mod offline;
pub mod proto;
pub mod render;
pub mod service;
pub mod telemetry;
