//! Reconstruction error from PCA, standing in for seed 003's autoencoder: per feature,
//! the principal components of its training windows (the last `W` values), and a
//! window's score is how far it lies from their span.
//!
//! The components keep `variance` (90 %) of the training windows' variance, a choice
//! made on training data alone; the threshold is the largest reconstruction error of a
//! training window, so training data never alert, with a floor (`floor` of the
//! feature's training spread) so that a flat training feature does not get 0.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use anyhow::ensure;
use serde::{Deserialize, Serialize};

use super::{Detector, Needs, Scores};
use crate::model::ModelError;

/// How a [`PcaModel`] is fitted.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PcaConfig {
    /// Values per window (seed 003's windows of 30).
    pub window: usize,
    /// Share of the training windows' variance the components keep.
    pub variance: f64,
    /// Floor on the threshold as a share of the feature's training spread (5th to 95th
    /// percentile; its own size, at least 1, for a flat feature).
    pub floor: f32,
}

impl Default for PcaConfig {
    fn default() -> Self {
        PcaConfig {
            window: 30,
            variance: 0.9,
            floor: 0.05,
        }
    }
}

/// One feature's components and threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PcaFit {
    /// Mean training window, `[W]`.
    pub mean: Vec<f32>,
    /// Components kept, `[k][W]`, orthonormal.
    pub components: Vec<Vec<f32>>,
    /// Reconstruction error at which a window alerts.
    pub threshold: f32,
    /// Whether the floor set the threshold.
    pub floored: bool,
}

/// Fitted PCA per feature.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PcaModel {
    /// The settings it was fitted with.
    pub config: PcaConfig,
    /// One fit per feature.
    pub features: Vec<PcaFit>,
}

/// Eigenvalues and eigenvectors (columns of `v`, row-major `n × n`) of the symmetric
/// `a` by cyclic Jacobi rotations. Written out rather than taken from ndarray-linalg:
/// the matrices are `W × W` with W ≈ 30, where Jacobi is exact to rounding in a few
/// sweeps, and LAPACK would tie the build to a system OpenBLAS this machine lacks.
fn jacobi(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        let scale: f64 = (0..n).map(|i| a[i * n + i] * a[i * n + i]).sum();
        if off <= 1e-22 * scale.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < f64::MIN_POSITIVE {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// Euclidean distance of `x` (centred by `mean`) from the span of `components`.
fn error(x: &[f32], mean: &[f32], components: &[Vec<f32>], centred: &mut [f32]) -> f32 {
    for ((c, &v), &m) in centred.iter_mut().zip(x).zip(mean) {
        *c = v - m;
    }
    // The residual itself, in f64, rather than |c|² - Σ proj²: the difference of squares
    // cancels catastrophically, and overflows to inf - inf (NaN, scored 0) for a value
    // 1e30 from the mean, where the error must be largest.
    let mut residual = [0f64; 64];
    let mut heap;
    let r: &mut [f64] = if centred.len() <= residual.len() {
        &mut residual[..centred.len()]
    } else {
        heap = vec![0f64; centred.len()];
        &mut heap
    };
    for (r, &c) in r.iter_mut().zip(centred.iter()) {
        *r = c as f64;
    }
    for comp in components {
        let proj: f64 = comp
            .iter()
            .zip(centred.iter())
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum();
        for (r, &a) in r.iter_mut().zip(comp) {
            *r -= proj * a as f64;
        }
    }
    r.iter().map(|v| v * v).sum::<f64>().sqrt() as f32
}

fn fit_feature(x: &[f32], config: &PcaConfig) -> PcaFit {
    let w = config.window;
    let n = x.len() - w + 1;
    let mut mean = vec![0f64; w];
    for s in 0..n {
        for k in 0..w {
            mean[k] += x[s + k] as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut cov = vec![0f64; w * w];
    let mut c = vec![0f64; w];
    for s in 0..n {
        for k in 0..w {
            c[k] = x[s + k] as f64 - mean[k];
        }
        for i in 0..w {
            for j in 0..=i {
                cov[i * w + j] += c[i] * c[j];
            }
        }
    }
    for i in 0..w {
        for j in 0..=i {
            cov[i * w + j] /= n as f64;
            cov[j * w + i] = cov[i * w + j];
        }
    }
    let (values, vectors) = jacobi(cov, w);
    let mut order: Vec<usize> = (0..w).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let total: f64 = values.iter().map(|v| v.max(0.0)).sum();
    let mut components = Vec::new();
    let mut kept = 0.0;
    for &i in &order {
        if total <= 0.0 || kept >= config.variance * total {
            break;
        }
        kept += values[i].max(0.0);
        components.push(
            (0..w)
                .map(|k| vectors[k * w + i] as f32)
                .collect::<Vec<f32>>(),
        );
    }
    let mean32: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    let mut centred = vec![0f32; w];
    let max_error = (0..n)
        .map(|s| error(&x[s..s + w], &mean32, &components, &mut centred))
        .fold(0f32, f32::max);
    let mut sorted: Vec<f32> = x.to_vec();
    sorted.sort_unstable_by(f32::total_cmp);
    let q = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    let spread = q(0.95) - q(0.05);
    let unit = if spread > 0.0 {
        spread
    } else {
        (mean32[0]).abs().max(1.0)
    };
    let floor = config.floor * unit;
    PcaFit {
        mean: mean32,
        components,
        threshold: max_error.max(floor),
        floored: floor > max_error,
    }
}

impl PcaModel {
    /// Fits every column of `train` (row-major, `cols` columns).
    pub fn fit(train: &[f32], cols: usize, config: PcaConfig) -> anyhow::Result<PcaModel> {
        ensure!(
            config.variance > 0.0 && config.variance <= 1.0,
            "variance must be in (0, 1]"
        );
        let features = super::fit_columns(train, cols, config.window, |x| fit_feature(x, &config))?;
        Ok(PcaModel { config, features })
    }
}

/// The file of a PCA model inside its directory (an entity's, see
/// [`crate::model::entities`]).
pub const PCA_FILE: &str = "pca.json";

impl PcaModel {
    /// Writes the model to `dir/`[`PCA_FILE`], creating `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        crate::model::write_json(dir, PCA_FILE, self)
    }

    /// Reads and checks `dir/`[`PCA_FILE`]: every mean and component as long as the
    /// window, every threshold positive and finite.
    pub fn load(dir: &Path) -> Result<PcaModel, ModelError> {
        let path = dir.join(PCA_FILE);
        let invalid = |problem: String| ModelError::Invalid {
            path: path.clone(),
            problem,
        };
        let model: PcaModel = crate::model::read_json(dir, PCA_FILE, "PCA model")?;
        let w = model.config.window;
        if w == 0 || model.features.is_empty() {
            return Err(invalid("no window or no features".into()));
        }
        for (j, f) in model.features.iter().enumerate() {
            let lengths_ok = f.mean.len() == w && f.components.iter().all(|c| c.len() == w);
            if !lengths_ok {
                return Err(invalid(format!("feature {j}: vectors are not {w} long")));
            }
            if !(f.threshold.is_finite() && f.threshold > 0.0) {
                return Err(invalid(format!(
                    "feature {j}: threshold {} is not positive",
                    f.threshold
                )));
            }
        }
        Ok(model)
    }
}

/// The detector of a [`PcaModel`]'s features `features`: stateless; scores a window's
/// reconstruction error over the feature's threshold (1: alert).
#[derive(Clone, Debug)]
pub struct Pca {
    model: Arc<PcaModel>,
    features: Range<usize>,
}

impl Pca {
    /// The detector for features `features` of `model`.
    ///
    /// # Panics
    /// When `features` is not within the model's.
    pub fn new(model: Arc<PcaModel>, features: Range<usize>) -> Pca {
        assert!(
            features.end <= model.features.len(),
            "features {features:?}"
        );
        Pca { model, features }
    }
}

impl Detector for Pca {
    fn needs(&self) -> Needs {
        Needs {
            window: self.model.config.window,
            stride: None,
            stateful: false,
        }
    }

    fn features(&self) -> Range<usize> {
        self.features.clone()
    }

    fn score(&mut self, windows: &[f32]) -> Scores {
        let (w, width) = (self.model.config.window, self.features.len());
        let per_window = w * width;
        let b = windows.len().checked_div(per_window).unwrap_or(0);
        assert_eq!(windows.len(), b * per_window, "batch is not whole windows");
        let fits = &self.model.features[self.features.clone()];
        let mut scores = vec![0f32; b * width];
        let (mut column, mut centred) = (vec![0f32; w], vec![0f32; w]);
        for (x, out) in windows
            .chunks_exact(per_window.max(1))
            .zip(scores.chunks_exact_mut(width.max(1)))
        {
            for (j, fit) in fits.iter().enumerate() {
                for (k, v) in column.iter_mut().enumerate() {
                    *v = x[k * width + j];
                }
                let e = error(&column, &fit.mean, &fit.components, &mut centred);
                out[j] = e / fit.threshold.max(f32::MIN_POSITIVE);
            }
        }
        Scores::All(scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Jacobi on a 2x2 by hand: [[2,1],[1,2]] has eigenvalues 1 and 3.
    #[test]
    fn eigen_by_hand() {
        let (mut values, _) = jacobi(vec![2.0, 1.0, 1.0, 2.0], 2);
        values.sort_by(f64::total_cmp);
        assert!((values[0] - 1.0).abs() < 1e-12 && (values[1] - 3.0).abs() < 1e-12);
    }

    /// A saved model loads as it was; a file with a window of the wrong length does not.
    #[test]
    fn saved_models_load_and_are_checked() {
        let x: Vec<f32> = (0..200).map(|t| (t as f32 * 0.2).sin()).collect();
        let m = PcaModel::fit(&x, 1, PcaConfig::default()).unwrap();
        let dir = std::env::temp_dir().join(format!("tw-pca-{}", std::process::id()));
        m.save(&dir).unwrap();
        assert_eq!(PcaModel::load(&dir).unwrap(), m);
        let mut bad = m.clone();
        bad.features[0].mean.pop();
        bad.save(&dir).unwrap();
        let err = PcaModel::load(&dir).unwrap_err().to_string();
        assert!(err.contains("pca.json") && err.contains("30 long"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A flat training feature gets a threshold from the floor, not 0.
    #[test]
    fn flat_training_gets_a_floor() {
        let m = PcaModel::fit(&[0.5f32; 200], 1, PcaConfig::default()).unwrap();
        let f = &m.features[0];
        assert!(f.floored && f.threshold > 0.0, "{f:?}");
        let mut d = Pca::new(Arc::new(m), 0..1);
        let Scores::All(s) = d.score(&[0.5f32; 30]) else {
            unreachable!()
        };
        assert_eq!(s, vec![0.0]);
    }

    /// A sine is spanned by two components; its windows reconstruct, a window with a
    /// kink does not, and a bigger kink scores higher; training windows never alert.
    #[test]
    fn sine_reconstructs_kinks_do_not() {
        let x: Vec<f32> = (0..2000).map(|t| (t as f32 * 0.1).sin()).collect();
        let config = PcaConfig {
            window: 20,
            ..PcaConfig::default()
        };
        let m = Arc::new(PcaModel::fit(&x, 1, config).unwrap());
        assert!(m.features[0].components.len() <= 2);
        let mut d = Pca::new(Arc::clone(&m), 0..1);
        let windows: Vec<f32> = x.windows(20).flatten().copied().collect();
        let Scores::All(s) = d.score(&windows) else {
            unreachable!()
        };
        assert!(s.iter().all(|&z| z <= 1.0));
        let mut peaks = Vec::new();
        for kink in [0.5f32, 1.0, 2.0] {
            let mut w = x[100..120].to_vec();
            w[10] += kink;
            let Scores::All(s) = d.score(&w) else {
                unreachable!()
            };
            assert!(s[0] > 1.0, "kink {kink}: {}", s[0]);
            peaks.push(s[0]);
        }
        assert!(peaks[0] < peaks[1] && peaks[1] < peaks[2], "{peaks:?}");
    }
}
