/* IQ2_XXS: 2.06 bits per weight. Each group of 8 values is one of 256
 * magnitude patterns (levels 8, 25, 43) with an even number of sign flips,
 * and each 32 values share a 4-bit scale on top of an fp16 super-block
 * scale. Tables: iq2_tables.c. */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>

#include "formats/quant/internal.h"

/* ======================================================================
 * Dequantization (bit-exact with ggml)
 * ====================================================================== */

void ds4_iq2_xxs_dequantize(const void *src, float *dst, int64_t n) {
    const ds4_block_iq2_xxs *b = src;
    for (int64_t i = 0; i < n / DS4_QK_K; i++, b++) {
        const float d = ds4_q_half(b->d);
        for (int ib = 0; ib < 8; ib++) {
            const uint32_t aux = ds4_iq2xxs_aux(b, ib);
            const float db = d * (0.5f + (float)(aux >> 28)) * 0.25f;
            for (int k = 0; k < 4; k++) {
                const uint8_t *g = ds4_iq2xxs_grid[b->qs[8 * ib + k]];
                const uint8_t s = ds4_iq2_signs[(aux >> (7 * k)) & 127];
                for (int t = 0; t < 8; t++) {
                    const float v = db * (float)g[t];
                    dst[32 * ib + 8 * k + t] = (s >> t) & 1 ? -v : v;
                }
            }
        }
        dst += DS4_QK_K;
    }
}

/* ======================================================================
 * Quantization
 *
 * Work in magnitude space: y = |x|, with the sign pattern taken from x.
 * A group needs an even number of negatives, so in an odd group the value
 * that costs least to get wrong (smallest w*x^2) keeps the opposite sign;
 * its target magnitude becomes -|x|.
 *
 * Per 32-value sub-block the scale u (value = u * magnitude) and the four
 * grid patterns are found together: for a sweep of trial u, every group
 * takes the level pattern nearest to y/u, or, when that pattern is not in
 * the grid, the best of the grid patterns near it (weighted error, real
 * levels 8/25/43); least squares then gives the best u for those patterns.
 * The best trial is polished by re-picking and refitting.
 *
 * Then u must become d * (2l+1)/8 with one fp16 d per super-block and a
 * 4-bit l per sub-block. With the patterns fixed each sub-block's error is
 * a quadratic in u, so d is chosen (several starts, alternating code
 * choice and a 1-D least-squares refit) against those exact quadratics,
 * and finally the patterns are re-picked for the u actually stored and the
 * codes re-chosen for the new patterns, keeping the best block produced.
 * ====================================================================== */

#define IQ2_NCODES 6561 /* 3^8 level patterns */

/* pattern (base-3 index) -> grid index, or -1; and for off-grid patterns
 * the grid entries within squared level distance dmin+2 of it (grid
 * patterns all have an even level sum, so distances to one pattern share a
 * parity and dmin+2 is the next possible distance). */
static struct {
    float mag[256][8]; /* the grid as floats, for the error sums */
    int16_t on_grid[IQ2_NCODES];
    uint32_t first[IQ2_NCODES + 1];
    uint8_t *near;
} g_iq2;
static pthread_once_t g_iq2_once = PTHREAD_ONCE_INIT;

static int level_of(uint16_t code, int t) { return (code >> (2 * t)) & 3; }

static void iq2_build(void) {
    int lv[256][8];
    for (int g = 0; g < 256; g++)
        for (int t = 0; t < 8; t++) lv[g][t] = level_of(ds4_iq2xxs_codes[g], t);
    for (int g = 0; g < 256; g++)
        for (int t = 0; t < 8; t++) g_iq2.mag[g][t] = ds4_iq2xxs_grid[g][t];
    for (int c = 0; c < IQ2_NCODES; c++) g_iq2.on_grid[c] = -1;
    for (int g = 0; g < 256; g++) {
        int c = 0;
        for (int t = 7; t >= 0; t--) c = 3 * c + lv[g][t];
        g_iq2.on_grid[c] = (int16_t)g;
    }
    /* two passes: count, then fill */
    uint8_t *near = NULL;
    for (int pass = 0; pass < 2; pass++) {
        uint32_t total = 0;
        for (int c = 0; c < IQ2_NCODES; c++) {
            g_iq2.first[c] = total;
            if (g_iq2.on_grid[c] >= 0) continue;
            int p[8], dist[256], dmin = 1 << 30;
            for (int t = 0, r = c; t < 8; t++, r /= 3) p[t] = r % 3;
            for (int g = 0; g < 256; g++) {
                int d2 = 0;
                for (int t = 0; t < 8; t++) d2 += (lv[g][t] - p[t]) * (lv[g][t] - p[t]);
                dist[g] = d2;
                if (d2 < dmin) dmin = d2;
            }
            for (int g = 0; g < 256; g++)
                if (dist[g] <= dmin + 2) {
                    if (near) near[total] = (uint8_t)g;
                    total++;
                }
        }
        g_iq2.first[IQ2_NCODES] = total;
        if (pass == 0) {
            near = malloc(total);
            if (!near) abort(); /* about 110 KB, allocated once */
        }
    }
    g_iq2.near = near;
}

/* Level pattern (base-3 index) nearest to y/u, value by value. */
static int iq2_pattern(const float *y, float u) {
    int c = 0;
    for (int t = 7; t >= 0; t--) {
        /* boundaries halfway between 8u, 25u, 43u */
        const float a = y[t];
        c = 3 * c + (a > 34.0f * u ? 2 : a > 16.5f * u ? 1 : 0);
    }
    return c;
}

/* Best grid entry for a group whose nearest pattern is c: c itself when it
 * is in the grid (then it is optimal), else the grid entry near c with the
 * least weighted error at scale u. y: target magnitudes, w: weights. */
static int iq2_search(int c, const float *y, const float *w, float u) {
    const int g0 = g_iq2.on_grid[c];
    if (g0 >= 0) return g0;
    float best = FLT_MAX;
    int bg = 0;
    for (uint32_t j = g_iq2.first[c]; j < g_iq2.first[c + 1]; j++) {
        const float *m = g_iq2.mag[g_iq2.near[j]];
        float e8[8];
        for (int t = 0; t < 8; t++) {
            const float diff = u * m[t] - y[t];
            e8[t] = w[t] * diff * diff;
        }
        /* a fixed tree order, which the compiler may keep in vector lanes */
        const float e = ((e8[0] + e8[4]) + (e8[2] + e8[6])) + ((e8[1] + e8[5]) + (e8[3] + e8[7]));
        if (e < best) {
            best = e;
            bg = g_iq2.near[j];
        }
    }
    return bg;
}

static int iq2_pick(const float *y, const float *w, float u) { return iq2_search(iq2_pattern(y, u), y, w, u); }

/* Weighted moments of a sub-block for chosen patterns: error(u) =
 * A u^2 - 2 P u + R. */
typedef struct {
    double A, P, R;
} iq2_mom;

static iq2_mom iq2_moments(const float *y, const float *w, const uint8_t *g4) {
    iq2_mom m = {0, 0, 0};
    for (int k = 0; k < 4; k++) {
        const uint8_t *mag = ds4_iq2xxs_grid[g4[k]];
        for (int t = 0; t < 8; t++) {
            const double wi = w[8 * k + t], gi = mag[t], yi = y[8 * k + t];
            m.A += wi * gi * gi;
            m.P += wi * gi * yi;
            m.R += wi * yi * yi;
        }
    }
    return m;
}

static double iq2_err(const iq2_mom *m, double u) { return m->A * u * u - 2 * m->P * u + m->R; }

/* Magnitude the sub-block's largest value is mapped to, per trial. */
#define IQ2_NTRIAL 16
static const float k_trial_top[IQ2_NTRIAL] = {
    7.5f, 9.0f, 12.0f, 16.0f, 20.0f, 25.0f, 29.0f, 32.5f, 35.5f, 38.0f, 40.0f, 42.0f, 44.0f, 46.5f, 50.0f, 55.0f};

/* Continuous scale and patterns of one sub-block. */
static void iq2_fit_sub(const float *y, const float *w, uint8_t g4[4], iq2_mom *mom) {
    float ymax = 0.0f;
    for (int i = 0; i < 32; i++) ymax = ds4_maxf(y[i], ymax);
    memset(g4, 0, 4);
    *mom = iq2_moments(y, w, g4);
    if (!(ymax > 0.0f)) return;
    double best = DBL_MAX;
    uint8_t cand[4];
    /* trial scales: the largest magnitude lands anywhere from just below
     * the lowest level (flat sub-blocks are best served by the all-8
     * pattern) to well above the top one (clipping a lone outlier),
     * densest around the top level where gaussian-like data ends up */
    for (int t = 0; t < IQ2_NTRIAL; t++) {
        const float u = ymax / k_trial_top[t];
        for (int k = 0; k < 4; k++) cand[k] = (uint8_t)iq2_pick(y + 8 * k, w + 8 * k, u);
        iq2_mom m = iq2_moments(y, w, cand);
        if (!(m.A > 0)) continue;
        const double us = fmax(m.P / m.A, 0.0);
        const double e = iq2_err(&m, us);
        if (e < best) {
            best = e;
            memcpy(g4, cand, 4);
            *mom = m;
        }
    }
    for (int it = 0; it < 3; it++) {
        if (!(mom->A > 0) || !(mom->P > 0)) break;
        const float u = (float)(mom->P / mom->A);
        for (int k = 0; k < 4; k++) cand[k] = (uint8_t)iq2_pick(y + 8 * k, w + 8 * k, u);
        if (memcmp(cand, g4, 4) == 0) break;
        iq2_mom m = iq2_moments(y, w, cand);
        const double e = iq2_err(&m, fmax(m.P / m.A, 0.0));
        if (!(e < best)) break;
        best = e;
        memcpy(g4, cand, 4);
        *mom = m;
    }
}

/* u of code l under super-block scale d, computed as the decoder does. */
static float iq2_u(float d, int l) { return d * (0.5f + (float)l) * 0.25f; }

/* Best 4-bit code for a sub-block with moments m at super-block scale d:
 * the error is a parabola in u, so the code whose u is nearest the
 * parabola's minimum wins. */
static int iq2_code_for(const iq2_mom *m, float d) {
    if (!(d > 0.0f) || !(m->A > 0)) return 0;
    const double ustar = m->P / m->A;
    int l = (int)lrint((8.0 * ustar / d - 1.0) / 2.0);
    l = l < 0 ? 0 : l > 15 ? 15 : l;
    int best = l;
    double be = iq2_err(m, iq2_u(d, l));
    for (int c = l - 1; c <= l + 1; c += 2) {
        if (c < 0 || c > 15) continue;
        const double e = iq2_err(m, iq2_u(d, c));
        if (e < be) {
            be = e;
            best = c;
        }
    }
    return best;
}

/* Super-block scale (fp16 bits) and codes for fixed patterns. */
static uint16_t iq2_choose_d(const iq2_mom mom[8], uint8_t l8[8]) {
    double umax = 0.0;
    for (int ib = 0; ib < 8; ib++)
        if (mom[ib].A > 0) umax = fmax(umax, mom[ib].P / mom[ib].A);
    if (!(umax > 0.0)) {
        memset(l8, 0, 8);
        return 0;
    }
    static const double starts[] = {1.0, 0.96, 0.92, 0.88, 1.04};
    double best = DBL_MAX;
    uint16_t best_h = 0;
    for (size_t s = 0; s < sizeof starts / sizeof starts[0]; s++) {
        double d = 8.0 * umax / (31.0 * starts[s]);
        for (int it = 0; it < 4; it++) {
            const uint16_t h = ds4_f32_to_f16((float)d);
            const float dh = ds4_f16_to_f32(h);
            uint8_t l[8];
            double e = 0.0, num = 0.0, den = 0.0;
            for (int ib = 0; ib < 8; ib++) {
                l[ib] = (uint8_t)iq2_code_for(&mom[ib], dh);
                e += iq2_err(&mom[ib], iq2_u(dh, l[ib]));
                const double c = (2.0 * l[ib] + 1.0) / 8.0;
                num += mom[ib].P * c;
                den += mom[ib].A * c * c;
            }
            if (e < best) {
                best = e;
                best_h = h;
                memcpy(l8, l, 8);
            }
            if (!(den > 0) || !(num > 0)) break;
            const double nd = num / den;
            if (nd == d) break;
            d = nd;
        }
    }
    return best_h;
}

static void iq2_weights(const float *x, const float *imp, float *w) {
    double sx2 = 0.0;
    for (int i = 0; i < DS4_QK_K; i++) sx2 += (double)x[i] * x[i];
    const float sigma2 = (float)(sx2 / DS4_QK_K);
    for (int i = 0; i < DS4_QK_K; i++) {
        const float base = sqrtf(sigma2 + x[i] * x[i]);
        w[i] = imp ? imp[i] * base : base;
    }
    for (int ib = 0; ib < 8; ib++) {
        float sw = 0.0f;
        for (int i = 0; i < 32; i++) sw += w[32 * ib + i];
        if (!(sw > 0.0f) || !isfinite(sw))
            for (int i = 0; i < 32; i++) w[32 * ib + i] = 1.0f;
    }
}

static void iq2_pack(ds4_block_iq2_xxs *b, uint16_t d, const uint8_t g[32], const uint8_t sign7[32],
                     const uint8_t l8[8]) {
    b->d = d;
    for (int ib = 0; ib < 8; ib++) {
        uint32_t aux = (uint32_t)l8[ib] << 28;
        for (int k = 0; k < 4; k++) {
            b->qs[8 * ib + k] = g[4 * ib + k];
            aux |= (uint32_t)sign7[4 * ib + k] << (7 * k);
        }
        memcpy(b->qs + 8 * ib + 4, &aux, 4);
    }
}

static void iq2_quantize_block(const float *x, const float *imp, ds4_block_iq2_xxs *out) {
    float w[DS4_QK_K], y[DS4_QK_K], deq[DS4_QK_K];
    uint8_t sign7[32], g[32], l8[8];
    iq2_mom mom[8];
    iq2_weights(x, imp, w);

    for (int grp = 0; grp < 32; grp++) {
        const float *xg = x + 8 * grp;
        const float *wg = w + 8 * grp;
        uint8_t s = 0;
        int cheapest = 0;
        for (int t = 0; t < 8; t++) {
            y[8 * grp + t] = fabsf(xg[t]);
            if (xg[t] < 0.0f) s |= (uint8_t)(1u << t);
            if (wg[t] * xg[t] * xg[t] < wg[cheapest] * xg[cheapest] * xg[cheapest]) cheapest = t;
        }
        if (__builtin_popcount(s) & 1) {
            s ^= (uint8_t)(1u << cheapest);
            y[8 * grp + cheapest] = -y[8 * grp + cheapest];
        }
        sign7[grp] = s & 127; /* bit 7 is implied by parity */
    }

    for (int ib = 0; ib < 8; ib++) iq2_fit_sub(y + 32 * ib, w + 32 * ib, g + 4 * ib, &mom[ib]);

    ds4_block_iq2_xxs cur;
    double best = DBL_MAX;
    for (int round = 0; round < 3; round++) {
        const uint16_t dh = iq2_choose_d(mom, l8);
        const float d = ds4_f16_to_f32(dh);
        /* re-pick patterns for the scale each sub-block really gets, then
         * the codes for the new patterns */
        for (int ib = 0; ib < 8; ib++) {
            const float u = iq2_u(d, l8[ib]);
            for (int k = 0; k < 4; k++)
                g[4 * ib + k] = (uint8_t)iq2_pick(y + 32 * ib + 8 * k, w + 32 * ib + 8 * k, u);
            mom[ib] = iq2_moments(y + 32 * ib, w + 32 * ib, g + 4 * ib);
            l8[ib] = (uint8_t)iq2_code_for(&mom[ib], d);
        }
        iq2_pack(&cur, dh, g, sign7, l8);
        ds4_iq2_xxs_dequantize(&cur, deq, DS4_QK_K);
        double e = 0.0;
        for (int i = 0; i < DS4_QK_K; i++) {
            const double diff = (double)x[i] - deq[i];
            e += w[i] * diff * diff;
        }
        if (!(e < best)) break;
        best = e;
        *out = cur;
    }
}

void ds4_iq2_xxs_quantize(const float *src, void *dst, int64_t n, const float *imp) {
    pthread_once(&g_iq2_once, iq2_build);
    ds4_block_iq2_xxs *b = dst;
    for (int64_t i = 0; i < n / DS4_QK_K; i++)
        iq2_quantize_block(src + i * DS4_QK_K, imp ? imp + i * DS4_QK_K : NULL, b + i);
}

/* ======================================================================
 * Dot products against Q8_K activations
 *
 * sum = d * a * 1/8 * sum_ib (2 l_ib + 1) * sum_{k,t} grid * sign * y, all
 * of it integer except the final scaling. Bound: per group of 32,
 * |sum| <= 32*43*127; times 31 and 8 groups stays below 2^26.
 * ====================================================================== */

float ds4_iq2_xxs_dot_scalar(int64_t n, const void *w, const void *act) {
    const ds4_block_iq2_xxs *x = w;
    const ds4_block_q8_K *y = act;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / DS4_QK_K; i++) {
        int isum = 0;
        for (int ib = 0; ib < 8; ib++) {
            const uint32_t aux = ds4_iq2xxs_aux(&x[i], ib);
            int s = 0;
            for (int k = 0; k < 4; k++) {
                const uint8_t *g = ds4_iq2xxs_grid[x[i].qs[8 * ib + k]];
                const int8_t *a = y[i].qs + 32 * ib + 8 * k;
                const int8_t *pm = ds4_iq2_sign_pm1[(aux >> (7 * k)) & 127];
                for (int t = 0; t < 8; t++) s += g[t] * (pm[t] * a[t]);
            }
            isum += (int)(2 * (aux >> 28) + 1) * s;
        }
        sum += 0.125f * (ds4_q_half(x[i].d) * y[i].d) * (float)isum;
    }
    return sum;
}

#if DS4_QUANT_X86


/* Two 8-byte grid rows in one 128-bit register. */
DS4_TARGET_AVX2 static inline __m128i iq2_rows2(uint8_t g0, uint8_t g1) {
    const __m128i lo = _mm_loadl_epi64((const __m128i *)ds4_iq2xxs_grid[g0]);
    return _mm_castpd_si128(_mm_loadh_pd(_mm_castsi128_pd(lo), (const double *)ds4_iq2xxs_grid[g1]));
}

/* Two 8-byte sign rows (+-1 bytes) in one 128-bit register. */
DS4_TARGET_AVX2 static inline __m128i iq2_signs2(uint32_t i0, uint32_t i1) {
    const __m128i lo = _mm_loadl_epi64((const __m128i *)ds4_iq2_sign_pm1[i0]);
    return _mm_castpd_si128(_mm_loadh_pd(_mm_castsi128_pd(lo), (const double *)ds4_iq2_sign_pm1[i1]));
}

/* Per group of 32: the four 8-byte grid rows and the four +-1 sign rows
 * are loaded into registers, sign_epi8 moves the signs onto the
 * activations (never -128), and maddubs multiplies the unsigned
 * magnitudes (<= 43) by them: pair sums <= 2*43*127, no saturation. */
DS4_TARGET_AVX2 float ds4_iq2_xxs_dot_avx2(int64_t n, const void *w, const void *act) {
    const ds4_block_iq2_xxs *x = w;
    const ds4_block_q8_K *y = act;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / DS4_QK_K; i++) {
        __m256i sumi = _mm256_setzero_si256();
        for (int ib = 0; ib < 8; ib++) {
            const uint8_t *q = x[i].qs + 8 * ib;
            const uint32_t aux = ds4_iq2xxs_aux(&x[i], ib);
            const __m256i gv = _mm256_inserti128_si256(_mm256_castsi128_si256(iq2_rows2(q[0], q[1])), iq2_rows2(q[2], q[3]), 1);
            const __m256i sv = _mm256_inserti128_si256(
                _mm256_castsi128_si256(iq2_signs2(aux & 127, (aux >> 7) & 127)),
                iq2_signs2((aux >> 14) & 127, (aux >> 21) & 127), 1);
            const __m256i a = _mm256_loadu_si256((const __m256i *)(y[i].qs + 32 * ib));
            const __m256i p16 = _mm256_maddubs_epi16(gv, _mm256_sign_epi8(a, sv));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p16, _mm256_set1_epi16((short)(2 * (aux >> 28) + 1))));
        }
        const float s = 0.125f * (ds4_half_f16c(x[i].d) * y[i].d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(s), _mm256_cvtepi32_ps(sumi), acc);
    }
    return ds4_hsum256(acc);
}

/* ---- AVX-512 VBMI: a whole super-block decoded in registers ----
 *
 * The 64 bytes of a block's qs are eight qwords, one per group of 32: four
 * grid indices, then the sign/scale word. The block is processed in four
 * chunks of 64 values (groups 2c and 2c+1), each one zmm of bytes.
 *
 * Magnitudes: the 32 grid indices become 16-bit lanes, ordered so that
 * qword q of the result holds the entries q, 8+q, 16+q, 24+q (one per
 * chunk), and are looked up in the grid's 2-bit level codes
 * (ds4_iq2xxs_codes, 256 x 16 bits = eight zmm tables, four two-table word
 * permutes). Chunk c's value t of entry q is then level bits 16c+2t.. of
 * qword q: one multishift per chunk moves them into byte lanes, and a byte
 * permute maps level -> 8/25/43. Eight scattered 8-byte loads and seven
 * inserts per chunk become two shuffles.
 *
 * Signs: one multishift pulls the four 7-bit sign fields of every group
 * into bytes, popcnt adds the parity bit (even number of negatives per 8),
 * and per chunk a qword permute plus a bit shuffle turn the eight sign
 * bytes into the 64-bit mask that negates the activations.
 *
 * Scales: (aux >> 28) sits in bits 60..63 of each qword; >> 59 | 1 gives
 * 2l+1 in its low word, which a word permute spreads over the chunk's
 * lanes. */

/* Source byte of word lane w = 4q + c: grid index k = q & 3 of group
 * 2c + (q >> 2), at qs byte 16c + 8(q >> 2) + (q & 3). Odd bytes are
 * zeroed by the permute's mask. */
static const uint8_t k_iq2_idx_ctrl[64] __attribute__((aligned(64))) = {
    0, 0, 16, 0, 32, 0, 48, 0, 1, 0, 17, 0, 33, 0, 49, 0, 2, 0, 18, 0, 34, 0, 50, 0, 3, 0, 19, 0, 35, 0, 51, 0,
    8, 0, 24, 0, 40, 0, 56, 0, 9, 0, 25, 0, 41, 0, 57, 0, 10, 0, 26, 0, 42, 0, 58, 0, 11, 0, 27, 0, 43, 0, 59, 0};

/* Level (low two bits of the byte; the permute reads six) -> magnitude. */
static const uint8_t k_iq2_level_mag[64] __attribute__((aligned(64))) = {
    8, 25, 43, 0, 8, 25, 43, 0, 8, 25, 43, 0, 8, 25, 43, 0, 8, 25, 43, 0, 8, 25, 43, 0, 8, 25, 43, 0, 8, 25, 43, 0,
    8, 25, 43, 0, 8, 25, 43, 0, 8, 25, 43, 0, 8, 25, 43, 0, 8, 25, 43, 0, 8, 25, 43, 0, 8, 25, 43, 0, 8, 25, 43, 0};

typedef struct {
    __m512i codes[8]; /* grid level codes, entries 32j .. 32j+31 in codes[j] */
    __m512i idx_ctrl, level_mag;
} iq2_vbmi_tabs;

DS4_TARGET_AVX512 static inline __attribute__((always_inline)) void iq2_vbmi_init(iq2_vbmi_tabs *t) {
    for (int j = 0; j < 8; j++) t->codes[j] = _mm512_loadu_si512((const void *)(ds4_iq2xxs_codes + 32 * j));
    t->idx_ctrl = _mm512_load_si512((const void *)k_iq2_idx_ctrl);
    t->level_mag = _mm512_load_si512((const void *)k_iq2_level_mag);
}

/* One block's qs, decoded as far as the chunks share: the level codes, the
 * sign bytes and the scales (layouts above). */
typedef struct {
    __m512i codes, scales;
    uint64_t signs[4]; /* chunk c's 64-bit negation mask */
} iq2_vbmi_block;

DS4_TARGET_AVX512 static inline __attribute__((always_inline)) iq2_vbmi_block iq2_vbmi_block_decode(const iq2_vbmi_tabs *t,
                                                                                                     const uint8_t *qs) {
    const __m512i q = _mm512_loadu_si512((const void *)qs);
    const __m512i idx = _mm512_maskz_permutexvar_epi8(0x5555555555555555ull, t->idx_ctrl, q);
    /* 256-entry word lookup: four 64-entry permutes, chosen by bits 6, 7 */
    __m512i r0 = _mm512_permutex2var_epi16(t->codes[0], idx, t->codes[1]);
    __m512i r1 = _mm512_permutex2var_epi16(t->codes[2], idx, t->codes[3]);
    __m512i r2 = _mm512_permutex2var_epi16(t->codes[4], idx, t->codes[5]);
    __m512i r3 = _mm512_permutex2var_epi16(t->codes[6], idx, t->codes[7]);
    const __mmask32 b6 = _mm512_test_epi16_mask(idx, _mm512_set1_epi16(64));
    const __mmask32 b7 = _mm512_test_epi16_mask(idx, _mm512_set1_epi16(128));
    r0 = _mm512_mask_blend_epi16(b6, r0, r1);
    r2 = _mm512_mask_blend_epi16(b6, r2, r3);
    iq2_vbmi_block b;
    b.codes = _mm512_mask_blend_epi16(b7, r0, r2);
    /* sign fields at aux bits 7k: qword bits 32 + 7k */
    const __m512i s7 = _mm512_and_si512(_mm512_multishift_epi64_epi8(_mm512_set1_epi64(0x352e2720), q),
                                        _mm512_set1_epi8(0x7f));
    const __m512i par = _mm512_slli_epi16(_mm512_popcnt_epi8(s7), 7);
    const __m512i sb = _mm512_ternarylogic_epi32(s7, par, _mm512_set1_epi8((char)0x80), 0xf8); /* s7 | (par & 0x80) */
    /* The four sign bytes of each group are its qword's low dword; packed
     * together they are, in entry order, chunk c's mask bits in the c-th
     * 64-bit word (bit 8e + t = value t of the chunk's entry e). Through
     * memory they reach the mask registers by plain loads, off the vector
     * units. */
    _mm256_storeu_si256((__m256i *)b.signs, _mm512_cvtepi64_epi32(sb));
    b.scales = _mm512_or_si512(_mm512_srli_epi64(q, 59), _mm512_set1_epi64(1));
    return b;
}

/* Chunk c (values 64c .. 64c+63): magnitudes as bytes. */
DS4_TARGET_AVX512 static inline __attribute__((always_inline)) __m512i iq2_vbmi_mags(const iq2_vbmi_tabs *t, const iq2_vbmi_block *b,
                                                                                     int c) {
    const __m512i shift = _mm512_set1_epi64((long long)(0x0e0c0a0806040200ull + 0x1010101010101010ull * (uint64_t)c));
    return _mm512_permutexvar_epi8(_mm512_multishift_epi64_epi8(shift, b->codes), t->level_mag);
}

/* Chunk c: bit k set where value 64c + k is negative. */
DS4_TARGET_AVX512 static inline __attribute__((always_inline)) __mmask64 iq2_vbmi_signs(const iq2_vbmi_block *b, int c) {
    return _cvtu64_mask64(b->signs[c]);
}

/* Chunk c: 2l+1 of group 2c in word lanes 0..15, of group 2c+1 in 16..31
 * (the lanes dpwssd pairs with the maddubs sums). */
DS4_TARGET_AVX512 static inline __attribute__((always_inline)) __m512i iq2_vbmi_scales(const iq2_vbmi_block *b, int c) {
    const __m512i sel = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16((short)(8 * c))),
                                           _mm256_set1_epi16((short)(8 * c + 4)), 1);
    return _mm512_permutexvar_epi16(sel, b->scales);
}

/* AVX-512: two groups of 32 per register; the activations are negated
 * under the sign mask (AVX-512 has no byte sign instruction). The integer
 * lanes (four values each, times their group's 2l+1) are those of the
 * tile kernel below, which relies on it for bit-exact agreement. */
/* One block's integer lanes. */
DS4_TARGET_AVX512 static inline __attribute__((always_inline)) __m512i iq2_vbmi_block_dot(const iq2_vbmi_tabs *t,
                                                                                         const ds4_block_iq2_xxs *x,
                                                                                         const ds4_block_q8_K *y) {
    const iq2_vbmi_block b = iq2_vbmi_block_decode(t, x->qs);
    __m512i sumi = _mm512_setzero_si512();
    DS4_UNROLL
    for (int c = 0; c < 4; c++) {
        const __m512i a = _mm512_loadu_si512((const void *)(y->qs + 64 * c));
        const __m512i sa = _mm512_mask_sub_epi8(a, iq2_vbmi_signs(&b, c), _mm512_setzero_si512(), a);
        sumi = _mm512_dpwssd_epi32(sumi, _mm512_maddubs_epi16(iq2_vbmi_mags(t, &b, c), sa), iq2_vbmi_scales(&b, c));
    }
    return sumi;
}

DS4_TARGET_AVX512 float ds4_iq2_xxs_dot_avx512(int64_t n, const void *w, const void *act) {
    const ds4_block_iq2_xxs *x = w;
    const ds4_block_q8_K *y = act;
    iq2_vbmi_tabs t;
    iq2_vbmi_init(&t);
    __m512 acc = _mm512_setzero_ps();
    const int64_t nb = n / DS4_QK_K;
    int64_t i = 0;
    /* two blocks per step: their decodes are independent chains the core
     * can overlap; the float sums stay in block order */
    for (; i + 2 <= nb; i += 2) {
        const __m512i s0 = iq2_vbmi_block_dot(&t, x + i, y + i);
        const __m512i s1 = iq2_vbmi_block_dot(&t, x + i + 1, y + i + 1);
        const float d0 = 0.125f * (ds4_half_f16c(x[i].d) * y[i].d);
        const float d1 = 0.125f * (ds4_half_f16c(x[i + 1].d) * y[i + 1].d);
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d0), _mm512_cvtepi32_ps(s0), acc);
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d1), _mm512_cvtepi32_ps(s1), acc);
    }
    for (; i < nb; i++) {
        const __m512i s0 = iq2_vbmi_block_dot(&t, x + i, y + i);
        const float d0 = 0.125f * (ds4_half_f16c(x[i].d) * y[i].d);
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d0), _mm512_cvtepi32_ps(s0), acc);
    }
    return ds4_hsum512(acc);
}

#endif

#if DS4_QUANT_X86

/* ======================================================================
 * Tile kernel (AVX-512): many tokens against the same rows
 *
 * The per-row kernel spends most of its time rebuilding each group's
 * grid and sign rows; with several tokens per row that work is repeated
 * for every token. Here each row is decoded once into signed bytes
 * (grid * sign, |v| <= 43) and the tokens' activations are offset into
 * unsigned bytes (a + 128, 1..255), so maddubs(a + 128, v) then dpwssd with
 * the group's 2l+1 gives, per int32 lane, the same four-value sums as the
 * per-row kernel plus 128 * (2l+1) * sum(v), which is precomputed per row
 * and subtracted up front. The integer lanes are thus identical to
 * ds4_iq2_xxs_dot_avx512's, and the float steps (scale, fma into 16 lanes,
 * final hsum) are the same operations in the same order: the results agree
 * bit for bit.
 * Pair sums: 2 * 255 * 43 < 2^15, no saturation.
 * ====================================================================== */

typedef struct {
    _Alignas(64) int8_t v[DS4_QK_K];   /* grid * sign, element order */
    int16_t ls[4][32];                 /* per 64 values: 2l+1 of its two groups, per int16 lane */
    int32_t corr[16];                  /* -128 * sum over the block of (2l+1) * v, per lane */
    float d;                           /* super-block scale */
} iq2_tile_row;

DS4_TARGET_AVX512 static void iq2_tile_decode(const ds4_block_iq2_xxs *x, int64_t nb, iq2_tile_row *out) {
    const __m512i k128 = _mm512_set1_epi8((char)0x80);
    iq2_vbmi_tabs t;
    iq2_vbmi_init(&t);
    for (int64_t i = 0; i < nb; i++) {
        __m512i corr = _mm512_setzero_si512();
        const iq2_vbmi_block b = iq2_vbmi_block_decode(&t, x[i].qs);
        DS4_UNROLL
        for (int c = 0; c < 4; c++) {
            const __m512i g = iq2_vbmi_mags(&t, &b, c);
            const __m512i v = _mm512_mask_sub_epi8(g, iq2_vbmi_signs(&b, c), _mm512_setzero_si512(), g);
            const __m512i ls = iq2_vbmi_scales(&b, c);
            _mm512_store_si512((void *)(out[i].v + 64 * c), v);
            _mm512_store_si512((void *)out[i].ls[c], ls);
            corr = _mm512_dpwssd_epi32(corr, _mm512_maddubs_epi16(k128, v), ls);
        }
        _mm512_store_si512((void *)out[i].corr, _mm512_sub_epi32(_mm512_setzero_si512(), corr));
        out[i].d = ds4_half_f16c(x[i].d);
    }
}

/* Two decoded rows times four tokens. au[t]: token t's offset bytes; ya[t]:
 * its Q8_K blocks (for the scales). */
DS4_TARGET_AVX512 static inline __attribute__((always_inline)) void iq2_tile_2xT(const iq2_tile_row *w0, const iq2_tile_row *w1, const uint8_t *const au[4],
                                           const ds4_block_q8_K *const ya[4], int64_t nb, float out[2][4], const int T) {
    const iq2_tile_row *wr[2] = {w0, w1};
    __m512 acc[2][4];
    DS4_UNROLL
    for (int r = 0; r < 2; r++)
        DS4_UNROLL
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    const __m512 eighth = _mm512_set1_ps(0.125f);
    for (int64_t i = 0; i < nb; i++) {
        __m512i s[2][4];
        DS4_UNROLL
        for (int r = 0; r < 2; r++) {
            const __m512i c0 = _mm512_load_si512((const void *)wr[r][i].corr);
            DS4_UNROLL
            for (int t = 0; t < T; t++) s[r][t] = c0;
        }
        DS4_UNROLL
        for (int c = 0; c < 4; c++) {
            __m512i a[4];
            DS4_UNROLL
            for (int t = 0; t < T; t++) a[t] = _mm512_loadu_si512((const void *)(au[t] + DS4_QK_K * i + 64 * c));
            DS4_UNROLL
            for (int r = 0; r < 2; r++) {
                const __m512i v = _mm512_load_si512((const void *)(wr[r][i].v + 64 * c));
                const __m512i ls = _mm512_load_si512((const void *)wr[r][i].ls[c]);
                DS4_UNROLL
                for (int t = 0; t < T; t++) s[r][t] = _mm512_dpwssd_epi32(s[r][t], _mm512_maddubs_epi16(a[t], v), ls);
            }
        }
        DS4_UNROLL
        for (int r = 0; r < 2; r++) {
            const __m512 dw = _mm512_set1_ps(wr[r][i].d);
            DS4_UNROLL
            for (int t = 0; t < T; t++) {
                const __m512 sc = _mm512_mul_ps(eighth, _mm512_mul_ps(dw, _mm512_set1_ps(ya[t][i].d)));
                acc[r][t] = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(s[r][t]), acc[r][t]);
            }
        }
    }
    DS4_UNROLL
    for (int r = 0; r < 2; r++)
        DS4_UNROLL
        for (int t = 0; t < T; t++) out[r][t] = ds4_hsum512(acc[r][t]);
}

/* One instance per token count, so the loops unroll with constant bounds. */
DS4_TARGET_AVX512 static void iq2_tile_2x1(const iq2_tile_row *w0, const iq2_tile_row *w1, const uint8_t *const au[4], const ds4_block_q8_K *const ya[4], int64_t nb, float out[2][4]) {
    iq2_tile_2xT(w0, w1, au, ya, nb, out, 1);
}
DS4_TARGET_AVX512 static void iq2_tile_2x2(const iq2_tile_row *w0, const iq2_tile_row *w1, const uint8_t *const au[4], const ds4_block_q8_K *const ya[4], int64_t nb, float out[2][4]) {
    iq2_tile_2xT(w0, w1, au, ya, nb, out, 2);
}
DS4_TARGET_AVX512 static void iq2_tile_2x3(const iq2_tile_row *w0, const iq2_tile_row *w1, const uint8_t *const au[4], const ds4_block_q8_K *const ya[4], int64_t nb, float out[2][4]) {
    iq2_tile_2xT(w0, w1, au, ya, nb, out, 3);
}
DS4_TARGET_AVX512 static void iq2_tile_2x4(const iq2_tile_row *w0, const iq2_tile_row *w1, const uint8_t *const au[4], const ds4_block_q8_K *const ya[4], int64_t nb, float out[2][4]) {
    iq2_tile_2xT(w0, w1, au, ya, nb, out, 4);
}

DS4_TARGET_AVX512 void ds4_iq2_xxs_tile_avx512(int64_t n, const void *w, size_t w_stride, uint32_t n_rows,
                                               const void *act, size_t act_stride, uint32_t n_tok, float *y,
                                               size_t y_stride, void *scratch) {
    if (n_tok == 1) {
        /* one token: decoding the row first would not pay */
        for (uint32_t r = 0; r < n_rows; r++) y[r] = ds4_iq2_xxs_dot_avx512(n, (const uint8_t *)w + r * w_stride, act);
        return;
    }
    const int64_t nb = n / DS4_QK_K;
    /* tokens' activations as unsigned bytes, then two decoded rows */
    uint8_t *au = scratch;
    iq2_tile_row *dec = (iq2_tile_row *)(au + (((size_t)n_tok * (size_t)n + 63) & ~(size_t)63));
    const __m512i k128 = _mm512_set1_epi8((char)0x80);
    for (uint32_t t = 0; t < n_tok; t++) {
        const ds4_block_q8_K *ya = (const ds4_block_q8_K *)((const uint8_t *)act + t * act_stride);
        for (int64_t i = 0; i < nb; i++)
            for (int c = 0; c < 4; c++)
                _mm512_storeu_si512((void *)(au + (size_t)t * n + DS4_QK_K * i + 64 * c),
                                    _mm512_xor_si512(_mm512_loadu_si512((const void *)(ya[i].qs + 64 * c)), k128));
    }
    for (uint32_t r0 = 0; r0 < n_rows; r0 += 2) {
        const uint32_t nr = n_rows - r0 < 2 ? n_rows - r0 : 2;
        for (uint32_t r = 0; r < nr; r++)
            iq2_tile_decode((const ds4_block_iq2_xxs *)((const uint8_t *)w + (r0 + r) * w_stride), nb, dec + r * nb);
        /* a lone last row is paired with itself; a short last group of
         * tokens takes the kernel for its count */
        const iq2_tile_row *w1 = dec + (nr - 1) * nb;
        for (uint32_t t0 = 0; t0 < n_tok; t0 += 4) {
            const uint32_t nt = n_tok - t0 < 4 ? n_tok - t0 : 4;
            const uint8_t *au4[4];
            const ds4_block_q8_K *ya4[4];
            for (uint32_t t = 0; t < 4; t++) {
                const uint32_t tt = t0 + (t < nt ? t : 0);
                au4[t] = au + (size_t)tt * n;
                ya4[t] = (const ds4_block_q8_K *)((const uint8_t *)act + tt * act_stride);
            }
            float out[2][4];
            switch (nt) {
            case 1: iq2_tile_2x1(dec, w1, au4, ya4, nb, out); break;
            case 2: iq2_tile_2x2(dec, w1, au4, ya4, nb, out); break;
            case 3: iq2_tile_2x3(dec, w1, au4, ya4, nb, out); break;
            default: iq2_tile_2x4(dec, w1, au4, ya4, nb, out); break;
            }
            for (uint32_t r = 0; r < nr; r++)
                for (uint32_t t = 0; t < nt; t++) y[(t0 + t) * y_stride + r0 + r] = out[r][t];
        }
    }
}

#endif
