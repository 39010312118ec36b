//! The model's one-class SVM, rebuilt when the run's settings move to another model (a
//! hot reload), so the windows already filled are scored by the new model.

use std::ops::Range;

use super::{Detector, Device, Needs, Scores};
use crate::controls::Knobs;

/// A [`super::ocsvm`] detector that follows the model and the threshold of the run's
/// settings ([`Detector::follow`]): the score operator hands it each change before the
/// first window it applies to. The threshold matters to the detector itself: the GPU
/// compacts at it, and the kernel model's departure guard scores relative to it.
pub struct Reloading {
    device: Device,
    range: Range<usize>,
    /// The threshold the inner detector was built with.
    threshold: f32,
    inner: Box<dyn Detector>,
    /// The model the inner detector was built from.
    model_version: u64,
}

impl Reloading {
    /// The detector of features `range` on `device`, for the model of `knobs`.
    pub fn new(knobs: &Knobs, device: Device, range: Range<usize>) -> anyhow::Result<Reloading> {
        let threshold = knobs.threshold_or(None);
        let inner = super::ocsvm(device, &knobs.model, range.clone(), threshold)?;
        Ok(Reloading {
            device,
            range,
            threshold,
            inner,
            model_version: knobs.model_version,
        })
    }
}

impl Detector for Reloading {
    fn needs(&self) -> Needs {
        self.inner.needs()
    }

    fn features(&self) -> Range<usize> {
        self.range.clone()
    }

    fn score(&mut self, windows: &[f32]) -> Scores {
        self.inner.score(windows)
    }

    fn score_frames(&mut self, frames: &[&[f32]]) -> Scores {
        self.inner.score_frames(frames)
    }

    fn device(&self) -> Device {
        self.inner.device()
    }

    /// Rebuilds the inner detector if the model or the threshold changed (on the CPU a
    /// rebuild folds the model's weights again: milliseconds, once per change).
    fn follow(&mut self, knobs: &Knobs) {
        let threshold = knobs.threshold_or(None);
        // by bits: a NaN threshold would otherwise rebuild before every batch
        let rebuild = knobs.model_version != self.model_version
            || threshold.to_bits() != self.threshold.to_bits();
        if !rebuild {
            return;
        }
        // The device was usable at start-up and the new model has the old one's layout
        // (checked before the change was committed), so a failure here is the device
        // failing: the same as a scoring failure, which panics the worker with the
        // driver's error.
        self.inner = super::ocsvm(self.device, &knobs.model, self.range.clone(), threshold)
            .unwrap_or_else(|e| panic!("rebuilding the detector for {:?}: {e:#}", self.range));
        self.threshold = threshold;
        self.model_version = knobs.model_version;
    }
}
