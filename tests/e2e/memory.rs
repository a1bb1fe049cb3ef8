//! Memory stays bounded whatever the images: the real server under an address-space limit
//! (`prlimit --as`, see [`Server::start_limited`]) takes a burst of concurrent near-limit
//! images, flat and photographic, JPEG and PNG. With the pixel budget every request gets its
//! answer or the documented 503 `memory_busy` with `Retry-After`, the server lives, and a normal
//! request afterwards gets 200. Without the budget the same burst under the same limit kills
//! it: the limit bites.
//!
//! The limit is the server's own address space after start-up and one request (libtorch maps
//! about 3 GB), plus [`HEADROOM`].

use crate::common::server::{Server, client};
use crate::common::{encode_jpeg, encode_png, fixture};
use image::{Rgb, RgbImage};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Address space the server may use beyond what it holds at rest: room for the default budget
/// of 100 M pixels decoding at once (about 300 MB) and the model's work on a batch, not for the
/// burst's images all decoded at full size (about 3 GB for its PNGs alone).
const HEADROOM: u64 = 1 << 30;

/// A photograph at `w` x `h`: the fixture coffee.jpg resized, with a little deterministic noise
/// so that it compresses like a photograph rather than like a smooth gradient.
fn photograph(w: u32, h: u32) -> RgbImage {
    let coffee = image::load_from_memory(&std::fs::read(fixture("coffee.jpg")).unwrap())
        .unwrap()
        .to_rgb8();
    let mut img = image::imageops::resize(&coffee, w, h, image::imageops::FilterType::Triangle);
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for v in img.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *v = (i16::from(*v) + (state % 13) as i16 - 6).clamp(0, 255) as u8;
    }
    img
}

/// One kind of image in the burst: name, media type, bytes, copies.
type Kind = (&'static str, &'static str, Vec<u8>, usize);

/// The burst. Near the 50 MP limit where the body limit (20 MiB) allows: a photographic PNG of
/// 42 MP would not fit it.
fn burst() -> &'static [Kind] {
    static BURST: OnceLock<Vec<Kind>> = OnceLock::new();
    BURST.get_or_init(|| {
        let flat = RgbImage::from_pixel(7000, 7000, Rgb([120, 140, 160]));
        let flat_jpeg = encode_jpeg(&flat, 90);
        let flat_png = encode_png(&flat);
        drop(flat);
        let photo = photograph(7500, 5600);
        let photo_jpeg = encode_jpeg(&photo, 75);
        drop(photo);
        let photo_png = encode_png(&photograph(2400, 1600));
        assert!(photo_png.len() < 20 << 20, "{} bytes", photo_png.len());
        vec![
            ("flat 7000x7000 PNG", "image/png", flat_png, 16),
            ("flat 7000x7000 JPEG", "image/jpeg", flat_jpeg, 12),
            ("photographic 7500x5600 JPEG", "image/jpeg", photo_jpeg, 8),
            ("photographic 2400x1600 PNG", "image/png", photo_png, 4),
        ]
    })
}

/// Posts every image of the burst at once; returns (image, status, retry-after, body).
fn send_burst(server: &Server) -> Vec<(&'static str, u16, Option<String>, String)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = burst()
            .iter()
            .flat_map(|(name, media_type, bytes, copies)| {
                (0..*copies).map(move |_| (*name, *media_type, bytes))
            })
            .map(|(name, media_type, bytes)| {
                s.spawn(move || {
                    let res = client()
                        .post(server.url("/explain"))
                        .header("content-type", media_type)
                        .body(bytes.clone())
                        .send();
                    match res {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let retry = r
                                .headers()
                                .get("retry-after")
                                .map(|v| v.to_str().unwrap().to_string());
                            (name, status, retry, r.text().unwrap_or_default())
                        }
                        // The connection broke: the server died under the request.
                        Err(e) => (name, 0, None, e.to_string()),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn explain_chelsea(server: &Server) -> u16 {
    client()
        .post(server.url("/explain"))
        .header("content-type", "image/png")
        .body(std::fs::read(fixture("chelsea.png")).unwrap())
        .send()
        .unwrap()
        .status()
        .as_u16()
}

/// The address-space limit: what the server holds after start-up and one request (started the
/// same way, under a limit too large to matter), plus the headroom.
fn limit() -> u64 {
    let server = Server::start_limited(1 << 50, &[]);
    assert_eq!(explain_chelsea(&server), 200);
    let at_rest = server.status_kib("VmPeak") * 1024;
    println!(
        "address space at rest {} MiB; limit {} MiB",
        at_rest >> 20,
        (at_rest + HEADROOM) >> 20
    );
    at_rest + HEADROOM
}

fn exited_within(server: &mut Server, wait: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < wait {
        if let Some(status) = server.child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn a_burst_of_near_limit_images_is_served_within_a_memory_limit_that_kills_without_the_budget() {
    let limit = limit();
    burst();

    // With the default budget: answers or refusals with Retry-After, never a death.
    let mut server = Server::start_limited(limit, &[]);
    let answers = send_burst(&server);
    let mut served = 0;
    for (name, status, retry, body) in &answers {
        match status {
            200 => served += 1,
            // Refused for the pixels it would hold, or at admission for a queue that its
            // deadline cannot cover (both say when to come back).
            503 => {
                assert!(
                    body.contains("\"memory_busy\"") || body.contains("\"overloaded\""),
                    "{name}: {body}"
                );
                assert!(retry.is_some(), "{name}: 503 without Retry-After");
            }
            _ => panic!("{name}: {status} {body}"),
        }
    }
    assert!(
        exited_within(&mut server, Duration::from_millis(200)).is_none(),
        "the server died under the limit with its budget"
    );
    println!(
        "with the budget: {served} of {} served, the rest memory_busy; peak resident {} MiB, \
         peak address space {} MiB",
        answers.len(),
        server.status_kib("VmHWM") >> 10,
        server.status_kib("VmPeak") >> 10
    );
    assert!(served > 0, "nothing of the burst was served");
    assert_eq!(explain_chelsea(&server), 200, "a normal request afterwards");
    drop(server);

    // The same burst under the same limit, with a budget too large to bind, and as many
    // requests decoding at once as the burst has (as on a host with that many cores).
    let mut server = Server::start_limited(
        limit,
        &[
            "--max-inflight-pixels",
            "1000000000000",
            "--image-threads",
            "64",
        ],
    );
    let answers = send_burst(&server);
    let status = exited_within(&mut server, Duration::from_secs(30));
    let broken = answers.iter().filter(|a| a.1 == 0).count();
    println!("without the budget: exit {status:?}, {broken} connections broken");
    assert!(
        status.is_some_and(|s| !s.success()),
        "without the budget the burst should exhaust the limit and end the server; answers: {:?}",
        answers.iter().map(|a| (a.0, a.1)).collect::<Vec<_>>()
    );
}
