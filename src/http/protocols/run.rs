//! The images of one inference-protocol request through the service, each as `/explain` takes
//! an image: the same checks, pixel budget, queue, batching and deadline. They are queued at
//! once, so that they ride in the same batches.

use crate::engine::{Output, Task};
use crate::http::AppState;
use crate::http::bodies::Timings;
use crate::http::budget::Reservation;
use crate::http::explain::{infer_incoming, submit};
use crate::http::input::{Incoming, Source};
use crate::http::options::RawOptions;
use crate::http::problem::ApiError;
use crate::input::Ready;
use axum::body::Bytes;
use std::time::Instant;

/// One image as a protocol names it.
pub enum Image {
    /// An encoded image file.
    File(Bytes),
    /// An image to fetch (the URL form's rules).
    Url(String),
    /// The network's input already made: 3 x size x size floats, channels first.
    Tensor(Vec<f32>),
}

/// What the model made of one image.
pub struct Answered {
    /// The decoded image (its size, and the photograph kept for the overlay); none for a tensor.
    pub decoded: Option<Ready>,
    pub output: Output,
    /// Its pixels stay reserved until the answer is made.
    _reservation: Option<Reservation>,
}

/// Runs every image with `task` (the overlay's longer side `keep`, if one is drawn), all
/// queued at once, to be answered by `deadline`; answers in order. The first failure fails the request (the others are then
/// dropped, and their jobs skipped).
pub async fn run_all(
    state: &AppState,
    images: Vec<Image>,
    task: Task,
    keep: Option<u32>,
    deadline: Instant,
) -> Result<Vec<Answered>, ApiError> {
    let most = state.config.queue_capacity;
    if images.is_empty() {
        return Err(ApiError::Malformed("the request holds no image".into()));
    }
    if images.len() > most {
        return Err(ApiError::InvalidOption(format!(
            "{} images in one request; allowed: at most {most} (the queue's capacity)",
            images.len()
        )));
    }
    let runs = images
        .into_iter()
        .map(|image| run(state, image, task, keep, deadline));
    futures_util::future::try_join_all(runs).await
}

async fn run(
    state: &AppState,
    image: Image,
    task: Task,
    keep: Option<u32>,
    deadline: Instant,
) -> Result<Answered, ApiError> {
    let source = match image {
        Image::Tensor(x) => {
            state.serving()?;
            let mut timings = Timings::default();
            let done = submit(state, x, task, deadline, &mut timings).await?;
            return Ok(Answered {
                decoded: None,
                output: done.output,
                _reservation: None,
            });
        }
        Image::File(bytes) => Source::Bytes(bytes),
        Image::Url(url) => Source::Url(url),
    };
    let incoming = Incoming {
        source,
        options: RawOptions::default(),
    };
    let parse = |_: &RawOptions| Ok((task, (), keep));
    let (inferred, reservation) = infer_incoming(state, incoming, deadline, parse).await?;
    Ok(Answered {
        decoded: Some(inferred.decoded),
        output: inferred.done.output,
        _reservation: Some(reservation),
    })
}

/// A tensor's values checked as the network's input: `3 * size * size` finite numbers.
pub fn check_tensor(values: &[f32], size: u32) -> Result<(), ApiError> {
    let want = 3 * (size as usize).pow(2);
    if values.len() != want {
        return Err(ApiError::InvalidOption(format!(
            "a tensor input holds {} values; allowed: 3 x {size} x {size} = {want} (channels \
             first, normalised as the model's preprocessing does)",
            values.len()
        )));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(ApiError::InvalidOption(
            "a tensor input holds NaN or infinity; allowed: finite numbers".into(),
        ));
    }
    Ok(())
}

/// The one version of the model the protocols name.
pub const MODEL_VERSION: &str = "1";

/// The served model's name (`--model-name`, or its architecture) when the route's `asked`
/// name (and `version`, where the route has one) name it; 404 otherwise.
pub fn served(state: &AppState, asked: &str, version: Option<&str>) -> Result<String, ApiError> {
    let name = model_name(state);
    if asked != name || version.is_some_and(|v| v != MODEL_VERSION) {
        let version = version.map_or(String::new(), |v| format!(" version {v}"));
        return Err(ApiError::NotFound(format!(
            "no model {asked:?}{version} here; this server serves {name:?} (version \
             {MODEL_VERSION})"
        )));
    }
    Ok(name)
}

/// [`served`] for a route whose path holds `name` and, for some, `version`.
pub fn served_at(
    state: &AppState,
    path: &std::collections::HashMap<String, String>,
) -> Result<String, ApiError> {
    let asked = path.get("name").map_or("", String::as_str);
    served(state, asked, path.get("version").map(String::as_str))
}

/// The name the protocols give the model.
pub fn model_name(state: &AppState) -> String {
    let architecture = &state.engine.description().model;
    state.config.protocols.name(architecture).to_string()
}
