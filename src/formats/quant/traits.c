/* The per-type trait table and the public entry points that dispatch
 * through it. */
#include <assert.h>

#include "formats/quant/internal.h"

#if DS4_QUANT_X86
#define X86(f) f
#else
#define X86(f) NULL
#endif

#define DOTS(prefix) {prefix##_dot_scalar, X86(prefix##_dot_avx2), X86(prefix##_dot_avx512)}
/* Tile kernels exist for AVX-512 only; other levels loop over vec_dot. */
#define TILE512(prefix) {NULL, NULL, X86(prefix##_tile_avx512)}
#define NO_DOTS {NULL, NULL, NULL}

/* Float rows take an f32 activation, so their vec_dot is the f32 dot seen
 * through the generic signature. */
#define FLOAT_VEC_DOT(prefix, isa)                                                      \
    static float prefix##_vec_dot_##isa(int64_t n, const void *w, const void *act) {   \
        return prefix##_dot_##isa(n, w, (const float *)act);                            \
    }
#define FLOAT_TYPE_DOTS(prefix)  \
    FLOAT_VEC_DOT(prefix, scalar) \
    X86_FLOAT_VEC_DOT(prefix)

#if DS4_QUANT_X86
#define X86_FLOAT_VEC_DOT(prefix) FLOAT_VEC_DOT(prefix, avx2) FLOAT_VEC_DOT(prefix, avx512)
#define FLOAT_VDOTS(prefix) {prefix##_vec_dot_scalar, prefix##_vec_dot_avx2, prefix##_vec_dot_avx512}
#else
#define X86_FLOAT_VEC_DOT(prefix)
#define FLOAT_VDOTS(prefix) {prefix##_vec_dot_scalar, NULL, NULL}
#endif

FLOAT_TYPE_DOTS(ds4_f32)
FLOAT_TYPE_DOTS(ds4_f16)
FLOAT_TYPE_DOTS(ds4_bf16)

static const ds4_quant_traits k_traits[] = {
    {GGML_TYPE_F32, "F32", 1, 4, GGML_TYPE_F32, ds4_f32_dequantize, ds4_f32_quantize,
     FLOAT_VDOTS(ds4_f32), DOTS(ds4_f32), NO_DOTS},
    {GGML_TYPE_F16, "F16", 1, 2, GGML_TYPE_F32, ds4_f16_dequantize, ds4_f16_quantize,
     FLOAT_VDOTS(ds4_f16), DOTS(ds4_f16), NO_DOTS},
    {GGML_TYPE_BF16, "BF16", 1, 2, GGML_TYPE_F32, ds4_bf16_dequantize, ds4_bf16_quantize,
     FLOAT_VDOTS(ds4_bf16), DOTS(ds4_bf16), NO_DOTS},
    {GGML_TYPE_Q8_0, "Q8_0", DS4_QK8_0, sizeof(ds4_block_q8_0), GGML_TYPE_Q8_0,
     ds4_q8_0_dequantize, ds4_q8_0_quantize, DOTS(ds4_q8_0), NO_DOTS, TILE512(ds4_q8_0)},
    {GGML_TYPE_Q2_K, "Q2_K", DS4_QK_K, sizeof(ds4_block_q2_K), GGML_TYPE_Q8_K,
     ds4_q2_K_dequantize, ds4_q2_K_quantize, DOTS(ds4_q2_K), NO_DOTS, TILE512(ds4_q2_K)},
    {GGML_TYPE_Q4_K, "Q4_K", DS4_QK_K, sizeof(ds4_block_q4_K), GGML_TYPE_Q8_K,
     ds4_q4_K_dequantize, ds4_q4_K_quantize, DOTS(ds4_q4_K), NO_DOTS, NO_DOTS},
    {GGML_TYPE_Q8_K, "Q8_K", DS4_QK_K, sizeof(ds4_block_q8_K), GGML_TYPE_Q8_K,
     ds4_q8_K_dequantize, ds4_q8_K_quantize, NO_DOTS, NO_DOTS, NO_DOTS},
    {GGML_TYPE_IQ2_XXS, "IQ2_XXS", DS4_QK_K, sizeof(ds4_block_iq2_xxs), GGML_TYPE_Q8_K,
     ds4_iq2_xxs_dequantize, ds4_iq2_xxs_quantize, DOTS(ds4_iq2_xxs), NO_DOTS, TILE512(ds4_iq2_xxs)},
    {GGML_TYPE_MXFP4, "MXFP4", DS4_QK_MXFP4, sizeof(ds4_block_mxfp4), GGML_TYPE_Q8_0,
     ds4_mxfp4_dequantize, ds4_mxfp4_quantize, DOTS(ds4_mxfp4), NO_DOTS, NO_DOTS},
};

const ds4_quant_traits *ds4_quant_traits_get(uint32_t type) {
    for (size_t i = 0; i < sizeof k_traits / sizeof k_traits[0]; i++)
        if (k_traits[i].type == type) return &k_traits[i];
    return NULL;
}

bool ds4_quant_supported(uint32_t type) { return ds4_quant_traits_get(type) != NULL; }

/* Unsupported type or a length that is not a whole number of blocks is a
 * caller bug (tensor types and shapes are validated at load time), so the
 * hot entry points only assert. */
static const ds4_quant_traits *need(uint32_t type, int64_t n) {
    const ds4_quant_traits *t = ds4_quant_traits_get(type);
    assert(t && n >= 0 && n % t->block_elems == 0);
    (void)n;
    return t;
}

size_t ds4_quant_row_bytes(uint32_t type, int64_t n) {
    const ds4_quant_traits *t = need(type, n);
    return (size_t)(n / t->block_elems) * t->block_bytes;
}

void ds4_dequantize_row(uint32_t type, const void *src, float *dst, int64_t n) {
    need(type, n)->dequantize_row(src, dst, n);
}

void ds4_quantize_row(uint32_t type, const float *src, void *dst, int64_t n, const float *importance) {
    need(type, n)->quantize_row(src, dst, n, importance);
}

uint32_t ds4_act_type(uint32_t w_type) { return need(w_type, 0)->act_type; }

size_t ds4_act_row_bytes(uint32_t w_type, int64_t n) {
    return ds4_quant_row_bytes(ds4_act_type(w_type), n);
}

void ds4_quantize_act(uint32_t w_type, const float *x, void *act, int64_t n) {
#if DS4_QUANT_X86
    if (ds4_act_type(w_type) == GGML_TYPE_Q8_0 && ds4_simd_active() >= DS4_SIMD_AVX512) {
        ds4_q8_0_quantize_avx512(x, act, n);
        return;
    }
#endif
    ds4_quantize_row(ds4_act_type(w_type), x, act, n, NULL);
}

/* The active ISA may lack a variant for a type; fall back to the best lower
 * one (the scalar reference always exists). */
ds4_vec_dot_fn ds4_vec_dot_get(uint32_t type) {
    const ds4_quant_traits *t = need(type, 0);
    for (int l = ds4_simd_active(); l >= 0; l--)
        if (t->vec_dot[l]) return t->vec_dot[l];
    return NULL;
}

ds4_vec_dot_tile_fn ds4_vec_dot_tile_get(uint32_t type) {
    const ds4_quant_traits *t = need(type, 0);
    for (int l = ds4_simd_active(); l >= 0; l--)
        if (t->vec_dot[l]) return t->vec_dot_tile[l];
    return NULL;
}

/* Every tile kernel keeps at most: the tokens' activations re-encoded (at
 * most two bytes per value, plus up to 640 bytes of padding each, Q8_0's
 * last group of 16 blocks) and two decoded weight rows (at most 3 bytes
 * per value each, plus the same padding), plus alignment slack. */
size_t ds4_vec_dot_tile_scratch(int64_t n, uint32_t n_tok) {
    return (size_t)n_tok * (2 * (size_t)n + 640) + 6 * (size_t)n + 2 * 640 + 4096;
}

ds4_dot_f32_fn ds4_dot_f32_get(uint32_t type) {
    const ds4_quant_traits *t = need(type, 0);
    for (int l = ds4_simd_active(); l >= 0; l--)
        if (t->dot_f32[l]) return t->dot_f32[l];
    return NULL;
}

float ds4_vec_dot(uint32_t type, int64_t n, const void *w_row, const void *act) {
    return ds4_vec_dot_get(type)(n, w_row, act);
}

float ds4_dot_f32_row(uint32_t type, int64_t n, const void *w_row, const float *x) {
    ds4_dot_f32_fn f = ds4_dot_f32_get(type);
    assert(f);
    return f(n, w_row, x);
}
