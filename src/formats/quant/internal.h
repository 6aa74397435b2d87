/* Shared internals of the quant module: the per-family entry points the
 * trait table (traits.c) wires up, the rounding helper, and the SIMD target
 * attributes. Not for use outside src/formats/quant/ and its tests. */
#ifndef DS4_FORMATS_QUANT_INTERNAL_H
#define DS4_FORMATS_QUANT_INTERNAL_H

#include <stdint.h>

#include "formats/quant.h"
#include "formats/quant/blocks.h"

/* Dequantizers must reproduce ggml's float results bit for bit, which forbids
 * the compiler from fusing `a*b - c` into one FMA. GCC in ISO C mode (our
 * -std=c11) never contracts; clang does unless told not to. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

/* x86 SIMD: each fast kernel is compiled for its ISA through a target
 * attribute, so the library runs (scalar) on any x86-64 and the dispatcher
 * picks a variant from what the CPU reports at run time. */
#if defined(__x86_64__) || defined(__i386__)
#define DS4_QUANT_X86 1
#include <immintrin.h>
#define DS4_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define DS4_TARGET_AVX512 \
    __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,avx512bitalg")))

/* Full unrolling of the small fixed loops of the tile kernels, so their
 * arrays of accumulators live in registers (GCC at -O2 would keep them in
 * memory). */
#define DS4_UNROLL _Pragma("GCC unroll 8")

/* fp16 -> f32 with the F16C instruction (exact, like ds4_f16_to_f32). */
DS4_TARGET_AVX2 static inline float ds4_half_f16c(uint16_t h) {
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

/* Decode streams every weight matrix once per token from memory. One
 * thread's demand loads plus the hardware prefetcher read ~31 GB/s here
 * (Zen 5 VM; `DS4_QUANT_BENCH=1` "DRAM tile 1 tok", Q8_0), against ~37
 * with a software prefetch this far ahead of the row being multiplied:
 * far enough to cover the memory latency at that rate, near enough to
 * stay in L2 until used. The memory-bound row kernels call it once per
 * 64 bytes they consume; prefetches never fault, so running past the end
 * of a matrix is harmless. */
#define DS4_PREFETCH_BYTES 16384
static inline void ds4_prefetch_ahead(const void *p) {
    _mm_prefetch((const char *)p + DS4_PREFETCH_BYTES, _MM_HINT_T0);
}

DS4_TARGET_AVX2 static inline float ds4_hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

DS4_TARGET_AVX2 static inline int ds4_hsum256_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

DS4_TARGET_AVX512 static inline float ds4_hsum512(__m512 v) {
    __m256 s = _mm256_add_ps(_mm512_castps512_ps256(v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    return ds4_hsum256(s);
}
#else
#define DS4_QUANT_X86 0
#endif

/* Round to nearest, ties to even, for |v| < 2^22. Adding 1.5*2^23 leaves no
 * fraction bits in the float, so the addition itself rounds (in the default
 * mode, to nearest-even); subtracting it again is exact. Cheaper than
 * lrintf, which is a library call unless errno handling is disabled. */
static inline int ds4_round_int(float v) {
    float t = v + 12582912.0f;
    return (int)(t - 12582912.0f);
}

/* min/max/clamp for the hot loops. fminf/fmaxf remain library calls in ISO
 * C mode (their NaN rules differ from the min/max instructions); these
 * compile to single instructions. A NaN in the first argument yields the
 * other bound, so a clamp maps NaN to lo and the int conversion that
 * usually follows stays defined. */
static inline float ds4_maxf(float a, float b) { return a > b ? a : b; }
static inline float ds4_minf(float a, float b) { return a < b ? a : b; }
static inline float ds4_clampf(float v, float lo, float hi) { return ds4_minf(ds4_maxf(v, lo), hi); }

/* IQ2_XXS grid as level codes (2 bits per element, element 0 lowest). */
extern const uint16_t ds4_iq2xxs_codes[256];

/* ---- per-family entry points (n = number of values, a multiple of the
 * block size; act = activation row in the type's activation format) ---- */

/* float rows */
void ds4_f32_dequantize(const void *src, float *dst, int64_t n);
void ds4_f16_dequantize(const void *src, float *dst, int64_t n);
void ds4_bf16_dequantize(const void *src, float *dst, int64_t n);
void ds4_f32_quantize(const float *src, void *dst, int64_t n, const float *imp);
void ds4_f16_quantize(const float *src, void *dst, int64_t n, const float *imp);
void ds4_bf16_quantize(const float *src, void *dst, int64_t n, const float *imp);
float ds4_f32_dot_scalar(int64_t n, const void *w, const float *x);
float ds4_f16_dot_scalar(int64_t n, const void *w, const float *x);
float ds4_bf16_dot_scalar(int64_t n, const void *w, const float *x);
float ds4_f32_dot_avx2(int64_t n, const void *w, const float *x);
float ds4_f16_dot_avx2(int64_t n, const void *w, const float *x);
float ds4_bf16_dot_avx2(int64_t n, const void *w, const float *x);
float ds4_f32_dot_avx512(int64_t n, const void *w, const float *x);
float ds4_f16_dot_avx512(int64_t n, const void *w, const float *x);
float ds4_bf16_dot_avx512(int64_t n, const void *w, const float *x);

/* Q8_0 (also the activation format for Q8_0 and MXFP4 weights) */
void ds4_q8_0_dequantize(const void *src, float *dst, int64_t n);
void ds4_q8_0_quantize(const float *src, void *dst, int64_t n, const float *imp);
void ds4_q8_0_quantize_avx512(const float *src, void *dst, int64_t n); /* activations: the same bytes */
float ds4_q8_0_dot_scalar(int64_t n, const void *w, const void *act);
float ds4_q8_0_dot_avx2(int64_t n, const void *w, const void *act);
float ds4_q8_0_dot_avx512(int64_t n, const void *w, const void *act);
void ds4_q8_0_tile_avx512(int64_t n, const void *w, size_t w_stride, uint32_t n_rows, const void *act,
                          size_t act_stride, uint32_t n_tok, float *y, size_t y_stride, void *scratch);

/* K-quants; Q8_K is the activation format for Q2_K, Q4_K and IQ2_XXS */
void ds4_q8_K_dequantize(const void *src, float *dst, int64_t n);
void ds4_q8_K_quantize(const float *src, void *dst, int64_t n, const float *imp);
void ds4_q2_K_dequantize(const void *src, float *dst, int64_t n);
void ds4_q2_K_quantize(const float *src, void *dst, int64_t n, const float *imp);
float ds4_q2_K_dot_scalar(int64_t n, const void *w, const void *act);
float ds4_q2_K_dot_avx2(int64_t n, const void *w, const void *act);
float ds4_q2_K_dot_avx512(int64_t n, const void *w, const void *act);
void ds4_q2_K_tile_avx512(int64_t n, const void *w, size_t w_stride, uint32_t n_rows, const void *act,
                          size_t act_stride, uint32_t n_tok, float *y, size_t y_stride, void *scratch);
void ds4_q4_K_dequantize(const void *src, float *dst, int64_t n);
void ds4_q4_K_quantize(const float *src, void *dst, int64_t n, const float *imp);
float ds4_q4_K_dot_scalar(int64_t n, const void *w, const void *act);
float ds4_q4_K_dot_avx2(int64_t n, const void *w, const void *act);
float ds4_q4_K_dot_avx512(int64_t n, const void *w, const void *act);

/* IQ2_XXS */
void ds4_iq2_xxs_dequantize(const void *src, float *dst, int64_t n);
void ds4_iq2_xxs_quantize(const float *src, void *dst, int64_t n, const float *imp);
float ds4_iq2_xxs_dot_scalar(int64_t n, const void *w, const void *act);
float ds4_iq2_xxs_dot_avx2(int64_t n, const void *w, const void *act);
float ds4_iq2_xxs_dot_avx512(int64_t n, const void *w, const void *act);
void ds4_iq2_xxs_tile_avx512(int64_t n, const void *w, size_t w_stride, uint32_t n_rows, const void *act,
                             size_t act_stride, uint32_t n_tok, float *y, size_t y_stride, void *scratch);

/* MXFP4 (ggml block layout) */
void ds4_mxfp4_dequantize(const void *src, float *dst, int64_t n);
void ds4_mxfp4_quantize(const float *src, void *dst, int64_t n, const float *imp);
float ds4_mxfp4_dot_scalar(int64_t n, const void *w, const void *act);
float ds4_mxfp4_dot_avx2(int64_t n, const void *w, const void *act);
float ds4_mxfp4_dot_avx512(int64_t n, const void *w, const void *act);

#endif
