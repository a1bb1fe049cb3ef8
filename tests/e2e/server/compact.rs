//! Compact answers: the overlay as JPEG or WebP, in JSON or as the answer itself, and the map
//! alone as an RGBA picture for clients that blend in the browser.

use super::{base64_decode, default_server, problem};
use crate::common::server::post_fixture;
use serde_json::Value;

fn explain(server: &crate::common::server::Server, query: &str) -> Value {
    let res = post_fixture(server.url(&format!("/explain?{query}")), "coffee.jpg")
        .send()
        .unwrap();
    assert_eq!(res.status(), 200, "{query}");
    res.json().unwrap()
}

fn picture(e: &Value, member: &str) -> image::DynamicImage {
    let bytes = base64_decode(
        e[member]
            .as_str()
            .unwrap_or_else(|| panic!("no {member}: {e}")),
    );
    image::load_from_memory(&bytes).unwrap()
}

#[test]
fn overlay_formats_carry_the_same_picture() {
    let server = default_server();
    let png = explain(&server, "");
    let png = &png["explanations"][0];
    let reference = picture(png, "overlay_png").to_rgb8();
    assert_eq!(reference.dimensions(), (600, 400));

    let webp = explain(&server, "overlay_format=webp");
    let webp = &webp["explanations"][0];
    assert!(webp.get("overlay_png").is_none(), "one overlay member only");
    assert_eq!(
        picture(webp, "overlay_webp").to_rgb8(),
        reference,
        "WebP is lossless"
    );

    let (mut sizes, mut mean_errors) = (Vec::new(), Vec::new());
    for quality in [50, 95] {
        let jpeg = explain(
            &server,
            &format!("overlay_format=JPEG&overlay_quality={quality}"),
        );
        let jpeg = &jpeg["explanations"][0];
        sizes.push(jpeg["overlay_jpeg"].as_str().unwrap().len());
        let got = picture(jpeg, "overlay_jpeg").to_rgb8();
        assert_eq!(got.dimensions(), reference.dimensions());
        let error: u64 = got
            .as_raw()
            .iter()
            .zip(reference.as_raw())
            .map(|(a, b)| u64::from(a.abs_diff(*b)))
            .sum();
        mean_errors.push(error as f64 / got.as_raw().len() as f64);
    }
    assert!(sizes[0] < sizes[1], "quality 50 is smaller: {sizes:?}");
    assert!(
        mean_errors[1] < mean_errors[0] && mean_errors[1] < 4.0,
        "quality 95 is closer to the PNG: {mean_errors:?}"
    );
}

#[test]
fn heatmap_image_is_the_map_with_alpha_from_it() {
    let server = default_server();
    let body = explain(&server, "heatmap_image=true&overlay=false&colormap=gray");
    let e = &body["explanations"][0];
    assert!(e.get("overlay_png").is_none());
    let map = picture(e, "heatmap_png");
    assert_eq!(map.color(), image::ColorType::Rgba8);
    let map = map.to_rgba8();
    let (w, h) = (
        e["heatmap"]["width"].as_u64().unwrap(),
        e["heatmap"]["height"].as_u64().unwrap(),
    );
    assert_eq!((u64::from(map.width()), u64::from(map.height())), (w, h));
    let normalized: Vec<f32> = serde_json::from_value(e["normalized"].clone()).unwrap();
    for (p, v) in map.pixels().zip(&normalized) {
        let level = (v * 255.0).round() as u8;
        assert_eq!(
            p.0,
            [level, level, level, level],
            "gray colour, alpha = map"
        );
    }
    assert!(normalized.iter().any(|v| *v > 0.5), "the map has evidence");
    // At the overlay's size when overlay_max_side is given.
    let body = explain(&server, "heatmap_image=true&overlay_max_side=150");
    let e = &body["explanations"][0];
    assert_eq!(
        picture(e, "heatmap_png").to_rgba8().dimensions(),
        (150, 100)
    );
    assert_eq!(picture(e, "overlay_png").to_rgb8().dimensions(), (150, 100));
}

#[test]
fn picture_answers_follow_accept() {
    let server = default_server();
    for (accept, format) in [
        ("image/jpeg", image::ImageFormat::Jpeg),
        ("image/webp", image::ImageFormat::WebP),
        ("image/webp;q=0.5, image/png", image::ImageFormat::Png),
    ] {
        let res = post_fixture(server.url("/explain?overlay_quality=80"), "coffee.jpg")
            .header("accept", accept)
            .send()
            .unwrap();
        assert_eq!(res.status(), 200, "{accept}");
        assert_eq!(
            res.headers()["content-type"],
            format.to_mime_type(),
            "{accept}"
        );
        assert!(res.headers().contains_key("x-class-label"));
        let bytes = res.bytes().unwrap();
        assert_eq!(image::guess_format(&bytes).unwrap(), format, "{accept}");
    }
}

#[test]
fn bad_compact_options_are_refused() {
    let server = default_server();
    for (query, needle) in [
        ("overlay_format=gif", "png, jpeg, webp"),
        ("overlay_quality=0", "1..=100"),
        ("overlay_quality=high", "1..=100"),
        ("heatmap_image=yes", "true or false"),
    ] {
        let res = post_fixture(server.url(&format!("/explain?{query}")), "coffee.jpg")
            .send()
            .unwrap();
        let body = problem(query, res, 422, "invalid_option");
        assert!(
            body["detail"].as_str().unwrap().contains(needle),
            "{query}: {body}"
        );
    }
}
