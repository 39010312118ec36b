//! A detector that needs no trained model: per feature, an exponentially weighted mean
//! and variance of the values it has seen, and the z-score of each new value against
//! them.

use std::ops::Range;

use super::{Detector, Needs, Scores};

/// How an [`Ewma`] detector weighs the past.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EwmaConfig {
    /// Weight of the newest value in the running mean and variance, in (0, 1]: about
    /// `2 / alpha` frames make up the baseline.
    pub alpha: f32,
    /// Windows each feature sees before it is scored: until then it learns, scoring 0.
    pub warmup: u64,
    /// Frames per window; a window's value is the mean of its frames (1: the frame
    /// itself).
    pub window: usize,
}

impl Default for EwmaConfig {
    fn default() -> Self {
        EwmaConfig {
            alpha: 0.05,
            warmup: 30,
            window: 1,
        }
    }
}

/// Per-feature EWMA mean and variance; a window scores `|x - mean| / std` against the
/// statistics of the windows before it, which it then joins. Stateful: it must see its
/// windows once and in frame order, and its scores then depend on nothing else, so any
/// split of the features over workers gives the same scores.
#[derive(Clone, Debug)]
pub struct Ewma {
    config: EwmaConfig,
    features: Range<usize>,
    mean: Vec<f32>,
    var: Vec<f32>,
    /// Windows seen so far (every feature of the partition sees the same windows).
    seen: u64,
}

impl Ewma {
    /// A detector for features `features`, learning from scratch.
    ///
    /// # Panics
    /// When `alpha` is not in (0, 1] or the window is empty: [`crate::runtime::Env`]'s
    /// parameters are checked before a detector is made.
    pub fn new(features: Range<usize>, config: EwmaConfig) -> Ewma {
        assert!(
            config.alpha > 0.0 && config.alpha <= 1.0,
            "alpha must be in (0, 1], not {}",
            config.alpha
        );
        assert!(config.window > 0, "the window must hold at least one frame");
        let width = features.len();
        Ewma {
            config,
            features,
            mean: vec![0.0; width],
            var: vec![0.0; width],
            seen: 0,
        }
    }
}

impl Ewma {
    /// Each feature's running mean over the windows scored so far: the first window's
    /// value, then moved `alpha` of the way towards each next one.
    pub fn means(&self) -> &[f32] {
        &self.mean
    }
}

impl Detector for Ewma {
    fn needs(&self) -> Needs {
        Needs {
            window: self.config.window,
            stride: None,
            stateful: true,
        }
    }

    fn features(&self) -> Range<usize> {
        self.features.clone()
    }

    fn score(&mut self, windows: &[f32]) -> Scores {
        let (w, width) = (self.config.window, self.features.len());
        let per_window = w * width;
        let b = windows.len().checked_div(per_window).unwrap_or(0);
        assert_eq!(windows.len(), b * per_window, "batch is not whole windows");
        let mut scores = vec![0f32; b * width];
        let alpha = self.config.alpha;
        let inv_w = 1.0 / w as f32;
        for (x, out) in windows
            .chunks_exact(per_window.max(1))
            .zip(scores.chunks_exact_mut(width.max(1)))
        {
            let first = self.seen == 0;
            let scoring = self.seen >= self.config.warmup;
            for j in 0..width {
                // the window's value: the mean of its frames, summed oldest first
                let mut v = 0f32;
                for k in 0..w {
                    v += x[k * width + j];
                }
                let v = v * inv_w;
                let (mean, var) = (&mut self.mean[j], &mut self.var[j]);
                if first {
                    *mean = v;
                    continue;
                }
                let diff = v - *mean;
                if scoring {
                    // a feature that never moved gives a large, finite score when it does
                    out[j] = diff.abs() / var.max(1e-12).sqrt();
                }
                let step = alpha * diff;
                *mean += step;
                *var = (1.0 - alpha) * (*var + diff * step);
            }
            self.seen += 1;
        }
        Scores::All(scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::cpu_scores as scores;

    /// Quiet while warming up, small on the usual wobble, large on a jump; the state
    /// carries over from one batch to the next.
    #[test]
    fn scores_departures_after_warm_up() {
        let config = EwmaConfig {
            alpha: 0.1,
            warmup: 4,
            window: 1,
        };
        let mut d = Ewma::new(0..1, config);
        let wobble: Vec<f32> = (0..40)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let s = scores(&mut d, &wobble);
        assert!(s[..4].iter().all(|&z| z == 0.0), "{s:?}");
        assert!(s[10..].iter().all(|&z| z < 3.0), "{s:?}");
        let jump = scores(&mut d, &[20.0]);
        assert!(jump[0] > 10.0, "{jump:?}");
    }

    /// Features are independent: scoring them in two partitions gives the bits of
    /// scoring them together, in any batch sizes.
    #[test]
    fn any_split_gives_the_same_bits() {
        let config = EwmaConfig {
            alpha: 0.2,
            warmup: 2,
            window: 2,
        };
        // 12 windows of 2 frames x 3 features
        let data: Vec<f32> = (0..72).map(|i| ((i * 37 % 11) as f32).sin()).collect();
        let mut whole = Ewma::new(0..3, config);
        let all = scores(&mut whole, &data);
        let (mut left, mut right) = (Ewma::new(0..1, config), Ewma::new(1..3, config));
        let (mut l, mut r) = (Vec::new(), Vec::new());
        for (i, chunk) in data.chunks(6 * 4).enumerate() {
            // batches of 4 windows, then split by feature: [B][W][F] -> two partitions
            let part = |cols: Range<usize>| -> Vec<f32> {
                chunk
                    .chunks(3)
                    .flat_map(|frame| frame[cols.clone()].to_vec())
                    .collect()
            };
            l.extend(scores(&mut left, &part(0..1)));
            r.extend(scores(&mut right, &part(1..3)));
            assert!(i < 3);
        }
        for (k, z) in all.iter().enumerate() {
            let (win, j) = (k / 3, k % 3);
            let got = if j == 0 { l[win] } else { r[win * 2 + j - 1] };
            assert_eq!(got.to_bits(), z.to_bits(), "window {win} feature {j}");
        }
    }
}
