/* Q8_0: 32 int8 values sharing one fp16 scale. Serves both as a weight
 * format and as the activation format for Q8_0 and MXFP4 weights. */
#include <math.h>

#include "formats/quant/internal.h"

void ds4_q8_0_dequantize(const void *src, float *dst, int64_t n) {
    const ds4_block_q8_0 *b = src;
    for (int64_t i = 0; i < n / DS4_QK8_0; i++) {
        const float d = ds4_q_half(b[i].d);
        for (int j = 0; j < DS4_QK8_0; j++) dst[i * DS4_QK8_0 + j] = (float)b[i].qs[j] * d;
    }
}

/* Values are divided by the fp16 scale actually stored, not by the exact
 * amax/127 it was rounded from, so the only error left is the rounding of
 * x/d16 (at most d16/2); quantizing with the unrounded scale and storing a
 * rounded one would add up to 127*|d - d16| on the largest values. Since
 * d16 is within 2^-11 of amax/127, |x/d16| <= 127.07 still rounds into
 * [-127, 127] (never -128, which the SIMD kernels rely on for
 * activations). A scale below the smallest fp16 subnormal is raised to it
 * rather than flushed, so tiny blocks keep their values. */
void ds4_q8_0_quantize(const float *src, void *dst, int64_t n, const float *imp) {
    (void)imp;
    ds4_block_q8_0 *b = dst;
    for (int64_t i = 0; i < n / DS4_QK8_0; i++) {
        const float *x = src + i * DS4_QK8_0;
        float amax = 0.0f;
        for (int j = 0; j < DS4_QK8_0; j++) amax = ds4_maxf(fabsf(x[j]), amax);
        const float d = amax / 127.0f;
        uint16_t h = ds4_f32_to_f16(d);
        if (h == 0 && d > 0.0f) h = 1;       /* smallest subnormal */
        if (h > 0x7bffu) h = 0x7bffu;        /* largest finite (values then clamp) */
        const float dh = ds4_f16_to_f32(h);
        const float id = dh > 0.0f ? 1.0f / dh : 0.0f;
        b[i].d = h;
        for (int j = 0; j < DS4_QK8_0; j++) {
            const float v = ds4_clampf(x[j] * id, -127.0f, 127.0f);
            b[i].qs[j] = (int8_t)ds4_round_int(v);
        }
    }
}

/* Scalar reference: exact int32 inner product per block, scaled and summed
 * in block order. */
float ds4_q8_0_dot_scalar(int64_t n, const void *w, const void *act) {
    const ds4_block_q8_0 *x = w, *y = act;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / DS4_QK8_0; i++) {
        int isum = 0;
        for (int j = 0; j < DS4_QK8_0; j++) isum += x[i].qs[j] * y[i].qs[j];
        sum += (float)isum * (ds4_q_half(x[i].d) * ds4_q_half(y[i].d));
    }
    return sum;
}

#if DS4_QUANT_X86

/* x86 has no signed x signed byte multiply-add; maddubs (and VNNI's
 * dpbusd) multiply unsigned by signed bytes. So the weight goes in as |w|
 * (|-128| reads correctly as unsigned 128) and its sign moves onto the
 * activation, which is in [-127, 127] and can be negated without overflow.
 * Pair sums stay below 2*128*127 < 2^15, so maddubs cannot saturate. */

DS4_TARGET_AVX2 static inline __m256 q8_0_block_avx2(const ds4_block_q8_0 *x, const ds4_block_q8_0 *y) {
    const __m256i qw = _mm256_loadu_si256((const __m256i *)x->qs);
    const __m256i qa = _mm256_loadu_si256((const __m256i *)y->qs);
    const __m256i p16 = _mm256_maddubs_epi16(_mm256_abs_epi8(qw), _mm256_sign_epi8(qa, qw));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

DS4_TARGET_AVX2 float ds4_q8_0_dot_avx2(int64_t n, const void *w, const void *act) {
    const ds4_block_q8_0 *x = w, *y = act;
    const int64_t nb = n / DS4_QK8_0;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        const float s0 = ds4_half_f16c(x[i].d) * ds4_half_f16c(y[i].d);
        const float s1 = ds4_half_f16c(x[i + 1].d) * ds4_half_f16c(y[i + 1].d);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(s0), q8_0_block_avx2(x + i, y + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(s1), q8_0_block_avx2(x + i + 1, y + i + 1), acc1);
    }
    if (i < nb) {
        const float s0 = ds4_half_f16c(x[i].d) * ds4_half_f16c(y[i].d);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(s0), q8_0_block_avx2(x + i, y + i), acc0);
    }
    return ds4_hsum256(_mm256_add_ps(acc0, acc1));
}

/* AVX-512: two blocks per 512-bit register. AVX-512 has no byte sign
 * instruction, so the activation is negated under a mask of the weight's
 * sign bits instead. */
DS4_TARGET_AVX512 float ds4_q8_0_dot_avx512(int64_t n, const void *w, const void *act) {
    const ds4_block_q8_0 *x = w, *y = act;
    const int64_t nb = n / DS4_QK8_0;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 4 <= nb; i += 4) {
        for (int k = 0; k < 2; k++) {
            const ds4_block_q8_0 *xa = x + i + 2 * k, *ya = y + i + 2 * k;
            const __m512i qw = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)xa[0].qs)),
                _mm256_loadu_si256((const __m256i *)xa[1].qs), 1);
            const __m512i qa = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)ya[0].qs)),
                _mm256_loadu_si256((const __m256i *)ya[1].qs), 1);
            const __mmask64 neg = _mm512_movepi8_mask(qw);
            const __m512i sa = _mm512_mask_sub_epi8(qa, neg, _mm512_setzero_si512(), qa);
            const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(qw), sa);
            const __m512 s = _mm512_castpd_ps(_mm512_insertf64x4(
                _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_set1_ps(ds4_half_f16c(xa[0].d) * ds4_half_f16c(ya[0].d)))),
                _mm256_castps_pd(_mm256_set1_ps(ds4_half_f16c(xa[1].d) * ds4_half_f16c(ya[1].d))), 1));
            if (k == 0)
                acc0 = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(p), acc0);
            else
                acc1 = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(p), acc1);
        }
    }
    __m256 tail = _mm256_setzero_ps();
    for (; i < nb; i++) {
        const float s0 = ds4_half_f16c(x[i].d) * ds4_half_f16c(y[i].d);
        tail = _mm256_fmadd_ps(_mm256_set1_ps(s0), q8_0_block_avx2(x + i, y + i), tail);
    }
    return ds4_hsum512(_mm512_add_ps(acc0, acc1)) + ds4_hsum256(tail);
}

#endif

#if DS4_QUANT_X86

/* ======================================================================
 * Tile kernel (AVX-512): many tokens against the same rows
 *
 * The per-row kernel moves each weight's sign onto the activation for
 * every (row, token) pair. Here the activations are offset once into
 * unsigned bytes (a + 128) so dpbusd can take the signed weights as they
 * are; the offset's contribution, 128 * (sum of the lane's four weights),
 * is precomputed per row and starts each lane's sum, which leaves exactly
 * the per-row kernel's integer lanes. The float steps (the same two
 * accumulators over pairs of blocks, scale products dw * da, final sums)
 * are ds4_q8_0_dot_avx512's, so the results agree bit for bit. Rows whose
 * block count is not a multiple of 4 (the per-row kernel's AVX2 tail) go
 * through the per-row kernel.
 * ====================================================================== */

typedef struct {
    _Alignas(64) int8_t w[64]; /* two blocks' values */
    int32_t negcorr[16];       /* -128 * sum of each lane's four values */
    float dw[16];              /* the two blocks' scales, eight lanes each */
} q8_tile_step;

typedef struct {
    _Alignas(64) uint8_t au[64]; /* two blocks' activations + 128 */
    float da[16];
} q8_tile_act;

DS4_TARGET_AVX512 static inline __m512 q8_pair_scale(uint16_t d0, uint16_t d1) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(_mm256_set1_ps(ds4_half_f16c(d0)))),
                                               _mm256_castps_pd(_mm256_set1_ps(ds4_half_f16c(d1))), 1));
}

DS4_TARGET_AVX512 static inline __m512i q8_pair_qs(const ds4_block_q8_0 *b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)b[0].qs)),
                              _mm256_loadu_si256((const __m256i *)b[1].qs), 1);
}

DS4_TARGET_AVX512 static inline __attribute__((always_inline)) void q8_tile_2xT(const q8_tile_step *w0, const q8_tile_step *w1, const q8_tile_act *const a4[4],
                                          int64_t nsteps, float out[2][4], const int T) {
    const q8_tile_step *wr[2] = {w0, w1};
    __m512 acc[2][2][4];
    DS4_UNROLL
    for (int k = 0; k < 2; k++)
        DS4_UNROLL
        for (int r = 0; r < 2; r++)
            DS4_UNROLL
            for (int t = 0; t < T; t++) acc[k][r][t] = _mm512_setzero_ps();
    for (int64_t j = 0; j < nsteps; j += 2) {
        DS4_UNROLL
        for (int k = 0; k < 2; k++) {
            DS4_UNROLL
            for (int r = 0; r < 2; r++) {
                const q8_tile_step *st = wr[r] + j + k;
                const __m512i w = _mm512_load_si512((const void *)st->w);
                const __m512i nc = _mm512_load_si512((const void *)st->negcorr);
                const __m512 dw = _mm512_load_ps(st->dw);
                DS4_UNROLL
                for (int t = 0; t < T; t++) {
                    const q8_tile_act *at = a4[t] + j + k;
                    const __m512i p = _mm512_dpbusd_epi32(nc, _mm512_load_si512((const void *)at->au), w);
                    const __m512 s = _mm512_mul_ps(dw, _mm512_load_ps(at->da));
                    acc[k][r][t] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(p), acc[k][r][t]);
                }
            }
        }
    }
    /* + 0.0f: the per-row kernel adds its (empty) tail sum, which turns a
     * -0 total into +0 */
    DS4_UNROLL
    for (int r = 0; r < 2; r++)
        DS4_UNROLL
        for (int t = 0; t < T; t++) out[r][t] = ds4_hsum512(_mm512_add_ps(acc[0][r][t], acc[1][r][t])) + 0.0f;
}

/* One instance per token count, so the loops unroll with constant bounds. */
DS4_TARGET_AVX512 static void q8_tile_2x1(const q8_tile_step *w0, const q8_tile_step *w1, const q8_tile_act *const a4[4], int64_t nsteps, float out[2][4]) {
    q8_tile_2xT(w0, w1, a4, nsteps, out, 1);
}
DS4_TARGET_AVX512 static void q8_tile_2x2(const q8_tile_step *w0, const q8_tile_step *w1, const q8_tile_act *const a4[4], int64_t nsteps, float out[2][4]) {
    q8_tile_2xT(w0, w1, a4, nsteps, out, 2);
}
DS4_TARGET_AVX512 static void q8_tile_2x3(const q8_tile_step *w0, const q8_tile_step *w1, const q8_tile_act *const a4[4], int64_t nsteps, float out[2][4]) {
    q8_tile_2xT(w0, w1, a4, nsteps, out, 3);
}
DS4_TARGET_AVX512 static void q8_tile_2x4(const q8_tile_step *w0, const q8_tile_step *w1, const q8_tile_act *const a4[4], int64_t nsteps, float out[2][4]) {
    q8_tile_2xT(w0, w1, a4, nsteps, out, 4);
}

DS4_TARGET_AVX512 void ds4_q8_0_tile_avx512(int64_t n, const void *w, size_t w_stride, uint32_t n_rows, const void *act,
                                            size_t act_stride, uint32_t n_tok, float *y, size_t y_stride, void *scratch) {
    const int64_t nb = n / DS4_QK8_0, nsteps = nb / 2;
    if (nb % 4) {
        for (uint32_t t = 0; t < n_tok; t++)
            for (uint32_t r = 0; r < n_rows; r++)
                y[t * y_stride + r] = ds4_q8_0_dot_avx512(n, (const uint8_t *)w + r * w_stride,
                                                          (const uint8_t *)act + t * act_stride);
        return;
    }
    q8_tile_act *acts = scratch;
    q8_tile_step *dec = (q8_tile_step *)(acts + (size_t)n_tok * nsteps);
    const __m512i k128 = _mm512_set1_epi8((char)0x80);
    for (uint32_t t = 0; t < n_tok; t++) {
        const ds4_block_q8_0 *ya = (const ds4_block_q8_0 *)((const uint8_t *)act + t * act_stride);
        for (int64_t j = 0; j < nsteps; j++) {
            q8_tile_act *o = acts + (size_t)t * nsteps + j;
            _mm512_store_si512((void *)o->au, _mm512_xor_si512(q8_pair_qs(ya + 2 * j), k128));
            _mm512_store_ps(o->da, q8_pair_scale(ya[2 * j].d, ya[2 * j + 1].d));
        }
    }
    for (uint32_t r0 = 0; r0 < n_rows; r0 += 2) {
        const uint32_t nr = n_rows - r0 < 2 ? n_rows - r0 : 2;
        for (uint32_t r = 0; r < nr; r++) {
            const ds4_block_q8_0 *x = (const ds4_block_q8_0 *)((const uint8_t *)w + (r0 + r) * w_stride);
            for (int64_t j = 0; j < nsteps; j++) {
                q8_tile_step *o = dec + r * nsteps + j;
                const __m512i v = q8_pair_qs(x + 2 * j);
                _mm512_store_si512((void *)o->w, v);
                _mm512_store_si512((void *)o->negcorr,
                                   _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), k128, v)));
                _mm512_store_ps(o->dw, q8_pair_scale(x[2 * j].d, x[2 * j + 1].d));
            }
        }
        /* a lone last row is paired with itself; a short last group of
         * tokens takes the kernel for its count */
        const q8_tile_step *w1 = dec + (nr - 1) * nsteps;
        for (uint32_t t0 = 0; t0 < n_tok; t0 += 4) {
            const uint32_t nt = n_tok - t0 < 4 ? n_tok - t0 : 4;
            const q8_tile_act *a4[4];
            for (uint32_t t = 0; t < 4; t++) a4[t] = acts + (size_t)(t0 + (t < nt ? t : 0)) * nsteps;
            float out[2][4];
            switch (nt) {
            case 1: q8_tile_2x1(dec, w1, a4, nsteps, out); break;
            case 2: q8_tile_2x2(dec, w1, a4, nsteps, out); break;
            case 3: q8_tile_2x3(dec, w1, a4, nsteps, out); break;
            default: q8_tile_2x4(dec, w1, a4, nsteps, out); break;
            }
            for (uint32_t r = 0; r < nr; r++)
                for (uint32_t t = 0; t < nt; t++) y[(t0 + t) * y_stride + r0 + r] = out[r][t];
        }
    }
}

#endif
