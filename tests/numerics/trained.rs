//! Proof on a trained network: a ResNet-18 trained from scratch (tests/trained.py) on pictures
//! where only one object's shape decides the class, served by the real binary from its
//! Lightning checkpoint with its labels and its 128-pixel input. On the 200 held-out pictures the
//! service must classify at least 95% correctly, and GradCAM at `layer4` must point into the
//! object (the map's highest point, upsampled to the picture, inside the object's box) in at
//! least 90%. The test prints the whole table, every method and layer with the mean
//! faithfulness scores, next to pytorch-grad-cam's pointing rates on the same pictures
//! (`--no-capture`).

use crate::common::server::{Server, client};
use gradcam_serve::render::upsample_bilinear;
use std::path::PathBuf;

fn trained_dir() -> PathBuf {
    crate::common::generated_dir("GRADCAM_TEST_TRAINED")
}

/// The first highest point of the normalised map upsampled to the picture (half-pixel
/// bilinear, as the overlay draws it), in picture pixels.
fn peak(e: &serde_json::Value, side: usize) -> (usize, usize) {
    let (w, h) = (
        e["heatmap"]["width"].as_u64().unwrap() as usize,
        e["heatmap"]["height"].as_u64().unwrap() as usize,
    );
    let map: Vec<f32> = e["normalized"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let up = upsample_bilinear(&map, w, h, side, side);
    let mut best = 0;
    for (i, v) in up.iter().enumerate() {
        if *v > up[best] {
            best = i;
        }
    }
    (best % side, best / side)
}

#[test]
fn the_maps_of_a_trained_network_point_at_the_object_that_decides_its_class() {
    let dir = trained_dir();
    let held: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("heldout.json")).unwrap()).unwrap();
    let torch: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("torch_figures.json")).unwrap()).unwrap();
    let side = held["picture_side"].as_u64().unwrap() as usize;
    let size = held["input_size"].as_u64().unwrap().to_string();
    let labels = dir.join("labels.txt");
    let server = Server::start_with(
        &dir.join("model.ckpt"),
        &["--labels", labels.to_str().unwrap(), "--input-size", &size],
    );
    let pictures = held["pictures"].as_array().unwrap();
    let methods = ["gradcam", "hirescam", "gradcam++", "xgradcam", "layercam"];
    let layers = ["layer1", "layer2", "layer3", "layer4"];
    // One picture's figures: (inside the box, deletion drop, kept probability) per method and
    // layer, and whether the top class is the truth.
    let judge = |http: &reqwest::blocking::Client, p: &serde_json::Value| {
        let bytes = std::fs::read(dir.join(p["file"].as_str().unwrap())).unwrap();
        let truth = p["class_index"].as_i64().unwrap();
        let b: Vec<usize> = p["box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let mut cells = [[(false, 0f64, 0f64); 4]; 5];
        let mut correct = false;
        for (m, method) in methods.iter().enumerate() {
            for (l, layer) in layers.iter().enumerate() {
                let a = http
                    .post(server.url(&format!(
                        "/explain?class={truth}&method={}&layer={layer}&overlay=false&faithfulness=true",
                        method.replace('+', "%2B")
                    )))
                    .header("content-type", "image/png")
                    .body(bytes.clone())
                    .send()
                    .unwrap();
                assert_eq!(a.status(), 200);
                let body: serde_json::Value = a.json().unwrap();
                if (m, l) == (0, 3) {
                    let top = &body["predictions"][0];
                    if top["index"].as_i64() == Some(truth) {
                        correct = true;
                        assert_eq!(top["label"], p["label"]);
                    }
                }
                let e = &body["explanations"][0];
                let (x, y) = peak(e, side);
                cells[m][l] = (
                    (b[0]..b[2]).contains(&x) && (b[1]..b[3]).contains(&y),
                    e["faithfulness"]["deletion_drop"].as_f64().unwrap(),
                    e["faithfulness"]["kept_probability"].as_f64().unwrap(),
                );
            }
        }
        (cells, correct)
    };
    // Four clients at once, so that the server batches them as it would any traffic (a
    // picture's answer does not depend on its batch: tests/numerics/parity.rs).
    let next = std::sync::atomic::AtomicUsize::new(0);
    let judged: Vec<_> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let http = client();
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(p) = pictures.get(i) else { break mine };
                        mine.push(judge(&http, p));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert_eq!(judged.len(), pictures.len());
    // (hits, deletion drop sum, kept probability sum) per method and layer.
    let mut table = vec![[(0usize, 0f64, 0f64); 4]; methods.len()];
    let mut correct = 0;
    for (cells, right) in &judged {
        correct += usize::from(*right);
        for (row, picture) in table.iter_mut().zip(cells) {
            for (cell, (hit, drop, kept)) in row.iter_mut().zip(picture) {
                cell.0 += usize::from(*hit);
                cell.1 += drop;
                cell.2 += kept;
            }
        }
    }
    let n = pictures.len() as f64;
    let accuracy = correct as f64 / n;
    println!(
        "accuracy {accuracy:.3} ({correct} of {n}); PyTorch {}",
        torch["accuracy"]
    );
    println!("| method | layer | pointing | pytorch-grad-cam | deletion drop | kept probability |");
    println!("|---|---|---|---|---|---|");
    for (m, method) in methods.iter().enumerate() {
        for (l, layer) in layers.iter().enumerate() {
            let (hits, drop, kept) = table[m][l];
            println!(
                "| {method} | {layer} | {:.3} | {:.3} | {:.3} | {:.3} |",
                hits as f64 / n,
                torch["pointing"][method][layer].as_f64().unwrap(),
                drop / n,
                kept / n
            );
        }
    }
    assert!(accuracy >= 0.95, "accuracy {accuracy}");
    let pointing = table[0][3].0 as f64 / n;
    assert!(
        pointing >= 0.90,
        "GradCAM at layer4 points into the object in {pointing}"
    );
}
