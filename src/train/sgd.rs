//! Stochastic gradient descent on the one-class SVM primal, step for step as scikit-learn's
//! `SGDOneClassSVM` (`sklearn/linear_model/_sgd_fast.pyx.tp`, `_plain_sgd`, float64 variant,
//! averaging off, no early stopping).
//!
//! scikit-learn minimises, over a weight vector `w` and an intercept `b = 1 - ρ`,
//!
//! ```text
//! ν/2 |w|² + ν b + mean_i max(0, 1 - (w·x_i + b))
//! ```
//!
//! which is ν times the OCSVM primal `½|w|² - ρ + 1/(ν n) Σ max(0, ρ - w·x_i)`. Its decision
//! function is `w·x - ρ`, negative outside the learned region. Every sample costs one step:
//!
//! ```text
//! p = w·x + b
//! η = schedule(t)
//! u = η if p <= 1 else 0                 hinge subgradient, y = 1
//! w = max(0, 1 - η ν) w + u x            L2 shrink, then the hinge step
//! b = b + u - η ν                        the ν ρ term pulls ρ up
//! t = t + 1
//! ```
//!
//! starting from `w = 0`, `b = 1` (`ρ = 0`), `t = 1`. The shrink is kept as a separate scale
//! `wscale` as sklearn's `WeightVector` does (folded back when it falls below 1e-9), because
//! that is what makes the floating-point results agree with sklearn's to the last bits, not
//! just to the optimum.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Learning-rate schedules of scikit-learn's SGD (`learning_rate=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LearningRate {
    /// `η = 1 / (ν (t0 + t - 1))` with `t0` chosen so that the first step is `ν^(-1/4)`
    /// (Bottou's heuristic): sklearn's default. Needs no tuning.
    Optimal,
    /// `η = eta0` throughout.
    Constant,
    /// `η = eta0 / t^power_t`.
    Invscaling,
}

impl LearningRate {
    /// sklearn's name for the schedule.
    pub fn as_str(self) -> &'static str {
        match self {
            LearningRate::Optimal => "optimal",
            LearningRate::Constant => "constant",
            LearningRate::Invscaling => "invscaling",
        }
    }
}

/// Settings of one SGD fit; the names are sklearn's.
#[derive(Clone, Debug, PartialEq)]
pub struct SgdConfig {
    /// ν in (0, 1]: upper bound on the fraction of training samples outside, lower bound
    /// on the fraction of support vectors. sklearn passes it as the regularisation `alpha`.
    pub nu: f64,
    /// The step-size schedule.
    pub learning_rate: LearningRate,
    /// Initial step for `constant` and `invscaling` (unused by `optimal`).
    pub eta0: f64,
    /// Exponent of `invscaling`.
    pub power_t: f64,
    /// Passes over the data (sklearn's `max_iter` with `tol=None`).
    pub epochs: usize,
}

impl SgdConfig {
    /// Checks the ranges sklearn's parameter validation enforces.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.nu > 0.0 && self.nu <= 1.0) {
            return Err(format!("nu must be in (0, 1], got {}", self.nu));
        }
        if self.epochs == 0 {
            return Err("epochs must be at least 1".into());
        }
        // written so that NaN fails too
        let eta0_positive = self.eta0 > 0.0;
        if self.learning_rate != LearningRate::Optimal && !eta0_positive {
            return Err(format!(
                "learning rate {} needs eta0 > 0, got {}",
                self.learning_rate.as_str(),
                self.eta0
            ));
        }
        if !self.power_t.is_finite() {
            return Err(format!("power_t must be finite, got {}", self.power_t));
        }
        Ok(())
    }
}

/// A fitted linear one-class SVM: `decision(x) = coef·x - offset`, sklearn's `coef_` and
/// `offset_`.
#[derive(Clone, Debug, PartialEq)]
pub struct OcsvmFit {
    /// The weight vector.
    pub coef: Vec<f64>,
    /// ρ: samples with `coef·x < offset` are outside.
    pub offset: f64,
}

impl OcsvmFit {
    /// sklearn's `decision_function`: positive inside, negative outside.
    pub fn decision(&self, x: &[f64]) -> f64 {
        dot(&self.coef, x) - self.offset
    }
}

/// The visiting order of the samples in every epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// 0, 1, ..., n-1 in every epoch (sklearn's `shuffle=False`).
    Sequential,
    /// A fresh permutation per epoch drawn from this seed. Not sklearn's permutation (its
    /// `SequentialDataset` shuffles with its own generator), but the same for every model
    /// fitted with the same seed and sample count, which keeps feature-wise training
    /// independent of how features are spread over threads.
    Shuffled(u64),
}

/// The permutation of epoch `epoch` under `Order::Shuffled(seed)`.
pub fn epoch_permutation(seed: u64, epoch: usize, n: usize, out: &mut Vec<u32>) {
    out.clear();
    out.extend(0..n as u32);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // one stream per epoch: epochs are independent draws and need not be generated in turn
    rng.set_stream(epoch as u64 + 1);
    out.shuffle(&mut rng);
}

/// sklearn's `WeightVector` folds its scale back when it falls below this (float64 variant).
const RESET_WSCALE: f64 = 1e-9;

/// Fits a linear OCSVM to the `n = samples.len() / dim` rows of `samples` (row-major
/// `[n][dim]`). Fails when the iterates overflow, as sklearn does ("Floating-point
/// under-/overflow occurred at epoch #k").
pub fn fit_ocsvm(
    samples: &[f64],
    dim: usize,
    cfg: &SgdConfig,
    order: Order,
) -> Result<OcsvmFit, String> {
    cfg.validate()?;
    assert!(dim > 0, "samples need at least one dimension");
    assert_eq!(
        samples.len() % dim,
        0,
        "samples are not whole rows of {dim}"
    );
    let n = samples.len() / dim;
    let mut perm = Vec::new();
    let mut state = SgdState::new(dim, cfg);
    for epoch in 0..cfg.epochs {
        match order {
            Order::Sequential => {
                for x in samples.chunks_exact(dim) {
                    state.step(x, cfg);
                }
            }
            Order::Shuffled(seed) => {
                epoch_permutation(seed, epoch, n, &mut perm);
                for &i in &perm {
                    let i = i as usize;
                    state.step(&samples[i * dim..(i + 1) * dim], cfg);
                }
            }
        }
        if !state.intercept.is_finite() || state.w.iter().any(|v| !v.is_finite()) {
            return Err(format!(
                "floating-point overflow in SGD at epoch {}; the training data may be too \
                 large in magnitude for the learning rate (standardise it or lower eta0)",
                epoch + 1
            ));
        }
    }
    Ok(state.finish())
}

/// The iterate of sklearn's `_plain_sgd`: `w = wscale * w_raw`.
struct SgdState {
    w: Vec<f64>,
    wscale: f64,
    intercept: f64,
    t: f64,
    optimal_init: f64,
}

impl SgdState {
    fn new(dim: usize, cfg: &SgdConfig) -> Self {
        let alpha = cfg.nu;
        // Bottou's heuristic as sklearn codes it: typw = sqrt(1/sqrt(alpha)), first step
        // typw / max(1, hinge'(1, -typw)) = typw / max(1, -1) = typw, and t0 such that
        // η(t=1) equals it.
        let typw = (1.0 / alpha.sqrt()).sqrt();
        let initial_eta0 = typw;
        SgdState {
            w: vec![0.0; dim],
            wscale: 1.0,
            intercept: 1.0,
            t: 1.0,
            optimal_init: 1.0 / (initial_eta0 * alpha),
        }
    }

    #[inline(always)]
    fn step(&mut self, x: &[f64], cfg: &SgdConfig) {
        let alpha = cfg.nu;
        let p = dot(&self.w, x) * self.wscale + self.intercept;
        let eta = match cfg.learning_rate {
            LearningRate::Optimal => 1.0 / (alpha * (self.optimal_init + self.t - 1.0)),
            LearningRate::Constant => cfg.eta0,
            LearningRate::Invscaling => cfg.eta0 / self.t.powf(cfg.power_t),
        };
        // hinge with threshold 1 and y = 1: dloss = -1 inside the margin, update = -η dloss
        let update = if p <= 1.0 { eta } else { 0.0 };
        self.wscale *= (1.0 - eta * alpha).max(0.0);
        if self.wscale < RESET_WSCALE {
            for v in &mut self.w {
                *v *= self.wscale;
            }
            self.wscale = 1.0;
        }
        if update != 0.0 {
            let c = update / self.wscale;
            for (v, &xv) in self.w.iter_mut().zip(x) {
                *v += xv * c;
            }
        }
        let intercept_update = update - eta * alpha;
        if intercept_update != 0.0 {
            self.intercept += intercept_update;
        }
        self.t += 1.0;
    }

    fn finish(self) -> OcsvmFit {
        let wscale = self.wscale;
        OcsvmFit {
            coef: self.w.into_iter().map(|v| v * wscale).collect(),
            offset: 1.0 - self.intercept,
        }
    }
}

/// Models fitted together by [`fit_ocsvm_lanes`].
pub const LANES: usize = 8;

/// Fits [`LANES`] OCSVMs at once, each exactly as [`fit_ocsvm`] would (bit for bit): the
/// models visit their samples in the same order, so they share the step counter, the
/// learning rate and the weight scale, and differ only in their weights, intercepts and
/// which of them take the hinge step. A single model's step is a chain of dependent
/// additions (the dot product in sklearn's order) that leaves the processor waiting on
/// each; eight independent chains side by side fill those waits and the vector lanes.
///
/// `samples` is `[n][dim][LANES]`: component j of sample i of model l is
/// `scale * samples[(i * dim + j) * LANES + l] as f64`, computed afresh at every use (so
/// the same f64 every time) from f32 storage: half the memory of f64 samples, and a
/// shuffled epoch over eight models' samples then stays within the processor's caches.
/// Both kinds of samples are exactly of this form: raw f32 windows (scale 1) and
/// `sqrt(2/D)` times an f32 cosine. On overflow, the error names the first lane that
/// overflowed.
pub fn fit_ocsvm_lanes(
    samples: &[f32],
    scale: f64,
    dim: usize,
    cfg: &SgdConfig,
    order: Order,
) -> Result<Vec<OcsvmFit>, (usize, String)> {
    cfg.validate().map_err(|e| (0, e))?;
    assert!(dim > 0, "samples need at least one dimension");
    assert_eq!(
        samples.len() % (dim * LANES),
        0,
        "samples are not [n][{dim}][{LANES}]"
    );
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { fit_lanes_avx2(samples, scale, dim, cfg, order) };
    }
    fit_lanes(samples, scale, dim, cfg, order)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fit_lanes_avx2(
    samples: &[f32],
    scale: f64,
    dim: usize,
    cfg: &SgdConfig,
    order: Order,
) -> Result<Vec<OcsvmFit>, (usize, String)> {
    // AVX2 without FMA: the compiler may only widen the same operations, so the results
    // stay those of the portable code
    fit_lanes(samples, scale, dim, cfg, order)
}

#[inline(always)]
fn fit_lanes(
    samples: &[f32],
    scale: f64,
    dim: usize,
    cfg: &SgdConfig,
    order: Order,
) -> Result<Vec<OcsvmFit>, (usize, String)> {
    let row = dim * LANES;
    let n = samples.len() / row;
    let alpha = cfg.nu;
    let scalar = SgdState::new(1, cfg);
    let optimal_init = scalar.optimal_init;
    let mut w = vec![[0f64; LANES]; dim];
    let mut wscale = 1f64;
    let mut intercept = [1f64; LANES];
    let mut t = 1f64;
    let mut perm: Vec<u32> = (0..n as u32).collect();
    for epoch in 0..cfg.epochs {
        if let Order::Shuffled(seed) = order {
            epoch_permutation(seed, epoch, n, &mut perm);
        }
        for &i in &perm {
            let i = i as usize;
            let x = &samples[i * row..(i + 1) * row];
            let mut dot = [0f64; LANES];
            for (wj, xj) in w.iter().zip(x.chunks_exact(LANES)) {
                for l in 0..LANES {
                    dot[l] += wj[l] * (scale * xj[l] as f64);
                }
            }
            let eta = match cfg.learning_rate {
                LearningRate::Optimal => 1.0 / (alpha * (optimal_init + t - 1.0)),
                LearningRate::Constant => cfg.eta0,
                LearningRate::Invscaling => cfg.eta0 / t.powf(cfg.power_t),
            };
            let mut update = [0f64; LANES];
            for l in 0..LANES {
                let p = dot[l] * wscale + intercept[l];
                update[l] = if p <= 1.0 { eta } else { 0.0 };
            }
            wscale *= (1.0 - eta * alpha).max(0.0);
            if wscale < RESET_WSCALE {
                for wj in &mut w {
                    for v in wj.iter_mut() {
                        *v *= wscale;
                    }
                }
                wscale = 1.0;
            }
            let mut c = [0f64; LANES];
            for l in 0..LANES {
                c[l] = update[l] / wscale;
            }
            for (wj, xj) in w.iter_mut().zip(x.chunks_exact(LANES)) {
                for l in 0..LANES {
                    // a select, not an add of zero: -0.0 + 0.0 would flip a zero's sign
                    wj[l] = if update[l] != 0.0 {
                        wj[l] + (scale * xj[l] as f64) * c[l]
                    } else {
                        wj[l]
                    };
                }
            }
            for l in 0..LANES {
                let d = update[l] - eta * alpha;
                intercept[l] = if d != 0.0 {
                    intercept[l] + d
                } else {
                    intercept[l]
                };
            }
            t += 1.0;
        }
        for l in 0..LANES {
            if !intercept[l].is_finite() || w.iter().any(|wj| !wj[l].is_finite()) {
                return Err((
                    l,
                    format!(
                        "floating-point overflow in SGD at epoch {}; the training data may be \
                         too large in magnitude for the learning rate (standardise it or \
                         lower eta0)",
                        epoch + 1
                    ),
                ));
            }
        }
    }
    Ok((0..LANES)
        .map(|l| OcsvmFit {
            coef: w.iter().map(|wj| wj[l] * wscale).collect(),
            offset: 1.0 - intercept[l],
        })
        .collect())
}

/// Sequential sum, in sklearn's order: reordering it (or letting a compiler vectorise it)
/// would change the last bits and, through the hinge's `p <= 1` test, occasionally a step.
#[inline(always)]
fn dot(w: &[f64], x: &[f64]) -> f64 {
    let mut s = 0.0;
    for (a, b) in w.iter().zip(x) {
        s += a * b;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(nu: f64, learning_rate: LearningRate, epochs: usize) -> SgdConfig {
        SgdConfig {
            nu,
            learning_rate,
            eta0: 0.01,
            power_t: 0.5,
            epochs,
        }
    }

    #[test]
    fn first_steps_match_hand_computation() {
        // two 1-d samples, constant η = 0.1, ν = 0.5
        let c = SgdConfig {
            eta0: 0.1,
            ..cfg(0.5, LearningRate::Constant, 1)
        };
        let fit = fit_ocsvm(&[2.0, 4.0], 1, &c, Order::Sequential).unwrap();
        // step 1: p = 0 + 1 <= 1 -> w = 0.95*0 + 0.1*2 = 0.2, b = 1 + 0.1 - 0.05 = 1.05
        // step 2: p = 0.2*4 + 1.05 = 1.85 > 1 -> w = 0.95*0.2 = 0.19, b = 1.05 - 0.05 = 1.0
        assert!((fit.coef[0] - 0.19).abs() < 1e-15);
        assert!((fit.offset - 0.0).abs() < 1e-15);
    }

    #[test]
    fn optimal_schedule_starts_at_nu_to_minus_quarter() {
        // one sample at the origin: the hinge is active, w stays 0, b moves by η(1 - ν)
        let nu = 0.2;
        let fit = fit_ocsvm(
            &[0.0],
            1,
            &cfg(nu, LearningRate::Optimal, 1),
            Order::Sequential,
        )
        .unwrap();
        let eta = nu.powf(-0.25);
        assert!((fit.offset - (-(eta - eta * nu))).abs() < 1e-12);
    }

    #[test]
    fn shuffled_order_is_a_permutation_per_epoch() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        epoch_permutation(7, 0, 100, &mut a);
        epoch_permutation(7, 1, 100, &mut b);
        assert_ne!(a, b);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<u32>>());
        let mut again = Vec::new();
        epoch_permutation(7, 0, 100, &mut again);
        assert_eq!(a, again);
    }

    #[test]
    fn overflow_is_an_error() {
        let c = SgdConfig {
            eta0: 1e300,
            ..cfg(0.5, LearningRate::Constant, 3)
        };
        // η ν > 1 zeroes the weights each step, but the hinge step alone overflows
        let err = fit_ocsvm(&[1e300, -1e300], 1, &c, Order::Sequential).unwrap_err();
        assert!(err.contains("overflow"), "{err}");
    }

    #[test]
    fn lanes_match_single_fits_bit_for_bit() {
        let (n, dim) = (300, 3);
        let mut r = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            (r >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 1.0
        };
        // per lane: its own data, some far from the origin so that hinge steps differ
        let scale = 0.25;
        let stored: Vec<Vec<f32>> = (0..LANES)
            .map(|l| {
                (0..n * dim)
                    .map(|_| (next() * (1 + l) as f64 + l as f64) as f32)
                    .collect()
            })
            .collect();
        let single: Vec<Vec<f64>> = stored
            .iter()
            .map(|s| s.iter().map(|&v| scale * v as f64).collect())
            .collect();
        let mut interleaved = vec![0f32; n * dim * LANES];
        for (l, s) in stored.iter().enumerate() {
            for (k, &v) in s.iter().enumerate() {
                interleaved[k * LANES + l] = v;
            }
        }
        for (lr, order) in [
            (LearningRate::Optimal, Order::Sequential),
            (LearningRate::Optimal, Order::Shuffled(3)),
            (LearningRate::Constant, Order::Shuffled(4)),
            (LearningRate::Invscaling, Order::Sequential),
        ] {
            let c = SgdConfig {
                eta0: 0.05,
                ..cfg(0.05, lr, 4)
            };
            let lanes = fit_ocsvm_lanes(&interleaved, scale, dim, &c, order).unwrap();
            for (l, s) in single.iter().enumerate() {
                let one = fit_ocsvm(s, dim, &c, order).unwrap();
                let bits = |f: &OcsvmFit| {
                    let mut b: Vec<u64> = f.coef.iter().map(|v| v.to_bits()).collect();
                    b.push(f.offset.to_bits());
                    b
                };
                assert_eq!(bits(&lanes[l]), bits(&one), "{lr:?} {order:?} lane {l}");
            }
        }
    }

    #[test]
    fn rejects_bad_settings() {
        assert!(cfg(0.0, LearningRate::Optimal, 1).validate().is_err());
        assert!(cfg(1.5, LearningRate::Optimal, 1).validate().is_err());
        assert!(cfg(0.5, LearningRate::Optimal, 0).validate().is_err());
        let c = SgdConfig {
            eta0: 0.0,
            ..cfg(0.5, LearningRate::Constant, 1)
        };
        assert!(c.validate().is_err());
    }
}
