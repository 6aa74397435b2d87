/* GGUF reader/writer: a round trip through every value type and several
 * tensor types and alignments; hand-built malformed files, each of which must
 * be rejected with a message naming the file and the problem; every
 * truncation of a valid file; and a fixed-seed mutation fuzz loop (run it
 * under `make san-test` to catch out-of-bounds reads). */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/ggml_types.h"
#include "formats/gguf.h"
#include "../harness.h"
#include "util/fileio.h"

/* ---------------------------------------------------------------------- */
/* Helpers. */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void) {
    /* xorshift64*: deterministic across platforms */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static int write_bytes(const char *path, const void *p, size_t n) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return -1;
    size_t k = n ? fwrite(p, 1, n, fp) : 0;
    return fclose(fp) == 0 && k == n ? 0 : -1;
}

static uint8_t *read_all(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long len = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *p = malloc(len > 0 ? (size_t)len : 1);
    *n = fread(p, 1, (size_t)len, fp);
    fclose(fp);
    return p;
}

static bool contains(const char *s, const char *sub) { return strstr(s, sub) != NULL; }

/* Opens path expecting failure whose message names the file and holds each
 * of the given substrings. */
static void expect_fail(const char *path, const char *what, const char *sub1, const char *sub2) {
    ds4_error err = {{0}};
    gguf_file *f = gguf_open(path, &err);
    CHECKF(f == NULL, "%s: open succeeded", what);
    if (f) {
        gguf_close(f);
        return;
    }
    printf("%-18s -> %s\n", what, err.msg);
    CHECKF(contains(err.msg, path), "%s: message does not name the file: %s", what, err.msg);
    CHECKF(!sub1 || contains(err.msg, sub1), "%s: message lacks '%s': %s", what, sub1, err.msg);
    CHECKF(!sub2 || contains(err.msg, sub2), "%s: message lacks '%s': %s", what, sub2, err.msg);
}

/* ---------------------------------------------------------------------- */
/* Round trip. */

#define N_STRS 130000u

typedef struct tdesc {
    const char *name;
    uint32_t type;
    uint32_t n_dims;
    uint64_t ne[4];
    uint64_t nbytes;
    uint8_t *data;
} tdesc;

static tdesc k_tensors[] = {
    {"a.f32", GGML_TYPE_F32, 2, {7, 3, 1, 1}, 0, NULL},
    {"b.f16", GGML_TYPE_F16, 1, {5, 1, 1, 1}, 0, NULL},
    {"c.bf16", GGML_TYPE_BF16, 3, {3, 2, 2, 1}, 0, NULL},
    {"blk.0.q8", GGML_TYPE_Q8_0, 2, {64, 3, 1, 1}, 0, NULL},
    {"d.i32", GGML_TYPE_I32, 4, {1, 1, 1, 9}, 0, NULL},
    {"e.f32.one", GGML_TYPE_F32, 1, {1, 1, 1, 1}, 0, NULL},
};
#define N_TENSORS (sizeof k_tensors / sizeof k_tensors[0])

static char *str_i(uint32_t i) {
    /* lengths vary 0..~20; entry 0 is empty */
    char *s = malloc(32);
    if (i == 0) s[0] = 0;
    else snprintf(s, 32, "t%" PRIu32 "%.*s", i, (int)(i % 11), "xxxxxxxxxxx");
    return s;
}

static int write_roundtrip(const char *path, uint32_t align, bool big, ds4_error *err) {
    gguf_writer *w = gguf_writer_create(path, align, err);
    if (!w) return -1;
    gguf_writer_set_u32(w, "general.alignment", align);
    gguf_writer_set_str(w, "general.name", "round trip");
    gguf_writer_set_u32(w, "v.u32", 4000000000u);
    gguf_writer_set_i32(w, "v.i32", -123456);
    gguf_writer_set_u64(w, "v.u64", 0xfedcba9876543210ull);
    gguf_writer_set_f32(w, "v.f32", 0.1f);
    gguf_writer_set_f64(w, "v.f64", -1e300);
    gguf_writer_set_bool(w, "v.bool", true);
    gguf_writer_set_str(w, "v.str.empty", "");
    uint8_t u8 = 250;
    int8_t i8 = -100;
    uint16_t u16 = 65000;
    int16_t i16 = -32000;
    int64_t i64 = INT64_MIN;
    uint8_t b0 = 0;
    gguf_writer_set_val(w, "v.u8", GGUF_VT_U8, &u8);
    gguf_writer_set_val(w, "v.i8", GGUF_VT_I8, &i8);
    gguf_writer_set_val(w, "v.u16", GGUF_VT_U16, &u16);
    gguf_writer_set_val(w, "v.i16", GGUF_VT_I16, &i16);
    gguf_writer_set_val(w, "v.i64", GGUF_VT_I64, &i64);
    gguf_writer_set_val(w, "v.bool.false", GGUF_VT_BOOL, &b0);

    uint32_t au32[5] = {0, 1, 2, 0xffffffffu, 77};
    float af32[4] = {1.5f, -2.25f, 3e38f, -0.0f};
    int8_t ai8[3] = {-128, 0, 127};
    uint16_t au16[2] = {1, 65535};
    int16_t ai16[2] = {-32768, 32767};
    int32_t ai32[3] = {INT32_MIN, -1, INT32_MAX};
    uint64_t au64[2] = {0, UINT64_MAX};
    int64_t ai64[2] = {INT64_MIN, INT64_MAX};
    double af64[2] = {1e-300, 2.5};
    uint8_t abool[3] = {1, 0, 1};
    uint8_t au8[4] = {0, 1, 128, 255};
    gguf_writer_set_arr(w, "a.u8", GGUF_VT_U8, au8, 4);
    gguf_writer_set_arr(w, "a.i8", GGUF_VT_I8, ai8, 3);
    gguf_writer_set_arr(w, "a.u16", GGUF_VT_U16, au16, 2);
    gguf_writer_set_arr(w, "a.i16", GGUF_VT_I16, ai16, 2);
    gguf_writer_set_arr(w, "a.u32", GGUF_VT_U32, au32, 5);
    gguf_writer_set_arr(w, "a.i32", GGUF_VT_I32, ai32, 3);
    gguf_writer_set_arr(w, "a.f32", GGUF_VT_F32, af32, 4);
    gguf_writer_set_arr(w, "a.bool", GGUF_VT_BOOL, abool, 3);
    gguf_writer_set_arr(w, "a.u64", GGUF_VT_U64, au64, 2);
    gguf_writer_set_arr(w, "a.i64", GGUF_VT_I64, ai64, 2);
    gguf_writer_set_arr(w, "a.f64", GGUF_VT_F64, af64, 2);
    gguf_writer_set_arr(w, "a.empty", GGUF_VT_U32, NULL, 0);

    uint32_t n_strs = big ? N_STRS : 5;
    char **strs = malloc(n_strs * sizeof *strs);
    for (uint32_t i = 0; i < n_strs; i++) strs[i] = str_i(i);
    gguf_writer_set_arr_str(w, "a.strs", (const char *const *)strs, n_strs);
    for (uint32_t i = 0; i < n_strs; i++) free(strs[i]);
    free(strs);

    if (big) {
        /* a large numeric array too, as in real tokenizer metadata */
        uint32_t *ids = malloc(N_STRS * sizeof *ids);
        for (uint32_t i = 0; i < N_STRS; i++) ids[i] = i * 2654435761u;
        gguf_writer_set_arr(w, "a.u32.big", GGUF_VT_U32, ids, N_STRS);
        free(ids);
    }

    for (size_t i = 0; i < N_TENSORS; i++)
        gguf_writer_add_tensor(w, k_tensors[i].name, k_tensors[i].type, k_tensors[i].n_dims, k_tensors[i].ne);
    int rc = gguf_writer_begin_data(w, err);
    /* All tensor bytes as one stream, written in random-sized pieces that
     * straddle tensor boundaries. */
    size_t total = 0;
    for (size_t i = 0; i < N_TENSORS; i++) total += k_tensors[i].nbytes;
    uint8_t *all = malloc(total);
    for (size_t i = 0, o = 0; i < N_TENSORS; o += k_tensors[i].nbytes, i++)
        memcpy(all + o, k_tensors[i].data, k_tensors[i].nbytes);
    for (size_t o = 0; rc == 0 && o < total;) {
        size_t k = 1 + rnd() % 97;
        if (k > total - o) k = total - o;
        rc = gguf_writer_write(w, all + o, k, err);
        o += k;
    }
    free(all);
    if (rc == 0) rc = gguf_writer_finish(w, err);
    gguf_writer_free(w);
    return rc;
}

static void check_arr_i64(const gguf_file *f, const char *key, uint32_t et, const int64_t *want, uint64_t n) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    CHECKF(kv && kv->type == GGUF_VT_ARRAY && kv->arr_type == et && kv->arr_count == n, "%s", key);
    if (!kv || kv->arr_count != n) return;
    ds4_error err;
    for (uint64_t i = 0; i < n; i++) {
        int64_t v = 0;
        CHECKF(gguf_arr_get_i64(f, kv, i, &v, &err) == 0 && v == want[i], "%s[%" PRIu64 "]: %" PRId64, key, i, v);
    }
    int64_t v;
    CHECK(gguf_arr_get_i64(f, kv, n, &v, &err) == -1 && contains(err.msg, "out of range"));
}

static void check_roundtrip(uint32_t align, bool big) {
    const char *path = test_path("%s/rt-%u-%d.gguf", test_tmp_dir(), align, big);
    ds4_error err = {{0}};
    CHECKF(write_roundtrip(path, align, big, &err) == 0, "write: %s", err.msg);
    gguf_file *f = gguf_open(path, &err);
    CHECKF(f != NULL, "open: %s", err.msg);
    if (!f) return;
    CHECK(f->version == 3);
    CHECK(f->alignment == align);
    CHECK(f->data_offset % align == 0);
    CHECK(f->n_kv == (big ? 29u : 28u));

    uint32_t u32;
    uint64_t u64;
    double f64;
    bool b;
    char *s;
    CHECK(gguf_get_u32(f, "general.alignment", &u32, &err) == 0 && u32 == align);
    CHECK(gguf_get_str(f, "general.name", &s, &err) == 0 && strcmp(s, "round trip") == 0);
    free(s);
    CHECK(gguf_get_str(f, "v.str.empty", &s, &err) == 0 && strcmp(s, "") == 0);
    free(s);
    CHECK(gguf_get_u32(f, "v.u32", &u32, &err) == 0 && u32 == 4000000000u);
    CHECK(gguf_get_u64(f, "v.u64", &u64, &err) == 0 && u64 == 0xfedcba9876543210ull);
    CHECK(gguf_get_f64(f, "v.f32", &f64, &err) == 0 && f64 == (double)0.1f);
    CHECK(gguf_get_f64(f, "v.f64", &f64, &err) == 0 && f64 == -1e300);
    CHECK(gguf_get_bool(f, "v.bool", &b, &err) == 0 && b);
    CHECK(gguf_get_bool(f, "v.bool.false", &b, &err) == 0 && !b);
    CHECK(gguf_get_u32(f, "v.u8", &u32, &err) == 0 && u32 == 250);
    CHECK(gguf_get_u32(f, "v.u16", &u32, &err) == 0 && u32 == 65000);
    CHECK(gguf_get_f64(f, "v.i16", &f64, &err) == 0 && f64 == -32000);
    CHECK(gguf_get_f64(f, "v.i8", &f64, &err) == 0 && f64 == -100);
    const gguf_kv *kv = gguf_find_kv(f, "v.i32");
    CHECK(kv && kv->type == GGUF_VT_I32 && kv->v.i64 == -123456);
    kv = gguf_find_kv(f, "v.i64");
    CHECK(kv && kv->type == GGUF_VT_I64 && kv->v.i64 == INT64_MIN);
    kv = gguf_find_kv(f, "v.f32");
    CHECK(kv && kv->type == GGUF_VT_F32);
    /* getters refuse what they cannot represent, naming file, key and type */
    CHECK(gguf_get_u32(f, "v.i32", &u32, &err) == -1 && contains(err.msg, path) && contains(err.msg, "v.i32"));
    CHECK(gguf_get_u32(f, "v.u64", &u32, &err) == -1 && contains(err.msg, "does not fit"));
    CHECK(gguf_get_u32(f, "v.f32", &u32, &err) == -1 && contains(err.msg, "type f32"));
    CHECK(gguf_get_bool(f, "v.u8", &b, &err) == -1 && contains(err.msg, "type u8"));
    CHECK(gguf_get_str(f, "v.u8", &s, &err) == -1 && contains(err.msg, "'v.u8'"));
    CHECK(gguf_get_u64(f, "no.such.key", &u64, &err) == -1 && contains(err.msg, "not found") &&
          contains(err.msg, "no.such.key"));
    CHECK(gguf_find_kv(f, "no.such.key") == NULL);

    check_arr_i64(f, "a.u8", GGUF_VT_U8, (int64_t[]){0, 1, 128, 255}, 4);
    check_arr_i64(f, "a.i8", GGUF_VT_I8, (int64_t[]){-128, 0, 127}, 3);
    check_arr_i64(f, "a.u16", GGUF_VT_U16, (int64_t[]){1, 65535}, 2);
    check_arr_i64(f, "a.i16", GGUF_VT_I16, (int64_t[]){-32768, 32767}, 2);
    check_arr_i64(f, "a.u32", GGUF_VT_U32, (int64_t[]){0, 1, 2, 0xffffffffll, 77}, 5);
    check_arr_i64(f, "a.i32", GGUF_VT_I32, (int64_t[]){INT32_MIN, -1, INT32_MAX}, 3);
    check_arr_i64(f, "a.bool", GGUF_VT_BOOL, (int64_t[]){1, 0, 1}, 3);
    check_arr_i64(f, "a.i64", GGUF_VT_I64, (int64_t[]){INT64_MIN, INT64_MAX}, 2);
    check_arr_i64(f, "a.empty", GGUF_VT_U32, NULL, 0);
    kv = gguf_find_kv(f, "a.u64");
    int64_t i64;
    CHECK(kv && gguf_arr_get_i64(f, kv, 0, &i64, &err) == 0 && i64 == 0);
    CHECK(kv && gguf_arr_get_i64(f, kv, 1, &i64, &err) == -1 && contains(err.msg, "a.u64"));
    CHECK(kv && gguf_arr_get_f64(f, kv, 1, &f64, &err) == 0 && f64 == 18446744073709551615.0);
    kv = gguf_find_kv(f, "a.f32");
    float af32[4] = {1.5f, -2.25f, 3e38f, -0.0f};
    CHECK(kv && kv->arr_type == GGUF_VT_F32 && kv->arr_count == 4);
    for (uint64_t i = 0; kv && i < 4; i++) {
        CHECK(gguf_arr_get_f64(f, kv, i, &f64, &err) == 0 && f64 == (double)af32[i] &&
              !signbit(f64) == !signbit(af32[i]));
        CHECK(memcmp(kv->arr_data + 4 * i, &af32[i], 4) == 0);
    }
    CHECK(kv && gguf_arr_get_i64(f, kv, 0, &i64, &err) == -1); /* 1.5 is not an integer */
    CHECK(kv && gguf_arr_get_i64(f, kv, 3, &i64, &err) == 0 && i64 == 0);
    kv = gguf_find_kv(f, "a.f64");
    CHECK(kv && gguf_arr_get_f64(f, kv, 0, &f64, &err) == 0 && f64 == 1e-300);
    CHECK(kv && gguf_arr_get_f64(f, kv, 1, &f64, &err) == 0 && f64 == 2.5);

    uint32_t n_strs = big ? N_STRS : 5;
    kv = gguf_find_kv(f, "a.strs");
    CHECK(kv && kv->type == GGUF_VT_ARRAY && kv->arr_type == GGUF_VT_STRING && kv->arr_count == n_strs);
    CHECK(kv && gguf_arr_get_f64(f, kv, 0, &f64, &err) == -1 && contains(err.msg, "string"));
    int bad = 0;
    for (uint32_t i = 0; kv && kv->arr_count == n_strs && i < n_strs; i++) {
        char *want = str_i(i);
        gguf_str got = gguf_arr_str(kv, i);
        if (got.len != strlen(want) || memcmp(got.ptr, want, got.len) != 0) bad++;
        if (kv->arr_strs[i].ptr != got.ptr) bad++;
        free(want);
    }
    CHECKF(bad == 0, "%d string array entries differ", bad);
    CHECK(kv && gguf_arr_str(kv, n_strs).ptr == NULL);
    if (big) {
        kv = gguf_find_kv(f, "a.u32.big");
        CHECK(kv && kv->arr_count == N_STRS);
        bad = 0;
        for (uint32_t i = 0; kv && kv->arr_count == N_STRS && i < N_STRS; i++) {
            int64_t v;
            if (gguf_arr_get_i64(f, kv, i, &v, &err) != 0 || v != (int64_t)(uint32_t)(i * 2654435761u)) bad++;
        }
        CHECKF(bad == 0, "%d big array entries differ", bad);
    }

    CHECK(f->n_tensors == N_TENSORS);
    for (size_t i = 0; i < N_TENSORS && f->n_tensors == N_TENSORS; i++) {
        const tdesc *d = &k_tensors[i];
        const gguf_tensor *t = gguf_find_tensor(f, d->name);
        CHECKF(t == &f->tensors[i], "tensor %s not found in order", d->name);
        if (!t) continue;
        CHECK(strcmp(t->name, d->name) == 0);
        CHECK(t->type == d->type && t->n_dims == d->n_dims);
        uint64_t elems = 1;
        for (int k = 0; k < 4; k++) {
            CHECK(t->ne[k] == d->ne[k]);
            elems *= d->ne[k];
        }
        CHECK(t->n_elems == elems);
        CHECK(t->nbytes == d->nbytes);
        CHECK(t->offset % align == 0);
        CHECK((const uint8_t *)t->data == f->map + f->data_offset + t->offset);
        CHECKF(memcmp(t->data, d->data, d->nbytes) == 0, "tensor %s bytes differ", d->name);
    }
    CHECK(gguf_find_tensor(f, "missing") == NULL);
    gguf_close(f);
}

static void init_tensor_data(void) {
    for (size_t i = 0; i < N_TENSORS; i++) {
        tdesc *d = &k_tensors[i];
        uint64_t elems = d->ne[0] * d->ne[1] * d->ne[2] * d->ne[3];
        ggml_nbytes(d->type, elems, &d->nbytes);
        d->data = malloc(d->nbytes);
        for (uint64_t k = 0; k < d->nbytes; k++) d->data[k] = (uint8_t)rnd();
    }
}

static void test_writer_errors(void) {
    const char *path = test_path("%s/werr.gguf", test_tmp_dir());
    ds4_error err = {{0}};
    uint64_t ne[2] = {4, 2};

    /* missing bytes */
    gguf_writer *w = gguf_writer_create(path, 32, &err);
    CHECK(w != NULL);
    CHECK(gguf_writer_add_tensor(w, "t", GGML_TYPE_F32, 2, ne) == 0);
    CHECK(gguf_writer_begin_data(w, &err) == 0);
    uint8_t buf[64] = {0};
    CHECK(gguf_writer_write(w, buf, 31, &err) == 0);
    CHECK(gguf_writer_finish(w, &err) == -1 && contains(err.msg, "'t'") && contains(err.msg, "31 of 32"));
    gguf_writer_free(w);

    /* too many bytes */
    w = gguf_writer_create(path, 32, &err);
    gguf_writer_add_tensor(w, "t", GGML_TYPE_F32, 2, ne);
    CHECK(gguf_writer_begin_data(w, &err) == 0);
    CHECK(gguf_writer_write(w, buf, 33, &err) == -1 && contains(err.msg, path) && contains(err.msg, "past the end"));
    gguf_writer_free(w);

    /* duplicate key, duplicate tensor, bad block size: reported by begin_data */
    w = gguf_writer_create(path, 32, &err);
    CHECK(gguf_writer_set_u32(w, "k", 1) == 0);
    CHECK(gguf_writer_set_u32(w, "k", 2) == -1);
    CHECK(gguf_writer_begin_data(w, &err) == -1 && contains(err.msg, "'k' set twice"));
    gguf_writer_free(w);
    w = gguf_writer_create(path, 32, &err);
    gguf_writer_add_tensor(w, "t", GGML_TYPE_F32, 2, ne);
    CHECK(gguf_writer_add_tensor(w, "t", GGML_TYPE_F32, 2, ne) == -1);
    CHECK(gguf_writer_begin_data(w, &err) == -1 && contains(err.msg, "'t' declared twice"));
    gguf_writer_free(w);
    w = gguf_writer_create(path, 32, &err);
    uint64_t ne33[1] = {33};
    CHECK(gguf_writer_add_tensor(w, "q", GGML_TYPE_Q8_0, 1, ne33) == -1);
    CHECK(gguf_writer_begin_data(w, &err) == -1 && contains(err.msg, "block size"));
    gguf_writer_free(w);

    /* alignment: must be a power of two, and the key must agree with it */
    CHECK(gguf_writer_create(path, 48, &err) == NULL && contains(err.msg, "power of two"));
    w = gguf_writer_create(path, 64, &err);
    CHECK(gguf_writer_begin_data(w, &err) == -1 && contains(err.msg, "general.alignment"));
    gguf_writer_free(w);
    w = gguf_writer_create(path, 64, &err);
    gguf_writer_set_u32(w, "general.alignment", 32);
    CHECK(gguf_writer_begin_data(w, &err) == -1 && contains(err.msg, "disagrees"));
    gguf_writer_free(w);

    /* atomic helpers */
    const char *final = test_path("%s/atomic.gguf", test_tmp_dir());
    char tmp[1024];
    CHECK(ds4_atomic_begin(final, tmp, sizeof tmp, &err) == 0 && contains(tmp, ".tmp."));
    char small[8];
    CHECK(ds4_atomic_begin(final, small, sizeof small, &err) == -1);
    CHECK(write_bytes(tmp, "x", 1) == 0);
    CHECK(ds4_atomic_commit(tmp, final, &err) == 0);
    FILE *fp = fopen(final, "rb");
    CHECK(fp != NULL);
    if (fp) fclose(fp);
    CHECK(write_bytes(tmp, "x", 1) == 0);
    ds4_atomic_abort(tmp);
    fp = fopen(tmp, "rb");
    CHECK(fp == NULL);
    if (fp) fclose(fp);
}

/* ---------------------------------------------------------------------- */
/* Hand-built files (independent of the writer) for malformed inputs. */

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void put_u32(buf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(buf *b, uint64_t v) { put(b, &v, 8); }
/* A GGUF v3 header: magic, version, tensor count, key/value count. */
static void put_header(buf *b, uint64_t n_tensors, uint64_t n_kv) {
    put_u32(b, GGUF_MAGIC);
    put_u32(b, 3);
    put_u64(b, n_tensors);
    put_u64(b, n_kv);
}
static void put_str(buf *b, const char *s) {
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}

typedef struct htensor {
    const char *name;
    uint32_t n_dims;
    uint64_t ne[9];
    uint32_t type;
    uint64_t offset;
} htensor;

/* magic, version, counts, general.alignment (when align != 0), one string
 * kv, the tensor infos, padding to `pad_align`, then data_len bytes. */
static buf build(uint32_t magic, uint32_t version, uint32_t align, const htensor *ts, int nt, size_t data_len) {
    buf b = {0};
    put_u32(&b, magic);
    put_u32(&b, version);
    put_u64(&b, (uint64_t)nt);
    put_u64(&b, align ? 2 : 1);
    if (align) {
        put_str(&b, "general.alignment");
        put_u32(&b, GGUF_VT_U32);
        put_u32(&b, align);
    }
    put_str(&b, "general.name");
    put_u32(&b, GGUF_VT_STRING);
    put_str(&b, "hand built");
    for (int i = 0; i < nt; i++) {
        put_str(&b, ts[i].name);
        put_u32(&b, ts[i].n_dims);
        for (uint32_t d = 0; d < ts[i].n_dims; d++) put_u64(&b, ts[i].ne[d]);
        put_u32(&b, ts[i].type);
        put_u64(&b, ts[i].offset);
    }
    uint32_t a = align && !(align & (align - 1)) ? align : 32;
    while (b.n % a) put(&b, "", 1);
    for (size_t i = 0; i < data_len; i++) put(&b, "\x5a", 1);
    return b;
}

static void bad_file(const char *name, buf b, const char *sub1, const char *sub2) {
    const char *path = test_path("%s/%s.gguf", test_tmp_dir(), name);
    CHECK(write_bytes(path, b.p, b.n) == 0);
    free(b.p);
    expect_fail(path, name, sub1, sub2);
}

static void test_hand_built(void) {
    htensor ok = {"t0", 2, {8, 2}, GGML_TYPE_F32, 0};
    /* The builder itself must make a valid file, or the failures below
     * would prove nothing. */
    {
        buf b = build(GGUF_MAGIC, 3, 64, &ok, 1, 64);
        const char *path = test_path("%s/hand-ok.gguf", test_tmp_dir());
        CHECK(write_bytes(path, b.p, b.n) == 0);
        free(b.p);
        ds4_error err = {{0}};
        gguf_file *f = gguf_open(path, &err);
        CHECKF(f != NULL, "hand-built valid file: %s", err.msg);
        if (f) CHECK(f->n_tensors == 1 && f->tensors[0].nbytes == 64 && f->alignment == 64);
        gguf_close(f);
    }
    bad_file("bad-magic", build(0x46554746u, 3, 0, &ok, 1, 64), "bad magic", NULL);
    bad_file("version2", build(GGUF_MAGIC, 2, 0, &ok, 1, 64), "version 2", NULL);
    htensor past = ok;
    past.offset = 1024;
    bad_file("offset-past-eof", build(GGUF_MAGIC, 3, 0, &past, 1, 64), "tensor 't0': data (offset",
             "extends past end of file");
    bad_file("short-data", build(GGUF_MAGIC, 3, 0, &ok, 1, 63), "tensor 't0'", "past end of file");
    htensor ovf = {"big", 4, {1ull << 32, 1ull << 32, 2, 1}, GGML_TYPE_F32, 0};
    bad_file("dims-overflow", build(GGUF_MAGIC, 3, 0, &ovf, 1, 64), "tensor 'big'", "overflow");
    htensor ovf2 = {"big2", 2, {1ull << 61, 4}, GGML_TYPE_F32, 0}; /* elements fit, bytes don't */
    bad_file("bytes-overflow", build(GGUF_MAGIC, 3, 0, &ovf2, 1, 64), "tensor 'big2'", "overflow");
    htensor d0 = {"d0", 0, {0}, GGML_TYPE_F32, 0};
    bad_file("ndims0", build(GGUF_MAGIC, 3, 0, &d0, 1, 64), "tensor 'd0'", "n_dims 0");
    htensor d9 = {"d9", 9, {1, 1, 1, 1, 1, 1, 1, 1, 1}, GGML_TYPE_F32, 0};
    bad_file("ndims9", build(GGUF_MAGIC, 3, 0, &d9, 1, 64), "tensor 'd9'", "n_dims 9");
    htensor z = {"z", 2, {8, 0}, GGML_TYPE_F32, 0};
    bad_file("dim-zero", build(GGUF_MAGIC, 3, 0, &z, 1, 64), "tensor 'z'", "ne[1] is 0");
    htensor unk = {"u", 1, {16}, 99, 0};
    bad_file("unknown-type", build(GGUF_MAGIC, 3, 0, &unk, 1, 64), "tensor 'u'", "unknown tensor type 99");
    htensor q = {"q", 1, {33}, GGML_TYPE_Q8_0, 0};
    bad_file("block-size", build(GGUF_MAGIC, 3, 0, &q, 1, 64), "tensor 'q'", "block size 32");
    htensor mis = ok;
    mis.offset = 16;
    bad_file("misaligned", build(GGUF_MAGIC, 3, 0, &mis, 1, 128), "tensor 't0'", "alignment 32");
    htensor dup[2] = {ok, ok};
    dup[1].offset = 64;
    bad_file("dup-tensor", build(GGUF_MAGIC, 3, 0, dup, 2, 128), "tensor 't0'", "duplicate tensor name");
    bad_file("align-48", build(GGUF_MAGIC, 3, 48, &ok, 1, 64), "general.alignment", "power of two");
    bad_file("empty", (buf){0}, "empty", NULL);

    /* Header-level corruptions, built by hand. */
    buf b = {0};
    put_header(&b, 0, 1);
    put_u64(&b, 1ull << 62); /* key length */
    put(&b, "abcdefgh", 8);
    bad_file("huge-key-len", b, "key length", "past end of file");

    b = (buf){0};
    put_header(&b, 0, 1);
    put_str(&b, "general.name");
    put_u32(&b, GGUF_VT_STRING);
    put_u64(&b, 0xffffffffffffull); /* string length */
    put(&b, "abcdefgh", 8);
    bad_file("huge-str-len", b, "key 'general.name'", "past end of file");

    b = (buf){0};
    put_header(&b, 0, 1);
    put_str(&b, "tokens");
    put_u32(&b, GGUF_VT_ARRAY);
    put_u32(&b, GGUF_VT_U32);
    put_u64(&b, 1ull << 61); /* array count */
    put(&b, "abcdefgh", 8);
    bad_file("huge-arr-count", b, "key 'tokens'", "array count 2305843009213693952");

    b = (buf){0};
    put_header(&b, 0, 1);
    put_str(&b, "tokens");
    put_u32(&b, GGUF_VT_ARRAY);
    put_u32(&b, GGUF_VT_STRING);
    put_u64(&b, 1ull << 40); /* string array count */
    put(&b, "abcdefgh", 8);
    bad_file("huge-str-arr-count", b, "key 'tokens'", "string array count");

    b = (buf){0};
    put_header(&b, 0, 1ull << 50); /* kv count */
    bad_file("huge-kv-count", b, "key/value count", NULL);

    b = (buf){0};
    put_header(&b, 1ull << 50, 0); /* tensor count */
    bad_file("huge-tensor-count", b, "tensor count", NULL);

    b = (buf){0};
    put_header(&b, 0, 2);
    put_str(&b, "k");
    put_u32(&b, GGUF_VT_U8);
    put(&b, "\x01", 1);
    put_str(&b, "k");
    put_u32(&b, GGUF_VT_U8);
    put(&b, "\x02", 1);
    bad_file("dup-key", b, "key 'k'", "duplicate key");

    b = (buf){0};
    put_header(&b, 0, 1);
    put_str(&b, "flag");
    put_u32(&b, GGUF_VT_BOOL);
    put(&b, "\x02", 1);
    bad_file("bool-2", b, "key 'flag'", "bool value is 2");

    b = (buf){0};
    put_header(&b, 0, 1);
    put_str(&b, "weird");
    put_u32(&b, 13);
    put(&b, "\x02\x02\x02\x02", 4);
    bad_file("value-type-13", b, "key 'weird'", "unknown value type 13");

    b = (buf){0};
    put_header(&b, 0, 1);
    put_str(&b, "nest");
    put_u32(&b, GGUF_VT_ARRAY);
    put_u32(&b, GGUF_VT_ARRAY);
    put_u64(&b, 1);
    put(&b, "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", 12);
    bad_file("nested-array", b, "key 'nest'", "nested arrays");
}

/* ---------------------------------------------------------------------- */
/* Truncation and mutation. */

static volatile unsigned sink;

/* Opens path; on success touches every value and tensor byte so that an
 * out-of-bounds pointer would trip ASan. */
static int open_and_walk(const char *path, ds4_error *err) {
    gguf_file *f = gguf_open(path, err);
    if (!f) return -1;
    unsigned sum = 0;
    for (uint64_t i = 0; i < f->n_kv; i++) {
        const gguf_kv *kv = &f->kv[i];
        if (kv->type == GGUF_VT_STRING) {
            char *s;
            if (gguf_get_str(f, kv->key, &s, err) == 0) free(s);
        } else if (kv->type == GGUF_VT_ARRAY) {
            for (uint64_t k = 0; k < kv->arr_count; k++) {
                if (kv->arr_type == GGUF_VT_STRING) {
                    gguf_str s = gguf_arr_str(kv, k);
                    for (uint64_t c = 0; c < s.len; c++) sum += (uint8_t)s.ptr[c];
                } else {
                    double d;
                    int64_t v;
                    if (gguf_arr_get_f64(f, kv, k, &d, err) == 0) sum += (unsigned)(d != 0);
                    if (gguf_arr_get_i64(f, kv, k, &v, err) == 0) sum += (unsigned)v;
                }
            }
        } else {
            double d;
            (void)gguf_get_f64(f, kv->key, &d, err);
        }
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const uint8_t *p = f->tensors[i].data;
        for (uint64_t k = 0; k < f->tensors[i].nbytes; k++) sum += p[k];
        CHECK(gguf_find_tensor(f, f->tensors[i].name) == &f->tensors[i]);
    }
    gguf_close(f);
    sink += sum;
    return 0;
}

static void test_truncation_and_fuzz(void) {
    const char *src = test_path("%s/small.gguf", test_tmp_dir());
    ds4_error err = {{0}};
    CHECKF(write_roundtrip(src, 32, false, &err) == 0, "%s", err.msg);
    size_t n;
    uint8_t *orig = read_all(src, &n);
    gguf_file *f = gguf_open(src, &err);
    CHECKF(f != NULL, "%s", err.msg);
    if (!f || !orig) return;
    const gguf_tensor *last = &f->tensors[f->n_tensors - 1];
    size_t data_end = (size_t)(f->data_offset + last->offset + last->nbytes);
    size_t header_end = (size_t)f->data_offset;
    gguf_close(f);
    CHECK(data_end <= n);

    /* Every cut before the end of the last tensor's data must fail. */
    const char *cut = test_path("%s/cut.gguf", test_tmp_dir());
    int crashes_avoided = 0, unnamed = 0;
    for (size_t len = 0; len < data_end; len++) {
        CHECK(write_bytes(cut, orig, len) == 0);
        ds4_error e = {{0}};
        gguf_file *g = gguf_open(cut, &e);
        CHECKF(g == NULL, "cut at %zu of %zu opened", len, data_end);
        if (g) gguf_close(g);
        else if (!contains(e.msg, cut) || !(contains(e.msg, "end of file") || contains(e.msg, "can't fit") ||
                                            contains(e.msg, "empty")))
            unnamed++;
        crashes_avoided++;
    }
    CHECKF(unnamed == 0, "%d truncation messages lack the file or cause", unnamed);
    printf("truncation: %d cut points rejected\n", crashes_avoided);

    /* Random mutations, mostly in the header where the structure is. */
    const char *mut = test_path("%s/mut.gguf", test_tmp_dir());
    uint8_t *m = malloc(n);
    int opened = 0;
    rng_state = 12345;
    for (int it = 0; it < 4000; it++) {
        memcpy(m, orig, n);
        size_t len = n;
        int edits = 1 + (int)(rnd() % 4);
        for (int e = 0; e < edits; e++) {
            size_t at = rnd() % 8 ? rnd() % header_end : rnd() % n;
            switch (rnd() % 4) {
            case 0: m[at] = (uint8_t)rnd(); break;
            case 1: m[at] ^= (uint8_t)(1u << (rnd() % 8)); break;
            case 2: m[at] = rnd() % 2 ? 0xff : 0x00; break;
            default: /* a random 64-bit value, as a length or count would be */
                if (at + 8 <= len) {
                    uint64_t v = rnd() >> (rnd() % 64);
                    memcpy(m + at, &v, 8);
                }
            }
        }
        if (rnd() % 16 == 0) len = rnd() % n;
        CHECK(write_bytes(mut, m, len) == 0);
        ds4_error e = {{0}};
        if (open_and_walk(mut, &e) == 0) opened++;
        else if (!contains(e.msg, mut)) CHECKF(0, "mutation %d: message lacks the path: %s", it, e.msg);
    }
    printf("fuzz: 4000 mutations, %d still valid\n", opened);
    free(m);
    free(orig);
}


/* gguf_writer_skip: skipped tensors (whole, in pieces, mixed with writes,
 * last in the file) read back as zeros, the file has its full length, and
 * on a file system with sparse files the holes take no space. */
static bool fs_is_sparse(const char *dir) {
    const char *probe = test_path("%s/sparse-probe", dir);
    FILE *f = fopen(probe, "wb");
    if (!f) return false;
    bool ok = ftruncate(fileno(f), 1 << 30) == 0;
    fclose(f);
    struct stat st;
    ok = ok && stat(probe, &st) == 0 && (uint64_t)st.st_blocks * 512 < (1u << 20);
    remove(probe);
    return ok;
}

static void test_writer_skip(void) {
    const char *dir = test_tmp_dir();
    bool sparse = fs_is_sparse(dir);
    /* Past 4 GiB when holes are free, to exercise 64-bit offsets. */
    uint64_t big = sparse ? (6ull << 30) + 6 : (3u << 20) + 6;
    const char *path = test_path("%s/skip.gguf", dir);
    ds4_error err = {{0}};
    gguf_writer *w = gguf_writer_create(path, 32, &err);
    CHECK(w != NULL);
    if (!w) return;
    uint8_t head[100], mid[70];
    for (size_t i = 0; i < sizeof head; i++) head[i] = (uint8_t)(i + 1);
    for (size_t i = 0; i < sizeof mid; i++) mid[i] = (uint8_t)(200 - i);
    gguf_writer_add_tensor(w, "written", GGML_TYPE_I8, 1, (const uint64_t[]){100});
    gguf_writer_add_tensor(w, "pieces", GGML_TYPE_I8, 1, (const uint64_t[]){170});
    gguf_writer_add_tensor(w, "big", GGML_TYPE_I8, 1, (const uint64_t[]){big});
    CHECK(gguf_writer_begin_data(w, &err) == 0);
    CHECK(gguf_writer_write(w, head, sizeof head, &err) == 0);
    CHECK(gguf_writer_skip(w, 50, &err) == 0); /* pieces: 50 hole, 70 data, 50 hole */
    CHECK(gguf_writer_write(w, mid, sizeof mid, &err) == 0);
    CHECK(gguf_writer_skip(w, 50 + big, &err) == 0); /* crosses into the last tensor */
    CHECK(gguf_writer_skip(w, 1, &err) != 0);       /* past the end */
    CHECKF(strstr(err.msg, "past the end") != NULL, "%s", err.msg);
    gguf_writer_free(w);

    w = gguf_writer_create(path, 32, &err);
    gguf_writer_add_tensor(w, "written", GGML_TYPE_I8, 1, (const uint64_t[]){100});
    gguf_writer_add_tensor(w, "pieces", GGML_TYPE_I8, 1, (const uint64_t[]){170});
    gguf_writer_add_tensor(w, "big", GGML_TYPE_I8, 1, (const uint64_t[]){big});
    CHECK(gguf_writer_begin_data(w, &err) == 0);
    CHECK(gguf_writer_write(w, head, sizeof head, &err) == 0);
    CHECK(gguf_writer_skip(w, 50, &err) == 0);
    CHECK(gguf_writer_write(w, mid, sizeof mid, &err) == 0);
    CHECK(gguf_writer_skip(w, 50 + big, &err) == 0);
    CHECKF(gguf_writer_finish(w, &err) == 0, "%s", err.msg);
    gguf_writer_free(w);

    gguf_file *f = gguf_open(path, &err);
    CHECKF(f != NULL, "%s", err.msg);
    if (!f) return;
    const gguf_tensor *t0 = gguf_find_tensor(f, "written"), *t1 = gguf_find_tensor(f, "pieces"),
                      *t2 = gguf_find_tensor(f, "big");
    CHECK(t0 && t1 && t2);
    if (t0 && t1 && t2) {
        CHECK(memcmp(t0->data, head, sizeof head) == 0);
        const uint8_t *p = t1->data;
        bool ok = memcmp(p + 50, mid, sizeof mid) == 0;
        for (int i = 0; i < 50; i++) ok = ok && p[i] == 0 && p[120 + i] == 0;
        CHECK(ok);
        const uint8_t *q = t2->data;
        CHECK(t2->nbytes == big && q[0] == 0 && q[big / 2] == 0 && q[big - 1] == 0);
        /* the last tensor is padded to the alignment too */
        CHECK(f->map_size == f->data_offset + (t2->offset + big + 31) / 32 * 32);
    }
    gguf_close(f);
    struct stat st;
    CHECK(stat(path, &st) == 0);
    printf("skip: %s file of %llu bytes, %llu allocated\n", sparse ? "sparse" : "plain", (unsigned long long)st.st_size,
           (unsigned long long)st.st_blocks * 512);
    if (sparse) CHECK((uint64_t)st.st_blocks * 512 < (64u << 20));
    remove(path);
}

int main(void) {
    init_tensor_data();
    check_roundtrip(32, true);
    check_roundtrip(64, false);
    check_roundtrip(1, false);
    check_roundtrip(4096, false);
    test_writer_errors();
    test_writer_skip();
    test_hand_built();
    test_truncation_and_fuzz();
    for (size_t i = 0; i < N_TENSORS; i++) free(k_tensors[i].data);
    return test_finish();
}
