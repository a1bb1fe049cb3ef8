//! The Grad-CAM family as pure arithmetic on activations and gradients.
//!
//! Nothing here knows about libtorch: the model hands over one image's activations `A` and the
//! gradient `G = d score / d A` of one target class, both `[channels, height, width]` row-major,
//! and gets back the raw class-activation map `[height, width]` before any ReLU or scaling.
//! The definitions follow pytorch-grad-cam (which the parity tests compare against):
//!
//! | method      | map                                                              |
//! |-------------|------------------------------------------------------------------|
//! | `gradcam`   | `sum_c mean_hw(G_c) * A_c`                                        |
//! | `hirescam`  | `sum_c G_c * A_c` (element-wise, no pooling)                      |
//! | `gradcam++` | `sum_c w_c * A_c`, `w_c = sum_hw relu(G) * a`, with `a` from eq. 19 |
//! | `xgradcam`  | `sum_c w_c * A_c`, `w_c = sum_hw G * A / (sum_hw A + eps)`        |
//! | `layercam`  | `sum_c relu(G_c) * A_c`                                           |
//!
//! [`normalise`] then applies the ReLU and scales by the maximum, as the seed tutorial does.

use crate::names::named_enum;

named_enum! {
    /// A class-activation-map method.
    pub enum Method("method") {
        #[default]
        GradCam => "gradcam",
        HiResCam => "hirescam",
        /// `gradcampp` needs no encoding in a query string, where `+` means a space.
        GradCamPlusPlus => "gradcam++" | "gradcampp",
        XGradCam => "xgradcam",
        LayerCam => "layercam",
    }
}

/// pytorch-grad-cam's epsilons, kept so the maps agree with it to float precision.
const GRADCAM_PP_EPS: f32 = 1e-6;
const XGRADCAM_EPS: f32 = 1e-7;

/// Computes the raw map (`height * width` values, row-major) of `method` for one image and one
/// target. `acts` and `grads` are `[channels, height, width]` row-major.
///
/// # Panics
/// If the slices do not hold `channels * height * width` values: the model produced them with
/// that shape, so a mismatch is a bug.
pub fn raw_map(
    method: Method,
    acts: &[f32],
    grads: &[f32],
    channels: usize,
    hw: usize,
) -> Vec<f32> {
    assert_eq!(
        acts.len(),
        channels * hw,
        "activation shape mismatch: this is a bug"
    );
    assert_eq!(
        grads.len(),
        channels * hw,
        "gradient shape mismatch: this is a bug"
    );
    let mut map = vec![0f32; hw];
    let planes = acts.chunks_exact(hw).zip(grads.chunks_exact(hw));
    match method {
        Method::GradCam | Method::GradCamPlusPlus | Method::XGradCam => {
            for (a, g) in planes {
                let w = channel_weight(method, a, g);
                if w != 0.0 {
                    map.iter_mut().zip(a).for_each(|(m, &a)| *m += w * a);
                }
            }
        }
        Method::HiResCam => {
            for (a, g) in planes {
                map.iter_mut()
                    .zip(a.iter().zip(g))
                    .for_each(|(m, (&a, &g))| *m += g * a);
            }
        }
        Method::LayerCam => {
            for (a, g) in planes {
                map.iter_mut()
                    .zip(a.iter().zip(g))
                    .for_each(|(m, (&a, &g))| *m += g.max(0.0) * a);
            }
        }
    }
    map
}

/// The scalar weight of one channel for the methods that weight whole channels.
fn channel_weight(method: Method, a: &[f32], g: &[f32]) -> f32 {
    let hw = a.len() as f32;
    match method {
        Method::GradCam => g.iter().sum::<f32>() / hw,
        Method::GradCamPlusPlus => {
            // Grad-CAM++ eq. 19 (Chattopadhay et al. 2018) with the closed form for exp(score).
            let sum_a: f32 = a.iter().sum();
            g.iter()
                .filter(|&&g| g != 0.0)
                .map(|&g| {
                    let g2 = g * g;
                    let alpha = g2 / (2.0 * g2 + sum_a * g2 * g + GRADCAM_PP_EPS);
                    g.max(0.0) * alpha
                })
                .sum()
        }
        Method::XGradCam => {
            let sum_a: f32 = a.iter().sum();
            a.iter()
                .zip(g)
                .map(|(&a, &g)| g * a / (sum_a + XGRADCAM_EPS))
                .sum()
        }
        Method::HiResCam | Method::LayerCam => {
            unreachable!("element-wise methods have no channel weight")
        }
    }
}

/// A raw map after the ReLU and scaling to [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Normalised {
    /// `relu(raw) / max(relu(raw))`; all zeros when `empty`.
    pub map: Vec<f32>,
    /// Minimum of the raw map (before the ReLU).
    pub min: f32,
    /// Maximum of the raw map (before the ReLU).
    pub max: f32,
    /// True when the raw map has no positive value (or no finite one): nothing in the image
    /// speaks for the target at this layer, and the normalised map is all zeros rather than NaN.
    pub empty: bool,
}

/// Applies the ReLU and divides by the maximum, as the seed does, without its division by zero.
///
/// Scaling by the maximum (rather than min-max stretching, as pytorch-grad-cam's display step
/// does) keeps zero meaning "no evidence": a weak, flat map stays weak instead of being stretched
/// to the full colour range.
pub fn normalise(raw: &[f32]) -> Normalised {
    let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
    for &v in raw {
        min = min.min(v);
        max = max.max(v);
    }
    if raw.is_empty() {
        (min, max) = (0.0, 0.0);
    }
    let empty = !(max > 0.0 && max.is_finite());
    let map = if empty {
        vec![0.0; raw.len()]
    } else {
        raw.iter()
            .map(|&v| if v > 0.0 { v / max } else { 0.0 })
            .collect()
    };
    Normalised {
        map,
        min,
        max,
        empty,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two channels over a 2x2 map: small enough to check every method by hand.
    const A: [f32; 8] = [1.0, 2.0, 3.0, 4.0, 0.0, 1.0, 0.0, 1.0];
    const G: [f32; 8] = [0.5, 0.5, -0.5, 0.5, -1.0, 2.0, 0.0, -1.0];

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} != {b:?}");
        }
    }

    #[test]
    fn gradcam_weights_channels_by_mean_gradient() {
        // w0 = 1.0 / 4 = 0.25, w1 = 0 / 4 = 0
        close(
            &raw_map(Method::GradCam, &A, &G, 2, 4),
            &[0.25, 0.5, 0.75, 1.0],
        );
    }

    #[test]
    fn hirescam_is_elementwise_product_summed_over_channels() {
        close(
            &raw_map(Method::HiResCam, &A, &G, 2, 4),
            &[0.5, 3.0, -1.5, 1.0],
        );
    }

    #[test]
    fn layercam_keeps_only_positive_gradients() {
        close(
            &raw_map(Method::LayerCam, &A, &G, 2, 4),
            &[0.5, 3.0, 0.0, 2.0],
        );
    }

    #[test]
    fn xgradcam_normalises_by_activation_sum() {
        // w0 = (0.5 + 1 - 1.5 + 2) / 10 = 0.2; w1 = (2 - 1) / 2 = 0.5
        let want: Vec<f32> = (0..4).map(|i| 0.2 * A[i] + 0.5 * A[4 + i]).collect();
        close(&raw_map(Method::XGradCam, &A, &G, 2, 4), &want);
    }

    #[test]
    fn gradcam_plus_plus_matches_equation_19() {
        let alpha = |g: f32, s: f32| g * g / (2.0 * g * g + s * g * g * g + 1e-6);
        let w0 = 3.0 * 0.5 * alpha(0.5, 10.0);
        let w1 = 2.0 * alpha(2.0, 2.0);
        let want: Vec<f32> = (0..4).map(|i| w0 * A[i] + w1 * A[4 + i]).collect();
        close(&raw_map(Method::GradCamPlusPlus, &A, &G, 2, 4), &want);
    }

    #[test]
    fn hirescam_equals_gradcam_when_gradients_are_spatially_constant() {
        // At ResNet's last layer the gradient is the classifier row / (h*w) at every position.
        let g: Vec<f32> = [0.3f32, -0.2].iter().flat_map(|&v| [v; 4]).collect();
        close(
            &raw_map(Method::HiResCam, &A, &g, 2, 4),
            &raw_map(Method::GradCam, &A, &g, 2, 4),
        );
    }

    #[test]
    fn normalise_scales_positive_part_by_maximum() {
        let n = normalise(&[-1.0, 0.0, 2.0, 4.0]);
        assert_eq!(n.map, vec![0.0, 0.0, 0.5, 1.0]);
        assert_eq!((n.min, n.max, n.empty), (-1.0, 4.0, false));
    }

    #[test]
    fn normalise_all_negative_map_is_empty_not_nan() {
        let n = normalise(&[-3.0, -1.0, -2.0]);
        assert_eq!(n.map, vec![0.0; 3]);
        assert!(n.empty);
        assert_eq!((n.min, n.max), (-3.0, -1.0));
    }

    #[test]
    fn normalise_flat_zero_and_non_finite_maps_are_empty() {
        assert!(normalise(&[0.0; 4]).empty);
        assert!(normalise(&[]).empty);
        let n = normalise(&[f32::NAN, f32::INFINITY]);
        assert!(n.empty);
        assert!(n.map.iter().all(|v| *v == 0.0));
    }

    #[test]
    fn flat_positive_map_is_all_ones() {
        assert_eq!(normalise(&[2.0; 3]).map, vec![1.0; 3]);
    }

    #[test]
    fn method_names_round_trip_and_unknown_lists_allowed() {
        for m in Method::ALL {
            assert_eq!(m.name().parse::<Method>().unwrap(), m);
        }
        let err = "scorecam".parse::<Method>().unwrap_err();
        assert!(
            err.contains("gradcam++") && err.contains("layercam"),
            "{err}"
        );
    }
}
