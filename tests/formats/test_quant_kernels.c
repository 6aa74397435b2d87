/* Dot kernels and quantizers, independent of ggml:
 *  - every SIMD kernel against its scalar reference and against the exact
 *    (double) dot product of the dequantized operands, on random and edge
 *    case rows of many lengths;
 *  - dot(quantized w, quantized x) against dot(dequantized w, x): the gap
 *    must be explained by the activation's rounding;
 *  - quantize -> dequantize error bounds for every type.
 * DS4_QUANT_BENCH=1 also prints single-thread kernel throughput.
 *
 * Tolerance. In the quantized kernels every block's inner product is an
 * exact integer (in every variant), so variants differ only in how the
 * per-block float terms are scaled and summed. If M is the sum of the
 * magnitudes of everything the kernel adds (sum |w_i a_i|, or for K-quants
 * the scale and min parts separately), each ordering is within about
 * k*2^-24*M of the exact value, where k is the number of float operations on
 * the longest path: at most a few hundred here, and the errors of random
 * terms mostly cancel (growth ~sqrt(k)). 1e-5*M is therefore far above
 * rounding noise (observed ~1e-7*M), yet below the contribution of a single
 * wrong value in a row of up to ~16k values with random signs (~M/n), so an
 * indexing or scale bug cannot hide under it. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../harness.h"
#include "formats/quant.h"
#include "formats/quant/blocks.h"

#define TOL 1e-5

/* ---------------------------------------------------------------- rng */

static uint64_t g_rng = 0x243F6A8885A308D3ull;
static uint64_t rnd(void) {
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double unif(void) { return (double)(rnd() >> 11) * (1.0 / 9007199254740992.0); }
static float gauss(void) {
    double u1 = unif(), u2 = unif();
    if (u1 < 1e-300) u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
static void fill_gauss(float *x, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) x[i] = scale * gauss();
}
static void fill_bytes(void *p, size_t n) {
    uint8_t *b = p;
    for (size_t i = 0; i < n; i++) b[i] = (uint8_t)rnd();
}
/* fp16 with a moderate exponent (2^-10 .. 2^0), positive */
static uint16_t rnd_half(void) { return (uint16_t)(((5 + rnd() % 11) << 10) | (rnd() & 1023)); }

/* ---------------------------------------------------------------- types */

static const uint32_t k_quant_types[] = {GGML_TYPE_Q8_0, GGML_TYPE_Q2_K, GGML_TYPE_Q4_K, GGML_TYPE_IQ2_XXS,
                                         GGML_TYPE_MXFP4};
static const uint32_t k_float_types[] = {GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_BF16};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static const ds4_quant_traits *tr(uint32_t type) { return ds4_quant_traits_get(type); }

/* Random weight row with every field random but scales kept moderate. */
static void random_weight_blocks(uint32_t type, void *row, int64_t n) {
    const ds4_quant_traits *t = tr(type);
    const int64_t nb = n / t->block_elems;
    fill_bytes(row, (size_t)nb * t->block_bytes);
    for (int64_t i = 0; i < nb; i++) {
        uint8_t *b = (uint8_t *)row + i * t->block_bytes;
        switch (type) {
        case GGML_TYPE_Q8_0: ((ds4_block_q8_0 *)b)->d = rnd_half(); break;
        case GGML_TYPE_Q2_K: ((ds4_block_q2_K *)b)->d = rnd_half(); ((ds4_block_q2_K *)b)->dmin = rnd_half(); break;
        case GGML_TYPE_Q4_K: ((ds4_block_q4_K *)b)->d = rnd_half(); ((ds4_block_q4_K *)b)->dmin = rnd_half(); break;
        case GGML_TYPE_IQ2_XXS: ((ds4_block_iq2_xxs *)b)->d = rnd_half(); break;
        case GGML_TYPE_MXFP4: ((ds4_block_mxfp4 *)b)->e = (uint8_t)(110 + rnd() % 31); break;
        default: break;
        }
    }
}

/* The largest scales each format can hold, all codes at their maximum. */
static void max_weight_blocks(uint32_t type, void *row, int64_t n) {
    const ds4_quant_traits *t = tr(type);
    const int64_t nb = n / t->block_elems;
    for (int64_t i = 0; i < nb; i++) {
        uint8_t *b = (uint8_t *)row + i * t->block_bytes;
        switch (type) {
        case GGML_TYPE_Q8_0: {
            ds4_block_q8_0 *q = (void *)b;
            q->d = 0x7bff;
            for (int j = 0; j < 32; j++) q->qs[j] = (int8_t)(j & 1 ? 127 : -128);
            break;
        }
        case GGML_TYPE_Q2_K: {
            ds4_block_q2_K *q = (void *)b;
            q->d = q->dmin = 0x7bff;
            memset(q->scales, 0xff, sizeof q->scales);
            memset(q->qs, 0xff, sizeof q->qs);
            break;
        }
        case GGML_TYPE_Q4_K: {
            ds4_block_q4_K *q = (void *)b;
            q->d = q->dmin = 0x7bff;
            memset(q->scales, 0xff, sizeof q->scales);
            memset(q->qs, 0xff, sizeof q->qs);
            break;
        }
        case GGML_TYPE_IQ2_XXS: {
            ds4_block_iq2_xxs *q = (void *)b;
            q->d = 0x7bff;
            fill_bytes(q->qs, sizeof q->qs);
            for (int ib = 0; ib < 8; ib++) q->qs[8 * ib + 7] |= 0xf0; /* scale 15 */
            break;
        }
        case GGML_TYPE_MXFP4: {
            ds4_block_mxfp4 *q = (void *)b;
            q->e = 200; /* 2^73 per unit: large but the row sum stays finite */
            memset(q->qs, 0x77, sizeof q->qs); /* +6 everywhere */
            break;
        }
        default: break;
        }
    }
}

/* Random activation row in the format the weight type wants, with every
 * code in [-127, 127]. */
static void random_act_blocks(uint32_t wtype, void *act, int64_t n) {
    const uint32_t at = ds4_act_type(wtype);
    if (at == GGML_TYPE_Q8_0) {
        ds4_block_q8_0 *b = act;
        for (int64_t i = 0; i < n / 32; i++) {
            b[i].d = rnd_half();
            for (int j = 0; j < 32; j++) b[i].qs[j] = (int8_t)((int)(rnd() % 255) - 127);
        }
    } else {
        ds4_block_q8_K *b = act;
        for (int64_t i = 0; i < n / 256; i++) {
            b[i].d = (float)(unif() * 0.1 + 1e-3);
            for (int k = 0; k < 16; k++) {
                int s = 0;
                for (int l = 0; l < 16; l++) {
                    b[i].qs[16 * k + l] = (int8_t)((int)(rnd() % 255) - 127);
                    s += b[i].qs[16 * k + l];
                }
                b[i].bsums[k] = (int16_t)s;
            }
        }
    }
}

static void max_act_blocks(uint32_t wtype, void *act, int64_t n) {
    const uint32_t at = ds4_act_type(wtype);
    if (at == GGML_TYPE_Q8_0) {
        ds4_block_q8_0 *b = act;
        for (int64_t i = 0; i < n / 32; i++) {
            b[i].d = 0x3c00; /* 1.0 */
            for (int j = 0; j < 32; j++) b[i].qs[j] = (int8_t)(j & 2 ? 127 : -127);
        }
    } else {
        ds4_block_q8_K *b = act;
        for (int64_t i = 0; i < n / 256; i++) {
            b[i].d = 1e-3f;
            for (int j = 0; j < 256; j++) b[i].qs[j] = (int8_t)(j & 2 ? 127 : -127);
            for (int k = 0; k < 16; k++) b[i].bsums[k] = 0;
        }
    }
}

/* ------------------------------------------------------ exact reference */

/* Dequantized activation row. */
static void act_values(uint32_t wtype, const void *act, float *a, int64_t n) {
    ds4_dequantize_row(ds4_act_type(wtype), act, a, n);
}

/* Exact dot of the dequantized rows, and M: the sum of magnitudes of what
 * the kernel adds (see the tolerance note at the top). */
static double exact_dot(uint32_t type, int64_t n, const void *w, const void *act, double *mag) {
    float *wv = malloc(sizeof(float) * n), *av = malloc(sizeof(float) * n);
    ds4_dequantize_row(type, w, wv, n);
    if (tr(type)->act_type == GGML_TYPE_F32)
        memcpy(av, act, sizeof(float) * n);
    else
        act_values(type, act, av, n);
    double s = 0.0, m = 0.0;
    for (int64_t i = 0; i < n; i++) {
        s += (double)wv[i] * av[i];
        m += fabs((double)wv[i] * av[i]);
    }
    if (type == GGML_TYPE_Q2_K || type == GGML_TYPE_Q4_K) {
        /* the scale part and the min part are summed separately */
        m = 0.0;
        for (int64_t i = 0; i < n; i++) {
            const int64_t blk = i / 256;
            const int e = (int)(i % 256);
            double sp, mp;
            if (type == GGML_TYPE_Q2_K) {
                const ds4_block_q2_K *b = (const ds4_block_q2_K *)w + blk;
                sp = ds4_q_half(b->d) * (b->scales[e / 16] & 15) * ds4_q2k_q(b->qs, e);
                mp = ds4_q_half(b->dmin) * (b->scales[e / 16] >> 4);
            } else {
                const ds4_block_q4_K *b = (const ds4_block_q4_K *)w + blk;
                uint8_t sc, mm;
                ds4_q4k_scale_min(b->scales, e / 32, &sc, &mm);
                sp = ds4_q_half(b->d) * sc * ds4_q4k_q(b->qs, e);
                mp = ds4_q_half(b->dmin) * mm;
            }
            m += (fabs(sp) + fabs(mp)) * fabs((double)av[i]);
        }
    }
    free(wv);
    free(av);
    *mag = m;
    return s;
}

/* ------------------------------------------------------ kernel checks */

static double g_worst_rel[DS4_SIMD_COUNT];

/* All variants of the kernel for `type` on one (w, act) pair. */
static void check_dot_variants(uint32_t type, int64_t n, const void *w, const void *act, const char *what) {
    const ds4_quant_traits *t = tr(type);
    double mag;
    const double exact = exact_dot(type, n, w, act, &mag);
    const float ref = t->vec_dot[DS4_SIMD_SCALAR](n, w, act);
    CHECKF(fabs(ref - exact) <= TOL * mag, "%s %s n=%lld scalar: %.9g exact %.9g (M %.3g)", t->name, what,
           (long long)n, ref, exact, mag);
    if (t->act_type == GGML_TYPE_F32) {
        const float r2 = t->dot_f32[DS4_SIMD_SCALAR](n, w, act);
        CHECK(memcmp(&r2, &ref, 4) == 0);
    }
    for (int l = 1; l < DS4_SIMD_COUNT; l++) {
        if (!ds4_simd_available((ds4_simd)l) || !t->vec_dot[l]) continue;
        const float got = t->vec_dot[l](n, w, act);
        CHECKF(fabs(got - ref) <= TOL * mag && fabs(got - exact) <= TOL * mag,
               "%s %s n=%lld %s: %.9g scalar %.9g exact %.9g (M %.3g)", t->name, what, (long long)n,
               ds4_simd_name((ds4_simd)l), got, ref, exact, mag);
        if (mag > 0) {
            const double rel = fabs(got - ref) / mag;
            if (rel > g_worst_rel[l]) g_worst_rel[l] = rel;
        } else {
            CHECKF(got == 0.0f, "%s %s: zero row gave %g", t->name, what, got);
        }
        if (t->act_type == GGML_TYPE_F32) {
            const float g2 = t->dot_f32[l](n, w, act);
            CHECK(memcmp(&g2, &got, 4) == 0);
        }
    }
}

/* Row lengths (in blocks, or in values for the float types) covering one
 * block, the SIMD unroll boundaries and their tails, and long rows. */
static const int k_quant_blocks[] = {1, 2, 3, 4, 5, 7, 8, 9, 17, 33};
static const int k_float_lens[] = {1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129, 1000, 4096};

static void test_quant_kernels(uint32_t type) {
    const ds4_quant_traits *t = tr(type);
    int64_t lens[COUNT(k_quant_blocks) + 1], nmax = 4096;
    size_t nl = 0;
    for (size_t i = 0; i < COUNT(k_quant_blocks); i++) {
        lens[nl] = (int64_t)k_quant_blocks[i] * t->block_elems;
        if (lens[nl] > nmax) nmax = lens[nl];
        nl++;
    }
    lens[nl++] = 4096; /* a model-sized row */
    void *w = malloc(ds4_quant_row_bytes(type, nmax));
    void *act = malloc(ds4_act_row_bytes(type, nmax));
    float *x = malloc(sizeof(float) * nmax);

    for (size_t li = 0; li < nl; li++) {
        const int64_t n = lens[li];
        for (int rep = 0; rep < 3; rep++) {
            /* quantized gaussian weights, quantized gaussian activations */
            fill_gauss(x, n, 0.02f);
            ds4_quantize_row(type, x, w, n, NULL);
            fill_gauss(x, n, 1.0f);
            ds4_quantize_act(type, x, act, n);
            check_dot_variants(type, n, w, act, "gauss");
            /* every field random */
            random_weight_blocks(type, w, n);
            random_act_blocks(type, act, n);
            check_dot_variants(type, n, w, act, "random");
        }
        /* all-zero weights, then all-zero activations */
        memset(w, 0, ds4_quant_row_bytes(type, n));
        random_act_blocks(type, act, n);
        check_dot_variants(type, n, w, act, "zero-w");
        random_weight_blocks(type, w, n);
        memset(x, 0, sizeof(float) * n);
        ds4_quantize_act(type, x, act, n);
        check_dot_variants(type, n, w, act, "zero-act");
        /* extreme scales and codes */
        max_weight_blocks(type, w, n);
        max_act_blocks(type, act, n);
        check_dot_variants(type, n, w, act, "max");
        random_act_blocks(type, act, n);
        check_dot_variants(type, n, w, act, "max-w");
    }
    free(w);
    free(act);
    free(x);
}

static void test_float_kernels(uint32_t type) {
    const int64_t nmax = 4096;
    void *w = malloc(ds4_quant_row_bytes(type, nmax));
    float *x = malloc(sizeof(float) * nmax), *v = malloc(sizeof(float) * nmax);
    for (size_t li = 0; li < COUNT(k_float_lens); li++) {
        const int64_t n = k_float_lens[li];
        for (int rep = 0; rep < 3; rep++) {
            fill_gauss(v, n, 0.05f);
            ds4_quantize_row(type, v, w, n, NULL);
            fill_gauss(x, n, 1.0f);
            check_dot_variants(type, n, w, x, "gauss");
        }
        memset(w, 0, ds4_quant_row_bytes(type, n));
        check_dot_variants(type, n, w, x, "zero-w");
        /* largest finite values of the format, unit activations of mixed sign */
        for (int64_t i = 0; i < n; i++) v[i] = (i & 1 ? -1.0f : 1.0f) * (type == GGML_TYPE_F16 ? 65504.0f : 1e30f);
        ds4_quantize_row(type, v, w, n, NULL);
        for (int64_t i = 0; i < n; i++) x[i] = (float)(1 + (i % 3));
        check_dot_variants(type, n, w, x, "max");
    }
    free(w);
    free(x);
    free(v);
}

/* ---------------------------------------- dot vs unquantized activation */

/* |dot(w, q(x)) - dot(w, x)| <= sum_i |w_i| |x_i - q(x)_i|, and the
 * activation formats round each value to within half a step of its block
 * (Q8_0: the stored fp16 scale; Q8_K: the f32 scale, up to one ulp of
 * slack in x*127/amax). */
static void test_activation_error(uint32_t type) {
    const ds4_quant_traits *t = tr(type);
    const int64_t n = 4096;
    void *w = malloc(ds4_quant_row_bytes(type, n));
    void *act = malloc(ds4_act_row_bytes(type, n));
    float *x = malloc(sizeof(float) * n), *wv = malloc(sizeof(float) * n), *av = malloc(sizeof(float) * n);
    for (int rep = 0; rep < 8; rep++) {
        fill_gauss(x, n, 0.02f);
        ds4_quantize_row(type, x, w, n, NULL);
        ds4_dequantize_row(type, w, wv, n);
        fill_gauss(x, n, rep & 1 ? 1.0f : 30.0f);
        if (rep == 3) x[17] = 1e4f; /* one outlier coarsens its block */
        ds4_quantize_act(type, x, act, n);
        act_values(type, act, av, n);
        double want = 0.0, bound = 0.0, mag = 0.0;
        for (int64_t i = 0; i < n; i++) {
            want += (double)wv[i] * x[i];
            mag += fabs((double)wv[i] * x[i]);
        }
        const int64_t ab = t->act_type == GGML_TYPE_Q8_0 ? 32 : 256;
        for (int64_t b = 0; b < n / ab; b++) {
            const double step = t->act_type == GGML_TYPE_Q8_0 ? ds4_q_half(((ds4_block_q8_0 *)act)[b].d)
                                                                : ((ds4_block_q8_K *)act)[b].d;
            double wsum = 0.0;
            for (int64_t i = b * ab; i < (b + 1) * ab; i++) {
                wsum += fabs(wv[i]);
                /* per-value rounding bound itself */
                CHECKF(fabs(x[i] - av[i]) <= 0.5 * step * (1 + 1e-6), "%s act value %lld: %g vs %g (step %g)",
                       t->name, (long long)i, x[i], av[i], step);
            }
            bound += 0.5 * step * (1 + 1e-6) * wsum;
        }
        for (int l = 0; l < DS4_SIMD_COUNT; l++) {
            if (!ds4_simd_available((ds4_simd)l)) continue;
            const float got = t->vec_dot[l](n, w, act);
            CHECKF(fabs(got - want) <= bound + TOL * mag, "%s %s: dot %.6g vs float-act %.6g, bound %.3g",
                   t->name, ds4_simd_name((ds4_simd)l), got, want, bound);
        }
    }
    free(w);
    free(act);
    free(x);
    free(wv);
    free(av);
}

/* ----------------------------------------------- quantize round trips */

/* Relative RMS error on N(0, s^2) rows of 4096, with and without an
 * importance vector. Limits sit just above what the quantizers reach on
 * gaussian data (ggml's reach is in quant_rmse.txt; see the golden test). */
static void test_round_trip_rmse(void) {
    static const struct {
        uint32_t type;
        double limit;
    } lim[] = {
        {GGML_TYPE_F32, 0.0},     {GGML_TYPE_F16, 3e-4},     {GGML_TYPE_BF16, 2.5e-3}, {GGML_TYPE_Q8_0, 0.0058},
        {GGML_TYPE_Q4_K, 0.074},  {GGML_TYPE_Q2_K, 0.28},    {GGML_TYPE_IQ2_XXS, 0.35}, {GGML_TYPE_MXFP4, 0.117},
    };
    const int64_t n = 4096;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n), *imp = malloc(sizeof(float) * n);
    void *q = malloc(ds4_quant_row_bytes(GGML_TYPE_F32, n));
    for (size_t k = 0; k < COUNT(lim); k++) {
        for (int use_imp = 0; use_imp < 2; use_imp++) {
            double se = 0, sx = 0;
            for (int rep = 0; rep < 4; rep++) {
                const float s = rep == 2 ? 1e-3f : 1.0f;
                fill_gauss(x, n, s);
                for (int64_t i = 0; i < n; i++) imp[i] = 0.5f + (float)unif();
                ds4_quantize_row(lim[k].type, x, q, n, use_imp ? imp : NULL);
                ds4_dequantize_row(lim[k].type, q, y, n);
                for (int64_t i = 0; i < n; i++) {
                    se += ((double)x[i] - y[i]) * ((double)x[i] - y[i]) / ((double)s * s);
                    sx += (double)x[i] * x[i] / ((double)s * s);
                }
            }
            const double rel = sqrt(se / sx);
            fprintf(stderr, "round trip %-8s %s: relative rmse %.5f (limit %.5f)\n", tr(lim[k].type)->name,
                    use_imp ? "importance" : "none      ", rel, lim[k].limit);
            CHECKF(rel <= lim[k].limit, "%s: relative rmse %.5f > %.5f", tr(lim[k].type)->name, rel, lim[k].limit);
        }
    }
    free(x);
    free(y);
    free(imp);
    free(q);
}

/* Exact or per-value guarantees and degenerate inputs. */
static void test_round_trip_edges(void) {
    const int64_t n = 512;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n), *imp = malloc(sizeof(float) * n);
    void *q = malloc(ds4_quant_row_bytes(GGML_TYPE_F32, n));
    const uint32_t all[] = {GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_BF16, GGML_TYPE_Q8_0, GGML_TYPE_Q2_K,
                            GGML_TYPE_Q4_K, GGML_TYPE_IQ2_XXS, GGML_TYPE_MXFP4, GGML_TYPE_Q8_K};
    for (size_t k = 0; k < COUNT(all); k++) {
        const char *name = tr(all[k])->name;
        /* zeros stay zeros */
        memset(x, 0, sizeof(float) * n);
        ds4_quantize_row(all[k], x, q, n, NULL);
        ds4_dequantize_row(all[k], q, y, n);
        bool ok = true;
        for (int64_t i = 0; i < n; i++) ok &= y[i] == 0.0f;
        CHECKF(ok, "%s: zero row does not round-trip", name);
        /* a zero sub-range next to data, a spike, tiny and huge magnitudes,
         * zero importance: outputs stay finite */
        const float scales[] = {1e-30f, 1e-6f, 1.0f, 1e4f};
        for (size_t s = 0; s < COUNT(scales); s++) {
            if (all[k] == GGML_TYPE_F16 && scales[s] > 1e3f) continue; /* beyond fp16 range */
            fill_gauss(x, n, scales[s]);
            for (int i = 0; i < 64; i++) x[i] = 0.0f;
            x[300] = 50.0f * scales[s];
            for (int64_t i = 0; i < n; i++) imp[i] = i < 128 ? 0.0f : 1.0f;
            for (int ui = 0; ui < 2; ui++) {
                ds4_quantize_row(all[k], x, q, n, ui ? imp : NULL);
                ds4_dequantize_row(all[k], q, y, n);
                ok = true;
                for (int64_t i = 0; i < n; i++) ok &= isfinite(y[i]);
                CHECKF(ok, "%s: non-finite output at scale %g", name, scales[s]);
            }
        }
        /* a constant negative block is reproduced closely (min-only for
         * K-quants, the all-8 pattern for IQ2_XXS) */
        for (int64_t i = 0; i < n; i++) x[i] = -0.75f;
        ds4_quantize_row(all[k], x, q, n, NULL);
        ds4_dequantize_row(all[k], q, y, n);
        double worst = 0;
        for (int64_t i = 0; i < n; i++) worst = fmax(worst, fabs(y[i] - x[i]));
        CHECKF(worst <= 1e-3, "%s: constant block error %g", name, worst);
    }

    /* Q8_0: every value within half a step of the stored scale; values on
     * the grid come back exactly */
    fill_gauss(x, n, 1.0f);
    ds4_quantize_row(GGML_TYPE_Q8_0, x, q, n, NULL);
    ds4_dequantize_row(GGML_TYPE_Q8_0, q, y, n);
    for (int64_t i = 0; i < n; i++) {
        const double step = ds4_q_half(((ds4_block_q8_0 *)q)[i / 32].d);
        CHECKF(fabs(x[i] - y[i]) <= 0.5 * step, "Q8_0 value %lld: %g -> %g (step %g)", (long long)i, x[i], y[i], step);
    }
    for (int64_t i = 0; i < n; i++) x[i] = (float)((int)(rnd() % 255) - 127) / 16.0f;
    for (int64_t b = 0; b < n / 32; b++) x[b * 32] = 127.0f / 16.0f; /* step exactly 1/16 */
    ds4_quantize_row(GGML_TYPE_Q8_0, x, q, n, NULL);
    ds4_dequantize_row(GGML_TYPE_Q8_0, q, y, n);
    CHECK(memcmp(x, y, sizeof(float) * n) == 0);

    /* MXFP4: values that are E2M1 numbers times a common power of two come
     * back exactly */
    static const float e2m1[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
    for (int64_t i = 0; i < n; i++) x[i] = (rnd() & 1 ? -1.0f : 1.0f) * e2m1[rnd() % 8] * 0.125f;
    for (int64_t b = 0; b < n / 32; b++) x[b * 32] = 6.0f * 0.125f;
    ds4_quantize_row(GGML_TYPE_MXFP4, x, q, n, NULL);
    ds4_dequantize_row(GGML_TYPE_MXFP4, q, y, n);
    bool same = true;
    for (int64_t i = 0; i < n; i++) same &= x[i] == y[i];
    CHECKF(same, "MXFP4: exactly representable values changed");

    /* F16/BF16: relative error within half an ulp of the format */
    fill_gauss(x, n, 1.0f);
    ds4_quantize_row(GGML_TYPE_F16, x, q, n, NULL);
    ds4_dequantize_row(GGML_TYPE_F16, q, y, n);
    for (int64_t i = 0; i < n; i++)
        if (fabsf(x[i]) > 6.2e-5f) CHECK(fabs(x[i] - y[i]) <= ldexp(fabs(x[i]), -11));
    ds4_quantize_row(GGML_TYPE_BF16, x, q, n, NULL);
    ds4_dequantize_row(GGML_TYPE_BF16, q, y, n);
    for (int64_t i = 0; i < n; i++) CHECK(fabs(x[i] - y[i]) <= ldexp(fabs(x[i]), -8));

    free(x);
    free(y);
    free(imp);
    free(q);
}

/* Q8_K activation layout: bsums are the sums they claim to be, codes stay
 * in [-127, 127]. */
static void test_q8k_layout(void) {
    const int64_t n = 1024;
    float *x = malloc(sizeof(float) * n);
    ds4_block_q8_K *b = malloc(ds4_quant_row_bytes(GGML_TYPE_Q8_K, n));
    fill_gauss(x, n, 3.0f);
    x[5] = -100.0f;
    ds4_quantize_row(GGML_TYPE_Q8_K, x, b, n, NULL);
    for (int64_t i = 0; i < n / 256; i++)
        for (int k = 0; k < 16; k++) {
            int s = 0;
            for (int l = 0; l < 16; l++) {
                s += b[i].qs[16 * k + l];
                CHECK(b[i].qs[16 * k + l] >= -127);
            }
            CHECK(s == b[i].bsums[k]);
        }
    free(x);
    free(b);
}

/* The Q4_K scale packing: word-wise unpacking (kernels) agrees with the
 * per-sub-block accessor, and packing inverts it. */
static void test_q4k_scale_packing(void) {
    for (int rep = 0; rep < 1000; rep++) {
        uint8_t sc12[12], sc[8], m[8], again[12];
        fill_bytes(sc12, sizeof sc12);
        uint32_t wsc[2], wm[2];
        ds4_q4k_unpack_scales(sc12, wsc, wm);
        for (int j = 0; j < 8; j++) {
            ds4_q4k_scale_min(sc12, j, &sc[j], &m[j]);
            CHECK(sc[j] == ((wsc[j / 4] >> (8 * (j % 4))) & 0xff));
            CHECK(m[j] == ((wm[j / 4] >> (8 * (j % 4))) & 0xff));
        }
        ds4_q4k_pack_scales(again, sc, m);
        CHECK(memcmp(again, sc12, 12) == 0);
    }
}

/* MXFP4_NATIVE rows: the native dot equals the block dot of the repacked
 * row (same integer sums, same float operations). */
static void test_mxfp4_native(void) {
    const int64_t rows = 5, cols = 384;
    const int64_t nb = rows * cols / 32;
    ds4_block_mxfp4 *blocks = malloc(sizeof *blocks * nb), *back = malloc(sizeof *back * nb);
    uint64_t db, sb;
    ds4_mxfp4_native_plane_bytes(rows, cols, &db, &sb);
    CHECK(db == (uint64_t)rows * cols / 2 && sb == (uint64_t)rows * cols / 32);
    uint8_t *data = malloc(db), *scale = malloc(sb);
    void *act = malloc(ds4_act_row_bytes(GGML_TYPE_MXFP4, cols));
    random_weight_blocks(GGML_TYPE_MXFP4, blocks, rows * cols);
    random_act_blocks(GGML_TYPE_MXFP4, act, cols);
    ds4_mxfp4_blocks_to_native(blocks, rows, cols, data, scale);
    /* sequential pairs: value 2j in the low nibble of byte j */
    float *a = malloc(sizeof(float) * cols), *b = malloc(sizeof(float) * cols);
    ds4_dequantize_row(GGML_TYPE_MXFP4, blocks, a, cols);
    for (int64_t v = 0; v < cols; v++) {
        const int code = (data[v / 2] >> (4 * (v & 1))) & 15;
        CHECK(a[v] == (float)ds4_e2m1_x2[code] * ds4_e8m0_half(scale[v / 32]));
    }
    for (int64_t r = 0; r < rows; r++) {
        const float want = tr(GGML_TYPE_MXFP4)->vec_dot[DS4_SIMD_SCALAR](cols, blocks + r * cols / 32, act);
        const float got = ds4_mxfp4_native_dot(cols, data + r * cols / 2, scale + r * cols / 32, act);
        CHECK(memcmp(&want, &got, 4) == 0);
        ds4_mxfp4_native_dequantize_row(data + r * cols / 2, scale + r * cols / 32, b, cols);
        ds4_dequantize_row(GGML_TYPE_MXFP4, blocks + r * cols / 32, a, cols);
        CHECK(memcmp(a, b, sizeof(float) * cols) == 0);
    }
    ds4_mxfp4_native_to_blocks(data, scale, rows, cols, back);
    CHECK(memcmp(back, blocks, sizeof *blocks * nb) == 0);
    free(blocks);
    free(back);
    free(data);
    free(scale);
    free(act);
    free(a);
    free(b);
}

/* ------------------------------------------------------- dispatch */

static void test_dispatch(ds4_simd best) {
    CHECK(ds4_simd_available(DS4_SIMD_SCALAR));
    CHECK(ds4_simd_set((ds4_simd)DS4_SIMD_COUNT) == -1);
    const int64_t n = 512;
    float *x = malloc(sizeof(float) * n);
    fill_gauss(x, n, 1.0f);
    for (int l = 0; l < DS4_SIMD_COUNT; l++) {
        if (!ds4_simd_available((ds4_simd)l)) {
            CHECK(ds4_simd_set((ds4_simd)l) == -1);
            continue;
        }
        CHECK(ds4_simd_set((ds4_simd)l) == 0 && ds4_simd_active() == (ds4_simd)l);
        for (size_t k = 0; k < COUNT(k_quant_types); k++) {
            const uint32_t type = k_quant_types[k];
            void *w = malloc(ds4_quant_row_bytes(type, n)), *act = malloc(ds4_act_row_bytes(type, n));
            ds4_quantize_row(type, x, w, n, NULL);
            ds4_quantize_act(type, x, act, n);
            const float a = ds4_vec_dot(type, n, w, act), b = tr(type)->vec_dot[l](n, w, act);
            CHECK(memcmp(&a, &b, 4) == 0);
            CHECK(ds4_vec_dot_get(type) == tr(type)->vec_dot[l]);
            free(w);
            free(act);
        }
        for (size_t k = 0; k < COUNT(k_float_types); k++) {
            const uint32_t type = k_float_types[k];
            void *w = malloc(ds4_quant_row_bytes(type, n));
            ds4_quantize_row(type, x, w, n, NULL);
            const float a = ds4_dot_f32_row(type, n, w, x), b = tr(type)->dot_f32[l](n, w, x);
            CHECK(memcmp(&a, &b, 4) == 0);
            CHECK(ds4_act_type(type) == GGML_TYPE_F32);
            free(w);
        }
    }
    CHECK(ds4_simd_set(best) == 0);
    CHECK(ds4_act_type(GGML_TYPE_Q8_0) == GGML_TYPE_Q8_0 && ds4_act_type(GGML_TYPE_MXFP4) == GGML_TYPE_Q8_0);
    CHECK(ds4_act_type(GGML_TYPE_Q2_K) == GGML_TYPE_Q8_K && ds4_act_type(GGML_TYPE_IQ2_XXS) == GGML_TYPE_Q8_K);
    CHECK(ds4_quant_row_bytes(GGML_TYPE_IQ2_XXS, 4096) == 16 * 66);
    CHECK(!ds4_quant_supported(GGML_TYPE_Q5_K));
    free(x);
}

/* ---------------------------------------------------------- tile kernels */

/* A tile kernel must reproduce its ISA's vec_dot bit for bit for every
 * (row, token) of the tile (prefill and decode logits are compared
 * exactly): odd row and token counts exercise the padded tails. */
static long g_tile_checked;

static void test_tile_kernels(uint32_t type) {
    const ds4_quant_traits *t = tr(type);
    static const int blocks[] = {1, 2, 3, 4, 5, 8, 12, 16};
    static const uint32_t rows_list[] = {1, 2, 3, 5}, toks_list[] = {1, 2, 3, 4, 5, 7, 9};
    const uint32_t max_rows = 5, max_tok = 9;
    for (int l = 0; l < DS4_SIMD_COUNT; l++) {
        if (!ds4_simd_available((ds4_simd)l) || !t->vec_dot_tile[l]) continue;
        for (size_t bi = 0; bi < COUNT(blocks); bi++) {
            const int64_t n = (int64_t)blocks[bi] * t->block_elems;
            const size_t rb = ds4_quant_row_bytes(type, n), ab = ds4_act_row_bytes(type, n);
            uint8_t *w = malloc(rb * max_rows), *act = malloc(ab * max_tok);
            float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * max_rows * max_tok * 2);
            void *scratch = aligned_alloc(64, (ds4_vec_dot_tile_scratch(n, max_tok) + 63) & ~(size_t)63);
            for (int kind = 0; kind < 3; kind++) {
                for (uint32_t r = 0; r < max_rows; r++) {
                    if (kind == 0) {
                        fill_gauss(x, n, 0.02f);
                        ds4_quantize_row(type, x, w + r * rb, n, NULL);
                    } else if (kind == 1) {
                        random_weight_blocks(type, w + r * rb, n);
                    } else {
                        max_weight_blocks(type, w + r * rb, n);
                    }
                }
                for (uint32_t k = 0; k < max_tok; k++) {
                    if (kind == 0) {
                        fill_gauss(x, n, 1.0f);
                        ds4_quantize_act(type, x, act + k * ab, n);
                    } else if (kind == 1 || k % 2) {
                        random_act_blocks(type, act + k * ab, n);
                    } else {
                        max_act_blocks(type, act + k * ab, n);
                    }
                }
                for (size_t ri = 0; ri < COUNT(rows_list); ri++)
                    for (size_t ti = 0; ti < COUNT(toks_list); ti++) {
                        const uint32_t nr = rows_list[ri], nt = toks_list[ti];
                        /* y_stride wider than the row count, like a slice of a bigger output */
                        const size_t ys = nr + 3;
                        for (size_t i = 0; i < (size_t)ys * nt; i++) y[i] = -1.0f;
                        t->vec_dot_tile[l](n, w, rb, nr, act, ab, nt, y, ys, scratch);
                        int bad = 0;
                        for (uint32_t k = 0; k < nt; k++) {
                            for (uint32_t r = 0; r < nr; r++) {
                                const float ref = t->vec_dot[l](n, w + r * rb, act + k * ab);
                                g_tile_checked++;
                                if (memcmp(&ref, &y[k * ys + r], 4) != 0 && bad++ < 3)
                                    fprintf(stderr, "%s %s tile n=%lld kind %d rows %u toks %u: [%u,%u] %.9g vs vec_dot %.9g\n",
                                            t->name, ds4_simd_name((ds4_simd)l), (long long)n, kind, nr, nt, r, k,
                                            y[k * ys + r], ref);
                            }
                            for (size_t r = nr; r < ys; r++) bad += y[k * ys + r] != -1.0f; /* untouched */
                        }
                        CHECKF(bad == 0, "%s %s tile n=%lld kind %d rows %u toks %u: %d mismatches", t->name,
                               ds4_simd_name((ds4_simd)l), (long long)n, kind, nr, nt, bad);
                    }
            }
            free(w);
            free(act);
            free(x);
            free(y);
            free(scratch);
        }
    }
    /* the dispatcher hands out the tile kernel of the level vec_dot uses */
    const ds4_vec_dot_tile_fn f = ds4_vec_dot_tile_get(type);
    int lv = ds4_simd_active();
    while (lv > 0 && !t->vec_dot[lv]) lv--;
    CHECK(f == t->vec_dot_tile[lv]);
}

/* ------------------------------------------------------- benchmark */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* Passes of run(ctx) per second: the best of 3 trials of at least 0.2 s. */
static double passes_per_s(void (*run)(void *), void *ctx) {
    double best = 0;
    for (int trial = 0; trial < 3; trial++) {
        int64_t passes = 0;
        const double t0 = now_s();
        double el;
        do {
            run(ctx);
            passes++;
            el = now_s() - t0;
        } while (el < 0.2);
        if (passes / el > best) best = passes / el;
    }
    return best;
}

/* One pass of a single-token kernel over every row. */
typedef struct rows_pass {
    ds4_vec_dot_fn dot;
    int64_t n;
    const uint8_t *w;
    size_t rb;
    int64_t rows;
    const void *act;
    volatile float sink;
} rows_pass;
static void rows_run(void *p) {
    rows_pass *c = p;
    for (int64_t r = 0; r < c->rows; r++) c->sink += c->dot(c->n, c->w + r * c->rb, c->act);
}

/* One pass of a tile kernel: every row against n_tok activation rows. */
typedef struct tile_pass {
    ds4_vec_dot_tile_fn tile;
    int64_t n;
    const uint8_t *w;
    size_t rb;
    int64_t rows;
    const uint8_t *acts;
    size_t ab;
    uint32_t n_tok;
    float *y;
    void *scratch;
} tile_pass;
static void tile_run(void *p) {
    tile_pass *c = p;
    c->tile(c->n, c->w, c->rb, (uint32_t)c->rows, c->acts, c->ab, c->n_tok, c->y, (size_t)c->rows, c->scratch);
}

/* Weight bytes streamed per second by one thread, for a matrix that fits
 * in L2 (kernel-bound) and one far larger than the caches. */
static void bench(void) {
    const uint32_t types[] = {GGML_TYPE_Q8_0, GGML_TYPE_Q2_K, GGML_TYPE_Q4_K, GGML_TYPE_IQ2_XXS,
                              GGML_TYPE_MXFP4, GGML_TYPE_F16, GGML_TYPE_BF16, GGML_TYPE_F32};
    const int64_t n = 4096;
    const size_t sizes[] = {512u << 10, 256u << 20};
    float *x = malloc(sizeof(float) * n);
    fill_gauss(x, n, 1.0f);
    for (size_t si = 0; si < COUNT(sizes); si++) {
        for (size_t k = 0; k < COUNT(types); k++) {
            const ds4_quant_traits *t = tr(types[k]);
            const size_t rb = ds4_quant_row_bytes(types[k], n);
            const int64_t rows = (int64_t)(sizes[si] / rb);
            uint8_t *w = malloc(rb * rows);
            void *act = malloc(ds4_act_row_bytes(types[k], n));
            float *row = malloc(sizeof(float) * n);
            for (int64_t r = 0; r < rows; r++) {
                if (r < 64) {
                    fill_gauss(row, n, 0.02f);
                    ds4_quantize_row(types[k], row, w + r * rb, n, NULL);
                } else {
                    memcpy(w + r * rb, w + (r % 64) * rb, rb);
                }
            }
            if (t->act_type == GGML_TYPE_F32)
                memcpy(act, x, sizeof(float) * n);
            else
                ds4_quantize_act(types[k], x, act, n);
            fprintf(stderr, "bench %-7s %s:", t->name, si == 0 ? "L2  " : "DRAM");
            for (int l = 0; l < DS4_SIMD_COUNT; l++) {
                if (!ds4_simd_available((ds4_simd)l) || !t->vec_dot[l]) continue;
                rows_pass c = {t->vec_dot[l], n, w, rb, rows, act, 0.0f};
                const double best = passes_per_s(rows_run, &c) * rows * rb / 1e9;
                fprintf(stderr, "  %s %6.1f GB/s", ds4_simd_name((ds4_simd)l), best);
            }
            fprintf(stderr, "\n");
            /* tile kernels: weight bytes per second per token, for
             * several tokens sharing each row */
            if (t->vec_dot_tile[DS4_SIMD_AVX512] && ds4_simd_available(DS4_SIMD_AVX512)) {
                /* from memory only the decode case: one token */
                const uint32_t toks[] = {1, 2, 4, 12, 32};
                const size_t n_toks = si == 0 ? COUNT(toks) : 1;
                const size_t ab = ds4_act_row_bytes(types[k], n);
                uint8_t *acts = malloc(ab * 32);
                for (int q = 0; q < 32; q++) memcpy(acts + q * ab, act, ab);
                float *y = malloc(sizeof(float) * rows * 32);
                void *scratch = aligned_alloc(64, (ds4_vec_dot_tile_scratch(n, 32) + 63) & ~(size_t)63);
                fprintf(stderr, "bench %-7s %s tile (GB/s x tokens):", t->name, si == 0 ? "L2  " : "DRAM");
                for (size_t q = 0; q < n_toks; q++) {
                    tile_pass c = {t->vec_dot_tile[DS4_SIMD_AVX512], n, w, rb, rows, acts, ab, toks[q], y, scratch};
                    const double best = passes_per_s(tile_run, &c) * rows * rb * toks[q] / 1e9;
                    fprintf(stderr, "  %u tok %6.1f", toks[q], best);
                }
                fprintf(stderr, "\n");
                free(acts);
                free(y);
                free(scratch);
            }
            free(w);
            free(act);
            free(row);
        }
    }
    free(x);
}

/* The vectorised Q8_0 activation quantizer writes the scalar one's bytes,
 * on gaussian rows at several scales, zeros, huge and tiny values, NaN
 * and infinities. */
static void test_q8_0_act_quantize(void) {
#if defined(__x86_64__)
    if (!ds4_simd_available(DS4_SIMD_AVX512)) return;
    const int64_t n = 4096;
    float *x = malloc(sizeof(float) * n);
    uint8_t *a = malloc(ds4_quant_row_bytes(GGML_TYPE_Q8_0, n)), *b = malloc(ds4_quant_row_bytes(GGML_TYPE_Q8_0, n));
    const float scales[] = {1.0f, 1e-3f, 1e3f, 1e-30f, 1e30f, 6e4f};
    for (int kind = 0; kind < (int)COUNT(scales) + 2; kind++) {
        if (kind < (int)COUNT(scales)) {
            fill_gauss(x, n, scales[kind]);
        } else {
            fill_gauss(x, n, 1.0f);
            for (int64_t i = 0; i < n; i += 37) x[i] = kind == (int)COUNT(scales) ? 0.0f : NAN;
            for (int64_t i = 5; i < n; i += 101) x[i] = INFINITY;
            for (int64_t i = 0; i < 64; i++) x[i] = 0.0f; /* all-zero blocks */
        }
        ds4_quantize_row(GGML_TYPE_Q8_0, x, a, n, NULL); /* the scalar reference */
        ds4_quantize_act(GGML_TYPE_Q8_0, x, b, n);
        CHECKF(memcmp(a, b, ds4_quant_row_bytes(GGML_TYPE_Q8_0, n)) == 0, "Q8_0 activation quantizer kind %d differs", kind);
    }
    free(x);
    free(a);
    free(b);
#endif
}

int main(void) {
    /* DS4_SIMD caps the automatic choice (read once, at first use). */
    ds4_simd best = DS4_SIMD_SCALAR;
    setenv("DS4_SIMD", "scalar", 1);
    CHECK(ds4_simd_active() == DS4_SIMD_SCALAR);
    for (int l = 0; l < DS4_SIMD_COUNT; l++)
        if (ds4_simd_available((ds4_simd)l)) best = (ds4_simd)l;
    fprintf(stderr, "SIMD levels on this CPU: up to %s\n", ds4_simd_name(best));

    test_dispatch(best);
    for (size_t k = 0; k < COUNT(k_quant_types); k++) test_quant_kernels(k_quant_types[k]);
    for (size_t k = 0; k < COUNT(k_float_types); k++) test_float_kernels(k_float_types[k]);
    for (size_t k = 0; k < COUNT(k_quant_types); k++) test_tile_kernels(k_quant_types[k]);
    fprintf(stderr, "tile kernels: %ld (row, token) results equal to vec_dot bit for bit\n", g_tile_checked);
    for (int l = 1; l < DS4_SIMD_COUNT; l++)
        if (ds4_simd_available((ds4_simd)l))
            fprintf(stderr, "worst |%s - scalar| / M: %.3g\n", ds4_simd_name((ds4_simd)l), g_worst_rel[l]);
    for (size_t k = 0; k < COUNT(k_quant_types); k++) test_activation_error(k_quant_types[k]);
    test_q8_0_act_quantize();
    test_round_trip_rmse();
    test_round_trip_edges();
    test_q8k_layout();
    test_q4k_scale_packing();
    test_mxfp4_native();
    const char *b = getenv("DS4_QUANT_BENCH");
    if (b && *b && *b != '0') bench();
    return test_finish();
}
