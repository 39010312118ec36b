//! The statistics a rule may test, as seed 004's feature engine computes them over a
//! window (`FeatureEngine._compute_features`): the window's mean, population standard
//! deviation and percentiles (NumPy's default, linear interpolation), and the last value;
//! and, running over the entity's whole stream rather than restarting each window, the
//! EWMA and Page's two-sided CUSUM of [`crate::detect`]'s detectors.

use serde::Deserialize;

use crate::detect::{Cusum, CusumConfig, Detector, Ewma, EwmaConfig, Scores};

/// A statistic of a feature's window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stat {
    /// The window's last (newest) value.
    Last,
    /// The mean of the window.
    Mean,
    /// The population standard deviation of the window (NumPy's `np.std`).
    Std,
    /// The median (50th percentile) of the window.
    P50,
    /// The 95th percentile of the window.
    P95,
    /// The 99th percentile of the window.
    P99,
    /// The exponentially weighted mean of the entity's values up to the window's end.
    Ewma,
    /// Page's two-sided CUSUM `max(S+, S-)` up to the window's end, in standard deviations
    /// of the slow baseline (see [`crate::detect::Cusum`]).
    Cusum,
}

impl Stat {
    /// Every statistic, in the order of a [`Statistics`] array.
    pub const ALL: [Stat; 8] = [
        Stat::Last,
        Stat::Mean,
        Stat::Std,
        Stat::P50,
        Stat::P95,
        Stat::P99,
        Stat::Ewma,
        Stat::Cusum,
    ];

    /// Its name in rule files and alert evidence.
    pub fn name(self) -> &'static str {
        match self {
            Stat::Last => "last",
            Stat::Mean => "mean",
            Stat::Std => "std",
            Stat::P50 => "p50",
            Stat::P95 => "p95",
            Stat::P99 => "p99",
            Stat::Ewma => "ewma",
            Stat::Cusum => "cusum",
        }
    }
}

/// One feature's statistics, indexed by `stat as usize`.
pub type Statistics = [f64; 8];

/// The `q`-th percentile (0..=100) of `sorted` (ascending, not empty), interpolated
/// linearly between the two nearest ranks as `numpy.percentile` does by default.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = (sorted.len() - 1) as f64 * q / 100.0;
    let lo = rank.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (rank - lo as f64) * (sorted[hi] - sorted[lo])
}

/// The window statistics of `values` (oldest first, not empty): last, mean, std and the
/// percentiles; EWMA and CUSUM are the stream's ([`Running`]) and left at 0. `scratch`
/// is reused between calls, so that a window costs no allocation.
pub fn window_statistics(values: &[f64], scratch: &mut Vec<f64>) -> Statistics {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    scratch.clear();
    scratch.extend_from_slice(values);
    scratch.sort_unstable_by(f64::total_cmp);
    let mut s = [0.0; 8];
    s[Stat::Last as usize] = values[values.len() - 1];
    s[Stat::Mean as usize] = mean;
    s[Stat::Std as usize] = var.sqrt();
    s[Stat::P50 as usize] = percentile(scratch, 50.0);
    s[Stat::P95 as usize] = percentile(scratch, 95.0);
    s[Stat::P99 as usize] = percentile(scratch, 99.0);
    s
}

/// The EWMA and CUSUM of one entity's features, fed each frame once, in order: the
/// [`Ewma`] detector's running mean and the [`Cusum`] detector's statistic (its decision
/// interval set to 1, so that its score is the statistic itself).
#[derive(Clone, Debug)]
pub struct Running {
    ewma: Ewma,
    cusum: Cusum,
    /// The CUSUM statistic of each feature after the last frame fed.
    last_cusum: Vec<f32>,
}

impl Running {
    /// Running statistics of `width` features, the EWMA weighing the newest value by
    /// `alpha` (in (0, 1]), the CUSUM as `cusum` says (its `h` is ignored).
    pub fn new(width: usize, alpha: f32, cusum: CusumConfig) -> Running {
        let ewma = EwmaConfig {
            alpha,
            warmup: 0,
            window: 1,
        };
        Running {
            ewma: Ewma::new(0..width, ewma),
            cusum: Cusum::new(0..width, CusumConfig { h: 1.0, ..cusum }),
            last_cusum: vec![0.0; width],
        }
    }

    /// Takes in frames `[n][width]`, oldest first.
    pub fn feed(&mut self, frames: &[f32]) {
        let width = self.last_cusum.len();
        if frames.is_empty() || width == 0 {
            return;
        }
        // the detectors' scores are z-scores and the CUSUM statistic: only the latter's
        // last row is kept, the EWMA is read from the detector's state
        self.ewma.score(frames);
        if let Scores::All(s) = self.cusum.score(frames) {
            self.last_cusum.copy_from_slice(&s[s.len() - width..]);
        }
    }

    /// Feature `j`'s EWMA after the frames fed so far.
    pub fn ewma(&self, j: usize) -> f64 {
        self.ewma.means()[j] as f64
    }

    /// Feature `j`'s CUSUM statistic after the frames fed so far (0 during the warm-up).
    pub fn cusum(&self, j: usize) -> f64 {
        self.last_cusum[j] as f64
    }
}
