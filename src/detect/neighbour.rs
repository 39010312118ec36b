//! Nearest-neighbour distance: a window of a feature's values is as anomalous as it is
//! far from every window seen before it, those of the training data and the stream's
//! own earlier ones (a left matrix-profile join, without z-normalising: telemetry's
//! levels matter, and a flat window has no shape to normalise).
//!
//! - The threshold is the largest distance of a training window to its nearest other
//!   training window that does not overlap it, so training data never alert, with the
//!   floor (`floor` of the range of the feature's training values, and at least
//!   `min_distance`) for a training feature that barely moved.
//! - A window is compared with the stream's earlier windows that end at least `window`
//!   values before it (they do not overlap it), so a new pattern alerts the first time
//!   and not each time it recurs: a regime the training data lacked raises one event,
//!   not one per repetition. At most `memory` of the stream's values are kept.
//! - The distance is the root mean square difference of the two windows; the search
//!   abandons a candidate as soon as its partial sum exceeds the best so far.

use std::ops::Range;
use std::sync::Arc;

use serde::Serialize;

use super::{Detector, Needs, Scores};

/// How a [`NeighbourModel`] is fitted and run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct NeighbourConfig {
    /// Values per window (seed 003's windows of 30, as [`super::PcaConfig`]'s).
    pub window: usize,
    /// Floor on the threshold as a share of the feature's training spread.
    pub floor: f32,
    /// The stream's values kept per feature for comparison (the oldest go first).
    pub memory: usize,
    /// Absolute floor on the threshold, in the data's units (as the forecaster's
    /// `min_error`, Telemanom's rule that a departure under 0.05 of data scaled to
    /// [-1, 1] is none; 0: none).
    pub min_distance: f32,
}

impl Default for NeighbourConfig {
    fn default() -> Self {
        NeighbourConfig {
            window: 30,
            floor: 0.05,
            memory: 20_000,
            min_distance: 0.0,
        }
    }
}

/// One feature's training values and threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct NeighbourFit {
    /// The training values, in order: every window of them is a reference.
    pub train: Vec<f32>,
    /// Distance at which a window alerts.
    pub threshold: f32,
    /// Whether the floor set the threshold.
    pub floored: bool,
}

/// Fitted nearest-neighbour references per feature.
#[derive(Clone, Debug, PartialEq)]
pub struct NeighbourModel {
    /// The settings it was fitted with.
    pub config: NeighbourConfig,
    /// One fit per feature.
    pub features: Vec<NeighbourFit>,
}

/// Values compared between two checks against the best distance so far: one vector of
/// eight lanes, which the compiler keeps in a register.
const LANES: usize = 8;

/// Squared distance of `a` and `b` (equal lengths), or `None` as soon as it exceeds
/// `best` (early abandoning: most candidates are far, and are dropped after a few
/// lanes). A departure too large for f32 squares to infinity, which still sorts above
/// every finite distance.
fn within(a: &[f32], b: &[f32], best: f32) -> Option<f32> {
    let mut sum = 0f32;
    let (head_a, tail_a) = a.split_at(a.len() / LANES * LANES);
    let (head_b, tail_b) = b.split_at(head_a.len());
    for (ca, cb) in head_a.chunks_exact(LANES).zip(head_b.chunks_exact(LANES)) {
        let mut lane = [0f32; LANES];
        for k in 0..LANES {
            let d = ca[k] - cb[k];
            lane[k] = d * d;
        }
        sum += lane.iter().sum::<f32>();
        if sum > best {
            return None;
        }
    }
    for (&x, &y) in tail_a.iter().zip(tail_b) {
        let d = x - y;
        sum += d * d;
    }
    (sum <= best).then_some(sum)
}

/// The least squared distance of `query` to the windows of `series` whose last values
/// are at `ends`, or `best` if none is nearer.
fn nearest(query: &[f32], series: &[f32], ends: Range<usize>, mut best: f32) -> f32 {
    let w = query.len();
    for end in ends {
        if let Some(d) = within(query, &series[end + 1 - w..=end], best) {
            best = d;
        }
    }
    best
}

/// The unit of the threshold's floor for a feature's training values `x`: the range
/// they span, or for a flat feature the size of its value, at least 1. The range, not
/// [`super::Pca`]'s 5th-to-95th-percentile spread: telemetry channels sit on a few
/// levels and visit some of them rarely, and a window is compared with windows, so
/// every level the training data reached counts.
pub(super) fn range_unit(x: &[f32]) -> f32 {
    let (lo, hi) = x
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if hi > lo {
        hi - lo
    } else {
        x.first().map_or(1.0, |v| v.abs().max(1.0))
    }
}

fn fit_feature(x: &[f32], config: &NeighbourConfig) -> NeighbourFit {
    let w = config.window;
    let n = x.len() - w + 1;
    // each training window's nearest training window that does not overlap it
    let mut largest = 0f32;
    for s in 0..n {
        let q = &x[s..s + w];
        // windows ending at s - 1 or before, or starting at s + w or after
        let before = if s >= w {
            nearest(q, x, w - 1..s, f32::INFINITY)
        } else {
            f32::INFINITY
        };
        let best = nearest(q, x, (s + 2 * w - 1).min(x.len())..x.len(), before);
        if best.is_finite() {
            largest = largest.max(best);
        }
    }
    let max_distance = (largest / w as f32).sqrt();
    let floor = (config.floor * range_unit(x)).max(config.min_distance);
    NeighbourFit {
        train: x.to_vec(),
        threshold: max_distance.max(floor),
        floored: floor > max_distance,
    }
}

impl NeighbourModel {
    /// Fits every column of `train` (row-major, `cols` columns).
    pub fn fit(
        train: &[f32],
        cols: usize,
        config: NeighbourConfig,
    ) -> anyhow::Result<NeighbourModel> {
        let features = super::fit_columns(train, cols, config.window, |x| fit_feature(x, &config))?;
        Ok(NeighbourModel { config, features })
    }
}

/// The detector of a [`NeighbourModel`]'s features `features`: stateful (it keeps the
/// stream's values, to compare each window with the earlier ones); scores a window's
/// distance to its nearest earlier window over the feature's threshold (1: alert).
#[derive(Clone, Debug)]
pub struct Neighbour {
    model: Arc<NeighbourModel>,
    features: Range<usize>,
    /// Per feature, the stream's values so far (at most about twice `memory`).
    seen: Vec<Vec<f32>>,
    /// Windows scored so far.
    windows: usize,
    /// Windows before this one are warm-up: neither scored nor kept.
    start: usize,
}

impl Neighbour {
    /// The detector for features `features` of `model`.
    ///
    /// # Panics
    /// When `features` is not within the model's.
    pub fn new(model: Arc<NeighbourModel>, features: Range<usize>) -> Neighbour {
        assert!(
            features.end <= model.features.len(),
            "features {features:?}"
        );
        Neighbour {
            seen: vec![Vec::new(); features.len()],
            model,
            features,
            windows: 0,
            start: 0,
        }
    }

    /// Skips the first `window` windows (scored 0, not kept): when the stream replays
    /// the training data first, as `evaluate` does, they are the references already.
    pub fn starting_at(mut self, window: usize) -> Neighbour {
        self.start = window;
        self
    }
}

impl Detector for Neighbour {
    fn needs(&self) -> Needs {
        Needs {
            window: self.model.config.window,
            stride: Some(1),
            stateful: true,
        }
    }

    fn features(&self) -> Range<usize> {
        self.features.clone()
    }

    fn score(&mut self, windows: &[f32]) -> Scores {
        let config = self.model.config;
        let (w, width) = (config.window, self.features.len());
        let per_window = w * width;
        let b = windows.len().checked_div(per_window).unwrap_or(0);
        assert_eq!(windows.len(), b * per_window, "batch is not whole windows");
        let fits = &self.model.features[self.features.clone()];
        let mut scores = vec![0f32; b * width];
        let mut column = vec![0f32; w];
        for (x, out) in windows
            .chunks_exact(per_window.max(1))
            .zip(scores.chunks_exact_mut(width.max(1)))
        {
            let index = self.windows;
            self.windows += 1;
            if index < self.start {
                continue;
            }
            for (j, fit) in fits.iter().enumerate() {
                for (k, v) in column.iter_mut().enumerate() {
                    *v = x[k * width + j];
                }
                let seen = &mut self.seen[j];
                if seen.is_empty() {
                    seen.extend_from_slice(&column[..w - 1]);
                }
                seen.push(column[w - 1]);
                let train = &fit.train;
                let best = nearest(&column, train, w - 1..train.len(), f32::INFINITY);
                // the stream's windows that end a whole window before this one's end
                let now = seen.len() - 1;
                let best = match now.checked_sub(w) {
                    Some(last) if last + 1 >= w => nearest(&column, seen, w - 1..last + 1, best),
                    _ => best,
                };
                let distance = (best / w as f32).sqrt();
                let score = distance / fit.threshold.max(f32::MIN_POSITIVE);
                // a non-finite value (NaN, or a square past f32) is as far as can be
                out[j] = if score.is_finite() { score } else { f32::MAX };
                if seen.len() > 2 * config.memory.max(w) {
                    let drop = seen.len() - config.memory.max(w);
                    seen.drain(..drop);
                }
            }
        }
        Scores::All(scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::cpu_scores as all;

    /// Training windows never alert (the threshold is their largest distance); a kink
    /// alerts and a bigger one scores higher; a flat feature gets a floor, not 0.
    #[test]
    fn training_windows_pass_kinks_alert_and_grow() {
        let x: Vec<f32> = (0..600).map(|t| (t as f32 * 0.3).sin()).collect();
        let config = NeighbourConfig {
            window: 10,
            floor: 0.0,
            ..NeighbourConfig::default()
        };
        let m = Arc::new(NeighbourModel::fit(&x, 1, config).unwrap());
        let threshold = m.features[0].threshold;
        assert!(threshold > 0.0 && threshold < 0.05, "{threshold}");
        let mut d = Neighbour::new(Arc::clone(&m), 0..1);
        let windows: Vec<f32> = x.windows(10).flatten().copied().collect();
        assert!(all(&mut d, &windows).iter().all(|&s| s <= 1.0));
        let mut peaks = Vec::new();
        for kink in [1.0f32, 2.0, 1e30] {
            let mut d = Neighbour::new(Arc::clone(&m), 0..1);
            let mut w = x[100..110].to_vec();
            w[9] += kink;
            let s = all(&mut d, &w)[0];
            assert!(s > 1.0, "kink {kink}: {s}");
            peaks.push(s);
        }
        assert!(peaks[0] < peaks[1] && peaks[1] < peaks[2], "{peaks:?}");

        let config = NeighbourConfig {
            floor: 0.05,
            ..config
        };
        let flat = NeighbourModel::fit(&[0.5f32; 100], 1, config).unwrap();
        assert!(flat.features[0].floored && flat.features[0].threshold == 0.05);
    }

    /// A pattern the training data lacked alerts the first time it comes and not when it
    /// comes again (it is then near an earlier window of the stream); skipped warm-up
    /// windows score 0 and are not kept.
    #[test]
    fn a_new_pattern_alerts_once() {
        let x: Vec<f32> = (0..400).map(|t| (t as f32 * 0.3).sin()).collect();
        let config = NeighbourConfig {
            window: 10,
            ..NeighbourConfig::default()
        };
        let m = Arc::new(NeighbourModel::fit(&x, 1, config).unwrap());
        // normal, a square wave of 40 values, the same twice
        let square: Vec<f32> = (0..40)
            .map(|t| if t / 5 % 2 == 0 { 1.5 } else { -1.5 })
            .collect();
        let mut stream: Vec<f32> = x[..60].to_vec();
        stream.extend(&square);
        stream.extend(&x[..60]);
        stream.extend(&square);
        let windows: Vec<f32> = stream.windows(10).flatten().copied().collect();
        let mut d = Neighbour::new(Arc::clone(&m), 0..1);
        let s = all(&mut d, &windows);
        let flagged = |range: Range<usize>| s[range].iter().filter(|&&v| v > 1.0).count();
        // window k ends at stream value k + 9
        assert!(flagged(51..91) > 10, "first square: {:?}", &s[51..91]);
        assert_eq!(flagged(151..191), 0, "second square: {:?}", &s[151..191]);

        let mut d = Neighbour::new(m, 0..1).starting_at(5);
        let s = all(&mut d, &windows[..10 * 8]);
        assert_eq!(&s[..5], &[0.0; 5]);
        assert_eq!(d.seen[0].len(), 9 + 3);
    }
}
