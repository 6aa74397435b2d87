/* The ggml tensor type numbering used by GGUF files, with each type's block
 * geometry. This table is the single source of truth for tensor byte sizes. */
#ifndef DS4_FORMATS_GGML_TYPES_H
#define DS4_FORMATS_GGML_TYPES_H

#include <stdbool.h>
#include <stdint.h>

enum ggml_type {
    GGML_TYPE_F32 = 0,
    GGML_TYPE_F16 = 1,
    GGML_TYPE_Q4_0 = 2,
    GGML_TYPE_Q4_1 = 3,
    GGML_TYPE_Q5_0 = 6,
    GGML_TYPE_Q5_1 = 7,
    GGML_TYPE_Q8_0 = 8,
    GGML_TYPE_Q8_1 = 9,
    GGML_TYPE_Q2_K = 10,
    GGML_TYPE_Q3_K = 11,
    GGML_TYPE_Q4_K = 12,
    GGML_TYPE_Q5_K = 13,
    GGML_TYPE_Q6_K = 14,
    GGML_TYPE_Q8_K = 15,
    GGML_TYPE_IQ2_XXS = 16,
    GGML_TYPE_IQ2_XS = 17,
    GGML_TYPE_I8 = 24,
    GGML_TYPE_I16 = 25,
    GGML_TYPE_I32 = 26,
    GGML_TYPE_I64 = 27,
    GGML_TYPE_F64 = 28,
    GGML_TYPE_BF16 = 30,
    GGML_TYPE_MXFP4 = 39,
    GGML_TYPE_COUNT_MAX = 64
};

typedef struct ggml_type_info {
    const char *name;
    uint32_t block_elems; /* values per block (1 for plain types) */
    uint32_t block_bytes; /* bytes per block */
} ggml_type_info;

/* NULL when the type is unknown to this engine. */
const ggml_type_info *ggml_type_get(uint32_t type);
const char *ggml_type_name(uint32_t type);
/* The type named `name` ("Q8_0", "iq2_xxs": any case), or
 * GGML_TYPE_COUNT_MAX when there is none. */
uint32_t ggml_type_from_name(const char *name);

/* Bytes taken by `elems` values laid out as rows of `row_elems` values
 * (row_elems must be a multiple of the block size; checked by the caller via
 * ggml_row_ok). Returns false on overflow or unknown type. */
bool ggml_nbytes(uint32_t type, uint64_t elems, uint64_t *out);
bool ggml_row_ok(uint32_t type, uint64_t row_elems);

#endif
