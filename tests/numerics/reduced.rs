//! Large baseline JPEGs are decoded at 1/2 or 1/4 of their size when the answer needs no more
//! (see `input::REDUCED_MARGIN`): what that changes in the network's input, the predictions and
//! the maps, measured against decoding at full size, on real photographs enlarged to 12 MP.
//! The figures are printed (`--no-capture`).

use crate::common::{MODEL, encode_jpeg, fixture};
use gradcam_serve::backend::{Backend, ExplainOptions};
use gradcam_serve::input::{self, DecodeLimits, STD};
use image::metadata::Orientation;
use image::{DynamicImage, RgbImage};

/// A fixture photograph enlarged to `w` x `h` and saved as a baseline JPEG of quality 90.
fn enlarged_jpeg(file: &str, w: u32, h: u32) -> Vec<u8> {
    let img = image::open(fixture(file)).unwrap().to_rgb8();
    let big = image::imageops::resize(&img, w, h, image::imageops::FilterType::CatmullRom);
    encode_jpeg(&big, 90)
}

/// The same JPEG with an EXIF block that gives `orientation` (1 to 8).
fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut exif = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01".to_vec();
    exif.extend_from_slice(&orientation.to_be_bytes());
    exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&(exif.len() as u16 + 2).to_be_bytes());
    out.extend_from_slice(&exif);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// Mean and max difference of two network inputs, in 8-bit levels.
fn levels(a: &[f32], b: &[f32]) -> (f64, f32) {
    let plane = a.len() / 3;
    let (mut sum, mut max) = (0f64, 0f32);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = (x - y).abs() * STD[i / plane] * 255.0;
        sum += f64::from(d);
        max = max.max(d);
    }
    (sum / a.len() as f64, max)
}

/// The network's input and the model's answer from a reduced and from a full-size decoding of
/// two photographs enlarged to 14 MP: within 3 levels (0.25 on average) of each other, the same top-3 classes,
/// and Grad-CAM maps within 0.05 of each other after normalisation.
#[test]
fn reduced_decoding_keeps_the_input_predictions_and_maps() {
    let model = MODEL.lock().unwrap();
    for file in ["coffee.jpg", "chelsea.png"] {
        let jpeg = enlarged_jpeg(file, 4000, 3600);
        let opened = input::open(&jpeg, DecodeLimits::default()).unwrap();
        assert_eq!(opened.decoded_pixels((0, 0)), 1000 * 900, "{file}");
        let reduced = opened.decode_reduced((0, 0)).unwrap();
        assert_eq!(reduced.reduced_by, 4, "{file}");
        assert_eq!(reduced.image.dimensions(), (1000, 900), "{file}");
        assert_eq!((reduced.width, reduced.height), (4000, 3600), "{file}");
        let full = input::decode(&jpeg, DecodeLimits::default()).unwrap();
        assert_eq!(full.reduced_by, 1);

        let (a, b) = (
            input::preprocess(&reduced.image),
            input::preprocess(&full.image),
        );
        let (mean, max) = levels(&a, &b);
        let o = ExplainOptions {
            top_k: 3,
            ..Default::default()
        };
        let got = model.explain(&[(&a, o), (&b, o)]).unwrap();
        let classes = |i: usize| {
            got[i].predictions[..3]
                .iter()
                .map(|p| p.index)
                .collect::<Vec<_>>()
        };
        let map_diff = (0..3)
            .flat_map(|k| {
                let (r, f) = (&got[0].explanations[k], &got[1].explanations[k]);
                r.normalized
                    .iter()
                    .zip(&f.normalized)
                    .map(|(x, y)| (x - y).abs())
            })
            .fold(0f32, f32::max);
        println!(
            "{file} at 4000x3600, decoded at 1/4: input {mean:.3} levels on average, {max:.2} at \
             most; top-3 {:?} / {:?}; normalised maps {map_diff:.4} at most",
            classes(0),
            classes(1)
        );
        assert!(max <= 3.01 && mean <= 0.25, "{file}: {mean} / {max} levels");
        assert_eq!(classes(0), classes(1), "{file}");
        assert!(map_diff <= 0.05, "{file}: maps differ by {map_diff}");
    }
}

/// Reduction goes only as far as the caller's other picture (an overlay) allows, and not at all
/// for a JPEG too small to keep the margin, or for other formats.
#[test]
fn reduction_respects_what_the_answer_needs() {
    let jpeg = enlarged_jpeg("coffee.jpg", 4000, 3600);
    let opened = input::open(&jpeg, DecodeLimits::default()).unwrap();
    // Without another picture, 1/4: 1000x900 keeps 4 x 224 in both axes.
    assert_eq!(opened.decoded_pixels((0, 0)), 1000 * 900);
    // An overlay of 1024x922 needs 1/2 (2000x1800), since 1/4 gives only 1000x900.
    assert_eq!(opened.decoded_pixels((1024, 922)), 2000 * 1800);
    // An overlay the full size needs it all.
    assert_eq!(opened.decoded_pixels((4000, 3600)), 4000 * 3600);
    let d = opened.decode_reduced((1024, 922)).unwrap();
    assert_eq!((d.reduced_by, d.image.dimensions()), (2, (2000, 1800)));

    // 1600x1200 at 1/2 would be 800 wide, under 4 x 224: full size, the same pixels.
    for (name, bytes) in [
        ("1600x1200 JPEG", enlarged_jpeg("coffee.jpg", 1600, 1200)),
        ("coffee.jpg", std::fs::read(fixture("coffee.jpg")).unwrap()),
        (
            "chelsea.png",
            std::fs::read(fixture("chelsea.png")).unwrap(),
        ),
    ] {
        let opened = input::open(&bytes, DecodeLimits::default()).unwrap();
        let (w, h) = opened.display_size();
        assert_eq!(opened.decoded_pixels((0, 0)), u64::from(w * h), "{name}");
        let d = opened.decode_reduced((0, 0)).unwrap();
        assert_eq!(d.reduced_by, 1, "{name}");
        let full = input::decode(&bytes, DecodeLimits::default()).unwrap();
        assert!(d.image == full.image, "{name}: not the full decoding");
    }
}

/// The EXIF orientation turns a reduced decoding upright exactly as a full one, and what the
/// caller needs is read in display orientation. 4000x3000 decodes at 1/2 (1/4 would leave 750
/// pixels, under 4 x 224).
#[test]
fn every_exif_orientation_applies_to_reduced_decodings() {
    let jpeg = enlarged_jpeg("chelsea.png", 4000, 3000);
    let plain = input::open(&jpeg, DecodeLimits::default())
        .unwrap()
        .decode_reduced((0, 0))
        .unwrap();
    for o in 1..=8u16 {
        let bytes = with_orientation(&jpeg, o);
        let opened = input::open(&bytes, DecodeLimits::default()).unwrap();
        let turned = o >= 5;
        let display = if turned { (3000, 4000) } else { (4000, 3000) };
        assert_eq!(opened.display_size(), display, "orientation {o}");
        // A picture wider than 2000 in display orientation leaves no room for 1/2 if the
        // picture is turned: it is then 1500 wide.
        let wide = (1800, 1000);
        let fits = if turned { 3000 * 4000 } else { 2000 * 1500 };
        assert_eq!(opened.decoded_pixels(wide), fits, "orientation {o}");
        assert_eq!(
            opened.decoded_pixels((0, 0)),
            2000 * 1500,
            "orientation {o}"
        );
        let d = opened.decode_reduced((0, 0)).unwrap();
        assert_eq!((d.width, d.height), display, "orientation {o}");
        let mut want = DynamicImage::ImageRgb8(plain.image.clone());
        want.apply_orientation(Orientation::from_exif(o as u8).unwrap());
        let want: RgbImage = want.into_rgb8();
        assert!(
            d.image == want,
            "orientation {o}: not the plain decoding turned"
        );
    }
}
