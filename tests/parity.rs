//! Parity with PyTorch on the same (seeded random) weights and the same input tensors:
//! torchvision's ResNet-50, the seed tutorial's Grad-CAM and pytorch-grad-cam's five methods.
//!
//! Tolerances: logits and raw maps within 1e-3 of the reference's largest magnitude (float32
//! through 50 layers, with batch norm folded into the convolutions, differs from PyTorch's
//! unfolded order of operations by about 1e-6 relative; 1e-3 leaves room for other CPUs'
//! kernels), normalised maps within 1e-3 absolute.

mod common;

use common::{MODEL, REFERENCE, max_diff};
use gradcam_serve::cam::{self, Method};
use gradcam_serve::model::{ExplainOptions, Layer};

const REL: f32 = 1e-3;
const ABS_NORM: f32 = 1e-3;

fn input(name: &str) -> Vec<f32> {
    REFERENCE.vec(&format!("input.{name}"))
}

#[test]
fn logits_match_torchvision_with_both_weight_formats() {
    let pth = common::load_model("weights.pth");
    let st = MODEL.lock().unwrap();
    for photo in &REFERENCE.meta.photos {
        let x = input(&photo.name);
        let want = REFERENCE.vec(&format!("logits.{}", photo.name));
        for model in [&*st, &pth] {
            let got = &model.logits(&[&x]).unwrap()[0];
            let (d, scale) = max_diff(got, &want);
            assert!(
                d <= REL * scale,
                "{}: logits differ by {d} (scale {scale})",
                photo.name
            );
            let top = gradcam_serve::model::top_predictions(got, 3);
            assert_eq!(
                top.iter().map(|p| p.index).collect::<Vec<_>>(),
                photo.top3,
                "{}",
                photo.name
            );
        }
    }
}

#[test]
fn every_method_and_layer_matches_pytorch_grad_cam() {
    let model = MODEL.lock().unwrap();
    for photo in &REFERENCE.meta.photos {
        let x = input(&photo.name);
        for layer in [Layer::Layer4, Layer::Layer3] {
            for method in Method::ALL {
                let opts = ExplainOptions {
                    layer,
                    method,
                    ..Default::default()
                };
                let r = model.explain(&[(&x, opts)]).unwrap().remove(0);
                let e = &r.explanations[0];
                assert_eq!(e.class_index, photo.top3[0]);
                let side = if layer == Layer::Layer4 { 7 } else { 14 };
                assert_eq!((e.heatmap.width, e.heatmap.height), (side, side));
                let want = REFERENCE.vec(&format!("cam.{method}.{layer}.{}.k0", photo.name));
                let (d, scale) = max_diff(&e.heatmap.data, &want);
                let what = format!("{} {method} {layer}", photo.name);
                assert!(
                    d <= REL * scale,
                    "{what}: raw map differs by {d} (scale {scale})"
                );
                let (d, _) = max_diff(&e.normalized, &cam::normalise(&want).map);
                assert!(d <= ABS_NORM, "{what}: normalised map differs by {d}");
                assert!(
                    e.normalized.iter().all(|v| (0.0..=1.0).contains(v)),
                    "{what}"
                );
            }
        }
    }
}

#[test]
fn gradcam_matches_the_seed_algorithm() {
    let model = MODEL.lock().unwrap();
    for photo in &REFERENCE.meta.photos {
        let x = input(&photo.name);
        for layer in [Layer::Layer4, Layer::Layer3] {
            let opts = ExplainOptions {
                layer,
                ..Default::default()
            };
            let r = model.explain(&[(&x, opts)]).unwrap().remove(0);
            let want = REFERENCE.vec(&format!("seed.{layer}.{}", photo.name));
            let (d, _) = max_diff(&r.explanations[0].normalized, &want);
            assert!(
                d <= ABS_NORM,
                "{} {layer}: differs from the seed by {d}",
                photo.name
            );
        }
    }
}

#[test]
fn top_k_explanations_come_from_one_forward_pass_and_match() {
    let model = MODEL.lock().unwrap();
    for photo in &REFERENCE.meta.photos {
        let x = input(&photo.name);
        let r = model
            .explain(&[(
                &x,
                ExplainOptions {
                    top_k: 3,
                    ..Default::default()
                },
            )])
            .unwrap()
            .remove(0);
        let classes: Vec<i64> = r.explanations.iter().map(|e| e.class_index).collect();
        assert_eq!(classes, photo.top3);
        for (k, e) in r.explanations.iter().enumerate() {
            let want = REFERENCE.vec(&format!("cam.gradcam.layer4.{}.k{k}", photo.name));
            let (d, scale) = max_diff(&e.heatmap.data, &want);
            assert!(
                d <= REL * scale,
                "{} rank {k}: differs by {d} (scale {scale})",
                photo.name
            );
        }
        // An explicit class gives the same map as reaching it through top-k.
        let c = photo.top3[2];
        let r2 = model
            .explain(&[(
                &x,
                ExplainOptions {
                    class: Some(c),
                    ..Default::default()
                },
            )])
            .unwrap()
            .remove(0);
        assert_eq!(r2.explanations.len(), 1);
        assert_eq!(r2.explanations[0].class_index, c);
        let (d, scale) = max_diff(
            &r2.explanations[0].heatmap.data,
            &r.explanations[2].heatmap.data,
        );
        assert!(
            d <= 1e-5 * scale.max(1e-12),
            "explicit class differs by {d}"
        );
    }
}

#[test]
fn a_mixed_batch_gives_the_same_numbers_as_one_at_a_time() {
    let model = MODEL.lock().unwrap();
    let photos = &REFERENCE.meta.photos;
    let inputs: Vec<Vec<f32>> = photos.iter().map(|p| input(&p.name)).collect();
    // Different methods, layers, targets and k in one batch.
    let opts: Vec<ExplainOptions> = photos
        .iter()
        .enumerate()
        .map(|(i, p)| ExplainOptions {
            method: Method::ALL[i % Method::ALL.len()],
            layer: if i % 2 == 0 {
                Layer::Layer4
            } else {
                Layer::Layer3
            },
            top_k: 1 + i % 3,
            class: (i == 3).then_some(p.top3[1]),
        })
        .collect();
    let items: Vec<(&[f32], ExplainOptions)> = inputs
        .iter()
        .map(|x| x.as_slice())
        .zip(opts.iter().copied())
        .collect();
    let batched = model.explain(&items).unwrap();
    for (i, (x, o)) in items.iter().enumerate() {
        let alone = model.explain(&[(x, *o)]).unwrap().remove(0);
        assert_eq!(alone.explanations.len(), batched[i].explanations.len());
        for (a, b) in alone.explanations.iter().zip(&batched[i].explanations) {
            assert_eq!(
                (a.class_index, a.method, a.layer),
                (b.class_index, b.method, b.layer)
            );
            // Batched convolutions may pick other kernels: allow float reassociation only.
            let (d, scale) = max_diff(&b.heatmap.data, &a.heatmap.data);
            assert!(
                d <= 1e-4 * scale.max(1e-12),
                "item {i}: batched differs by {d} (scale {scale})"
            );
        }
        for (a, b) in alone.predictions.iter().zip(&batched[i].predictions) {
            assert_eq!(a.index, b.index);
            assert!((a.logit - b.logit).abs() <= 1e-4 * a.logit.abs().max(1.0));
        }
    }
}
