//! `Toy`: a small deterministic backend with real arithmetic and no libtorch, so that the HTTP
//! layer can be tested in process in milliseconds, and a test can compute the expected answer
//! by calling the backend itself.
//!
//! The "network": each of the input's 3 channels is average-pooled to the layer's grid (56, 28,
//! 14 or 7 cells a side, as ResNet-50's stages at 224x224) and shifted by [`SHIFT`] so that every
//! activation is positive, as after a ReLU. The head pools those activations to 7x7 and maps the
//! 147 features to 1000 logits with a fixed matrix ([`weight`]). The gradient of a logit with
//! respect to the activations is then that class's weight row, spread evenly over the cells that
//! each 7x7 feature pools: the explanations come from [`cam::raw_map`] with that exact gradient.
//!
//! A [`Script`] makes chosen calls fail, run out of memory, panic, kill the model thread or hold
//! it until a [`Gate`] opens, for the engine-level answers (500, 503, 429, 504).

use gradcam_serve::backend::{
    self, Backend, BackendError, Description, ExplainOptions, ExplainResult, Explanation, Fatal,
    INPUT_LEN, Layer, Loader, MIN_PREDICTIONS, NUM_CLASSES, Precision, WeightsInfo,
};
use gradcam_serve::cam;
use gradcam_serve::input::INPUT_SIDE;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

/// Input channels, and so activation channels.
pub const CHANNELS: usize = 3;
/// The side of the grid the head pools to.
pub const HEAD_SIDE: usize = 7;
/// Features the head maps to logits: `3 x 7 x 7`.
pub const FEATURES: usize = CHANNELS * HEAD_SIDE * HEAD_SIDE;
/// Added to every pooled value: normalised inputs are above -2.2, so activations are positive.
pub const SHIFT: f32 = 2.5;
/// Keeps the logits in a range where the softmax is not one-hot.
const SCALE: f64 = 0.05;

/// The grid side of a layer's activations.
pub fn side(layer: Layer) -> usize {
    match layer {
        Layer::Layer1 => 56,
        Layer::Layer2 => 28,
        Layer::Layer3 => 14,
        Layer::Layer4 => 7,
    }
}

/// Weight of feature `j` (`c * 49 + row * 7 + col`) for class `k`: a fixed pseudo-random matrix.
pub fn weight(k: usize, j: usize) -> f32 {
    static W: OnceLock<Vec<f32>> = OnceLock::new();
    W.get_or_init(|| {
        (0..NUM_CLASSES as usize * FEATURES)
            .map(|i| {
                let (k, j) = (i / FEATURES, i % FEATURES);
                (((k + 1) * (j + 3)) as f64 * 0.618_033_988_749_895).sin() as f32 * SCALE as f32
            })
            .collect()
    })[k * FEATURES + j]
}

/// A class's bias: small, so that the image decides.
pub fn bias(k: usize) -> f32 {
    ((k as f64 * 0.754_877_666).cos() * 0.01) as f32
}

/// Activations `[3, side, side]`: each channel of the input average-pooled to the grid, plus
/// [`SHIFT`].
pub fn activations(x: &[f32], side: usize) -> Vec<f32> {
    let s = INPUT_SIDE as usize;
    assert_eq!(x.len(), INPUT_LEN, "input shape");
    assert_eq!(s % side, 0, "the grid divides the input");
    let cell = s / side;
    let mut out = vec![0f32; CHANNELS * side * side];
    for c in 0..CHANNELS {
        for y in 0..s {
            let row = &x[c * s * s + y * s..c * s * s + (y + 1) * s];
            let dst = c * side * side + (y / cell) * side;
            for (xx, v) in row.iter().enumerate() {
                out[dst + xx / cell] += v;
            }
        }
    }
    let n = (cell * cell) as f32;
    out.iter_mut().for_each(|v| *v = *v / n + SHIFT);
    out
}

/// The head: activations `[3, side, side]` pooled to 7x7, then the linear map to 1000 logits.
pub fn head(acts: &[f32], side: usize) -> Vec<f32> {
    let r = side / HEAD_SIDE;
    let mut features = vec![0f32; FEATURES];
    for c in 0..CHANNELS {
        for y in 0..side {
            for x in 0..side {
                features[c * 49 + (y / r) * HEAD_SIDE + x / r] +=
                    acts[c * side * side + y * side + x];
            }
        }
    }
    let n = (r * r) as f32;
    features.iter_mut().for_each(|f| *f /= n);
    (0..NUM_CLASSES as usize)
        .map(|k| {
            bias(k)
                + features
                    .iter()
                    .enumerate()
                    .map(|(j, f)| weight(k, j) * f)
                    .sum::<f32>()
        })
        .collect()
}

/// `d logit_k / d acts` for activations on a `side` grid: the class's weight row, divided evenly
/// among the `r x r` cells that each feature pools.
pub fn gradient(k: usize, side: usize) -> Vec<f32> {
    let r = side / HEAD_SIDE;
    let n = (r * r) as f32;
    let mut g = vec![0f32; CHANNELS * side * side];
    for c in 0..CHANNELS {
        for y in 0..side {
            for x in 0..side {
                g[c * side * side + y * side + x] =
                    weight(k, c * 49 + (y / r) * HEAD_SIDE + x / r) / n;
            }
        }
    }
    g
}

/// What the toy network makes of one image, without any script.
pub fn explain_one(x: &[f32], o: ExplainOptions) -> ExplainResult {
    let side = side(o.layer);
    let acts = activations(x, side);
    let logits = head(&acts, side);
    let predictions =
        backend::top_predictions(&logits, o.top_k.max(MIN_PREDICTIONS), &Default::default());
    let explanations = backend::targets(&o, &predictions)
        .into_iter()
        .map(|class| {
            let grads = gradient(class as usize, side);
            let raw = cam::raw_map(o.method, &acts, &grads, CHANNELS, side * side);
            Explanation::from_raw(
                class,
                backend::labels()[class as usize].to_string(),
                o.layer,
                o.method,
                raw,
                side,
                side,
            )
        })
        .collect();
    ExplainResult {
        predictions,
        explanations,
        probabilities: backend::probabilities(&logits),
    }
}

/// Logits of one image (the head on the last layer's activations).
pub fn logits_one(x: &[f32]) -> Vec<f32> {
    head(&activations(x, HEAD_SIDE), HEAD_SIDE)
}

/// A gate that a scripted call waits at until the test opens it.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub fn open(&self) {
        *self.0.0.lock().unwrap() = true;
        self.0.1.notify_all();
    }

    /// Waits until opened, or at most 10 s, so that a failing test cannot hang the engine's
    /// shutdown.
    fn wait(&self) {
        let (lock, cv) = &*self.0;
        let guard = lock.lock().unwrap();
        let _ = cv
            .wait_timeout_while(guard, Duration::from_secs(10), |open| !*open)
            .unwrap();
    }
}

/// What one backend call does instead of (or before) its work.
pub enum Act {
    /// Fails with this message (a 500 whose detail stays in the log).
    Fail(String),
    /// Runs out of memory (503 with Retry-After).
    OutOfMemory,
    /// Panics; the rebuild that follows waits at `rebuild` when given.
    Panic { rebuild: Option<Gate> },
    /// Panics with [`Fatal`]: the model thread ends.
    Die,
    /// Fails as libtorch does when CUDA loses its context (a sticky error).
    DeviceLost,
    /// Waits at the gate, then works normally.
    Hold(Gate),
    /// Computes (spins) for this much of its thread's CPU time, then works normally: a model
    /// this slow.
    Work(Duration),
}

/// Scripted behaviour shared by every backend a [`loader`] builds: each call (not the warm-up)
/// takes the next act, or works normally when there is none.
#[derive(Clone, Default)]
pub struct Script(Arc<ScriptState>);

#[derive(Default)]
struct ScriptState {
    acts: Mutex<VecDeque<Act>>,
    calls: AtomicUsize,
    builds: AtomicUsize,
    rebuild_gate: Mutex<Option<Gate>>,
}

impl Script {
    pub fn push(&self, act: Act) {
        self.0.acts.lock().unwrap().push_back(act);
    }

    /// Backend calls started so far (warm-ups not counted).
    pub fn calls(&self) -> usize {
        self.0.calls.load(Ordering::SeqCst)
    }

    /// Backends built so far (the first one and every rebuild).
    pub fn builds(&self) -> usize {
        self.0.builds.load(Ordering::SeqCst)
    }

    fn next(&self) -> Result<(), BackendError> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        let act = self.0.acts.lock().unwrap().pop_front();
        match act {
            None => Ok(()),
            Some(Act::Fail(m)) => Err(BackendError::Failed(m)),
            Some(Act::OutOfMemory) => Err(BackendError::OutOfMemory("toy allocation".into())),
            Some(Act::DeviceLost) => Err(BackendError::from_message(
                "CUDA error: an illegal memory access was encountered".into(),
            )),
            Some(Act::Panic { rebuild }) => {
                *self.0.rebuild_gate.lock().unwrap() = rebuild;
                quiet_scripted_panics();
                panic!("{}", SCRIPTED_PANIC);
            }
            Some(Act::Die) => {
                quiet_scripted_panics();
                std::panic::panic_any(Fatal(SCRIPTED_PANIC.into()))
            }
            Some(Act::Hold(gate)) => {
                gate.wait();
                Ok(())
            }
            Some(Act::Work(cpu)) => {
                let start = gradcam_serve::metrics::thread_cpu_time();
                while gradcam_serve::metrics::thread_cpu_time() - start < cpu {
                    std::hint::spin_loop();
                }
                Ok(())
            }
        }
    }
}

/// The message of every scripted panic.
const SCRIPTED_PANIC: &str = "scripted panic in the toy backend";

/// Keeps scripted panics, which the engine catches, out of the test output (and spares their
/// backtraces); every other panic is reported as usual.
fn quiet_scripted_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let p = info.payload();
            let scripted = info.payload_as_str() == Some(SCRIPTED_PANIC)
                || p.downcast_ref::<Fatal>()
                    .is_some_and(|f| f.0 == SCRIPTED_PANIC);
            if !scripted {
                report(info);
            }
        }));
    });
}

/// Builds a [`Toy`] on the engine's model thread; a rebuild after a scripted panic waits at
/// that panic's gate.
pub fn loader(script: Script) -> Loader {
    Box::new(move || {
        let gate = script.0.rebuild_gate.lock().unwrap().take();
        if let Some(g) = gate {
            g.wait();
        }
        script.0.builds.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(Toy {
            script: script.clone(),
        }) as Box<dyn Backend>)
    })
}

/// The toy network as a [`Backend`].
#[derive(Default)]
pub struct Toy {
    script: Script,
}

impl Toy {
    fn check(inputs: impl Iterator<Item = usize>) -> Result<(), BackendError> {
        for (i, len) in inputs.enumerate() {
            if len != INPUT_LEN {
                return Err(BackendError::Failed(format!(
                    "input {i} has {len} values, expected {INPUT_LEN}"
                )));
            }
        }
        Ok(())
    }
}

impl Backend for Toy {
    fn describe(&self) -> Description {
        Description {
            model: "toy".into(),
            device: "cpu".into(),
            classes: NUM_CLASSES as usize,
            labels: Default::default(),
            labels_source: "imagenet".into(),
            input: Default::default(),
            weights: WeightsInfo {
                source: "toy".into(),
                sha256: "0".repeat(64),
            },
            precision: Precision::Fp32,
            libtorch: None,
        }
    }

    fn logits(&self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, BackendError> {
        self.script.next()?;
        Self::check(inputs.iter().map(|x| x.len()))?;
        Ok(inputs.iter().map(|x| logits_one(x)).collect())
    }

    fn explain(
        &self,
        items: &[(&[f32], ExplainOptions)],
    ) -> Result<Vec<ExplainResult>, BackendError> {
        self.script.next()?;
        Self::check(items.iter().map(|(x, _)| x.len()))?;
        Ok(items.iter().map(|(x, o)| explain_one(x, *o)).collect())
    }

    fn warm_up(&self, _max_batch: usize) -> Result<(), BackendError> {
        explain_one(&vec![0f32; INPUT_LEN], ExplainOptions::default());
        Ok(())
    }
}

/// The toy's own arithmetic: its gradient is the head's, its maps are `cam::raw_map`'s.
mod checks {
    use super::*;
    use gradcam_serve::cam::Method;

    /// A smooth, non-constant input.
    fn input() -> Vec<f32> {
        (0..INPUT_LEN)
            .map(|i| ((i as f32) * 0.001).sin() * 1.5)
            .collect()
    }

    #[test]
    fn toy_gradient_matches_finite_differences_of_the_head() {
        for &layer in Layer::ALL.iter() {
            let side = side(layer);
            let acts = activations(&input(), side);
            assert!(
                acts.iter().all(|a| *a > 0.0),
                "{layer}: activations are positive"
            );
            for k in [0usize, 281, 999] {
                let g = gradient(k, side);
                for i in [0, acts.len() / 2, acts.len() - 1] {
                    let h = 0.25f32;
                    let (mut up, mut down) = (acts.clone(), acts.clone());
                    up[i] += h;
                    down[i] -= h;
                    let fd = (head(&up, side)[k] - head(&down, side)[k]) / (2.0 * h);
                    assert!(
                        (fd - g[i]).abs() <= 1e-4 + 1e-2 * g[i].abs(),
                        "{layer}, class {k}, activation {i}: finite difference {fd} vs gradient {}",
                        g[i]
                    );
                }
            }
        }
    }

    #[test]
    fn toy_layers_agree_on_the_logits_and_maps_have_the_layer_resolution() {
        let x = input();
        let top = logits_one(&x);
        for &layer in Layer::ALL.iter() {
            let l = head(&activations(&x, side(layer)), side(layer));
            let d = l
                .iter()
                .zip(&top)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-3, "{layer}: logits differ by {d}");
            for &method in Method::ALL.iter() {
                let o = ExplainOptions {
                    layer,
                    method,
                    top_k: 2,
                    class: None,
                    faithfulness: false,
                };
                let r = explain_one(&x, o);
                assert_eq!(r.predictions.len(), MIN_PREDICTIONS, "{layer} {method}");
                assert_eq!(r.explanations.len(), 2, "{layer} {method}");
                let e = &r.explanations[0];
                assert_eq!(e.class_index, r.predictions[0].index, "{layer} {method}");
                assert_eq!(
                    (e.heatmap.width, e.heatmap.height, e.heatmap.data.len()),
                    (side(layer), side(layer), side(layer).pow(2)),
                    "{layer} {method}"
                );
                assert!(
                    e.heatmap.data.iter().all(|v| v.is_finite()),
                    "{layer} {method}: finite map"
                );
            }
        }
    }
}
