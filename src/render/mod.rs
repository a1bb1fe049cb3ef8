//! Turning a normalised map into a picture: bilinear upsampling, colour maps, blending onto the
//! photograph, PNG encoding. Pure Rust, no libtorch.

mod encode;
mod png;

pub use encode::{DEFAULT_JPEG_QUALITY, PictureFormat, encode, heatmap_png, heatmap_rgba};

use crate::input::Region;
use crate::names::named_enum;
use image::RgbImage;

named_enum! {
    /// Colour maps for the heatmap.
    pub enum Colormap("colormap") {
        /// OpenCV's `COLORMAP_JET`, the seed's choice.
        #[default]
        Jet => "jet",
        Turbo => "turbo",
        Viridis => "viridis",
        Inferno => "inferno",
        Gray => "gray",
    }
}

impl Colormap {
    /// The colour of `t` in [0, 1] (clamped; NaN counts as 0).
    pub fn color(self, t: f32) -> [u8; 3] {
        let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
        let gradient = match self {
            Colormap::Jet => return jet(t),
            Colormap::Gray => {
                let v = to_u8(t);
                return [v, v, v];
            }
            Colormap::Turbo => colorous::TURBO,
            Colormap::Viridis => colorous::VIRIDIS,
            Colormap::Inferno => colorous::INFERNO,
        };
        let c = gradient.eval_continuous(f64::from(t));
        [c.r, c.g, c.b]
    }

    /// 256 colours, one per 8-bit level, so mapping a pixel is one table lookup.
    pub fn lut(self) -> [[u8; 3]; 256] {
        std::array::from_fn(|i| self.color(i as f32 / 255.0))
    }
}

fn to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// The classic jet: dark blue, blue, cyan, yellow, red, dark red, piecewise linear.
fn jet(t: f32) -> [u8; 3] {
    let ramp = |centre: f32| to_u8(1.5 - (4.0 * t - centre).abs());
    [ramp(3.0), ramp(2.0), ramp(1.0)]
}

/// For each output index along one axis: the two source indices and the weight of the second,
/// with pixel centres aligned as OpenCV's `resize` and PyTorch's
/// `interpolate(align_corners=False)` align them (edges clamp).
fn axis(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32)> {
    let scale = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|o| {
            let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(n_in - 1);
            let i1 = (i0 + 1).min(n_in - 1);
            (i0, i1, src - i0 as f32)
        })
        .collect()
}

/// Upsamples a `w` x `h` map to `out_w` x `out_h` bilinearly: each source row horizontally
/// first (only `h` rows), then each output row as a blend of two of those.
pub fn upsample_bilinear(map: &[f32], w: usize, h: usize, out_w: usize, out_h: usize) -> Vec<f32> {
    assert_eq!(map.len(), w * h, "map shape mismatch: this is a bug");
    let xs = axis(w, out_w);
    let rows: Vec<Vec<f32>> = map
        .chunks_exact(w)
        .map(|r| {
            xs.iter()
                .map(|&(x0, x1, fx)| r[x0] + (r[x1] - r[x0]) * fx)
                .collect()
        })
        .collect();
    let mut out = Vec::with_capacity(out_w * out_h);
    for (y0, y1, fy) in axis(h, out_h) {
        out.extend(
            rows[y0]
                .iter()
                .zip(&rows[y1])
                .map(|(a, b)| a + (b - a) * fy),
        );
    }
    out
}

/// The size of an overlay for an image of `w` x `h`: unchanged, or shrunk (keeping the aspect
/// ratio) so that its longer side is `max_side`.
pub fn overlay_size(w: u32, h: u32, max_side: u32) -> (u32, u32) {
    let long = w.max(h);
    if long <= max_side {
        return (w, h);
    }
    let scale = f64::from(max_side) / f64::from(long);
    let fit = |v: u32| ((f64::from(v) * scale).round() as u32).clamp(1, max_side);
    (fit(w), fit(h))
}

/// `alpha` in [0, 1] as a weight out of 256, for integer blending.
fn alpha_256(alpha: f32) -> u32 {
    (alpha.clamp(0.0, 1.0) * 256.0 + 0.5) as u32
}

/// Blends one colour onto one pixel: `(1 - alpha) * pixel + alpha * colour`, rounded, in 8.8
/// fixed point (a million pixels per request: float rounding per channel costs milliseconds).
pub fn blend(pixel: [u8; 3], color: [u8; 3], alpha: f32) -> [u8; 3] {
    let a = alpha_256(alpha);
    std::array::from_fn(|c| {
        ((u32::from(pixel[c]) * (256 - a) + u32::from(color[c]) * a + 128) >> 8) as u8
    })
}

/// A map value clamped to [0, 1], NaN as 0: what every picture of a map draws.
fn unit(t: f32) -> f32 {
    if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) }
}

/// The map with every value [`unit`]: what the pictures upsample.
fn clamped(map: &[f32]) -> Vec<f32> {
    map.iter().map(|&t| unit(t)).collect()
}

/// A map value in [0, 1] (clamped, NaN as 0) as a colour-table index: `255 t` rounded to the
/// nearest level, ties to even.
fn level(t: f32) -> usize {
    usize::from(unit_level(unit(t)))
}

/// [`level`] of a value already in [0, 1], in a form the compiler vectorises: adding 2^23 to a
/// float in [0, 2^23) leaves it rounded to an integer (ties to even, the default rounding),
/// held in the low bits of the sum's mantissa. A value a rounding step outside [0, 1] still
/// gives 0 or 255.
fn unit_level(t: f32) -> u8 {
    const ROUND: f32 = 8_388_608.0;
    (t * 255.0 + ROUND).to_bits() as u8
}

/// Options for [`overlay`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverlayOptions {
    pub colormap: Colormap,
    /// Weight of the heatmap colour, in [0, 1]. The default, 0.4, is the seed's heat weight.
    pub alpha: f32,
    /// The overlay's longer side is at most this many pixels.
    pub max_side: u32,
}

impl Default for OverlayOptions {
    fn default() -> Self {
        Self {
            colormap: Colormap::Jet,
            alpha: 0.4,
            max_side: 1024,
        }
    }
}

/// Draws the normalised map (`map_w` x `map_h`, values in [0, 1]) over the photograph: over all
/// of it, or only over `region` (fractions of its width and height: the part a centre-cropping
/// model saw), the rest shown as it is.
pub fn overlay(
    image: &RgbImage,
    map: &[f32],
    map_w: usize,
    map_h: usize,
    opts: &OverlayOptions,
    region: Option<&Region>,
) -> RgbImage {
    let (w, h) = overlay_size(image.width(), image.height(), opts.max_side);
    let base = if (w, h) == image.dimensions() {
        std::borrow::Cow::Borrowed(image)
    } else {
        std::borrow::Cow::Owned(crate::input::resize_rgb(image, w, h))
    };
    if let Some(r) = region {
        // The map drawn at the region's size, pasted where the region lies.
        let at = |v: f64, side: u32| ((v * f64::from(side)).round().max(0.0) as u32).min(side);
        let (x0, y0) = (at(r.x, w), at(r.y, h));
        let (x1, y1) = (at(r.x + r.width, w), at(r.y + r.height, h));
        let mut out = base.into_owned();
        if x1 > x0 && y1 > y0 {
            let part = image::imageops::crop_imm(&out, x0, y0, x1 - x0, y1 - y0).to_image();
            let o = OverlayOptions {
                max_side: u32::MAX,
                ..*opts
            };
            let drawn = overlay(&part, map, map_w, map_h, &o, None);
            image::imageops::replace(&mut out, &drawn, x0.into(), y0.into());
        }
        return out;
    }
    tint(&base, map, map_w, map_h, opts)
}

/// The blend of [`overlay`] over a whole picture, one output row at a time: the map's value
/// for each pixel of the row, its colour-table level, then `(1 - alpha) * pixel + alpha *
/// colour` in 8.8 fixed point. The same arithmetic as [`unit`], [`upsample_bilinear`],
/// [`level`] and [`blend`] one after the other, without the picture-sized buffer of map values
/// between them: the map is clamped before it is upsampled, so that every value is in [0, 1]
/// and its level vectorises ([`unit_level`]), and the blend runs in 16-bit lanes (see README's
/// Performance for the stage's cost).
fn tint(
    base: &RgbImage,
    map: &[f32],
    map_w: usize,
    map_h: usize,
    opts: &OverlayOptions,
) -> RgbImage {
    let (w, h) = (base.width() as usize, base.height() as usize);
    assert_eq!(
        map.len(),
        map_w * map_h,
        "map shape mismatch: this is a bug"
    );
    // The map's rows, clamped and each upsampled horizontally once (`map_h` rows of `w`
    // values, all in [0, 1]).
    let xs = axis(map_w, w);
    let rows: Vec<f32> = clamped(map)
        .chunks_exact(map_w)
        .flat_map(|r| {
            xs.iter()
                .map(move |&(x0, x1, fx)| r[x0] + (r[x1] - r[x0]) * fx)
        })
        .collect();
    let a = alpha_256(opts.alpha) as u16;
    let keep = 256 - a;
    let lut = opts.colormap.lut();
    let mut out = vec![0u8; w * h * 3];
    let mut levels = vec![0u8; w];
    let mut colors = vec![[0u8; 3]; w];
    let rows_out = out
        .chunks_exact_mut(w * 3)
        .zip(base.as_raw().chunks_exact(w * 3));
    for ((y0, y1, fy), (dst, src)) in axis(map_h, h).into_iter().zip(rows_out) {
        let (upper, lower) = (&rows[y0 * w..][..w], &rows[y1 * w..][..w]);
        for ((l, &p), &q) in levels.iter_mut().zip(upper).zip(lower) {
            *l = unit_level(p + (q - p) * fy);
        }
        for (c, &l) in colors.iter_mut().zip(&levels) {
            *c = lut[usize::from(l)];
        }
        // At most 255 * 256 + 128 = 65 408, so 16-bit lanes hold it and the wrapping
        // operations never wrap; they only spare the loop the release build's overflow checks,
        // which would keep it from being vectorised.
        for ((d, &s), &c) in dst.iter_mut().zip(src).zip(colors.as_flattened()) {
            let sum = u16::from(s)
                .wrapping_mul(keep)
                .wrapping_add(u16::from(c).wrapping_mul(a))
                .wrapping_add(128);
            *d = (sum >> 8) as u8;
        }
    }
    RgbImage::from_raw(w as u32, h as u32, out)
        .expect("the buffer holds width * height pixels: this is a bug")
}

/// [`overlay`] encoded as PNG: what answers and output files carry.
pub fn overlay_png(
    image: &RgbImage,
    map: &[f32],
    map_w: usize,
    map_h: usize,
    opts: &OverlayOptions,
) -> Vec<u8> {
    encode_png(&overlay(image, map, map_w, map_h, opts, None))
}

/// Encodes as PNG, favouring speed over size (see [`png::png_bytes`]).
pub fn encode_png(image: &RgbImage) -> Vec<u8> {
    png::png_bytes(image.as_raw(), image.width(), image.height(), 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn colormaps_at_their_ends() {
        assert_eq!(Colormap::Jet.color(0.0), [0, 0, 128]);
        assert_eq!(Colormap::Jet.color(1.0), [128, 0, 0]);
        assert_eq!(Colormap::Jet.color(0.5), [128, 255, 128]);
        assert_eq!(Colormap::Gray.color(0.0), [0, 0, 0]);
        assert_eq!(Colormap::Gray.color(1.0), [255, 255, 255]);
        // viridis: dark purple to yellow; inferno: near black to pale yellow; turbo: dark
        // blue-purple to dark red.
        let [r, g, b] = Colormap::Viridis.color(0.0);
        assert!(r < 80 && g < 20 && b > 70, "{r} {g} {b}");
        let [r, g, b] = Colormap::Viridis.color(1.0);
        assert!(r > 240 && g > 220 && b < 50, "{r} {g} {b}");
        let [r, g, b] = Colormap::Inferno.color(0.0);
        assert!(r < 10 && g < 10 && b < 20, "{r} {g} {b}");
        let [r, g, b] = Colormap::Inferno.color(1.0);
        assert!(r > 240 && g > 240 && b > 140, "{r} {g} {b}");
        let [r, g, b] = Colormap::Turbo.color(1.0);
        assert!(r > 100 && g < 30 && b < 10, "{r} {g} {b}");
    }

    #[test]
    fn colormap_clamps_and_treats_nan_as_zero() {
        for c in Colormap::ALL {
            assert_eq!(c.color(-3.0), c.color(0.0));
            assert_eq!(c.color(7.0), c.color(1.0));
            assert_eq!(c.color(f32::NAN), c.color(0.0));
            assert_eq!(c.lut()[255], c.color(1.0));
        }
    }

    #[test]
    fn colormap_names_round_trip() {
        for c in Colormap::ALL {
            assert_eq!(c.name().parse::<Colormap>().unwrap(), c);
        }
        assert!("hot".parse::<Colormap>().unwrap_err().contains("viridis"));
    }

    #[test]
    fn upsample_matches_half_pixel_bilinear() {
        // 2x1 -> 4x1: centres at -0.25, 0.25, 0.75, 1.25 in source coordinates.
        assert_eq!(
            upsample_bilinear(&[0.0, 1.0], 2, 1, 4, 1),
            vec![0.0, 0.25, 0.75, 1.0]
        );
        // Same size is the identity; a 1x1 map is constant.
        let m = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6];
        assert_eq!(upsample_bilinear(&m, 3, 2, 3, 2), m.to_vec());
        assert_eq!(upsample_bilinear(&[0.7], 1, 1, 5, 3), vec![0.7; 15]);
    }

    #[test]
    fn blend_weights_colour_by_alpha() {
        assert_eq!(blend([100, 100, 100], [200, 0, 50], 0.0), [100, 100, 100]);
        assert_eq!(blend([100, 100, 100], [200, 0, 50], 1.0), [200, 0, 50]);
        assert_eq!(blend([100, 100, 100], [200, 0, 50], 0.5), [150, 50, 75]);
    }

    #[test]
    fn overlay_size_caps_longer_side_and_keeps_aspect() {
        assert_eq!(overlay_size(640, 480, 1024), (640, 480));
        assert_eq!(overlay_size(4000, 3000, 1024), (1024, 768));
        assert_eq!(overlay_size(1, 10000, 1024), (1, 1024));
    }

    #[test]
    fn overlay_equals_upsample_then_level_then_blend() {
        // The fused rows of `tint` against the steps it fuses (clamping, upsampling, level,
        // blend), pixel by pixel, with values outside [0, 1], NaN, odd sizes and every
        // alpha's extremes.
        let img = RgbImage::from_fn(37, 23, |x, y| {
            let v = x.wrapping_mul(2_654_435_761).wrapping_add(y * 40_503);
            Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
        });
        let mut map: Vec<f32> = (0..15).map(|i| (i as f32 * 0.37).sin()).collect();
        map[4] = f32::NAN;
        map[7] = 3.0;
        for (colormap, alpha) in [
            (Colormap::Jet, 0.4),
            (Colormap::Viridis, 0.0),
            (Colormap::Turbo, 1.0),
            (Colormap::Gray, 0.73),
        ] {
            let opts = OverlayOptions {
                colormap,
                alpha,
                max_side: 1024,
            };
            let out = overlay(&img, &map, 5, 3, &opts, None);
            let heat = upsample_bilinear(&clamped(&map), 5, 3, 37, 23);
            let lut = colormap.lut();
            for ((p, q), t) in out.pixels().zip(img.pixels()).zip(heat) {
                assert_eq!(p.0, blend(q.0, lut[level(t)], alpha), "{colormap} {alpha}");
            }
        }
    }

    #[test]
    fn overlay_of_empty_map_is_image_tinted_with_the_low_colour() {
        let img = RgbImage::from_pixel(30, 20, Rgb([200, 200, 200]));
        let opts = OverlayOptions {
            alpha: 0.5,
            ..Default::default()
        };
        let out = overlay(&img, &[0.0; 4], 2, 2, &opts, None);
        assert_eq!(out.dimensions(), (30, 20));
        assert!(
            out.pixels()
                .all(|p| p.0 == blend([200; 3], Colormap::Jet.color(0.0), 0.5))
        );
        let png = encode_png(&out);
        let back = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(back, out);
    }
}
