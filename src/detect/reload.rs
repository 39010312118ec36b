//! The model's one-class SVM, rebuilt between batches when the model in [`Controls`]
//! changes (a hot reload), so the windows already filled are scored by the new model.

use std::ops::Range;
use std::sync::Arc;

use super::{Detector, Device, Needs, Scores};
use crate::controls::{Controls, Watch};

/// A [`super::ocsvm`] detector that follows the model (and, on the GPU, the threshold it
/// compacts at) of a [`Controls`]: it checks their version once per batch, and rebuilds
/// itself for its partition only when they moved.
pub struct Reloading {
    watch: Watch,
    device: Device,
    range: Range<usize>,
    /// The threshold the inner detector was built with (the GPU compacts at it).
    threshold: f32,
    inner: Box<dyn Detector>,
    /// The model the inner detector was built from.
    model_version: u64,
}

impl Reloading {
    /// The detector of features `range` on `device`, for the model in force in `controls`.
    pub fn new(
        controls: Arc<Controls>,
        device: Device,
        range: Range<usize>,
    ) -> anyhow::Result<Reloading> {
        let mut watch = Watch::new(controls);
        let (knobs, _) = watch.get();
        let threshold = knobs.threshold_or(None);
        let model_version = knobs.model_version;
        let inner = super::ocsvm(device, &knobs.model, range.clone(), threshold)?;
        Ok(Reloading {
            watch,
            device,
            range,
            threshold,
            inner,
            model_version,
        })
    }

    /// Rebuilds the inner detector if the model changed, or on the GPU the threshold.
    fn follow(&mut self) {
        let (knobs, changed) = self.watch.get();
        if !changed {
            return;
        }
        let threshold = knobs.threshold_or(None);
        let rebuild = knobs.model_version != self.model_version
            || (self.device == Device::Cuda && threshold != self.threshold);
        if !rebuild {
            return;
        }
        // The device was usable at start-up and the new model has the old one's layout
        // (checked by `Controls::swap_model`), so a failure here is the device failing:
        // the same as a scoring failure, which panics the worker with the driver's error.
        self.inner = super::ocsvm(self.device, &knobs.model, self.range.clone(), threshold)
            .unwrap_or_else(|e| panic!("rebuilding the detector for {:?}: {e:#}", self.range));
        self.threshold = threshold;
        self.model_version = knobs.model_version;
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
        self.follow();
        self.inner.score(windows)
    }

    fn device(&self) -> Device {
        self.inner.device()
    }
}
