//! CPU scoring of one partition's features: `[B][W][F_part] -> [B][F_part]`.
//!
//! At construction the scorer copies its feature range out of the model into layouts whose
//! inner loops run over contiguous features and vectorise: `[W][F_part]` for the linear
//! model; blocks of [`LANES`] features for the kernel model, each block's weights
//! contiguous (`[block][D][LANES]`) so that one block reads one stream and stays in L1
//! while every window of a batch is scored against it. Calibration is folded into weights
//! and bias.
//!
//! The kernel model's arithmetic is fixed to the operation: the standardised window
//! `z = (x - mean) * inv_std`; each angle summed phase first and then in window order, the
//! cosine from [`trig::cos`]; or, when the features are cosine-sine pairs
//! ([`trig::sincos_pairs`], the layout of orthogonal sampling), one angle per pair summed
//! in window order and its cosine and sine from [`trig::sincos`], half the trigonometry;
//! and the score `-(Σ_d a_d φ_d + bias)` summed from 0 in component order. Training
//! computes its features and calibration scores the same way, so the model is fitted to,
//! and calibrated on, the very numbers the engine computes; any split of the features, any
//! batch size and any instruction set give bit-identical scores.

use std::ops::Range;

use super::trig::{self, Block, LANES};
use super::{Model, Params};

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
    Rff(Rff),
}

/// The kernel model, in blocks of [`LANES`] features; the tail block is padded with
/// features whose mean, 1/std, weights and bias are 0.
#[derive(Clone, Debug)]
struct Rff {
    /// `[blocks][LANES]`.
    mean: Vec<f32>,
    /// `[blocks][LANES]`.
    inv_std: Vec<f32>,
    /// `[D][W]`.
    omega: Vec<f32>,
    /// `[D]`.
    phase: Vec<f32>,
    /// `[blocks][D][LANES]`, sqrt(2/D) and calibration scale folded in.
    weight: Vec<f32>,
    /// `[blocks][LANES]`, `(bias + offset) * scale`.
    bias: Vec<f32>,
    /// The number of frequencies when the features are cosine-sine pairs
    /// ([`trig::sincos_pairs`]): the sines then come from the cosines' angles.
    pairs: Option<usize>,
}

/// Features per block of [`Folded::Rff`]'s weights (and of its padded per-feature arrays).
pub const FOLDED_BLOCK: usize = LANES;

/// A [`Scorer`]'s folded parameters ([`Scorer::folded`]), borrowed.
#[derive(Clone, Copy, Debug)]
pub enum Folded<'a> {
    /// The linear model.
    Linear {
        /// `[W][F_part]`, calibration scale folded in.
        weight_t: &'a [f32],
        /// `[F_part]`, `(bias + offset) * scale`.
        bias: &'a [f32],
    },
    /// The kernel model, features in blocks of [`FOLDED_BLOCK`]; the tail block padded
    /// with features whose mean, 1/std, weights and bias are 0.
    Rff {
        /// `[blocks][FOLDED_BLOCK]`.
        mean: &'a [f32],
        /// `[blocks][FOLDED_BLOCK]`.
        inv_std: &'a [f32],
        /// `[D][W]`.
        omega: &'a [f32],
        /// `[D]`.
        phase: &'a [f32],
        /// `[blocks][D][FOLDED_BLOCK]`, `sqrt(2/D)` and calibration scale folded in.
        weight: &'a [f32],
        /// `[blocks][FOLDED_BLOCK]`, `(bias + offset) * scale`.
        bias: &'a [f32],
        /// The number of frequencies when the components are cosine-sine pairs
        /// ([`trig::sincos_pairs`]); `None`: one cosine per component.
        pairs: Option<usize>,
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
                let mut blocked = Rff {
                    mean: vec![0.0; padded],
                    inv_std: vec![0.0; padded],
                    omega: omega.clone(),
                    phase: phase.clone(),
                    weight: vec![0.0; padded * d],
                    bias: vec![0.0; padded],
                    pairs: trig::sincos_pairs(omega, phase, w),
                };
                for (j, fi) in range.clone().enumerate() {
                    let (blk, l) = (j / LANES, j % LANES);
                    blocked.mean[j] = mean[fi];
                    blocked.inv_std[j] = inv_std[fi];
                    blocked.bias[j] = (bias[fi] + off[j]) * scale[j];
                    for di in 0..d {
                        blocked.weight[(blk * d + di) * LANES + l] =
                            weight[fi * d + di] * c * scale[j];
                    }
                }
                Kind::Rff(blocked)
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

    /// The parameters as this scorer's kernels read them, calibration (and the kernel
    /// model's `sqrt(2/D)`) folded in: what a device scorer uploads, so that it computes
    /// the same numbers from the same folded values.
    pub fn folded(&self) -> Folded<'_> {
        match &self.kind {
            Kind::Linear { weight_t, bias } => Folded::Linear { weight_t, bias },
            Kind::Rff(r) => Folded::Rff {
                mean: &r.mean,
                inv_std: &r.inv_std,
                omega: &r.omega,
                phase: &r.phase,
                weight: &r.weight,
                bias: &r.bias,
                pairs: r.pairs,
            },
        }
    }

    /// Scores `windows` (`[B][W][F_part]`) into `out` (`[B][F_part]`, overwritten).
    pub fn score(&self, windows: &[f32], out: &mut [f32]) {
        self.score_and_reach(windows, out, None)
    }

    /// [`Scorer::score`] of windows given as their frames, `frame k of window b` at
    /// `frames[b * W + k]` (`F_part` values each), read where they lie: the same scores,
    /// bit for bit, without copying the windows into one buffer first.
    pub fn score_frames(&self, frames: &[&[f32]], out: &mut [f32]) {
        self.score_frames_and_reach(frames, out, None)
    }

    /// [`Scorer::score`], and for the kernel model also each window's largest
    /// standardised distance per feature, `max_k |(x_k - mean) · inv_std|` (NaN values
    /// left out, 0 for none), into `reach` (`[B][F_part]`): the kernel computes every
    /// standardised value anyway, so the departure guard ([`crate::detect::RffOcSvm`])
    /// gets them without a second pass over the batch. A linear model leaves `reach`
    /// as it is.
    pub fn score_and_reach(&self, windows: &[f32], out: &mut [f32], reach: Option<&mut [f32]>) {
        let per_window = self.window * self.width;
        assert!(per_window > 0 || windows.is_empty());
        let b = windows.len().checked_div(per_window).unwrap_or(0);
        assert_eq!(windows.len(), b * per_window, "batch is not whole windows");
        let rows = Flat {
            values: windows,
            w: self.window,
            width: self.width,
        };
        self.score_rows(rows, b, out, reach)
    }

    /// [`Scorer::score_and_reach`] of windows given as their frames, as
    /// [`Scorer::score_frames`] takes them.
    pub fn score_frames_and_reach(
        &self,
        frames: &[&[f32]],
        out: &mut [f32],
        reach: Option<&mut [f32]>,
    ) {
        assert!(self.window > 0, "a window holds at least one frame");
        assert_eq!(frames.len() % self.window, 0, "batch is not whole windows");
        assert!(
            frames.iter().all(|f| f.len() == self.width),
            "a frame is not F_part = {} values wide",
            self.width
        );
        let b = frames.len() / self.window;
        let rows = Framed {
            frames,
            w: self.window,
        };
        self.score_rows(rows, b, out, reach)
    }

    fn score_rows<R: Rows>(&self, rows: R, b: usize, out: &mut [f32], reach: Option<&mut [f32]>) {
        assert_eq!(out.len(), b * self.width, "output is not [B][F_part]");
        if b == 0 || self.width == 0 {
            return;
        }
        match &self.kind {
            Kind::Linear { weight_t, bias } => {
                let (w, width) = (self.window, self.width);
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F, checked just above.
                    unsafe { linear_avx512(w, width, weight_t, bias, rows, out) };
                    return;
                }
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2, checked just above.
                    unsafe { linear_avx2(w, width, weight_t, bias, rows, out) };
                    return;
                }
                linear_kernel(w, width, weight_t, bias, rows, out)
            }
            Kind::Rff(rff) => {
                if let Some(reach) = &reach {
                    assert_eq!(reach.len(), out.len(), "reach is not [B][F_part]");
                }
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F, checked just above.
                    unsafe { rff_avx512(rff, self.window, self.width, rows, out, reach) };
                    return;
                }
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2, checked just above.
                    unsafe { rff_avx2(rff, self.window, self.width, rows, out, reach) };
                    return;
                }
                rff_kernel::<trig::Portable, R>(rff, self.window, self.width, rows, out, reach)
            }
        }
    }
}

/// Where a kernel reads frame `k` of window `b` (`width` values): one `[B][W][width]`
/// buffer, or the frames where they lie. The kernels do the same arithmetic in the same
/// order on either, so both give the same bits.
trait Rows: Copy {
    fn row(&self, b: usize, k: usize) -> &[f32];
}

/// Windows in one buffer, `[B][W][width]`.
#[derive(Clone, Copy)]
struct Flat<'a> {
    values: &'a [f32],
    w: usize,
    width: usize,
}

impl Rows for Flat<'_> {
    #[inline(always)]
    fn row(&self, b: usize, k: usize) -> &[f32] {
        let at = (b * self.w + k) * self.width;
        &self.values[at..at + self.width]
    }
}

/// Windows as their frames, `[B * W]` slices of `width` values.
#[derive(Clone, Copy)]
struct Framed<'a> {
    frames: &'a [&'a [f32]],
    w: usize,
}

impl Rows for Framed<'_> {
    #[inline(always)]
    fn row(&self, b: usize, k: usize) -> &[f32] {
        self.frames[b * self.w + k]
    }
}

/// [`rff_kernel`] on AVX registers.
///
/// Only the plain AVX operations of [`trig::Lanes`]: no fused multiply-adds, which would
/// round differently from the portable code and from training (see the module doc).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn rff_avx2<R: Rows>(
    rff: &Rff,
    w: usize,
    width: usize,
    rows: R,
    out: &mut [f32],
    reach: Option<&mut [f32]>,
) {
    rff_kernel::<trig::Avx2, R>(rff, w, width, rows, out, reach)
}

/// [`rff_kernel`] on AVX-512 registers, the same operations as [`rff_avx2`] on twice the
/// lanes: the same bits, half the instructions.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn rff_avx512<R: Rows>(
    rff: &Rff,
    w: usize,
    width: usize,
    rows: R,
    out: &mut [f32],
    reach: Option<&mut [f32]>,
) {
    rff_kernel::<trig::Avx512, R>(rff, w, width, rows, out, reach)
}

/// Scores whole windows `[B][W][width]` into `[B][width]`, block of features by block of
/// features, every window against a block while its parameters are in L1.
#[inline(always)]
fn rff_kernel<V: Block, R: Rows>(
    rff: &Rff,
    w: usize,
    width: usize,
    rows: R,
    out: &mut [f32],
    mut reach: Option<&mut [f32]>,
) {
    let d = rff.phase.len();
    let n_freq = rff.pairs.unwrap_or(d);
    let mut z = vec![V::splat(0.0); w];
    let mut sines = vec![V::splat(0.0); d - n_freq];
    let mut tail = [0f32; LANES];
    let blocks = rff
        .mean
        .chunks_exact(LANES)
        .zip(rff.inv_std.chunks_exact(LANES))
        .zip(rff.bias.chunks_exact(LANES));
    for (blk, ((mean, inv_std), bias)) in blocks.enumerate() {
        // sliced rather than chunked: a model may have D = 0 and no weights at all
        let weight = &rff.weight[blk * d * LANES..(blk + 1) * d * LANES];
        let mean = V::load(lanes(mean));
        let inv_std = V::load(lanes(inv_std));
        let bias = V::load(lanes(bias));
        let f0 = blk * LANES;
        let n = LANES.min(width - f0);
        let magnitude = V::splat(f32::from_bits(!trig::SIGN));
        for (b, o) in out.chunks_exact_mut(width).enumerate() {
            // `a.max(b)` is `b` when `a` is NaN: a NaN value does not reach anywhere
            let mut far = V::splat(0.0);
            for (k, zk) in z.iter_mut().enumerate() {
                let row = &rows.row(b, k)[f0..f0 + n];
                let xk = match <&[f32; LANES]>::try_from(row) {
                    Ok(full) => V::load(full),
                    Err(_) => {
                        // the padded lanes' mean and 1/std are 0, so their z is 0
                        tail[..n].copy_from_slice(row);
                        tail[n..].fill(0.0);
                        V::load(&tail)
                    }
                };
                *zk = xk.sub(mean).mul(inv_std);
                far = zk.and(magnitude).max(far);
            }
            if let Some(reach) = reach.as_deref_mut() {
                far.store(&mut tail);
                reach[b * width + f0..b * width + f0 + n].copy_from_slice(&tail[..n]);
            }
            let acc = match rff.pairs {
                Some(n_freq) => paired(rff, &z, weight, n_freq, &mut sines),
                None => general(rff, &z, weight),
            };
            // -(acc + bias); negation is exact
            let score = acc.add(bias).xor(V::splat(-0.0));
            score.store(&mut tail);
            o[f0..f0 + n].copy_from_slice(&tail[..n]);
        }
    }
}

/// The first [`LANES`] values of a block.
#[inline(always)]
fn lanes(s: &[f32]) -> &[f32; LANES] {
    s.try_into().expect("blocks are LANES wide")
}

/// `phase + Σ_k omega[k] z[k]`, phase first, then the window in order.
#[inline(always)]
fn angle<V: Block>(phase: f32, omega: &[f32], z: &[V]) -> V {
    let mut theta = V::splat(phase);
    for (&om, &zk) in omega.iter().zip(z) {
        theta = theta.add(V::splat(om).mul(zk));
    }
    theta
}

/// `Σ_k omega[k] z[k]` in window order, the angle of a cosine-sine pair: its phase is 0,
/// and adding 0 would change nothing but the sign of a zero angle. Training sums the
/// same way.
#[inline(always)]
fn pair_angle<V: Block>(omega: &[f32], z: &[V]) -> V {
    let mut theta = V::splat(omega[0]).mul(z[0]);
    for (&om, &zk) in omega.iter().zip(z).skip(1) {
        theta = theta.add(V::splat(om).mul(zk));
    }
    theta
}

/// `Σ_d a_d cos(θ_d)` over all D features, one cosine each.
#[inline(always)]
fn general<V: Block>(rff: &Rff, z: &[V], weight: &[f32]) -> V {
    let mut acc = V::splat(0.0);
    for ((&ph, om), a) in rff
        .phase
        .iter()
        .zip(rff.omega.chunks_exact(z.len()))
        .zip(weight.chunks_exact(LANES))
    {
        let c = trig::cos_lanes(angle(ph, om, z));
        acc = acc.add(V::load(lanes(a)).mul(c));
    }
    acc
}

/// `Σ_d a_d φ_d` over cosine-sine pairs: each frequency's cosine and sine from one
/// [`trig::sincos_lanes`], summed in the same component order as [`general`] (all
/// cosines, then the sines, kept aside in `sines` meanwhile).
#[inline(always)]
fn paired<V: Block>(rff: &Rff, z: &[V], weight: &[f32], n_freq: usize, sines: &mut [V]) -> V {
    let (cos_weight, sin_weight) = weight.split_at(n_freq * LANES);
    let mut acc = V::splat(0.0);
    for (i, (om, a)) in rff
        .omega
        .chunks_exact(z.len())
        .zip(cos_weight.chunks_exact(LANES))
        .enumerate()
    {
        let (c, s) = trig::sincos_lanes(pair_angle(om, z));
        acc = acc.add(V::load(lanes(a)).mul(c));
        // with D odd the last frequency has no sine
        if let Some(slot) = sines.get_mut(i) {
            *slot = s;
        }
    }
    for (&s, a) in sines.iter().zip(sin_weight.chunks_exact(LANES)) {
        acc = acc.add(V::load(lanes(a)).mul(s));
    }
    acc
}

/// Features per block of the linear kernel: a block's sums stay in registers while every
/// frame of the window is added in, so the output is written once, not once per frame.
const LINEAR_BLOCK: usize = 64;

/// Scores windows `[B][W][width]` with the linear model: `-(Σ_k w[k]·x[k] + b)` per
/// feature, summed from 0 in frame order (the order training used), block of features by
/// block of features. The order of the additions is the same however the loop is
/// vectorised, so every instruction set gives the same bits.
#[inline(always)]
fn linear_kernel<R: Rows>(
    w: usize,
    width: usize,
    weight_t: &[f32],
    bias: &[f32],
    rows: R,
    out: &mut [f32],
) {
    for (b, o) in out.chunks_exact_mut(width).enumerate() {
        let mut start = 0;
        while start < width {
            let n = LINEAR_BLOCK.min(width - start);
            let mut acc = [0f32; LINEAR_BLOCK];
            for k in 0..w {
                let at = k * width + start;
                let xs = &rows.row(b, k)[start..start + n];
                let ws = &weight_t[at..at + n];
                for ((a, &xv), &wv) in acc[..n].iter_mut().zip(xs).zip(ws) {
                    *a += wv * xv;
                }
            }
            for ((o, &a), &b) in o[start..start + n]
                .iter_mut()
                .zip(&acc[..n])
                .zip(&bias[start..start + n])
            {
                *o = -(a + b);
            }
            start += n;
        }
    }
}

/// [`linear_kernel`] on AVX registers (no fused multiply-adds: the same bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn linear_avx2<R: Rows>(
    w: usize,
    width: usize,
    weight_t: &[f32],
    bias: &[f32],
    rows: R,
    out: &mut [f32],
) {
    linear_kernel(w, width, weight_t, bias, rows, out)
}

/// [`linear_kernel`] on AVX-512 registers (no fused multiply-adds: the same bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn linear_avx512<R: Rows>(
    w: usize,
    width: usize,
    weight_t: &[f32],
    bias: &[f32],
    rows: R,
    out: &mut [f32],
) {
    linear_kernel(w, width, weight_t, bias, rows, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Calibration, FeatureNames, ModelKind, ModelMeta, Provenance, RffMeta};

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// The SIMD instruction sets this CPU has, of those the kernels are compiled for; the
    /// others are named on stderr, not checked.
    #[cfg(target_arch = "x86_64")]
    fn simd_sets() -> Vec<&'static str> {
        let mut sets = Vec::new();
        for (name, has) in [
            ("avx2", std::is_x86_feature_detected!("avx2")),
            ("avx512f", std::is_x86_feature_detected!("avx512f")),
        ] {
            if has {
                sets.push(name);
            } else {
                eprintln!("{name} not on this CPU: its kernel is not checked here");
            }
        }
        sets
    }

    fn flat(values: &[f32], w: usize, width: usize) -> Flat<'_> {
        Flat { values, w, width }
    }

    /// `[B][W][F]` windows as their `B * W` frames.
    fn frames_of(windows: &[f32], f: usize) -> Vec<&[f32]> {
        windows.chunks_exact(f).collect()
    }

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
    fn linear_kernels_give_the_plain_sums_bits() {
        // widths around the block size, odd values, several windows
        for (w, f) in [(1, 1), (5, 63), (5, 64), (3, 130), (30, 25)] {
            let n = 3;
            let weight: Vec<f32> = (0..w * f)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.3)
                .collect();
            let bias: Vec<f32> = (0..f).map(|j| j as f32 * 0.31 - 2.0).collect();
            let model = Model {
                meta: meta(ModelKind::Linear, w, f, 0),
                params: Params::Linear {
                    weight: weight.clone(),
                    bias: bias.clone(),
                },
                calibration: None,
            };
            let windows: Vec<f32> = (0..n * w * f)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.173)
                .collect();
            let mut scores = vec![0f32; n * f];
            Scorer::new(&model, 0..f).score(&windows, &mut scores);
            // the model's weights are [F][W]; the plain sum over frames, from 0
            let want: Vec<u32> = (0..n)
                .flat_map(|b| (0..f).map(move |j| (b, j)))
                .map(|(b, j)| {
                    let mut acc = 0f32;
                    for k in 0..w {
                        acc += weight[j * w + k] * windows[b * w * f + k * f + j];
                    }
                    (-(acc + bias[j])).to_bits()
                })
                .collect();
            assert_eq!(bits(&scores), want, "W={w} F={f}");
            let mut framed = vec![0f32; n * f];
            Scorer::new(&model, 0..f).score_frames(&frames_of(&windows, f), &mut framed);
            assert_eq!(bits(&framed), want, "W={w} F={f}: windows as frames");
            let Kind::Linear { weight_t, bias: b } = &Scorer::new(&model, 0..f).kind else {
                unreachable!("a linear model")
            };
            let mut portable = vec![0f32; n * f];
            linear_kernel(w, f, weight_t, b, flat(&windows, w, f), &mut portable);
            assert_eq!(bits(&portable), want, "W={w} F={f}: portable kernel");
            #[cfg(target_arch = "x86_64")]
            for name in simd_sets() {
                let mut simd = vec![0f32; n * f];
                // SAFETY: the CPU has the feature, checked just above.
                unsafe {
                    match name {
                        "avx2" => linear_avx2(w, f, weight_t, b, flat(&windows, w, f), &mut simd),
                        _ => linear_avx512(w, f, weight_t, b, flat(&windows, w, f), &mut simd),
                    }
                }
                assert_eq!(bits(&simd), want, "W={w} F={f}: {name} kernel");
            }
        }
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

    /// Both kernels (one cosine per feature, and cosine-sine pairs from one angle), on AVX
    /// registers or portable arrays, compute the scores of training's features to the bit: the features of
    /// [`RffMap::cosines_of_series`] summed as the trainer's calibration sums them (weights
    /// folded with sqrt(2/D) in f32, products added from 0 in component order, bias last);
    /// and they stay within float rounding of the exact formula.
    #[test]
    fn rff_kernels_score_trainings_features_to_the_bit() {
        use crate::train::rff::{standardise, RffMap, RffSampling};
        let (w, f, t) = (5, 37, 40);
        let mut rng = 7u64;
        let mut next = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((rng >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        // [T][F], each feature on its own scale, a few far outliers
        let data: Vec<f32> = (0..t * f)
            .map(|i| {
                let v = 3.0 * next() + (i % f) as f32;
                if i % 97 == 0 {
                    v * 4.0
                } else {
                    v
                }
            })
            .collect();
        let cases = [
            (RffSampling::Gaussian, 6, None),
            (RffSampling::Orthogonal, 8, Some(4)),
            (RffSampling::Orthogonal, 7, Some(4)),
        ];
        for (sampling, d, pairs) in cases {
            let map = RffMap::draw(sampling, d, w, 0.05, 3);
            assert_eq!(trig::sincos_pairs(&map.omega, &map.phase, w), pairs);
            let mean: Vec<f32> = (0..f).map(|j| j as f32 + 0.1 * next()).collect();
            let inv_std: Vec<f32> = (0..f).map(|_| 0.5 + next().abs()).collect();
            let weight: Vec<f32> = (0..f * d).map(|_| next()).collect();
            let bias: Vec<f32> = (0..f).map(|_| next()).collect();
            let model = Model {
                meta: meta(ModelKind::Rff, w, f, d),
                params: Params::Rff {
                    mean: mean.clone(),
                    inv_std: inv_std.clone(),
                    omega: map.omega.clone(),
                    phase: map.phase.clone(),
                    weight: weight.clone(),
                    bias: bias.clone(),
                },
                calibration: None,
            };
            let n = t + 1 - w;
            let mut scores = vec![0f32; n * f];
            // all windows in one batch: [n][W][F]
            let windows: Vec<f32> = (0..n)
                .flat_map(|b| data[b * f..(b + w) * f].to_vec())
                .collect();
            let scorer = Scorer::new(&model, 0..f);
            scorer.score(&windows, &mut scores);
            // the portable kernel, which CPUs without AVX2 run, computes the same bits
            let Kind::Rff(rff) = &scorer.kind else {
                unreachable!("an rff model")
            };
            let mut portable = vec![0f32; n * f];
            rff_kernel::<trig::Portable, _>(rff, w, f, flat(&windows, w, f), &mut portable, None);
            // the guard's reach, with a NaN and a huge value in the batch: the plain
            // fold's, from both kernels, scores unchanged
            let mut odd = windows.clone();
            odd[3] = f32::NAN;
            odd[w * f + 5] = 1e30;
            let (mean_ref, inv_ref) = (&mean, &inv_std);
            let want: Vec<f32> = odd
                .chunks_exact(w * f)
                .flat_map(|x| {
                    (0..f).map(move |j| {
                        (0..w).fold(0f32, |m, k| {
                            m.max(((x[k * f + j] - mean_ref[j]) * inv_ref[j]).abs())
                        })
                    })
                })
                .collect();
            let (mut got, mut got_portable) = (vec![-1f32; n * f], vec![-1f32; n * f]);
            let mut again = vec![0f32; n * f];
            scorer.score_and_reach(&odd, &mut again, Some(&mut got));
            rff_kernel::<trig::Portable, _>(
                rff,
                w,
                f,
                flat(&odd, w, f),
                &mut vec![0f32; n * f],
                Some(&mut got_portable),
            );
            assert_eq!(got, want, "{sampling:?} D={d}: reach");
            assert_eq!(got_portable, want, "{sampling:?} D={d}: portable reach");
            assert!(got[f + 5] > 1e29, "the huge value reaches far");
            let mut plain = vec![0f32; n * f];
            scorer.score(&odd, &mut plain);
            // windows as frames where they lie: the same scores and reach
            let (mut framed, mut framed_reach) = (vec![0f32; n * f], vec![-1f32; n * f]);
            scorer.score_frames_and_reach(
                &frames_of(&odd, f),
                &mut framed,
                Some(&mut framed_reach),
            );
            assert_eq!(framed_reach, want, "{sampling:?} D={d}: reach from frames");
            assert_eq!(
                bits(&framed),
                bits(&plain),
                "{sampling:?} D={d}: scores from frames"
            );
            assert_eq!(
                bits(&again),
                bits(&plain),
                "{sampling:?} D={d}: scores with reach"
            );
            assert_eq!(
                bits(&portable),
                bits(&scores),
                "{sampling:?} D={d}: portable kernel"
            );
            // and so does each SIMD kernel this CPU has, whichever `score` chose
            #[cfg(target_arch = "x86_64")]
            for name in simd_sets() {
                let mut simd = vec![0f32; n * f];
                // SAFETY: the CPU has the feature, checked just above.
                unsafe {
                    match name {
                        "avx2" => rff_avx2(rff, w, f, flat(&windows, w, f), &mut simd, None),
                        _ => rff_avx512(rff, w, f, flat(&windows, w, f), &mut simd, None),
                    }
                }
                assert_eq!(
                    bits(&portable),
                    bits(&simd),
                    "{sampling:?} D={d}: {name} kernel"
                );
            }
            let c = map.feature_scale() as f32;
            let (mut z, mut theta, mut cosines) = (Vec::new(), Vec::new(), Vec::new());
            for j in 0..f {
                let series: Vec<f32> = (0..t).map(|i| data[i * f + j]).collect();
                standardise(&series, mean[j], inv_std[j], &mut z);
                map.cosines_of_series(&z, &mut theta, &mut cosines);
                let a: Vec<f32> = weight[j * d..(j + 1) * d]
                    .iter()
                    .map(|&v| v * c * 1.0)
                    .collect();
                for (b, phi) in cosines.chunks_exact(d).enumerate() {
                    let mut acc = 0f32;
                    for (ad, p) in a.iter().zip(phi) {
                        acc += ad * p;
                    }
                    let want = -(acc + bias[j]);
                    let got = scores[b * f + j];
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{sampling:?} D={d} feature {j} window {b}"
                    );
                    // and the exact formula, in f64
                    let mut exact = 0f64;
                    for di in 0..d {
                        let mut th = map.phase[di] as f64;
                        for k in 0..w {
                            th += map.omega[di * w + k] as f64 * z[b + k] as f64;
                        }
                        exact += weight[j * d + di] as f64 * c as f64 * th.cos();
                    }
                    let exact = -(exact + bias[j] as f64);
                    assert!(
                        (got as f64 - exact).abs() < 1e-5,
                        "{sampling:?} D={d}: {got} vs {exact}"
                    );
                }
            }
        }
    }
}
