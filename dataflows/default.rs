//! Seed 001's pipeline: every frame closes a sliding window of the model's length;
//! features are scored by the model's one-class SVM where they live, and only anomalies
//! travel to the merge. `--stride 10` gives seed 003's scheduling (a window every 10
//! frames, for slow telemetry; pair it with a model trained on longer windows).

use timely::dataflow::Scope;

use crate::ops::{BatchOps, MergeOps, ScoreOps, SplitOps, ThresholdOps, Time, WindowOps};
use crate::runtime::{Env, Results};

/// Registry name.
pub const NAME: &str = "default";

/// source → split by partition → window (stride 1) → batch → score → threshold → merge.
pub fn build<'s>(scope: Scope<'s, Time>, env: &mut Env) -> anyhow::Result<Results<'s>> {
    let detector = env.ocsvm(scope);
    let windows = env.windows(&detector, 1)?;
    let (frames, live) = env.controlled_frames(scope);
    Ok(frames
        .split_features(env.layout(scope))
        .window(windows)
        .batch(env.batch_size_for(&detector, windows))
        .score_under(detector, env.stats(), live.as_ref())
        .threshold(env.cut(live.as_ref()))
        .merge_frames())
}
