//! Shared helpers for the tests (end-to-end and in-process): where the PyTorch reference lives and how to read it.
//!
//! `scripts/test.sh` generates the reference (tests/reference.py) into the cache and points
//! `GRADCAM_TEST_REFERENCE` at it. Without it these tests fail rather than skip: a parity test
//! that silently does not run proves nothing.
#![allow(dead_code)]

pub mod origin;
pub mod raw;
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

/// A generated reference directory that `scripts/test.sh` names in the variable `var`
/// (`scripts/reference.sh NAME` makes it); a test without it fails rather than skips.
pub fn generated_dir(var: &str) -> PathBuf {
    let dir = PathBuf::from(std::env::var_os(var).unwrap_or_else(|| {
        panic!("{var} is not set: run the tests with scripts/test.sh, which generates it")
    }));
    assert!(
        dir.join("stamp").exists(),
        "nothing generated in {}",
        dir.display()
    );
    dir
}

/// A photograph (or other file) of tests/fixtures: its path.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The same file's bytes.
pub fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

pub fn synthetic(name: &str) -> PathBuf {
    reference_dir().join("synthetic").join(name)
}

/// The media type of a fixture photograph, from its file extension.
pub fn content_type(file: &str) -> &'static str {
    match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        _ => panic!("no media type known for {file}"),
    }
}

/// A JPEG of 37 bytes whose header claims 65000 x 65000 pixels: SOI, a baseline SOF0 with three
/// components, an empty scan, EOI.
pub fn huge_jpeg() -> Vec<u8> {
    let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08];
    jpeg.extend_from_slice(&65000u16.to_be_bytes());
    jpeg.extend_from_slice(&65000u16.to_be_bytes());
    jpeg.extend_from_slice(&[3, 1, 0x11, 0, 2, 0x11, 1, 3, 0x11, 1]);
    jpeg.extend_from_slice(&[
        0xFF, 0xDA, 0x00, 0x0C, 3, 1, 0x00, 2, 0x11, 3, 0x11, 0x00, 0x3F, 0x00, 0xFF, 0xD9,
    ]);
    jpeg
}

/// A PNG of 57 bytes whose header claims 100000 x 100000 RGB pixels: the signature, an IHDR
/// chunk, an empty IDAT and IEND, all with valid checksums.
pub fn huge_png() -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    for chunk in [&b"IDAT"[..], &b"IEND"[..]] {
        png.extend_from_slice(&0u32.to_be_bytes());
        png.extend_from_slice(chunk);
        png.extend_from_slice(&crc32(chunk).to_be_bytes());
    }
    png
}

/// The CRC-32 of PNG chunks (type and data).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
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
    Model::load(w, Device::Cpu, &Default::default()).unwrap()
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

/// `img` as a baseline JPEG of `quality`.
pub fn encode_jpeg(img: &image::RgbImage, quality: u8) -> Vec<u8> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .write_image(
            img,
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

/// `img` as a PNG, compressed fast.
pub fn encode_png(img: &image::RgbImage) -> Vec<u8> {
    use image::ImageEncoder;
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let mut out = Vec::new();
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
        .write_image(
            img,
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}
