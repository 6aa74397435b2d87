/* safetensors checkpoints: a single file or a sharded set described by
 * model.safetensors.index.json. Files are mmap'ed; headers are parsed with
 * cJSON and every offset is checked against the file. */
#ifndef DS4_FORMATS_SAFETENSORS_H
#define DS4_FORMATS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "util/error.h"

enum st_dtype {
    ST_F32,
    ST_F16,
    ST_BF16,
    ST_F8_E4M3,
    ST_F8_E8M0, /* also accepted when the header says U8 for a scale */
    ST_U8,
    ST_I8,
    ST_I32,
    ST_I64,
    ST_F64,
};

#define ST_MAX_DIMS 8

typedef struct st_tensor {
    char *name;
    int dtype; /* enum st_dtype */
    uint32_t n_dims;
    uint64_t shape[ST_MAX_DIMS]; /* torch order: shape[n_dims-1] is contiguous */
    uint64_t n_elems;
    uint64_t nbytes;
    const void *data; /* into the owning shard's mapping */
    uint32_t shard;
} st_tensor;

typedef struct st_checkpoint st_checkpoint;

/* `path` is a .safetensors file, a model.safetensors.index.json, or a
 * directory holding either. */
st_checkpoint *st_open(const char *path, ds4_error *err);
void st_close(st_checkpoint *c);

size_t st_count(const st_checkpoint *c);
const st_tensor *st_at(const st_checkpoint *c, size_t i);
const st_tensor *st_find(const st_checkpoint *c, const char *name);
const char *st_dtype_name(int dtype);
size_t st_dtype_size(int dtype);

/* Converts n_elems values of a float-like tensor (F32/F16/BF16/F64/F8_E4M3)
 * to float32. Fails for integer and scale dtypes. */
int st_read_f32(const st_tensor *t, float *out, ds4_error *err);
/* Converts an integer tensor (I8/U8/I32/I64) to int64. */
int st_read_i64(const st_tensor *t, int64_t *out, ds4_error *err);

/* Path of shard i (st_tensor.shard), for error messages; NULL if out of range. */
const char *st_shard_path(const st_checkpoint *c, uint32_t shard);
/* Single-value decoders. E4M3 is the "fn" variant (no infinities, 0x7f/0xff
 * are NaN, max 448); E8M0 is an unsigned power of two 2^(b-127), 0xff NaN. */
float st_e4m3_to_f32(uint8_t b);
float st_e8m0_to_f32(uint8_t b);

#endif
