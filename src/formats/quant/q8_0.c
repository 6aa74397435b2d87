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

#if DS4_QUANT_X86
/* The same quantization with the per-value work in vectors (decode
 * quantizes tens of thousands of activations per layer on one thread while
 * the others wait). Byte-identical to ds4_q8_0_quantize: the block maximum
 * of |x| is exact in any order (max_ps, like ds4_maxf, skips a NaN x);
 * the scale is the scalar code's; x * id is the same float product;
 * max_ps(v, -127) maps a NaN to -127 as ds4_clampf does; and cvtps2dq
 * rounds to nearest even like ds4_round_int for these magnitudes. */
DS4_TARGET_AVX512 void ds4_q8_0_quantize_avx512(const float *src, void *dst, int64_t n) {
    ds4_block_q8_0 *b = dst;
    const __m512 sign = _mm512_set1_ps(-0.0f), lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
    for (int64_t i = 0; i < n / DS4_QK8_0; i++) {
        const __m512 x0 = _mm512_loadu_ps(src + i * DS4_QK8_0), x1 = _mm512_loadu_ps(src + i * DS4_QK8_0 + 16);
        __m512 m = _mm512_max_ps(_mm512_andnot_ps(sign, x0), _mm512_setzero_ps());
        m = _mm512_max_ps(_mm512_andnot_ps(sign, x1), m);
        const float amax = _mm512_reduce_max_ps(m);
        const float d = amax / 127.0f;
        uint16_t h = ds4_f32_to_f16(d);
        if (h == 0 && d > 0.0f) h = 1;
        if (h > 0x7bffu) h = 0x7bffu;
        const float dh = ds4_f16_to_f32(h);
        const __m512 id = _mm512_set1_ps(dh > 0.0f ? 1.0f / dh : 0.0f);
        b[i].d = h;
        const __m512i q0 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(x0, id), lo), hi));
        const __m512i q1 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(x1, id), lo), hi));
        _mm_storeu_si128((__m128i *)b[i].qs, _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(b[i].qs + 16), _mm512_cvtepi32_epi8(q1));
    }
}
#endif

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

/* AVX-512: sixteen blocks per step, one block per float lane. The exact
 * integer sum of every block goes to its own lane, and only then is it
 * scaled: acc[j] += (dw_j * da_j) * isum_j over groups of 16 blocks, then
 * one horizontal sum. Each block costs one lane of three float operations
 * instead of eight (the tile kernel below, which is compute bound, leans
 * on this). Blocks past the end of a row are zero lanes (scale 0, sum 0).
 *
 * Here the sums are formed two blocks per register (dpbusd of |w| with the
 * activation negated under w's sign mask: AVX-512 has no byte sign
 * instruction) and folded to one lane per block by a tree of two-source
 * lane permutes; the tile kernel gets the same integers another way. */

/* Even and odd lanes of the 32-lane concatenation of two registers. */
static const int32_t k_q8_fold_idx[2][16] = {
    {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30},
    {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31},
};

/* Adds neighbouring lanes of a and b (a's 16 lanes, then b's) into 16
 * lanes: with k lanes per block in the inputs (k even, a block's lanes
 * adjacent), k/2 per block in the output, blocks kept in order. */
DS4_TARGET_AVX512 static inline __m512i q8_fold(__m512i a, __m512i b) {
    const __m512i e = _mm512_loadu_si512((const void *)k_q8_fold_idx[0]);
    const __m512i o = _mm512_loadu_si512((const void *)k_q8_fold_idx[1]);
    return _mm512_add_epi32(_mm512_permutex2var_epi32(a, e, b), _mm512_permutex2var_epi32(a, o, b));
}

DS4_TARGET_AVX512 static inline __m512i q8_load_pair(const ds4_block_q8_0 *b, int two) {
    const __m256i lo = _mm256_loadu_si256((const __m256i *)b[0].qs);
    return two ? _mm512_inserti64x4(_mm512_castsi256_si512(lo), _mm256_loadu_si256((const __m256i *)b[1].qs), 1)
               : _mm512_zextsi256_si512(lo);
}

/* Adds block pair k's fp16 scale words (block b2[0] at word 0 of its
 * 64-byte load, b2[1] at word 17: blocks are 34 bytes) to word lanes 2k,
 * 2k+1 of d; a lone last block takes its word directly (a 64-byte load
 * could run past the row). */
DS4_TARGET_AVX512 static inline __m512i q8_collect_d(__m512i d, const ds4_block_q8_0 *b2, int k, int two) {
    if (!two) return _mm512_mask_set1_epi16(d, (__mmask32)(1u << (2 * k)), (short)b2[0].d);
    const __m512i idx = _mm512_set1_epi32(17 << 16); /* even word lanes: word 0; odd: word 17 */
    return _mm512_mask_permutexvar_epi16(d, (__mmask32)(3u << (2 * k)), idx, _mm512_loadu_si512((const void *)b2));
}

DS4_TARGET_AVX512 float ds4_q8_0_dot_avx512(int64_t n, const void *w, const void *act) {
    const ds4_block_q8_0 *x = w, *y = act;
    const int64_t nb = n / DS4_QK8_0;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t g = 0; g < nb; g += 16) {
        const int cnt = nb - g < 16 ? (int)(nb - g) : 16;
        __m512i p[8], dw = _mm512_setzero_si512(), da = _mm512_setzero_si512();
        for (int k = 0; k < 8; k++) {
            const int have = cnt - 2 * k;
            if (have <= 0) {
                p[k] = _mm512_setzero_si512();
                continue;
            }
            const __m512i qw = q8_load_pair(x + g + 2 * k, have > 1);
            const __m512i qa = q8_load_pair(y + g + 2 * k, have > 1);
            dw = q8_collect_d(dw, x + g + 2 * k, k, have > 1);
            da = q8_collect_d(da, y + g + 2 * k, k, have > 1);
            const __mmask64 neg = _mm512_movepi8_mask(qw);
            const __m512i sa = _mm512_mask_sub_epi8(qa, neg, _mm512_setzero_si512(), qa);
            p[k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(qw), sa);
        }
        const __m512i q0 = q8_fold(p[0], p[1]), q1 = q8_fold(p[2], p[3]);
        const __m512i q2 = q8_fold(p[4], p[5]), q3 = q8_fold(p[6], p[7]);
        const __m512i isum = q8_fold(q8_fold(q0, q1), q8_fold(q2, q3));
        const __m512 sc = _mm512_mul_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(dw)), _mm512_cvtph_ps(_mm512_castsi512_si256(da)));
        acc = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(isum), acc);
    }
    return ds4_hsum512(acc);
}

#endif

#if DS4_QUANT_X86

/* ======================================================================
 * Tile kernel (AVX-512): many tokens against the same rows
 *
 * Rows and activations are re-laid out once per call so that, for each
 * group of 16 blocks, register k holds bytes 4k..4k+3 of block j in lane j:
 * eight dpbusd then accumulate every block's whole sum in its own lane,
 * which is the per-row kernel's integer vector with no folding. The
 * activations are offset to unsigned bytes (a + 128) so dpbusd can take
 * the signed weights as they are; the offset's contribution, 128 * (the
 * block's weight sum), is precomputed per row and starts each lane. The
 * float step (scale products, fma into the same lanes, final sum) is the
 * per-row kernel's, so the results agree bit for bit.
 * ====================================================================== */

typedef struct {
    _Alignas(64) int8_t w[8][64]; /* w[k] lane j: bytes 4k..4k+3 of block j */
    int32_t negcorr[16];          /* -128 * sum of block j's values */
    float d[16];                  /* block scales; 0 past the row's end */
} q8_tile_group;

/* A 16 x 8 transpose of 32-bit words: blocks [g, g + cnt) of a Q8_0 row
 * (missing ones read as zero) into out[k] lane j = word k of block j. */
DS4_TARGET_AVX512 static void q8_transpose16(const ds4_block_q8_0 *b, int cnt, __m512i out[8]) {
    __m512i z[8];
    for (int m = 0; m < 8; m++) {
        const int have = cnt - 2 * m;
        z[m] = have <= 0 ? _mm512_setzero_si512() : q8_load_pair(b + 2 * m, have > 1);
    }
    /* z[m]: blocks 2m, 2m+1 with 8 words each. Each pass halves the words
     * per block in a register and doubles the blocks. */
    int32_t ia[2][16], ib[2][16], ic[2][16];
    for (int o = 0; o < 16; o++) {
        for (int h = 0; h < 2; h++) {
            int bo = o >> 2;
            ia[h][o] = (bo < 2 ? bo * 8 : 16 + (bo - 2) * 8) + (o & 3) + 4 * h;
            bo = o >> 1;
            ib[h][o] = (bo < 4 ? bo * 4 : 16 + (bo - 4) * 4) + (o & 1) + 2 * h;
            ic[h][o] = (o < 8 ? o * 2 : 16 + (o - 8) * 2) + h;
        }
    }
    __m512i a[2][4], bb[2][2][2];
    for (int h = 0; h < 2; h++) {
        const __m512i idx = _mm512_loadu_si512((const void *)ia[h]);
        for (int g = 0; g < 4; g++) a[h][g] = _mm512_permutex2var_epi32(z[2 * g], idx, z[2 * g + 1]);
    }
    /* a[h][g]: blocks 4g..4g+3, words 4h..4h+3 */
    for (int h = 0; h < 2; h++)
        for (int h2 = 0; h2 < 2; h2++) {
            const __m512i idx = _mm512_loadu_si512((const void *)ib[h2]);
            for (int q = 0; q < 2; q++) bb[h][h2][q] = _mm512_permutex2var_epi32(a[h][2 * q], idx, a[h][2 * q + 1]);
        }
    /* bb[h][h2][q]: blocks 8q..8q+7, words 4h+2h2, 4h+2h2+1 */
    for (int h = 0; h < 2; h++)
        for (int h2 = 0; h2 < 2; h2++)
            for (int e = 0; e < 2; e++)
                out[4 * h + 2 * h2 + e] =
                    _mm512_permutex2var_epi32(bb[h][h2][0], _mm512_loadu_si512((const void *)ic[e]), bb[h][h2][1]);
}

DS4_TARGET_AVX512 static void q8_tile_prep_row(const ds4_block_q8_0 *x, int64_t nb, q8_tile_group *out) {
    const __m512i k128 = _mm512_set1_epi8((char)0x80);
    for (int64_t g = 0; g < nb; g += 16) {
        const int cnt = nb - g < 16 ? (int)(nb - g) : 16;
        q8_tile_group *o = out + g / 16;
        __m512i v[8], corr = _mm512_setzero_si512();
        q8_transpose16(x + g, cnt, v);
        for (int k = 0; k < 8; k++) {
            _mm512_store_si512((void *)o->w[k], v[k]);
            corr = _mm512_dpbusd_epi32(corr, k128, v[k]);
        }
        _mm512_store_si512((void *)o->negcorr, _mm512_sub_epi32(_mm512_setzero_si512(), corr));
        uint16_t h[16] = {0};
        for (int j = 0; j < cnt; j++) h[j] = x[g + j].d;
        _mm512_store_ps(o->d, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)h)));
    }
}

/* Activations: the same layout, bytes offset by 128 (negcorr unused). */
DS4_TARGET_AVX512 static void q8_tile_prep_act(const ds4_block_q8_0 *y, int64_t nb, q8_tile_group *out) {
    const __m512i k128 = _mm512_set1_epi8((char)0x80);
    for (int64_t g = 0; g < nb; g += 16) {
        const int cnt = nb - g < 16 ? (int)(nb - g) : 16;
        q8_tile_group *o = out + g / 16;
        __m512i v[8];
        q8_transpose16(y + g, cnt, v);
        for (int k = 0; k < 8; k++) _mm512_store_si512((void *)o->w[k], _mm512_xor_si512(v[k], k128));
        uint16_t h[16] = {0};
        for (int j = 0; j < cnt; j++) h[j] = y[g + j].d;
        _mm512_store_ps(o->d, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)h)));
    }
}

DS4_TARGET_AVX512 static inline __attribute__((always_inline)) void q8_tile_2xT(const q8_tile_group *w0, const q8_tile_group *w1,
                                                                               const q8_tile_group *const a4[4], int64_t ng,
                                                                               float out[2][4], const int T) {
    const q8_tile_group *wr[2] = {w0, w1};
    __m512 acc[2][4];
    DS4_UNROLL
    for (int r = 0; r < 2; r++)
        DS4_UNROLL
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        __m512i s[2][4];
        DS4_UNROLL
        for (int r = 0; r < 2; r++) {
            const __m512i c0 = _mm512_load_si512((const void *)wr[r][g].negcorr);
            DS4_UNROLL
            for (int t = 0; t < T; t++) s[r][t] = c0;
        }
        DS4_UNROLL
        for (int k = 0; k < 8; k++) {
            __m512i a[4];
            DS4_UNROLL
            for (int t = 0; t < T; t++) a[t] = _mm512_load_si512((const void *)a4[t][g].w[k]);
            DS4_UNROLL
            for (int r = 0; r < 2; r++) {
                const __m512i w = _mm512_load_si512((const void *)wr[r][g].w[k]);
                DS4_UNROLL
                for (int t = 0; t < T; t++) s[r][t] = _mm512_dpbusd_epi32(s[r][t], a[t], w);
            }
        }
        DS4_UNROLL
        for (int r = 0; r < 2; r++) {
            const __m512 dw = _mm512_load_ps(wr[r][g].d);
            DS4_UNROLL
            for (int t = 0; t < T; t++)
                acc[r][t] = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_load_ps(a4[t][g].d)), _mm512_cvtepi32_ps(s[r][t]), acc[r][t]);
        }
    }
    DS4_UNROLL
    for (int r = 0; r < 2; r++)
        DS4_UNROLL
        for (int t = 0; t < T; t++) out[r][t] = ds4_hsum512(acc[r][t]);
}

/* One instance per token count, so the loops unroll with constant bounds. */
#define Q8_TILE_INSTANCE(T)                                                                                        \
    DS4_TARGET_AVX512 static void q8_tile_2x##T(const q8_tile_group *w0, const q8_tile_group *w1,                \
                                                const q8_tile_group *const a4[4], int64_t ng, float out[2][4]) { \
        q8_tile_2xT(w0, w1, a4, ng, out, T);                                                                     \
    }
Q8_TILE_INSTANCE(1)
Q8_TILE_INSTANCE(2)
Q8_TILE_INSTANCE(3)
Q8_TILE_INSTANCE(4)

/* A single token (decode): its activations are prepared once per call in
 * block order, offset to unsigned bytes (a + 128) and with the 16-block
 * scale vectors ready, so each row costs one dpbusd for the products and
 * one for the offset's correction (128 * sum of w) per block pair, and
 * only its own scales to gather. Same integer lanes after the folds, same
 * float steps: equal to ds4_q8_0_dot_avx512 bit for bit. */
typedef struct {
    _Alignas(64) uint8_t au[16][32]; /* zero for blocks past the row's end */
    float d[16];
} q8_row_act;

DS4_TARGET_AVX512 static void q8_prep_act1(const ds4_block_q8_0 *y, int64_t nb, q8_row_act *out) {
    const __m256i k128 = _mm256_set1_epi8((char)0x80);
    for (int64_t g = 0; g < nb; g += 16) {
        const int cnt = nb - g < 16 ? (int)(nb - g) : 16;
        q8_row_act *o = out + g / 16;
        for (int j = 0; j < 16; j++) {
            const __m256i v = j < cnt ? _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)y[g + j].qs), k128)
                                      : _mm256_setzero_si256();
            _mm256_store_si256((__m256i *)o->au[j], v);
            o->d[j] = j < cnt ? ds4_half_f16c(y[g + j].d) : 0.0f;
        }
    }
}

DS4_TARGET_AVX512 static float q8_dot_prepped(const ds4_block_q8_0 *x, const q8_row_act *a, int64_t nb) {
    const __m512i k128 = _mm512_set1_epi8((char)0x80);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t g = 0; g < nb; g += 16) {
        const int cnt = nb - g < 16 ? (int)(nb - g) : 16;
        const q8_row_act *ag = a + g / 16;
        __m512i p[8], dw = _mm512_setzero_si512();
        for (int k = 0; k < 8; k++) {
            const int have = cnt - 2 * k;
            if (have <= 0) {
                p[k] = _mm512_setzero_si512();
                continue;
            }
            const __m512i qw = q8_load_pair(x + g + 2 * k, have > 1);
            ds4_prefetch_ahead(x + g + 2 * k); /* 68 bytes per step */
            dw = q8_collect_d(dw, x + g + 2 * k, k, have > 1);
            const __m512i corr = _mm512_dpbusd_epi32(_mm512_setzero_si512(), k128, qw);
            const __m512i prod = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_load_si512((const void *)ag->au[2 * k]), qw);
            p[k] = _mm512_sub_epi32(prod, corr);
        }
        const __m512i q0 = q8_fold(p[0], p[1]), q1 = q8_fold(p[2], p[3]);
        const __m512i q2 = q8_fold(p[4], p[5]), q3 = q8_fold(p[6], p[7]);
        const __m512i isum = q8_fold(q8_fold(q0, q1), q8_fold(q2, q3));
        const __m512 sc = _mm512_mul_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(dw)), _mm512_load_ps(ag->d));
        acc = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(isum), acc);
    }
    return ds4_hsum512(acc);
}

DS4_TARGET_AVX512 void ds4_q8_0_tile_avx512(int64_t n, const void *w, size_t w_stride, uint32_t n_rows, const void *act,
                                            size_t act_stride, uint32_t n_tok, float *y, size_t y_stride, void *scratch) {
    const int64_t nb = n / DS4_QK8_0, ng = (nb + 15) / 16;
    if (n_tok == 1) {
        q8_row_act *a1 = scratch;
        q8_prep_act1(act, nb, a1);
        for (uint32_t r = 0; r < n_rows; r++)
            y[r] = q8_dot_prepped((const ds4_block_q8_0 *)((const uint8_t *)w + r * w_stride), a1, nb);
        return;
    }
    /* tokens' activations, then two rows (640 bytes per 512 values each) */
    q8_tile_group *acts = scratch;
    q8_tile_group *dec = acts + (size_t)n_tok * ng;
    for (uint32_t t = 0; t < n_tok; t++)
        q8_tile_prep_act((const ds4_block_q8_0 *)((const uint8_t *)act + t * act_stride), nb, acts + (size_t)t * ng);
    for (uint32_t r0 = 0; r0 < n_rows; r0 += 2) {
        const uint32_t nr = n_rows - r0 < 2 ? n_rows - r0 : 2;
        for (uint32_t r = 0; r < nr; r++)
            q8_tile_prep_row((const ds4_block_q8_0 *)((const uint8_t *)w + (r0 + r) * w_stride), nb, dec + r * ng);
        /* a lone last row is paired with itself; a short last group of
         * tokens takes the kernel for its count */
        const q8_tile_group *w1 = dec + (nr - 1) * ng;
        for (uint32_t t0 = 0; t0 < n_tok; t0 += 4) {
            const uint32_t nt = n_tok - t0 < 4 ? n_tok - t0 : 4;
            const q8_tile_group *a4[4];
            for (uint32_t t = 0; t < 4; t++) a4[t] = acts + (size_t)(t0 + (t < nt ? t : 0)) * ng;
            float out[2][4];
            switch (nt) {
            case 1: q8_tile_2x1(dec, w1, a4, ng, out); break;
            case 2: q8_tile_2x2(dec, w1, a4, ng, out); break;
            case 3: q8_tile_2x3(dec, w1, a4, ng, out); break;
            default: q8_tile_2x4(dec, w1, a4, ng, out); break;
            }
            for (uint32_t r = 0; r < nr; r++)
                for (uint32_t t = 0; t < nt; t++) y[(t0 + t) * y_stride + r0 + r] = out[r][t];
        }
    }
}

#endif
