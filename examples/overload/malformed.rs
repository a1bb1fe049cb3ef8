//! The malformed and near-limit requests mixed into the overload, each with the answer it
//! must get.

/// One kind of malformed (or near-limit) request and what the server must answer: `status`
/// with problem type `problem`; for a near-limit image (`status` 200), its explanation or a
/// refusal with Retry-After.
pub struct Bad {
    pub name: &'static str,
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub status: u16,
    pub problem: &'static str,
}

/// Flat 7000x7000 pictures (49 MP, under the 50 MP limit): as a JPEG (decoded at a quarter of
/// its size) and as a PNG (decoded whole, 147 MB).
fn near_limit() -> (Vec<u8>, Vec<u8>) {
    use image::ImageEncoder;
    let flat = image::RgbImage::from_pixel(7000, 7000, image::Rgb([120, 140, 160]));
    let (mut jpeg, mut png) = (Vec::new(), Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .write_image(&flat, 7000, 7000, image::ExtendedColorType::Rgb8)
        .expect("a JPEG encodes");
    image::codecs::png::PngEncoder::new_with_quality(
        &mut png,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::Adaptive,
    )
    .write_image(&flat, 7000, 7000, image::ExtendedColorType::Rgb8)
    .expect("a PNG encodes");
    (jpeg, png)
}

/// Every kind, in the order the overload cycles through them; `photo` gives the truncated
/// JPEG and the well-formed image sent with an unknown method.
pub fn bad_requests(photo: &[u8]) -> Vec<Bad> {
    // A JPEG header claiming 65000 x 65000 pixels.
    let mut huge = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08];
    huge.extend_from_slice(&65000u16.to_be_bytes());
    huge.extend_from_slice(&65000u16.to_be_bytes());
    huge.extend_from_slice(&[3, 1, 0x11, 0, 2, 0x11, 1, 3, 0x11, 1]);
    huge.extend_from_slice(&[
        0xFF, 0xDA, 0x00, 0x0C, 3, 1, 0x00, 2, 0x11, 3, 0x11, 0x00, 0x3F, 0x00, 0xFF, 0xD9,
    ]);
    let mut noise = vec![0u8; 4096];
    let mut x = 0x2545F4914F6CDD1Du64;
    for b in &mut noise {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let form =
        b"--B\r\nContent-Disposition: form-data; name=\"method\"\r\n\r\ngradcam\r\n--B--\r\n";
    let (flat_jpeg, flat_png) = near_limit();
    let bad = |name, path, content_type, body: &[u8], status, problem| Bad {
        name,
        path,
        content_type,
        body: body.to_vec(),
        status,
        problem,
    };
    vec![
        bad(
            "random bytes",
            "/explain",
            "image/jpeg",
            &noise,
            422,
            "invalid_image",
        ),
        bad(
            "truncated jpeg",
            "/explain",
            "image/jpeg",
            &photo[..photo.len() / 2],
            422,
            "invalid_image",
        ),
        bad(
            "zero bytes",
            "/explain",
            "image/png",
            b"",
            422,
            "invalid_image",
        ),
        bad(
            "huge claim",
            "/explain",
            "image/jpeg",
            &huge,
            422,
            "image_too_large",
        ),
        bad(
            "unknown method",
            "/explain?method=scorecam",
            "image/jpeg",
            photo,
            422,
            "invalid_option",
        ),
        bad(
            "text body",
            "/explain",
            "text/plain",
            b"hello",
            415,
            "unsupported_media_type",
        ),
        bad(
            "metadata url",
            "/explain",
            "application/json",
            br#"{"url":"http://169.254.169.254/latest/meta-data/"}"#,
            403,
            "forbidden_source",
        ),
        bad(
            "ftp url",
            "/explain",
            "application/json",
            br#"{"url":"ftp://example.com/cat.jpg"}"#,
            422,
            "invalid_url",
        ),
        bad(
            "form without image",
            "/explain",
            "multipart/form-data; boundary=B",
            form,
            400,
            "malformed_request",
        ),
        bad(
            "49 MP flat JPEG",
            "/explain",
            "image/jpeg",
            &flat_jpeg,
            200,
            "",
        ),
        bad(
            "49 MP flat PNG",
            "/explain",
            "image/png",
            &flat_png,
            200,
            "",
        ),
    ]
}
