#include "formats/ggml_types.h"

#include <stddef.h>
#include <strings.h>

static const ggml_type_info k_types[GGML_TYPE_COUNT_MAX] = {
    [GGML_TYPE_F32] = {"F32", 1, 4},
    [GGML_TYPE_F16] = {"F16", 1, 2},
    [GGML_TYPE_Q4_0] = {"Q4_0", 32, 18},
    [GGML_TYPE_Q4_1] = {"Q4_1", 32, 20},
    [GGML_TYPE_Q5_0] = {"Q5_0", 32, 22},
    [GGML_TYPE_Q5_1] = {"Q5_1", 32, 24},
    [GGML_TYPE_Q8_0] = {"Q8_0", 32, 34},
    [GGML_TYPE_Q8_1] = {"Q8_1", 32, 36},
    [GGML_TYPE_Q2_K] = {"Q2_K", 256, 84},
    [GGML_TYPE_Q3_K] = {"Q3_K", 256, 110},
    [GGML_TYPE_Q4_K] = {"Q4_K", 256, 144},
    [GGML_TYPE_Q5_K] = {"Q5_K", 256, 176},
    [GGML_TYPE_Q6_K] = {"Q6_K", 256, 210},
    [GGML_TYPE_Q8_K] = {"Q8_K", 256, 292},
    [GGML_TYPE_IQ2_XXS] = {"IQ2_XXS", 256, 66},
    [GGML_TYPE_IQ2_XS] = {"IQ2_XS", 256, 74},
    [GGML_TYPE_I8] = {"I8", 1, 1},
    [GGML_TYPE_I16] = {"I16", 1, 2},
    [GGML_TYPE_I32] = {"I32", 1, 4},
    [GGML_TYPE_I64] = {"I64", 1, 8},
    [GGML_TYPE_F64] = {"F64", 1, 8},
    [GGML_TYPE_BF16] = {"BF16", 1, 2},
    [GGML_TYPE_MXFP4] = {"MXFP4", 32, 17},
};

const ggml_type_info *ggml_type_get(uint32_t type) {
    if (type >= GGML_TYPE_COUNT_MAX || k_types[type].name == NULL) return NULL;
    return &k_types[type];
}

const char *ggml_type_name(uint32_t type) {
    const ggml_type_info *t = ggml_type_get(type);
    return t ? t->name : "unknown";
}

bool ggml_row_ok(uint32_t type, uint64_t row_elems) {
    const ggml_type_info *t = ggml_type_get(type);
    return t && row_elems % t->block_elems == 0;
}

bool ggml_nbytes(uint32_t type, uint64_t elems, uint64_t *out) {
    const ggml_type_info *t = ggml_type_get(type);
    if (!t) return false;
    uint64_t blocks = elems / t->block_elems + (elems % t->block_elems != 0);
    if (blocks > UINT64_MAX / t->block_bytes) return false;
    *out = blocks * t->block_bytes;
    return true;
}

uint32_t ggml_type_from_name(const char *name) {
    for (uint32_t t = 0; t < GGML_TYPE_COUNT_MAX; t++)
        if (k_types[t].name && !strcasecmp(k_types[t].name, name)) return t;
    return GGML_TYPE_COUNT_MAX;
}
