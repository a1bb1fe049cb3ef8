//! PNG written the fast way for photographs: each row filtered with Up and the whole image
//! deflated by fdeflate's fastest mode into one IDAT chunk, straight into the buffer that
//! becomes the answer.
//!
//! Overlays are photographs, on which deflate gains little and costs most of what a request
//! spends outside the model. Measured on the 1 MP photograph's overlay (benches/render.rs, see
//! README's Performance): fdeflate alone takes about 3.3 ms for 1.59 MB; stored blocks about
//! 0.9 ms for 2.6 MB, 65% more to send and to base64, so deflate stays. Up is the filter: Sub,
//! Paeth or a choice per row cost 10-50% more time for answers 0.2-7% smaller. The `png`
//! crate makes the same stream at its fastest level, but from a growing buffer that is then
//! copied into chunks: under a server's allocation pattern that took 5.5 ms against this
//! writer's 3.5.

/// A PNG file's first eight bytes.
const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
/// The filter byte of a row predicted from the row above (PNG's filter type 2).
const FILTER_UP: u8 = 2;
/// The filter byte of a row stored as it is.
const FILTER_NONE: u8 = 0;

/// 8-bit pixels, `channels` per pixel (3: RGB, 4: RGBA), as a PNG file.
pub fn png_bytes(pixels: &[u8], width: u32, height: u32, channels: u8) -> Vec<u8> {
    let stride = width as usize * usize::from(channels);
    assert_eq!(
        pixels.len(),
        stride * height as usize,
        "pixels do not match the size: this is a bug"
    );
    let colour_type = match channels {
        3 => 2u8,
        4 => 6u8,
        _ => panic!("{channels} channels: only RGB and RGBA are written; this is a bug"),
    };
    let mut header = [0u8; 13];
    header[..4].copy_from_slice(&width.to_be_bytes());
    header[4..8].copy_from_slice(&height.to_be_bytes());
    // 8 bits per sample, the colour type, deflate, adaptive filtering, no interlace.
    header[8..].copy_from_slice(&[8, colour_type, 0, 0, 0]);

    // Everything before the IDAT's data; its length is filled in once the data is written.
    let start = |capacity: usize| {
        let mut out = Vec::with_capacity(capacity);
        out.extend_from_slice(&SIGNATURE);
        chunk(&mut out, b"IHDR", &header);
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(b"IDAT");
        out
    };
    // Where the IDAT chunk starts: after the signature and the IHDR chunk (4 + 4 + 13 + 4).
    let idat = SIGNATURE.len() + 25;
    let raw = (stride + 1) * height as usize;
    let out = match deflated(start(pixels.len() * 2 / 3 + 128), pixels, stride) {
        Some(out) if out.len() - idat - 8 <= stored_size(raw) => out,
        // Noise deflates to more than it is: stored blocks instead, as the png crate does.
        _ => stored(start(idat + 8 + stored_size(raw) + 16), pixels, stride),
    };
    finish(out, idat)
}

/// The rows, each filtered with Up, deflated after what `out` holds.
fn deflated(out: Vec<u8>, pixels: &[u8], stride: usize) -> Option<Vec<u8>> {
    let mut compressor = fdeflate::Compressor::new(out).ok()?;
    let mut line = vec![0u8; stride + 1];
    let mut above: Option<&[u8]> = None;
    for row in pixels.chunks_exact(stride) {
        match above {
            Some(prev) => {
                line[0] = FILTER_UP;
                for ((d, &p), &q) in line[1..].iter_mut().zip(row).zip(prev) {
                    *d = p.wrapping_sub(q);
                }
            }
            None => {
                line[0] = FILTER_NONE;
                line[1..].copy_from_slice(row);
            }
        }
        compressor.write_data(&line).ok()?;
        above = Some(row);
    }
    compressor.finish().ok()
}

/// The rows unfiltered in stored deflate blocks, after what `out` holds.
fn stored(out: Vec<u8>, pixels: &[u8], stride: usize) -> Vec<u8> {
    let done = || -> std::io::Result<Vec<u8>> {
        let mut cursor = std::io::Cursor::new(out);
        cursor.set_position(cursor.get_ref().len() as u64);
        let mut compressor = fdeflate::StoredOnlyCompressor::new(cursor)?;
        for row in pixels.chunks_exact(stride) {
            compressor.write_data(&[FILTER_NONE])?;
            compressor.write_data(row)?;
        }
        Ok(compressor.finish()?.into_inner())
    };
    done().expect("writing to memory cannot fail: this is a bug")
}

/// The size of `raw` bytes in stored deflate blocks, with the zlib header and checksum.
fn stored_size(raw: usize) -> usize {
    fdeflate::StoredOnlyCompressor::<()>::compressed_size(raw)
}

/// Fills in the IDAT chunk that starts at `idat`, then writes its CRC and the IEND chunk.
fn finish(mut out: Vec<u8>, idat: usize) -> Vec<u8> {
    let len = out.len() - idat - 8;
    let len32 = u32::try_from(len).expect("an IDAT of at most 8192^2 RGBA pixels fits 31 bits");
    out[idat..idat + 4].copy_from_slice(&len32.to_be_bytes());
    let crc = crc32fast::hash(&out[idat + 4..]);
    out.extend_from_slice(&crc.to_be_bytes());
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Appends one chunk: length, type, data and the CRC of type and data.
fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    let len = u32::try_from(data.len()).expect("a small chunk: this is a bug");
    out.extend_from_slice(&len.to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(png: &[u8]) -> image::DynamicImage {
        image::load_from_memory_with_format(png, image::ImageFormat::Png).unwrap()
    }

    #[test]
    fn rgb_and_rgba_of_any_size_read_back_exactly() {
        for (w, h) in [(1, 1), (1, 9), (9, 1), (37, 23)] {
            let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 256) as u8).collect();
            let back = decoded(&png_bytes(&rgb, w, h, 3)).to_rgb8();
            assert_eq!((back.width(), back.height()), (w, h));
            assert_eq!(back.into_raw(), rgb);
            let rgba: Vec<u8> = (0..w * h * 4).map(|i| (i * 13 % 256) as u8).collect();
            let back = decoded(&png_bytes(&rgba, w, h, 4)).to_rgba8();
            assert_eq!(back.into_raw(), rgba);
        }
    }

    #[test]
    fn noise_is_stored_not_inflated() {
        // A xorshift's bytes do not deflate: the file falls back to stored blocks, no larger
        // than the pixels plus the row filters and the containers' bytes.
        let mut x = 0x9e37_79b9_u32;
        let noise: Vec<u8> = (0..64 * 64 * 3)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let png = png_bytes(&noise, 64, 64, 3);
        assert!(png.len() <= noise.len() + 64 + 100, "{} bytes", png.len());
        assert_eq!(decoded(&png).to_rgb8().into_raw(), noise);
    }

    #[test]
    fn smooth_pictures_deflate() {
        let flat = vec![200u8; 100 * 100 * 3];
        let png = png_bytes(&flat, 100, 100, 3);
        assert!(png.len() < flat.len() / 20, "{} bytes", png.len());
        assert_eq!(decoded(&png).to_rgb8().into_raw(), flat);
    }
}
