//! A pipeline that needs no trained weights: each feature's exponentially weighted mean
//! and variance, and an alert when a frame's value is `z` standard deviations away from
//! them. The model only names the features. Parameters: `alpha` (weight of the newest
//! value, default 0.05), `warmup` (frames learnt before scoring, default 30) and `z` (the
//! threshold, default 6; `--threshold` overrides it); `--window W` scores the mean of the
//! last W frames instead of each frame.

use timely::dataflow::Scope;

use crate::detect::{Ewma, EwmaConfig};
use crate::ops::{BatchOps, MergeOps, ScoreOps, SplitOps, ThresholdOps, Time, WindowOps};
use crate::runtime::{Env, Results};

/// Registry name.
pub const NAME: &str = "ewma";

/// source → split → window (stride 1) → batch → EWMA z-score → threshold `z` → merge.
pub fn build<'s>(scope: Scope<'s, Time>, env: &mut Env) -> anyhow::Result<Results<'s>> {
    let config = EwmaConfig {
        alpha: env.param("alpha", 0.05)?,
        warmup: env.param("warmup", 30)?,
        window: env.window_or(1),
    };
    anyhow::ensure!(
        config.alpha > 0.0 && config.alpha <= 1.0,
        "--param alpha={}: must be in (0, 1]",
        config.alpha
    );
    let z = env.param("z", 6.0)?;
    let detector = Ewma::new(env.features(scope), config);
    let windows = env.windows(&detector, 1)?;
    let (frames, live) = env.controlled_frames(scope);
    Ok(frames
        .split_features(env.layout(scope))
        .window(windows)
        .batch(env.batch_size_for(&detector, windows))
        .score(detector, env.stats())
        .threshold(env.cut_or(live.as_ref(), z))
        .merge_frames())
}
