//! Seed 003's spacecraft telemetry: many entities (SMAP channels), each with its own
//! reconstruction model. Frames are keyed by entity and go whole to the worker that owns
//! it; windows of 30 frames every 10 (`--stride` overrides) are scored by the entity's
//! PCA model ([`crate::detect::Pca`]; the default model for an entity without one), on the
//! first values of each frame that the model was fitted on (SMAP: the telemetry value,
//! column 0; the command flags after it are context). A score is the window's
//! reconstruction error over the feature's training maximum: it alerts at 1
//! (`--threshold` overrides).
//!
//! With `--window 30s` the windows are of event time instead (see
//! [`crate::ops::EventWindowOps`]): per entity, resampled to the model's window length.
//!
//! Its models are a directory of per-entity models (`tidewatch train --data DIR`); the
//! shipped one is `models/telemetry`.

use std::sync::Arc;

use timely::dataflow::operators::core::Map;
use timely::dataflow::Scope;

use crate::detect::{Detector, Pca, PcaModel};
use crate::ops::{
    EventWindowOps, MergeOps, ScoreEntitiesOps, SplitEntitiesOps, ThresholdOps, Time, WindowOps,
};
use crate::runtime::{Env, Results};

/// Registry name.
pub const NAME: &str = "telemetry";

/// Seed 003's stride: a window every 10 frames of an entity.
pub const STRIDE: usize = 10;

/// source → split by entity → first values → window 30/10 (or of event time) → the
/// entity's PCA → threshold 1 → merge.
pub fn build<'s>(scope: Scope<'s, Time>, env: &mut Env) -> anyhow::Result<Results<'s>> {
    let models = Arc::new(env.entity_models(scope, PcaModel::load)?);
    let values = models.default_model().features.len();
    anyhow::ensure!(
        values <= env.model.n_features(),
        "the per-entity models score {values} values, the frames have {}",
        env.model.n_features()
    );
    let detector = Pca::new(Arc::clone(models.default_model()), 0..values);
    let detector_for = move |key| {
        let model = Arc::clone(models.get(key));
        Box::new(Pca::new(model, 0..values)) as Box<dyn Detector>
    };
    let (frames, live) = env.controlled_frames(scope);
    // chosen once, here: the count-window chain never looks at timestamps
    let windows = match env.event_windows(&detector)? {
        Some(time) => frames
            .split_entities_timed()
            .map(|timed| {
                timed
                    .map(move |mut t| {
                        t.slice.values.truncate(values);
                        t
                    })
                    .container::<Vec<_>>()
            })
            .event_window(time, env.stats()),
        None => {
            let counts = env.windows(&detector, STRIDE)?;
            frames
                .split_entities()
                .map(|slices| {
                    slices
                        .map(move |mut s| {
                            s.values.truncate(values);
                            s
                        })
                        .container::<Vec<_>>()
                })
                .window(counts)
        }
    };
    Ok(windows
        .score_entities(detector_for, env.stats())
        .threshold(env.cut_or(live.as_ref(), 1.0))
        .merge_frames())
}
