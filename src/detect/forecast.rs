//! Forecasting residuals with non-parametric dynamic thresholding, after Telemanom
//! (Hundman et al., KDD 2018), with a linear autoregressive forecaster in place of the
//! LSTM: per feature, `x[t]` is predicted from `x[t-p..t]` by least squares on training
//! data; the absolute residuals are smoothed by an EWMA; the threshold is chosen on the
//! smoothed training residuals by Telemanom's epsilon search; weak events are pruned.
//!
//! Streaming form of the pruning: Telemanom drops an anomalous sequence whose peak is
//! within `prune` (13 %) of the largest normal smoothed error. Here an event opens only
//! when the smoothed residual reaches that bar (`high`, from the training errors) and
//! stays open while it is at or over epsilon (`low`), so a weak excursion over epsilon
//! never raises an alert, and a strong one is flagged until it falls back.
//!
//! As Telemanom does, the thresholds are chosen again every `refresh` (70) frames over
//! the last `history` (2,100) smoothed residuals, which start as the training tail, so
//! that a stream whose errors drift gets thresholds that drift with it; no labels are
//! used. `history = 0` keeps the thresholds of the training residuals.
//!
//! Scores are the smoothed residual over `high` (at least 1 while an event is open), so
//! the verdict threshold is 1 for every feature and scores grow with the departure.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, ensure};
use serde::{Deserialize, Serialize};

use super::{Detector, Needs, Scores};
use crate::model::ModelError;

/// What a feature's forecaster predicts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Form {
    /// The centred values: `x[t]` from `x[t-p..t]` (mean-reverting: a departure from
    /// the training level keeps a residual while it lasts).
    Level,
    /// The differences: `x[t] - x[t-1]` from the `p - 1` differences before it
    /// (shrinks towards "same as the last value", so a level never seen in training is
    /// no anomaly in itself, only the change into it).
    Diff,
    /// Per feature, whichever of the two forecasts the last quarter of the training data
    /// better when fitted on the first three quarters (training data only).
    Auto,
}

impl std::str::FromStr for Form {
    type Err = String;
    fn from_str(s: &str) -> Result<Form, String> {
        match s {
            "level" => Ok(Form::Level),
            "diff" => Ok(Form::Diff),
            "auto" => Ok(Form::Auto),
            _ => Err(format!("{s:?} is not level, diff or auto")),
        }
    }
}

/// How a [`ForecastModel`] is fitted and scores.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForecastConfig {
    /// What the forecaster predicts from. Default [`Form::Level`]: Telemanom's LSTM
    /// forecasts values, not changes, and on SMAP the hold-out choice ([`Form::Auto`])
    /// mostly picks differences, which miss the slow departures (see the README's
    /// figures of all three).
    pub form: Form,
    /// Past values each forecast uses (`p`); the detector's windows hold `p + 1` frames.
    pub lags: usize,
    /// Ridge penalty on the lag coefficients, relative to the mean diagonal of the
    /// normal equations: keeps the solve well posed on flat or collinear training data.
    pub ridge: f64,
    /// EWMA weight of the newest residual. Telemanom smooths with a span of 105
    /// (batch 70 × window 30 × 5 %), i.e. `2 / 106`.
    pub alpha: f32,
    /// Epsilon search: `mean + z·std` of the smoothed training residuals for `z` from
    /// `z_min` to `z_max` by `z_step` (Telemanom: 2.5 to 12 by 0.5).
    pub z_min: f32,
    /// Largest `z` tried; also the epsilon when no `z` isolates anything.
    pub z_max: f32,
    /// Step of `z`.
    pub z_step: f32,
    /// Minimum relative margin of an event's peak over the largest normal smoothed
    /// training residual (Telemanom's `p`, 0.13).
    pub prune: f32,
    /// Floor on epsilon as a share of the feature's training spread (5th to 95th
    /// percentile), as Telemanom ignores errors under 5 % of the value range: without it
    /// a flat training feature gets epsilon 0 and every later wobble alerts.
    pub floor: f32,
    /// Smoothed residuals the threshold is chosen over while scoring, as Telemanom
    /// chooses it over a trailing window of errors (30 batches of 70: 2,100); 0: the
    /// training residuals alone, fixed. The window starts with the training tail.
    pub history: usize,
    /// Frames between two choices of the threshold over the history (Telemanom's batch,
    /// 70).
    pub refresh: usize,
    /// Level-shift onset: also flag a frame whose change from the frame before,
    /// `|x[t] - x[t-1]|`, is over the largest change of the training data by the pruning
    /// margin (`prune`), and at least the floor. The EWMA that makes the residuals
    /// robust dilutes a one-frame jump by `alpha` (2 %), so without this a step on a
    /// channel that never stepped in training goes unseen; with it, "a bigger jump than
    /// training ever made" is flagged at once, the classic step detector. The bar stays
    /// the training data's (it does not follow `history`): a stream whose changes grow
    /// for good keeps flagging them until the model is fitted again.
    pub jump: bool,
    /// Frames an event stays flagged after it closes: Telemanom's `error_buffer` (100),
    /// which pads every anomalous sequence so that a spike and its aftermath make one
    /// event, not several (streaming, only the frames after it can be padded).
    pub hold: usize,
    /// Absolute floor on every threshold, in the data's units: Telemanom ignores
    /// smoothed errors under 0.05 on its data, which are scaled to [-1, 1]. Default 0
    /// (unit-free); `evaluate` sets 0.05 for data in Telemanom's layout alone, since only
    /// there is the scale known.
    pub min_error: f32,
    /// Context frames each forecast also weighs, per context column (0: none). The
    /// context columns (SMAP's 24 command flags) are inputs of the forecaster only, never
    /// scored: `x[t]` is forecast from its own lags and the context of frames
    /// `t - context_lags + 1 ..= t` (a command and the value it moves arrive in the same
    /// frame), as Telemanom's LSTM sees every column. Context columns that never change
    /// in training get no weight. Default 7: of 1, 2, 3, 5, 7, 10 and 20, the one whose
    /// forecasters had the smallest mean error on the held-out end of SMAP's training
    /// data ([`FeatureFit::holdout`]: 0.0329, against 0.0462 without context), a
    /// criterion that uses no test data and no labels.
    pub context_lags: usize,
    /// Stuck (flat-line) detection: also flag a feature whose value has not moved (a
    /// change under a millionth of its training spread) for longer than it ever stood
    /// still in training, by the pruning margin, and for at least `stuck_min` frames. Its
    /// score is the still run's length over that bar, so it grows the longer the value
    /// stays stuck. A feature whose training values never moved is never stuck.
    pub stuck: bool,
    /// The shortest still run that can be flagged as stuck, in frames.
    pub stuck_min: usize,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        ForecastConfig {
            form: Form::Level,
            lags: 10,
            ridge: 1e-3,
            alpha: 2.0 / 106.0,
            z_min: 2.5,
            z_max: 12.0,
            z_step: 0.5,
            prune: 0.13,
            floor: 0.05,
            history: 2100,
            refresh: 70,
            jump: true,
            // Telemanom pads sequences by 100 in a batch, before pruning; streaming, a
            // pad can only add flagged frames after an event, so it only raises the
            // false alarms on normal data (the one criterion used here): off
            hold: 0,
            min_error: 0.0,
            context_lags: 7,
            stuck: false,
            stuck_min: 10,
        }
    }
}

/// One feature's fitted forecaster and thresholds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureFit {
    /// What it forecasts from ([`Form::Level`] or [`Form::Diff`]).
    pub form: Form,
    /// Training mean, subtracted before the lags are weighed (level form).
    #[serde(with = "json_f32")]
    pub mean: f32,
    /// Weights of the centred lags (level form) or of the differences (diff form),
    /// oldest first, then the intercept.
    pub coef: Vec<f32>,
    /// Epsilon: an open event stays open while the smoothed residual is at or over it.
    #[serde(with = "json_f32")]
    pub low: f32,
    /// The bar an event must reach to open (epsilon after pruning).
    #[serde(with = "json_f32")]
    pub high: f32,
    /// Smoothed residual at the end of the training data: where scoring starts.
    #[serde(with = "json_f32")]
    pub start: f32,
    /// The floor under epsilon (see [`ForecastConfig::floor`]).
    #[serde(with = "json_f32")]
    pub floor: f32,
    /// The last [`ForecastConfig::history`] smoothed training residuals, oldest first:
    /// the history a dynamic threshold starts from.
    pub tail: Vec<f32>,
    /// Whether the floor raised epsilon (the training residuals alone gave a smaller
    /// one).
    pub floored: bool,
    /// Whether the training values never moved (5th and 95th percentiles equal).
    pub flat: bool,
    /// The bar on `|x[t] - x[t-1]|` (see [`ForecastConfig::jump`]): the largest training
    /// change over `1 - prune`, at least the floor.
    #[serde(with = "json_f32")]
    pub jump: f32,
    /// Weights of the context, frame by frame (oldest first), each frame's context
    /// columns in order (empty without context).
    pub context_coef: Vec<f32>,
    /// Mean absolute forecast error over the last quarter of the training data of the
    /// forecaster fitted on the first three quarters (its form and inputs as chosen);
    /// NaN when the training data are too short to judge. A label-free measure of the
    /// forecaster, for choosing settings.
    #[serde(with = "json_f32")]
    pub holdout: f32,
    /// A change `|x[t] - x[t-1]|` at or under this is no movement (stuck detection).
    #[serde(with = "json_f32")]
    pub still: f32,
    /// Still frames in a row at which the feature is flagged stuck (see
    /// [`ForecastConfig::stuck`]); infinite when its training values never moved.
    #[serde(with = "json_f32")]
    pub stuck_bar: f32,
}

/// A fitted forecaster per feature, shared by the detectors of its partitions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForecastModel {
    /// The settings it was fitted with.
    pub config: ForecastConfig,
    /// One fit per feature.
    pub features: Vec<FeatureFit>,
    /// Context columns each window holds after the scored features (see
    /// [`ForecastConfig::context_lags`]); 0 without context.
    pub context: usize,
}

impl ForecastModel {
    /// Fits every column of `train` (row-major, `cols` columns): training data only.
    pub fn fit(train: &[f32], cols: usize, config: ForecastConfig) -> anyhow::Result<Self> {
        Self::fit_with_context(train, cols, &[], 0, config)
    }

    /// Fits every column of `train` (row-major, `cols` columns), each forecast also
    /// weighing the context `context` (row-major, `context_cols` columns, the same rows)
    /// when [`ForecastConfig::context_lags`] is over 0: training data only. The
    /// detector's windows then hold each frame's scored features, then its context.
    pub fn fit_with_context(
        train: &[f32],
        cols: usize,
        context: &[f32],
        context_cols: usize,
        config: ForecastConfig,
    ) -> anyhow::Result<Self> {
        ensure!(cols > 0, "no features to fit");
        ensure!(config.lags > 0, "lags must be at least 1");
        ensure!(
            config.alpha > 0.0 && config.alpha <= 1.0,
            "alpha must be in (0, 1], not {}",
            config.alpha
        );
        ensure!(
            config.z_step > 0.0 && config.z_min <= config.z_max,
            "the z range must be non-empty"
        );
        ensure!(
            (0.0..1.0).contains(&config.prune),
            "prune must be in [0, 1)"
        );
        ensure!(config.refresh > 0, "refresh must be at least 1");
        let rows = train.len() / cols;
        ensure!(
            rows * cols == train.len(),
            "training data is not whole rows"
        );
        // at least a few forecasts per coefficient, or the residuals say nothing
        if rows < 2 * (config.lags + 1) + 10 {
            bail!(
                "{rows} training rows are too few for {} lags (need {})",
                config.lags,
                2 * (config.lags + 1) + 10
            );
        }
        ensure!(
            rows >= config.context_lags + 2 * (config.lags + 1) + 10,
            "{rows} training rows are too few for {} context frames",
            config.context_lags
        );
        let context_cols = if config.context_lags > 0 {
            context_cols
        } else {
            0
        };
        ensure!(
            context.len() == rows * context_cols || context_cols == 0,
            "the context has not the training data's {rows} rows of {context_cols} columns"
        );
        let context = Context::of(
            if context_cols > 0 { context } else { &[] },
            context_cols,
            config.context_lags,
        );
        let features = (0..cols)
            .map(|j| {
                let x: Vec<f64> = (0..rows).map(|r| train[r * cols + j] as f64).collect();
                fit_feature(&x, &context, &config)
            })
            .collect();
        Ok(ForecastModel {
            config,
            features,
            context: context_cols,
        })
    }

    /// Frames per window: the lags and the frame forecast, or the context frames when
    /// they are more.
    pub fn window(&self) -> usize {
        if self.context > 0 {
            (self.config.lags + 1).max(self.config.context_lags)
        } else {
            self.config.lags + 1
        }
    }

    /// Features whose training values never moved: their threshold rests on the floor
    /// alone, so a caller should name them.
    pub fn flat_features(&self) -> Vec<usize> {
        (0..self.features.len())
            .filter(|&j| self.features[j].flat)
            .collect()
    }
}

/// The file of a forecast model inside its directory (an entity's, see
/// [`crate::model::entities`]).
pub const FORECAST_FILE: &str = "forecast.json";

impl ForecastModel {
    /// Writes the model to `dir/`[`FORECAST_FILE`], creating `dir`. A model that
    /// [`ForecastModel::load`] would refuse (a non-finite weight, vectors of the wrong
    /// length) is refused here, so that no file is written that cannot be read back.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        let path = dir.join(FORECAST_FILE);
        self.check().map_err(|problem| ModelError::Invalid {
            path: path.clone(),
            problem,
        })?;
        crate::model::write_json(dir, FORECAST_FILE, self)
    }

    /// Reads and checks `dir/`[`FORECAST_FILE`]: settings a detector can run with, and
    /// every feature's weights, threshold history and bars consistent with them and
    /// with the context columns.
    pub fn load(dir: &Path) -> Result<ForecastModel, ModelError> {
        let path = dir.join(FORECAST_FILE);
        let model: ForecastModel = crate::model::read_json(dir, FORECAST_FILE, "forecast model")?;
        model
            .check()
            .map_err(|problem| ModelError::Invalid { path, problem })?;
        Ok(model)
    }

    /// What is wrong with the model, if anything, in words.
    fn check(&self) -> Result<(), String> {
        let c = &self.config;
        let settings = [
            ("alpha", c.alpha),
            ("z_min", c.z_min),
            ("z_max", c.z_max),
            ("z_step", c.z_step),
            ("prune", c.prune),
            ("floor", c.floor),
            ("min_error", c.min_error),
        ];
        if let Some((name, v)) = settings.iter().find(|(_, v)| !v.is_finite()) {
            return Err(format!("setting {name} is {v}"));
        }
        if c.lags == 0 || c.refresh == 0 || !(c.alpha > 0.0 && c.alpha <= 1.0) {
            return Err("lags and refresh must be at least 1, alpha in (0, 1]".into());
        }
        if !(c.z_step > 0.0 && c.z_min <= c.z_max && (0.0..1.0).contains(&c.prune)) {
            return Err("the z range must be non-empty and prune in [0, 1)".into());
        }
        if self.features.is_empty() {
            return Err("no features".into());
        }
        if self.context > 0 && c.context_lags == 0 {
            return Err(format!(
                "{} context columns but context_lags 0",
                self.context
            ));
        }
        let context_len = self.context * c.context_lags;
        for (j, f) in self.features.iter().enumerate() {
            let coefs = match f.form {
                Form::Level => c.lags + 1,
                Form::Diff => c.lags,
                Form::Auto => return Err(format!("feature {j}: form auto is not a fitted form")),
            };
            if f.coef.len() != coefs {
                return Err(format!(
                    "feature {j}: {} lag weights, its form and {} lags need {coefs}",
                    f.coef.len(),
                    c.lags
                ));
            }
            if !(f.context_coef.is_empty() || f.context_coef.len() == context_len) {
                return Err(format!(
                    "feature {j}: {} context weights, {} columns of {} frames need {context_len}",
                    f.context_coef.len(),
                    self.context,
                    c.context_lags
                ));
            }
            if f.tail.len() > c.history {
                return Err(format!(
                    "feature {j}: a history of {} residuals, longer than {}",
                    f.tail.len(),
                    c.history
                ));
            }
            let vectors = f.coef.iter().chain(&f.context_coef).chain(&f.tail);
            if vectors.into_iter().any(|v| !v.is_finite()) {
                return Err(format!("feature {j}: a weight or residual is not finite"));
            }
            let scalars = [
                ("mean", f.mean),
                ("low", f.low),
                ("high", f.high),
                ("start", f.start),
                ("floor", f.floor),
                ("jump", f.jump),
                ("still", f.still),
            ];
            if let Some((name, v)) = scalars.iter().find(|(_, v)| !v.is_finite()) {
                return Err(format!("feature {j}: {name} is {v}"));
            }
            if !(0.0 <= f.low && f.low <= f.high) {
                return Err(format!(
                    "feature {j}: bars {} and {} are not 0 <= low <= high",
                    f.low, f.high
                ));
            }
            // infinite: a feature that never moved in training is never stuck
            if f.stuck_bar.is_nan() || f.stuck_bar <= 0.0 {
                return Err(format!(
                    "feature {j}: stuck bar {} is not positive",
                    f.stuck_bar
                ));
            }
            // NaN: too little training data to judge the forecaster
            if f.holdout.is_infinite() {
                return Err(format!("feature {j}: hold-out error {}", f.holdout));
            }
        }
        Ok(())
    }
}

/// An f32 in JSON, infinities and NaN included: JSON has no such numbers (serde_json
/// writes them as `null`, which does not read back), and a fit has them
/// ([`FeatureFit::stuck_bar`] is infinite for a feature that never moved,
/// [`FeatureFit::holdout`] NaN when not judged), so they are the strings `"inf"`,
/// `"-inf"` and `"NaN"`. Finite values are plain numbers, which serde_json writes in
/// the shortest form that reads back to the same f32.
mod json_f32 {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
        match *v {
            v if v.is_finite() => s.serialize_f32(v),
            v if v.is_nan() => s.serialize_str("NaN"),
            v if v > 0.0 => s.serialize_str("inf"),
            _ => s.serialize_str("-inf"),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(f32),
        Name(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Number(v) => Ok(v),
            Repr::Name(name) => match name.as_str() {
                "inf" => Ok(f32::INFINITY),
                "-inf" => Ok(f32::NEG_INFINITY),
                "NaN" => Ok(f32::NAN),
                _ => Err(D::Error::custom(format!(
                    "{name:?} is not a number, \"inf\", \"-inf\" or \"NaN\""
                ))),
            },
        }
    }
}

/// Least squares with a ridge on the lag weights, by the normal equations and a
/// Cholesky factorisation in f64. Written out rather than taken from ndarray-linalg:
/// the system is `(p+1)²` with p ≈ 10, so LAPACK would buy nothing, and it would tie the
/// build to a system OpenBLAS that this machine lacks.
fn solve_ridge(ata: &mut [f64], atb: &mut [f64], n: usize) -> Option<()> {
    // in place: ata becomes L (lower), atb becomes the solution
    for j in 0..n {
        let mut d = ata[j * n + j];
        for k in 0..j {
            d -= ata[j * n + k] * ata[j * n + k];
        }
        if d <= 0.0 || !d.is_finite() {
            return None;
        }
        let d = d.sqrt();
        ata[j * n + j] = d;
        for i in j + 1..n {
            let mut s = ata[i * n + j];
            for k in 0..j {
                s -= ata[i * n + k] * ata[j * n + k];
            }
            ata[i * n + j] = s / d;
        }
    }
    for i in 0..n {
        let mut s = atb[i];
        for k in 0..i {
            s -= ata[i * n + k] * atb[k];
        }
        atb[i] = s / ata[i * n + i];
    }
    for i in (0..n).rev() {
        let mut s = atb[i];
        for k in i + 1..n {
            s -= ata[k * n + i] * atb[k];
        }
        atb[i] = s / ata[i * n + i];
    }
    Some(())
}

/// The `q` quantile of `v` (sorted copy, nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_unstable_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * q).round() as usize]
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// The context of the training rows as the forecasts weigh it: `frames` rows ending at
/// the forecast one, of the columns that moved in training (`active`).
struct Context<'a> {
    /// Row-major, `cols` columns; empty without context.
    rows: &'a [f32],
    cols: usize,
    frames: usize,
    /// The columns that are not constant over the training rows: only they get weights
    /// (a constant column is the intercept again and would only be shrunk to 0).
    active: Vec<usize>,
}

impl<'a> Context<'a> {
    fn of(rows: &'a [f32], cols: usize, frames: usize) -> Context<'a> {
        let active = (0..cols)
            .filter(|&c| {
                let first = rows[c];
                rows.iter().skip(c).step_by(cols).any(|&v| v != first)
            })
            .collect();
        Context {
            rows,
            cols,
            frames: if cols > 0 { frames } else { 0 },
            active,
        }
    }

    /// The context frames that end at row `t`, oldest first (empty without context).
    fn window(&self, t: usize) -> &'a [f32] {
        if self.cols == 0 {
            return &[];
        }
        &self.rows[(t + 1 - self.frames) * self.cols..(t + 1) * self.cols]
    }

    /// The first row whose context window is whole.
    fn first(&self) -> usize {
        self.frames.saturating_sub(1)
    }
}

/// Ridge least squares of `s[t]` on `s[t-q..t]`, the context frames that end at row
/// `t + off` of `ctx`, and an intercept: the weights of the lags (oldest first) then the
/// intercept, and the context weights (frame by frame, every context column; 0 for the
/// columns that never moved).
fn regress(s: &[f64], q: usize, ctx: &Context, off: usize, ridge: f64) -> (Vec<f64>, Vec<f64>) {
    let extra = ctx.active.len() * ctx.frames;
    let dim = q + extra + 1;
    let mut ata = vec![0f64; dim * dim];
    let mut atb = vec![0f64; dim];
    let mut z = vec![1f64; dim];
    let start = q.max(ctx.first().saturating_sub(off));
    for t in start..s.len() {
        z[..q].copy_from_slice(&s[t - q..t]);
        if extra > 0 {
            let w = ctx.window(t + off);
            let mut i = q;
            for frame in w.chunks_exact(ctx.cols) {
                for &c in &ctx.active {
                    z[i] = frame[c] as f64;
                    i += 1;
                }
            }
        }
        for i in 0..dim {
            atb[i] += z[i] * s[t];
            for k in 0..=i {
                ata[i * dim + k] += z[i] * z[k];
            }
        }
    }
    for i in 0..dim {
        for k in i + 1..dim {
            ata[i * dim + k] = ata[k * dim + i];
        }
    }
    let scale = (0..dim).map(|i| ata[i * dim + i]).sum::<f64>() / dim as f64;
    let lambda = ridge * scale.max(f64::MIN_POSITIVE);
    for i in 0..q + extra {
        ata[i * dim + i] += lambda;
    }
    // not positive definite even with the ridge (the intercept's diagonal prevents it,
    // but never panic on data): forecast no change
    let solved = solve_ridge(&mut ata, &mut atb, dim).is_some();
    let mut coef = vec![0.0; q + 1];
    let mut context = vec![0.0; ctx.cols * ctx.frames];
    if solved {
        coef[..q].copy_from_slice(&atb[..q]);
        coef[q] = atb[dim - 1];
        for l in 0..ctx.frames {
            for (a, &c) in ctx.active.iter().enumerate() {
                context[l * ctx.cols + c] = atb[q + l * ctx.active.len() + a];
            }
        }
    }
    (coef, context)
}

/// A feature's forecaster: what it forecasts from, its training mean, its lag weights
/// and intercept, and its context weights.
struct Forecaster {
    form: Form,
    mean: f32,
    coef: Vec<f32>,
    context: Vec<f32>,
}

impl Forecaster {
    /// The forecaster of `x` in `form` (level or diff) with `p` lags and `ctx`.
    fn fit(x: &[f64], form: Form, p: usize, ridge: f64, ctx: &Context) -> Forecaster {
        let (mean, _) = mean_std(x);
        let (coef, context) = match form {
            Form::Diff => {
                // d[i] = x[i + 1] - x[i]: its context ends at row i + 1
                let d: Vec<f64> = x.windows(2).map(|w| w[1] - w[0]).collect();
                regress(&d, p - 1, ctx, 1, ridge)
            }
            _ => {
                let c: Vec<f64> = x.iter().map(|v| v - mean).collect();
                regress(&c, p, ctx, 0, ridge)
            }
        };
        let f32s = |v: Vec<f64>| v.iter().map(|&v| v as f32).collect();
        Forecaster {
            form,
            mean: mean as f32,
            coef: f32s(coef),
            context: f32s(context),
        }
    }

    /// `|x[p] - forecast|` for a window of `p + 1` values, oldest first, and the
    /// context frames that end with it.
    #[inline]
    fn residual(&self, window: &[f32], context: &[f32]) -> f32 {
        residual(
            window,
            self.form,
            self.mean,
            &self.coef,
            &self.context,
            context,
        )
    }
}

/// Mean absolute residual of a forecaster over `x[from..]`.
fn holdout_error(x: &[f32], from: usize, f: &Forecaster, p: usize, ctx: &Context) -> f64 {
    let n = x.len() - from;
    (from..x.len())
        .map(|t| f.residual(&x[t - p..=t], ctx.window(t)) as f64)
        .sum::<f64>()
        / n.max(1) as f64
}

fn fit_feature(x: &[f64], ctx: &Context, config: &ForecastConfig) -> FeatureFit {
    let p = config.lags;
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let none = Context::of(&[], 0, 0);
    // fit on the first three quarters, judge on the last: training data only
    let cut = x.len() * 3 / 4;
    let judged = cut >= 2 * (p + 1) + 10 + ctx.frames && x.len() - cut >= p + 10;
    let err = |form, ctx: &Context| {
        let f = Forecaster::fit(&x[..cut], form, p, config.ridge, ctx);
        holdout_error(&x32, cut, &f, p, ctx)
    };
    let form = match config.form {
        Form::Auto if !judged => Form::Diff,
        Form::Auto => {
            if err(Form::Level, &none) < err(Form::Diff, &none) {
                Form::Level
            } else {
                Form::Diff
            }
        }
        f => f,
    };
    // the context is weighed only where it forecasts the held-out quarter of the
    // training data better than the value's own lags alone: more inputs always fit the
    // fitted rows better, not always the rows after them
    let alone = if judged { err(form, &none) } else { f64::NAN };
    let with = if judged && !ctx.active.is_empty() {
        err(form, ctx)
    } else {
        f64::INFINITY
    };
    let (ctx, holdout) = if with < alone {
        (ctx, with)
    } else {
        (&none, alone)
    };
    let f = Forecaster::fit(x, form, p, config.ridge, ctx);
    // smoothed absolute residuals over the training data, computed in f32 exactly as the
    // detector will, so that the thresholds fit the scores
    let mut smoothed = Vec::with_capacity(x.len() - p);
    let mut s = None;
    for t in p.max(ctx.first())..x32.len() {
        let e = f.residual(&x32[t - p..=t], ctx.window(t));
        let next = match s {
            None => e,
            Some(prev) => prev + config.alpha * (e - prev),
        };
        s = Some(next);
        smoothed.push(next as f64);
    }
    let mean = f.mean;
    let spread = quantile(x, 0.95) - quantile(x, 0.05);
    let flat = spread <= 0.0;
    // a flat feature has no spread to take a share of: its own size, at least 1
    let unit = if flat {
        (mean as f64).abs().max(1.0)
    } else {
        spread
    };
    let floor = (config.floor as f64 * unit).max(config.min_error as f64);
    let (low, high, eps) = thresholds(&smoothed, floor, config);
    let largest_change = x
        .windows(2)
        .map(|w| (w[1] - w[0]).abs())
        .fold(0.0, f64::max);
    let jump = (largest_change / (1.0 - config.prune as f64)).max(floor);
    let tail = smoothed[smoothed.len().saturating_sub(config.history)..]
        .iter()
        .map(|&v| v as f32)
        .collect();
    let (still, stuck_bar) = stuck_bar(x, spread, config);
    FeatureFit {
        form,
        mean,
        coef: f.coef,
        context_coef: if ctx.frames > 0 { f.context } else { vec![] },
        holdout: holdout as f32,
        still,
        stuck_bar,
        low: low as f32,
        high: high as f32,
        start: s.unwrap_or(0.0),
        floor: floor as f32,
        tail,
        floored: floor > eps,
        flat,
        jump: jump as f32,
    }
}

/// Epsilon (`low`, at least `floor`) and the bar an event must reach (`high`, epsilon
/// after pruning) over smoothed residuals `e`, and epsilon before the floor.
fn thresholds(e: &[f64], floor: f64, config: &ForecastConfig) -> (f64, f64, f64) {
    let eps = epsilon(e, config);
    let low = eps.max(floor);
    let normal_max = e.iter().copied().filter(|&v| v < low).fold(0.0, f64::max);
    let high = low.max(normal_max / (1.0 - config.prune as f64));
    (low, high, eps)
}

/// `|x[p] - forecast(x[..p], context)|` for a window of `p + 1` values, oldest first,
/// and the context frames that end with it (empty, or as many as `context_coef`).
#[inline]
fn residual(
    window: &[f32],
    form: Form,
    mean: f32,
    coef: &[f32],
    context_coef: &[f32],
    context: &[f32],
) -> f32 {
    let p = window.len() - 1;
    let mut from_context = 0f32;
    for (c, v) in context_coef.iter().zip(context) {
        from_context += c * v;
    }
    match form {
        Form::Diff => {
            // the last difference against the p - 1 before it
            let mut f = coef[p - 1] + from_context;
            for k in 0..p - 1 {
                f += coef[k] * (window[k + 1] - window[k]);
            }
            (window[p] - window[p - 1] - f).abs()
        }
        _ => {
            let mut f = coef[p] + from_context;
            for k in 0..p {
                f += coef[k] * (window[k] - mean);
            }
            (window[p] - mean - f).abs()
        }
    }
}

/// The stuck-detection bar of a feature with training values `x` and spread `spread`
/// (see [`ForecastConfig::stuck`]): the change at or under which it is still, and the
/// still frames in a row that flag it.
fn stuck_bar(x: &[f64], spread: f64, config: &ForecastConfig) -> (f32, f32) {
    if spread <= 0.0 {
        // it never moved in training: standing still is what it does
        return (0.0, f32::INFINITY);
    }
    // a millionth of the spread: a sensor that repeats its reading, not a slow one
    let still = spread * 1e-6;
    let (mut run, mut longest) = (0usize, 0usize);
    for w in x.windows(2) {
        if (w[1] - w[0]).abs() <= still {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    let bar = (longest as f64 / (1.0 - config.prune as f64)).max(config.stuck_min as f64);
    (still as f32, bar as f32)
}

/// Telemanom's epsilon: over `z`, the `mean + z·std` that most reduces the mean and
/// the spread of the errors below it, per anomalous point and squared sequence count,
/// with at most 5 sequences and fewer than half the points over it; `z_max` when no `z`
/// isolates anything.
fn epsilon(e: &[f64], config: &ForecastConfig) -> f64 {
    let (mean, std) = mean_std(e);
    let mut best = (f64::NEG_INFINITY, mean + config.z_max as f64 * std);
    if std <= 0.0 {
        return mean;
    }
    let steps = ((config.z_max - config.z_min) / config.z_step).floor() as usize;
    for i in 0..=steps {
        let z = (config.z_min + i as f32 * config.z_step) as f64;
        let eps = mean + z * std;
        let below: Vec<f64> = e.iter().copied().filter(|&v| v < eps).collect();
        let above = e.len() - below.len();
        if above == 0 || below.is_empty() {
            continue;
        }
        let mut sequences = 0;
        let mut inside = false;
        for &v in e {
            let over = v >= eps;
            if over && !inside {
                sequences += 1;
            }
            inside = over;
        }
        let (m, s) = mean_std(&below);
        let score =
            ((mean - m) / mean + (std - s) / std) / ((sequences * sequences + above) as f64);
        if score >= best.0 && sequences <= 5 && above * 2 < e.len() {
            best = (score, eps);
        }
    }
    best.1
}

/// The detector of a [`ForecastModel`]'s features `features`: stateful (the smoothed
/// residual and whether an event is open, per feature).
#[derive(Clone, Debug)]
pub struct Forecast {
    model: Arc<ForecastModel>,
    features: Range<usize>,
    smoothed: Vec<f32>,
    open: Vec<bool>,
    /// Per feature: frames left to keep flagging after an event closed.
    held: Vec<usize>,
    /// Per feature: frames in a row that it has not moved (stuck detection).
    still: Vec<usize>,
    /// Per feature: the thresholds in force, `(low, high)`.
    bars: Vec<(f32, f32)>,
    /// Per feature: the recent smoothed residuals (dynamic thresholds only).
    history: Vec<std::collections::VecDeque<f32>>,
    /// Frames since the thresholds were last chosen.
    since: usize,
    /// Windows scored so far.
    seen: usize,
    /// The window whose last frame does not follow the frame before it (see
    /// [`Forecast::with_break_at`]).
    break_at: Option<usize>,
}

impl Forecast {
    /// The detector for features `features` of `model`, starting where training ended.
    /// A model with context ([`ForecastModel::context`] over 0) reads windows whose
    /// frames hold the features `features`, then the model's context columns.
    ///
    /// # Panics
    /// When `features` is not within the model's.
    pub fn new(model: Arc<ForecastModel>, features: Range<usize>) -> Forecast {
        assert!(
            features.end <= model.features.len(),
            "features {features:?} of a model of {}",
            model.features.len()
        );
        let smoothed = model.features[features.clone()]
            .iter()
            .map(|f| f.start)
            .collect();
        let fits = &model.features[features.clone()];
        Forecast {
            open: vec![false; features.len()],
            held: vec![0; features.len()],
            still: vec![0; features.len()],
            bars: fits.iter().map(|f| (f.low, f.high)).collect(),
            history: fits
                .iter()
                .map(|f| f.tail.iter().copied().collect())
                .collect(),
            since: 0,
            seen: 0,
            break_at: None,
            smoothed,
            model,
            features,
        }
    }
}

impl Forecast {
    /// Says that the last frame of window number `window` (counted from 0, from the
    /// first window this detector scores) does not follow the frame before it in time:
    /// another file begins there (evaluation warms the detector on the training file,
    /// then scores the test file). No jump is scored into it, since the change from
    /// the previous file's last frame is no change of the signal.
    pub fn with_break_at(mut self, window: usize) -> Forecast {
        self.break_at = Some(window);
        self
    }
}

impl Detector for Forecast {
    fn needs(&self) -> Needs {
        Needs {
            window: self.model.window(),
            stride: Some(1),
            stateful: true,
        }
    }

    fn features(&self) -> Range<usize> {
        self.features.clone()
    }

    fn score(&mut self, windows: &[f32]) -> Scores {
        let (w, width) = (self.model.window(), self.features.len());
        // each frame: the scored features, then the context columns (inputs only)
        let (row, context) = (width + self.model.context, self.model.context);
        let per_window = w * row;
        let b = windows.len().checked_div(per_window).unwrap_or(0);
        assert_eq!(windows.len(), b * per_window, "batch is not whole windows");
        let config = &self.model.config;
        let alpha = config.alpha;
        let p = config.lags;
        let context_frames = if context > 0 { config.context_lags } else { 0 };
        let fits = &self.model.features[self.features.clone()];
        let mut scores = vec![0f32; b * width];
        let mut column = vec![0f32; w];
        let mut ctx = vec![0f32; context_frames * context];
        for (x, out) in windows
            .chunks_exact(per_window.max(1))
            .zip(scores.chunks_exact_mut(width.max(1)))
        {
            for (k, frame) in x[(w - context_frames) * row..]
                .chunks_exact(row)
                .enumerate()
            {
                ctx[k * context..(k + 1) * context].copy_from_slice(&frame[width..]);
            }
            let boundary = self.break_at == Some(self.seen);
            for (j, fit) in fits.iter().enumerate() {
                for (k, v) in column.iter_mut().enumerate() {
                    *v = x[k * row + j];
                }
                let own = if fit.context_coef.is_empty() {
                    &[][..]
                } else {
                    &ctx[..]
                };
                let e = residual(
                    &column[w - 1 - p..],
                    fit.form,
                    fit.mean,
                    &fit.coef,
                    &fit.context_coef,
                    own,
                );
                let s = &mut self.smoothed[j];
                *s += alpha * (e - *s);
                let (low, high) = self.bars[j];
                let open = &mut self.open[j];
                *open = if *open { *s >= low } else { *s >= high };
                let mut z = *s / high.max(f32::MIN_POSITIVE);
                let step = (column[w - 1] - column[w - 2]).abs();
                if config.jump && !boundary {
                    let zj = step / fit.jump.max(f32::MIN_POSITIVE);
                    // NaN-safe: a NaN step compares false and leaves z as it was
                    if zj > z {
                        z = zj;
                    }
                }
                if config.stuck {
                    let run = &mut self.still[j];
                    // a new file starts no still run from the last one's value
                    *run = if step <= fit.still && !boundary {
                        *run + 1
                    } else {
                        0
                    };
                    let zs = *run as f32 / fit.stuck_bar;
                    if zs > z {
                        z = zs;
                    }
                }
                let flagged = *open || z >= 1.0;
                let held = &mut self.held[j];
                out[j] = if flagged {
                    *held = config.hold;
                    z.max(1.0)
                } else if *held > 0 {
                    *held -= 1;
                    z.max(1.0)
                } else {
                    z
                };
                if config.history > 0 {
                    let h = &mut self.history[j];
                    if h.len() == config.history {
                        h.pop_front();
                    }
                    h.push_back(*s);
                }
            }
            self.since += 1;
            self.seen += 1;
            if config.history > 0 && self.since >= config.refresh {
                // Telemanom's dynamic threshold: chosen again over the recent errors
                self.since = 0;
                for (j, fit) in fits.iter().enumerate() {
                    let h: Vec<f64> = self.history[j].iter().map(|&v| v as f64).collect();
                    let (low, high, _) = thresholds(&h, fit.floor as f64, config);
                    self.bars[j] = (low as f32, high as f32);
                }
            }
        }
        Scores::All(scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::cpu_scores as scores;

    /// Windows of `w` frames, stride 1, over one feature.
    fn windows(x: &[f32], w: usize) -> Vec<f32> {
        x.windows(w).flatten().copied().collect()
    }

    /// A noisy AR(1) series from a fixed linear congruential generator.
    fn ar1(n: usize, phi: f32, seed: u64) -> Vec<f32> {
        let mut state = seed;
        let mut v = 0f32;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5;
                v = phi * v + u;
                v
            })
            .collect()
    }

    /// The least-squares solve recovers an exact linear recurrence.
    #[test]
    fn fits_a_recurrence() {
        let x: Vec<f32> = ar1(3000, 0.8, 7);
        let config = ForecastConfig {
            form: Form::Level,
            lags: 2,
            ridge: 0.0,
            ..ForecastConfig::default()
        };
        let m = ForecastModel::fit(&x, 1, config).unwrap();
        let c = &m.features[0].coef;
        assert!((c[1] - 0.8).abs() < 0.05 && c[0].abs() < 0.05, "{c:?}");
        // 2x2 by hand: [[4,2],[2,3]] x = [10, 8] → x = [1.75, 1.5]
        let (mut a, mut b) = (vec![4.0, 2.0, 2.0, 3.0], vec![10.0, 8.0]);
        solve_ridge(&mut a, &mut b, 2).unwrap();
        assert!(
            (b[0] - 1.75).abs() < 1e-12 && (b[1] - 1.5).abs() < 1e-12,
            "{b:?}"
        );
    }

    /// Quiet on more of its own kind of data, loud on a level shift, and the score grows
    /// with the size of the shift.
    #[test]
    fn quiet_on_normal_loud_on_shift() {
        let train = ar1(4000, 0.9, 1);
        let m = Arc::new(ForecastModel::fit(&train, 1, ForecastConfig::default()).unwrap());
        let w = m.window();
        let test = ar1(3000, 0.9, 2);
        let mut d = Forecast::new(Arc::clone(&m), 0..1);
        let s = scores(&mut d, &windows(&test, w));
        let flagged = s.iter().filter(|&&z| z >= 1.0).count();
        assert!(
            flagged < 30,
            "{flagged} of {} normal windows flagged",
            s.len()
        );
        let mut peaks = Vec::new();
        for size in [4.0f32, 8.0, 16.0] {
            let mut shifted = test.clone();
            for v in &mut shifted[1500..1700] {
                *v += size;
            }
            let mut d = Forecast::new(Arc::clone(&m), 0..1);
            let s = scores(&mut d, &windows(&shifted, w));
            let peak = s[1490..1720].iter().copied().fold(0f32, f32::max);
            assert!(peak >= 1.0, "shift {size}: peak {peak}");
            peaks.push(peak);
        }
        assert!(peaks[0] < peaks[1] && peaks[1] < peaks[2], "{peaks:?}");
    }

    /// With a history the residual thresholds follow a stream whose errors grew for good
    /// (as Telemanom's do); without, the training thresholds keep flagging it. The jump
    /// bar is the training data's and does not follow (see [`ForecastConfig::jump`]):
    /// it is off here.
    #[test]
    fn dynamic_thresholds_follow_the_stream() {
        let train = ar1(4000, 0.9, 1);
        let louder: Vec<f32> = ar1(8000, 0.9, 2).iter().map(|v| v * 3.0).collect();
        let flagged_late = |history: usize| {
            let config = ForecastConfig {
                history,
                jump: false,
                ..ForecastConfig::default()
            };
            let m = Arc::new(ForecastModel::fit(&train, 1, config).unwrap());
            let w = m.window();
            let s = scores(&mut Forecast::new(m, 0..1), &windows(&louder, w));
            s[s.len() - 3000..].iter().filter(|&&z| z >= 1.0).count()
        };
        let (fixed, dynamic) = (flagged_late(0), flagged_late(2100));
        assert!(fixed > 2000, "fixed thresholds flag {fixed} of 3000");
        assert!(dynamic < 300, "dynamic thresholds flag {dynamic} of 3000");
    }

    /// A flat training feature gets a threshold from the floor, not 0: the same flat
    /// line later is not flagged, a move is.
    #[test]
    fn flat_training_gets_a_floor() {
        let mut train = vec![0.25f32; 500];
        train.extend(ar1(500, 0.5, 3));
        // column 0 flat, column 1 noisy: rows interleaved
        let rows: Vec<f32> = (0..500).flat_map(|r| [train[r], train[500 + r]]).collect();
        let m = Arc::new(ForecastModel::fit(&rows, 2, ForecastConfig::default()).unwrap());
        assert_eq!(m.flat_features(), vec![0]);
        assert!(m.features[0].low > 0.0 && m.features[0].floored);
        let w = m.window();
        let mut d = Forecast::new(Arc::clone(&m), 0..1);
        let s = scores(&mut d, &windows(&[0.25f32; 300], w));
        assert!(s.iter().all(|&z| z < 1.0), "{s:?}");
        let mut moved = vec![0.25f32; 100];
        moved.extend(vec![5.0f32; 200]);
        let s = scores(&mut d, &windows(&moved, w));
        assert!(s.iter().any(|&z| z >= 1.0));
    }

    /// A step larger than any change of the training data is flagged at its onset, on
    /// the frame it happens (the EWMA alone would dilute a one-frame step 50-fold), but
    /// not where another file begins.
    #[test]
    fn level_shift_onset_is_flagged_at_once() {
        let train = ar1(4000, 0.9, 1);
        let largest = train
            .windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0f32, f32::max);
        let m = Arc::new(ForecastModel::fit(&train, 1, ForecastConfig::default()).unwrap());
        let w = m.window();
        let mut test = ar1(600, 0.9, 2);
        for v in &mut test[300..] {
            *v += 2.0 * largest;
        }
        let onset = 300 - (w - 1);
        let s = scores(&mut Forecast::new(Arc::clone(&m), 0..1), &windows(&test, w));
        assert!(s[onset] >= 1.0, "onset scored {}", s[onset]);
        assert!(
            s[..onset].iter().all(|&z| z < 1.0),
            "flagged before the step"
        );
        let without = ForecastConfig {
            jump: false,
            ..ForecastConfig::default()
        };
        let plain = Arc::new(ForecastModel::fit(&train, 1, without).unwrap());
        let s = scores(&mut Forecast::new(plain, 0..1), &windows(&test, w));
        assert!(
            s[onset] < 1.0,
            "the smoothed residual alone flags the onset"
        );
        let d = Forecast::new(m, 0..1).with_break_at(onset);
        let s = scores(&mut d.clone(), &windows(&test, w));
        assert!(s[onset] < 1.0, "a file boundary is no jump: {}", s[onset]);
    }

    /// A value driven by a context column (a command) is forecast from it: the context
    /// gets weights, and a command's step is no residual, which it is for the value's
    /// lags alone. A context column that never moves gets none.
    #[test]
    fn context_columns_are_inputs() {
        let noise = ar1(4000, 0.0, 9);
        // a command that switches now and then (the sign of a slow AR(1)), the value
        // following it at once
        let command: Vec<f32> = ar1(4000, 0.99, 5)
            .iter()
            .map(|&v| (v > 0.0) as u8 as f32)
            .collect();
        let value: Vec<f32> = (0..4000)
            .map(|t| 5.0 * command[t] + 0.1 * noise[t])
            .collect();
        let ctx: Vec<f32> = command.iter().flat_map(|&c| [c, 1.0]).collect();
        // the training thresholds, fixed: what is compared here is the forecasts
        let config = ForecastConfig {
            context_lags: 2,
            history: 0,
            ..ForecastConfig::default()
        };
        let with = ForecastModel::fit_with_context(&value, 1, &ctx, 2, config).unwrap();
        assert_eq!(with.context, 2);
        let c = &with.features[0].context_coef;
        assert_eq!(c.len(), 4, "two frames of two columns");
        // the constant column gets no weight, the command now-frame nearly 5
        assert!(c[1] == 0.0 && c[3] == 0.0, "{c:?}");
        assert!((c[2] - 5.0).abs() < 1.0, "{c:?}");
        let without = ForecastModel::fit(&value, 1, config).unwrap();
        assert!(without.features[0].context_coef.is_empty());
        // the forecast errors without the command are its steps: a threshold 5 times
        // higher
        assert!(5.0 * with.features[0].high < without.features[0].high);
        // the value steps by 1 while its command stays at 0: only the forecaster that
        // knows the command sees a departure
        let flagged = |m: ForecastModel, with_context: bool| {
            let w = m.window();
            let rows: Vec<f32> = (0..2000)
                .flat_map(|t| {
                    let v = if t >= 1000 { 1.0 } else { 0.0 } + 0.1 * noise[t];
                    if with_context {
                        vec![v, 0.0, 1.0]
                    } else {
                        vec![v]
                    }
                })
                .collect();
            let width = rows.len() / 2000;
            let win: Vec<f32> = rows
                .windows(w * width)
                .step_by(width)
                .flatten()
                .copied()
                .collect();
            let s = scores(&mut Forecast::new(Arc::new(m), 0..1), &win);
            let share = |r: Range<usize>| {
                let n = r.len();
                r.filter(|&row| s[row + 1 - w] >= 1.0).count() as f64 / n as f64
            };
            (share(w..1000), share(1100..1500))
        };
        let (a, b) = (flagged(with, true), flagged(without, false));
        assert!(a.0 == 0.0 && a.1 > 0.9, "with context: {a:?}");
        assert!(b.1 < 0.1, "without context: {b:?}");
    }

    /// A value that stops moving where its training data always moved is flagged once it
    /// stands still for longer than the bar, its score growing with the run; a feature
    /// whose training never moved is never stuck; off, it is not flagged.
    #[test]
    fn stuck_values_are_flagged_the_longer_the_higher() {
        let train = ar1(4000, 0.5, 11);
        let config = ForecastConfig {
            stuck: true,
            ..ForecastConfig::default()
        };
        let m = Arc::new(ForecastModel::fit(&train, 1, config).unwrap());
        assert_eq!(m.features[0].stuck_bar, config.stuck_min as f32);
        let w = m.window();
        let mut test = ar1(400, 0.5, 12);
        let held = test[200];
        for v in &mut test[200..260] {
            *v = held;
        }
        let s = scores(&mut Forecast::new(Arc::clone(&m), 0..1), &windows(&test, w));
        let at = |row: usize| s[row + 1 - w];
        assert!(at(205) < 1.0 && at(215) >= 1.0, "{} {}", at(205), at(215));
        assert!(at(215) < at(235) && at(235) < at(259), "grows with the run");
        assert!(s[..200 + 1 - w].iter().all(|&z| z < 1.0));
        let off = Arc::new(ForecastModel::fit(&train, 1, ForecastConfig::default()).unwrap());
        let s = scores(&mut Forecast::new(off, 0..1), &windows(&test, w));
        assert!(s[259 + 1 - w] < 1.0, "flagged without stuck detection");
        let flat = ForecastModel::fit(&[0.5f32; 500], 1, config).unwrap();
        assert!(flat.features[0].stuck_bar.is_infinite());
    }

    /// Partitions score as the whole does.
    #[test]
    fn any_split_gives_the_same_bits() {
        let a = ar1(1000, 0.7, 4);
        let b = ar1(1000, 0.3, 5);
        let rows: Vec<f32> = (0..1000).flat_map(|r| [a[r], b[r]]).collect();
        let m = Arc::new(ForecastModel::fit(&rows, 2, ForecastConfig::default()).unwrap());
        let w = m.window();
        let test: Vec<f32> = (0..300).flat_map(|r| [a[r] * 3.0, b[r]]).collect();
        let win: Vec<f32> = (0..300 - w + 1)
            .flat_map(|s| test[s * 2..(s + w) * 2].to_vec())
            .collect();
        let all = scores(&mut Forecast::new(Arc::clone(&m), 0..2), &win);
        let right_in: Vec<f32> = win.chunks(2).map(|f| f[1]).collect();
        let right = scores(&mut Forecast::new(Arc::clone(&m), 1..2), &right_in);
        for (k, z) in right.iter().enumerate() {
            assert_eq!(z.to_bits(), all[k * 2 + 1].to_bits());
        }
    }
}
