//! Seed 004's PADIT rules: frames keyed by entity go whole to the worker that owns it;
//! windows of 30 frames every 6 (the seed's 300 s window extracted every 60 s, at its
//! adapters' 10 s interval; `--window`/`--stride` override) give each feature's
//! statistics (mean, std, p50/p95/p99, last value, and the stream's EWMA and CUSUM), and
//! the rules of the model directory's `rules.toml` test them. A frame whose window fires
//! a rule alerts with the rules' evidence and a severity (see [`crate::rules`]); the rule
//! file is reloaded while the run goes on when it changes. `--window 300s --stride 60s`
//! windows each entity by its frames' timestamps instead, as the seed does, each window
//! resampled to 30 slots (the last value before each slot's end). Parameters: `alpha` (the
//! EWMA's weight, the seed's 0.3), `cusum_alpha`, `cusum_k` and `cusum_warmup` (the
//! CUSUM's baseline weight, slack and warm-up, [`CusumConfig`]'s defaults).

use std::sync::Arc;

use timely::dataflow::Scope;

use crate::detect::CusumConfig;
use crate::live_file::LiveFile;
use crate::ops::{EventWindowOps, MergeOps, SplitEntitiesOps, Time, WindowConfig, WindowOps};
use crate::rules::{rules_file, RuleSet, RulesConfig, RulesOps};
use crate::runtime::{Env, Results};

/// Registry name.
pub const NAME: &str = "rules";

/// The seed's window: 300 s of metrics every 10 s.
pub const WINDOW: usize = 30;

/// The seed's extraction interval: 60 s, 6 metrics.
pub const STRIDE: usize = 6;

/// source → split by entity → window 30/6 → statistics → rules → merge.
pub fn build<'s>(scope: Scope<'s, Time>, env: &mut Env) -> anyhow::Result<Results<'s>> {
    let rules = Arc::new(LiveFile::<RuleSet>::open(&rules_file(&env.model)?)?);
    let defaults = CusumConfig::default();
    let config = RulesConfig {
        window: WindowConfig {
            size: env.window_or(WINDOW),
            stride: env.settings.stride.unwrap_or(STRIDE),
        },
        ewma_alpha: env.param("alpha", 0.3)?,
        cusum: CusumConfig {
            alpha: env.param("cusum_alpha", defaults.alpha)?,
            k: env.param("cusum_k", defaults.k)?,
            warmup: env.param("cusum_warmup", defaults.warmup)?,
            ..defaults
        },
    };
    for (key, alpha) in [("alpha", config.ewma_alpha), ("cusum_alpha", config.cusum.alpha)] {
        anyhow::ensure!(
            alpha > 0.0 && alpha <= 1.0,
            "--param {key}={alpha}: must be in (0, 1]"
        );
    }
    let k = config.cusum.k;
    anyhow::ensure!(k >= 0.0 && k.is_finite(), "--param cusum_k={k}: must be at least 0");
    // chosen once, here: by event time (the seed's 300 s every 60 s, `--window 300s
    // --stride 60s`), resampled to the window's slots, or by frame count
    let frames = env.frames(scope);
    let windows = match env.event_windows_of(config.window.size) {
        Some(time) => frames
            .split_entities_timed()
            .event_window(time, env.stats()),
        None => frames.split_entities().window(config.window),
    };
    Ok(windows
        .evaluate_rules(rules, config, env.stats())
        .merge_frames())
}
