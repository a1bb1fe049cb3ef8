//! Any bytes through the service's decode + preprocess: must return an image or a
//! `DecodeError`, never panic, hang or allocate without bound.
#![no_main]

#[path = "../../src/input/mod.rs"]
#[allow(dead_code)]
mod input;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Tighter than the service's defaults so that libFuzzer's memory limit is never the finder.
    let limits = input::DecodeLimits { max_pixels: 4_000_000, max_alloc: 256 << 20 };
    if let Ok(decoded) = input::decode(data, limits) {
        let x = input::preprocess(&decoded.image);
        assert_eq!(x.len(), 3 * 224 * 224);
        assert!(x.iter().all(|v| v.is_finite()));
    }
});
