//! A change detector that needs no training: Page's two-sided CUSUM of each feature's
//! standardised values, against a slowly moving baseline (an EWMA mean and variance).
//!
//! Where [`super::Ewma`] judges each value alone, CUSUM accumulates small, persistent
//! departures (`|z| > k`) until they add up to `h` standard deviations, so it finds a
//! level shift of 1–2σ that no single value gives away, and stays raised while the
//! shift lasts (the baseline moves slowly). The statistic falls back to 0 once values
//! return, so it needs no reset.

use std::ops::Range;

use super::{Detector, Needs, Scores};

/// How a [`Cusum`] detector weighs departures.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct CusumConfig {
    /// Weight of the newest value in the baseline mean and variance, in (0, 1]: small,
    /// so that a shift is not absorbed before it is noticed.
    pub alpha: f32,
    /// Slack in standard deviations: departures under it do not accumulate (the
    /// textbook 0.5, tuned to shifts of 1σ).
    pub k: f32,
    /// Decision interval in standard deviations: the statistic over it is an alarm
    /// (textbook 4–5); scores are the statistic over `h`.
    pub h: f32,
    /// Frames each feature sees before it is scored (it learns the baseline, scoring 0).
    pub warmup: u64,
}

impl Default for CusumConfig {
    fn default() -> Self {
        CusumConfig {
            alpha: 0.01,
            k: 0.5,
            h: 5.0,
            warmup: 100,
        }
    }
}

/// Per feature: an EWMA baseline and the upper and lower CUSUM statistics; scores
/// `max(S+, S-) / h` (1: the alarm). Stateful, one frame per window, features
/// independent (any split gives the same scores).
#[derive(Clone, Debug)]
pub struct Cusum {
    config: CusumConfig,
    features: Range<usize>,
    mean: Vec<f32>,
    var: Vec<f32>,
    up: Vec<f32>,
    down: Vec<f32>,
    seen: u64,
}

impl Cusum {
    /// A detector for features `features`, learning from scratch.
    ///
    /// # Panics
    /// When `alpha` is not in (0, 1], or `k` or `h` is negative or not finite.
    pub fn new(features: Range<usize>, config: CusumConfig) -> Cusum {
        assert!(
            config.alpha > 0.0 && config.alpha <= 1.0,
            "alpha must be in (0, 1], not {}",
            config.alpha
        );
        assert!(
            config.k >= 0.0 && config.h > 0.0 && config.k.is_finite() && config.h.is_finite(),
            "k must be at least 0 and h over 0"
        );
        let width = features.len();
        Cusum {
            config,
            features,
            mean: vec![0.0; width],
            var: vec![0.0; width],
            up: vec![0.0; width],
            down: vec![0.0; width],
            seen: 0,
        }
    }
}

impl Detector for Cusum {
    fn needs(&self) -> Needs {
        Needs {
            window: 1,
            stride: Some(1),
            stateful: true,
        }
    }

    fn features(&self) -> Range<usize> {
        self.features.clone()
    }

    fn score(&mut self, windows: &[f32]) -> Scores {
        let width = self.features.len();
        let b = windows.len().checked_div(width).unwrap_or(0);
        assert_eq!(windows.len(), b * width, "batch is not whole windows");
        let CusumConfig { alpha, k, h, .. } = self.config;
        let mut scores = vec![0f32; b * width];
        for (x, out) in windows
            .chunks_exact(width.max(1))
            .zip(scores.chunks_exact_mut(width.max(1)))
        {
            let first = self.seen == 0;
            let scoring = self.seen >= self.config.warmup;
            for j in 0..width {
                let v = x[j];
                if first {
                    self.mean[j] = v;
                    continue;
                }
                let diff = v - self.mean[j];
                // a feature that never moved has no spread: a floor keeps z finite, so a
                // first move scores high but not infinite
                let z = diff / self.var[j].max(1e-12).sqrt();
                if scoring {
                    self.up[j] = (self.up[j] + z - k).max(0.0);
                    self.down[j] = (self.down[j] - z - k).max(0.0);
                    out[j] = self.up[j].max(self.down[j]) / h;
                }
                let step = alpha * diff;
                self.mean[j] += step;
                self.var[j] = (1.0 - alpha) * (self.var[j] + diff * step);
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

    /// ±1 alternating: a z of about 1 each way, which the slack of 0.5 and the
    /// alternation keep from accumulating.
    fn wobble(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect()
    }

    /// Quiet on the wobble; a shift of 2σ, which no single value shows (an EWMA z of
    /// 1 to 3), raises the alarm within a few frames and keeps it; a larger shift
    /// scores higher.
    #[test]
    fn accumulates_a_small_shift() {
        let mut peaks = Vec::new();
        for shift in [2.0f32, 4.0] {
            let mut d = Cusum::new(0..1, CusumConfig::default());
            let s = scores(&mut d, &wobble(400));
            assert!(s.iter().all(|&z| z < 1.0), "{s:?}");
            let shifted: Vec<f32> = wobble(30).iter().map(|v| v + shift).collect();
            let s = scores(&mut d, &shifted);
            let first = s.iter().position(|&z| z >= 1.0).expect("alarm");
            assert!(first <= 5, "shift {shift}: alarm after {first} frames");
            assert!(s[first..].iter().all(|&z| z >= 1.0), "{s:?}");
            peaks.push(s[29]);
        }
        assert!(peaks[0] < peaks[1], "{peaks:?}");
    }

    /// Downward shifts count the same; features are independent.
    #[test]
    fn both_directions_and_independent_features() {
        let mut d = Cusum::new(0..2, CusumConfig::default());
        let base: Vec<f32> = wobble(400).iter().flat_map(|&v| [v, v]).collect();
        scores(&mut d, &base);
        let s = scores(&mut d, &[-3.0, 1.0, -3.0, -1.0, -3.0, 1.0]);
        assert!(s[4] >= 1.0 && s[5] < 1.0, "{s:?}");
    }
}
