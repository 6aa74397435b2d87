/* GGUF v3: an mmap-based reader and a streaming writer.
 *
 * The reader validates every count, string length, dimension, offset and size
 * against the file before anything points into it, so a corrupt or hostile
 * file produces an error naming the file and the field, never a crash.
 * Tensor data is never copied: gguf_tensor.data points into the mapping. */
#ifndef DS4_FORMATS_GGUF_H
#define DS4_FORMATS_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/error.h"

#define GGUF_MAGIC 0x46554747u /* "GGUF" little endian */
#define GGUF_VERSION 3u
#define GGUF_DEFAULT_ALIGNMENT 32u
#define GGUF_MAX_DIMS 4

enum gguf_value_type {
    GGUF_VT_U8 = 0,
    GGUF_VT_I8 = 1,
    GGUF_VT_U16 = 2,
    GGUF_VT_I16 = 3,
    GGUF_VT_U32 = 4,
    GGUF_VT_I32 = 5,
    GGUF_VT_F32 = 6,
    GGUF_VT_BOOL = 7,
    GGUF_VT_STRING = 8,
    GGUF_VT_ARRAY = 9,
    GGUF_VT_U64 = 10,
    GGUF_VT_I64 = 11,
    GGUF_VT_F64 = 12,
};

typedef struct gguf_str {
    const char *ptr; /* points into the mapping: NOT nul-terminated */
    uint64_t len;
} gguf_str;

typedef struct gguf_kv {
    char *key;     /* nul-terminated copy */
    uint32_t type; /* enum gguf_value_type */
    union {
        uint64_t u64; /* any unsigned integer type, and bool (0/1) */
        int64_t i64;  /* any signed integer type */
        double f64;   /* F32 / F64 */
        gguf_str str;
    } v;
    /* Arrays: element type and count; elements start at arr_data in the
     * mapping (for string arrays use arr_strs or gguf_arr_str). */
    uint32_t arr_type;
    uint64_t arr_count;
    const uint8_t *arr_data;
    gguf_str *arr_strs; /* string arrays only: arr_count entries (owned) */
} gguf_kv;

typedef struct gguf_tensor {
    char *name; /* nul-terminated copy */
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS]; /* unused dims are 1; ne[0] is contiguous */
    uint32_t type;              /* enum ggml_type */
    uint64_t offset;            /* relative to the data section */
    uint64_t nbytes;
    uint64_t n_elems;
    const void *data; /* into the mapping */
} gguf_tensor;

typedef struct gguf_file {
    char *path;
    const uint8_t *map;
    size_t map_size;
    uint32_t version;
    uint32_t alignment;
    uint64_t data_offset; /* absolute offset of the aligned data section */
    uint64_t n_kv;
    gguf_kv *kv;
    uint64_t n_tensors;
    gguf_tensor *tensors;
} gguf_file;

/* Opens and fully validates `path`. On failure returns NULL and err names
 * the file and the offending field. */
gguf_file *gguf_open(const char *path, ds4_error *err);
void gguf_close(gguf_file *f);

const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key);
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name);

/* Typed getters. They fail (returning -1 and naming file and key) when the
 * key is absent or its type cannot represent the request exactly.
 * gguf_get_u32 accepts any integer type whose value fits; gguf_get_f64
 * accepts float and integer types; gguf_get_str returns a malloc'd copy. */
int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out, ds4_error *err);
int gguf_get_u64(const gguf_file *f, const char *key, uint64_t *out, ds4_error *err);
int gguf_get_f64(const gguf_file *f, const char *key, double *out, ds4_error *err);
int gguf_get_bool(const gguf_file *f, const char *key, bool *out, ds4_error *err);
int gguf_get_str(const gguf_file *f, const char *key, char **out, ds4_error *err);
/* Numeric array element i converted to double / int64 (any numeric elem type). */
int gguf_arr_get_f64(const gguf_file *f, const gguf_kv *kv, uint64_t i, double *out, ds4_error *err);
int gguf_arr_get_i64(const gguf_file *f, const gguf_kv *kv, uint64_t i, int64_t *out, ds4_error *err);
/* String array element i; {NULL, 0} when kv is not a string array or i is
 * out of range. */
gguf_str gguf_arr_str(const gguf_kv *kv, uint64_t i);
/* "u32", "string", "array", ... ("unknown" for anything else). */
const char *gguf_value_type_name(uint32_t type);
/* Bytes of one value of a fixed-size type (0 for string, array, unknown). */
size_t gguf_value_type_size(uint32_t type);

/* ---------------------------------------------------------------------- */
/* Streaming writer. Metadata and tensor infos are collected first; then
 * gguf_writer_begin_data writes the header, and tensor bytes are streamed in
 * the declared order with gguf_writer_write_tensor (which may be called
 * with the data in pieces). gguf_writer_finish pads and closes the file.
 * The writer writes to `path` directly; callers wanting atomicity write to a
 * temporary name and rename (see util/fileio.h). */

typedef struct gguf_writer gguf_writer;

gguf_writer *gguf_writer_create(const char *path, uint32_t alignment, ds4_error *err);
/* Frees everything; removes nothing. Safe on NULL. */
void gguf_writer_free(gguf_writer *w);

int gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t v);
int gguf_writer_set_i32(gguf_writer *w, const char *key, int32_t v);
int gguf_writer_set_u64(gguf_writer *w, const char *key, uint64_t v);
int gguf_writer_set_f32(gguf_writer *w, const char *key, float v);
int gguf_writer_set_f64(gguf_writer *w, const char *key, double v);
int gguf_writer_set_bool(gguf_writer *w, const char *key, bool v);
int gguf_writer_set_str(gguf_writer *w, const char *key, const char *v);
/* Any fixed-size scalar type (u8 .. f64, bool): `v` points at one value in
 * that type's little-endian representation. */
int gguf_writer_set_val(gguf_writer *w, const char *key, uint32_t type, const void *v);
/* Numeric arrays: elem_type is a gguf_value_type of a numeric kind; `data`
 * holds count elements in that type's little-endian representation. */
int gguf_writer_set_arr(gguf_writer *w, const char *key, uint32_t elem_type, const void *data, uint64_t count);
int gguf_writer_set_arr_str(gguf_writer *w, const char *key, const char *const *strs, uint64_t count);
/* Copies one metadata entry of an open file exactly: same key, same value
 * type (u8 stays u8), string bytes with their lengths. */
int gguf_writer_copy_kv(gguf_writer *w, const gguf_kv *kv);

/* Declares a tensor (dims with ne[0] contiguous). Offsets are assigned in
 * declaration order, each aligned. */
int gguf_writer_add_tensor(gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims, const uint64_t *ne);

/* Writes the header (magic .. tensor infos .. padding). After this only
 * tensor bytes may be written. */
int gguf_writer_begin_data(gguf_writer *w, ds4_error *err);
/* Appends bytes of the current tensor; when a tensor's declared size is
 * complete, the writer pads to alignment and moves to the next one. */
int gguf_writer_write(gguf_writer *w, const void *data, size_t n, ds4_error *err);
/* Advances over n bytes of tensor data without writing them, like
 * gguf_writer_write with n zero bytes but leaving a hole in the file (no
 * disk space on file systems with sparse files; zero blocks are valid in
 * every ggml type). Used to make huge test models instantly. */
int gguf_writer_skip(gguf_writer *w, uint64_t n, ds4_error *err);
/* Verifies all declared tensors were fully written, flushes and closes. */
int gguf_writer_finish(gguf_writer *w, ds4_error *err);

#endif
