//! Seed 003's scheduling: a window every 10 frames instead of every frame, for slow
//! telemetry where scoring each step would only repeat the last verdict. Pair it with a
//! model trained on longer windows (seed 003 used 30 frames with stride 10).

use timely::dataflow::Scope;

use crate::ops::{BatchOps, MergeOps, ScoreOps, SplitOps, ThresholdOps, Time, WindowOps};
use crate::runtime::{Env, Results};

/// Registry name.
pub const NAME: &str = "strided";

/// Frames between the ends of consecutive windows, unless `--stride` says otherwise.
pub const STRIDE: usize = 10;

/// The default chain with windows every [`STRIDE`] frames.
pub fn build<'s>(scope: Scope<'s, Time>, env: &mut Env) -> anyhow::Result<Results<'s>> {
    Ok(env
        .frames(scope)
        .split_features(env.layout(scope))
        .window(env.window(STRIDE))
        .batch(env.batch_size())
        .score(env.scorer(scope), env.stats())
        .threshold(env.threshold())
        .merge_frames())
}
