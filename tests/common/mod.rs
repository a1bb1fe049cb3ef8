//! Shared helpers for the end-to-end tests: where the PyTorch reference lives and how to read it.
//!
//! `scripts/test.sh` generates the reference (tests/reference.py) into the cache and points
//! `GRADCAM_TEST_REFERENCE` at it. Without it these tests fail rather than skip: a parity test
//! that silently does not run proves nothing.
#![allow(dead_code)]

pub mod server;

use gradcam_serve::model::{Model, weights};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use tch::{Device, Tensor};

pub fn reference_dir() -> PathBuf {
    let dir = std::env::var_os("GRADCAM_TEST_REFERENCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("GRADCAM_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/gradcam-serve")
                });
            cache.join("reference")
        });
    assert!(
        dir.join("stamp").exists(),
        "no PyTorch reference at {}: run the tests with scripts/test.sh, which generates it",
        dir.display()
    );
    dir
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn synthetic(name: &str) -> PathBuf {
    reference_dir().join("synthetic").join(name)
}

#[derive(Debug, serde::Deserialize)]
pub struct Photo {
    pub file: String,
    pub name: String,
    pub top3: Vec<i64>,
}

#[derive(Debug, serde::Deserialize)]
pub struct Meta {
    pub photos: Vec<Photo>,
}

pub struct Reference {
    pub meta: Meta,
    pub tensors: HashMap<String, Vec<f32>>,
}

impl Reference {
    pub fn vec(&self, key: &str) -> Vec<f32> {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("reference has no {key}"))
            .clone()
    }
}

pub static REFERENCE: LazyLock<Reference> = LazyLock::new(|| {
    let dir = reference_dir();
    let meta: Meta =
        serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    let tensors = Tensor::read_safetensors(dir.join("reference.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap()))
        .collect();
    Reference { meta, tensors }
});

pub fn load_model(file: &str) -> Model {
    let path = reference_dir().join(file);
    let w = weights::resolve(path.to_str().unwrap(), &std::env::temp_dir()).unwrap();
    Model::load(w, Device::Cpu).unwrap()
}

/// One model per test binary: loading takes a second, and tests run in parallel threads.
pub static MODEL: LazyLock<Mutex<Model>> =
    LazyLock::new(|| Mutex::new(load_model("weights.safetensors")));

/// Largest absolute difference, and the largest absolute value of the reference.
pub fn max_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let scale = b.iter().map(|v| v.abs()).fold(0f32, f32::max);
    (d, scale)
}
