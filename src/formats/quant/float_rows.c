/* F32, F16 and BF16 rows: conversion and fp32-accumulated dot products with
 * an f32 vector. Conversions are exact (F16/BF16 -> f32) or round to
 * nearest-even (f32 -> F16/BF16, util/half.h). */
#include "formats/quant/internal.h"

void ds4_f32_dequantize(const void *src, float *dst, int64_t n) {
    memcpy(dst, src, (size_t)n * sizeof(float));
}

void ds4_f16_dequantize(const void *src, float *dst, int64_t n) {
    const uint16_t *h = src;
    for (int64_t i = 0; i < n; i++) dst[i] = ds4_f16_to_f32(h[i]);
}

void ds4_bf16_dequantize(const void *src, float *dst, int64_t n) {
    const uint16_t *h = src;
    for (int64_t i = 0; i < n; i++) dst[i] = ds4_bf16_to_f32(h[i]);
}

void ds4_f32_quantize(const float *src, void *dst, int64_t n, const float *imp) {
    (void)imp;
    memcpy(dst, src, (size_t)n * sizeof(float));
}

void ds4_f16_quantize(const float *src, void *dst, int64_t n, const float *imp) {
    (void)imp;
    uint16_t *h = dst;
    for (int64_t i = 0; i < n; i++) h[i] = ds4_f32_to_f16(src[i]);
}

void ds4_bf16_quantize(const float *src, void *dst, int64_t n, const float *imp) {
    (void)imp;
    uint16_t *h = dst;
    for (int64_t i = 0; i < n; i++) h[i] = ds4_f32_to_bf16(src[i]);
}

/* ---- scalar references: one running fp32 sum, in index order ---- */

float ds4_f32_dot_scalar(int64_t n, const void *w, const float *x) {
    const float *v = w;
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += v[i] * x[i];
    return sum;
}

float ds4_f16_dot_scalar(int64_t n, const void *w, const float *x) {
    const uint16_t *h = w;
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += ds4_f16_to_f32(h[i]) * x[i];
    return sum;
}

float ds4_bf16_dot_scalar(int64_t n, const void *w, const float *x) {
    const uint16_t *h = w;
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += ds4_bf16_to_f32(h[i]) * x[i];
    return sum;
}

#if DS4_QUANT_X86

/* The SIMD versions keep four independent accumulators so consecutive FMAs
 * do not wait on each other, and finish the ragged end with the scalar
 * loop. Only the summation order differs from the reference. */

#define LOAD_F32_8(p) _mm256_loadu_ps(p)
#define LOAD_F16_8(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define LOAD_BF16_8(p) \
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))

#define DOT_AVX2(NAME, T, LOAD, SCALAR)                                           \
    DS4_TARGET_AVX2 float NAME(int64_t n, const void *w, const float *x) {      \
        const T *v = w;                                                           \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;               \
        int64_t i = 0;                                                            \
        for (; i + 32 <= n; i += 32) {                                            \
            a0 = _mm256_fmadd_ps(LOAD(v + i), _mm256_loadu_ps(x + i), a0);        \
            a1 = _mm256_fmadd_ps(LOAD(v + i + 8), _mm256_loadu_ps(x + i + 8), a1);  \
            a2 = _mm256_fmadd_ps(LOAD(v + i + 16), _mm256_loadu_ps(x + i + 16), a2); \
            a3 = _mm256_fmadd_ps(LOAD(v + i + 24), _mm256_loadu_ps(x + i + 24), a3); \
        }                                                                         \
        for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(LOAD(v + i), _mm256_loadu_ps(x + i), a0); \
        float sum = ds4_hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))); \
        return sum + SCALAR(n - i, v + i, x + i);                                 \
    }

DOT_AVX2(ds4_f32_dot_avx2, float, LOAD_F32_8, ds4_f32_dot_scalar)
DOT_AVX2(ds4_f16_dot_avx2, uint16_t, LOAD_F16_8, ds4_f16_dot_scalar)
DOT_AVX2(ds4_bf16_dot_avx2, uint16_t, LOAD_BF16_8, ds4_bf16_dot_scalar)

#define LOAD_F32_16(p) _mm512_loadu_ps(p)
#define LOAD_F16_16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define LOAD_BF16_16(p) \
    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))

#define DOT_AVX512(NAME, T, LOAD, TAIL)                                            \
    DS4_TARGET_AVX512 float NAME(int64_t n, const void *w, const float *x) {      \
        const T *v = w;                                                            \
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                \
        int64_t i = 0;                                                             \
        for (; i + 64 <= n; i += 64) {                                             \
            a0 = _mm512_fmadd_ps(LOAD(v + i), _mm512_loadu_ps(x + i), a0);         \
            a1 = _mm512_fmadd_ps(LOAD(v + i + 16), _mm512_loadu_ps(x + i + 16), a1); \
            a2 = _mm512_fmadd_ps(LOAD(v + i + 32), _mm512_loadu_ps(x + i + 32), a2); \
            a3 = _mm512_fmadd_ps(LOAD(v + i + 48), _mm512_loadu_ps(x + i + 48), a3); \
        }                                                                          \
        for (; i + 16 <= n; i += 16) a0 = _mm512_fmadd_ps(LOAD(v + i), _mm512_loadu_ps(x + i), a0); \
        float sum = ds4_hsum512(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3))); \
        return sum + TAIL(n - i, v + i, x + i);                                    \
    }

/* Fewer than 16 values left: the AVX2 kernel handles 8 at a time. */
DOT_AVX512(ds4_f32_dot_avx512, float, LOAD_F32_16, ds4_f32_dot_avx2)
DOT_AVX512(ds4_f16_dot_avx512, uint16_t, LOAD_F16_16, ds4_f16_dot_avx2)
DOT_AVX512(ds4_bf16_dot_avx512, uint16_t, LOAD_BF16_16, ds4_bf16_dot_avx2)

#endif
