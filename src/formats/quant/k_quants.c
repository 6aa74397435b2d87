/* K-quants: Q2_K and Q4_K weights (256-value super-blocks of affine
 * sub-blocks) and Q8_K, their activation format. */
#include <float.h>
#include <math.h>

#include "formats/quant/internal.h"

/* ======================================================================
 * Dequantization (bit-exact with ggml: same float operations, same order)
 * ====================================================================== */

void ds4_q2_K_dequantize(const void *src, float *dst, int64_t n) {
    const ds4_block_q2_K *b = src;
    for (int64_t i = 0; i < n / DS4_QK_K; i++, b++) {
        const float d = ds4_q_half(b->d), dmin = ds4_q_half(b->dmin);
        for (int k = 0; k < DS4_QK_K / 16; k++) {
            const float dl = d * (float)(b->scales[k] & 15);
            const float ml = dmin * (float)(b->scales[k] >> 4);
            for (int l = 0; l < 16; l++) {
                const float v = dl * (float)ds4_q2k_q(b->qs, 16 * k + l);
                dst[16 * k + l] = v - ml;
            }
        }
        dst += DS4_QK_K;
    }
}

void ds4_q4_K_dequantize(const void *src, float *dst, int64_t n) {
    const ds4_block_q4_K *b = src;
    for (int64_t i = 0; i < n / DS4_QK_K; i++, b++) {
        const float d = ds4_q_half(b->d), dmin = ds4_q_half(b->dmin);
        for (int j = 0; j < DS4_QK_K / 32; j++) {
            uint8_t sc, m;
            ds4_q4k_scale_min(b->scales, j, &sc, &m);
            const float dl = d * (float)sc, ml = dmin * (float)m;
            for (int l = 0; l < 32; l++) {
                const float v = dl * (float)ds4_q4k_q(b->qs, 32 * j + l);
                dst[32 * j + l] = v - ml;
            }
        }
        dst += DS4_QK_K;
    }
}

void ds4_q8_K_dequantize(const void *src, float *dst, int64_t n) {
    const ds4_block_q8_K *b = src;
    for (int64_t i = 0; i < n / DS4_QK_K; i++)
        for (int j = 0; j < DS4_QK_K; j++) dst[i * DS4_QK_K + j] = b[i].d * (float)b[i].qs[j];
}

/* Symmetric, q in [-127, 127] (the kernels negate activations freely), fp32
 * scale, plus the per-16 sums the K-quant kernels use for the minimums. */
void ds4_q8_K_quantize(const float *src, void *dst, int64_t n, const float *imp) {
    (void)imp;
    ds4_block_q8_K *b = dst;
    for (int64_t i = 0; i < n / DS4_QK_K; i++, b++) {
        const float *x = src + i * DS4_QK_K;
        float amax = 0.0f;
        for (int j = 0; j < DS4_QK_K; j++) amax = ds4_maxf(fabsf(x[j]), amax);
        const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        b->d = amax / 127.0f;
        for (int j = 0; j < DS4_QK_K; j++)
            b->qs[j] = (int8_t)ds4_round_int(ds4_clampf(x[j] * id, -127.0f, 127.0f));
        for (int k = 0; k < DS4_QK_K / 16; k++) {
            int s = 0;
            for (int l = 0; l < 16; l++) s += b->qs[16 * k + l];
            b->bsums[k] = (int16_t)s;
        }
    }
}

/* ======================================================================
 * Quantization
 *
 * Both formats store, per sub-block j, value = s_j*q - m_j with q in
 * 0..qmax, s_j = d*sc_j and m_j = dmin*mc_j, where sc_j, mc_j are small
 * integer codes (4 bits for Q2_K, 6 for Q4_K) and d, dmin are fp16. The
 * goal is the least weighted squared error sum w_i (x_i - value_i)^2.
 *
 * 1. Per sub-block, a continuous (s, m) with m >= 0 is fitted: a sweep of
 *    trial step sizes picks the rounding pattern q, weighted least squares
 *    gives the best (s, m) for that pattern, and a few rounds of
 *    re-rounding/refitting polish the winner.
 * 2. With the q patterns fixed, each sub-block's error is an exact
 *    quadratic in (s, m). The super-block scales d, dmin and the integer
 *    codes are chosen against those quadratics (not against distances
 *    between scales, which ignores how much each sub-block's error depends
 *    on its scale): codes by local integer search, then (d, dmin) by a 2x2
 *    least-squares solve, alternating, from several starting points.
 * 3. With the real fp16 d, dmin and codes, every q is re-rounded (optimal
 *    per value once the scales are fixed), the quadratics are rebuilt and
 *    step 2-3 repeats; the best block actually produced is kept.
 * ====================================================================== */

typedef struct {
    int sub;  /* values per sub-block: 16 or 32 */
    int nsub; /* sub-blocks per super-block */
    int qmax; /* 3 or 15 */
    int cmax; /* largest scale/min code: 15 or 63 */
    int ntrial; /* trial step sizes in the sub-block sweep */
} kq_geom;

/* With only 4 levels a Q2_K fit is more sensitive to the step size, and
 * its sub-blocks are half as long, so it gets a finer sweep. */
static const kq_geom k_q2 = {16, 16, 3, 15, 41};
static const kq_geom k_q4 = {32, 8, 15, 63, 21};

/* Error weights of one super-block. With an importance vector: the
 * importance times sqrt(sigma^2 + x^2), which still favours large weights
 * within a column class and keeps small ones from being ignored. Without
 * one: the same shape with unit importance. A sub-block whose weights are
 * all zero (columns with zero importance) falls back to unit weights so its
 * fit stays well defined. */
static void kq_weights(const kq_geom *g, const float *x, const float *imp, float *w) {
    double sx2 = 0.0;
    for (int i = 0; i < DS4_QK_K; i++) sx2 += (double)x[i] * x[i];
    const float sigma2 = (float)(sx2 / DS4_QK_K);
    for (int i = 0; i < DS4_QK_K; i++) {
        const float base = sqrtf(sigma2 + x[i] * x[i]);
        w[i] = imp ? imp[i] * base : base;
    }
    for (int j = 0; j < g->nsub; j++) {
        float sw = 0.0f;
        for (int i = 0; i < g->sub; i++) sw += w[j * g->sub + i];
        if (!(sw > 0.0f) || !isfinite(sw))
            for (int i = 0; i < g->sub; i++) w[j * g->sub + i] = 1.0f;
    }
}

/* Moments of one sub-block for a fixed q pattern; its weighted squared
 * error at (s, m) is  A s^2 + C m^2 - 2 B s m - 2 P s + 2 Q m + R. */
typedef struct {
    double A, B, C, P, Q, R;
} kq_moments;

static kq_moments kq_moments_of(int n, const float *x, const float *w, const uint8_t *q) {
    kq_moments k = {0, 0, 0, 0, 0, 0};
    for (int i = 0; i < n; i++) {
        const double wi = w[i], qi = q[i], xi = x[i];
        k.A += wi * qi * qi;
        k.B += wi * qi;
        k.C += wi;
        k.P += wi * qi * xi;
        k.Q += wi * xi;
        k.R += wi * xi * xi;
    }
    return k;
}

static double kq_err(const kq_moments *k, double s, double m) {
    return k->A * s * s + k->C * m * m - 2 * k->B * s * m - 2 * k->P * s + 2 * k->Q * m + k->R;
}

/* Best (s >= 0, m >= 0) for fixed q: the unconstrained 2x2 solve, or the
 * boundary m = 0 / s = 0 when the solve leaves the feasible quadrant. */
static void kq_fit(const kq_moments *k, double *s, double *m) {
    const double det = k->A * k->C - k->B * k->B;
    double bs = 0.0, bm = 0.0;
    if (det > 1e-12 * k->A * k->C) {
        bs = (k->C * k->P - k->B * k->Q) / det;
        bm = (k->B * k->P - k->A * k->Q) / det;
    }
    if (!(det > 1e-12 * k->A * k->C) || bs < 0.0 || bm < 0.0) {
        /* compare the two edges */
        const double s0 = k->A > 0 ? fmax(k->P / k->A, 0.0) : 0.0; /* m = 0 */
        const double m0 = k->C > 0 ? fmax(-k->Q / k->C, 0.0) : 0.0; /* s = 0 */
        if (kq_err(k, s0, 0.0) <= kq_err(k, 0.0, m0)) {
            bs = s0;
            bm = 0.0;
        } else {
            bs = 0.0;
            bm = m0;
        }
    }
    *s = bs;
    *m = bm;
}

/* q = clamp(round((x + m) / s)); the nearest level is optimal per value for
 * fixed (s, m), whatever the weights. Also refreshes the q-dependent
 * moments A, B, P of k (C, Q, R depend only on x and w and are kept). */
static void kq_round(int n, int qmax, const float *x, const float *w, float s, float m, uint8_t *q,
                     kq_moments *k) {
    double A = 0.0, B = 0.0, P = 0.0;
    if (!(s > 0.0f)) {
        memset(q, 0, (size_t)n);
    } else {
        const float is = 1.0f / s;
        for (int i = 0; i < n; i++) {
            const int qi = ds4_round_int(ds4_clampf((x[i] + m) * is, 0.0f, (float)qmax));
            q[i] = (uint8_t)qi;
            const double wq = (double)w[i] * qi;
            A += wq * qi;
            B += wq;
            P += wq * x[i];
        }
    }
    k->A = A;
    k->B = B;
    k->P = P;
}

/* Step 1: continuous fit of one sub-block. */
static void kq_fit_sub(int n, int qmax, int ntrial, const float *x, const float *w, uint8_t *q,
                       kq_moments *mom) {
    float xmin = x[0], xmax = x[0];
    for (int i = 1; i < n; i++) {
        xmin = ds4_minf(x[i], xmin);
        xmax = ds4_maxf(x[i], xmax);
    }
    const float lo = ds4_minf(xmin, 0.0f); /* m >= 0: the grid starts at or below zero */
    memset(q, 0, (size_t)n);
    *mom = kq_moments_of(n, x, w, q); /* q = 0: only C, Q, R are non-zero */
    if (!(xmax > lo)) return;         /* constant block at or below zero: s = 0 reproduces it */
    uint8_t cand[32];
    kq_moments k = *mom;
    double best = DBL_MAX;
    /* Trial step sizes: span/(qmax + t) for t in [-1, 1], i.e. from slightly
     * clipping the extremes to leaving a little headroom. */
    for (int t = 0; t < ntrial; t++) {
        const float s = (xmax - lo) / ((float)qmax - 1.0f + 2.0f * (float)t / (float)(ntrial - 1));
        kq_round(n, qmax, x, w, s, -lo, cand, &k);
        double fs, fm;
        kq_fit(&k, &fs, &fm);
        const double e = kq_err(&k, fs, fm);
        if (e < best) {
            best = e;
            memcpy(q, cand, (size_t)n);
            *mom = k;
        }
    }
    /* Polish: re-round with the fitted (s, m) and refit while it helps. */
    for (int it = 0; it < 4; it++) {
        double fs, fm;
        kq_fit(mom, &fs, &fm);
        kq_round(n, qmax, x, w, (float)fs, (float)fm, cand, &k);
        if (memcmp(cand, q, (size_t)n) == 0) break;
        double ns, nm;
        kq_fit(&k, &ns, &nm);
        const double e = kq_err(&k, ns, nm);
        if (!(e < best)) break;
        best = e;
        memcpy(q, cand, (size_t)n);
        *mom = k;
    }
}

/* Step 2: codes and super-block scales against fixed per-sub-block
 * quadratics. d, dmin are returned already rounded to fp16 values. */
typedef struct {
    uint16_t d, dmin; /* fp16 bits */
    uint8_t sc[16], mc[16];
    double err;
} kq_scales;

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Best integer codes of one sub-block for given d, dmin: start from the
 * rounded continuous optimum and search the 3x3 neighbourhood (the error is
 * a convex quadratic, so the integer optimum is next to the real one). */
static void kq_codes_for(const kq_moments *k, int cmax, double d, double dm, uint8_t *sc,
                         uint8_t *mc) {
    double s, m;
    kq_fit(k, &s, &m);
    int c0 = d > 0 ? clampi((int)lrint(s / d), 0, cmax) : 0;
    int m0 = dm > 0 ? clampi((int)lrint(m / dm), 0, cmax) : 0;
    double best = DBL_MAX;
    int bc = c0, bm = m0;
    for (int a = -1; a <= 1; a++) {
        for (int b = -1; b <= 1; b++) {
            const int c = c0 + a, mm = m0 + b;
            if (c < 0 || c > cmax || mm < 0 || mm > cmax) continue;
            const double e = kq_err(k, d * c, dm * mm);
            if (e < best) {
                best = e;
                bc = c;
                bm = mm;
            }
        }
    }
    *sc = (uint8_t)bc;
    *mc = (uint8_t)bm;
}

static double kq_total(const kq_moments *k, int nsub, double d, double dm, const uint8_t *sc,
                       const uint8_t *mc) {
    double e = 0.0;
    for (int j = 0; j < nsub; j++) e += kq_err(&k[j], d * sc[j], dm * mc[j]);
    return e;
}

static void kq_choose_scales(const kq_geom *g, const kq_moments *k, kq_scales *out) {
    double smax = 0.0, mmax = 0.0;
    for (int j = 0; j < g->nsub; j++) {
        double s, m;
        kq_fit(&k[j], &s, &m);
        smax = fmax(smax, s);
        mmax = fmax(mmax, m);
    }
    out->err = DBL_MAX;
    /* Starting points: the largest sub-block scale mapped onto the top code,
     * a little below it (finer steps for all other sub-blocks), or a
     * little above it (that one sub-block's scale clipped). */
    static const float starts[] = {1.0f, 0.97f, 0.94f, 0.9f, 1.03f};
    for (size_t t = 0; t < sizeof starts / sizeof starts[0]; t++) {
        double d = smax / (g->cmax * starts[t]), dm = mmax / (g->cmax * starts[t]);
        uint8_t sc[16], mc[16];
        for (int it = 0; it < 4; it++) {
            /* round to what the file can hold before choosing codes */
            const uint16_t hd = ds4_f32_to_f16((float)d), hm = ds4_f32_to_f16((float)dm);
            const double rd = ds4_f16_to_f32(hd), rm = ds4_f16_to_f32(hm);
            for (int j = 0; j < g->nsub; j++) kq_codes_for(&k[j], g->cmax, rd, rm, &sc[j], &mc[j]);
            const double e = kq_total(k, g->nsub, rd, rm, sc, mc);
            if (e < out->err) {
                out->err = e;
                out->d = hd;
                out->dmin = hm;
                memcpy(out->sc, sc, (size_t)g->nsub);
                memcpy(out->mc, mc, (size_t)g->nsub);
            }
            /* refit (d, dmin) for these codes: minimise sum_j err_j(d sc_j, dm mc_j) */
            double a11 = 0, a12 = 0, a22 = 0, b1 = 0, b2 = 0;
            for (int j = 0; j < g->nsub; j++) {
                a11 += k[j].A * sc[j] * sc[j];
                a22 += k[j].C * mc[j] * mc[j];
                a12 -= k[j].B * sc[j] * mc[j];
                b1 += k[j].P * sc[j];
                b2 -= k[j].Q * mc[j];
            }
            const double det = a11 * a22 - a12 * a12;
            double nd = d, nm = dm;
            if (a22 <= 0.0) { /* no min codes in use: d alone */
                nd = a11 > 0 ? b1 / a11 : d;
                nm = 0.0;
            } else if (a11 <= 0.0) { /* no scale codes in use: dmin alone */
                nm = b2 / a22;
            } else if (det > 1e-12 * a11 * a22) {
                nd = (b1 * a22 - a12 * b2) / det;
                nm = (a11 * b2 - a12 * b1) / det;
            } else {
                break;
            }
            if (!(nd >= 0.0) || !(nm >= 0.0)) break;
            if (nd == d && nm == dm) break;
            d = nd;
            dm = nm;
        }
    }
}

/* Weighted squared error of a finished block (through the real decoder's
 * arithmetic), for choosing between refinement rounds. */
static double kq_block_err(const float *x, const float *w, const float *y) {
    double e = 0.0;
    for (int i = 0; i < DS4_QK_K; i++) {
        const double d = (double)x[i] - y[i];
        e += w[i] * d * d;
    }
    return e;
}

/* Quantizes one super-block into q[256] plus scales; emit() packs it. */
typedef void (*kq_pack_fn)(void *blk, const kq_scales *s, const uint8_t *q);

static void kq_quantize_block(const kq_geom *g, const float *x, const float *imp, void *blk,
                              size_t blk_bytes, kq_pack_fn pack,
                              void (*dequant)(const void *, float *, int64_t)) {
    float w[DS4_QK_K], y[DS4_QK_K];
    uint8_t q[DS4_QK_K];
    kq_moments mom[16];
    kq_weights(g, x, imp, w);
    for (int j = 0; j < g->nsub; j++)
        kq_fit_sub(g->sub, g->qmax, g->ntrial, x + j * g->sub, w + j * g->sub, q + j * g->sub, &mom[j]);

    uint8_t best_blk[144];
    double best = DBL_MAX;
    for (int round = 0; round < 3; round++) {
        kq_scales sc;
        kq_choose_scales(g, mom, &sc);
        /* step 3: re-round every value against the stored scales */
        const float d = ds4_f16_to_f32(sc.d), dm = ds4_f16_to_f32(sc.dmin);
        for (int j = 0; j < g->nsub; j++) {
            const float s = d * (float)sc.sc[j], m = dm * (float)sc.mc[j];
            kq_round(g->sub, g->qmax, x + j * g->sub, w + j * g->sub, s, m, q + j * g->sub, &mom[j]);
        }
        pack(blk, &sc, q);
        dequant(blk, y, DS4_QK_K);
        const double e = kq_block_err(x, w, y);
        if (e < best) {
            best = e;
            memcpy(best_blk, blk, blk_bytes);
        } else {
            break;
        }
    }
    memcpy(blk, best_blk, blk_bytes);
}

static void q2k_pack(void *blk, const kq_scales *s, const uint8_t *q) {
    ds4_block_q2_K *b = blk;
    b->d = s->d;
    b->dmin = s->dmin;
    for (int k = 0; k < 16; k++) b->scales[k] = (uint8_t)(s->sc[k] | (s->mc[k] << 4));
    memset(b->qs, 0, sizeof b->qs);
    for (int i = 0; i < DS4_QK_K; i++) {
        const int h = i >> 7, sh = (i >> 5) & 3, l = i & 31;
        b->qs[32 * h + l] |= (uint8_t)(q[i] << (2 * sh));
    }
}

static void q4k_pack(void *blk, const kq_scales *s, const uint8_t *q) {
    ds4_block_q4_K *b = blk;
    b->d = s->d;
    b->dmin = s->dmin;
    ds4_q4k_pack_scales(b->scales, s->sc, s->mc);
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++)
            b->qs[32 * c + l] = (uint8_t)(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
}

void ds4_q2_K_quantize(const float *src, void *dst, int64_t n, const float *imp) {
    ds4_block_q2_K *b = dst;
    for (int64_t i = 0; i < n / DS4_QK_K; i++)
        kq_quantize_block(&k_q2, src + i * DS4_QK_K, imp ? imp + i * DS4_QK_K : NULL, b + i,
                          sizeof *b, q2k_pack, ds4_q2_K_dequantize);
}

void ds4_q4_K_quantize(const float *src, void *dst, int64_t n, const float *imp) {
    ds4_block_q4_K *b = dst;
    for (int64_t i = 0; i < n / DS4_QK_K; i++)
        kq_quantize_block(&k_q4, src + i * DS4_QK_K, imp ? imp + i * DS4_QK_K : NULL, b + i,
                          sizeof *b, q4k_pack, ds4_q4_K_dequantize);
}

/* ======================================================================
 * Dot products against Q8_K activations
 *
 * Per super-block, with a = activation scale:
 *   sum_i w_i y_i = a*d * sum_k sc_k * (q . y)_k  -  a*dmin * sum_k mc_k * bsum_k
 * Both integer sums are exact in int32; only the final scaling and the sum
 * over super-blocks are float.
 * ====================================================================== */

float ds4_q2_K_dot_scalar(int64_t n, const void *w, const void *act) {
    const ds4_block_q2_K *x = w;
    const ds4_block_q8_K *y = act;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / DS4_QK_K; i++) {
        int isum = 0, msum = 0;
        for (int k = 0; k < 16; k++) {
            const int h = k >> 3, sh = (k >> 1) & 3, off = (k & 1) * 16;
            const uint8_t *qs = x[i].qs + 32 * h + off;
            const int8_t *a = y[i].qs + 16 * k;
            int s = 0;
            for (int l = 0; l < 16; l++) s += ((qs[l] >> (2 * sh)) & 3) * a[l];
            isum += (x[i].scales[k] & 15) * s;
            msum += (x[i].scales[k] >> 4) * y[i].bsums[k];
        }
        const float dall = y[i].d * ds4_q_half(x[i].d), dmin = y[i].d * ds4_q_half(x[i].dmin);
        sum += dall * (float)isum - dmin * (float)msum;
    }
    return sum;
}

float ds4_q4_K_dot_scalar(int64_t n, const void *w, const void *act) {
    const ds4_block_q4_K *x = w;
    const ds4_block_q8_K *y = act;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / DS4_QK_K; i++) {
        int isum = 0, msum = 0;
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            ds4_q4k_scale_min(x[i].scales, j, &sc, &m);
            const uint8_t *qs = x[i].qs + 32 * (j >> 1);
            const int8_t *a = y[i].qs + 32 * j;
            const int shift = (j & 1) * 4;
            int s = 0;
            for (int l = 0; l < 32; l++) s += ((qs[l] >> shift) & 15) * a[l];
            isum += sc * s;
            msum += m * (y[i].bsums[2 * j] + y[i].bsums[2 * j + 1]);
        }
        const float dall = y[i].d * ds4_q_half(x[i].d), dmin = y[i].d * ds4_q_half(x[i].dmin);
        sum += dall * (float)isum - dmin * (float)msum;
    }
    return sum;
}

#if DS4_QUANT_X86

/* The weights' q values are unsigned (0..3 or 0..15) and the activations
 * signed, which is exactly maddubs's operand order; pair sums are at most
 * 2*15*127 and cannot saturate. The 16-bit products are then scaled by the
 * sub-block codes with madd (AVX2) or VNNI's dpwssd (AVX-512), which also
 * widens to int32. */

/* sum_k mc_k * bsum_k for the 16 Q2_K sub-blocks or 8 Q4_K ones (the caller
 * gives the min code per 16-value group). */
DS4_TARGET_AVX2 static inline int kq_min_sum_avx2(const int16_t *bsums, __m128i min8x16) {
    const __m256i bs = _mm256_loadu_si256((const __m256i *)bsums);
    return ds4_hsum256_i32(_mm256_madd_epi16(bs, _mm256_cvtepu8_epi16(min8x16)));
}

DS4_TARGET_AVX2 float ds4_q2_K_dot_avx2(int64_t n, const void *w, const void *act) {
    const ds4_block_q2_K *x = w;
    const ds4_block_q8_K *y = act;
    const __m256i m3 = _mm256_set1_epi8(3);
    /* pshufb pattern: low 128-bit lane picks scale byte k, high lane byte
     * k+1, each widened to int16 (0x80 selects a zero byte). Adding k to
     * the pattern selects another pair; 0x80+k keeps its top bit. */
    const __m256i pair_base = _mm256_setr_epi8(0, -128, 0, -128, 0, -128, 0, -128, 0, -128, 0, -128, 0, -128, 0, -128,
                                               1, -128, 1, -128, 1, -128, 1, -128, 1, -128, 1, -128, 1, -128, 1, -128);
    __m256 acc = _mm256_setzero_ps();
    float accm = 0.0f;
    for (int64_t i = 0; i < n / DS4_QK_K; i++) {
        const __m128i sc8 = _mm_loadu_si128((const __m128i *)x[i].scales);
        const __m256i scl = _mm256_broadcastsi128_si256(_mm_and_si128(sc8, _mm_set1_epi8(15)));
        const int msum = kq_min_sum_avx2(y[i].bsums, _mm_and_si128(_mm_srli_epi16(sc8, 4), _mm_set1_epi8(15)));
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * h));
            for (int s = 0; s < 4; s++) {
                const __m256i qv = _mm256_and_si256(_mm256_srli_epi16(q, 2 * s), m3);
                const __m256i a = _mm256_loadu_si256((const __m256i *)(y[i].qs + 128 * h + 32 * s));
                const __m256i scv = _mm256_shuffle_epi8(scl, _mm256_add_epi8(pair_base, _mm256_set1_epi8((char)(8 * h + 2 * s))));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(qv, a), scv));
            }
        }
        const float ad = y[i].d;
        acc = _mm256_fmadd_ps(_mm256_set1_ps(ad * ds4_half_f16c(x[i].d)), _mm256_cvtepi32_ps(sumi), acc);
        accm += ad * ds4_half_f16c(x[i].dmin) * (float)msum;
    }
    return ds4_hsum256(acc) - accm;
}

DS4_TARGET_AVX512 float ds4_q2_K_dot_avx512(int64_t n, const void *w, const void *act) {
    const ds4_block_q2_K *x = w;
    const ds4_block_q8_K *y = act;
    const __m512i m3 = _mm512_set1_epi8(3);
    /* Four sub-blocks per 512-bit register: int16 lanes 8r..8r+7 take the
     * scale of sub-block k+r. */
    const __m512i quad_base = _mm512_set_epi16(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2,
                                               1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    /* shift counts per 256-bit half: bit pair s in the low half, s+1 in the high */
    const __m512i shift01 = _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1);
    __m512 acc = _mm512_setzero_ps();
    float accm = 0.0f;
    for (int64_t i = 0; i < n / DS4_QK_K; i++) {
        const __m128i sc8 = _mm_loadu_si128((const __m128i *)x[i].scales);
        const __m512i sc16 = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(_mm_and_si128(sc8, _mm_set1_epi8(15))));
        const int msum = kq_min_sum_avx2(y[i].bsums, _mm_and_si128(_mm_srli_epi16(sc8, 4), _mm_set1_epi8(15)));
        __m512i sumi = _mm512_setzero_si512();
        for (int h = 0; h < 2; h++) {
            const __m256i q256 = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * h));
            const __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(q256), q256, 1);
            for (int s = 0; s < 4; s += 2) {
                const __m512i cnt = _mm512_add_epi16(shift01, _mm512_set1_epi16((short)(2 * s)));
                const __m512i qv = _mm512_and_si512(_mm512_srlv_epi16(q, cnt), m3);
                const __m512i a = _mm512_loadu_si512((const void *)(y[i].qs + 128 * h + 32 * s));
                const __m512i scv = _mm512_permutexvar_epi16(
                    _mm512_add_epi16(quad_base, _mm512_set1_epi16((short)(8 * h + 2 * s))), sc16);
                sumi = _mm512_dpwssd_epi32(sumi, _mm512_maddubs_epi16(qv, a), scv);
            }
        }
        const float ad = y[i].d;
        acc = _mm512_fmadd_ps(_mm512_set1_ps(ad * ds4_half_f16c(x[i].d)), _mm512_cvtepi32_ps(sumi), acc);
        accm += ad * ds4_half_f16c(x[i].dmin) * (float)msum;
    }
    return ds4_hsum512(acc) - accm;
}

/* Q4_K codes of one block: the 8 scale codes as bytes of a u64 and the
 * 8 min codes, each repeated for the two 16-value halves of its sub-block
 * (the granularity of bsums). */
DS4_TARGET_AVX2 static inline uint64_t q4k_codes(const uint8_t *sc12, __m128i *m16) {
    uint32_t sc[2], m[2];
    ds4_q4k_unpack_scales(sc12, sc, m);
    const __m128i m8 = _mm_set_epi32(0, 0, (int)m[1], (int)m[0]);
    *m16 = _mm_unpacklo_epi8(m8, m8);
    return (uint64_t)sc[0] | ((uint64_t)sc[1] << 32);
}

#define SC_BYTE(sc, j) ((short)(((sc) >> (8 * (j))) & 0xff))

DS4_TARGET_AVX2 float ds4_q4_K_dot_avx2(int64_t n, const void *w, const void *act) {
    const ds4_block_q4_K *x = w;
    const ds4_block_q8_K *y = act;
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256 acc = _mm256_setzero_ps();
    float accm = 0.0f;
    for (int64_t i = 0; i < n / DS4_QK_K; i++) {
        __m128i m16;
        const uint64_t sc = q4k_codes(x[i].scales, &m16);
        const int msum = kq_min_sum_avx2(y[i].bsums, m16);
        __m256i sumi = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * c));
            const __m256i lo = _mm256_and_si256(q, m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            const __m256i alo = _mm256_loadu_si256((const __m256i *)(y[i].qs + 64 * c));
            const __m256i ahi = _mm256_loadu_si256((const __m256i *)(y[i].qs + 64 * c + 32));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(lo, alo), _mm256_set1_epi16(SC_BYTE(sc, 2 * c))));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(hi, ahi), _mm256_set1_epi16(SC_BYTE(sc, 2 * c + 1))));
        }
        const float ad = y[i].d;
        acc = _mm256_fmadd_ps(_mm256_set1_ps(ad * ds4_half_f16c(x[i].d)), _mm256_cvtepi32_ps(sumi), acc);
        accm += ad * ds4_half_f16c(x[i].dmin) * (float)msum;
    }
    return ds4_hsum256(acc) - accm;
}

DS4_TARGET_AVX512 static inline __m512i two_halves_epi16(int lo, int hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16((short)lo)), _mm256_set1_epi16((short)hi), 1);
}

DS4_TARGET_AVX512 static inline __m512i load_2x256(const int8_t *a, const int8_t *b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a)),
                              _mm256_loadu_si256((const __m256i *)b), 1);
}

/* Two 64-value chunks per step: the low 256 bits hold chunk c, the high
 * ones chunk c+1. */
DS4_TARGET_AVX512 float ds4_q4_K_dot_avx512(int64_t n, const void *w, const void *act) {
    const ds4_block_q4_K *x = w;
    const ds4_block_q8_K *y = act;
    const __m512i m4 = _mm512_set1_epi8(15);
    __m512 acc = _mm512_setzero_ps();
    float accm = 0.0f;
    for (int64_t i = 0; i < n / DS4_QK_K; i++) {
        __m128i m16;
        const uint64_t sc = q4k_codes(x[i].scales, &m16);
        const int msum = kq_min_sum_avx2(y[i].bsums, m16);
        __m512i sumi = _mm512_setzero_si512();
        for (int c = 0; c < 4; c += 2) {
            const __m512i q = _mm512_loadu_si512((const void *)(x[i].qs + 32 * c));
            const __m512i lo = _mm512_and_si512(q, m4);
            const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
            const int8_t *a = y[i].qs + 64 * c;
            const __m512i alo = load_2x256(a, a + 64), ahi = load_2x256(a + 32, a + 96);
            sumi = _mm512_dpwssd_epi32(sumi, _mm512_maddubs_epi16(lo, alo), two_halves_epi16(SC_BYTE(sc, 2 * c), SC_BYTE(sc, 2 * c + 2)));
            sumi = _mm512_dpwssd_epi32(sumi, _mm512_maddubs_epi16(hi, ahi), two_halves_epi16(SC_BYTE(sc, 2 * c + 1), SC_BYTE(sc, 2 * c + 3)));
        }
        const float ad = y[i].d;
        acc = _mm512_fmadd_ps(_mm512_set1_ps(ad * ds4_half_f16c(x[i].d)), _mm512_cvtepi32_ps(sumi), acc);
        accm += ad * ds4_half_f16c(x[i].dmin) * (float)msum;
    }
    return ds4_hsum512(acc) - accm;
}

#endif

#if DS4_QUANT_X86

/* ======================================================================
 * Q2_K tile kernel (AVX-512): many tokens against the same rows
 *
 * Each row is decoded once: its 2-bit values into bytes in element order
 * and its scale codes into the int16 lane patterns dpwssd takes, so per
 * (row, token) only maddubs + dpwssd remain. Integer lanes, float steps
 * and their order are those of ds4_q2_K_dot_avx512, so the results agree
 * bit for bit.
 * ====================================================================== */

typedef struct {
    _Alignas(64) uint8_t q[DS4_QK_K]; /* values 0..3, element order */
    int16_t sc[4][32];                /* per 64 values: the sub-block scale code of each int16 lane */
    int16_t m[16];                    /* min codes */
    float d, dmin;
} q2k_tile_row;

DS4_TARGET_AVX512 static void q2k_tile_decode(const ds4_block_q2_K *x, int64_t nb, q2k_tile_row *out) {
    const __m512i m3 = _mm512_set1_epi8(3);
    const __m512i quad_base = _mm512_set_epi16(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2,
                                               1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i shift01 = _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1);
    for (int64_t i = 0; i < nb; i++) {
        const __m128i sc8 = _mm_loadu_si128((const __m128i *)x[i].scales);
        const __m512i sc16 = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(_mm_and_si128(sc8, _mm_set1_epi8(15))));
        _mm256_store_si256((__m256i *)out[i].m, _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc8, 4), _mm_set1_epi8(15))));
        for (int h = 0; h < 2; h++) {
            const __m256i q256 = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * h));
            const __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(q256), q256, 1);
            for (int s = 0; s < 4; s += 2) {
                const __m512i cnt = _mm512_add_epi16(shift01, _mm512_set1_epi16((short)(2 * s)));
                _mm512_store_si512((void *)(out[i].q + 128 * h + 32 * s), _mm512_and_si512(_mm512_srlv_epi16(q, cnt), m3));
                _mm512_store_si512((void *)out[i].sc[2 * h + s / 2],
                                   _mm512_permutexvar_epi16(_mm512_add_epi16(quad_base, _mm512_set1_epi16((short)(8 * h + 2 * s))), sc16));
            }
        }
        out[i].d = ds4_half_f16c(x[i].d);
        out[i].dmin = ds4_half_f16c(x[i].dmin);
    }
}

/* The per-block scalar work (min sums, scale products) is done for the
 * group's tokens at once, one token per lane; every lane performs the
 * per-row kernel's operations for its token, in the same order. */
DS4_TARGET_AVX512 static inline __attribute__((always_inline)) void q2k_tile_2xT(const q2k_tile_row *w0, const q2k_tile_row *w1,
                                           const ds4_block_q8_K *const ya[4], int64_t nb, float out[2][4], const int T) {
    const q2k_tile_row *wr[2] = {w0, w1};
    __m512 acc[2][4];
    __m128 accm[2] = {_mm_setzero_ps(), _mm_setzero_ps()}; /* lane t: token t */
    DS4_UNROLL
    for (int r = 0; r < 2; r++)
        DS4_UNROLL
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        __m512i s[2][4];
        DS4_UNROLL
        for (int r = 0; r < 2; r++)
            DS4_UNROLL
            for (int t = 0; t < T; t++) s[r][t] = _mm512_setzero_si512();
        DS4_UNROLL
        for (int c = 0; c < 4; c++) {
            __m512i a[4];
            DS4_UNROLL
            for (int t = 0; t < T; t++) a[t] = _mm512_loadu_si512((const void *)(ya[t][i].qs + 64 * c));
            DS4_UNROLL
            for (int r = 0; r < 2; r++) {
                const __m512i q = _mm512_load_si512((const void *)(wr[r][i].q + 64 * c));
                const __m512i sc = _mm512_load_si512((const void *)wr[r][i].sc[c]);
                DS4_UNROLL
                for (int t = 0; t < T; t++) s[r][t] = _mm512_dpwssd_epi32(s[r][t], _mm512_maddubs_epi16(q, a[t]), sc);
            }
        }
        const __m128 ad = _mm_setr_ps(ya[0][i].d, T > 1 ? ya[1][i].d : 0.0f, T > 2 ? ya[2][i].d : 0.0f,
                                      T > 3 ? ya[3][i].d : 0.0f);
        __m256i bs[4];
        DS4_UNROLL
        for (int t = 0; t < 4; t++)
            bs[t] = t < T ? _mm256_loadu_si256((const __m256i *)ya[t][i].bsums) : _mm256_setzero_si256();
        DS4_UNROLL
        for (int r = 0; r < 2; r++) {
            const __m256i m = _mm256_load_si256((const __m256i *)wr[r][i].m);
            /* four tokens' sum_k m_k * bsum_k: madd, then a reduction tree
             * that leaves token t's total in lane t */
            const __m256i h01 = _mm256_hadd_epi32(_mm256_madd_epi16(bs[0], m), _mm256_madd_epi16(bs[1], m));
            const __m256i h23 = _mm256_hadd_epi32(_mm256_madd_epi16(bs[2], m), _mm256_madd_epi16(bs[3], m));
            const __m256i h = _mm256_hadd_epi32(h01, h23);
            const __m128i msum = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
            accm[r] = _mm_add_ps(accm[r], _mm_mul_ps(_mm_mul_ps(ad, _mm_set1_ps(wr[r][i].dmin)), _mm_cvtepi32_ps(msum)));
            const __m512 sd = _mm512_castps128_ps512(_mm_mul_ps(ad, _mm_set1_ps(wr[r][i].d)));
            DS4_UNROLL
            for (int t = 0; t < T; t++)
                acc[r][t] = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_set1_epi32(t), sd), _mm512_cvtepi32_ps(s[r][t]),
                                            acc[r][t]);
        }
    }
    DS4_UNROLL
    for (int r = 0; r < 2; r++) {
        float m4[4];
        _mm_storeu_ps(m4, accm[r]);
        DS4_UNROLL
        for (int t = 0; t < T; t++) out[r][t] = ds4_hsum512(acc[r][t]) - m4[t];
    }
}

/* One instance per token count, so the loops unroll with constant bounds. */
DS4_TARGET_AVX512 static void q2k_tile_2x1(const q2k_tile_row *w0, const q2k_tile_row *w1, const ds4_block_q8_K *const ya[4], int64_t nb, float out[2][4]) {
    q2k_tile_2xT(w0, w1, ya, nb, out, 1);
}
DS4_TARGET_AVX512 static void q2k_tile_2x2(const q2k_tile_row *w0, const q2k_tile_row *w1, const ds4_block_q8_K *const ya[4], int64_t nb, float out[2][4]) {
    q2k_tile_2xT(w0, w1, ya, nb, out, 2);
}
DS4_TARGET_AVX512 static void q2k_tile_2x3(const q2k_tile_row *w0, const q2k_tile_row *w1, const ds4_block_q8_K *const ya[4], int64_t nb, float out[2][4]) {
    q2k_tile_2xT(w0, w1, ya, nb, out, 3);
}
DS4_TARGET_AVX512 static void q2k_tile_2x4(const q2k_tile_row *w0, const q2k_tile_row *w1, const ds4_block_q8_K *const ya[4], int64_t nb, float out[2][4]) {
    q2k_tile_2xT(w0, w1, ya, nb, out, 4);
}

DS4_TARGET_AVX512 void ds4_q2_K_tile_avx512(int64_t n, const void *w, size_t w_stride, uint32_t n_rows, const void *act,
                                            size_t act_stride, uint32_t n_tok, float *y, size_t y_stride, void *scratch) {
    if (n_tok == 1) {
        /* one token: decoding the row first would not pay */
        for (uint32_t r = 0; r < n_rows; r++) y[r] = ds4_q2_K_dot_avx512(n, (const uint8_t *)w + r * w_stride, act);
        return;
    }
    const int64_t nb = n / DS4_QK_K;
    q2k_tile_row *dec = scratch;
    for (uint32_t r0 = 0; r0 < n_rows; r0 += 2) {
        const uint32_t nr = n_rows - r0 < 2 ? n_rows - r0 : 2;
        for (uint32_t r = 0; r < nr; r++)
            q2k_tile_decode((const ds4_block_q2_K *)((const uint8_t *)w + (r0 + r) * w_stride), nb, dec + r * nb);
        /* a lone last row is paired with itself; a short last group of
         * tokens takes the kernel for its count */
        const q2k_tile_row *w1 = dec + (nr - 1) * nb;
        for (uint32_t t0 = 0; t0 < n_tok; t0 += 4) {
            const uint32_t nt = n_tok - t0 < 4 ? n_tok - t0 : 4;
            const ds4_block_q8_K *ya4[4];
            for (uint32_t t = 0; t < 4; t++)
                ya4[t] = (const ds4_block_q8_K *)((const uint8_t *)act + (t0 + (t < nt ? t : 0)) * act_stride);
            float out[2][4];
            switch (nt) {
            case 1: q2k_tile_2x1(dec, w1, ya4, nb, out); break;
            case 2: q2k_tile_2x2(dec, w1, ya4, nb, out); break;
            case 3: q2k_tile_2x3(dec, w1, ya4, nb, out); break;
            default: q2k_tile_2x4(dec, w1, ya4, nb, out); break;
            }
            for (uint32_t r = 0; r < nr; r++)
                for (uint32_t t = 0; t < nt; t++) y[(t0 + t) * y_stride + r0 + r] = out[r][t];
        }
    }
}

#endif
