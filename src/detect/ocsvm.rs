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
/// departures in both directions.
pub struct RffOcSvm {
    scorer: Scorer,
}

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
        })
    }
}

/// Every score of a batch from the CPU scorer.
fn score_all(scorer: &Scorer, windows: &[f32]) -> Scores {
    let b = windows
        .len()
        .checked_div(scorer.window() * scorer.width())
        .unwrap_or(0);
    let mut scores = vec![0f32; b * scorer.width()];
    scorer.score(windows, &mut scores);
    Scores::All(scores)
}

fn features(scorer: &Scorer) -> Range<usize> {
    scorer.lo()..scorer.lo() + scorer.width()
}

/// Both detectors are a [`Scorer`] and differ only in the model kind they accept: one
/// `Detector` impl serves both.
macro_rules! scorer_detector {
    ($($name:ident),*) => {$(
        impl Detector for $name {
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
        }
    )*};
}

scorer_detector!(LinearOcSvm, RffOcSvm);

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
            Params::Rff { .. } => Box::new(RffOcSvm::new(model, range)?),
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
