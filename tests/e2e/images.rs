//! Decoding and preprocessing of real photographs and edge cases.

use crate::common::{MODEL, REFERENCE, fixture, huge_jpeg, huge_png, synthetic};
use gradcam_serve::backend::{Backend, ExplainOptions};
use gradcam_serve::input::{self, DecodeLimits, STD};
use image::RgbImage;

fn decode_file(path: &std::path::Path) -> RgbImage {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    input::decode(&bytes, DecodeLimits::default())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .image
}

/// Mean and max absolute difference between two RGB images, in 8-bit levels.
fn diff(a: &RgbImage, b: &RgbImage) -> (f64, u8) {
    assert_eq!(a.dimensions(), b.dimensions());
    let (mut sum, mut max) = (0u64, 0u8);
    for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
        let d = x.abs_diff(*y);
        sum += u64::from(d);
        max = max.max(d);
    }
    (sum as f64 / a.as_raw().len() as f64, max)
}

/// Our preprocessing against torchvision's `Resize((224, 224))` + `Normalize` on the same files.
/// Both resize with Pillow's antialiased bilinear convolution and differ only by rounding in the
/// fixed-point steps: at most 1 level (of 255) for PNG. JPEG adds the decoders' own IDCT
/// rounding (libjpeg-turbo in PIL, zune-jpeg here): at most 3 levels. The mean must stay below
/// half a level. The measured figures are printed (`--no-capture`).
#[test]
fn preprocessing_matches_torchvision_on_real_photographs() {
    let mut failures = Vec::new();
    for photo in &REFERENCE.meta.photos {
        let img = decode_file(&fixture(&photo.file));
        let ours = input::preprocess(&img);
        let theirs = REFERENCE.vec(&format!("input.{}", photo.name));
        let plane = ours.len() / 3;
        let (mut max, mut sum) = (0f32, 0f64);
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            let levels = (a - b).abs() * STD[i / plane] * 255.0;
            max = max.max(levels);
            sum += f64::from(levels);
        }
        let mean = sum / ours.len() as f64;
        println!(
            "preprocess {}: mean {mean:.4} levels, max {max:.3} levels",
            photo.file
        );
        let max_allowed = if photo.file.ends_with(".jpg") {
            3.01
        } else {
            1.01
        };
        if max > max_allowed || mean > 0.5 {
            failures.push(format!("{}: mean {mean}, max {max}", photo.file));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn lossless_formats_decode_to_the_same_pixels() {
    let cat = decode_file(&fixture("chelsea.png"));
    for f in ["cat.webp", "cat.bmp", "cat.tiff"] {
        assert_eq!(decode_file(&synthetic(f)), cat, "{f}");
    }
    // Palette PNG: quantised colours, but the same picture.
    let (mean, _) = diff(&decode_file(&synthetic("palette.png")), &cat);
    assert!(mean < 6.0, "palette mean diff {mean}");
}

#[test]
fn exif_orientation_is_applied() {
    let cat = decode_file(&fixture("chelsea.png"));
    let upright = decode_file(&synthetic("exif6.jpg"));
    assert_eq!(
        upright.dimensions(),
        cat.dimensions(),
        "orientation 6 must be turned upright"
    );
    let (mean, _) = diff(&upright, &cat);
    assert!(
        mean < 3.0,
        "upright image differs from the original by {mean} levels on average"
    );
}

#[test]
fn every_exif_orientation_is_turned_upright() {
    let cat = decode_file(&fixture("chelsea.png"));
    for o in 1..=8 {
        let upright = decode_file(&synthetic(&format!("orientation{o}.jpg")));
        assert_eq!(upright.dimensions(), cat.dimensions(), "orientation {o}");
        let (mean, _) = diff(&upright, &cat);
        assert!(
            mean < 3.0,
            "orientation {o}: {mean} levels from the original on average"
        );
    }
}

/// A few bytes that claim a gigantic image must be refused from the header, before any
/// decoder allocates for it.
#[test]
fn tiny_files_claiming_huge_dimensions_are_refused_before_decoding() {
    for (name, bytes) in [("png", huge_png()), ("jpeg", huge_jpeg())] {
        assert!(bytes.len() < 80, "{name}");
        match input::decode(&bytes, DecodeLimits::default()) {
            Err(input::DecodeError::TooManyPixels { pixels, .. }) => {
                assert!(pixels > 4_000_000_000, "{name}")
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn cmyk_grey16_and_grey_alpha_become_rgb() {
    let cat = decode_file(&fixture("chelsea.png"));
    let (mean, _) = diff(&decode_file(&synthetic("cmyk.jpg")), &cat);
    assert!(
        mean < 8.0,
        "CMYK JPEG differs from the RGB original by {mean} levels"
    );
    // Both hold PIL's grey version of the cat, once as 16-bit (v * 257) and once with alpha:
    // they must decode to the same 8-bit grey RGB, close to our own grey of the cat (PIL and the
    // image crate weight the channels slightly differently).
    let grey16 = decode_file(&synthetic("grey16.png"));
    let grey_alpha = decode_file(&synthetic("grey_alpha.png"));
    assert_eq!(grey16, grey_alpha);
    assert!(
        grey16.pixels().all(|p| p[0] == p[1] && p[1] == p[2]),
        "must be grey"
    );
    let ours =
        image::DynamicImage::ImageLuma8(image::DynamicImage::ImageRgb8(cat).to_luma8()).to_rgb8();
    let (mean, _) = diff(&grey16, &ours);
    assert!(mean < 4.0, "grey differs from our grey by {mean} levels");
}

#[test]
fn animated_gif_uses_its_first_frame() {
    let cat = decode_file(&fixture("chelsea.png"));
    let first = decode_file(&synthetic("animated.gif"));
    let flipped = image::imageops::flip_horizontal(&cat);
    let (to_first, _) = diff(&first, &cat);
    let (to_second, _) = diff(&first, &flipped);
    assert!(
        to_first < to_second / 2.0,
        "first frame {to_first} vs second {to_second}"
    );
}

#[test]
fn truncated_jpeg_is_refused_not_padded() {
    let bytes = std::fs::read(fixture("coffee.jpg")).unwrap();
    for cut in [bytes.len() / 3, bytes.len() - 2] {
        let err = input::decode(&bytes[..cut], DecodeLimits::default())
            .expect_err("truncated JPEG must be refused");
        assert!(err.to_string().contains("truncated"), "{err}");
    }
    // An EXIF thumbnail's end marker does not make a truncated photo whole.
    let exif = std::fs::read(synthetic("exif6.jpg")).unwrap();
    assert!(input::decode(&exif[..exif.len() * 2 / 3], DecodeLimits::default()).is_err());
}

#[test]
fn degenerate_sizes_run_through_the_model_without_nan() {
    let model = MODEL.lock().unwrap();
    for (w, h) in [(1, 1), (1, 4000), (4000, 1), (1, 10000)] {
        let img = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        });
        let x = input::preprocess(&img);
        let r = model
            .explain(&[(&x, ExplainOptions::default())])
            .unwrap()
            .remove(0);
        let e = &r.explanations[0];
        assert!(e.heatmap.data.iter().all(|v| v.is_finite()), "{w}x{h}");
        assert!(
            e.normalized.iter().all(|v| (0.0..=1.0).contains(v)),
            "{w}x{h}"
        );
        let overlay =
            gradcam_serve::render::overlay(&img, &e.normalized, 7, 7, &Default::default(), None);
        assert_eq!(
            overlay.dimensions(),
            gradcam_serve::render::overlay_size(w, h, 1024)
        );
    }
}
