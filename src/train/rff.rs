//! Random Fourier features of standardised windows, computed exactly as the scorer does.
//!
//! The scorer evaluates `φ(z)_d = sqrt(2/D) cos(ω_d·z + phase_d)` for any frequencies and
//! phases the model stores; this module draws them in one of two ways ([`RffSampling`]) and
//! computes the training features with the scorer's f32 arithmetic (standardisation, the
//! angle summed phase first and then in window order, [`trig::cos`]; for cosine-sine pairs,
//! [`trig::sincos_pairs`], the angle summed without its phase of 0 and [`trig::sincos`]),
//! so that the hyperplane is fitted to the very function the engine evaluates.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::model::trig;

/// How the frequencies Ω and phases of an `rff` model are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RffSampling {
    /// Rahimi and Recht's estimator, as sklearn's `RBFSampler` draws it: D independent
    /// `ω_d ~ N(0, 2γ I)` and `phase_d ~ U[0, 2π)`. Unbiased for the RBF kernel, but at
    /// D = 32 on a window of 5 its error is large where it matters: the product of two
    /// features carries a term `cos(ω·(z + z') + 2 phase)` that is not a function of
    /// `z - z'`, and the curvature of the approximated kernel differs from one window
    /// position to the next by tens of percent. Measured on AR(1) data (W = 5, D = 32,
    /// false-alarm target 1e-5), it caught 70% to 85% of 8σ spikes overall and as few as
    /// 29% in some window positions, against 99.9% for [`RffSampling::Orthogonal`].
    Gaussian,
    /// D/2 frequencies, each used twice, with phase 0 and -π/2 (a cosine and a sine), so
    /// that `φ(z)·φ(z')` is exactly a function of `z - z'`; the frequencies come in blocks
    /// of W orthonormal directions (uniformly random rotations) all of length
    /// `sqrt(2γW)`, so that every block's curvature is the same in every direction. The
    /// kernel it estimates, `E cos(ω·Δ)` over a sphere of frequencies, agrees with
    /// `exp(-γ|Δ|²)` to second order in `Δ`; in return spikes score alike in every
    /// window position and in both directions.
    Orthogonal,
}

impl RffSampling {
    /// The name used on the command line and in `model.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            RffSampling::Gaussian => "gaussian",
            RffSampling::Orthogonal => "orthogonal",
        }
    }
}

/// The random frequencies and phases shared by all features of an `rff` model.
#[derive(Clone, Debug, PartialEq)]
pub struct RffMap {
    /// Window length W.
    pub window: usize,
    /// `[D][W]`, row-major.
    pub omega: Vec<f32>,
    /// `[D]`, in `[-π/2, 2π)`.
    pub phase: Vec<f32>,
}

impl RffMap {
    /// Draws D = `components` frequencies and phases for kernel width `gamma` with a
    /// ChaCha8 generator seeded by `seed` (stream 0; shuffling uses the other streams).
    pub fn draw(
        sampling: RffSampling,
        components: usize,
        window: usize,
        gamma: f64,
        seed: u64,
    ) -> RffMap {
        assert!(
            gamma > 0.0 && gamma.is_finite(),
            "gamma must be positive, got {gamma}"
        );
        assert!(components > 0 && window > 0, "empty random feature map");
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let normal = Normal::new(0.0, (2.0 * gamma).sqrt()).expect("finite positive std");
        match sampling {
            RffSampling::Gaussian => {
                let omega = (0..components * window)
                    .map(|_| normal.sample(&mut rng) as f32)
                    .collect();
                let phase = (0..components)
                    .map(|_| {
                        // f32 rounding can land on 2π itself; keep the range half-open
                        let p = rng.random_range(0.0..std::f64::consts::TAU) as f32;
                        if p >= std::f32::consts::TAU {
                            0.0
                        } else {
                            p
                        }
                    })
                    .collect();
                RffMap {
                    window,
                    omega,
                    phase,
                }
            }
            RffSampling::Orthogonal => {
                let n_freq = components.div_ceil(2);
                // E|ω|² of N(0, 2γ I_W), so the kernel's curvature at 0 is the RBF's
                let radius = (2.0 * gamma * window as f64).sqrt();
                let mut freq: Vec<f32> = Vec::with_capacity(n_freq * window);
                while freq.len() < n_freq * window {
                    for row in random_orthonormal_basis(window, &normal, &mut rng) {
                        if freq.len() < n_freq * window {
                            freq.extend(row.iter().map(|&a| (a * radius) as f32));
                        }
                    }
                }
                let mut omega = Vec::with_capacity(components * window);
                let mut phase = Vec::with_capacity(components);
                for d in 0..components {
                    let j = d % n_freq;
                    omega.extend_from_slice(&freq[j * window..(j + 1) * window]);
                    // cos(θ - π/2) = sin θ: the second half are the sines
                    phase.push(if d < n_freq {
                        0.0
                    } else {
                        -std::f32::consts::FRAC_PI_2
                    });
                }
                RffMap {
                    window,
                    omega,
                    phase,
                }
            }
        }
    }

    /// Number of random features D.
    pub fn components(&self) -> usize {
        self.phase.len()
    }

    /// `sqrt(2/D)`, the factor of every feature.
    pub fn feature_scale(&self) -> f64 {
        (2.0 / self.components() as f64).sqrt()
    }

    /// The features of every window of one standardised series `z` (`[T]`): row `j` of
    /// `out` (`[T - W + 1][D]`, row-major) is φ of `z[j..j + W]`, scaled by `sqrt(2/D)`.
    pub fn features_of_series(&self, z: &[f32], theta: &mut Vec<f32>, out: &mut Vec<f64>) {
        let mut cosines = Vec::new();
        self.cosines_of_series(z, theta, &mut cosines);
        let c = self.feature_scale();
        out.clear();
        out.extend(cosines.iter().map(|&v| c * v as f64));
    }

    /// The cosines `cos(ω_d·z_j + phase_d)` of every window of `z`, `[T - W + 1][D]`: the
    /// features without their common factor [`RffMap::feature_scale`], in f32 exactly as
    /// the scorer computes them.
    pub fn cosines_of_series(&self, z: &[f32], theta: &mut Vec<f32>, out: &mut Vec<f32>) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { self.cosines_avx2(z, theta, out) };
            return;
        }
        self.cosines(z, theta, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn cosines_avx2(&self, z: &[f32], theta: &mut Vec<f32>, out: &mut Vec<f32>) {
        // wider registers for the angles; the trigonometry dispatches by itself and avoids
        // fused multiply-adds, so the values are those of the portable code and the scorer
        self.cosines(z, theta, out)
    }

    #[inline(always)]
    fn cosines(&self, z: &[f32], theta: &mut Vec<f32>, out: &mut Vec<f32>) {
        let (w, d) = (self.window, self.components());
        let n = (z.len() + 1).saturating_sub(w);
        out.clear();
        out.resize(n * d, 0.0);
        if let Some(n_freq) = trig::sincos_pairs(&self.omega, &self.phase, w) {
            // the caller's scratch holds the angles (then cosines) and, after them, the sines
            theta.clear();
            theta.resize(2 * n, 0.0);
            let (angles, sines) = theta.split_at_mut(n);
            for (i, om) in self.omega.chunks_exact(w).take(n_freq).enumerate() {
                // the scorer's order: the window from oldest to newest, no phase
                for (t, &zv) in angles.iter_mut().zip(&z[..n]) {
                    *t = om[0] * zv;
                }
                for (k, &ok) in om.iter().enumerate().skip(1) {
                    for (t, &zv) in angles.iter_mut().zip(&z[k..k + n]) {
                        *t += ok * zv;
                    }
                }
                trig::sincos_in_place(angles, sines);
                for (j, (&c, &s)) in angles.iter().zip(sines.iter()).enumerate() {
                    out[j * d + i] = c;
                    // with D odd the last frequency has no sine
                    if i + n_freq < d {
                        out[j * d + i + n_freq] = s;
                    }
                }
            }
            return;
        }
        theta.clear();
        theta.resize(n, 0.0);
        for di in 0..d {
            let om = &self.omega[di * w..(di + 1) * w];
            theta.fill(self.phase[di]);
            // the scorer's order: phase first, then the window from oldest to newest
            for (k, &ok) in om.iter().enumerate() {
                for (t, &zv) in theta.iter_mut().zip(&z[k..k + n]) {
                    *t += ok * zv;
                }
            }
            // in place, contiguous, so that it vectorises; the strided copy comes after
            trig::cos_in_place(theta);
            for (j, &v) in theta.iter().enumerate() {
                out[j * d + di] = v;
            }
        }
    }
}

/// W orthonormal rows: Gram-Schmidt on Gaussian vectors, which makes the basis a uniformly
/// random rotation.
fn random_orthonormal_basis(w: usize, normal: &Normal<f64>, rng: &mut ChaCha8Rng) -> Vec<Vec<f64>> {
    let mut rows: Vec<Vec<f64>> = Vec::with_capacity(w);
    while rows.len() < w {
        let mut v: Vec<f64> = (0..w).map(|_| normal.sample(rng)).collect();
        for u in &rows {
            let p: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
            for (a, b) in v.iter_mut().zip(u) {
                *a -= p * b;
            }
        }
        let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        // a draw (almost) inside the span of the rows so far has no direction left
        if n > 1e-6 {
            rows.push(v.into_iter().map(|a| a / n).collect());
        }
    }
    rows
}

/// Standardises `x` into `z` with the scorer's f32 arithmetic.
pub fn standardise(x: &[f32], mean: f32, inv_std: f32, z: &mut Vec<f32>) {
    z.clear();
    z.extend(x.iter().map(|&v| (v - mean) * inv_std));
}

/// Mean and 1/std (population) of a series, accumulated in f64. A constant series gets
/// `inv_std = 1`: its model then treats a departure of one unit as one standard deviation,
/// which keeps the model loadable (`inv_std > 0`) and finite.
pub fn mean_inv_std(x: &[f32]) -> (f32, f32) {
    let n = x.len().max(1) as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let std = var.sqrt();
    let inv = if std > 0.0 && (1.0 / std).is_finite() && ((1.0 / std) as f32).is_finite() {
        (1.0 / std) as f32
    } else {
        1.0
    };
    (mean as f32, inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(map: &RffMap, a: &[f32], b: &[f32]) -> f64 {
        let (mut theta, mut pa, mut pb) = (Vec::new(), Vec::new(), Vec::new());
        map.features_of_series(a, &mut theta, &mut pa);
        map.features_of_series(b, &mut theta, &mut pb);
        pa.iter().zip(&pb).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn gaussian_draw_is_reproducible_and_has_the_kernel_width() {
        let a = RffMap::draw(RffSampling::Gaussian, 4000, 5, 0.02, 9);
        assert_eq!(a, RffMap::draw(RffSampling::Gaussian, 4000, 5, 0.02, 9));
        assert_ne!(a, RffMap::draw(RffSampling::Gaussian, 4000, 5, 0.02, 10));
        let var = a.omega.iter().map(|&o| (o as f64).powi(2)).sum::<f64>() / a.omega.len() as f64;
        // 20,000 draws: the sample variance is within 4% of 2γ with overwhelming probability
        assert!((var - 0.04).abs() < 0.04 * 0.04, "variance {var}");
        assert!(a
            .phase
            .iter()
            .all(|&p| (0.0..std::f32::consts::TAU).contains(&p)));
    }

    #[test]
    fn gaussian_features_estimate_the_rbf_kernel() {
        let gamma = 0.1;
        let map = RffMap::draw(RffSampling::Gaussian, 20_000, 2, gamma, 3);
        let k = kernel(&map, &[0.3, -0.5], &[-0.5, 1.2]);
        let want = (-gamma * (0.8f64.powi(2) + 1.7f64.powi(2))).exp();
        // the estimate's standard deviation is below 1/sqrt(D) = 0.007
        assert!((k - want).abs() < 0.03, "{k} vs {want}");
        assert!((kernel(&map, &[0.3, -0.5], &[0.3, -0.5]) - 1.0).abs() < 0.03);
    }

    #[test]
    fn orthogonal_frequencies_are_orthonormal_blocks_of_fixed_length() {
        let (w, gamma) = (5, 0.02);
        let map = RffMap::draw(RffSampling::Orthogonal, 32, w, gamma, 4);
        assert_eq!(map, RffMap::draw(RffSampling::Orthogonal, 32, w, gamma, 4));
        let r2 = 2.0 * gamma * w as f64;
        let row = |d: usize| &map.omega[d * w..(d + 1) * w];
        let dot = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| *x as f64 * *y as f64)
                .sum::<f64>()
        };
        for d in 0..16 {
            assert!(
                (dot(row(d), row(d)) - r2).abs() < 1e-6 * r2,
                "length of {d}"
            );
            // the second half repeats the first with a sine's phase
            assert_eq!(row(d), row(d + 16));
            assert_eq!(
                (map.phase[d], map.phase[d + 16]),
                (0.0, -std::f32::consts::FRAC_PI_2)
            );
        }
        for block in 0..3 {
            for i in block * w..(block + 1) * w {
                for j in block * w..i {
                    assert!(dot(row(i), row(j)).abs() < 1e-6 * r2, "rows {i} and {j}");
                }
            }
        }
    }

    #[test]
    fn orthogonal_features_depend_only_on_the_difference_of_windows() {
        let map = RffMap::draw(RffSampling::Orthogonal, 32, 3, 0.05, 5);
        let k = kernel(&map, &[0.5, -1.0, 2.0], &[1.5, 0.0, -1.0]);
        let shifted = kernel(&map, &[2.5, 3.0, -2.0], &[3.5, 4.0, -5.0]);
        // same differences, other positions: equal up to f32 angles
        assert!((k - shifted).abs() < 1e-5, "{k} vs {shifted}");
        assert!((kernel(&map, &[0.5, -1.0, 2.0], &[0.5, -1.0, 2.0]) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn orthogonal_features_match_the_rbf_kernel_to_second_order() {
        let gamma = 0.05;
        // whole blocks: the curvature is then exactly isotropic, whatever the rotations
        let map = RffMap::draw(RffSampling::Orthogonal, 2 * 4 * 3, 3, gamma, 6);
        for delta in [[0.1f32, 0.0, 0.0], [0.0, -0.1, 0.0], [0.06, 0.06, -0.05]] {
            let k = kernel(&map, &[0.0, 0.0, 0.0], &delta);
            let d2: f64 = delta.iter().map(|&v| (v as f64).powi(2)).sum();
            // 1 - γ|Δ|² exactly, up to fourth-order terms of size (γ|Δ|²)² and f32 angles
            assert!((k - (1.0 - gamma * d2)).abs() < 2e-6, "{delta:?}: {k}");
        }
    }

    #[test]
    fn constant_series_gets_unit_scale() {
        assert_eq!(mean_inv_std(&[2.5; 10]), (2.5, 1.0));
        let (m, inv) = mean_inv_std(&[1.0, 3.0]);
        assert_eq!((m, inv), (2.0, 1.0));
        let (_, inv) = mean_inv_std(&[0.0, 10.0]);
        assert!((inv - 0.2).abs() < 1e-7);
    }
}
