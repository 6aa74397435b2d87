/* GGUF v3 streaming writer.
 *
 * Metadata is serialized into memory as it is set (it is small next to the
 * tensors), tensor infos are collected with their offsets assigned at
 * declaration, and tensor bytes are streamed through a large stdio buffer so
 * a converter never needs a whole model in memory.
 *
 * The set/add functions take no error argument (the header fixes that), so
 * their first failure is kept in the writer and reported by
 * gguf_writer_begin_data; later calls are no-ops returning -1. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/ggml_types.h"
#include "formats/gguf.h"
#include "util/strmap.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "GGUF values are written as little-endian host values");

#define IO_BUFFER_BYTES (8u << 20)

typedef struct wtensor {
    char *name;
    uint32_t type;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS];
    uint64_t offset; /* relative to the data section */
    uint64_t nbytes;
} wtensor;

enum { ST_COLLECT, ST_DATA, ST_DONE };

struct gguf_writer {
    char *path;
    FILE *fp;
    char *iobuf;
    uint32_t alignment;
    int state;

    /* kv section, already serialized */
    uint8_t *kv_buf;
    size_t kv_len, kv_cap;
    uint64_t n_kv;
    char **keys; /* owned copies; the index points at them */
    size_t keys_cap;
    ds4_strmap key_index;
    bool align_key_set;
    uint32_t align_key_type;
    uint64_t align_key_value;

    wtensor *tensors;
    size_t n_tensors, tensors_cap;
    ds4_strmap tensor_index;
    uint64_t data_end; /* end of the last declared tensor */

    /* streaming state */
    uint64_t pos; /* bytes written to the file */
    uint64_t data_start;
    size_t cur;         /* tensor being written */
    uint64_t cur_done;  /* its bytes written so far */

    bool holes; /* some data was skipped (see gguf_writer_skip) */
    bool failed;
    ds4_error err; /* first failure (sticky) */
};

static int wfail(gguf_writer *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int wfail(gguf_writer *w, const char *fmt, ...) {
    if (w->failed) return -1;
    char detail[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    ds4_fail(&w->err, "%s: %s", w->path, detail);
    w->failed = true;
    return -1;
}

/* Copies the sticky error out to the caller. */
static int report(gguf_writer *w, ds4_error *err) {
    if (err) *err = w->err;
    return -1;
}

gguf_writer *gguf_writer_create(const char *path, uint32_t alignment, ds4_error *err) {
    if (alignment == 0 || (alignment & (alignment - 1))) {
        ds4_fail(err, "%s: alignment %" PRIu32 " is not a nonzero power of two", path, alignment);
        return NULL;
    }
    gguf_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->path = strdup(path)) || !(w->iobuf = malloc(IO_BUFFER_BYTES))) {
        ds4_fail(err, "%s: out of memory", path);
        gguf_writer_free(w);
        return NULL;
    }
    w->alignment = alignment;
    w->fp = fopen(path, "wb");
    if (!w->fp) {
        ds4_fail(err, "%s: cannot create: %s", path, strerror(errno));
        gguf_writer_free(w);
        return NULL;
    }
    setvbuf(w->fp, w->iobuf, _IOFBF, IO_BUFFER_BYTES);
    return w;
}

void gguf_writer_free(gguf_writer *w) {
    if (!w) return;
    if (w->fp) fclose(w->fp);
    free(w->iobuf);
    for (uint64_t i = 0; i < w->n_kv; i++) free(w->keys[i]);
    free(w->keys);
    free(w->kv_buf);
    ds4_strmap_free(&w->key_index);
    for (size_t i = 0; i < w->n_tensors; i++) free(w->tensors[i].name);
    free(w->tensors);
    ds4_strmap_free(&w->tensor_index);
    free(w->path);
    free(w);
}

/* ---------------------------------------------------------------------- */
/* Metadata. */

static int grow(void **arr, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : 64;
    while (n < need) {
        if (n > SIZE_MAX / 2) return -1;
        n *= 2;
    }
    if (n > SIZE_MAX / elem) return -1;
    void *p = realloc(*arr, n * elem);
    if (!p) return -1;
    *arr = p;
    *cap = n;
    return 0;
}

static int kv_put(gguf_writer *w, const void *data, size_t n) {
    if (n > SIZE_MAX - w->kv_len || grow((void **)&w->kv_buf, &w->kv_cap, w->kv_len + n, 1))
        return wfail(w, "out of memory for metadata");
    if (n) memcpy(w->kv_buf + w->kv_len, data, n);
    w->kv_len += n;
    return 0;
}

static int kv_put_u32(gguf_writer *w, uint32_t v) { return kv_put(w, &v, 4); }
static int kv_put_u64(gguf_writer *w, uint64_t v) { return kv_put(w, &v, 8); }
static int kv_put_str(gguf_writer *w, const char *s, size_t len) {
    return kv_put_u64(w, len) || kv_put(w, s, len) ? -1 : 0;
}

/* Starts a key: checks it, records it, and writes the key and type. */
static int kv_begin(gguf_writer *w, const char *key, uint32_t type) {
    if (w->failed) return -1;
    if (w->state != ST_COLLECT) return wfail(w, "key '%s' set after the header was written", key ? key : "(null)");
    if (!key || !*key) return wfail(w, "empty metadata key");
    if (grow((void **)&w->keys, &w->keys_cap, (size_t)w->n_kv + 1, sizeof(char *)))
        return wfail(w, "out of memory for metadata");
    char *copy = strdup(key);
    if (!copy) return wfail(w, "out of memory for metadata");
    int r = ds4_strmap_put(&w->key_index, copy, (size_t)w->n_kv, NULL);
    if (r <= 0) {
        free(copy);
        return r < 0 ? wfail(w, "out of memory for metadata") : wfail(w, "key '%s' set twice", key);
    }
    w->keys[w->n_kv++] = copy;
    return kv_put_str(w, key, strlen(key)) || kv_put_u32(w, type) ? -1 : 0;
}

static int set_scalar(gguf_writer *w, const char *key, uint32_t type, const void *v, uint64_t as_u64) {
    if (kv_begin(w, key, type)) return -1;
    if (strcmp(key, "general.alignment") == 0) {
        w->align_key_set = true;
        w->align_key_type = type;
        w->align_key_value = as_u64;
    }
    return kv_put(w, v, gguf_value_type_size(type));
}

int gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t v) { return set_scalar(w, key, GGUF_VT_U32, &v, v); }
int gguf_writer_set_i32(gguf_writer *w, const char *key, int32_t v) {
    return set_scalar(w, key, GGUF_VT_I32, &v, (uint64_t)(int64_t)v);
}
int gguf_writer_set_u64(gguf_writer *w, const char *key, uint64_t v) { return set_scalar(w, key, GGUF_VT_U64, &v, v); }
int gguf_writer_set_f32(gguf_writer *w, const char *key, float v) { return set_scalar(w, key, GGUF_VT_F32, &v, 0); }
int gguf_writer_set_f64(gguf_writer *w, const char *key, double v) { return set_scalar(w, key, GGUF_VT_F64, &v, 0); }
int gguf_writer_set_bool(gguf_writer *w, const char *key, bool v) {
    uint8_t b = v ? 1 : 0;
    return set_scalar(w, key, GGUF_VT_BOOL, &b, b);
}

int gguf_writer_set_val(gguf_writer *w, const char *key, uint32_t type, const void *v) {
    size_t sz = gguf_value_type_size(type);
    if (!sz) return wfail(w, "key '%s': value type %" PRIu32 " (%s) is not a fixed-size scalar", key ? key : "(null)",
                          type, gguf_value_type_name(type));
    if (!v) return wfail(w, "key '%s': NULL value", key ? key : "(null)");
    uint64_t u = 0;
    if (type == GGUF_VT_BOOL && *(const uint8_t *)v > 1) return wfail(w, "key '%s': bool value is not 0 or 1", key ? key : "(null)");
    if (type == GGUF_VT_U8 || type == GGUF_VT_U16 || type == GGUF_VT_U32 || type == GGUF_VT_U64 || type == GGUF_VT_BOOL)
        memcpy(&u, v, sz); /* little-endian: the low bytes */
    return set_scalar(w, key, type, v, u);
}

int gguf_writer_set_str(gguf_writer *w, const char *key, const char *v) {
    if (!v) return wfail(w, "key '%s': NULL string", key ? key : "(null)");
    if (kv_begin(w, key, GGUF_VT_STRING)) return -1;
    return kv_put_str(w, v, strlen(v));
}

int gguf_writer_set_arr(gguf_writer *w, const char *key, uint32_t elem_type, const void *data, uint64_t count) {
    size_t esz = gguf_value_type_size(elem_type);
    if (!esz) return wfail(w, "key '%s': array element type %" PRIu32 " (%s) is not numeric", key ? key : "(null)",
                           elem_type, gguf_value_type_name(elem_type));
    if (count > SIZE_MAX / esz) return wfail(w, "key '%s': array too large", key ? key : "(null)");
    if (count && !data) return wfail(w, "key '%s': NULL array data", key ? key : "(null)");
    if (elem_type == GGUF_VT_BOOL)
        for (uint64_t i = 0; i < count; i++)
            if (((const uint8_t *)data)[i] > 1)
                return wfail(w, "key '%s': bool array element %" PRIu64 " is not 0 or 1", key ? key : "(null)", i);
    if (kv_begin(w, key, GGUF_VT_ARRAY)) return -1;
    if (kv_put_u32(w, elem_type) || kv_put_u64(w, count)) return -1;
    return kv_put(w, data, (size_t)count * esz);
}

int gguf_writer_set_arr_str(gguf_writer *w, const char *key, const char *const *strs, uint64_t count) {
    if (count && !strs) return wfail(w, "key '%s': NULL string array", key ? key : "(null)");
    for (uint64_t i = 0; i < count; i++)
        if (!strs[i]) return wfail(w, "key '%s': string %" PRIu64 " is NULL", key ? key : "(null)", i);
    if (kv_begin(w, key, GGUF_VT_ARRAY)) return -1;
    if (kv_put_u32(w, GGUF_VT_STRING) || kv_put_u64(w, count)) return -1;
    for (uint64_t i = 0; i < count; i++)
        if (kv_put_str(w, strs[i], strlen(strs[i]))) return -1;
    return 0;
}

int gguf_writer_copy_kv(gguf_writer *w, const gguf_kv *kv) {
    if (!kv) return wfail(w, "NULL metadata entry to copy");
    if (kv->type == GGUF_VT_STRING) {
        if (kv_begin(w, kv->key, GGUF_VT_STRING)) return -1;
        return kv_put_str(w, kv->v.str.ptr, (size_t)kv->v.str.len);
    }
    if (kv->type == GGUF_VT_ARRAY) {
        if (kv->arr_type != GGUF_VT_STRING) return gguf_writer_set_arr(w, kv->key, kv->arr_type, kv->arr_data, kv->arr_count);
        if (kv_begin(w, kv->key, GGUF_VT_ARRAY)) return -1;
        if (kv_put_u32(w, GGUF_VT_STRING) || kv_put_u64(w, kv->arr_count)) return -1;
        for (uint64_t i = 0; i < kv->arr_count; i++)
            if (kv_put_str(w, kv->arr_strs[i].ptr, (size_t)kv->arr_strs[i].len)) return -1;
        return 0;
    }
    /* Scalars: the reader widened the value into the union; the low bytes
     * of the 64-bit form are the original little-endian value, except for
     * F32, which was widened to double and narrows back exactly. */
    uint8_t raw[8];
    if (kv->type == GGUF_VT_F32) {
        float f = (float)kv->v.f64;
        memcpy(raw, &f, 4);
    } else if (kv->type == GGUF_VT_F64) {
        memcpy(raw, &kv->v.f64, 8);
    } else {
        memcpy(raw, &kv->v.u64, 8);
    }
    return gguf_writer_set_val(w, kv->key, kv->type, raw);
}

/* ---------------------------------------------------------------------- */
/* Tensor declarations. */

static uint64_t pad_to(uint64_t x, uint64_t a) { return (a - x % a) % a; }

int gguf_writer_add_tensor(gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims, const uint64_t *ne) {
    if (w->failed) return -1;
    if (!name || !*name) return wfail(w, "tensor with an empty name");
    if (w->state != ST_COLLECT) return wfail(w, "tensor '%s' declared after the header was written", name);
    const ggml_type_info *ti = ggml_type_get(type);
    if (!ti) return wfail(w, "tensor '%s': unknown tensor type %" PRIu32, name, type);
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return wfail(w, "tensor '%s': n_dims %" PRIu32 " is out of range (1..%d)", name, n_dims, GGUF_MAX_DIMS);
    wtensor t = {.type = type, .n_dims = n_dims};
    uint64_t elems = 1;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) t.ne[d] = d < n_dims ? ne[d] : 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        if (t.ne[d] == 0) return wfail(w, "tensor '%s': ne[%" PRIu32 "] is 0", name, d);
        if (elems > UINT64_MAX / t.ne[d]) return wfail(w, "tensor '%s': element count overflows 64 bits", name);
        elems *= t.ne[d];
    }
    if (!ggml_row_ok(type, t.ne[0]))
        return wfail(w, "tensor '%s': ne[0] = %" PRIu64 " is not a multiple of the %s block size %" PRIu32, name,
                     t.ne[0], ti->name, ti->block_elems);
    if (!ggml_nbytes(type, elems, &t.nbytes)) return wfail(w, "tensor '%s': byte size overflows", name);
    uint64_t pad = pad_to(w->data_end, w->alignment);
    if (w->data_end > UINT64_MAX - pad || t.nbytes > UINT64_MAX - pad - w->data_end)
        return wfail(w, "tensor '%s': data section size overflows", name);
    t.offset = w->data_end + pad;

    if (grow((void **)&w->tensors, &w->tensors_cap, w->n_tensors + 1, sizeof(wtensor)))
        return wfail(w, "out of memory for tensor '%s'", name);
    if (!(t.name = strdup(name))) return wfail(w, "out of memory for tensor '%s'", name);
    int r = ds4_strmap_put(&w->tensor_index, t.name, w->n_tensors, NULL);
    if (r <= 0) {
        free(t.name);
        return r < 0 ? wfail(w, "out of memory for tensor '%s'", name) : wfail(w, "tensor '%s' declared twice", name);
    }
    w->tensors[w->n_tensors++] = t;
    w->data_end = t.offset + t.nbytes;
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Output. */

static int out(gguf_writer *w, const void *data, size_t n) {
    if (w->failed) return -1;
    if (n && fwrite(data, 1, n, w->fp) != n) return wfail(w, "write failed at offset %" PRIu64 ": %s", w->pos, strerror(errno));
    w->pos += n;
    return 0;
}

static int out_zeros(gguf_writer *w, uint64_t n) {
    static const uint8_t zeros[4096];
    while (n) {
        size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
        if (out(w, zeros, k)) return -1;
        n -= k;
    }
    return 0;
}

static int out_u32(gguf_writer *w, uint32_t v) { return out(w, &v, 4); }
static int out_u64(gguf_writer *w, uint64_t v) { return out(w, &v, 8); }

int gguf_writer_begin_data(gguf_writer *w, ds4_error *err) {
    if (w->failed) return report(w, err);
    if (w->state != ST_COLLECT) {
        wfail(w, "gguf_writer_begin_data called twice");
        return report(w, err);
    }
    /* The reader lays out the data with general.alignment (default 32), so
     * the key must agree with the layout alignment used here. */
    if (w->align_key_set && (w->align_key_type != GGUF_VT_U32 || w->align_key_value != w->alignment)) {
        wfail(w, "key 'general.alignment' (%s %" PRIu64 ") disagrees with the writer's alignment %" PRIu32,
              gguf_value_type_name(w->align_key_type), w->align_key_value, w->alignment);
        return report(w, err);
    }
    if (!w->align_key_set && w->alignment != GGUF_DEFAULT_ALIGNMENT) {
        wfail(w, "alignment %" PRIu32 " needs the key 'general.alignment' (readers assume %u)", w->alignment,
              GGUF_DEFAULT_ALIGNMENT);
        return report(w, err);
    }
    out_u32(w, GGUF_MAGIC);
    out_u32(w, GGUF_VERSION);
    out_u64(w, w->n_tensors);
    out_u64(w, w->n_kv);
    out(w, w->kv_buf, w->kv_len);
    for (size_t i = 0; i < w->n_tensors; i++) {
        const wtensor *t = &w->tensors[i];
        out_u64(w, strlen(t->name));
        out(w, t->name, strlen(t->name));
        out_u32(w, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims; d++) out_u64(w, t->ne[d]);
        out_u32(w, t->type);
        out_u64(w, t->offset);
    }
    out_zeros(w, pad_to(w->pos, w->alignment));
    if (w->failed) return report(w, err);
    w->data_start = w->pos;
    w->state = ST_DATA;
    w->cur = 0;
    w->cur_done = 0;
    /* The metadata is on its way to the file; no need to keep it. */
    free(w->kv_buf);
    w->kv_buf = NULL;
    w->kv_len = w->kv_cap = 0;
    return 0;
}

/* Moves the file position forward without writing: the bytes in between
 * read back as zeros, and on file systems with sparse files they take no
 * space. fseeko flushes stdio's buffer first. */
static int out_hole(gguf_writer *w, uint64_t n) {
    if (w->failed) return -1;
    if (!n) return 0;
    if (n > (uint64_t)INT64_MAX - w->pos || fseeko(w->fp, (off_t)n, SEEK_CUR) != 0)
        return wfail(w, "cannot seek past %" PRIu64 " bytes at offset %" PRIu64 ": %s", n, w->pos, strerror(errno));
    w->pos += n;
    w->holes = true;
    return 0;
}

/* Shared by write and skip: data == NULL leaves a hole. Padding after a
 * skipped tensor is a hole too (it reads as zeros either way). */
static int put_data(gguf_writer *w, const void *data, uint64_t n, ds4_error *err) {
    if (w->failed) return report(w, err);
    if (w->state != ST_DATA) {
        wfail(w, "tensor data written %s", w->state == ST_COLLECT ? "before gguf_writer_begin_data" : "after finish");
        return report(w, err);
    }
    const uint8_t *p = data;
    while (n) {
        if (w->cur >= w->n_tensors) {
            wfail(w, "%" PRIu64 " bytes written past the end of the last declared tensor", n);
            return report(w, err);
        }
        const wtensor *t = &w->tensors[w->cur];
        uint64_t left = t->nbytes - w->cur_done;
        uint64_t k = left < n ? left : n;
        if (p ? out(w, p, (size_t)k) : out_hole(w, k)) return report(w, err);
        if (p) p += k;
        n -= k;
        w->cur_done += k;
        if (w->cur_done == t->nbytes) {
            uint64_t pad = pad_to(w->pos - w->data_start, w->alignment);
            if (p ? out_zeros(w, pad) : out_hole(w, pad)) return report(w, err);
            w->cur++;
            w->cur_done = 0;
        }
    }
    return 0;
}

int gguf_writer_write(gguf_writer *w, const void *data, size_t n, ds4_error *err) {
    static const uint8_t none;
    /* a zero-length write must not be mistaken for a skip */
    return put_data(w, data ? data : &none, n, err);
}

int gguf_writer_skip(gguf_writer *w, uint64_t n, ds4_error *err) { return put_data(w, NULL, n, err); }

int gguf_writer_finish(gguf_writer *w, ds4_error *err) {
    if (w->failed) return report(w, err);
    if (w->state != ST_DATA) {
        wfail(w, "gguf_writer_finish called %s", w->state == ST_COLLECT ? "before gguf_writer_begin_data" : "twice");
        return report(w, err);
    }
    if (w->cur < w->n_tensors) {
        const wtensor *t = &w->tensors[w->cur];
        wfail(w, "tensor '%s': only %" PRIu64 " of %" PRIu64 " bytes written (%zu of %zu tensors complete)", t->name,
              w->cur_done, t->nbytes, w->cur, w->n_tensors);
        return report(w, err);
    }
    FILE *fp = w->fp;
    w->fp = NULL;
    w->state = ST_DONE;
    /* A hole at the very end is only a file position until the length is
     * set: without ftruncate the file would stop at the last real byte. */
    int bad = fflush(fp) != 0 || (w->holes && ftruncate(fileno(fp), (off_t)w->pos) != 0) || fsync(fileno(fp)) != 0;
    int saved = errno;
    if (fclose(fp) != 0 && !bad) {
        bad = 1;
        saved = errno;
    }
    if (bad) {
        wfail(w, "cannot flush to disk: %s", strerror(saved));
        return report(w, err);
    }
    return 0;
}
