//! The faithfulness score of explanations (see [`crate::backend::Faithfulness`]): the most
//! salient part of each input by its map is blurred out, or alone kept, and the network is run
//! again on those inputs, all of a batch's in extra forward passes of at most the batch's size.

use super::{Model, ModelError};
use crate::backend::{ExplainOptions, Explanation, FAITHFULNESS_FRACTION, Faithfulness, Layer};
use tch::{Kind, Tensor};

/// The blur's standard deviation at a 224-pixel input, scaled with the input: wide enough to
/// wipe out shapes and textures, and a common choice for blurred baselines.
const SIGMA_AT_224: f64 = 10.0;

/// A Gaussian blur of each channel of `[N, 3, S, S]`, with reflected borders.
fn blur(x: &Tensor, side: u32) -> Result<Tensor, ModelError> {
    let sigma = SIGMA_AT_224 * f64::from(side) / 224.0;
    let radius = ((3.0 * sigma).ceil() as i64)
        .min(i64::from(side) - 1)
        .max(1);
    let taps: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp() as f32)
        .collect();
    let total: f32 = taps.iter().sum();
    let taps: Vec<f32> = taps.iter().map(|t| t / total).collect();
    let k = taps.len() as i64;
    let kernel = Tensor::f_from_slice(&taps)?
        .f_to_device(x.device())?
        .f_repeat([3])?;
    let horizontal = kernel.f_view([3, 1, 1, k])?;
    let vertical = kernel.f_view([3, 1, k, 1])?;
    let y = x
        .f_reflection_pad2d([radius, radius, 0, 0])?
        .f_conv2d::<&Tensor>(&horizontal, None, [1, 1], [0, 0], [1, 1], 3)?;
    Ok(y.f_reflection_pad2d([0, 0, radius, radius])?
        .f_conv2d::<&Tensor>(&vertical, None, [1, 1], [0, 0], [1, 1], 3)?)
}

/// The top [`FAITHFULNESS_FRACTION`] of an `side` x `side` input by the map upsampled to it
/// (ties by position, so an empty map gives the top rows): 1 there, 0 elsewhere.
pub fn salient_mask(map: &[f32], w: usize, h: usize, side: usize) -> Vec<f32> {
    let up = crate::render::upsample_bilinear(map, w, h, side, side);
    let mut order: Vec<usize> = (0..up.len()).collect();
    order.sort_by(|&a, &b| up[b].total_cmp(&up[a]).then(a.cmp(&b)));
    let keep = (FAITHFULNESS_FRACTION as f64 * up.len() as f64).round() as usize;
    let mut mask = vec![0f32; up.len()];
    for &i in &order[..keep] {
        mask[i] = 1.0;
    }
    mask
}

fn softmax_at(logits: &[f32], class: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let denom: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    (f64::from(logits[class] - max).exp() / denom) as f32
}

/// Adds a [`Faithfulness`] to every explanation of the images that asked for one. `x` is the
/// batch the explanations were computed from, `logits` its logits by image.
pub fn score(
    model: &Model,
    x: &Tensor,
    logits: &[Vec<f32>],
    opts: &[ExplainOptions],
    explanations: &mut [Vec<Explanation>],
) -> Result<(), ModelError> {
    let _guard = tch::no_grad_guard();
    let side = model.preprocess.size;
    let s = side as usize;
    let blurred = blur(x, side)?;
    // (image, explanation) pairs to score, with their masks, sent to the device in one copy.
    let mut jobs = Vec::new();
    let mut masks = Vec::new();
    for (i, opt) in opts.iter().enumerate() {
        if opt.faithfulness {
            for (j, e) in explanations[i].iter().enumerate() {
                masks.extend(salient_mask(
                    &e.normalized,
                    e.heatmap.width,
                    e.heatmap.height,
                    s,
                ));
                jobs.push((i, j));
            }
        }
    }
    let masks = Tensor::f_from_slice(&masks)?
        .f_view([jobs.len() as i64, 1, side as i64, side as i64])?
        .f_to_device(x.device())?;
    // The masked inputs: deleted then kept.
    let mut inputs = Vec::with_capacity(2 * jobs.len());
    for (k, &(i, _)) in jobs.iter().enumerate() {
        let xi = x.f_get(i as i64)?;
        let bi = blurred.f_get(i as i64)?;
        let diff = bi.f_sub(&xi)?;
        let m = masks.f_get(k as i64)?;
        inputs.push(xi.f_add(&diff.f_mul(&m)?)?);
        inputs.push(bi.f_sub(&diff.f_mul(&m)?)?);
    }
    let chunk = opts.len().max(2) * 2;
    let mut probs = Vec::with_capacity(inputs.len());
    for part in inputs.chunks(chunk) {
        model.tune_for(part.len());
        let batch = Tensor::f_stack(part, 0)?;
        let a = model.net.features(&batch, Layer::Layer4)?;
        let p = model
            .net
            .head(&a, Layer::Layer4)?
            .f_softmax(1, Kind::Float)?;
        let classes = p.size()[1] as usize;
        let host = model.staging.download(&[&p])?;
        probs.extend(host[0].chunks_exact(classes).map(<[f32]>::to_vec));
    }
    for (n, (i, j)) in jobs.into_iter().enumerate() {
        let e = &mut explanations[i][j];
        let class = e.class_index as usize;
        let probability = softmax_at(&logits[i], class);
        let deleted = probs[2 * n][class];
        let kept = probs[2 * n + 1][class];
        e.faithfulness = Some(Faithfulness {
            fraction: FAITHFULNESS_FRACTION,
            probability,
            deleted_probability: deleted,
            kept_probability: kept,
            deletion_drop: probability - deleted,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_keeps_a_fifth_where_the_map_is_highest() {
        // A 2x2 map hot in its top-left cell: the kept fifth lies in the top-left quarter.
        let mask = salient_mask(&[1.0, 0.0, 0.0, 0.0], 2, 2, 20);
        assert_eq!(mask.iter().sum::<f32>(), 80.0);
        for (i, &m) in mask.iter().enumerate() {
            if m > 0.0 {
                assert!(i % 20 < 10 && i / 20 < 10, "pixel {i}");
            }
        }
    }

    #[test]
    fn blur_keeps_constants_and_flattens_detail() {
        let flat = Tensor::full([1, 3, 32, 32], 0.7, (Kind::Float, tch::Device::Cpu));
        let b = blur(&flat, 32).unwrap();
        assert!((b - 0.7).abs().max().double_value(&[]) < 1e-5);
        let mut checker = vec![0f32; 3 * 32 * 32];
        for (i, v) in checker.iter_mut().enumerate() {
            *v = ((i % 32 + i / 32) % 2) as f32;
        }
        let x = Tensor::from_slice(&checker).view([1, 3, 32, 32]);
        let b = blur(&x, 32).unwrap();
        assert!((b - 0.5).abs().max().double_value(&[]) < 0.05);
    }
}
