//! A vectorised cosine, and cosine-and-sine, for random Fourier features.
//!
//! Written by hand because libm's `cosf` does not vectorise: with D = 32 random features a
//! 25,000-feature frame needs 800,000 cosines, 9.4 ms with `cosf`. Only adds, multiplies,
//! compares and bit operations, no fused multiply-add, so every lane and every instruction
//! set gives bit-identical results: the algorithm is written once over [`Lanes`] and run on
//! one f32, on arrays of f32 (portable code) or on AVX registers, and partitioning never
//! changes a score.
//!
//! Models drawn with orthogonal sampling use every frequency twice, as a cosine and as a
//! sine ([`sincos_pairs`]); [`sincos`] gives both from one angle, one range reduction (to
//! a quarter turn, which shortens the polynomials) and two polynomials, about half the work
//! of two [`cos`].

/// 2^23 + 2^22: adding and subtracting it rounds an f32 of magnitude below 2^22 to the
/// nearest integer using only SSE2/AVX arithmetic.
const ROUND_MAGIC: f32 = 12_582_912.0;

const INV_TWO_PI: f32 = 0.159_154_94;
/// 2π split Cody-Waite style: `HI` has 8 significant bits, so `k * HI` is exact for the
/// turn counts that matter and the reduction loses no more than `LO`'s rounding.
const TWO_PI_HI: f32 = 6.281_25;
const TWO_PI_LO: f32 = 0.001_935_307_2;
const PI_HI: f32 = 3.140_625;
const PI_LO: f32 = 0.000_967_653_6;
/// Past π/2 (as `PI_HI` places it) an angle is folded onto π - a.
const HALF_PI_HI: f32 = PI_HI * 0.5;
/// Bound of the folded angle, only reached when the reduction broke down (|x| past 2^22
/// turns): keeps the polynomials, hence the results, within [-1, 1].
const FOLD_MAX: f32 = 1.6;

/// Taylor coefficients of cos(u) in powers of u², for |u| <= π/2: truncation error
/// below 1e-8, so f32 rounding dominates.
const C: [f32; 7] = [
    1.0,
    -0.5,
    0.041_666_668,    // 1/4!
    -0.001_388_888_9, // -1/6!
    2.480_158_7e-5,   // 1/8!
    -2.755_732e-7,    // -1/10!
    2.087_675_7e-9,   // 1/12!
];

/// 2/π, and π/2 split Cody-Waite style for [`sincos`]'s reduction to quarter turns:
/// `HALF_PI_1` has 8 significant bits, so `k * HALF_PI_1` is exact for |k| < 2^16.
const TWO_OVER_PI: f32 = 0.636_619_75;
const HALF_PI_1: f32 = 1.570_312_5;
const HALF_PI_2: f32 = 4.838_268e-4;
/// Bound of the reduced angle (π/4 and rounding), only reached when the reduction broke
/// down (|x| past 2^22 quarter turns): keeps the results within [-1, 1].
const QUARTER_MAX: f32 = 0.8;

/// Minimax coefficients (Cephes' `sinf`) of sin(y) = y + y³ (S1 + S2 y² + S3 y⁴) on
/// [-π/4, π/4].
const SQ: [f32; 3] = [-0.166_666_55, 0.008_332_161, -1.951_529_6e-4];
/// Minimax coefficients (Cephes' `cosf`) of cos(y) = 1 - y²/2 + y⁴ (C2 + C3 y² + C4 y⁴)
/// on [-π/4, π/4].
const CQ: [f32; 3] = [0.041_666_646, -0.001_388_731_6, 2.443_315_7e-5];

/// cos(x), max absolute error below 6e-7 for |x| < 1000 (checked by the tests); for huge
/// |x| the result stays in [-1, 1] but is meaningless, as f32 cannot place such an angle
/// within a turn.
#[inline(always)]
pub fn cos(x: f32) -> f32 {
    cos_lanes(x)
}

/// (cos(x), sin(x)), both with the accuracy of [`cos`] (max absolute error below 6e-7 for
/// |x| < 1000, and within [-1, 1] for any finite x). The cosine may differ from [`cos`]`(x)`
/// in the last bits: it comes from another reduction and polynomial.
#[inline(always)]
pub fn sincos(x: f32) -> (f32, f32) {
    sincos_lanes(x)
}

/// [`cos`] of every value, in place; bit-identical to [`cos`] one value at a time.
pub fn cos_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        unsafe { avx2::cos_in_place(xs) };
        return;
    }
    for x in xs {
        *x = cos(*x);
    }
}

/// [`sincos`] of every value of `xs`: the cosines replace the values, the sines go to
/// `sines` (the same length); bit-identical to [`sincos`] one value at a time.
pub fn sincos_in_place(xs: &mut [f32], sines: &mut [f32]) {
    assert_eq!(xs.len(), sines.len(), "one sine per angle");
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        unsafe { avx2::sincos_in_place(xs, sines) };
        return;
    }
    for (x, s) in xs.iter_mut().zip(sines) {
        (*x, *s) = sincos(*x);
    }
}

/// When a model's random features come in cosine-sine pairs, the number of frequencies
/// `n`: features `d < n` are `cos(ω_d·z)` (phase 0) and features `d >= n` are
/// `cos(ω_{d-n}·z - π/2)`, i.e. `sin(ω_{d-n}·z)`, the layout orthogonal sampling draws
/// (`n = ⌈D/2⌉`; with D odd the last frequency has no sine). Checked exactly: phases equal
/// to 0 and to -π/2 as f32, and each sine's frequency row bit-equal to its cosine's.
/// `None` for any other model, which is then evaluated one cosine per feature.
pub fn sincos_pairs(omega: &[f32], phase: &[f32], window: usize) -> Option<usize> {
    let d = phase.len();
    if d == 0 || omega.len() != d * window {
        return None;
    }
    let n = d.div_ceil(2);
    let row = |i: usize| &omega[i * window..(i + 1) * window];
    let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    let cosines = phase[..n].iter().all(|&p| p == 0.0);
    let sines = (n..d).all(|i| {
        phase[i].to_bits() == (-std::f32::consts::FRAC_PI_2).to_bits() && same(row(i), row(i - n))
    });
    (cosines && sines).then_some(n)
}

/// The operations the trigonometry is made of, on one value or on a group of lanes, each
/// with one exact IEEE meaning (that of x86's instructions), so that every implementation
/// computes the same bits.
pub(crate) trait Lanes: Copy {
    fn splat(v: f32) -> Self;
    fn add(self, b: Self) -> Self;
    fn sub(self, b: Self) -> Self;
    fn mul(self, b: Self) -> Self;
    /// `if self < b { self } else { b }`: `b` when either is NaN.
    fn min(self, b: Self) -> Self;
    /// `if self > b { self } else { b }`: `b` when either is NaN.
    fn max(self, b: Self) -> Self;
    /// Bitwise and.
    fn and(self, b: Self) -> Self;
    /// Bitwise exclusive or.
    fn xor(self, b: Self) -> Self;
    /// All bits set where `self > b`, none elsewhere.
    fn gt(self, b: Self) -> Self;
    /// `a` where the sign bit of `mask` is set, `b` elsewhere.
    fn select(mask: Self, a: Self, b: Self) -> Self;
    /// The bits shifted left by `S`, as an integer.
    fn shl<const S: i32>(self) -> Self;
}

/// A group of [`LANES`] values loaded from and stored to arrays: the unit the scorer and
/// the in-place functions work in.
pub(crate) trait Block: Lanes {
    fn load(a: &[f32; LANES]) -> Self;
    fn store(self, a: &mut [f32; LANES]);
}

/// Values per [`Block`]: four AVX registers, so that four independent dependency chains
/// (each about 30 operations deep, too long for out-of-order execution alone to overlap
/// enough of them) interleave instruction by instruction.
pub(crate) const LANES: usize = 32;

/// The sign bit of an f32.
pub(crate) const SIGN: u32 = 0x8000_0000;

/// cos of every lane.
#[inline(always)]
pub(crate) fn cos_lanes<V: Lanes>(x: V) -> V {
    let (u, flip) = reduce(x);
    cos_poly(u).xor(flip.and(V::splat(f32::from_bits(SIGN))))
}

/// (cos, sin) of every lane: one reduction to a quarter turn, two short polynomials, and
/// the quadrant's swap and signs.
#[inline(always)]
pub(crate) fn sincos_lanes<V: Lanes>(x: V) -> (V, V) {
    // t = k + ROUND_MAGIC, k the nearest number of quarter turns: t's low bits are k's
    let magic = V::splat(ROUND_MAGIC);
    let t = x.mul(V::splat(TWO_OVER_PI)).add(magic);
    let k = t.sub(magic);
    let y = x
        .sub(k.mul(V::splat(HALF_PI_1)))
        .sub(k.mul(V::splat(HALF_PI_2)));
    let y = V::splat(-QUARTER_MAX).max(V::splat(QUARTER_MAX).min(y));
    // Horner's scheme: one multiply fewer than Estrin's, multiplies being the most
    // frequent operation here; the interleaved registers hide the longer chains
    let y2 = y.mul(y);
    let sp = V::splat(SQ[0]).add(y2.mul(V::splat(SQ[1]).add(y2.mul(V::splat(SQ[2])))));
    let sin_y = y.add(y.mul(y2).mul(sp));
    let cp = V::splat(CQ[0]).add(y2.mul(V::splat(CQ[1]).add(y2.mul(V::splat(CQ[2])))));
    let cos_y = V::splat(1.0).add(y2.mul(V::splat(-0.5).add(y2.mul(cp))));
    // x = y + kπ/2: odd k swaps sine and cosine; the sine is negated where bit 1 of k is
    // set, the cosine where bit 1 of k + 1 is, i.e. bit 1 of k xor bit 0. Bit 0 shifted
    // to the sign, `odd`, is the sign bit alone.
    let odd = t.shl::<31>();
    let sin_sign = t.shl::<30>().and(V::splat(f32::from_bits(SIGN)));
    let s = V::select(odd, cos_y, sin_y).xor(sin_sign);
    let c = V::select(odd, sin_y, cos_y).xor(sin_sign.xor(odd));
    (c, s)
}

/// `|x - 2πk|` for the nearest whole number of turns k, folded into [0, π/2] (`u`), and the
/// mask of the folded lanes (past π/2, where cos(a) = -cos(π - a)).
#[inline(always)]
fn reduce<V: Lanes>(x: V) -> (V, V) {
    let magic = V::splat(ROUND_MAGIC);
    let k = x.mul(V::splat(INV_TWO_PI)).add(magic).sub(magic);
    let y = x
        .sub(k.mul(V::splat(TWO_PI_HI)))
        .sub(k.mul(V::splat(TWO_PI_LO)));
    let a = y.and(V::splat(f32::from_bits(!SIGN)));
    let flip = a.gt(V::splat(HALF_PI_HI));
    let folded = V::splat(PI_HI).sub(a).add(V::splat(PI_LO));
    let u = V::select(flip, folded, a);
    let u = V::splat(0.0).max(V::splat(FOLD_MAX).min(u));
    (u, flip)
}

/// cos(u) for u in [0, 1.6]. Estrin's scheme: a shallower dependency chain than Horner's.
#[inline(always)]
fn cos_poly<V: Lanes>(u: V) -> V {
    let u2 = u.mul(u);
    let u4 = u2.mul(u2);
    let u8 = u4.mul(u4);
    let c = |i: usize| V::splat(C[i]);
    let p01 = c(0).add(c(1).mul(u2));
    let p23 = c(2).add(c(3).mul(u2));
    let p45 = c(4).add(c(5).mul(u2));
    let p6 = p45.add(c(6).mul(u4));
    p01.add(p23.mul(u4)).add(p6.mul(u8))
}

impl Lanes for f32 {
    #[inline(always)]
    fn splat(v: f32) -> Self {
        v
    }
    #[inline(always)]
    fn add(self, b: Self) -> Self {
        self + b
    }
    #[inline(always)]
    fn sub(self, b: Self) -> Self {
        self - b
    }
    #[inline(always)]
    fn mul(self, b: Self) -> Self {
        self * b
    }
    #[inline(always)]
    fn min(self, b: Self) -> Self {
        if self < b {
            self
        } else {
            b
        }
    }
    #[inline(always)]
    fn max(self, b: Self) -> Self {
        if self > b {
            self
        } else {
            b
        }
    }
    #[inline(always)]
    fn and(self, b: Self) -> Self {
        f32::from_bits(self.to_bits() & b.to_bits())
    }
    #[inline(always)]
    fn xor(self, b: Self) -> Self {
        f32::from_bits(self.to_bits() ^ b.to_bits())
    }
    #[inline(always)]
    fn gt(self, b: Self) -> Self {
        f32::from_bits(if self > b { u32::MAX } else { 0 })
    }
    #[inline(always)]
    fn select(mask: Self, a: Self, b: Self) -> Self {
        if mask.to_bits() & SIGN != 0 {
            a
        } else {
            b
        }
    }
    #[inline(always)]
    fn shl<const S: i32>(self) -> Self {
        f32::from_bits(self.to_bits() << S)
    }
}

/// [`LANES`] values in an array, for code compiled without AVX2: each operation a loop the
/// compiler may vectorise with whatever it has.
#[derive(Clone, Copy)]
pub(crate) struct Portable([f32; LANES]);

impl Portable {
    #[inline(always)]
    fn zip(self, b: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        let mut out = [0f32; LANES];
        for ((o, &x), &y) in out.iter_mut().zip(&self.0).zip(&b.0) {
            *o = f(x, y);
        }
        Portable(out)
    }
}

impl Lanes for Portable {
    #[inline(always)]
    fn splat(v: f32) -> Self {
        Portable([v; LANES])
    }
    #[inline(always)]
    fn add(self, b: Self) -> Self {
        self.zip(b, Lanes::add)
    }
    #[inline(always)]
    fn sub(self, b: Self) -> Self {
        self.zip(b, Lanes::sub)
    }
    #[inline(always)]
    fn mul(self, b: Self) -> Self {
        self.zip(b, Lanes::mul)
    }
    #[inline(always)]
    fn min(self, b: Self) -> Self {
        self.zip(b, Lanes::min)
    }
    #[inline(always)]
    fn max(self, b: Self) -> Self {
        self.zip(b, Lanes::max)
    }
    #[inline(always)]
    fn and(self, b: Self) -> Self {
        self.zip(b, Lanes::and)
    }
    #[inline(always)]
    fn xor(self, b: Self) -> Self {
        self.zip(b, Lanes::xor)
    }
    #[inline(always)]
    fn gt(self, b: Self) -> Self {
        self.zip(b, Lanes::gt)
    }
    #[inline(always)]
    fn select(mask: Self, a: Self, b: Self) -> Self {
        let mut out = [0f32; LANES];
        for (((o, &m), &x), &y) in out.iter_mut().zip(&mask.0).zip(&a.0).zip(&b.0) {
            *o = Lanes::select(m, x, y);
        }
        Portable(out)
    }
    #[inline(always)]
    fn shl<const S: i32>(self) -> Self {
        let mut out = self.0;
        for o in &mut out {
            *o = o.shl::<S>();
        }
        Portable(out)
    }
}

impl Block for Portable {
    #[inline(always)]
    fn load(a: &[f32; LANES]) -> Self {
        Portable(*a)
    }
    #[inline(always)]
    fn store(self, a: &mut [f32; LANES]) {
        *a = self.0;
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::Avx2;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Block, Lanes, LANES};

    /// AVX registers per [`Avx2`] value.
    const REGS: usize = LANES / 8;
    const _: () = assert!(REGS == 4, "per_reg! writes out four registers");

    /// `[e(0), e(1), e(2), e(3)]` for `|i| e`: one expression per register, written out
    /// rather than built by `array::from_fn`, whose closures are not always inlined, and
    /// an intrinsic in a function that is not inlined into an AVX2 one becomes a call.
    macro_rules! per_reg {
        (|$i:ident| $e:expr) => {
            [
                {
                    let $i = 0;
                    $e
                },
                {
                    let $i = 1;
                    $e
                },
                {
                    let $i = 2;
                    $e
                },
                {
                    let $i = 3;
                    $e
                },
            ]
        };
    }

    /// [`LANES`] values in AVX registers.
    ///
    /// Its operations are AVX instructions; they may only run, hence values of this type
    /// may only be made, inside functions entered after AVX2 was detected at run time
    /// (`#[target_feature(enable = "avx2")]` ones), into which these methods inline. Each
    /// operation runs on every register before the next operation starts, which
    /// interleaves the registers' independent dependency chains.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2([__m256; REGS]);

    /// `Avx2(per_reg!(|i| $f($a.0[i], $b.0[i])))`.
    macro_rules! zip {
        ($a:expr, $b:expr, $f:ident) => {{
            let (a, b) = ($a.0, $b.0);
            Avx2(per_reg!(|i| $f(a[i], b[i])))
        }};
    }

    // SAFETY (every `unsafe` block below): values of `Avx2` only exist with AVX2 detected,
    // see the type.
    impl Lanes for Avx2 {
        #[inline(always)]
        fn splat(v: f32) -> Self {
            Avx2([unsafe { _mm256_set1_ps(v) }; REGS])
        }
        #[inline(always)]
        fn add(self, b: Self) -> Self {
            unsafe { zip!(self, b, _mm256_add_ps) }
        }
        #[inline(always)]
        fn sub(self, b: Self) -> Self {
            unsafe { zip!(self, b, _mm256_sub_ps) }
        }
        #[inline(always)]
        fn mul(self, b: Self) -> Self {
            unsafe { zip!(self, b, _mm256_mul_ps) }
        }
        #[inline(always)]
        fn min(self, b: Self) -> Self {
            unsafe { zip!(self, b, _mm256_min_ps) }
        }
        #[inline(always)]
        fn max(self, b: Self) -> Self {
            unsafe { zip!(self, b, _mm256_max_ps) }
        }
        #[inline(always)]
        fn and(self, b: Self) -> Self {
            unsafe { zip!(self, b, _mm256_and_ps) }
        }
        #[inline(always)]
        fn xor(self, b: Self) -> Self {
            unsafe { zip!(self, b, _mm256_xor_ps) }
        }
        #[inline(always)]
        fn gt(self, b: Self) -> Self {
            // ordered and quiet: false, hence 0, when either is NaN, as `>`
            let (a, b) = (self.0, b.0);
            Avx2(per_reg!(|i| unsafe {
                _mm256_cmp_ps::<_CMP_GT_OQ>(a[i], b[i])
            }))
        }
        #[inline(always)]
        fn select(mask: Self, a: Self, b: Self) -> Self {
            let (m, a, b) = (mask.0, a.0, b.0);
            Avx2(per_reg!(|i| unsafe { _mm256_blendv_ps(b[i], a[i], m[i]) }))
        }
        #[inline(always)]
        fn shl<const S: i32>(self) -> Self {
            let r = self.0;
            Avx2(per_reg!(|i| unsafe {
                _mm256_castsi256_ps(_mm256_slli_epi32::<S>(_mm256_castps_si256(r[i])))
            }))
        }
    }

    impl Block for Avx2 {
        #[inline(always)]
        fn load(a: &[f32; LANES]) -> Self {
            let p = a.as_ptr();
            // `a` holds LANES values, REGS registers' worth
            Avx2(per_reg!(|i| unsafe { _mm256_loadu_ps(p.add(8 * i)) }))
        }
        #[inline(always)]
        fn store(self, a: &mut [f32; LANES]) {
            let p = a.as_mut_ptr();
            let r = self.0;
            // `a` holds LANES values, REGS registers' worth
            unsafe {
                _mm256_storeu_ps(p, r[0]);
                _mm256_storeu_ps(p.add(8), r[1]);
                _mm256_storeu_ps(p.add(16), r[2]);
                _mm256_storeu_ps(p.add(24), r[3]);
            }
        }
    }

    /// [`super::cos_in_place`] with AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) fn cos_in_place(xs: &mut [f32]) {
        let mut chunks = xs.chunks_exact_mut(LANES);
        for c in &mut chunks {
            let c: &mut [f32; LANES] = c.try_into().expect("LANES values");
            super::cos_lanes(Avx2::load(c)).store(c);
        }
        for x in chunks.into_remainder() {
            *x = super::cos(*x);
        }
    }

    /// [`super::sincos_in_place`] with AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) fn sincos_in_place(xs: &mut [f32], sines: &mut [f32]) {
        let mut chunks = xs.chunks_exact_mut(LANES);
        let mut sine_chunks = sines.chunks_exact_mut(LANES);
        for (c, s) in (&mut chunks).zip(&mut sine_chunks) {
            let c: &mut [f32; LANES] = c.try_into().expect("LANES values");
            let s: &mut [f32; LANES] = s.try_into().expect("LANES values");
            let (cv, sv) = super::sincos_lanes(Avx2::load(c));
            cv.store(c);
            sv.store(s);
        }
        let rest = chunks.into_remainder();
        for (x, s) in rest.iter_mut().zip(sine_chunks.into_remainder()) {
            (*x, *s) = super::sincos(*x);
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::Avx512;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Block, Lanes, LANES};

    const _: () = assert!(LANES == 32, "two 16-lane registers per Avx512");

    /// [`LANES`] values in two AVX-512 registers: the same operations as [`super::Avx2`],
    /// each the same IEEE instruction on twice the lanes (no fused multiply-adds), so the
    /// bits are the same and the kernel issues half the instructions.
    ///
    /// Only AVX-512F instructions. Values of this type may only be made inside functions
    /// entered after AVX-512F was detected at run time (`#[target_feature(enable =
    /// "avx512f")]` ones), into which these methods inline.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx512([__m512; 2]);

    /// `Avx512([f(a0, b0), f(a1, b1)])`.
    macro_rules! zip {
        ($a:expr, $b:expr, $f:ident) => {{
            let (a, b) = ($a.0, $b.0);
            Avx512([$f(a[0], b[0]), $f(a[1], b[1])])
        }};
    }

    /// `Avx512([f(a0), f(a1)])`.
    macro_rules! each {
        ($a:expr, |$r:ident| $e:expr) => {{
            let a = $a.0;
            Avx512([
                {
                    let $r = a[0];
                    $e
                },
                {
                    let $r = a[1];
                    $e
                },
            ])
        }};
    }

    #[inline(always)]
    unsafe fn bits(f: impl Fn(__m512i, __m512i) -> __m512i, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_castsi512_ps(f(_mm512_castps_si512(a), _mm512_castps_si512(b))) }
    }

    // SAFETY (every `unsafe` block below): values of `Avx512` only exist with AVX-512F
    // detected, see the type.
    impl Lanes for Avx512 {
        #[inline(always)]
        fn splat(v: f32) -> Self {
            Avx512([unsafe { _mm512_set1_ps(v) }; 2])
        }
        #[inline(always)]
        fn add(self, b: Self) -> Self {
            unsafe { zip!(self, b, _mm512_add_ps) }
        }
        #[inline(always)]
        fn sub(self, b: Self) -> Self {
            unsafe { zip!(self, b, _mm512_sub_ps) }
        }
        #[inline(always)]
        fn mul(self, b: Self) -> Self {
            unsafe { zip!(self, b, _mm512_mul_ps) }
        }
        #[inline(always)]
        fn min(self, b: Self) -> Self {
            // vminps: the second operand when either is NaN, as AVX's
            unsafe { zip!(self, b, _mm512_min_ps) }
        }
        #[inline(always)]
        fn max(self, b: Self) -> Self {
            unsafe { zip!(self, b, _mm512_max_ps) }
        }
        #[inline(always)]
        fn and(self, b: Self) -> Self {
            let (a, b) = (self.0, b.0);
            unsafe {
                Avx512([
                    bits(|x, y| _mm512_and_si512(x, y), a[0], b[0]),
                    bits(|x, y| _mm512_and_si512(x, y), a[1], b[1]),
                ])
            }
        }
        #[inline(always)]
        fn xor(self, b: Self) -> Self {
            let (a, b) = (self.0, b.0);
            unsafe {
                Avx512([
                    bits(|x, y| _mm512_xor_si512(x, y), a[0], b[0]),
                    bits(|x, y| _mm512_xor_si512(x, y), a[1], b[1]),
                ])
            }
        }
        #[inline(always)]
        fn gt(self, b: Self) -> Self {
            // ordered and quiet: false, hence 0, when either is NaN, as `>`; the mask
            // widened to all bits set per true lane, as AVX's compare gives
            let (a, b) = (self.0, b.0);
            let gt = |x: __m512, y: __m512| unsafe {
                let k = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, y);
                _mm512_castsi512_ps(_mm512_maskz_mov_epi32(k, _mm512_set1_epi32(-1)))
            };
            Avx512([gt(a[0], b[0]), gt(a[1], b[1])])
        }
        #[inline(always)]
        fn select(mask: Self, a: Self, b: Self) -> Self {
            let (m, a, b) = (mask.0, a.0, b.0);
            // the sign bit set is a negative integer
            let pick = |m: __m512, a: __m512, b: __m512| unsafe {
                let k = _mm512_cmplt_epi32_mask(_mm512_castps_si512(m), _mm512_setzero_si512());
                _mm512_mask_blend_ps(k, b, a)
            };
            Avx512([pick(m[0], a[0], b[0]), pick(m[1], a[1], b[1])])
        }
        #[inline(always)]
        fn shl<const S: i32>(self) -> Self {
            unsafe {
                let count = _mm_set_epi64x(0, S as i64);
                each!(self, |r| _mm512_castsi512_ps(_mm512_sll_epi32(
                    _mm512_castps_si512(r),
                    count
                )))
            }
        }
    }

    impl Block for Avx512 {
        #[inline(always)]
        fn load(a: &[f32; LANES]) -> Self {
            let p = a.as_ptr();
            // `a` holds LANES values, two registers' worth
            unsafe { Avx512([_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16))]) }
        }
        #[inline(always)]
        fn store(self, a: &mut [f32; LANES]) {
            let p = a.as_mut_ptr();
            // `a` holds LANES values, two registers' worth
            unsafe {
                _mm512_storeu_ps(p, self.0[0]);
                _mm512_storeu_ps(p.add(16), self.0[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Angles from -1000 to 1000, denser near 0 where the scorer's angles mostly lie.
    fn angles() -> impl Iterator<Item = f32> {
        let mut x = -1000.0f32;
        std::iter::from_fn(move || {
            x += 0.000_731 * (1.0 + x.abs() / 100.0);
            (x < 1000.0).then_some(x)
        })
    }

    #[test]
    fn cos_matches_libm_within_6e7() {
        let worst = angles()
            .map(|x| (cos(x) - x.cos()).abs())
            .fold(0f32, f32::max);
        assert!(worst < 6e-7, "max error {worst}");
    }

    #[test]
    fn sincos_matches_libm_within_6e7() {
        let (mut worst_c, mut worst_s) = (0f64, 0f64);
        for x in angles() {
            let (c, s) = sincos(x);
            // against f64 so that libm's own f32 rounding does not count
            worst_c = worst_c.max((c as f64 - (x as f64).cos()).abs());
            worst_s = worst_s.max((s as f64 - (x as f64).sin()).abs());
        }
        assert!(worst_c < 6e-7, "max cos error {worst_c}");
        assert!(worst_s < 6e-7, "max sin error {worst_s}");
    }

    /// Every implementation of the lanes computes the same bits as one f32 at a time,
    /// including for signed zeros, NaN, infinities and angles where the reduction fails.
    #[test]
    fn in_place_and_portable_lanes_agree_with_scalar_to_the_bit() {
        let mut xs: Vec<f32> = angles().step_by(37).collect();
        xs.extend([0.0, -0.0, f32::NAN, f32::INFINITY, -f32::INFINITY]);
        xs.extend([1e7, -3e9, 1e30, f32::MAX, -f32::MAX, f32::MIN_POSITIVE]);
        // odd length: the in-place functions' tails run too
        xs.push(1.5);
        let want: Vec<(f32, f32)> = xs.iter().map(|&x| sincos(x)).collect();
        let bits = |v: &[(f32, f32)]| -> Vec<(u32, u32)> {
            v.iter().map(|(c, s)| (c.to_bits(), s.to_bits())).collect()
        };

        let mut c = xs.clone();
        let mut s = vec![0f32; xs.len()];
        sincos_in_place(&mut c, &mut s);
        let got: Vec<(f32, f32)> = c.into_iter().zip(s).collect();
        assert_eq!(bits(&got), bits(&want), "sincos_in_place");

        let mut c = xs.clone();
        cos_in_place(&mut c);
        let cos_bits: Vec<u32> = xs.iter().map(|&x| cos(x).to_bits()).collect();
        assert_eq!(
            c.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            cos_bits,
            "cos_in_place"
        );

        let mut portable = Vec::new();
        let mut portable_cos = Vec::new();
        for chunk in xs.chunks_exact(LANES) {
            let (c, s) = sincos_lanes(Portable::load(chunk.try_into().unwrap()));
            portable.extend(c.0.into_iter().zip(s.0));
            portable_cos.extend(
                cos_lanes(Portable::load(chunk.try_into().unwrap()))
                    .0
                    .map(f32::to_bits),
            );
        }
        assert_eq!(
            bits(&portable),
            bits(&want[..portable.len()]),
            "portable sincos"
        );
        assert_eq!(portable_cos, cos_bits[..portable_cos.len()], "portable cos");
    }

    #[test]
    fn cos_and_sin_stay_bounded_for_huge_arguments() {
        for x in [1e7f32, -3e9, 1e30, f32::MAX, -f32::MAX] {
            let (c, s) = sincos(x);
            assert!((-1.0..=1.0).contains(&c), "cos({x}) = {c}");
            assert!((-1.0..=1.0).contains(&s), "sin({x}) = {s}");
        }
    }

    #[test]
    fn pairs_are_detected_exactly() {
        let h = -std::f32::consts::FRAC_PI_2;
        // D = 4, W = 2: rows 0, 1 are cosines, rows 2, 3 their sines
        let omega = [0.5, -1.0, 0.25, 2.0, 0.5, -1.0, 0.25, 2.0];
        assert_eq!(sincos_pairs(&omega, &[0.0, 0.0, h, h], 2), Some(2));
        // D odd: the middle frequency has only a cosine
        let odd = [0.5, -1.0, 0.25, 2.0, 3.0, 1.0, 0.5, -1.0, 0.25, 2.0];
        assert_eq!(sincos_pairs(&odd, &[0.0, 0.0, 0.0, h, h], 2), Some(3));
        assert_eq!(sincos_pairs(&omega, &[0.0, 0.0, h, 0.1], 2), None);
        assert_eq!(sincos_pairs(&omega, &[0.0, 0.1, h, h], 2), None);
        let mut moved = omega;
        moved[7] = f32::from_bits(2.0f32.to_bits() + 1);
        assert_eq!(sincos_pairs(&moved, &[0.0, 0.0, h, h], 2), None);
        assert_eq!(sincos_pairs(&omega, &[0.0; 4], 2), None);
        assert_eq!(sincos_pairs(&[], &[], 2), None);
    }
}
