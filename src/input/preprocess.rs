//! The preprocessing a model was trained with: the input size, how the picture is brought to
//! it (squashed, or torchvision's classic resize-and-centre-crop), and the normalisation.

use super::{DecodeError, Decoded, Opened, REDUCED_MARGIN, resize_rgb};
use image::{ImageFormat, RgbImage};
use serde::Serialize;

/// ImageNet channel means and standard deviations (torchvision's `Normalize`).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// The default side of the square the network sees (the seed's `Resize((224, 224))`).
pub const DEFAULT_SIDE: u32 = 224;
/// Input sizes allowed: a ResNet needs 32 pixels for one cell of `layer4`.
pub const SIDES: std::ops::RangeInclusive<u32> = 32..=1024;
/// torchvision's evaluation crop keeps this fraction of the resized shorter side (224 of 256).
const CROP_FRACTION: f64 = 0.875;

/// How a picture becomes the network's square input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Resize {
    /// The whole picture resized to N x N, whatever its aspect ratio (the seed's way).
    #[default]
    Squash,
    /// Shorter side to N / 0.875, then the centre N x N (torchvision's classic evaluation):
    /// the map covers only that square.
    CenterCrop,
}

/// The model's preprocessing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Preprocess {
    /// Side of the square input, in pixels.
    pub size: u32,
    pub resize: Resize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for Preprocess {
    fn default() -> Self {
        Self {
            size: DEFAULT_SIDE,
            resize: Resize::Squash,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }
}

/// A rectangle of the picture, in its pixels (display orientation); fractional where a crop
/// falls between pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Region {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
}

impl Region {
    pub fn whole(width: u32, height: u32) -> Self {
        Region {
            x: 0.0,
            y: 0.0,
            width: width.into(),
            height: height.into(),
        }
    }

    /// True when the region is the whole `width` x `height` picture.
    pub fn is_whole(&self, width: u32, height: u32) -> bool {
        *self == Region::whole(width, height)
    }

    /// The region as fractions of a `width` x `height` picture; none when it is all of it.
    pub fn fraction_of(&self, width: u32, height: u32) -> Option<Region> {
        (!self.is_whole(width, height)).then(|| self.scaled((width, height), (1, 1)))
    }

    /// The region in a copy of the picture resized from `from` to `to` pixels.
    pub fn scaled(&self, from: (u32, u32), to: (u32, u32)) -> Region {
        let sx = f64::from(to.0) / f64::from(from.0);
        let sy = f64::from(to.1) / f64::from(from.1);
        Region {
            x: self.x * sx,
            y: self.y * sy,
            width: self.width * sx,
            height: self.height * sy,
        }
    }
}

/// The checks on a preprocessing that a configuration can get wrong.
pub fn check(p: &Preprocess) -> Result<(), String> {
    if !SIDES.contains(&p.size) {
        return Err(format!(
            "input size {} is out of range; allowed: {}..={}",
            p.size,
            SIDES.start(),
            SIDES.end()
        ));
    }
    if p.std.iter().any(|&s| !(s.is_finite() && s > 0.0)) || p.mean.iter().any(|m| !m.is_finite()) {
        return Err(format!(
            "mean {:?} and std {:?}: every value must be finite and every std above 0",
            p.mean, p.std
        ));
    }
    Ok(())
}

impl Preprocess {
    /// Values in one preprocessed image: `3 x size x size`.
    pub fn input_len(&self) -> usize {
        3 * (self.size as usize).pow(2)
    }

    /// For [`Resize::CenterCrop`], the shorter side before cropping (256 for 224).
    pub fn resize_side(&self) -> u32 {
        match self.resize {
            Resize::Squash => self.size,
            Resize::CenterCrop => (f64::from(self.size) / CROP_FRACTION) as u32,
        }
    }

    /// Pixels per axis a reduced decoding must keep so that the network's input is made from
    /// enough of the picture (see [`REDUCED_MARGIN`]).
    pub fn decode_side(&self) -> u32 {
        REDUCED_MARGIN * self.resize_side()
    }

    /// The size a `width` x `height` picture is resized to before any crop, and the crop's
    /// top-left corner in that resized picture.
    fn plan(&self, width: u32, height: u32) -> ((u32, u32), (u32, u32)) {
        match self.resize {
            Resize::Squash => ((self.size, self.size), (0, 0)),
            Resize::CenterCrop => {
                // torchvision: the shorter side to `s`, the longer to int(s * long / short);
                // then the crop's offset is round((side - size) / 2), rounding half to even as
                // Python does.
                let s = self.resize_side();
                let (short, long) = (width.min(height), width.max(height));
                let long_to = ((u64::from(s) * u64::from(long)) / u64::from(short)) as u32;
                let (rw, rh) = if width <= height {
                    (s, long_to)
                } else {
                    (long_to, s)
                };
                // A picture whose resized side is still under the crop (only possible for
                // tiny inputs) is resized so that the crop fits.
                let (rw, rh) = (rw.max(self.size), rh.max(self.size));
                let off = |side: u32| (f64::from(side - self.size) / 2.0).round_ties_even() as u32;
                ((rw, rh), (off(rw), off(rh)))
            }
        }
    }

    /// The rectangle of a `width` x `height` picture that the network sees (and its map covers).
    pub fn region(&self, width: u32, height: u32) -> Region {
        let ((rw, rh), (left, top)) = self.plan(width, height);
        let sx = f64::from(width) / f64::from(rw);
        let sy = f64::from(height) / f64::from(rh);
        Region {
            x: f64::from(left) * sx,
            y: f64::from(top) * sy,
            width: f64::from(self.size) * sx,
            height: f64::from(self.size) * sy,
        }
    }

    /// The network's input for one picture: `[3, size, size]` planar, normalised; and the
    /// region of the picture it covers, in the picture's pixels.
    pub fn apply(&self, image: &RgbImage) -> (Vec<f32>, Region) {
        let (w, h) = image.dimensions();
        let ((rw, rh), (left, top)) = self.plan(w, h);
        let resized = resize_rgb(image, rw, rh);
        let square = if (rw, rh) == (self.size, self.size) {
            resized
        } else {
            image::imageops::crop_imm(&resized, left, top, self.size, self.size).to_image()
        };
        (self.normalise(&square), self.region(w, h))
    }

    /// `HWC u8` to `CHW f32`, `(v / 255 - mean) / std`, as torchvision's `ToTensor` +
    /// `Normalize`.
    pub fn normalise(&self, image: &RgbImage) -> Vec<f32> {
        let plane = (image.width() * image.height()) as usize;
        let mut out = vec![0f32; 3 * plane];
        for (i, px) in image.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = (f32::from(px[c]) / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        out
    }
}

/// A picture made ready for the model and for what is drawn from it.
#[derive(Debug)]
pub struct Ready {
    /// The full size, in display orientation.
    pub width: u32,
    pub height: u32,
    pub format: ImageFormat,
    /// The part of the picture the network sees (and its maps cover), in full-size pixels.
    pub region: Region,
    /// The photograph at the overlay's size, when one is to be drawn.
    pub overlay_base: Option<RgbImage>,
}

impl<'a> Opened<'a> {
    /// The pixels [`Opened::ready`] with the same arguments will decode: what a caller
    /// reserves before committing memory.
    pub fn ready_pixels(self, preprocess: &Preprocess, overlay: Option<(u32, u32)>) -> u64 {
        self.for_network(preprocess)
            .decoded_pixels(overlay.unwrap_or((0, 0)))
    }

    /// Decodes (a JPEG at a fraction of its size when that still serves the network and the
    /// overlay), makes the network's input with `preprocess`, and keeps the photograph only at
    /// the overlay's size (`overlay`, none when nothing is drawn).
    pub fn ready(
        self,
        preprocess: &Preprocess,
        overlay: Option<(u32, u32)>,
    ) -> Result<(Ready, Vec<f32>), DecodeError> {
        Ok(self
            .decode_for(preprocess, overlay)?
            .prepare(preprocess, overlay))
    }

    /// The decoding half of [`Opened::ready`].
    pub fn decode_for(
        self,
        preprocess: &Preprocess,
        overlay: Option<(u32, u32)>,
    ) -> Result<Decoded, DecodeError> {
        self.for_network(preprocess)
            .decode_reduced(overlay.unwrap_or((0, 0)))
    }
}

impl Decoded {
    /// The pixel half of [`Opened::ready`]: the network's input, and the photograph at the
    /// overlay's size (moved, not copied, when it is already that size).
    pub fn prepare(
        self,
        preprocess: &Preprocess,
        overlay: Option<(u32, u32)>,
    ) -> (Ready, Vec<f32>) {
        let (x, region) = preprocess.apply(&self.image);
        let region = region.scaled(self.image.dimensions(), (self.width, self.height));
        let overlay_base = overlay.map(|(w, h)| {
            if self.image.dimensions() == (w, h) {
                self.image
            } else {
                resize_rgb(&self.image, w, h)
            }
        });
        let ready = Ready {
            width: self.width,
            height: self.height,
            format: self.format,
            region,
            overlay_base,
        };
        (ready, x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn crop(size: u32) -> Preprocess {
        Preprocess {
            size,
            resize: Resize::CenterCrop,
            ..Default::default()
        }
    }

    #[test]
    fn centre_crop_follows_torchvision() {
        // Resize(256) then CenterCrop(224) on a 640x427 picture: 383x256, crop from x = 80.
        let p = crop(224);
        assert_eq!(p.resize_side(), 256);
        assert_eq!(p.plan(640, 427), ((383, 256), (80, 16)));
        assert_eq!(p.plan(427, 640), ((256, 383), (16, 80)));
        // 288 / 0.875 = 329.1: the shorter side goes to 329; (329 - 288) / 2 = 20.5 rounds to 20.
        assert_eq!(crop(288).plan(500, 500), ((329, 329), (20, 20)));
        let r = p.region(640, 427);
        assert!((r.x - 80.0 * 640.0 / 383.0).abs() < 1e-9);
        assert!((r.height - 224.0 * 427.0 / 256.0).abs() < 1e-9);
        let (x, region) = p.apply(&RgbImage::from_pixel(640, 427, Rgb([1, 2, 3])));
        assert_eq!(x.len(), 3 * 224 * 224);
        assert_eq!(region, r);
    }

    #[test]
    fn squash_covers_the_whole_picture() {
        let p = Preprocess {
            size: 96,
            ..Default::default()
        };
        let (x, region) = p.apply(&RgbImage::from_pixel(300, 20, Rgb([255, 0, 0])));
        assert_eq!(x.len(), 3 * 96 * 96);
        assert!(region.is_whole(300, 20));
        assert!((x[0] - (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]).abs() < 1e-6);
    }

    #[test]
    fn tiny_pictures_still_give_a_full_crop() {
        let (x, _) = crop(224).apply(&RgbImage::from_pixel(3, 1, Rgb([9, 9, 9])));
        assert_eq!(x.len(), 3 * 224 * 224);
    }

    #[test]
    fn bad_settings_are_named() {
        let e = check(&Preprocess {
            size: 16,
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("32..=1024"), "{e}");
        let e = check(&Preprocess {
            std: [1.0, 0.0, 1.0],
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("std"), "{e}");
    }
}
