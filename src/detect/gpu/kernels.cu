// tidewatch's GPU scoring kernels: [B][W][F_part] -> anomalous (window, feature, score)
// triples, and on request every score [B][F_part].
//
// Compiled at start-up by NVRTC with --fmad=false and without fast math, and every
// operation written as one IEEE round-to-nearest add or multiply (__fadd_rn, __fmul_rn:
// never contracted) in the order of the CPU scorer (src/model/scorer.rs) and of its
// trigonometry (src/model/trig.rs, ported below constant for constant): the kernels are
// meant to compute the CPU's bits, so that training's calibration holds on the GPU too.
//
// One thread per (window, feature); features run along x (coalesced: the inputs are
// [W][F_part] per window, the weights feature-minor), windows along y with a grid-stride
// loop. Scores >= threshold are compacted on the device with one atomic per warp.

// The constants of trig.rs, as written there (the decimal literals round to the same f32).
#define TW_ROUND_MAGIC 12582912.0f
#define TW_INV_TWO_PI 0.15915494f
#define TW_TWO_PI_HI 6.28125f
#define TW_TWO_PI_LO 0.0019353072f
#define TW_PI_HI 3.140625f
#define TW_PI_LO 0.0009676536f
#define TW_HALF_PI_HI 1.5703125f
#define TW_FOLD_MAX 1.6f
#define TW_C0 1.0f
#define TW_C1 -0.5f
#define TW_C2 0.041666668f
#define TW_C3 -0.0013888889f
#define TW_C4 2.4801587e-5f
#define TW_C5 -2.755732e-7f
#define TW_C6 2.0876757e-9f
#define TW_TWO_OVER_PI 0.63661975f
#define TW_HALF_PI_1 1.5703125f
#define TW_HALF_PI_2 4.838268e-4f
#define TW_QUARTER_MAX 0.8f
#define TW_SQ0 -0.16666655f
#define TW_SQ1 0.008332161f
#define TW_SQ2 -1.9515296e-4f
#define TW_CQ0 0.041666646f
#define TW_CQ1 -0.0013887316f
#define TW_CQ2 2.4433157e-5f

#define TW_SIGN 0x80000000u

__device__ __forceinline__ float tw_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float tw_sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float tw_mul(float a, float b) { return __fmul_rn(a, b); }
// trig.rs's Lanes::min and ::max (x86's minps/maxps): b when either is NaN.
__device__ __forceinline__ float tw_min(float a, float b) { return a < b ? a : b; }
__device__ __forceinline__ float tw_max(float a, float b) { return a > b ? a : b; }
__device__ __forceinline__ unsigned tw_bits(float a) { return __float_as_uint(a); }
__device__ __forceinline__ float tw_float(unsigned a) { return __uint_as_float(a); }

// trig::cos: reduction to the nearest whole turn, fold onto [0, pi/2], Estrin polynomial.
__device__ __forceinline__ float tw_cos(float x) {
    float k = tw_sub(tw_add(tw_mul(x, TW_INV_TWO_PI), TW_ROUND_MAGIC), TW_ROUND_MAGIC);
    float y = tw_sub(tw_sub(x, tw_mul(k, TW_TWO_PI_HI)), tw_mul(k, TW_TWO_PI_LO));
    float a = tw_float(tw_bits(y) & ~TW_SIGN);
    bool flip = a > TW_HALF_PI_HI;
    float folded = tw_add(tw_sub(TW_PI_HI, a), TW_PI_LO);
    float u = flip ? folded : a;
    u = tw_max(0.0f, tw_min(TW_FOLD_MAX, u));
    float u2 = tw_mul(u, u);
    float u4 = tw_mul(u2, u2);
    float u8 = tw_mul(u4, u4);
    float p01 = tw_add(TW_C0, tw_mul(TW_C1, u2));
    float p23 = tw_add(TW_C2, tw_mul(TW_C3, u2));
    float p45 = tw_add(TW_C4, tw_mul(TW_C5, u2));
    float p6 = tw_add(p45, tw_mul(TW_C6, u4));
    float c = tw_add(tw_add(p01, tw_mul(p23, u4)), tw_mul(p6, u8));
    return tw_float(tw_bits(c) ^ (flip ? TW_SIGN : 0u));
}

// trig::sincos: reduction to quarter turns, two Horner polynomials, quadrant swap and signs.
__device__ __forceinline__ void tw_sincos(float x, float* c_out, float* s_out) {
    float t = tw_add(tw_mul(x, TW_TWO_OVER_PI), TW_ROUND_MAGIC);
    float k = tw_sub(t, TW_ROUND_MAGIC);
    float y = tw_sub(tw_sub(x, tw_mul(k, TW_HALF_PI_1)), tw_mul(k, TW_HALF_PI_2));
    y = tw_max(-TW_QUARTER_MAX, tw_min(TW_QUARTER_MAX, y));
    float y2 = tw_mul(y, y);
    float sp = tw_add(TW_SQ0, tw_mul(y2, tw_add(TW_SQ1, tw_mul(y2, TW_SQ2))));
    float sin_y = tw_add(y, tw_mul(tw_mul(y, y2), sp));
    float cp = tw_add(TW_CQ0, tw_mul(y2, tw_add(TW_CQ1, tw_mul(y2, TW_CQ2))));
    float cos_y = tw_add(1.0f, tw_mul(y2, tw_add(-0.5f, tw_mul(y2, cp))));
    unsigned tb = tw_bits(t);
    unsigned odd = tb << 31;
    unsigned sin_sign = (tb << 30) & TW_SIGN;
    *s_out = tw_float(tw_bits(odd ? cos_y : sin_y) ^ sin_sign);
    *c_out = tw_float(tw_bits(odd ? sin_y : cos_y) ^ (sin_sign ^ odd));
}

// Writes the score (when asked) and compacts it if it reaches the threshold: one atomic
// per warp for all of its hits. Every thread of the warp must call it (invalid ones with
// valid = false) so that the ballot sees the whole warp.
__device__ __forceinline__ void tw_emit(
    bool valid, float score, unsigned index, float threshold,
    float* __restrict__ scores, int write_scores,
    unsigned* __restrict__ count, unsigned* __restrict__ hit_index,
    float* __restrict__ hit_score, unsigned capacity) {
    if (valid && write_scores) {
        scores[index] = score;
    }
    bool hit = valid && score >= threshold;
    unsigned ballot = __ballot_sync(0xffffffffu, hit);
    if (ballot == 0u) {
        return;
    }
    unsigned lane = threadIdx.x & 31u;
    int leader = __ffs(ballot) - 1;
    unsigned base = 0u;
    if (lane == (unsigned)leader) {
        base = atomicAdd(count, (unsigned)__popc(ballot));
    }
    base = __shfl_sync(0xffffffffu, base, leader);
    if (hit) {
        unsigned i = base + (unsigned)__popc(ballot & ((1u << lane) - 1u));
        // Past the capacity only the count grows: the host then scores again with every score
        // written out, so nothing is lost.
        if (i < capacity) {
            hit_index[i] = index;
            hit_score[i] = score;
        }
    }
}

// Linear OCSVM: score = -(sum_k weight_t[k][f] x[b][k][f] + bias[f]), summed from 0 in
// window order; calibration folded into weight_t and bias by the CPU scorer.
extern "C" __global__ void tw_score_linear(
    const float* __restrict__ x, const float* __restrict__ weight_t,
    const float* __restrict__ bias, unsigned batch, unsigned window, unsigned width,
    float threshold, float* __restrict__ scores, int write_scores,
    unsigned* __restrict__ count, unsigned* __restrict__ hit_index,
    float* __restrict__ hit_score, unsigned capacity) {
    unsigned f = blockIdx.x * blockDim.x + threadIdx.x;
    bool valid = f < width;
    for (unsigned b = blockIdx.y; b < batch; b += gridDim.y) {
        float score = 0.0f;
        if (valid) {
            const float* xb = x + (size_t)b * window * width;
            float acc = 0.0f;
            for (unsigned k = 0; k < window; ++k) {
                acc = tw_add(acc, tw_mul(weight_t[(size_t)k * width + f], xb[(size_t)k * width + f]));
            }
            score = -tw_add(acc, bias[f]);
        }
        tw_emit(valid, score, b * width + f, threshold, scores, write_scores, count,
                hit_index, hit_score, capacity);
    }
}

// Kernel OCSVM through D random Fourier features, weights in the CPU scorer's blocks of
// 32 features ([blocks][D][32]: a warp reads one contiguous row per component), sqrt(2/D)
// and calibration folded in; mean, inv_std and bias padded to whole blocks.
//
// pairs == 0: one cosine per component, angle = phase + sum_k omega[d][k] z_k.
// pairs == n > 0: components d < n are cos(omega[d] . z), d >= n sin(omega[d-n] . z), both
// from one sincos per frequency; the cosines are summed first, then the sines, as on the
// CPU. The sines wait in shared memory when store_sines, else are computed again.
//
// Dynamic shared memory: z as [W][blockDim.x], then (store_sines) [D-n][blockDim.x].
extern "C" __global__ void tw_score_rff(
    const float* __restrict__ x, const float* __restrict__ mean,
    const float* __restrict__ inv_std, const float* __restrict__ omega,
    const float* __restrict__ phase, const float* __restrict__ weight,
    const float* __restrict__ bias, unsigned batch, unsigned window, unsigned width,
    unsigned components, unsigned pairs, int store_sines, float threshold,
    float guard_floor, float guard_sigmas, float* __restrict__ scores, int write_scores,
    unsigned* __restrict__ count, unsigned* __restrict__ hit_index,
    float* __restrict__ hit_score, unsigned capacity) {
    extern __shared__ float tw_shared[];
    unsigned f = blockIdx.x * blockDim.x + threadIdx.x;
    bool valid = f < width;
    unsigned stride = blockDim.x;
    float* z = tw_shared + threadIdx.x;
    float* sines = tw_shared + (size_t)window * stride + threadIdx.x;
    for (unsigned b = blockIdx.y; b < batch; b += gridDim.y) {
        float score = 0.0f;
        if (valid) {
            const float* xb = x + (size_t)b * window * width;
            float m = mean[f];
            float s = inv_std[f];
            const float* a = weight + (size_t)(f / 32u) * components * 32u + (f % 32u);
            // the window's largest |z| (a NaN reaches nowhere), for the departure guard
            float far = 0.0f;
            for (unsigned k = 0; k < window; ++k) {
                float zk = tw_mul(tw_sub(xb[(size_t)k * width + f], m), s);
                z[k * stride] = zk;
                far = tw_max(tw_float(tw_bits(zk) & ~TW_SIGN), far);
            }
            float acc = 0.0f;
            if (pairs == 0u) {
                for (unsigned d = 0; d < components; ++d) {
                    const float* om = omega + (size_t)d * window;
                    float theta = phase[d];
                    for (unsigned k = 0; k < window; ++k) {
                        theta = tw_add(theta, tw_mul(om[k], z[k * stride]));
                    }
                    acc = tw_add(acc, tw_mul(a[(size_t)d * 32u], tw_cos(theta)));
                }
            } else {
                unsigned n_sines = components - pairs;
                for (unsigned i = 0; i < pairs; ++i) {
                    const float* om = omega + (size_t)i * window;
                    float theta = tw_mul(om[0], z[0]);
                    for (unsigned k = 1; k < window; ++k) {
                        theta = tw_add(theta, tw_mul(om[k], z[k * stride]));
                    }
                    float c, sn;
                    tw_sincos(theta, &c, &sn);
                    acc = tw_add(acc, tw_mul(a[(size_t)i * 32u], c));
                    if (store_sines && i < n_sines) {
                        sines[i * stride] = sn;
                    }
                }
                for (unsigned i = 0; i < n_sines; ++i) {
                    float sn;
                    if (store_sines) {
                        sn = sines[i * stride];
                    } else {
                        const float* om = omega + (size_t)i * window;
                        float theta = tw_mul(om[0], z[0]);
                        for (unsigned k = 1; k < window; ++k) {
                            theta = tw_add(theta, tw_mul(om[k], z[k * stride]));
                        }
                        float c;
                        tw_sincos(theta, &c, &sn);
                    }
                    acc = tw_add(acc, tw_mul(a[(size_t)(pairs + i) * 32u], sn));
                }
            }
            score = -tw_add(acc, bias[f]);
            // RffOcSvm's departure guard (src/detect/ocsvm.rs), in its operations: the
            // cosines wrap far from the training data, so a value past guard_sigmas gets
            // at least guard_floor * far / guard_sigmas. guard_floor 0: no guard.
            if (guard_floor > 0.0f && far > guard_sigmas) {
                float g = tw_mul(guard_floor, __fdiv_rn(far, guard_sigmas));
                if (g > score || score != score) {
                    score = g;
                }
            }
        }
        tw_emit(valid, score, b * width + f, threshold, scores, write_scores, count,
                hit_index, hit_score, capacity);
    }
}
