//! Detection: the [`Detector`] contract between the score operator and whatever turns
//! windows into anomaly scores, its implementations, and where they run.
//!
//! The contract is small, in the manner of differential dataflow's `PrefixExtender`: a
//! detector says what it needs ([`Needs`]: window length, stride, whether it keeps state)
//! and scores a batch of windows of one feature partition. The score operator
//! ([`crate::ops::ScoreOps`]) composes any implementation, so a new detector is a new
//! type here (or in a variant's own file), and neither the operator nor [`gpu`] changes.
//!
//! - [`LinearOcSvm`] and [`RffOcSvm`]: seed 001's feature-wise one-class SVM and its
//!   kernel (random Fourier features) form, from a trained [`crate::model::Model`].
//! - [`gpu`]: the same two on an NVIDIA GPU (feature `gpu`), thresholded on the device.
//! - [`Ewma`]: a per-feature exponentially weighted mean and variance, scoring each
//!   frame's z-score; needs no trained model, keeps state per feature.
//! - [`Cusum`]: Page's two-sided CUSUM of standardised values against a slow EWMA
//!   baseline; needs no trained model, accumulates small persistent shifts.
//! - [`Pca`]: reconstruction error of each feature's windows from the principal
//!   components of its training windows ([`PcaModel`]), for seed 003's autoencoder.
//! - [`Neighbour`]: each window's distance to its nearest earlier window, of the
//!   training data or of the stream itself ([`NeighbourModel`]), over the largest such
//!   distance within the training data.
//! - [`Envelope`]: the mean, spread and roughness of each feature's last 1, 3, 10, 30
//!   and 100 values against the range they have had so far, in the training data or
//!   earlier in the stream ([`EnvelopeModel`]): drifts and regime changes whose values
//!   stay in range.
//! - [`Reloading`]: the model's one-class SVM, rebuilt between batches when an operator
//!   swaps the model at run time ([`crate::controls`]).
//! - [`Forecast`]: per-feature linear forecasting residuals, EWMA-smoothed, with
//!   Telemanom's dynamic threshold chosen on training residuals ([`ForecastModel`]).

use std::ops::Range;

use serde::Serialize;

use crate::types::{Compacted, WindowData};

mod cusum;
mod envelope;
mod ewma;
mod forecast;
pub mod gpu;
mod neighbour;
mod ocsvm;
mod pca;
mod reload;

pub use cusum::{Cusum, CusumConfig};
pub use envelope::{Bounds, Envelope, EnvelopeConfig, EnvelopeFit, EnvelopeModel};
pub use ewma::{Ewma, EwmaConfig};
pub use forecast::{FeatureFit, Forecast, ForecastConfig, ForecastModel, Form, FORECAST_FILE};
pub use neighbour::{Neighbour, NeighbourConfig, NeighbourFit, NeighbourModel};
pub use ocsvm::{guard_floor, ocsvm, LinearOcSvm, RffOcSvm, DEPARTURE_SIGMAS};
pub use pca::{Pca, PcaConfig, PcaFit, PcaModel, PCA_FILE};
pub use reload::Reloading;

/// Fits each column of `train` (row-major, `cols` columns) with `fit`, for a detector
/// of windows of `window` values, after checking that the data are whole rows and hold
/// at least two windows.
fn fit_columns<F>(
    train: &[f32],
    cols: usize,
    window: usize,
    fit: impl Fn(&[f32]) -> F,
) -> anyhow::Result<Vec<F>> {
    anyhow::ensure!(cols > 0, "no features to fit");
    anyhow::ensure!(window > 0, "the window must hold at least one value");
    let rows = train.len() / cols;
    anyhow::ensure!(
        rows * cols == train.len(),
        "training data is not whole rows"
    );
    anyhow::ensure!(
        rows >= 2 * window,
        "{rows} training rows are too few for windows of {window}"
    );
    Ok((0..cols)
        .map(|j| {
            let x: Vec<f32> = (0..rows).map(|r| train[r * cols + j]).collect();
            fit(&x)
        })
        .collect())
}

/// Every score of one batch from a CPU detector (tests of the detectors here).
#[cfg(test)]
fn cpu_scores(detector: &mut dyn Detector, windows: &[f32]) -> Vec<f32> {
    match detector.score(windows) {
        Scores::All(s) => s,
        Scores::Compacted(_) => unreachable!("the CPU keeps every score"),
    }
}

/// Where scoring runs (`DEFAULT_DEVICE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The GPU where this build (feature `gpu`) and machine can use one, else the CPU;
    /// start-up logs which and why.
    #[default]
    Auto,
    /// The GPU; start-up fails if it cannot be used.
    Cuda,
    /// The CPU.
    Cpu,
}

/// What a detector needs from the stages in front of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    /// Frames per window (W): every window it scores holds this many.
    pub window: usize,
    /// Frames between the ends of consecutive windows it expects; `None`: any stride.
    pub stride: Option<usize>,
    /// Whether a score depends on the windows scored before it (state per feature): such
    /// a detector must see each of its partition's windows once, in frame order, which
    /// the score operator checks.
    pub stateful: bool,
}

/// What a detector made of one batch.
#[derive(Clone, Debug, PartialEq)]
pub enum Scores {
    /// Every score, `[B][F_part]`.
    All(Vec<f32>),
    /// The scores at or over a threshold alone, picked out where they were computed (the
    /// GPU), so that only they came back.
    Compacted(Compacted),
}

/// Turns windows of one feature partition into anomaly scores (higher: more anomalous).
///
/// One detector per worker scores that worker's features ([`Detector::features`]),
/// a batch at a time: `[B][W][F_part] -> [B][F_part]`. It is called once per batch,
/// never per value, so a boxed `dyn Detector` costs nothing measurable.
///
/// # Examples
///
/// A detector that scores the last value of each window, composed by the score operator
/// like any other:
///
/// ```
/// use std::ops::Range;
/// use std::sync::{Arc, Mutex};
/// use timely::dataflow::operators::{Inspect, ToStream};
/// use tidewatch::detect::{Detector, Needs, Scores};
/// use tidewatch::ops::ScoreOps;
/// use tidewatch::stats::Stats;
/// use tidewatch::types::Batch;
///
/// struct Last;
/// impl Detector for Last {
///     fn needs(&self) -> Needs {
///         Needs { window: 2, stride: None, stateful: false }
///     }
///     fn features(&self) -> Range<usize> {
///         0..1
///     }
///     fn score(&mut self, windows: &[f32]) -> Scores {
///         Scores::All(windows.chunks(2).map(|w| w[1]).collect())
///     }
/// }
///
/// let scores = Arc::new(Mutex::new(Vec::new()));
/// let seen = Arc::clone(&scores);
/// timely::example(move |scope| {
///     let batch = Batch { part: 0, seqs: vec![1, 2], data: vec![0.0, 1.0, 1.0, 7.0].into(), ..Batch::default() };
///     Some(batch)
///         .to_stream(scope)
///         .container::<Vec<_>>()
///         .score(Last, Arc::new(Stats::default()))
///         .inspect(move |s| seen.lock().unwrap().extend(s.scores.clone()));
/// });
/// assert_eq!(*scores.lock().unwrap(), vec![1.0, 7.0]);
/// ```
pub trait Detector: Send {
    /// The windows it scores: their length, stride, and whether it keeps state.
    fn needs(&self) -> Needs;

    /// The global (model) features it scores, contiguous: its worker's partition.
    fn features(&self) -> Range<usize>;

    /// Scores a batch of windows `[B][W][F_part]` (`F_part` = the width of
    /// [`Detector::features`]), each window oldest frame first.
    fn score(&mut self, windows: &[f32]) -> Scores;

    /// [`Detector::score`] of windows given as their frames: frame `k` of window `b` is
    /// `frames[b * W + k]` (`F_part` values), as the window operator shares them
    /// ([`WindowData::Frames`]). The default copies them into one buffer and calls
    /// [`Detector::score`]; a detector that reads each frame where it lies saves that
    /// copy, and must give the same scores.
    fn score_frames(&mut self, frames: &[&[f32]]) -> Scores {
        self.score(&frames.concat())
    }

    /// Where it computes: [`Device::Cpu`] unless it runs on a GPU.
    fn device(&self) -> Device {
        Device::Cpu
    }

    /// Takes the run's new settings (a hot reload) before scoring the windows they
    /// apply to; a detector that does not score with the run's model ignores them.
    fn follow(&mut self, _knobs: &crate::controls::Knobs) {}
}

impl<D: Detector + ?Sized> Detector for Box<D> {
    fn needs(&self) -> Needs {
        (**self).needs()
    }

    fn features(&self) -> Range<usize> {
        (**self).features()
    }

    fn score(&mut self, windows: &[f32]) -> Scores {
        (**self).score(windows)
    }

    fn score_frames(&mut self, frames: &[&[f32]]) -> Scores {
        (**self).score_frames(frames)
    }

    fn follow(&mut self, knobs: &crate::controls::Knobs) {
        (**self).follow(knobs)
    }

    fn device(&self) -> Device {
        (**self).device()
    }
}

/// Scores `data` with `detector`, through [`Detector::score_frames`] when the windows are
/// held as shared frames, so that a detector that reads frames in place never sees a copy.
pub fn score_data<D: Detector + ?Sized>(detector: &mut D, data: &WindowData) -> Scores {
    match data {
        WindowData::Flat(values) => detector.score(values),
        WindowData::Frames(frames) => {
            let rows: Vec<&[f32]> = frames.iter().map(|f| f.as_slice()).collect();
            detector.score_frames(&rows)
        }
    }
}
