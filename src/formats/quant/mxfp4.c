/* MXFP4: 32 E2M1 values sharing an E8M0 power-of-two scale, in ggml's
 * block layout and in the sidecar's plane-split arrangement
 * (MXFP4_NATIVE). The dot kernels take Q8_0 activations. */
#include <math.h>

#include "formats/quant/internal.h"

/* E2M1 values times two: {0, .5, 1, 1.5, 2, 3, 4, 6} doubled, then the
 * negatives. Paired with ds4_e8m0_half (the scale halved) the products are
 * the true values. */
const int8_t ds4_e2m1_x2[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

/* Code of value j (0..31) of a block: split halves. */
static inline int mx_code(const ds4_block_mxfp4 *b, int j) {
    return j < 16 ? b->qs[j] & 15 : b->qs[j - 16] >> 4;
}

void ds4_mxfp4_dequantize(const void *src, float *dst, int64_t n) {
    const ds4_block_mxfp4 *b = src;
    for (int64_t i = 0; i < n / DS4_QK_MXFP4; i++) {
        const float d = ds4_e8m0_half(b[i].e);
        for (int j = 0; j < DS4_QK_MXFP4; j++)
            dst[i * DS4_QK_MXFP4 + j] = (float)ds4_e2m1_x2[mx_code(&b[i], j)] * d;
    }
}

/* Nearest E2M1 code for a value already divided by the block scale
 * 2^(e-127). Ties go to the smaller magnitude; zero keeps code 0 (+0). */
static int mx_nearest(float v) {
    static const float mid[7] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f};
    const float a = fabsf(v);
    int c = 0;
    while (c < 7 && a > mid[c]) c++;
    return (v < 0.0f && c > 0) ? c | 8 : c;
}

/* The OCP rule picks e = floor(log2(amax)) - 2 (so amax/2^e lands in
 * [4, 8)), which clips values above 6*2^e. One exponent higher never clips
 * but has coarser steps. Both are tried and the one with the smaller
 * (importance-weighted) squared error kept. */
void ds4_mxfp4_quantize(const float *src, void *dst, int64_t n, const float *imp) {
    ds4_block_mxfp4 *b = dst;
    for (int64_t i = 0; i < n / DS4_QK_MXFP4; i++) {
        const float *x = src + i * DS4_QK_MXFP4;
        const float *w = imp ? imp + i * DS4_QK_MXFP4 : NULL;
        float amax = 0.0f;
        for (int j = 0; j < DS4_QK_MXFP4; j++) amax = ds4_maxf(fabsf(x[j]), amax);
        memset(&b[i], 0, sizeof b[i]);
        if (!(amax > 0.0f) || !isfinite(amax)) continue;
        int k;
        (void)frexpf(amax, &k); /* amax = f * 2^k, f in [0.5, 1): floor(log2) = k-1 */
        const int e0 = (k - 1) - 2 + 127;
        double best = INFINITY;
        for (int e = e0; e <= e0 + 1; e++) {
            if (e < 0 || e > 254) continue;
            const float inv = ldexpf(1.0f, 127 - e); /* exact power of two */
            const float half = ds4_e8m0_half((uint8_t)e);
            uint8_t codes[DS4_QK_MXFP4];
            double err = 0.0;
            for (int j = 0; j < DS4_QK_MXFP4; j++) {
                codes[j] = (uint8_t)mx_nearest(x[j] * inv);
                const double diff = (double)x[j] - (double)ds4_e2m1_x2[codes[j]] * half;
                err += (w ? w[j] : 1.0) * diff * diff;
            }
            if (err < best) {
                best = err;
                b[i].e = (uint8_t)e;
                for (int j = 0; j < 16; j++) b[i].qs[j] = (uint8_t)(codes[j] | (codes[j + 16] << 4));
            }
        }
    }
}

float ds4_mxfp4_dot_scalar(int64_t n, const void *w, const void *act) {
    const ds4_block_mxfp4 *x = w;
    const ds4_block_q8_0 *y = act;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / DS4_QK_MXFP4; i++) {
        int isum = 0;
        for (int j = 0; j < 16; j++) {
            isum += ds4_e2m1_x2[x[i].qs[j] & 15] * y[i].qs[j];
            isum += ds4_e2m1_x2[x[i].qs[j] >> 4] * y[i].qs[j + 16];
        }
        sum += (float)isum * (ds4_e8m0_half(x[i].e) * ds4_q_half(y[i].d));
    }
    return sum;
}

#if DS4_QUANT_X86

/* Codes are looked up with pshufb in a table of |value|*2 (0..12) and the
 * sign bit (code & 8) is moved onto the activation, so the multiply is the
 * unsigned-by-signed maddubs / dpbusd. */
static const int8_t k_abs_x2[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, 1, 2, 3, 4, 6, 8, 12};

/* The 32 codes of a block in value order: low nibbles then high nibbles. */
DS4_TARGET_AVX2 static inline __m256i mx_codes_avx2(const uint8_t *qs) {
    const __m128i q = _mm_loadu_si128((const __m128i *)qs);
    const __m128i m4 = _mm_set1_epi8(15);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m4), _mm_and_si128(q, m4));
}

DS4_TARGET_AVX2 static inline __m256 mx_block_avx2(const ds4_block_mxfp4 *x, const ds4_block_q8_0 *y,
                                                   __m256i abs_tab) {
    const __m256i codes = mx_codes_avx2(x->qs);
    const __m256i mag = _mm256_shuffle_epi8(abs_tab, codes);
    /* sign_epi8 by a vector that is -1 where code & 8, +1 elsewhere */
    const __m256i neg = _mm256_cmpeq_epi8(_mm256_and_si256(codes, _mm256_set1_epi8(8)), _mm256_set1_epi8(8));
    const __m256i sgn = _mm256_or_si256(neg, _mm256_set1_epi8(1));
    const __m256i a = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)y->qs), sgn);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(mag, a), _mm256_set1_epi16(1)));
}

DS4_TARGET_AVX2 float ds4_mxfp4_dot_avx2(int64_t n, const void *w, const void *act) {
    const ds4_block_mxfp4 *x = w;
    const ds4_block_q8_0 *y = act;
    const __m256i abs_tab = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)k_abs_x2));
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    const int64_t nb = n / DS4_QK_MXFP4;
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        const float s0 = ds4_e8m0_half(x[i].e) * ds4_half_f16c(y[i].d);
        const float s1 = ds4_e8m0_half(x[i + 1].e) * ds4_half_f16c(y[i + 1].d);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(s0), mx_block_avx2(x + i, y + i, abs_tab), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(s1), mx_block_avx2(x + i + 1, y + i + 1, abs_tab), acc1);
    }
    if (i < nb) {
        const float s0 = ds4_e8m0_half(x[i].e) * ds4_half_f16c(y[i].d);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(s0), mx_block_avx2(x + i, y + i, abs_tab), acc0);
    }
    return ds4_hsum256(_mm256_add_ps(acc0, acc1));
}

DS4_TARGET_AVX512 float ds4_mxfp4_dot_avx512(int64_t n, const void *w, const void *act) {
    const ds4_block_mxfp4 *x = w;
    const ds4_block_q8_0 *y = act;
    const __m512i abs_tab = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)k_abs_x2));
    const __m512i eight = _mm512_set1_epi8(8);
    __m512 acc = _mm512_setzero_ps();
    const int64_t nb = n / DS4_QK_MXFP4;
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        const __m512i codes = _mm512_inserti64x4(_mm512_castsi256_si512(mx_codes_avx2(x[i].qs)),
                                                 mx_codes_avx2(x[i + 1].qs), 1);
        const __m512i mag = _mm512_shuffle_epi8(abs_tab, codes);
        const __m512i a = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)y[i].qs)),
                                             _mm256_loadu_si256((const __m256i *)y[i + 1].qs), 1);
        const __m512i sa = _mm512_mask_sub_epi8(a, _mm512_test_epi8_mask(codes, eight), _mm512_setzero_si512(), a);
        const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), mag, sa);
        const float s0 = ds4_e8m0_half(x[i].e) * ds4_half_f16c(y[i].d);
        const float s1 = ds4_e8m0_half(x[i + 1].e) * ds4_half_f16c(y[i + 1].d);
        const __m512 s = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(_mm256_set1_ps(s0))),
                                                             _mm256_castps_pd(_mm256_set1_ps(s1)), 1));
        acc = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(p), acc);
    }
    float tail = 0.0f;
    if (i < nb) {
        const __m256i abs256 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)k_abs_x2));
        tail = (ds4_e8m0_half(x[i].e) * ds4_half_f16c(y[i].d)) * ds4_hsum256(mx_block_avx2(x + i, y + i, abs256));
    }
    return ds4_hsum512(acc) + tail;
}

#endif

/* ======================================================================
 * MXFP4_NATIVE plane-split arrangement
 * ====================================================================== */

void ds4_mxfp4_native_plane_bytes(int64_t rows, int64_t cols, uint64_t *data_bytes, uint64_t *scale_bytes) {
    *data_bytes = (uint64_t)rows * (uint64_t)(cols / 2);
    *scale_bytes = (uint64_t)rows * (uint64_t)(cols / DS4_QK_MXFP4);
}

/* Code of value v of a native row: sequential pairs, low nibble first. */
static inline int native_code(const uint8_t *data_row, int64_t v) {
    return (data_row[v >> 1] >> (4 * (v & 1))) & 15;
}

void ds4_mxfp4_native_to_blocks(const uint8_t *data_plane, const uint8_t *scale_plane, int64_t rows,
                                int64_t cols, void *blocks) {
    ds4_block_mxfp4 *b = blocks;
    const int64_t nb = cols / DS4_QK_MXFP4;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *data = data_plane + r * (cols / 2);
        for (int64_t k = 0; k < nb; k++, b++) {
            b->e = scale_plane[r * nb + k];
            for (int j = 0; j < 16; j++)
                b->qs[j] = (uint8_t)(native_code(data, 32 * k + j) | (native_code(data, 32 * k + j + 16) << 4));
        }
    }
}

void ds4_mxfp4_blocks_to_native(const void *blocks, int64_t rows, int64_t cols, uint8_t *data_plane,
                                uint8_t *scale_plane) {
    const ds4_block_mxfp4 *b = blocks;
    const int64_t nb = cols / DS4_QK_MXFP4;
    for (int64_t r = 0; r < rows; r++) {
        uint8_t *data = data_plane + r * (cols / 2);
        for (int64_t k = 0; k < nb; k++, b++) {
            scale_plane[r * nb + k] = b->e;
            for (int j = 0; j < 32; j += 2)
                data[16 * k + j / 2] = (uint8_t)(mx_code(b, j) | (mx_code(b, j + 1) << 4));
        }
    }
}

void ds4_mxfp4_native_dequantize_row(const uint8_t *data_row, const uint8_t *scale_row, float *dst,
                                     int64_t cols) {
    for (int64_t v = 0; v < cols; v++)
        dst[v] = (float)ds4_e2m1_x2[native_code(data_row, v)] * ds4_e8m0_half(scale_row[v / DS4_QK_MXFP4]);
}

float ds4_mxfp4_native_dot(int64_t cols, const uint8_t *data_row, const uint8_t *scale_row, const void *act_q8_0) {
    const ds4_block_q8_0 *y = act_q8_0;
    float sum = 0.0f;
    for (int64_t k = 0; k < cols / DS4_QK_MXFP4; k++) {
        int isum = 0;
        for (int j = 0; j < 32; j++) isum += ds4_e2m1_x2[native_code(data_row, 32 * k + j)] * y[k].qs[j];
        sum += (float)isum * (ds4_e8m0_half(scale_row[k]) * ds4_q_half(y[k].d));
    }
    return sum;
}
