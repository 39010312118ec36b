//! Envelope of rolling statistics: a feature is as anomalous as the mean, the standard
//! deviation or the roughness (mean absolute change from value to value) of its last K
//! values lies outside the range those statistics have had so far, at every scale K of
//! a 1-3-10 ladder up to `window` (1, 3, 10, 30, 100 by default).
//!
//! - At K = 1 the statistic is the value itself: a value past every value seen is a
//!   spike or a level out of range. At K = 100 a mean or a spread never seen is a slow
//!   drift or a change of regime whose values each stay in range (a channel that
//!   settles at a level it only ever passed through, an oscillation that stops), which
//!   a window of 30 compared shape by shape does not see; a roughness never seen is a
//!   signal that moves faster, slower or noisier than it did, at the same level and
//!   spread.
//! - "So far" is the training data's range of each statistic, widened by the stream's
//!   own statistics of windows that end at least K values before (they do not overlap
//!   the one scored): a new regime alerts when it comes and, once seen, not again, as
//!   [`super::Neighbour`]'s left join.
//! - The score is the distance outside the range over a bar (`floor` of the feature's
//!   training range, at least `min_change`): training data never alert, and a bigger
//!   departure scores higher.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use serde::Serialize;

use super::{Detector, Needs, Scores};

/// How an [`EnvelopeModel`] is fitted and run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct EnvelopeConfig {
    /// The longest scale (values per window); the scales are 1, 3, 10, 30, 100, 300, …
    /// up to it, and it.
    pub window: usize,
    /// The bar a statistic must pass the range by, as a share of the feature's training
    /// range.
    pub floor: f32,
    /// Absolute floor on the bar, in the data's units (as the forecaster's `min_error`:
    /// Telemanom's 0.05 of data scaled to [-1, 1]; 0: none).
    pub min_change: f32,
}

impl Default for EnvelopeConfig {
    fn default() -> Self {
        EnvelopeConfig {
            window: 100,
            floor: 0.05,
            min_change: 0.0,
        }
    }
}

impl EnvelopeConfig {
    /// The scales: the 1-3-10 ladder up to `window`, and `window` itself.
    pub fn scales(&self) -> Vec<usize> {
        let mut scales = Vec::new();
        let mut decade = 1usize;
        'ladder: loop {
            for k in [decade, 3 * decade] {
                if k >= self.window {
                    break 'ladder;
                }
                scales.push(k);
            }
            decade *= 10;
        }
        scales.push(self.window.max(1));
        scales
    }
}

/// The largest score under an alert: the f32 just under 1.
const UNDER_ONE: f32 = 1.0 - f32::EPSILON / 2.0;

/// The statistics of one window: mean, standard deviation, roughness.
type Stats = [f64; 3];

/// The least and greatest of each of a window's [`Stats`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bounds {
    /// Least of each statistic.
    pub lo: [f64; 3],
    /// Greatest of each statistic.
    pub hi: [f64; 3],
}

impl Bounds {
    const EMPTY: Bounds = Bounds {
        lo: [f64::INFINITY; 3],
        hi: [f64::NEG_INFINITY; 3],
    };

    /// Takes `stats` in (a NaN widens nothing: `min` and `max` keep the other side).
    fn widen(&mut self, stats: Stats) {
        for (q, v) in stats.into_iter().enumerate() {
            self.lo[q] = self.lo[q].min(v);
            self.hi[q] = self.hi[q].max(v);
        }
    }

    /// How far `stats` lie outside, 0 inside.
    fn outside(&self, stats: Stats) -> f64 {
        (stats.iter().enumerate())
            .map(|(q, &v)| (v - self.hi[q]).max(self.lo[q] - v))
            .fold(0.0, f64::max)
    }
}

/// Mean, standard deviation and roughness (the mean absolute difference of consecutive
/// values; 0 for one value) of `x`, in two passes: exact for the few values of a scale.
fn stats(x: &[f32]) -> Stats {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let rough = match x.len() {
        0 | 1 => 0.0,
        len => {
            let moved: f64 = x
                .windows(2)
                .map(|p| (p[1] as f64 - p[0] as f64).abs())
                .sum();
            moved / (len - 1) as f64
        }
    };
    [mean, var.sqrt(), rough]
}

/// One feature's ranges per scale and its bar.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvelopeFit {
    /// Per scale (as [`EnvelopeConfig::scales`]), the training data's ranges.
    pub bounds: Vec<Bounds>,
    /// The distance outside a range at which the feature alerts: `floor` of the
    /// training range, or for a feature whose training values never moved, of the size
    /// of its value (at least 1); at least `min_change`.
    pub bar: f32,
    /// Whether the training values never moved.
    pub flat: bool,
}

/// Fitted envelopes per feature.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvelopeModel {
    /// The settings it was fitted with.
    pub config: EnvelopeConfig,
    /// The scales, shortest first.
    pub scales: Vec<usize>,
    /// One fit per feature.
    pub features: Vec<EnvelopeFit>,
}

fn fit_feature(x: &[f32], config: &EnvelopeConfig, scales: &[usize]) -> EnvelopeFit {
    let bounds = scales
        .iter()
        .map(|&k| {
            let mut b = Bounds::EMPTY;
            for w in x.windows(k) {
                let m = stats(w);
                if m.iter().all(|v| v.is_finite()) {
                    b.widen(m);
                }
            }
            b
        })
        .collect();
    let unit = super::neighbour::range_unit(x);
    EnvelopeFit {
        bounds,
        bar: (config.floor * unit).max(config.min_change),
        flat: x.iter().all(|&v| v == x[0]),
    }
}

impl EnvelopeModel {
    /// Fits every column of `train` (row-major, `cols` columns).
    pub fn fit(
        train: &[f32],
        cols: usize,
        config: EnvelopeConfig,
    ) -> anyhow::Result<EnvelopeModel> {
        anyhow::ensure!(
            config.floor >= 0.0 && config.min_change >= 0.0,
            "the floor and the least change must be at least 0"
        );
        // an infinite value would make the bar infinite, and every departure score 0
        anyhow::ensure!(
            train.iter().all(|v| v.is_finite()),
            "training data hold a value that is not finite"
        );
        let scales = config.scales();
        let features = super::fit_columns(train, cols, config.window, |x| {
            fit_feature(x, &config, &scales)
        })?;
        anyhow::ensure!(
            features.iter().all(|f| f.bar > 0.0),
            "a bar of 0: give a floor or a least change over 0"
        );
        Ok(EnvelopeModel {
            config,
            scales,
            features,
        })
    }
}

/// One feature's state at one scale: the range so far, and the statistics of the
/// windows not yet old enough to widen it.
#[derive(Clone, Debug)]
struct Scale {
    bounds: Bounds,
    pending: VecDeque<Stats>,
}

/// The detector of an [`EnvelopeModel`]'s features `features`: stateful (the ranges
/// widen with the stream); scores each window's last value by the largest distance of a
/// rolling statistic outside its range, over the feature's bar (1: alert). Under 1, a
/// window the stream has seen before scores `t / (1 + t)`, where `t` is its distance
/// outside the training ranges over the bar, so scores still rank such windows.
#[derive(Clone, Debug)]
pub struct Envelope {
    model: Arc<EnvelopeModel>,
    features: Range<usize>,
    /// Per feature, per scale.
    state: Vec<Vec<Scale>>,
    /// Windows seen so far.
    windows: usize,
    /// Windows before this one are warm-up: neither scored nor kept.
    start: usize,
    /// Values of the first window scored that belong to the stream besides its last.
    before: usize,
}

impl Envelope {
    /// The detector for features `features` of `model`.
    ///
    /// # Panics
    /// When `features` is not within the model's.
    pub fn new(model: Arc<EnvelopeModel>, features: Range<usize>) -> Envelope {
        assert!(
            features.end <= model.features.len(),
            "features {features:?}"
        );
        let model_window = model.config.window;
        let state = model.features[features.clone()]
            .iter()
            .map(|f| {
                (f.bounds.iter())
                    .map(|&bounds| Scale {
                        bounds,
                        pending: VecDeque::new(),
                    })
                    .collect()
            })
            .collect();
        Envelope {
            model,
            features,
            state,
            windows: 0,
            start: 0,
            before: model_window - 1,
        }
    }

    /// Starts with the window ending at row `first` of a stream that begins `window - 1`
    /// rows before it: windows before score 0, and values before `first` take no part
    /// (when the stream replays the training data first, as `evaluate` does, and the
    /// test rows do not continue them).
    ///
    /// `first` must be at least `window - 1`, as the stream's first window ends there.
    pub fn starting_at_row(mut self, first: usize) -> Envelope {
        debug_assert!(first + 1 >= self.model.config.window, "first row {first}");
        self.start = (first + 1).saturating_sub(self.model.config.window);
        self.before = 0;
        self
    }
}

impl Detector for Envelope {
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
        let w = self.model.config.window;
        let width = self.features.len();
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
            // the stream's values in this window that count
            let Some(seen) = index.checked_sub(self.start).map(|n| n + 1 + self.before) else {
                continue;
            };
            for ((j, fit), scales) in fits.iter().enumerate().zip(&mut self.state) {
                for (k, v) in column.iter_mut().enumerate() {
                    *v = x[k * width + j];
                }
                // how far outside the ranges so far, and outside the training ranges
                let (mut far, mut known) = (0f64, 0f64);
                for ((&k, scale), trained) in self
                    .model
                    .scales
                    .iter()
                    .zip(scales.iter_mut())
                    .zip(&fit.bounds)
                {
                    // only values of this stream's part after `start` count
                    if seen < k {
                        continue;
                    }
                    // the window ending k values ago no longer overlaps this one
                    if scale.pending.len() == k {
                        let old = scale.pending.pop_front().expect("k pending");
                        scale.bounds.widen(old);
                    }
                    let m = stats(&column[w - k..]);
                    if m.iter().all(|v| v.is_finite()) {
                        far = far.max(scale.bounds.outside(m));
                        known = known.max(trained.outside(m));
                        scale.pending.push_back(m);
                    } else {
                        // a non-finite value is as far as can be, and widens nothing
                        far = f64::INFINITY;
                        scale.pending.push_back([f64::NAN; 3]);
                    }
                }
                let mut score = (far / fit.bar as f64) as f32;
                if score < 1.0 {
                    // under the alert, rank what the stream has seen before by how far
                    // it lies outside the training ranges: t / (1 + t) with t = known /
                    // bar, in f64 and kept under 1 (in f32 it rounds to 1, an alert,
                    // from t = 2^24 on): a familiar regime that training never had is
                    // not normal either
                    let bar = fit.bar as f64;
                    let under = if known.is_finite() {
                        (known / (known + bar)) as f32
                    } else {
                        1.0
                    };
                    score = score.max(under.min(UNDER_ONE));
                }
                out[j] = if score.is_finite() { score } else { f32::MAX };
            }
        }
        Scores::All(scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::cpu_scores as all;

    fn sine(n: usize) -> Vec<f32> {
        (0..n).map(|t| (t as f32 * 0.3).sin()).collect()
    }

    fn windows_of(x: &[f32], w: usize) -> Vec<f32> {
        x.windows(w).flatten().copied().collect()
    }

    const CONFIG: EnvelopeConfig = EnvelopeConfig {
        window: 30,
        floor: 0.05,
        min_change: 0.0,
    };

    #[test]
    fn scales_follow_the_ladder_up_to_the_window() {
        let at = |window| EnvelopeConfig { window, ..CONFIG }.scales();
        assert_eq!(EnvelopeConfig::default().scales(), [1, 3, 10, 30, 100]);
        assert_eq!(at(1), [1]);
        assert_eq!(at(50), [1, 3, 10, 30, 50]);
    }

    /// Training data never alert; a spike alerts and a bigger one scores higher, up to a
    /// non-finite value, which is as far as can be.
    #[test]
    fn training_passes_and_spikes_grow() {
        let x = sine(600);
        let m = Arc::new(EnvelopeModel::fit(&x, 1, CONFIG).unwrap());
        assert!(
            (m.features[0].bar - 0.1).abs() < 1e-3,
            "{}",
            m.features[0].bar
        );
        let mut d = Envelope::new(Arc::clone(&m), 0..1);
        assert!(all(&mut d, &windows_of(&x, 30)).iter().all(|&s| s == 0.0));
        let mut peaks = Vec::new();
        for spike in [0.5f32, 2.0, 1e30, f32::INFINITY] {
            let mut d = Envelope::new(Arc::clone(&m), 0..1);
            let mut w = x[100..130].to_vec();
            w[29] = 1.0 + spike;
            let s = all(&mut d, &w)[0];
            assert!(s > 1.0, "spike {spike}: {s}");
            peaks.push(s);
        }
        assert!(peaks.windows(2).all(|p| p[0] < p[1]), "{peaks:?}");
        assert_eq!(peaks[3], f32::MAX);
        let mut w = x[100..130].to_vec();
        w[29] = f32::NAN;
        assert_eq!(all(&mut Envelope::new(m, 0..1), &w)[0], f32::MAX);
    }

    /// A value that settles inside the training range (every value in range, its mean
    /// and spread never seen) alerts at its first value and on most windows until its
    /// own statistics of a whole window before have widened the range; when the same regime comes again it
    /// is in the stream's own range and passes.
    #[test]
    fn a_regime_inside_the_range_alerts_once() {
        let x = sine(600);
        let m = Arc::new(EnvelopeModel::fit(&x, 1, CONFIG).unwrap());
        let settled = vec![0.8f32; 200];
        let mut stream = x[..100].to_vec();
        stream.extend(&settled);
        stream.extend(&x[..200]);
        stream.extend(&settled);
        let s = all(&mut Envelope::new(m, 0..1), &windows_of(&stream, 30));
        // window k ends at stream value k + 29
        let flagged = |r: Range<usize>| s[r].iter().filter(|&&v| v >= 1.0).count();
        assert_eq!(flagged(0..71), 0, "before: {:?}", &s[..71]);
        assert!(s[71] >= 1.0, "its first value: {}", s[71]);
        assert!(flagged(71..271) >= 30, "first time: {:?}", &s[71..271]);
        assert_eq!(flagged(271..471), 0, "normal again");
        assert_eq!(flagged(471..671), 0, "second time: {:?}", &s[471..671]);
        // under the alert, the regime the training data never had still ranks above
        // normal rows, which score 0
        let most = s[471..671].iter().copied().fold(0f32, f32::max);
        assert!(most > 0.5 && most < 1.0, "{most}");
        assert!(s[301..471].iter().all(|&v| v == 0.0), "{:?}", &s[301..471]);
    }

    /// From `starting_at_row`, windows before score 0 and the rows before take no part:
    /// a scale scores once it holds only the stream's rows after them.
    #[test]
    fn rows_before_the_start_take_no_part() {
        let x = sine(600);
        let m = Arc::new(EnvelopeModel::fit(&x, 1, CONFIG).unwrap());
        // 40 warm-up rows far out of range, then training rows: nothing alerts
        let mut stream = vec![9.0f32; 40];
        stream.extend(&x[..100]);
        let mut d = Envelope::new(m, 0..1).starting_at_row(40);
        let s = all(&mut d, &windows_of(&stream, 30));
        // window k ends at row k + 29: the one ending at row 40 is window 11
        assert!(s.iter().all(|&v| v == 0.0), "{s:?}");
        assert_eq!(d.start, 11);
        assert_eq!(
            d.state[0][3].pending.len(),
            30,
            "the scale of 30 has started"
        );
        assert_eq!(d.state[0][0].pending.len(), 1);
    }

    /// A signal that jitters where it moved smoothly, at the same level and within its
    /// range and spread, alerts on its roughness.
    #[test]
    fn a_rougher_signal_alerts() {
        let smooth: Vec<f32> = (0..2000).map(|t| (t as f32 * 0.05).sin()).collect();
        let m = Arc::new(EnvelopeModel::fit(&smooth, 1, CONFIG).unwrap());
        let jitter: Vec<f32> = (0..300)
            .map(|t| 0.8 * (t as f32 * 0.05).sin() + if t % 2 == 0 { 0.1 } else { -0.1 })
            .collect();
        assert!(jitter.iter().all(|v| v.abs() < 0.95));
        let s = all(&mut Envelope::new(m, 0..1), &windows_of(&jitter, 30));
        assert!(s.iter().filter(|&&v| v >= 1.0).count() > 10, "{s:?}");
    }

    /// The detector against a direct computation from its definition: at each test row,
    /// every scale's statistics of the last K test values against the training range
    /// widened by every test window that ends K or more values before.
    #[test]
    fn scores_match_the_definition() {
        let x: Vec<f32> = (0..200)
            .map(|t| (t as f32 * 0.3).sin() + if t % 17 == 0 { 0.3 } else { 0.0 })
            .collect();
        let m = EnvelopeModel::fit(&x, 1, CONFIG).unwrap();
        let test: Vec<f32> = (0..200)
            .map(|t| 1.3 * (t as f32 * 0.11).cos() + (t / 50) as f32 * 0.2)
            .collect();
        let stream: Vec<f32> = x.iter().chain(&test).copied().collect();
        let d = Envelope::new(Arc::new(m.clone()), 0..1).starting_at_row(200);
        let s = all(&mut d.clone(), &windows_of(&stream, 30));
        let f = &m.features[0];
        let (mut alerts, mut under) = (0, 0);
        for n in 1..=test.len() {
            let (mut far, mut known) = (0f64, 0f64);
            for (&k, trained) in m.scales.iter().zip(&f.bounds) {
                if n < k {
                    continue;
                }
                let now = stats(&test[n - k..n]);
                let mut b = *trained;
                for end in k - 1..n.saturating_sub(k) {
                    b.widen(stats(&test[end + 1 - k..=end]));
                }
                far = far.max(b.outside(now));
                known = known.max(trained.outside(now));
            }
            let bar = f.bar as f64;
            let mut want = (far / bar) as f32;
            if want < 1.0 {
                want = want.max((known / (known + bar)) as f32);
                under += usize::from(want > 0.0);
            } else {
                alerts += 1;
            }
            // the window ending at test row n - 1 is stream row 199 + n
            assert_eq!(s[199 + n + 1 - 30], want, "test row {}", n - 1);
        }
        assert!(alerts > 10 && under > 10, "{alerts} alerts, {under} under");
        // the same in batches of 7 windows
        let mut d = d;
        let batched: Vec<f32> = windows_of(&stream, 30)
            .chunks(7 * 30)
            .flat_map(|b| all(&mut d, b))
            .collect();
        assert_eq!(batched, s);
    }

    /// Far outside the training ranges, a familiar regime still scores under 1, and
    /// higher the farther it is, up to values whose distance overflows.
    #[test]
    fn a_familiar_regime_never_alerts_however_far() {
        let x = sine(600);
        let m = Arc::new(EnvelopeModel::fit(&x, 1, CONFIG).unwrap());
        let mut last = Vec::new();
        for level in [5.0f32, 1e7, 1e30, f32::MAX] {
            let stream = vec![level; 300];
            let s = all(
                &mut Envelope::new(Arc::clone(&m), 0..1),
                &windows_of(&stream, 30),
            );
            assert!(s[0] >= 1.0, "{level}: its first window alerts");
            let tail = s[100];
            assert!(tail > 0.0 && tail < 1.0, "{level}: {tail}");
            last.push(tail);
        }
        assert!(last.windows(2).all(|p| p[0] <= p[1]), "{last:?}");
        assert!(last[0] < last[1], "{last:?}");
        let inf = [1.0f32, f32::INFINITY];
        assert!(EnvelopeModel::fit(&inf.repeat(100), 1, CONFIG).is_err());
    }

    #[test]
    fn flat_training_keeps_a_bar() {
        let m = EnvelopeModel::fit(&[0.5f32; 100], 1, CONFIG).unwrap();
        assert!(m.features[0].flat && (m.features[0].bar - 0.05).abs() < 1e-6);
        let zero = EnvelopeConfig {
            floor: 0.0,
            ..CONFIG
        };
        assert!(EnvelopeModel::fit(&[0.5f32; 100], 1, zero).is_err());
    }
}
