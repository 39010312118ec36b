//! CPU scoring of one partition's features: `[B][W][F_part] -> [B][F_part]`.
//!
//! At construction the scorer copies its feature range out of the model, transposed to
//! feature-minor layouts (`[W][F_part]`, `[D][F_part]`) so the inner loops run over
//! contiguous features and vectorise; calibration is folded into weights and bias.

use std::ops::Range;

use super::{trig, Model, Params};

/// Features scored together in one block of the kernel model: a multiple of every SIMD
/// width the compiler may pick, so full blocks and the padded tail run the same code.
const LANES: usize = 16;

/// Scores a feature range of one model on the CPU.
#[derive(Clone, Debug)]
pub struct Scorer {
    window: usize,
    lo: usize,
    width: usize,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    Linear {
        /// `[W][F_part]`, calibration scale folded in.
        weight_t: Vec<f32>,
        /// `(bias + offset) * scale`.
        bias: Vec<f32>,
    },
    Rff {
        mean: Vec<f32>,
        inv_std: Vec<f32>,
        /// `[D][W]`.
        omega: Vec<f32>,
        phase: Vec<f32>,
        /// `[D][F_part padded to LANES]`, sqrt(2/D) and calibration scale folded in.
        weight_t: Vec<f32>,
        bias: Vec<f32>,
    },
}

impl Scorer {
    /// A scorer for features `range` of `model`.
    pub fn new(model: &Model, range: Range<usize>) -> Scorer {
        let w = model.window();
        let f = model.n_features();
        assert!(range.end <= f, "feature range {range:?} outside 0..{f}");
        let width = range.len();
        let (off, scale): (Vec<f32>, Vec<f32>) = match &model.calibration {
            Some(c) => (
                c.offset[range.clone()].to_vec(),
                c.scale[range.clone()].to_vec(),
            ),
            None => (vec![0.0; width], vec![1.0; width]),
        };
        let kind = match &model.params {
            Params::Linear { weight, bias } => {
                let mut weight_t = vec![0f32; w * width];
                for (j, fi) in range.clone().enumerate() {
                    for k in 0..w {
                        weight_t[k * width + j] = weight[fi * w + k] * scale[j];
                    }
                }
                let bias = range
                    .clone()
                    .enumerate()
                    .map(|(j, fi)| (bias[fi] + off[j]) * scale[j])
                    .collect();
                Kind::Linear { weight_t, bias }
            }
            Params::Rff {
                mean,
                inv_std,
                omega,
                phase,
                weight,
                bias,
            } => {
                let d = phase.len();
                let c = (2.0 / d as f64).sqrt() as f32;
                let padded = width.div_ceil(LANES) * LANES;
                let mut weight_t = vec![0f32; d * padded];
                for (j, fi) in range.clone().enumerate() {
                    for di in 0..d {
                        weight_t[di * padded + j] = weight[fi * d + di] * c * scale[j];
                    }
                }
                Kind::Rff {
                    mean: mean[range.clone()].to_vec(),
                    inv_std: inv_std[range.clone()].to_vec(),
                    omega: omega.clone(),
                    phase: phase.clone(),
                    weight_t,
                    bias: range
                        .clone()
                        .enumerate()
                        .map(|(j, fi)| (bias[fi] + off[j]) * scale[j])
                        .collect(),
                }
            }
        };
        Scorer {
            window: w,
            lo: range.start,
            width,
            kind,
        }
    }

    /// Global index of the first feature scored.
    pub fn lo(&self) -> usize {
        self.lo
    }

    /// Number of features scored.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Window length.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Scores `windows` (`[B][W][F_part]`) into `out` (`[B][F_part]`, overwritten).
    pub fn score(&self, windows: &[f32], out: &mut [f32]) {
        let per_window = self.window * self.width;
        assert!(per_window > 0 || windows.is_empty());
        let b = windows.len().checked_div(per_window).unwrap_or(0);
        assert_eq!(windows.len(), b * per_window, "batch is not whole windows");
        assert_eq!(out.len(), b * self.width, "output is not [B][F_part]");
        for (x, o) in windows
            .chunks_exact(per_window.max(1))
            .zip(out.chunks_exact_mut(self.width.max(1)))
        {
            self.score_window(x, o);
        }
    }

    fn score_window(&self, x: &[f32], out: &mut [f32]) {
        match &self.kind {
            Kind::Linear { weight_t, bias } => {
                linear(self.window, self.width, weight_t, bias, x, out)
            }
            Kind::Rff { .. } => {
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2, checked just above.
                    unsafe { self.rff_avx2(x, out) };
                    return;
                }
                self.rff(x, out)
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn rff_avx2(&self, x: &[f32], out: &mut [f32]) {
        self.rff(x, out)
    }

    #[inline(always)]
    fn rff(&self, x: &[f32], out: &mut [f32]) {
        let Kind::Rff {
            mean,
            inv_std,
            omega,
            phase,
            weight_t,
            bias,
        } = &self.kind
        else {
            unreachable!("rff kernel on a linear model")
        };
        let (w, width) = (self.window, self.width);
        let padded = width.div_ceil(LANES) * LANES;
        let mut z = vec![[0f32; LANES]; w];
        for f0 in (0..width).step_by(LANES) {
            let n = LANES.min(width - f0);
            // standardised window of LANES features; the padded tail lanes stay 0
            for (k, zk) in z.iter_mut().enumerate() {
                let row = &x[k * width + f0..k * width + f0 + n];
                for l in 0..n {
                    zk[l] = (row[l] - mean[f0 + l]) * inv_std[f0 + l];
                }
                zk[n..].fill(0.0);
            }
            let mut acc = [0f32; LANES];
            for (di, &ph) in phase.iter().enumerate() {
                let om = &omega[di * w..di * w + w];
                let mut theta = [ph; LANES];
                for (k, zk) in z.iter().enumerate() {
                    for l in 0..LANES {
                        theta[l] += om[k] * zk[l];
                    }
                }
                let a: &[f32; LANES] = weight_t[di * padded + f0..di * padded + f0 + LANES]
                    .try_into()
                    .expect("padded to LANES");
                for l in 0..LANES {
                    acc[l] += a[l] * trig::cos(theta[l]);
                }
            }
            for l in 0..n {
                out[f0 + l] = -(acc[l] + bias[f0 + l]);
            }
        }
    }
}

#[inline(always)]
fn linear(w: usize, width: usize, weight_t: &[f32], bias: &[f32], x: &[f32], out: &mut [f32]) {
    out.fill(0.0);
    for k in 0..w {
        let xs = &x[k * width..(k + 1) * width];
        let ws = &weight_t[k * width..(k + 1) * width];
        for ((o, &xv), &wv) in out.iter_mut().zip(xs).zip(ws) {
            *o += wv * xv;
        }
    }
    for (o, &b) in out.iter_mut().zip(bias) {
        *o = -(*o + b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Calibration, FeatureNames, ModelKind, ModelMeta, Provenance, RffMeta};

    fn meta(kind: ModelKind, w: usize, f: usize, d: usize) -> ModelMeta {
        ModelMeta {
            format: 1,
            kind,
            window: w,
            n_features: f,
            features: FeatureNames::default(),
            nu: 0.1,
            score: String::new(),
            threshold: 0.9,
            rff: (kind == ModelKind::Rff).then_some(RffMeta {
                components: d,
                gamma: 0.1,
                seed: 1,
            }),
            calibration: None,
            training: serde_json::Value::Null,
            provenance: Provenance::default(),
        }
    }

    #[test]
    fn linear_score_is_minus_w_dot_x_plus_b() {
        // feature 0: w = [1, 2], b = 0.5; feature 1: w = [-1, 0], b = -1
        let model = Model {
            meta: meta(ModelKind::Linear, 2, 2, 0),
            params: Params::Linear {
                weight: vec![1.0, 2.0, -1.0, 0.0],
                bias: vec![0.5, -1.0],
            },
            calibration: None,
        };
        let scorer = Scorer::new(&model, 0..2);
        // window [W=2][F=2]: t0 = [1, 3], t1 = [2, 4]
        let mut out = [0.0; 2];
        scorer.score(&[1.0, 3.0, 2.0, 4.0], &mut out);
        assert_eq!(out, [-(1.0 + 4.0 + 0.5), -(-3.0 - 1.0)]);
        // the second half of the features alone gives the same score
        let mut part = [0.0; 1];
        Scorer::new(&model, 1..2).score(&[3.0, 4.0], &mut part);
        assert_eq!(part[0], out[1]);
    }

    #[test]
    fn calibration_maps_raw_scores_per_feature() {
        let mut model = Model {
            meta: meta(ModelKind::Linear, 1, 2, 0),
            params: Params::Linear {
                weight: vec![1.0, 1.0],
                bias: vec![0.0, 0.0],
            },
            calibration: None,
        };
        model.calibration = Some(Calibration {
            offset: vec![1.0, -2.0],
            scale: vec![2.0, 0.5],
        });
        let mut out = [0.0; 2];
        Scorer::new(&model, 0..2).score(&[3.0, 3.0], &mut out);
        // raw = -3; calibrated = (raw - offset) * scale
        assert_eq!(out, [(-3.0 - 1.0) * 2.0, (-3.0 + 2.0) * 0.5]);
    }

    #[test]
    fn rff_matches_direct_formula_and_partitioning() {
        let (w, f, d) = (3, 37, 5);
        let mut rng = 1u64;
        let mut next = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((rng >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let mean: Vec<f32> = (0..f).map(|_| next()).collect();
        let inv_std: Vec<f32> = (0..f).map(|_| 1.0 + next().abs()).collect();
        let omega: Vec<f32> = (0..d * w).map(|_| next()).collect();
        let phase: Vec<f32> = (0..d).map(|_| next() * 3.0).collect();
        let weight: Vec<f32> = (0..f * d).map(|_| next()).collect();
        let bias: Vec<f32> = (0..f).map(|_| next()).collect();
        let x: Vec<f32> = (0..w * f).map(|_| next() * 2.0).collect();
        let model = Model {
            meta: meta(ModelKind::Rff, w, f, d),
            params: Params::Rff {
                mean: mean.clone(),
                inv_std: inv_std.clone(),
                omega: omega.clone(),
                phase: phase.clone(),
                weight: weight.clone(),
                bias: bias.clone(),
            },
            calibration: None,
        };
        let mut out = vec![0.0; f];
        Scorer::new(&model, 0..f).score(&x, &mut out);
        let c = (2.0 / d as f64).sqrt();
        for fi in 0..f {
            let mut acc = 0f64;
            for di in 0..d {
                let mut th = phase[di] as f64;
                for k in 0..w {
                    let z = (x[k * f + fi] - mean[fi]) as f64 * inv_std[fi] as f64;
                    th += omega[di * w + k] as f64 * z;
                }
                acc += weight[fi * d + di] as f64 * c * th.cos();
            }
            let want = -(acc + bias[fi] as f64);
            assert!((out[fi] as f64 - want).abs() < 1e-5, "feature {fi}");
        }
        // any split of the features gives bit-identical scores
        for split in [1, 16, 20] {
            let mut left = vec![0.0; split];
            let mut right = vec![0.0; f - split];
            let xl: Vec<f32> = (0..w)
                .flat_map(|k| x[k * f..k * f + split].to_vec())
                .collect();
            let xr: Vec<f32> = (0..w)
                .flat_map(|k| x[k * f + split..(k + 1) * f].to_vec())
                .collect();
            Scorer::new(&model, 0..split).score(&xl, &mut left);
            Scorer::new(&model, split..f).score(&xr, &mut right);
            left.extend(right);
            assert_eq!(left, out, "split at {split}");
        }
    }
}
