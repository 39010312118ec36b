//! The forecasting-residual detector of `tidewatch evaluate` ([`crate::detect::Forecast`],
//! Telemanom's dynamic threshold) on a stream: frames keyed by entity go whole to the
//! worker that owns it; every window of the model's length, stride 1 (the detector is
//! stateful: it sees each of an entity's frames once, in order), is scored by the
//! entity's forecaster (the default's for an entity without one). A frame's values are
//! its first columns, as many as the model scores; with context (SMAP's command flags)
//! the columns after them, as many as the model weighs, go to the forecaster as inputs,
//! never scored. Scores are the smoothed residual over the feature's bar: the verdict
//! threshold is 1 (`--threshold` overrides).
//!
//! Each entity's detector starts where its training data ended (the training residuals
//! as its threshold history), so a stream that continues the training data is scored
//! nearly as `evaluate` scores the test file after warming on the training file: the
//! stream cannot score its first `window - 1` frames, which `evaluate` scores with
//! windows that begin in the training rows, and those windows leave `evaluate`'s
//! smoothed residual and threshold history slightly apart from the stream's start (see
//! the README's parity figures).
//!
//! Its models are a directory of per-entity forecasters (`tidewatch train --kind forecast
//! --data DIR`).

use std::sync::Arc;

use anyhow::ensure;
use timely::dataflow::operators::core::Map;
use timely::dataflow::Scope;

use crate::detect::{Detector, Forecast, ForecastModel, FORECAST_FILE};
use crate::model::ModelError;
use crate::ops::{MergeOps, ScoreEntitiesOps, SplitEntitiesOps, ThresholdOps, Time, WindowOps};
use crate::runtime::{Env, Results};

/// Registry name.
pub const NAME: &str = "forecast";

/// source → split by entity → values and context → window (the model's length, stride
/// 1) → the entity's forecaster → threshold 1 → merge.
pub fn build<'s>(scope: Scope<'s, Time>, env: &mut Env) -> anyhow::Result<Results<'s>> {
    // every entity's windows are cut alike: a forecaster of another shape (from another
    // training run) is refused at start rather than fed windows it cannot read
    let shape = |m: &ForecastModel| (m.features.len(), m.context, m.window());
    let first = std::cell::Cell::new(None);
    let models = env.entity_models(scope, |dir| {
        let m = ForecastModel::load(dir)?;
        match first.get() {
            Some(expected) if expected != shape(&m) => Err(ModelError::Invalid {
                path: dir.join(FORECAST_FILE),
                problem: format!(
                    "(values, context columns, window) {:?}, other models of the directory {expected:?}",
                    shape(&m)
                ),
            }),
            _ => {
                first.set(Some(shape(&m)));
                Ok(m)
            }
        }
    })?;
    let models = Arc::new(models);
    let default = models.default_model();
    let values = default.features.len();
    let width = values + default.context;
    ensure!(
        width <= env.model.n_features(),
        "the forecasters read {values} values and {} context columns, the frames have {}",
        default.context,
        env.model.n_features()
    );
    let detector = Forecast::new(Arc::clone(default), 0..values);
    let detector_for = move |key| {
        let model = Arc::clone(models.get(key));
        Box::new(Forecast::new(model, 0..values)) as Box<dyn Detector>
    };
    let windows = env.windows(&detector, 1)?;
    let (frames, live) = env.controlled_frames(scope);
    Ok(frames
        .split_entities()
        .map(|slices| {
            slices
                .map(move |mut s| {
                    s.values.truncate(width);
                    s
                })
                .container::<Vec<_>>()
        })
        .window(windows)
        .score_entities(detector_for, env.stats())
        .threshold(env.cut_or(live.as_ref(), 1.0))
        .merge_frames())
}
