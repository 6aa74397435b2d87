/* Quantized row formats: conversion to and from float, and dot products of a
 * weight row against an activation row.
 *
 * Supported weight types: F32, F16, BF16, Q8_0, Q2_K, Q4_K, IQ2_XXS, MXFP4
 * (ggml block layouts, see formats/quant/blocks.h), plus Q8_K as an
 * activation-only format. `n` is always a count of values and must be a
 * multiple of the type's block size (1 for the float types).
 *
 * Dot products work in two steps. An activation row x is quantized once into
 * the weight type's activation format (ds4_quantize_act: Q8_0 blocks of 32
 * for Q8_0 and MXFP4 weights, Q8_K blocks of 256 for Q2_K, Q4_K and IQ2_XXS,
 * plain f32 for the float types); then ds4_vec_dot(type, n, w_row, act) is
 * called for every weight row. The integer inner products are exact; the
 * result differs from the float dot product of the dequantized rows only by
 * float rounding of the per-block sums.
 *
 * Every dot kernel has a scalar reference and, on x86-64, AVX2 and AVX-512
 * (F + BW + VL + VNNI) variants, picked at run time from the CPU's features.
 * The environment variable DS4_SIMD=scalar|avx2|avx512 caps the choice;
 * ds4_simd_set() overrides it (tests use it to run every variant). */
#ifndef DS4_FORMATS_QUANT_H
#define DS4_FORMATS_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "formats/ggml_types.h"

typedef enum ds4_simd {
    DS4_SIMD_SCALAR = 0,
    DS4_SIMD_AVX2 = 1,   /* AVX2 + FMA + F16C */
    DS4_SIMD_AVX512 = 2, /* AVX-512 F/BW/VL/DQ + VNNI, VBMI, BITALG (Ice Lake, Zen 4 on) */
    DS4_SIMD_COUNT
} ds4_simd;

/* Dot product of a weight row (n values) with an activation row already in
 * the weight type's activation format. */
typedef float (*ds4_vec_dot_fn)(int64_t n, const void *w_row, const void *act);
/* Dot product of a float-type weight row with an f32 vector, accumulating in
 * fp32. */
typedef float (*ds4_dot_f32_fn)(int64_t n, const void *w_row, const float *x);
/* The same dot product for a tile of weight rows times a tile of activation
 * rows: y[t * y_stride + r] = vec_dot(n, w + r * w_stride, act + t *
 * act_stride) for r < n_rows, t < n_tok, bit for bit equal to the same
 * ISA's vec_dot (so prefill and decode agree exactly), but each weight row
 * is decoded once for all tokens. scratch: ds4_vec_dot_tile_scratch bytes,
 * 64-byte aligned. */
typedef void (*ds4_vec_dot_tile_fn)(int64_t n, const void *w, size_t w_stride, uint32_t n_rows, const void *act,
                                    size_t act_stride, uint32_t n_tok, float *y, size_t y_stride, void *scratch);

typedef struct ds4_quant_traits {
    uint32_t type;        /* enum ggml_type */
    const char *name;
    uint32_t block_elems; /* values per block */
    uint32_t block_bytes;
    uint32_t act_type;    /* activation format for vec_dot (GGML_TYPE_F32 for float rows) */
    /* dst gets n floats */
    void (*dequantize_row)(const void *src, float *dst, int64_t n);
    /* importance: optional per-value weights of the squared error (e.g. an
     * imatrix column vector, or column sums of w^2); NULL lets the
     * quantizer derive weights from the row itself. Ignored by types whose
     * quantization is a plain rounding (float types, Q8_0, Q8_K). */
    void (*quantize_row)(const float *src, void *dst, int64_t n, const float *importance);
    /* One entry per ISA; NULL where the type has no such variant. For the
     * float types vec_dot takes an f32 activation row (same as dot_f32). */
    ds4_vec_dot_fn vec_dot[DS4_SIMD_COUNT];
    ds4_dot_f32_fn dot_f32[DS4_SIMD_COUNT];
    /* Optional tile kernels; entry l matches vec_dot[l] bit for bit. */
    ds4_vec_dot_tile_fn vec_dot_tile[DS4_SIMD_COUNT];
} ds4_quant_traits;

/* NULL for types this module does not handle. */
const ds4_quant_traits *ds4_quant_traits_get(uint32_t type);
bool ds4_quant_supported(uint32_t type);
/* Bytes of one row of n values (n a multiple of the block size). */
size_t ds4_quant_row_bytes(uint32_t type, int64_t n);

void ds4_dequantize_row(uint32_t type, const void *src, float *dst, int64_t n);
void ds4_quantize_row(uint32_t type, const float *src, void *dst, int64_t n,
                      const float *importance);

/* Activation side of the dot products. */
uint32_t ds4_act_type(uint32_t w_type);
size_t ds4_act_row_bytes(uint32_t w_type, int64_t n);
void ds4_quantize_act(uint32_t w_type, const float *x, void *act, int64_t n);

/* Dot products with the active ISA. ds4_vec_dot_get / ds4_dot_f32_get return
 * the kernel once so loops over rows skip the per-call lookup. */
float ds4_vec_dot(uint32_t type, int64_t n, const void *w_row, const void *act);
ds4_vec_dot_fn ds4_vec_dot_get(uint32_t type);
/* The tile kernel matching ds4_vec_dot_get(type), or NULL when that ISA has
 * none for the type (then loop over vec_dot). */
ds4_vec_dot_tile_fn ds4_vec_dot_tile_get(uint32_t type);
/* Scratch a tile call of up to n_tok activation rows of n values needs. */
size_t ds4_vec_dot_tile_scratch(int64_t n, uint32_t n_tok);
/* Float weight types only (F32, F16, BF16). */
float ds4_dot_f32_row(uint32_t type, int64_t n, const void *w_row, const float *x);
ds4_dot_f32_fn ds4_dot_f32_get(uint32_t type);

/* ISA selection. The active level is the best the CPU supports, capped by
 * DS4_SIMD when set. */
ds4_simd ds4_simd_active(void);
bool ds4_simd_available(ds4_simd level);
/* Returns 0, or -1 (and changes nothing) when the CPU lacks the level. Not
 * thread-safe against concurrent dot calls; meant for start-up and tests. */
int ds4_simd_set(ds4_simd level);
const char *ds4_simd_name(ds4_simd level);

/* ---- MXFP4_NATIVE (sidecar "mxfp4_plane_split_v1") ----
 * One tensor of rows x cols values is stored as a data plane of
 * rows*cols/2 bytes (row-major; byte j of a row holds value 2j in its low
 * nibble and value 2j+1 in its high nibble: "FP4_E2M1_SEQPAIR") followed by
 * a scale plane of rows*cols/32 E8M0 bytes (one per 32 values of a row).
 * Same values as ggml MXFP4 blocks, different arrangement; cols must be a
 * multiple of 32. */
void ds4_mxfp4_native_plane_bytes(int64_t rows, int64_t cols, uint64_t *data_bytes,
                                  uint64_t *scale_bytes);
/* Planes -> ggml MXFP4 rows (rows * cols/32 blocks), and back. Lossless. */
void ds4_mxfp4_native_to_blocks(const uint8_t *data_plane, const uint8_t *scale_plane,
                                int64_t rows, int64_t cols, void *blocks);
void ds4_mxfp4_blocks_to_native(const void *blocks, int64_t rows, int64_t cols,
                                uint8_t *data_plane, uint8_t *scale_plane);
/* One row straight from the planes (data_row = cols/2 bytes, scale_row =
 * cols/32 bytes); bit-identical to dequantizing the repacked blocks. */
void ds4_mxfp4_native_dequantize_row(const uint8_t *data_row, const uint8_t *scale_row,
                                     float *dst, int64_t cols);
/* Dot of one native row with a Q8_0 activation row (scalar). */
float ds4_mxfp4_native_dot(int64_t cols, const uint8_t *data_row, const uint8_t *scale_row,
                           const void *act_q8_0);

#endif
