//! Seed 001's pipeline: every frame closes a sliding window of the model's length;
//! features are scored where they live and only anomalies travel to the merge.

use timely::dataflow::Scope;

use crate::ops::{BatchOps, MergeOps, ScoreOps, SplitOps, ThresholdOps, Time, WindowOps};
use crate::runtime::{Env, Results};

/// Registry name.
pub const NAME: &str = "default";

/// source → split by partition → window (stride 1) → batch → score → threshold → merge.
pub fn build<'s>(scope: Scope<'s, Time>, env: &mut Env) -> anyhow::Result<Results<'s>> {
    Ok(env
        .frames(scope)
        .split_features(env.layout(scope))
        .window(env.window(1))
        .batch(env.batch_size())
        .score(env.scorer(scope), env.stats())
        .threshold(env.threshold())
        .merge_frames())
}
