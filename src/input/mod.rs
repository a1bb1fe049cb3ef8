//! From image bytes to the model's input: decoding, orientation, colour conversion, resizing
//! and ImageNet normalisation. Pure Rust, no libtorch: the model layer turns the planar `f32`
//! buffer into a tensor.

mod jpeg;
mod preprocess;

pub use preprocess::{
    DEFAULT_SIDE, IMAGENET_MEAN, IMAGENET_STD, Preprocess, Ready, Region, Resize, SIDES,
    check as check_preprocess,
};

use fast_image_resize as fr;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use std::io::Cursor;

/// The side of the square the network sees by default (the seed's `Resize((224, 224))`).
pub const INPUT_SIDE: u32 = DEFAULT_SIDE;
/// A reduced decoding keeps at least this many pixels per axis for each pixel of the network's
/// input. The decoder's reduced inverse DCT filters less well than the antialiased resize that
/// follows; with this margin the network's input stays within 2 levels (of 255) of the one made
/// from the full-size picture (0.15 on average) on photographs, against 36 levels with none.
pub const REDUCED_MARGIN: u32 = 4;
/// ImageNet channel means and standard deviations (torchvision's `Normalize`).
pub const MEAN: [f32; 3] = IMAGENET_MEAN;
pub const STD: [f32; 3] = IMAGENET_STD;

/// Writes the list of supported formats once: the table and the strings that messages quote.
macro_rules! formats {
    ($(($format:ident, $name:literal, $media_type:literal)),+ $(,)?) => {
        /// Formats we decode, each with its name and media type; anything else is refused
        /// before decoding.
        pub const FORMATS: &[(ImageFormat, &str, &str)] =
            &[$((ImageFormat::$format, $name, $media_type)),+];
        /// The names of [`FORMATS`], for messages.
        pub const SUPPORTED_NAMES: &str = formats!(@join $($name),+);
        /// The media types of [`FORMATS`], for messages.
        pub const SUPPORTED_MEDIA_TYPES: &str = formats!(@join $($media_type),+);
    };
    (@join $first:literal $(, $rest:literal)*) => { concat!($first $(, ", ", $rest)*) };
}

formats![
    (Jpeg, "JPEG", "image/jpeg"),
    (Png, "PNG", "image/png"),
    (WebP, "WebP", "image/webp"),
    (Gif, "GIF", "image/gif"),
    (Bmp, "BMP", "image/bmp"),
    (Tiff, "TIFF", "image/tiff"),
];

/// Bounds on what a decoder may do with untrusted bytes.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Refuse images with more pixels than this (read from the header, before decoding).
    pub max_pixels: u64,
    /// Upper bound on what the decoder may allocate.
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: 50_000_000,
            max_alloc: 1 << 30,
        }
    }
}

/// Why bytes could not become an image. Every variant is the client's fault (a 4xx).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("the image is empty (0 bytes)")]
    Empty,
    #[error("unrecognised image format; supported: {SUPPORTED_NAMES}")]
    UnknownFormat,
    #[error("{0} images are not supported; supported: {SUPPORTED_NAMES}")]
    UnsupportedFormat(String),
    #[error("image is {width}x{height} = {pixels} pixels, above the limit of {limit} pixels")]
    TooManyPixels {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    #[error("image has a zero dimension ({width}x{height})")]
    ZeroSize { width: u32, height: u32 },
    #[error("the {format} image could not be decoded: {reason}")]
    Corrupt { format: String, reason: String },
}

/// A decoded image in display orientation, as 8-bit RGB: at its full size, or reduced (see
/// [`Opened::decode_reduced`]); `width` and `height` are the full size either way.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub image: RgbImage,
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    /// 1 for a full decoding; 2, 4 or 8 for a JPEG decoded at that fraction of its size.
    pub reduced_by: u32,
}

/// Tells the format by the bytes' magic numbers (never by a name or a declared content type).
pub fn sniff_format(bytes: &[u8]) -> Result<ImageFormat, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let format = image::guess_format(bytes).map_err(|_| DecodeError::UnknownFormat)?;
    if FORMATS.iter().any(|(f, _, _)| *f == format) {
        Ok(format)
    } else {
        Err(DecodeError::UnsupportedFormat(format!("{format:?}")))
    }
}

/// An image past its header: format and size known and checked (format, pixel limit, zero
/// size, truncated JPEG), pixels not decoded yet, so that a caller can learn the pixel count
/// before it commits memory to decoding.
pub struct Opened<'a> {
    decoder: Box<dyn ImageDecoder + 'a>,
    bytes: &'a [u8],
    max_alloc: u64,
    orientation: Orientation,
    /// Pixels per axis a reduced decoding keeps for the network (see [`Opened::for_network`]).
    network: u32,
    pub format: ImageFormat,
    /// As stored, before EXIF orientation.
    pub width: u32,
    pub height: u32,
}

fn corrupt(format: ImageFormat, reason: impl std::fmt::Display) -> DecodeError {
    DecodeError::Corrupt {
        format: format!("{format:?}").to_uppercase(),
        reason: reason.to_string(),
    }
}

/// Reads and checks the header.
pub fn open(bytes: &[u8], limits: DecodeLimits) -> Result<Opened<'_>, DecodeError> {
    let format = sniff_format(bytes)?;
    // The JPEG decoder pads a truncated scan with grey instead of failing: catch it here.
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(corrupt(
            format,
            "the file is truncated (no end-of-image marker after the last scan)",
        ));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut image_limits = Limits::default();
    image_limits.max_alloc = Some(limits.max_alloc);
    reader.limits(image_limits);
    let mut decoder = reader.into_decoder().map_err(|e| corrupt(format, e))?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(DecodeError::TooManyPixels {
            width,
            height,
            pixels,
            limit: limits.max_pixels,
        });
    }
    if pixels == 0 {
        return Err(DecodeError::ZeroSize { width, height });
    }
    // A broken EXIF block is not worth refusing the image for: draw it as stored.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    Ok(Opened {
        decoder: Box::new(decoder),
        bytes,
        max_alloc: limits.max_alloc,
        orientation,
        network: REDUCED_MARGIN * INPUT_SIDE,
        format,
        width,
        height,
    })
}

/// True for the EXIF orientations that turn the picture by a quarter (width and height swap).
fn swaps_axes(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

impl<'a> Opened<'a> {
    /// Sets what a reduced decoding must keep for the network: [`Preprocess::decode_side`]
    /// pixels per axis (by default, that of the default 224-pixel squash).
    pub fn for_network(mut self, preprocess: &Preprocess) -> Self {
        self.network = preprocess.decode_side();
        self
    }

    /// The size after EXIF orientation, as the picture is shown.
    pub fn display_size(&self) -> (u32, u32) {
        if swaps_axes(self.orientation) {
            (self.height, self.width)
        } else {
            (self.width, self.height)
        }
    }

    /// A reduced decoding of a JPEG that still yields at least `also` (display orientation)
    /// and [`REDUCED_MARGIN`] times the network's input in both axes.
    fn reduction(&self, also: (u32, u32)) -> Option<jpeg::Reduced<'a>> {
        if self.format != ImageFormat::Jpeg {
            return None;
        }
        let model = self.network;
        let need = (also.0.max(model), also.1.max(model));
        let need = if swaps_axes(self.orientation) {
            (need.1, need.0)
        } else {
            need
        };
        jpeg::plan(self.bytes, need, self.max_alloc)
    }

    /// The number of pixels [`Opened::decode_reduced`] with the same `also` will decode: the
    /// full size, or less for a JPEG that can be decoded at a fraction of it.
    pub fn decoded_pixels(&self, also: (u32, u32)) -> u64 {
        let (w, h) = self
            .reduction(also)
            .map_or((self.width, self.height), |r| (r.width, r.height));
        u64::from(w) * u64::from(h)
    }

    /// Like [`Opened::decode`], but a baseline JPEG is decoded at 1/2 or 1/4 of its size when
    /// the result still has [`REDUCED_MARGIN`] pixels per axis for each of the network's input,
    /// and is at least `also` (width and height, display orientation: the size of any other
    /// picture the caller will resize it to, such as an overlay; `(0, 0)` for none).
    pub fn decode_reduced(self, also: (u32, u32)) -> Result<Decoded, DecodeError> {
        let Some(reduced) = self.reduction(also) else {
            return self.decode();
        };
        let (format, orientation) = (self.format, self.orientation);
        let (width, height) = self.display_size();
        let (bytes, max_alloc) = (self.bytes, self.max_alloc);
        drop(self.decoder);
        let reduced_by = reduced.scale;
        let image = match reduced.decode() {
            Ok(image) => image,
            // What the reduced decoder refuses, the full one may still read (it is more
            // lenient with damaged scans): the picture is then decoded whole.
            Err(_) => {
                let limits = DecodeLimits {
                    max_pixels: u64::MAX,
                    max_alloc,
                };
                return open(bytes, limits)?.decode();
            }
        };
        let mut image = DynamicImage::ImageRgb8(image);
        image.apply_orientation(orientation);
        Ok(Decoded {
            image: image.into_rgb8(),
            format,
            width,
            height,
            reduced_by,
        })
    }

    /// Decodes the pixels: the first frame of an animation, turned upright by its EXIF
    /// orientation, converted from any colour type (grey, alpha, palette, 16-bit, CMYK) to 8-bit
    /// RGB. Alpha is dropped without compositing, as PIL's `convert("RGB")` does.
    pub fn decode(self) -> Result<Decoded, DecodeError> {
        let format = self.format;
        let mut image = DynamicImage::from_decoder(self.decoder).map_err(|e| corrupt(format, e))?;
        image.apply_orientation(self.orientation);
        let image = match image {
            DynamicImage::ImageRgb8(rgb) => rgb,
            other => other.to_rgb8(),
        };
        let (width, height) = image.dimensions();
        Ok(Decoded {
            image,
            format,
            width,
            height,
            reduced_by: 1,
        })
    }
}

/// [`open`] and [`Opened::decode`] in one step.
///
/// Truncated files are refused (a [`DecodeError::Corrupt`]) rather than padded: a partial image
/// would be explained as if it were whole.
pub fn decode(bytes: &[u8], limits: DecodeLimits) -> Result<Decoded, DecodeError> {
    open(bytes, limits)?.decode()
}

/// True when an end-of-image marker (`FF D9`) follows the start of the last scan (`FF DA`).
/// Inside entropy-coded data a `FF` byte is always followed by `00` or a restart marker, so
/// neither pair can occur by chance there; an embedded EXIF thumbnail's own markers come before
/// the main image's scans.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
    match (last(0xDA), last(0xD9)) {
        (Some(scan), Some(end)) => end > scan,
        _ => false,
    }
}

/// Resizes to `width` x `height` with a convolution filter that follows Pillow's (the bilinear
/// "triangle" kernel widened by the scale factor, i.e. antialiased when shrinking), which is what
/// torchvision's `Resize` does on PIL images.
pub fn resize_rgb(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    if image.dimensions() == (width, height) {
        return image.clone();
    }
    let src = fr::images::ImageRef::new(
        image.width(),
        image.height(),
        image.as_raw(),
        fr::PixelType::U8x3,
    )
    .expect("an RgbImage holds width*height*3 bytes: this is a bug");
    let mut dst = fr::images::Image::new(width, height, fr::PixelType::U8x3);
    let options =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
    fr::Resizer::new()
        .resize(&src, &mut dst, &options)
        .expect("same pixel type and non-zero sizes: this is a bug");
    RgbImage::from_raw(width, height, dst.into_vec())
        .expect("resizer output has the requested size: this is a bug")
}

/// The network's input for one image with the default preprocessing: `[3, 224, 224]` planar,
/// ImageNet-normalised, the whole picture squashed.
pub fn preprocess(image: &RgbImage) -> Vec<f32> {
    Preprocess::default().apply(image).0
}

/// `HWC u8` to `CHW f32`, `(v / 255 - mean) / std` with ImageNet's mean and std.
pub fn to_planar_normalised(image: &RgbImage) -> Vec<f32> {
    Preprocess::default().normalise(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Rgb};

    #[test]
    fn the_format_list_and_its_messages_agree() {
        assert_eq!(SUPPORTED_NAMES, "JPEG, PNG, WebP, GIF, BMP, TIFF");
        assert_eq!(
            SUPPORTED_MEDIA_TYPES,
            "image/jpeg, image/png, image/webp, image/gif, image/bmp, image/tiff"
        );
        assert_eq!(FORMATS.len(), 6);
    }

    fn png_bytes(img: &DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn empty_and_random_bytes_are_refused() {
        assert_eq!(
            decode(&[], DecodeLimits::default()).unwrap_err(),
            DecodeError::Empty
        );
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert_eq!(
            decode(&noise, DecodeLimits::default()).unwrap_err(),
            DecodeError::UnknownFormat
        );
    }

    #[test]
    fn pixel_limit_is_checked_from_the_header() {
        let img = DynamicImage::new_rgb8(300, 200);
        let limits = DecodeLimits {
            max_pixels: 59_999,
            ..Default::default()
        };
        match decode(&png_bytes(&img), limits).unwrap_err() {
            DecodeError::TooManyPixels {
                width: 300,
                height: 200,
                pixels: 60_000,
                limit: 59_999,
            } => {}
            e => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn truncated_png_is_refused() {
        let img =
            DynamicImage::ImageRgb8(RgbImage::from_fn(64, 64, |x, y| Rgb([x as u8, y as u8, 7])));
        let bytes = png_bytes(&img);
        let err = decode(&bytes[..bytes.len() / 2], DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, DecodeError::Corrupt { .. }), "{err:?}");
    }

    #[test]
    fn grey_sixteen_bit_and_alpha_become_rgb() {
        let grey16 = DynamicImage::ImageLuma16(image::ImageBuffer::from_pixel(
            3,
            2,
            image::Luma([65535u16]),
        ));
        let d = decode(&png_bytes(&grey16), DecodeLimits::default()).unwrap();
        assert_eq!(d.image.dimensions(), (3, 2));
        assert!(d.image.pixels().all(|p| p.0 == [255, 255, 255]));
        let rgba = DynamicImage::ImageRgba8(image::ImageBuffer::from_pixel(
            1,
            1,
            image::Rgba([10, 20, 30, 0]),
        ));
        assert_eq!(
            decode(&png_bytes(&rgba), DecodeLimits::default())
                .unwrap()
                .image
                .get_pixel(0, 0)
                .0,
            [10, 20, 30]
        );
    }

    #[test]
    fn unsupported_format_is_named() {
        // A minimal valid ICO header is recognised by its magic bytes but not accepted.
        let mut ico = Vec::new();
        image::codecs::ico::IcoEncoder::new(&mut ico)
            .write_image(&[0u8; 4 * 4 * 4], 4, 4, image::ExtendedColorType::Rgba8)
            .unwrap();
        assert!(matches!(
            decode(&ico, DecodeLimits::default()),
            Err(DecodeError::UnsupportedFormat(_))
        ));
    }

    #[test]
    fn resize_of_constant_image_is_constant_and_exact_size() {
        for (w, h) in [(1, 1), (1, 4000), (4000, 1), (300, 200)] {
            let img = RgbImage::from_pixel(w, h, Rgb([200, 100, 50]));
            let out = resize_rgb(&img, INPUT_SIDE, INPUT_SIDE);
            assert_eq!(out.dimensions(), (INPUT_SIDE, INPUT_SIDE));
            assert!(out.pixels().all(|p| p.0 == [200, 100, 50]), "{w}x{h}");
        }
    }

    #[test]
    fn normalisation_is_imagenet_mean_and_std_planar() {
        let img = RgbImage::from_fn(2, 1, |x, _| {
            if x == 0 {
                Rgb([0, 0, 0])
            } else {
                Rgb([255, 255, 255])
            }
        });
        let v = to_planar_normalised(&img);
        assert_eq!(v.len(), 6);
        for c in 0..3 {
            assert!((v[c * 2] - (-MEAN[c] / STD[c])).abs() < 1e-6);
            assert!((v[c * 2 + 1] - (1.0 - MEAN[c]) / STD[c]).abs() < 1e-6);
        }
    }
}
