//! Reduced-size JPEG decoding: a baseline JPEG can be decoded at 1/2 or 1/4 of its size by
//! running a smaller inverse DCT on each 8x8 block, so that a 50 MP photograph never has to
//! exist at full size when the answer needs a few hundred pixels of it. Only baseline
//! (sequential) JPEGs in grey or YCbCr qualify: a progressive file keeps every coefficient of
//! the full image anyway, and CMYK or 12-bit files are rare enough to take the ordinary path.
//! 1/8 is not used: the decoder's 1x1 transform truncates instead of rounding, which darkens
//! the picture by up to one level, and it keeps nothing but each block's mean.

use image::{GrayImage, RgbImage};
use jpeg_decoder::{CodingProcess, Decoder, PixelFormat};
use std::io::Cursor;

/// The reductions tried, largest first.
const SCALES: [u32; 2] = [4, 2];

/// A JPEG that will be decoded at `1/scale` of its stored size, to `width` x `height`.
pub struct Reduced<'a> {
    decoder: Decoder<Cursor<&'a [u8]>>,
    pub scale: u32,
    pub width: u32,
    pub height: u32,
}

/// The largest reduction whose result is still at least `need` (stored orientation) in both
/// axes, or `None` when the file does not qualify or no reduction leaves enough pixels.
pub fn plan(bytes: &[u8], need: (u32, u32), max_alloc: u64) -> Option<Reduced<'_>> {
    let mut decoder = Decoder::new(Cursor::new(bytes));
    decoder.set_max_decoding_buffer_size(usize::try_from(max_alloc).unwrap_or(usize::MAX));
    decoder.read_info().ok()?;
    let info = decoder.info()?;
    if info.coding_process != CodingProcess::DctSequential
        || !matches!(info.pixel_format, PixelFormat::L8 | PixelFormat::RGB24)
    {
        return None;
    }
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    let scale = SCALES
        .into_iter()
        .find(|&s| w.div_ceil(s) >= need.0 && h.div_ceil(s) >= need.1)?;
    let (width, height) = (w.div_ceil(scale), h.div_ceil(scale));
    // Both fit u16: they are at most the stored size.
    let got = decoder.scale(width as u16, height as u16).ok()?;
    (got == (width as u16, height as u16)).then_some(Reduced {
        decoder,
        scale,
        width,
        height,
    })
}

impl Reduced<'_> {
    /// Decodes to 8-bit RGB at the planned size (stored orientation).
    pub fn decode(mut self) -> Result<RgbImage, String> {
        let pixels = self.decoder.decode().map_err(|e| e.to_string())?;
        let format = self.decoder.info().map(|i| i.pixel_format);
        let wrong = || "the decoder returned a buffer of an unexpected size".to_string();
        match format {
            Some(PixelFormat::RGB24) => RgbImage::from_raw(self.width, self.height, pixels),
            Some(PixelFormat::L8) => GrayImage::from_raw(self.width, self.height, pixels)
                .map(|g| image::DynamicImage::ImageLuma8(g).to_rgb8()),
            _ => None,
        }
        .ok_or_else(wrong)
    }
}
