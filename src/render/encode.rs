//! Compact pictures for answers: the overlay in PNG, JPEG or WebP, and the colour-mapped map
//! alone as an RGBA PNG whose alpha is the map, for clients that blend in the browser.

use super::{Colormap, clamped, encode_png, level, upsample_bilinear};
use crate::names::named_enum;
use image::{ImageEncoder, RgbImage, RgbaImage};

named_enum! {
    /// How an overlay picture is encoded.
    pub enum PictureFormat("overlay_format") {
        /// Lossless, the default.
        #[default]
        Png => "png",
        /// Lossy, at `overlay_quality`; the smallest for photographs.
        Jpeg => "jpeg",
        /// Lossless WebP: smaller than PNG, no loss.
        Webp => "webp",
    }
}

impl PictureFormat {
    /// The media type of a picture in this format.
    pub fn media_type(self) -> &'static str {
        match self {
            PictureFormat::Png => "image/png",
            PictureFormat::Jpeg => "image/jpeg",
            PictureFormat::Webp => "image/webp",
        }
    }

    /// The format whose media type is `media` (exactly as [`Self::media_type`] gives it).
    pub fn of_media_type(media: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.media_type() == media)
    }
}

/// JPEG quality when none is asked for.
pub const DEFAULT_JPEG_QUALITY: u8 = 85;

/// Encodes `image` as `format`; `quality` (1..=100) counts for JPEG only.
pub fn encode(image: &RgbImage, format: PictureFormat, quality: u8) -> Vec<u8> {
    let (w, h) = image.dimensions();
    let mut out = Vec::with_capacity(image.as_raw().len() / 8);
    let written = match format {
        PictureFormat::Png => return encode_png(image),
        PictureFormat::Jpeg => return encode_jpeg(image, quality),
        PictureFormat::Webp => image::codecs::webp::WebPEncoder::new_lossless(&mut out)
            .write_image(image.as_raw(), w, h, image::ExtendedColorType::Rgb8),
    };
    written.expect("encoding a whole RGB buffer into memory cannot fail: this is a bug");
    out
}

/// Baseline JPEG at `quality` (clamped to 1..=100), chroma subsampled 4:2:0 below quality 90
/// and kept whole from 90 up, with the encoder's AVX2 paths where the processor has them
/// (benches/render.rs: about 4x the `image` crate's encoder on a 1 MP overlay).
fn encode_jpeg(image: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(image.as_raw().len() / 8);
    // Overlays are at most `max_overlay_side` (<= 8192) pixels a side, so both fit u16.
    let side = |v: u32| u16::try_from(v).expect("an overlay side fits 16 bits: this is a bug");
    jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100))
        .encode(
            image.as_raw(),
            side(image.width()),
            side(image.height()),
            jpeg_encoder::ColorType::Rgb,
        )
        .expect("encoding a whole RGB buffer into memory cannot fail: this is a bug");
    out
}

/// The normalised map (`map_w` x `map_h`, values in [0, 1]) as colours of `colormap`, each
/// pixel's alpha the map's value there (0: no evidence, transparent), upsampled bilinearly to
/// `size` (the map's own size when `None`).
pub fn heatmap_rgba(
    map: &[f32],
    map_w: usize,
    map_h: usize,
    colormap: Colormap,
    size: Option<(u32, u32)>,
) -> RgbaImage {
    let (w, h) = size.unwrap_or((map_w as u32, map_h as u32));
    // Clamped before upsampling, as the overlay does.
    let values = clamped(map);
    let values = if (w as usize, h as usize) == (map_w, map_h) {
        values
    } else {
        upsample_bilinear(&values, map_w, map_h, w as usize, h as usize)
    };
    let lut = colormap.lut();
    let mut out = RgbaImage::new(w, h);
    for (dst, t) in out.pixels_mut().zip(values) {
        let l = level(t);
        let [r, g, b] = lut[l];
        dst.0 = [r, g, b, l as u8];
    }
    out
}

/// [`heatmap_rgba`] encoded as PNG.
pub fn heatmap_png(
    map: &[f32],
    map_w: usize,
    map_h: usize,
    colormap: Colormap,
    size: Option<(u32, u32)>,
) -> Vec<u8> {
    let image = heatmap_rgba(map, map_w, map_h, colormap, size);
    super::png::png_bytes(image.as_raw(), image.width(), image.height(), 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn every_format_decodes_to_the_picture() {
        let img = RgbImage::from_fn(40, 30, |x, y| Rgb([x as u8 * 6, y as u8 * 8, 90]));
        for format in PictureFormat::ALL {
            let bytes = encode(&img, format, 90);
            let guessed = image::guess_format(&bytes).unwrap();
            assert_eq!(guessed.to_mime_type(), format.media_type());
            let back = image::load_from_memory(&bytes).unwrap().to_rgb8();
            assert_eq!(back.dimensions(), (40, 30));
            if format != PictureFormat::Jpeg {
                assert_eq!(back, img, "{format} is lossless");
            }
        }
    }

    #[test]
    fn jpeg_quality_trades_size() {
        let img = RgbImage::from_fn(64, 64, |x, y| Rgb([(x * y) as u8, (x ^ y) as u8, 7]));
        assert!(
            encode(&img, PictureFormat::Jpeg, 30).len()
                < encode(&img, PictureFormat::Jpeg, 95).len()
        );
    }

    #[test]
    fn heatmap_alpha_is_the_map() {
        let map = [0.0, 1.0, 0.5, f32::NAN];
        let img = heatmap_rgba(&map, 2, 2, Colormap::Jet, None);
        assert_eq!(img.dimensions(), (2, 2));
        let alpha: Vec<u8> = img.pixels().map(|p| p.0[3]).collect();
        assert_eq!(alpha, vec![0, 255, 128, 0]);
        assert_eq!(img.get_pixel(1, 0).0[..3], Colormap::Jet.color(1.0));
        let big = heatmap_rgba(&map, 2, 2, Colormap::Gray, Some((20, 10)));
        assert_eq!(big.dimensions(), (20, 10));
        let png = heatmap_png(&map, 2, 2, Colormap::Jet, None);
        let back = image::load_from_memory(&png).unwrap().to_rgba8();
        assert_eq!(back, img);
    }
}
