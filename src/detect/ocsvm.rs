//! Seed 001's feature-wise one-class SVM as detectors: the linear model and its kernel
//! (random Fourier features) form, on the CPU, from a trained [`Model`].
//!
//! Both score through [`Scorer`], whose kernels fix the arithmetic to the operation (see
//! `model/scorer.rs`), so that a detector's scores are bit-identical to training's, to
//! the GPU's and to any other split of the features.

use std::ops::Range;

use anyhow::bail;

use super::{Detector, Device, Needs, Scores};
use crate::model::{Model, Params, Scorer};

/// The linear one-class SVM, `score = -(w·x + b)` per feature, calibrated.
pub struct LinearOcSvm {
    scorer: Scorer,
}

/// The kernel one-class SVM (RBF through random Fourier features), which detects
/// departures in both directions, with a guard for departures too large for its kernel
/// ([`DEPARTURE_SIGMAS`]).
pub struct RffOcSvm {
    scorer: Scorer,
    /// The verdict threshold the guard's scores are relative to.
    threshold: f32,
    /// The last batch's largest standardised distances, a buffer kept between batches.
    reach: Vec<f32>,
}

/// A value this many training standard deviations from its feature's training mean is
/// anomalous whatever the kernel says. Random Fourier features are cosines of the
/// standardised window: far outside the training data they wrap around, so the
/// kernel's score of a 1e30σ value is noise, not larger than an 8σ one's. Beyond this
/// distance the score is `threshold · |z|max / DEPARTURE_SIGMAS` (flagged, and growing
/// with the departure) when that exceeds the kernel's. Chebyshev's inequality bounds the
/// share of any distribution this far out by 1 %, and the RBF kernel at the default γ
/// (0.02) is down to e^-2 there: a distribution-free, fixed default, not tuned on data.
pub const DEPARTURE_SIGMAS: f32 = 10.0;

impl LinearOcSvm {
    /// The detector for features `range` of a linear `model`.
    pub fn new(model: &Model, range: Range<usize>) -> anyhow::Result<LinearOcSvm> {
        if !matches!(model.params, Params::Linear { .. }) {
            bail!(
                "a linear one-class SVM needs a linear model, not {:?}",
                model.meta.kind
            );
        }
        Ok(LinearOcSvm {
            scorer: Scorer::new(model, range),
        })
    }
}

impl RffOcSvm {
    /// The detector for features `range` of a kernel (`rff`) `model`.
    pub fn new(model: &Model, range: Range<usize>) -> anyhow::Result<RffOcSvm> {
        if !matches!(model.params, Params::Rff { .. }) {
            bail!(
                "a kernel one-class SVM needs an rff model, not {:?}",
                model.meta.kind
            );
        }
        Ok(RffOcSvm {
            scorer: Scorer::new(model, range),
            threshold: model.meta.threshold,
            reach: Vec::new(),
        })
    }

    /// Makes the departure guard's scores relative to `threshold` (the one the verdicts
    /// use, when it overrides the model's).
    pub fn with_threshold(mut self, threshold: f32) -> RffOcSvm {
        self.threshold = threshold;
        self
    }

    /// Scores `b` windows with `kernel` (which also gives each window's reach), then
    /// applies the guard.
    fn score_guarded(
        &mut self,
        b: usize,
        kernel: impl FnOnce(&Scorer, &mut [f32], &mut [f32]),
    ) -> Scores {
        let n = b * self.scorer.width();
        let mut scores = vec![0f32; n];
        let mut reach = std::mem::take(&mut self.reach);
        reach.resize(n, 0.0);
        kernel(&self.scorer, &mut scores, &mut reach);
        self.guard(&reach, &mut scores);
        self.reach = reach;
        Scores::All(scores)
    }

    /// Raises the scores of windows that hold a value over [`DEPARTURE_SIGMAS`] from its
    /// training mean to the guard's score, from `reach`, each window's largest
    /// standardised distance per feature (`[B][F_part]`, computed by the kernel as it
    /// scored them: [`Scorer::score_and_reach`]).
    fn guard(&self, reach: &[f32], scores: &mut [f32]) {
        let floor = guard_floor(self.threshold);
        for (s, &z) in scores.iter_mut().zip(reach) {
            if z > DEPARTURE_SIGMAS {
                // the GPU kernel (tw_score_rff) computes this in the same operations
                let g = floor * (z / DEPARTURE_SIGMAS);
                if g > *s || s.is_nan() {
                    *s = g;
                }
            }
        }
    }
}

/// The departure guard's score at [`DEPARTURE_SIGMAS`]: the verdict `threshold`'s size
/// (a threshold of 0 still gives a positive score, so a guarded window is flagged).
pub fn guard_floor(threshold: f32) -> f32 {
    threshold.abs().max(f32::MIN_POSITIVE)
}

/// Every score of a batch from the CPU scorer.
fn score_all(scorer: &Scorer, windows: &[f32]) -> Scores {
    let mut scores = vec![0f32; batch_len(scorer, windows) * scorer.width()];
    scorer.score(windows, &mut scores);
    Scores::All(scores)
}

/// Windows in a batch `[B][W][F_part]`.
fn batch_len(scorer: &Scorer, windows: &[f32]) -> usize {
    windows
        .len()
        .checked_div(scorer.window() * scorer.width())
        .unwrap_or(0)
}

/// Windows in a batch given as its frames, `[B * W]`.
fn frames_len(scorer: &Scorer, frames: &[&[f32]]) -> usize {
    frames.len().checked_div(scorer.window()).unwrap_or(0)
}

fn features(scorer: &Scorer) -> Range<usize> {
    scorer.lo()..scorer.lo() + scorer.width()
}

impl Detector for LinearOcSvm {
    fn needs(&self) -> Needs {
        Needs {
            window: self.scorer.window(),
            stride: None,
            stateful: false,
        }
    }

    fn features(&self) -> Range<usize> {
        features(&self.scorer)
    }

    fn score(&mut self, windows: &[f32]) -> Scores {
        score_all(&self.scorer, windows)
    }

    fn score_frames(&mut self, frames: &[&[f32]]) -> Scores {
        let mut scores = vec![0f32; frames_len(&self.scorer, frames) * self.scorer.width()];
        self.scorer.score_frames(frames, &mut scores);
        Scores::All(scores)
    }
}

impl Detector for RffOcSvm {
    fn needs(&self) -> Needs {
        Needs {
            window: self.scorer.window(),
            stride: None,
            stateful: false,
        }
    }

    fn features(&self) -> Range<usize> {
        features(&self.scorer)
    }

    fn score(&mut self, windows: &[f32]) -> Scores {
        let b = batch_len(&self.scorer, windows);
        self.score_guarded(b, |scorer, scores, reach| {
            scorer.score_and_reach(windows, scores, Some(reach))
        })
    }

    fn score_frames(&mut self, frames: &[&[f32]]) -> Scores {
        let b = frames_len(&self.scorer, frames);
        self.score_guarded(b, |scorer, scores, reach| {
            scorer.score_frames_and_reach(frames, scores, Some(reach))
        })
    }
}

/// The model's one-class SVM for features `range`, on `device` (as resolved by
/// [`super::gpu::resolve_for`]): [`LinearOcSvm`] or [`RffOcSvm`] by the model's kind on
/// the CPU; on the GPU, `gpu::GpuOcSvm` (feature `gpu`), which keeps the scores at
/// `threshold` and over.
pub fn ocsvm(
    device: Device,
    model: &Model,
    range: Range<usize>,
    threshold: f32,
) -> anyhow::Result<Box<dyn Detector>> {
    let cpu = |range| -> anyhow::Result<Box<dyn Detector>> {
        Ok(match model.params {
            Params::Linear { .. } => Box::new(LinearOcSvm::new(model, range)?),
            Params::Rff { .. } => Box::new(RffOcSvm::new(model, range)?.with_threshold(threshold)),
        })
    };
    match device {
        Device::Cpu => cpu(range),
        // More workers than features leaves some with none: nothing to put on a GPU
        // (and the driver refuses empty allocations).
        Device::Cuda if range.is_empty() => cpu(range),
        #[cfg(feature = "gpu")]
        Device::Cuda => Ok(Box::new(super::gpu::GpuOcSvm::new(
            model, range, threshold,
        )?)),
        #[cfg(not(feature = "gpu"))]
        Device::Cuda => {
            let _ = threshold;
            bail!("{}", super::gpu::NO_GPU_BUILD)
        }
        Device::Auto => bail!("the device must be resolved (gpu::resolve) before scoring"),
    }
}
