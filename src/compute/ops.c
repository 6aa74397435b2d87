#include "compute/ops.h"

#include <math.h>

#include "util/half.h"

float ds4_dot_f32(const float *a, const float *b, uint32_t n) {
    /* Eight independent partial sums: lets the compiler use wide vectors
     * without -ffast-math and keeps the summation order fixed. */
    float acc[8] = {0};
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += a[i + k] * b[i + k];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Every element is its own multiply and add (no reduction), so vectors
 * give the same results as scalar code. GCC at -O2 only vectorizes a loop
 * whose trip count is known, and only without possible aliasing: hence the
 * restrict pointers and the fixed blocks of 16. */
void ds4_axpy(float *restrict y, float a, const float *restrict x, uint32_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        float *restrict yb = y + i;
        const float *restrict xb = x + i;
        _Pragma("GCC unroll 16")
        for (int k = 0; k < 16; k++) yb[k] += a * xb[k];
    }
    for (; i < n; i++) y[i] += a * x[i];
}

void ds4_rmsnorm(float *y, const float *x, const float *w, uint32_t n, float eps) {
    /* Eight interleaved double sums, added pairwise at the end: one chain
     * of dependent double adds over n values cost ~4 cycles a value on the
     * decode path's one thread (64 heads x 512 per layer); the compiler
     * keeps these in vector registers. Reordering a double sum moves it by
     * ~1e-16 relative, far below the float result's resolution; and every
     * path (prefill, decode) uses this one function, so they still agree
     * bit for bit. */
    double acc[8] = {0};
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += (double)x[i + k] * x[i + k];
    double ss = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    for (; i < n; i++) ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / n + eps));
    if (w)
        for (uint32_t i = 0; i < n; i++) y[i] = x[i] * r * w[i];
    else
        for (uint32_t i = 0; i < n; i++) y[i] = x[i] * r;
}

float ds4_softplus(float x) {
    /* torch's threshold: beyond 20 the result equals x in fp32 anyway. */
    if (x > 20.0f) return x;
    return log1pf(expf(x));
}

void ds4_swiglu_clamped(float *g, const float *u, uint32_t n, float limit) {
    for (uint32_t i = 0; i < n; i++) {
        float a = g[i] < limit ? g[i] : limit;
        float b = u[i] < -limit ? -limit : (u[i] > limit ? limit : u[i]);
        g[i] = a / (1.0f + expf(-a)) * b;
    }
}

/* ---- RoPE ---------------------------------------------------------------- */

void ds4_rope_init(ds4_rope *r, uint32_t n_rot, float base, float factor, uint64_t orig_ctx, float beta_fast,
                   float beta_slow) {
    uint32_t np = n_rot / 2;
    if (np > 128) np = 128;
    r->n_pairs = np;
    /* fp32 frequencies like the reference: 1 / base^(2j/n_rot). */
    float extrap[128];
    for (uint32_t j = 0; j < np; j++) extrap[j] = (float)(1.0 / pow((double)base, (double)(2 * j) / n_rot));
    if (!(factor > 1.0f)) {
        for (uint32_t j = 0; j < np; j++) r->inv_freq[j] = extrap[j];
        return;
    }
    /* YaRN: pairs rotating fast (many turns within the original context)
     * keep their frequency, slow ones are divided by the factor, with a
     * linear ramp between the two correction dimensions. */
    double dim = n_rot;
    double lo = dim * log((double)orig_ctx / (beta_fast * 2 * M_PI)) / (2 * log((double)base));
    double hi = dim * log((double)orig_ctx / (beta_slow * 2 * M_PI)) / (2 * log((double)base));
    lo = floor(lo);
    hi = ceil(hi);
    if (lo < 0) lo = 0;
    if (hi > dim - 1) hi = dim - 1;
    if (lo == hi) hi += 0.001;
    for (uint32_t j = 0; j < np; j++) {
        float ramp = (float)(((float)j - lo) / (hi - lo));
        ramp = ramp < 0 ? 0 : (ramp > 1 ? 1 : ramp);
        float keep = 1.0f - ramp;
        float interp = (float)(1.0 / (factor * pow((double)base, (double)(2 * j) / n_rot)));
        r->inv_freq[j] = interp * (1.0f - keep) + extrap[j] * keep;
    }
}

void ds4_rope_round_bf16(ds4_rope *r) {
    for (uint32_t j = 0; j < r->n_pairs; j++) r->inv_freq[j] = ds4_bf16_to_f32(ds4_f32_to_bf16(r->inv_freq[j]));
}

void ds4_rope_angles(const ds4_rope *r, uint64_t pos, float *cos_out, float *sin_out) {
    float p = (float)pos;
    for (uint32_t j = 0; j < r->n_pairs; j++) {
        float a = r->inv_freq[j] * p; /* fp32 product, as the reference computes it */
        cos_out[j] = (float)cos((double)a);
        sin_out[j] = (float)sin((double)a);
    }
}

void ds4_rope_apply(float *x, uint32_t n, uint32_t n_pairs, const float *cs, const float *sn, int inverse) {
    float *t = x + n - 2 * n_pairs;
    for (uint32_t j = 0; j < n_pairs; j++) {
        float c = cs[j], s = inverse ? -sn[j] : sn[j];
        float e = t[2 * j], o = t[2 * j + 1];
        t[2 * j] = e * c - o * s;
        t[2 * j + 1] = o * c + e * s;
    }
}

/* ---- QAT simulations ------------------------------------------------------ */

float ds4_e4m3_round(float x) {
    float a = fabsf(x);
    if (!(a == a)) return x;
    if (a >= 448.0f) return copysignf(448.0f, x);
    int e;
    frexpf(a, &e); /* a = m * 2^e, m in [0.5, 1) */
    int exp2 = e - 1;               /* a in [2^exp2, 2^(exp2+1)) */
    if (exp2 < -6) exp2 = -6;       /* subnormal range shares the 2^-9 step */
    float step = ldexpf(1.0f, exp2 - 3);
    float q = rintf(a / step) * step; /* rintf: ties to even in the default mode */
    if (q > 448.0f) q = 448.0f;
    return copysignf(q, x);
}

float ds4_e2m1_round(float x) {
    static const float grid[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    float a = fabsf(x);
    if (a >= 6.0f) return copysignf(6.0f, x);
    int best = 0;
    for (int c = 1; c < 8; c++) {
        float d = fabsf(a - grid[c]), db = fabsf(a - grid[best]);
        if (d < db || (d == db && (c & 1) == 0)) best = c;
    }
    return copysignf(grid[best], x);
}

/* 2^ceil(log2(r)) for r > 0, computed exactly from the binary exponent. */
static float pow2_ceil(float r) {
    int e;
    float m = frexpf(r, &e);
    return ldexpf(1.0f, m == 0.5f ? e - 1 : e);
}

void ds4_fp8_sim(float *v, uint32_t n, uint32_t block) {
    for (uint32_t b = 0; b < n; b += block) {
        uint32_t len = n - b < block ? n - b : block;
        float amax = 1e-4f;
        for (uint32_t i = 0; i < len; i++) amax = fmaxf(amax, fabsf(v[b + i]));
        float s = pow2_ceil(amax / 448.0f);
        for (uint32_t i = 0; i < len; i++) v[b + i] = ds4_e4m3_round(v[b + i] / s) * s;
    }
}

void ds4_fp4_sim(float *v, uint32_t n, uint32_t block) {
    for (uint32_t b = 0; b < n; b += block) {
        uint32_t len = n - b < block ? n - b : block;
        float amax = 6.0f * 0x1p-126f;
        for (uint32_t i = 0; i < len; i++) amax = fmaxf(amax, fabsf(v[b + i]));
        float s = pow2_ceil(amax / 6.0f);
        for (uint32_t i = 0; i < len; i++) v[b + i] = ds4_e2m1_round(v[b + i] / s) * s;
    }
}

void ds4_hadamard(float *v, uint32_t n) {
    for (uint32_t h = 1; h < n; h *= 2)
        for (uint32_t i = 0; i < n; i += 2 * h)
            for (uint32_t j = i; j < i + h; j++) {
                float a = v[j], b = v[j + h];
                v[j] = a + b;
                v[j + h] = a - b;
            }
    float s = (float)(1.0 / sqrt((double)n));
    for (uint32_t i = 0; i < n; i++) v[i] *= s;
}
