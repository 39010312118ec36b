//! Training feature-wise one-class SVMs on normal data (`tidewatch train`).
//!
//! Every feature f gets its own OCSVM over its windows `x_t = (v[t-W+1][f], ..., v[t][f])`
//! (oldest first, the scorer's `[W]` order), fitted by SGD on the primal exactly as
//! scikit-learn's `SGDOneClassSVM` ([`sgd`]). Kind `linear` fits on the raw window; kind
//! `rff` standardises each feature with its training mean and standard deviation and fits
//! on D random Fourier features of the window ([`rff`]), an approximation of an RBF-kernel
//! OCSVM that flags departures in both directions.
//!
//! The last `heldout` fraction of frames is never fitted on. With `calibrate` each feature
//! gets an affine map of its raw scores (from its training windows) and the model one
//! global threshold for a target false-alarm rate (from the held-out windows,
//! [`calibrate`]); without, the held-out frames still measure the false-alarm rate at the
//! seed's threshold. Features are trained in parallel over chunks, and the result does not depend
//! on the number of threads: each feature's fit is independent and its shuffling depends
//! only on the seed.

pub mod calibrate;
pub mod rff;
pub mod sgd;

pub use rff::{RffMap, RffSampling};
pub use sgd::{fit_ocsvm, fit_ocsvm_lanes, LearningRate, OcsvmFit, Order, SgdConfig, LANES};

use std::io::IsTerminal;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::model::{
    Calibration, CalibrationMeta, FeatureIndex, FeatureNames, Model, ModelKind, ModelMeta, Params,
    Provenance, RffMeta, Scorer,
};
use calibrate::FeatureCalibration;

/// Default number of random Fourier features D.
pub const DEFAULT_COMPONENTS: usize = 32;

/// Default RBF width γ on standardised windows, `k(z, z') ≈ exp(-γ |z - z'|²)`.
///
/// A trade-off measured on the generator's AR(1) features (autocorrelation 0 to 0.8,
/// W = 5, ±8σ spikes, false-alarm target 1e-5; `tests/train.rs`). A wide kernel (small γ)
/// keeps the decision function a smooth bowl out to the spikes: far from the data each
/// `cos(ω·z + phase)` wraps around and the score turns into noise, and with γ = 0.02 an 8σ
/// value turns an angle by at most `8 sqrt(2γW)` = 3.6 rad, about π. But the wider the
/// kernel, the closer the bowl comes to plain Euclidean distance from the centre of the
/// data, and in the standardised windows of a strongly autocorrelated feature (0.8) a
/// rare but normal excursion of the whole window (|z|² = 72 at a rate of 1e-5) lies as
/// far out as one 8σ spike (|z|² ≈ 68): only a narrower kernel follows the data's
/// elongated shape. Recall of the spikes on 10,000 features: 97.4% at γ = 0.01 (90% on
/// the most autocorrelated), 99.9% at 0.02, 98.6% at 0.03 (93% in one window position).
pub const DEFAULT_GAMMA: f64 = 0.02;

/// Default ν. Smaller ν puts the boundary further out and spreads the support vectors
/// over the rim of the data; with calibration the threshold no longer depends on ν, and
/// on the same measurements ν = 0.02 caught more spikes than 0.05, 0.1, 0.3 or 0.6.
pub const DEFAULT_NU: f64 = 0.02;

/// Default passes over the training windows: on 2,000-window features the 'optimal'
/// schedule has converged by 5 (15 epochs moved recall and false alarms by under 1%).
pub const DEFAULT_EPOCHS: usize = 5;

/// Default raw-score quantile that calibration maps to 1. Of 0.9, 0.95 and 0.99, the
/// closest to the tail leaves the least difference in false alarms between features of
/// unlike autocorrelation (a factor of 3.7 between the extremes at 0.99, 20 at 0.9) for
/// the same recall; the 2,000-odd training windows per feature put 20 windows above it.
pub const DEFAULT_CALIBRATION_QUANTILE: f64 = 0.99;

/// The seed's default threshold, kept by models trained without calibration.
pub const SEED_THRESHOLD: f32 = 0.9;

/// A borrowed row-major `[rows][cols]` matrix of f32: `rows` frames of `cols` features.
#[derive(Clone, Copy, Debug)]
pub struct MatrixView<'a> {
    /// Number of frames T.
    pub rows: usize,
    /// Number of features F.
    pub cols: usize,
    /// `values[t * cols + f]`.
    pub values: &'a [f32],
}

impl<'a> MatrixView<'a> {
    /// A view of `values` as `[rows][cols]`; fails when the length does not match or a value
    /// is not finite (one NaN would poison a feature's fit without a word).
    pub fn new(rows: usize, cols: usize, values: &'a [f32]) -> anyhow::Result<Self> {
        ensure!(
            rows.checked_mul(cols) == Some(values.len()),
            "matrix of {rows} x {cols} needs {} values, got {}",
            rows.saturating_mul(cols),
            values.len()
        );
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            bail!(
                "value {} at frame {} feature {} is not finite",
                values[i],
                i / cols,
                i % cols
            );
        }
        Ok(MatrixView { rows, cols, values })
    }

    fn row(&self, t: usize) -> &'a [f32] {
        &self.values[t * self.cols..(t + 1) * self.cols]
    }
}

/// Everything `train` needs besides the data. [`Default`] gives the CLI's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Linear OCSVM on the raw window, or RBF via random Fourier features.
    pub kind: ModelKind,
    /// Window length W.
    pub window: usize,
    /// ν in (0, 1]: the OCSVM's bound on the fraction of training windows outside.
    pub nu: f64,
    /// SGD step-size schedule.
    pub learning_rate: LearningRate,
    /// Initial step for `constant` and `invscaling`.
    pub eta0: f64,
    /// Exponent of `invscaling`.
    pub power_t: f64,
    /// Passes over the training windows.
    pub epochs: usize,
    /// Visit the windows in a fresh seeded permutation every epoch (otherwise in time order).
    pub shuffle: bool,
    /// Random Fourier features D (`rff`).
    pub components: usize,
    /// RBF width γ on standardised windows (`rff`).
    pub gamma: f64,
    /// How the random frequencies are drawn (`rff`).
    pub rff_sampling: RffSampling,
    /// Seed of the random features and of the shuffling.
    pub seed: u64,
    /// Fraction of frames, at the end, held out from fitting.
    pub heldout: f64,
    /// Calibrate each feature on its training windows and choose the threshold on the
    /// held-out windows.
    pub calibrate: bool,
    /// The quantile of each feature's raw scores on its training windows that calibration
    /// maps to 1 (the median maps to 0).
    pub calibration_quantile: f64,
    /// False-alarm rate per (frame, feature) the calibrated threshold is chosen for.
    pub target_far: f64,
    /// Share of clean frames that may raise an alert (any feature over the threshold):
    /// when set, the calibrated threshold is the `1 - target_frame_far` quantile of each
    /// held-out window's largest calibrated score over all features (the empirical
    /// max-over-features quantile), instead of the per-(frame, feature) `target_far`.
    pub target_frame_far: Option<f64>,
    /// Worker threads; 0 uses every available core.
    pub threads: usize,
    /// Names of the features in column order; `None` means `feature_{i}`.
    pub feature_names: Option<Vec<String>>,
    /// Draw progress bars on stderr (only when it is a terminal).
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            kind: ModelKind::Rff,
            window: 5,
            nu: DEFAULT_NU,
            learning_rate: LearningRate::Optimal,
            eta0: 0.01,
            power_t: 0.5,
            epochs: DEFAULT_EPOCHS,
            shuffle: true,
            components: DEFAULT_COMPONENTS,
            gamma: DEFAULT_GAMMA,
            rff_sampling: RffSampling::Orthogonal,
            seed: 0,
            heldout: 0.3,
            calibrate: false,
            calibration_quantile: DEFAULT_CALIBRATION_QUANTILE,
            target_far: 1e-5,
            target_frame_far: None,
            threads: 0,
            feature_names: None,
            progress: false,
        }
    }
}

impl TrainConfig {
    /// The SGD settings of every feature's fit.
    pub fn sgd(&self) -> SgdConfig {
        SgdConfig {
            nu: self.nu,
            learning_rate: self.learning_rate,
            eta0: self.eta0,
            power_t: self.power_t,
            epochs: self.epochs,
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        ensure!(self.window >= 1, "window must be at least 1");
        self.sgd().validate().map_err(anyhow::Error::msg)?;
        if self.kind == ModelKind::Rff {
            ensure!(self.components >= 1, "components must be at least 1");
            ensure!(
                self.gamma > 0.0 && self.gamma.is_finite(),
                "gamma must be positive, got {}",
                self.gamma
            );
        }
        ensure!(
            (0.0..1.0).contains(&self.heldout),
            "heldout must be in [0, 1), got {}",
            self.heldout
        );
        ensure!(
            self.calibration_quantile > 0.5 && self.calibration_quantile < 1.0,
            "calibration quantile must be in (0.5, 1), got {}",
            self.calibration_quantile
        );
        ensure!(
            self.target_far > 0.0 && self.target_far < 1.0,
            "target false-alarm rate must be in (0, 1), got {}",
            self.target_far
        );
        if let Some(f) = self.target_frame_far {
            ensure!(
                f > 0.0 && f < 1.0,
                "target frame false-alarm rate must be in (0, 1), got {f}"
            );
            ensure!(
                self.calibrate,
                "a target frame false-alarm rate needs calibration"
            );
        }
        Ok(())
    }

    /// The training settings as recorded in `model.json` (`meta.training`).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "solver": "SGD on the one-class SVM primal, scikit-learn SGDOneClassSVM update \
                       rule in float64 (averaging off, no early stopping)",
            "learning_rate": self.learning_rate.as_str(),
            "eta0": self.eta0,
            "power_t": self.power_t,
            "epochs": self.epochs,
            "shuffle": self.shuffle,
            "seed": self.seed,
            "heldout": self.heldout,
            "calibrate": self.calibrate,
        });
        if self.calibrate {
            v["calibration_quantile"] = self.calibration_quantile.into();
            v["target_false_alarm_rate"] = self.target_far.into();
            if let Some(f) = self.target_frame_far {
                v["target_frame_false_alarm_rate"] = f.into();
            }
        }
        if self.kind == ModelKind::Rff {
            v["standardise"] = "per feature: mean and population std of the training frames".into();
            v["rff_sampling"] = self.rff_sampling.as_str().into();
        }
        v
    }
}

/// A trained model and what training measured.
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// The model, with provenance left for the caller to fill in.
    pub model: Model,
    /// Frames fitted on.
    pub train_frames: usize,
    /// Frames held out.
    pub heldout_frames: usize,
    /// Windows per feature fitted on.
    pub train_windows: usize,
    /// Windows per feature held out (0 when the held-out frames are fewer than W): with
    /// calibration they set the threshold, and they measure the false-alarm rate.
    pub heldout_windows: usize,
    /// Wall time of fitting (with calibration, including each feature's map).
    pub fit_time: Duration,
    /// Wall time of scoring the held-out windows (and choosing the threshold).
    pub heldout_time: Duration,
    /// Held-out (window, feature) pairs at or above the model's threshold; `None` without
    /// held-out windows. With calibration the threshold was chosen on these same scores,
    /// so their rate is the target up to the granularity of the quantile.
    pub heldout_alarms: Option<u64>,
    /// Held-out (window, feature) pairs scored: `heldout_windows * n_features`.
    pub heldout_scores: u64,
    /// Features whose training-window scores had no spread, so that calibration gave them
    /// the median scale of the others.
    pub flat_features: Vec<usize>,
    /// Held-out windows (frames) with any feature at or over the threshold, counted over
    /// every held-out window (calibrated models).
    pub heldout_frame_alarms: Option<u64>,
    /// Whether the calibrated threshold was raised to its floor
    /// ([`MIN_CALIBRATED_THRESHOLD`]).
    pub threshold_floored: bool,
}

/// The least calibrated threshold: calibration maps each feature's
/// `calibration_quantile` (q0.99) of its training scores to 1, so a lower threshold would
/// alert on windows as ordinary as a percent of its own training data. On degenerate
/// (flat) training data the pooled held-out quantile collapses to 0 and would flag every
/// frame (SMAP's D-8 did); the floor keeps the threshold meaningful there.
pub const MIN_CALIBRATED_THRESHOLD: f32 = 1.0;

impl TrainReport {
    /// Held-out false-alarm rate per (frame, feature) at the model's threshold.
    pub fn heldout_false_alarm_rate(&self) -> Option<f64> {
        self.heldout_alarms
            .map(|a| a as f64 / self.heldout_scores.max(1) as f64)
    }
}

/// Trains a model on `data`, normal frames only. See [`train_with_report`].
pub fn train(data: MatrixView<'_>, cfg: &TrainConfig) -> anyhow::Result<Model> {
    Ok(train_with_report(data, cfg)?.model)
}

/// Trains a model on `data` and reports what training measured.
pub fn train_with_report(data: MatrixView<'_>, cfg: &TrainConfig) -> anyhow::Result<TrainReport> {
    cfg.validate()?;
    ensure!(data.cols >= 1, "the data have no features");
    let w = cfg.window;
    let heldout_frames = (data.rows as f64 * cfg.heldout).round() as usize;
    let train_frames = data.rows - heldout_frames;
    ensure!(
        train_frames >= w,
        "{train_frames} training frames (of {} with {} held out) make no window of {w}",
        data.rows,
        heldout_frames
    );
    let train_windows = train_frames - w + 1;
    let heldout = WindowSet::frames(data, train_frames..data.rows, w);
    if cfg.calibrate {
        // a quantile of a handful of windows means nothing; so few held-out windows is a
        // configuration mistake, not a calibration
        ensure!(
            heldout.windows >= 10,
            "calibration needs at least 10 held-out windows per feature, got {} \
             ({heldout_frames} held-out frames, window {w}); raise --heldout or add frames",
            heldout.windows
        );
    }
    let features = feature_names(cfg.feature_names.as_deref(), data.cols)?;
    let threads = match cfg.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let map = (cfg.kind == ModelKind::Rff)
        .then(|| RffMap::draw(cfg.rff_sampling, cfg.components, w, cfg.gamma, cfg.seed));
    let order = if cfg.shuffle {
        Order::Shuffled(cfg.seed)
    } else {
        Order::Sequential
    };

    let started = Instant::now();
    let bar = progress_bar(data.cols, "fitting", cfg.progress);
    let job = FitJob {
        data,
        train_frames,
        window: w,
        map: map.as_ref(),
        sgd: cfg.sgd(),
        order,
        calibrate: cfg.calibrate.then_some(cfg.calibration_quantile),
    };
    let (mut fitted, _) =
        for_feature_chunks(data.cols, threads, &bar, |range, buf: &mut FitBuffers| {
            job.fit_chunk(range, buf)
        })
        .map_err(anyhow::Error::msg)?;
    bar.finish_and_clear();
    let per_feature: Vec<FeatureCalibration> = fitted
        .iter_mut()
        .flat_map(|(_, c)| std::mem::take(&mut c.calibration))
        .collect();
    let params = assemble_params(fitted, data.cols, w, map);
    let fit_time = started.elapsed();

    let mut model = Model {
        meta: ModelMeta {
            format: 1,
            kind: cfg.kind,
            window: w,
            n_features: data.cols,
            features,
            nu: cfg.nu,
            score: score_definition(cfg.kind, false),
            threshold: SEED_THRESHOLD,
            rff: (cfg.kind == ModelKind::Rff).then_some(RffMeta {
                components: cfg.components,
                gamma: cfg.gamma,
                seed: cfg.seed,
            }),
            calibration: None,
            training: cfg.to_json(),
            provenance: Provenance {
                data: format!(
                    "in-memory matrix of {} frames x {} features",
                    data.rows, data.cols
                ),
                seed: Some(cfg.seed),
                command: String::new(),
            },
        },
        params,
        calibration: None,
    };

    let started = Instant::now();
    let mut flat_features = Vec::new();
    let mut heldout_alarms = None;
    let mut heldout_frame_alarms = None;
    let mut threshold_floored = false;
    if cfg.calibrate {
        let outcome = calibrate_model(
            &mut model,
            per_feature,
            &heldout,
            train_windows,
            cfg,
            threads,
        )?;
        flat_features = outcome.flat_features;
        heldout_alarms = Some(outcome.alarms);
        heldout_frame_alarms = Some(outcome.frame_alarms);
        threshold_floored = outcome.floored;
    } else if heldout.windows > 0 {
        let bar = progress_bar(data.cols, "scoring held-out", cfg.progress);
        let threshold = model.meta.threshold;
        let (counts, _) = for_feature_chunks(data.cols, threads, &bar, |range, _: &mut ()| {
            let scores = heldout.scores(&model, range);
            Ok(scores.iter().filter(|&&s| s >= threshold).count() as u64)
        })
        .map_err(anyhow::Error::msg)?;
        bar.finish_and_clear();
        heldout_alarms = Some(counts.into_iter().map(|(_, c)| c).sum());
    }

    Ok(TrainReport {
        model,
        train_frames,
        heldout_frames,
        train_windows,
        heldout_windows: heldout.windows,
        fit_time,
        heldout_time: started.elapsed(),
        heldout_alarms,
        heldout_scores: heldout.windows as u64 * data.cols as u64,
        flat_features,
        heldout_frame_alarms,
        threshold_floored,
    })
}

/// What calibration measured.
struct CalibrationOutcome {
    /// Held-out scores at or above the chosen threshold.
    alarms: u64,
    /// Features without spread in their calibration scores.
    flat_features: Vec<usize>,
    /// Held-out windows with any feature at or over the threshold.
    frame_alarms: u64,
    /// Whether the threshold rests on [`MIN_CALIBRATED_THRESHOLD`].
    floored: bool,
}

/// Calibrates `model` with the per-feature maps measured on the training windows and
/// chooses its threshold on the held-out windows (see [`calibrate`] for why these two).
fn calibrate_model(
    model: &mut Model,
    per_feature: Vec<FeatureCalibration>,
    heldout: &WindowSet<'_>,
    train_windows: usize,
    cfg: &TrainConfig,
    threads: usize,
) -> anyhow::Result<CalibrationOutcome> {
    let n_features = model.n_features();
    let fallback = calibrate::fallback_scale(&per_feature);
    model.calibration = Some(Calibration {
        offset: per_feature.iter().map(|c| c.offset).collect(),
        scale: per_feature
            .iter()
            .map(|c| c.scale.unwrap_or(fallback))
            .collect(),
    });

    // The threshold is the (1 - far) quantile of every calibrated held-out score, as numpy
    // would interpolate it between order statistics lo and lo + 1. Only the `keep` largest
    // scores take part, so no thread holds more than that: at 25,000 features and far =
    // 1e-5 a few hundred values instead of tens of millions.
    let n = heldout.windows as u64 * n_features as u64;
    let h = (n - 1) as f64 * (1.0 - cfg.target_far);
    let lo = h.floor() as u64;
    let frac = h - lo as f64;
    let keep = (n - lo) as usize;
    let bar = progress_bar(n_features, "choosing threshold", cfg.progress);
    let calibrated = &*model;
    let (_, tops) = for_feature_chunks(n_features, threads, &bar, |range, top: &mut Vec<f32>| {
        top.extend(heldout.scores(calibrated, range));
        // trimming only at twice the size keeps its cost linear in the scores seen
        if top.len() > 2 * keep {
            keep_top(top, keep);
        }
        Ok(())
    })
    .map_err(anyhow::Error::msg)?;
    bar.finish_and_clear();
    let mut top: Vec<f32> = tops.into_iter().flatten().collect();
    keep_top(&mut top, keep);
    top.sort_unstable_by(|a, b| b.total_cmp(a));
    // top[keep - 1] is order statistic lo (ascending), top[keep - 2] is lo + 1
    let at_lo = top[keep - 1] as f64;
    let pooled = if keep >= 2 {
        (at_lo + frac * (top[keep - 2] as f64 - at_lo)) as f32
    } else {
        at_lo as f32
    };
    // every held-out window's largest calibrated score over all features: what a frame
    // alert depends on
    let bar = progress_bar(n_features, "scoring held-out frames", cfg.progress);
    let (maxima, _) = for_feature_chunks(n_features, threads, &bar, |range, _: &mut ()| {
        let width = range.len();
        let scores = heldout.scores(calibrated, range);
        Ok(scores
            .chunks(width.max(1))
            .map(|w| w.iter().copied().fold(f32::NEG_INFINITY, f32::max))
            .collect::<Vec<f32>>())
    })
    .map_err(anyhow::Error::msg)?;
    bar.finish_and_clear();
    let mut frame_max = vec![f32::NEG_INFINITY; heldout.windows];
    for (_, m) in maxima {
        for (a, b) in frame_max.iter_mut().zip(m) {
            *a = a.max(b);
        }
    }
    let chosen = match cfg.target_frame_far {
        Some(f) => calibrate::quantile(&mut frame_max.clone(), 1.0 - f)
            .expect("calibration has held-out windows"),
        None => pooled,
    };
    ensure!(
        chosen.is_finite(),
        "the calibrated held-out scores have no finite upper quantile"
    );
    let floored = chosen < MIN_CALIBRATED_THRESHOLD;
    let threshold = chosen.max(MIN_CALIBRATED_THRESHOLD);
    let frame_alarms = frame_max.iter().filter(|&&m| m >= threshold).count() as u64;
    // `top` holds every score at or over the pooled quantile; a threshold under that
    // needs every held-out score counted again
    let alarms = if threshold >= top[keep - 1] {
        top.iter().filter(|&&v| v >= threshold).count() as u64
    } else {
        let bar = progress_bar(n_features, "counting held-out alarms", cfg.progress);
        let (counts, _) = for_feature_chunks(n_features, threads, &bar, |range, _: &mut ()| {
            let scores = heldout.scores(calibrated, range);
            Ok(scores.iter().filter(|&&s| s >= threshold).count() as u64)
        })
        .map_err(anyhow::Error::msg)?;
        bar.finish_and_clear();
        counts.into_iter().map(|(_, c)| c).sum()
    };
    model.meta.threshold = threshold;
    model.meta.score = score_definition(cfg.kind, true);
    model.meta.calibration = Some(CalibrationMeta {
        method: format!(
            "per feature: offset = median and scale = 1 / (q{} - median) of the raw scores \
             of its {} training windows; threshold = {}, at least {MIN_CALIBRATED_THRESHOLD}",
            cfg.calibration_quantile,
            train_windows,
            match cfg.target_frame_far {
                Some(f) => format!(
                    "the (1 - {f}) quantile of the held-out windows' largest calibrated score \
                     over all features"
                ),
                None => format!(
                    "the (1 - {}) quantile of all features' calibrated scores on the held-out \
                     windows pooled",
                    cfg.target_far
                ),
            }
        ),
        target_false_alarm_rate: cfg.target_far,
        heldout_windows: heldout.windows,
    });
    Ok(CalibrationOutcome {
        alarms,
        frame_alarms,
        floored,
        flat_features: (0..per_feature.len())
            .filter(|&j| per_feature[j].scale.is_none())
            .collect(),
    })
}

/// Keeps the `keep` largest values of `v`, in no particular order.
fn keep_top(v: &mut Vec<f32>, keep: usize) {
    if v.len() > keep {
        let cut = v.len() - keep;
        v.select_nth_unstable_by(cut, f32::total_cmp);
        v.drain(..cut);
    }
}

/// What the score of a model means, for `model.json`.
fn score_definition(kind: ModelKind, calibrated: bool) -> String {
    let raw = match kind {
        ModelKind::Linear => "raw = -(w·x + b) on the window x (oldest first)",
        ModelKind::Rff => {
            "raw = -(w·φ(z) + b), φ(z) = sqrt(2/D) cos(Ω z + phase), z = (x - mean) * inv_std \
             on the window x (oldest first)"
        }
    };
    let tail = "; positive outside the region the OCSVM learned from normal data";
    if calibrated {
        format!("{raw}; score = (raw - calib_offset) * calib_scale{tail}")
    } else {
        format!("score = {raw}{tail}")
    }
}

/// The model's feature names: the `feature_{i}` pattern when there are no names or they
/// are exactly that pattern in order, so that the common case stores no 25,000-entry list.
fn feature_names(names: Option<&[String]>, n: usize) -> anyhow::Result<FeatureNames> {
    let Some(names) = names else {
        return Ok(FeatureNames::default());
    };
    ensure!(
        names.len() == n,
        "{} feature names for {n} features",
        names.len()
    );
    let pattern = FeatureNames::default();
    let numbered = FeatureIndex::numbered(n);
    if names
        .iter()
        .enumerate()
        .all(|(i, s)| numbered.is_name_of(s, i))
    {
        return Ok(pattern);
    }
    let list = FeatureNames::List(names.to_vec());
    FeatureIndex::new(&list, n).map_err(anyhow::Error::msg)?;
    Ok(list)
}

fn progress_bar(len: usize, what: &'static str, visible: bool) -> ProgressBar {
    if !visible || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>18} [{elapsed_precise}] {wide_bar} {pos}/{len} features (eta {eta})",
        )
        .expect("valid template"),
    );
    bar.set_message(what);
    bar
}

/// Features per unit of work: large enough that per-chunk costs (buffers, a scorer) vanish,
/// small enough that every thread gets several chunks and the progress bar moves.
const MAX_CHUNK: usize = 64;

/// Every chunk's result with the chunk's first feature, and every thread's state.
type ChunkResults<T, S> = (Vec<(usize, T)>, Vec<S>);
/// One thread's chunk results and state.
type ThreadResults<T, S> = (Vec<(usize, T)>, S);

/// Runs `work` over consecutive feature ranges covering `0..n` on `threads` threads, which
/// take the next range as they finish one (so uneven features do not idle a thread). Each
/// thread owns one `S`. Returns the results in feature order and every thread's `S`. The
/// first error stops the other threads at their next chunk.
fn for_feature_chunks<S, T, F>(
    n: usize,
    threads: usize,
    bar: &ProgressBar,
    work: F,
) -> Result<ChunkResults<T, S>, String>
where
    S: Default + Send,
    T: Send,
    F: Fn(Range<usize>, &mut S) -> Result<T, String> + Sync,
{
    let chunk = n.div_ceil(threads.max(1) * 4).clamp(1, MAX_CHUNK);
    let n_chunks = n.div_ceil(chunk);
    let threads = threads.clamp(1, n_chunks.max(1));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let run = || -> Result<ThreadResults<T, S>, String> {
        let mut state = S::default();
        let mut out = Vec::new();
        loop {
            let c = next.fetch_add(1, Ordering::Relaxed);
            if c >= n_chunks || failed.load(Ordering::Relaxed) {
                return Ok((out, state));
            }
            let range = c * chunk..((c + 1) * chunk).min(n);
            let len = range.len() as u64;
            match work(range, &mut state) {
                Ok(t) => out.push((c * chunk, t)),
                Err(e) => {
                    failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
            bar.inc(len);
        }
    };
    let per_thread: Vec<Result<ThreadResults<T, S>, String>> = if threads == 1 {
        vec![run()]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|_| s.spawn(run)).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    };
    let mut results = Vec::with_capacity(n_chunks);
    let mut states = Vec::with_capacity(threads);
    for r in per_thread {
        let (out, state) = r?;
        results.extend(out);
        states.push(state);
    }
    results.sort_unstable_by_key(|(start, _)| *start);
    Ok((results, states))
}

/// Per-thread scratch space of fitting, reused across chunks.
#[derive(Default)]
struct FitBuffers {
    /// The chunk's training columns, `[width][train_frames]`.
    columns: Vec<f32>,
    z: Vec<f32>,
    theta: Vec<f32>,
    /// One feature's samples before their common factor, `[windows][dim]`.
    samples: Vec<f32>,
    /// A group of features' samples side by side, `[windows][dim][LANES]`.
    lanes: Vec<f32>,
    /// One feature's raw scores on its training windows.
    scores: Vec<f32>,
}

/// The fitted parameters of one chunk of features.
struct FittedChunk {
    /// `[width][dim]`.
    weight: Vec<f32>,
    bias: Vec<f32>,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    /// Per feature, from the raw scores of its training windows (with calibration only).
    calibration: Vec<FeatureCalibration>,
}

/// What fitting a chunk of features needs besides the chunk.
struct FitJob<'a> {
    data: MatrixView<'a>,
    train_frames: usize,
    window: usize,
    map: Option<&'a RffMap>,
    sgd: SgdConfig,
    order: Order,
    /// The calibration quantile, when calibrating.
    calibrate: Option<f64>,
}

impl FitJob<'_> {
    fn fit_chunk(&self, range: Range<usize>, buf: &mut FitBuffers) -> Result<FittedChunk, String> {
        let (train_frames, w, map) = (self.train_frames, self.window, self.map);
        let width = range.len();
        // transposed once per chunk: reading a column straight from the row-major data
        // would touch one cache line per value
        buf.columns.clear();
        buf.columns.resize(width * train_frames, 0.0);
        for t in 0..train_frames {
            let row = &self.data.row(t)[range.clone()];
            for (j, &v) in row.iter().enumerate() {
                buf.columns[j * train_frames + t] = v;
            }
        }
        let dim = map.map_or(w, RffMap::components);
        let scale = map.map_or(1.0, RffMap::feature_scale);
        let mut out = FittedChunk {
            weight: Vec::with_capacity(width * dim),
            bias: Vec::with_capacity(width),
            mean: Vec::with_capacity(width),
            inv_std: Vec::with_capacity(width),
            calibration: Vec::with_capacity(width),
        };
        let n = train_frames + 1 - w;
        let starts: Vec<usize> = range.clone().step_by(LANES).collect();
        for g0 in starts {
            let lanes = LANES.min(range.end - g0);
            buf.lanes.clear();
            buf.lanes.resize(n * dim * LANES, 0.0);
            for l in 0..lanes {
                let j = g0 + l - range.start;
                let col = &buf.columns[j * train_frames..(j + 1) * train_frames];
                match map {
                    Some(map) => {
                        let (mean, inv_std) = rff::mean_inv_std(col);
                        rff::standardise(col, mean, inv_std, &mut buf.z);
                        map.cosines_of_series(&buf.z, &mut buf.theta, &mut buf.samples);
                        out.mean.push(mean);
                        out.inv_std.push(inv_std);
                    }
                    None => {
                        buf.samples.clear();
                        for win in col.windows(w) {
                            buf.samples.extend_from_slice(win);
                        }
                    }
                }
                for (k, &v) in buf.samples.iter().enumerate() {
                    buf.lanes[k * LANES + l] = v;
                }
            }
            // unused lanes fit zeros alongside, harmlessly
            let fits = sgd::fit_ocsvm_lanes(&buf.lanes, scale, dim, &self.sgd, self.order)
                .map_err(|(l, e)| format!("feature {}: {e}", g0 + l))?;
            for (l, fit) in fits[..lanes].iter().enumerate() {
                let weight: Vec<f32> = fit.coef.iter().map(|&c| c as f32).collect();
                // the scorer computes -(w·φ + b) and sklearn's decision is w·φ - offset
                let bias = -fit.offset as f32;
                if let Some(q) = self.calibrate {
                    raw_scores(&weight, bias, scale, dim, &buf.lanes, l, &mut buf.scores);
                    out.calibration
                        .push(calibrate::calibrate_feature(&mut buf.scores, q));
                }
                out.weight.extend(weight);
                out.bias.push(bias);
            }
        }
        Ok(out)
    }
}

/// The raw scores of lane `l`'s training windows, `-(Σ_d a_d s_d + bias)` over the stored
/// samples `s` (`[n][dim][LANES]`), with the scorer's arithmetic to the bit: weights
/// folded with the features' common factor in f32 (`weight * sqrt(2/D) * 1.0`; a linear
/// model's factor is 1), f32 products summed from 0 in component order, the bias added
/// last. So calibration sees the very scores the engine will compute, without scoring the
/// training windows a second time.
fn raw_scores(
    weight: &[f32],
    bias: f32,
    scale: f64,
    dim: usize,
    samples: &[f32],
    l: usize,
    out: &mut Vec<f32>,
) {
    let c = scale as f32;
    let a: Vec<f32> = weight.iter().map(|&v| v * c * 1.0).collect();
    out.clear();
    out.extend(samples.chunks_exact(dim * LANES).map(|x| {
        let mut acc = 0f32;
        for (ad, xd) in a.iter().zip(x.chunks_exact(LANES)) {
            acc += ad * xd[l];
        }
        -(acc + bias)
    }));
}

fn assemble_params(
    fitted: Vec<(usize, FittedChunk)>,
    n_features: usize,
    w: usize,
    map: Option<RffMap>,
) -> Params {
    let dim = map.as_ref().map_or(w, RffMap::components);
    let mut weight = Vec::with_capacity(n_features * dim);
    let mut bias = Vec::with_capacity(n_features);
    let mut mean = Vec::new();
    let mut inv_std = Vec::new();
    for (_, c) in fitted {
        weight.extend(c.weight);
        bias.extend(c.bias);
        mean.extend(c.mean);
        inv_std.extend(c.inv_std);
    }
    match map {
        None => Params::Linear { weight, bias },
        Some(map) => Params::Rff {
            mean,
            inv_std,
            omega: map.omega,
            phase: map.phase,
            weight,
            bias,
        },
    }
}

/// The windows lying wholly inside a range of frames: those ending at frames
/// `first_end .. first_end + windows`.
struct WindowSet<'a> {
    data: MatrixView<'a>,
    first_end: usize,
    windows: usize,
}

impl<'a> WindowSet<'a> {
    fn frames(data: MatrixView<'a>, frames: Range<usize>, w: usize) -> Self {
        WindowSet {
            data,
            first_end: frames.start + w - 1,
            windows: (frames.len() + 1).saturating_sub(w),
        }
    }
}

/// Windows scored per call: enough to amortise the call, few enough to stay in cache.
const SCORE_BATCH: usize = 64;

impl WindowSet<'_> {
    /// Scores of features `range` on every held-out window through the engine's own
    /// [`Scorer`], `[windows][range.len()]`.
    fn scores(&self, model: &Model, range: Range<usize>) -> Vec<f32> {
        let scorer = Scorer::new(model, range.clone());
        let (w, width) = (model.window(), range.len());
        let mut out = vec![0f32; self.windows * width];
        let mut x = Vec::with_capacity(SCORE_BATCH * w * width);
        for (b0, out) in (0..self.windows)
            .step_by(SCORE_BATCH)
            .zip(out.chunks_mut(SCORE_BATCH * width))
        {
            x.clear();
            for b in b0..(b0 + SCORE_BATCH).min(self.windows) {
                let end = self.first_end + b;
                for t in end + 1 - w..=end {
                    x.extend_from_slice(&self.data.row(t)[range.clone()]);
                }
            }
            scorer.score(&x, out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AR(1)-ish deterministic data, `[t][f]`, each feature on its own scale.
    fn data(t: usize, f: usize) -> Vec<f32> {
        let mut r = 0x2545_f491_4f6c_dd1du64;
        let mut state = vec![0f32; f];
        let mut out = Vec::with_capacity(t * f);
        for _ in 0..t {
            for (i, s) in state.iter_mut().enumerate() {
                r ^= r << 13;
                r ^= r >> 7;
                r ^= r << 17;
                let e = (r >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                *s = 0.6 * *s + e;
                out.push(10.0 * i as f32 + (1.0 + i as f32) * *s);
            }
        }
        out
    }

    #[test]
    fn raw_training_scores_are_the_scorers_to_the_bit() {
        let (t, f) = (300, 11);
        let values = data(t, f);
        let view = MatrixView::new(t, f, &values).unwrap();
        for kind in [ModelKind::Rff, ModelKind::Linear] {
            let cfg = TrainConfig {
                kind,
                heldout: 0.0,
                ..TrainConfig::default()
            };
            let map = (kind == ModelKind::Rff)
                .then(|| RffMap::draw(cfg.rff_sampling, cfg.components, 5, cfg.gamma, 0));
            let job = FitJob {
                data: view,
                train_frames: t,
                window: 5,
                map: map.as_ref(),
                sgd: cfg.sgd(),
                order: Order::Shuffled(0),
                calibrate: Some(0.99),
            };
            let mut buf = FitBuffers::default();
            let chunk = job.fit_chunk(0..f, &mut buf).unwrap();
            let model = Model {
                meta: ModelMeta {
                    format: 1,
                    kind,
                    window: 5,
                    n_features: f,
                    features: FeatureNames::default(),
                    nu: cfg.nu,
                    score: String::new(),
                    threshold: SEED_THRESHOLD,
                    rff: map.as_ref().map(|m| RffMeta {
                        components: m.components(),
                        gamma: cfg.gamma,
                        seed: 0,
                    }),
                    calibration: None,
                    training: serde_json::Value::Null,
                    provenance: Provenance::default(),
                },
                params: assemble_params(vec![(0, chunk)], f, 5, map.clone()),
                calibration: None,
            };
            let windows = WindowSet::frames(view, 0..t, 5);
            let scorer_scores = windows.scores(&model, 0..f);
            // the job's calibration came from its own scores: recompute it from the
            // scorer's and compare
            let again = job.fit_chunk(0..f, &mut buf).unwrap();
            for (j, cal) in again.calibration.iter().enumerate() {
                let mut col: Vec<f32> = scorer_scores.iter().skip(j).step_by(f).copied().collect();
                let want = calibrate::calibrate_feature(&mut col, 0.99);
                assert_eq!(cal.offset.to_bits(), want.offset.to_bits(), "{kind:?} {j}");
                assert_eq!(
                    cal.scale.map(f32::to_bits),
                    want.scale.map(f32::to_bits),
                    "{kind:?} {j}"
                );
            }
        }
    }

    #[test]
    fn numbered_names_become_the_pattern() {
        let numbered: Vec<String> = (0..3).map(|i| format!("feature_{i}")).collect();
        assert_eq!(
            feature_names(Some(&numbered), 3).unwrap(),
            FeatureNames::default()
        );
        assert_eq!(feature_names(None, 3).unwrap(), FeatureNames::default());
        let shuffled = vec![
            "feature_1".to_string(),
            "feature_0".into(),
            "feature_2".into(),
        ];
        assert_eq!(
            feature_names(Some(&shuffled), 3).unwrap(),
            FeatureNames::List(shuffled.clone())
        );
        assert!(feature_names(Some(&shuffled), 4).is_err());
        let twice = vec!["a".to_string(), "a".into()];
        assert!(feature_names(Some(&twice), 2).is_err());
    }

    #[test]
    fn keep_top_keeps_the_largest() {
        let mut v = vec![3.0, -1.0, 7.0, 2.0, 7.5, 0.0];
        keep_top(&mut v, 3);
        v.sort_by(f32::total_cmp);
        assert_eq!(v, [3.0, 7.0, 7.5]);
        keep_top(&mut v, 5);
        assert_eq!(v.len(), 3);
    }

    #[test]
    fn rejects_data_it_cannot_train_on() {
        assert!(MatrixView::new(2, 2, &[1.0, 2.0, 3.0]).is_err());
        assert!(MatrixView::new(1, 2, &[1.0, f32::NAN]).is_err());
        let values = data(20, 2);
        let view = MatrixView::new(20, 2, &values).unwrap();
        // 20 frames, 30% held out: 14 left, but windows of 15 need 15
        let cfg = TrainConfig {
            window: 15,
            ..TrainConfig::default()
        };
        assert!(train(view, &cfg).is_err());
        // calibration with 6 held-out frames leaves 2 windows of 5
        let cfg = TrainConfig {
            calibrate: true,
            ..TrainConfig::default()
        };
        let err = train(view, &cfg).unwrap_err().to_string();
        assert!(err.contains("held-out windows"), "{err}");
        let cfg = TrainConfig {
            heldout: 1.0,
            ..TrainConfig::default()
        };
        assert!(train(view, &cfg).is_err());
    }

    #[test]
    fn uncalibrated_model_keeps_the_seed_threshold_and_reports_false_alarms() {
        let (t, f) = (400, 3);
        let values = data(t, f);
        let report = train_with_report(
            MatrixView::new(t, f, &values).unwrap(),
            &TrainConfig::default(),
        )
        .unwrap();
        assert_eq!(report.model.meta.threshold, SEED_THRESHOLD);
        assert!(report.model.calibration.is_none());
        assert_eq!(report.train_frames, 280);
        assert_eq!(report.heldout_windows, 116);
        assert_eq!(report.heldout_scores, 116 * 3);
        assert!(report.heldout_false_alarm_rate().is_some());
    }
}
