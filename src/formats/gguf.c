/* GGUF v3 reader. The file is mapped read-only and parsed with a bounds-checked
 * cursor: every read states what it is reading so that a failure names the
 * field, and every count is checked against the bytes left before anything is
 * allocated for it, so a hostile header cannot make us allocate or walk past
 * the end of the file. */
#include "formats/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/ggml_types.h"
#include "util/strmap.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "GGUF values are read as little-endian host values");

/* The public struct plus the lookup indexes, which callers need not see. */
typedef struct gguf_file_impl {
    gguf_file pub;
    ds4_strmap kv_index;
    ds4_strmap tensor_index;
} gguf_file_impl;

static const gguf_file_impl *impl_of(const gguf_file *f) {
    /* pub is the first member, so the addresses coincide. */
    return (const gguf_file_impl *)(const void *)f;
}

/* Smallest encodings, used to reject counts that cannot fit in what is left
 * of the file before allocating anything for them. */
#define MIN_KV_BYTES 13u     /* key length (8) + value type (4) + 1-byte value */
#define MIN_TENSOR_BYTES 32u /* name length (8) + n_dims (4) + ne (8) + type (4) + offset (8) */

const char *gguf_value_type_name(uint32_t type) {
    static const char *const names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32",
                                        "bool", "string", "array", "u64", "i64", "f64"};
    return type < sizeof names / sizeof names[0] ? names[type] : "unknown";
}

size_t gguf_value_type_size(uint32_t type) {
    switch (type) {
    case GGUF_VT_U8: case GGUF_VT_I8: case GGUF_VT_BOOL: return 1;
    case GGUF_VT_U16: case GGUF_VT_I16: return 2;
    case GGUF_VT_U32: case GGUF_VT_I32: case GGUF_VT_F32: return 4;
    case GGUF_VT_U64: case GGUF_VT_I64: case GGUF_VT_F64: return 8;
    default: return 0;
    }
}

static bool type_is_signed(uint32_t t) {
    return t == GGUF_VT_I8 || t == GGUF_VT_I16 || t == GGUF_VT_I32 || t == GGUF_VT_I64;
}
static bool type_is_unsigned(uint32_t t) {
    return t == GGUF_VT_U8 || t == GGUF_VT_U16 || t == GGUF_VT_U32 || t == GGUF_VT_U64;
}
static bool type_is_float(uint32_t t) { return t == GGUF_VT_F32 || t == GGUF_VT_F64; }

/* ---------------------------------------------------------------------- */
/* Bounds-checked cursor over the mapping. */

typedef struct cursor {
    const char *path;
    const uint8_t *base;
    uint64_t size;
    uint64_t pos;
    ds4_error *err;
    char ctx[320]; /* what is being parsed: "key 'x'", "tensor #3", ... */
} cursor;

static int fail_at(cursor *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail_at(cursor *c, const char *fmt, ...) {
    char detail[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    if (c->ctx[0]) return ds4_fail(c->err, "%s: %s: %s", c->path, c->ctx, detail);
    return ds4_fail(c->err, "%s: %s", c->path, detail);
}

static uint64_t remaining(const cursor *c) { return c->size - c->pos; }

/* Advances over n bytes, returning their start in *out. */
static int take(cursor *c, uint64_t n, const uint8_t **out, const char *what) {
    *out = c->base + c->pos;
    if (n > remaining(c))
        return fail_at(c, "%s (offset %" PRIu64 ", %" PRIu64 " bytes) extends past end of file (size %" PRIu64 ")",
                       what, c->pos, n, c->size);
    c->pos += n;
    return 0;
}

static int rd_u32(cursor *c, uint32_t *v, const char *what) {
    const uint8_t *p;
    if (take(c, 4, &p, what)) return -1;
    memcpy(v, p, 4);
    return 0;
}

static int rd_u64(cursor *c, uint64_t *v, const char *what) {
    const uint8_t *p;
    if (take(c, 8, &p, what)) return -1;
    memcpy(v, p, 8);
    return 0;
}

static int rd_str(cursor *c, gguf_str *s, const char *what) {
    uint64_t len;
    const uint8_t *p;
    char lw[96];
    snprintf(lw, sizeof lw, "%s length", what);
    if (rd_u64(c, &len, lw)) return -1;
    if (len > remaining(c))
        return fail_at(c, "%s length %" PRIu64 " (at offset %" PRIu64 ") extends past end of file (size %" PRIu64 ")",
                       what, len, c->pos - 8, c->size);
    if (take(c, len, &p, what)) return -1;
    s->ptr = (const char *)p;
    s->len = len;
    return 0;
}

/* A nul-terminated copy of a name; names with embedded NULs are rejected
 * because they could not be looked up (and only a corrupt file has them). */
static int copy_name(cursor *c, gguf_str s, char **out, const char *what) {
    if (memchr(s.ptr, 0, s.len)) return fail_at(c, "%s contains a NUL byte", what);
    char *n = malloc(s.len + 1);
    if (!n) return fail_at(c, "out of memory for %s (%" PRIu64 " bytes)", what, s.len);
    memcpy(n, s.ptr, s.len);
    n[s.len] = 0;
    *out = n;
    return 0;
}

/* Decodes one fixed-size value at p into the kv's union. */
static void decode_scalar(uint32_t type, const uint8_t *p, gguf_kv *kv) {
    switch (type) {
    case GGUF_VT_U8: case GGUF_VT_BOOL: kv->v.u64 = p[0]; break;
    case GGUF_VT_I8: kv->v.i64 = (int8_t)p[0]; break;
    case GGUF_VT_U16: { uint16_t x; memcpy(&x, p, 2); kv->v.u64 = x; break; }
    case GGUF_VT_I16: { int16_t x; memcpy(&x, p, 2); kv->v.i64 = x; break; }
    case GGUF_VT_U32: { uint32_t x; memcpy(&x, p, 4); kv->v.u64 = x; break; }
    case GGUF_VT_I32: { int32_t x; memcpy(&x, p, 4); kv->v.i64 = x; break; }
    case GGUF_VT_F32: { float x; memcpy(&x, p, 4); kv->v.f64 = x; break; }
    case GGUF_VT_U64: memcpy(&kv->v.u64, p, 8); break;
    case GGUF_VT_I64: memcpy(&kv->v.i64, p, 8); break;
    case GGUF_VT_F64: memcpy(&kv->v.f64, p, 8); break;
    default: break;
    }
}

static int parse_array(cursor *c, gguf_kv *kv) {
    uint32_t et;
    uint64_t count;
    if (rd_u32(c, &et, "array element type")) return -1;
    if (et == GGUF_VT_ARRAY) return fail_at(c, "nested arrays are not supported");
    if (et > GGUF_VT_F64) return fail_at(c, "unknown array element type %" PRIu32, et);
    if (rd_u64(c, &count, "array count")) return -1;
    kv->arr_type = et;
    kv->arr_count = count;
    kv->arr_data = c->base + c->pos;

    size_t esz = gguf_value_type_size(et);
    if (esz) {
        if (count > remaining(c) / esz)
            return fail_at(c, "array count %" PRIu64 " of %s (%zu bytes each) can't fit in the %" PRIu64
                              " bytes left in the file",
                           count, gguf_value_type_name(et), esz, remaining(c));
        const uint8_t *p;
        if (take(c, count * esz, &p, "array data")) return -1;
        if (et == GGUF_VT_BOOL)
            for (uint64_t i = 0; i < count; i++)
                if (p[i] > 1) return fail_at(c, "bool array element %" PRIu64 " is %u (must be 0 or 1)", i, p[i]);
        return 0;
    }

    /* Strings: each takes at least its 8-byte length. Validate them all
     * first, so the index below is only allocated for strings that exist. */
    if (count > remaining(c) / 8)
        return fail_at(c, "string array count %" PRIu64 " can't fit in the %" PRIu64 " bytes left in the file", count,
                       remaining(c));
    uint64_t start = c->pos;
    char what[64];
    for (uint64_t i = 0; i < count; i++) {
        gguf_str s;
        snprintf(what, sizeof what, "string array element %" PRIu64, i);
        if (rd_str(c, &s, what)) return -1;
    }
    if (count == 0) return 0;
    if (count > SIZE_MAX / sizeof(gguf_str)) return fail_at(c, "string array count %" PRIu64 " too large", count);
    kv->arr_strs = malloc((size_t)count * sizeof(gguf_str));
    if (!kv->arr_strs) return fail_at(c, "out of memory for %" PRIu64 " array strings", count);
    c->pos = start;
    for (uint64_t i = 0; i < count; i++) (void)rd_str(c, &kv->arr_strs[i], "string");
    return 0;
}

static int parse_value(cursor *c, gguf_kv *kv) {
    uint32_t t = kv->type;
    if (t == GGUF_VT_STRING) return rd_str(c, &kv->v.str, "string value");
    if (t == GGUF_VT_ARRAY) return parse_array(c, kv);
    size_t sz = gguf_value_type_size(t);
    if (!sz) return fail_at(c, "unknown value type %" PRIu32, t);
    const uint8_t *p;
    if (take(c, sz, &p, "value")) return -1;
    if (t == GGUF_VT_BOOL && p[0] > 1) return fail_at(c, "bool value is %u (must be 0 or 1)", p[0]);
    decode_scalar(t, p, kv);
    return 0;
}

/* Grows a parse array geometrically, so a large claimed count costs memory
 * only for the entries that actually parse. */
static int grow_array(void **arr, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : 64;
    while (n < need) n *= 2;
    if (n > SIZE_MAX / elem) return -1;
    void *p = realloc(*arr, n * elem);
    if (!p) return -1;
    memset((char *)p + *cap * elem, 0, (n - *cap) * elem);
    *arr = p;
    *cap = n;
    return 0;
}

/* f->n_kv and f->n_tensors count what has been parsed so far (not what the
 * header claims), so gguf_close frees exactly that after a failure. */
static int parse_kvs(cursor *c, gguf_file_impl *fi, uint64_t n) {
    gguf_file *f = &fi->pub;
    size_t cap = 0;
    for (uint64_t i = 0; i < n; i++) {
        snprintf(c->ctx, sizeof c->ctx, "key/value #%" PRIu64, i);
        if (grow_array((void **)&f->kv, &cap, (size_t)i + 1, sizeof(gguf_kv)))
            return fail_at(c, "out of memory");
        gguf_kv *kv = &f->kv[i];
        gguf_str key;
        if (rd_str(c, &key, "key")) return -1;
        if (copy_name(c, key, &kv->key, "key")) return -1;
        f->n_kv++;
        snprintf(c->ctx, sizeof c->ctx, "key '%.200s'", kv->key);
        if (rd_u32(c, &kv->type, "value type")) return -1;
        if (parse_value(c, kv)) return -1;
        int r = ds4_strmap_put(&fi->kv_index, kv->key, (size_t)i, NULL);
        if (r < 0) return fail_at(c, "out of memory");
        if (r == 0) return fail_at(c, "duplicate key");
    }
    c->ctx[0] = 0;
    return 0;
}

static int read_alignment(cursor *c, gguf_file_impl *fi) {
    gguf_file *f = &fi->pub;
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    const gguf_kv *kv = gguf_find_kv(f, "general.alignment");
    if (!kv) return 0;
    snprintf(c->ctx, sizeof c->ctx, "key 'general.alignment'");
    uint64_t a;
    if (type_is_unsigned(kv->type)) a = kv->v.u64;
    else if (type_is_signed(kv->type) && kv->v.i64 > 0) a = (uint64_t)kv->v.i64;
    else if (type_is_signed(kv->type)) return fail_at(c, "alignment %" PRId64 " must be positive", kv->v.i64);
    else return fail_at(c, "alignment has type %s, expected u32", gguf_value_type_name(kv->type));
    if (a == 0 || (a & (a - 1)) || a > UINT32_MAX)
        return fail_at(c, "alignment %" PRIu64 " is not a nonzero power of two", a);
    f->alignment = (uint32_t)a;
    c->ctx[0] = 0;
    return 0;
}

static int parse_tensor_info(cursor *c, gguf_file_impl *fi, uint64_t i) {
    gguf_tensor *t = &fi->pub.tensors[i];
    snprintf(c->ctx, sizeof c->ctx, "tensor #%" PRIu64, i);
    gguf_str name;
    if (rd_str(c, &name, "name")) return -1;
    if (copy_name(c, name, &t->name, "name")) return -1;
    fi->pub.n_tensors++;
    snprintf(c->ctx, sizeof c->ctx, "tensor '%.200s'", t->name);
    int r = ds4_strmap_put(&fi->tensor_index, t->name, (size_t)i, NULL);
    if (r < 0) return fail_at(c, "out of memory");
    if (r == 0) return fail_at(c, "duplicate tensor name");

    if (rd_u32(c, &t->n_dims, "n_dims")) return -1;
    if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
        return fail_at(c, "n_dims %" PRIu32 " is out of range (1..%d)", t->n_dims, GGUF_MAX_DIMS);
    uint64_t elems = 1;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        if (rd_u64(c, &t->ne[d], "dimension")) return -1;
        if (t->ne[d] == 0) return fail_at(c, "ne[%" PRIu32 "] is 0", d);
        if (elems > UINT64_MAX / t->ne[d])
            return fail_at(c, "element count overflows 64 bits at ne[%" PRIu32 "] = %" PRIu64, d, t->ne[d]);
        elems *= t->ne[d];
    }
    t->n_elems = elems;
    if (rd_u32(c, &t->type, "type")) return -1;
    const ggml_type_info *ti = ggml_type_get(t->type);
    if (!ti) return fail_at(c, "unknown tensor type %" PRIu32, t->type);
    if (!ggml_row_ok(t->type, t->ne[0]))
        return fail_at(c, "ne[0] = %" PRIu64 " is not a multiple of the %s block size %" PRIu32, t->ne[0], ti->name,
                       ti->block_elems);
    if (!ggml_nbytes(t->type, elems, &t->nbytes))
        return fail_at(c, "byte size of %" PRIu64 " %s values overflows 64 bits", elems, ti->name);
    if (rd_u64(c, &t->offset, "offset")) return -1;
    if (t->offset % fi->pub.alignment)
        return fail_at(c, "offset %" PRIu64 " is not a multiple of the alignment %" PRIu32, t->offset,
                       fi->pub.alignment);
    return 0;
}

static int parse_tensors(cursor *c, gguf_file_impl *fi, uint64_t n) {
    gguf_file *f = &fi->pub;
    if (n > remaining(c) / MIN_TENSOR_BYTES)
        return fail_at(c, "tensor count %" PRIu64 " can't fit in the %" PRIu64 " bytes left after the metadata", n,
                       remaining(c));
    size_t cap = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (grow_array((void **)&f->tensors, &cap, (size_t)i + 1, sizeof(gguf_tensor)))
            return fail_at(c, "out of memory");
        if (parse_tensor_info(c, fi, i)) return -1;
    }
    c->ctx[0] = 0;

    /* The data section starts at the end of the header, aligned. */
    uint64_t a = f->alignment;
    f->data_offset = c->pos + (a - c->pos % a) % a;
    for (uint64_t i = 0; i < n; i++) {
        gguf_tensor *t = &f->tensors[i];
        uint64_t avail = f->data_offset <= c->size ? c->size - f->data_offset : 0;
        if (f->data_offset > c->size || t->offset > avail || t->nbytes > avail - t->offset)
            return ds4_fail(c->err,
                            "%s: tensor '%.200s': data (offset %" PRIu64 ", %" PRIu64
                            " bytes) extends past end of file (size %" PRIu64 ")",
                            c->path, t->name, f->data_offset + t->offset, t->nbytes, c->size);
        t->data = c->base + f->data_offset + t->offset;
    }
    return 0;
}

static int parse(cursor *c, gguf_file_impl *fi) {
    gguf_file *f = &fi->pub;
    uint32_t magic;
    if (rd_u32(c, &magic, "magic")) return -1;
    if (magic != GGUF_MAGIC)
        return fail_at(c, "bad magic 0x%08" PRIx32 " (expected 0x%08x, \"GGUF\"): not a GGUF file", magic, GGUF_MAGIC);
    if (rd_u32(c, &f->version, "version")) return -1;
    if (f->version != GGUF_VERSION)
        return fail_at(c, "unsupported GGUF version %" PRIu32 " (only %u is supported)", f->version, GGUF_VERSION);
    uint64_t n_tensors, n_kv;
    if (rd_u64(c, &n_tensors, "tensor count")) return -1;
    if (rd_u64(c, &n_kv, "key/value count")) return -1;
    if (n_kv > remaining(c) / MIN_KV_BYTES)
        return fail_at(c, "key/value count %" PRIu64 " can't fit in the %" PRIu64 " bytes left in the file", n_kv,
                       remaining(c));
    if (n_tensors > remaining(c) / MIN_TENSOR_BYTES)
        return fail_at(c, "tensor count %" PRIu64 " can't fit in the %" PRIu64 " bytes left in the file", n_tensors,
                       remaining(c));
    if (parse_kvs(c, fi, n_kv)) return -1;
    if (read_alignment(c, fi)) return -1;
    return parse_tensors(c, fi, n_tensors);
}

gguf_file *gguf_open(const char *path, ds4_error *err) {
    gguf_file_impl *fi = calloc(1, sizeof *fi);
    if (!fi) {
        ds4_fail(err, "%s: out of memory", path);
        return NULL;
    }
    gguf_file *f = &fi->pub;
    f->path = strdup(path);
    if (!f->path) {
        ds4_fail(err, "%s: out of memory", path);
        goto fail;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        ds4_fail(err, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ds4_fail(err, "%s: not a regular file", path);
        close(fd);
        goto fail;
    }
    if (st.st_size == 0) {
        ds4_fail(err, "%s: file is empty (size 0): magic (offset 0, 4 bytes) extends past end of file", path);
        close(fd);
        goto fail;
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        ds4_fail(err, "%s: file too large to map", path);
        close(fd);
        goto fail;
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        ds4_fail(err, "%s: mmap failed: %s", path, strerror(errno));
        goto fail;
    }
    f->map = map;
    f->map_size = (size_t)st.st_size;

    cursor c = {.path = path, .base = f->map, .size = f->map_size, .err = err};
    if (parse(&c, fi)) goto fail;
    return f;
fail:
    gguf_close(f);
    return NULL;
}

void gguf_close(gguf_file *f) {
    if (!f) return;
    gguf_file_impl *fi = (gguf_file_impl *)(void *)f;
    for (uint64_t i = 0; i < f->n_kv; i++) {
        free(f->kv[i].key);
        free(f->kv[i].arr_strs);
    }
    free(f->kv);
    for (uint64_t i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    ds4_strmap_free(&fi->kv_index);
    ds4_strmap_free(&fi->tensor_index);
    if (f->map) munmap((void *)f->map, f->map_size);
    free(f->path);
    free(fi);
}

/* ---------------------------------------------------------------------- */
/* Lookups and typed getters. */

const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key) {
    size_t i;
    if (!f || !key || !ds4_strmap_get(&impl_of(f)->kv_index, key, &i)) return NULL;
    return &f->kv[i];
}

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name) {
    size_t i;
    if (!f || !name || !ds4_strmap_get(&impl_of(f)->tensor_index, name, &i)) return NULL;
    return &f->tensors[i];
}

static const gguf_kv *need_kv(const gguf_file *f, const char *key, ds4_error *err) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) ds4_fail(err, "%s: key '%s' not found", f->path, key);
    return kv;
}

static int wrong_type(const gguf_file *f, const char *key, uint32_t type, const char *want, ds4_error *err) {
    return ds4_fail(err, "%s: key '%s' has type %s, expected %s", f->path, key, gguf_value_type_name(type), want);
}

int gguf_get_u64(const gguf_file *f, const char *key, uint64_t *out, ds4_error *err) {
    const gguf_kv *kv = need_kv(f, key, err);
    if (!kv) return -1;
    if (type_is_unsigned(kv->type)) {
        *out = kv->v.u64;
        return 0;
    }
    if (type_is_signed(kv->type)) {
        if (kv->v.i64 < 0)
            return ds4_fail(err, "%s: key '%s' is %" PRId64 ", expected a non-negative integer", f->path, key,
                            kv->v.i64);
        *out = (uint64_t)kv->v.i64;
        return 0;
    }
    return wrong_type(f, key, kv->type, "an integer", err);
}

int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out, ds4_error *err) {
    uint64_t v;
    if (gguf_get_u64(f, key, &v, err)) return -1;
    if (v > UINT32_MAX) return ds4_fail(err, "%s: key '%s' is %" PRIu64 ", which does not fit in u32", f->path, key, v);
    *out = (uint32_t)v;
    return 0;
}

int gguf_get_f64(const gguf_file *f, const char *key, double *out, ds4_error *err) {
    const gguf_kv *kv = need_kv(f, key, err);
    if (!kv) return -1;
    if (type_is_float(kv->type)) *out = kv->v.f64;
    else if (type_is_unsigned(kv->type)) *out = (double)kv->v.u64;
    else if (type_is_signed(kv->type)) *out = (double)kv->v.i64;
    else return wrong_type(f, key, kv->type, "a number", err);
    return 0;
}

int gguf_get_bool(const gguf_file *f, const char *key, bool *out, ds4_error *err) {
    const gguf_kv *kv = need_kv(f, key, err);
    if (!kv) return -1;
    if (kv->type != GGUF_VT_BOOL) return wrong_type(f, key, kv->type, "bool", err);
    *out = kv->v.u64 != 0;
    return 0;
}

int gguf_get_str(const gguf_file *f, const char *key, char **out, ds4_error *err) {
    const gguf_kv *kv = need_kv(f, key, err);
    if (!kv) return -1;
    if (kv->type != GGUF_VT_STRING) return wrong_type(f, key, kv->type, "string", err);
    char *s = malloc(kv->v.str.len + 1);
    if (!s) return ds4_fail(err, "%s: key '%s': out of memory", f->path, key);
    memcpy(s, kv->v.str.ptr, kv->v.str.len);
    s[kv->v.str.len] = 0;
    *out = s;
    return 0;
}

/* Loads numeric array element i into a scratch kv (same decoding as scalars). */
static int arr_elem(const gguf_file *f, const gguf_kv *kv, uint64_t i, gguf_kv *tmp, ds4_error *err) {
    const char *path = f ? f->path : "gguf";
    const char *key = kv && kv->key ? kv->key : "?";
    if (!kv || kv->type != GGUF_VT_ARRAY)
        return ds4_fail(err, "%s: key '%s' has type %s, expected array", path, key,
                        kv ? gguf_value_type_name(kv->type) : "none");
    size_t esz = gguf_value_type_size(kv->arr_type);
    if (!esz) return ds4_fail(err, "%s: key '%s' is an array of %s, expected numbers", path, key,
                              gguf_value_type_name(kv->arr_type));
    if (i >= kv->arr_count)
        return ds4_fail(err, "%s: key '%s': index %" PRIu64 " out of range (count %" PRIu64 ")", path, key, i,
                        kv->arr_count);
    tmp->type = kv->arr_type;
    decode_scalar(kv->arr_type, kv->arr_data + i * esz, tmp);
    return 0;
}

int gguf_arr_get_f64(const gguf_file *f, const gguf_kv *kv, uint64_t i, double *out, ds4_error *err) {
    gguf_kv e;
    if (arr_elem(f, kv, i, &e, err)) return -1;
    if (type_is_float(e.type)) *out = e.v.f64;
    else if (type_is_signed(e.type)) *out = (double)e.v.i64;
    else *out = (double)e.v.u64; /* unsigned and bool */
    return 0;
}

int gguf_arr_get_i64(const gguf_file *f, const gguf_kv *kv, uint64_t i, int64_t *out, ds4_error *err) {
    gguf_kv e;
    if (arr_elem(f, kv, i, &e, err)) return -1;
    const char *path = f ? f->path : "gguf";
    if (type_is_signed(e.type)) {
        *out = e.v.i64;
    } else if (type_is_float(e.type)) {
        /* Only integral values in range convert exactly. */
        double d = e.v.f64;
        if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0) || d != floor(d))
            return ds4_fail(err, "%s: key '%s': element %" PRIu64 " (%g) is not an int64 value", path, kv->key, i, d);
        *out = (int64_t)d;
    } else {
        if (e.v.u64 > INT64_MAX)
            return ds4_fail(err, "%s: key '%s': element %" PRIu64 " (%" PRIu64 ") does not fit in int64", path,
                            kv->key, i, e.v.u64);
        *out = (int64_t)e.v.u64;
    }
    return 0;
}

gguf_str gguf_arr_str(const gguf_kv *kv, uint64_t i) {
    gguf_str none = {NULL, 0};
    if (!kv || kv->type != GGUF_VT_ARRAY || kv->arr_type != GGUF_VT_STRING || i >= kv->arr_count || !kv->arr_strs)
        return none;
    return kv->arr_strs[i];
}
