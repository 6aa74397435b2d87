/* safetensors reader: the tiny-a fixture (written by HF transformers), a
 * sharded checkpoint written here, malformed files that must be rejected with
 * messages naming the file and the problem, and FP8 E4M3 decoding of all 256
 * codes against an independent formula. */
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../harness.h"
#include "formats/safetensors.h"

static bool contains(const char *s, const char *sub) { return strstr(s, sub) != NULL; }

static int write_bytes(const char *path, const void *p, size_t n) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return -1;
    size_t k = n ? fwrite(p, 1, n, fp) : 0;
    return fclose(fp) == 0 && k == n ? 0 : -1;
}

/* Writes a safetensors file: 8-byte header length, header, data. */
static int write_st(const char *path, const char *header, const void *data, size_t n) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return -1;
    uint64_t hl = strlen(header);
    int ok = fwrite(&hl, 8, 1, fp) == 1 && fwrite(header, 1, hl, fp) == hl && (n == 0 || fwrite(data, 1, n, fp) == n);
    return fclose(fp) == 0 && ok ? 0 : -1;
}

/* Opens path expecting failure; the message must name `file` and hold the
 * given substrings. */
static void expect_fail(const char *path, const char *what, const char *file, const char *sub1, const char *sub2) {
    ds4_error err = {{0}};
    st_checkpoint *c = st_open(path, &err);
    CHECKF(c == NULL, "%s: open succeeded", what);
    if (c) {
        st_close(c);
        return;
    }
    printf("%-22s -> %s\n", what, err.msg);
    CHECKF(contains(err.msg, file), "%s: message does not name %s: %s", what, file, err.msg);
    CHECKF(!sub1 || contains(err.msg, sub1), "%s: message lacks '%s': %s", what, sub1, err.msg);
    CHECKF(!sub2 || contains(err.msg, sub2), "%s: message lacks '%s': %s", what, sub2, err.msg);
}

/* ---------------------------------------------------------------------- */

static void check_fixture(const char *path, const char *label) {
    ds4_error err = {{0}};
    st_checkpoint *c = st_open(path, &err);
    CHECKF(c != NULL, "%s: %s", label, err.msg);
    if (!c) return;
    printf("%s: %zu tensors\n", label, st_count(c));
    CHECK(st_count(c) == 255);

    const st_tensor *t = st_find(c, "model.layers.0.attn.wq_a.weight");
    CHECK(t && t->dtype == ST_BF16 && t->n_dims == 2 && t->shape[0] == 64 && t->shape[1] == 128);
    CHECK(t && t->n_elems == 64 * 128 && t->nbytes == 64 * 128 * 2);
    if (t) {
        float *f = malloc(t->n_elems * sizeof *f);
        CHECK(st_read_f32(t, f, &err) == 0);
        const uint8_t *p = t->data;
        int bad = 0, nonzero = 0;
        for (uint64_t i = 0; i < t->n_elems; i++) {
            /* bf16 is the top half of a float32 */
            uint32_t bits = ((uint32_t)p[2 * i] | (uint32_t)p[2 * i + 1] << 8) << 16;
            float want;
            memcpy(&want, &bits, 4);
            if (memcmp(&want, &f[i], 4) != 0) bad++;
            if (want != 0) nonzero++;
        }
        CHECKF(bad == 0, "%d bf16 values differ", bad);
        CHECK(nonzero > 1000);
        int64_t dummy;
        CHECK(st_read_i64(t, &dummy, &err) == -1 && contains(err.msg, "wq_a") && contains(err.msg, "BF16"));
        free(f);
    }

    t = st_find(c, "model.layers.0.ffn.gate.tid2eid");
    CHECK(t && t->dtype == ST_I64 && t->n_dims == 2 && t->shape[0] == 1024 && t->shape[1] == 2);
    if (t) {
        int64_t *v = malloc(t->n_elems * sizeof *v);
        CHECK(st_read_i64(t, v, &err) == 0);
        int bad = 0;
        for (uint64_t i = 0; i < t->n_elems; i++) {
            int64_t want;
            memcpy(&want, (const uint8_t *)t->data + 8 * i, 8);
            if (v[i] != want || v[i] < 0 || v[i] >= 8) bad++;
        }
        /* "random distinct experts per token" (fixtures README) */
        for (uint64_t r = 0; r < 1024; r++)
            if (v[2 * r] == v[2 * r + 1]) bad++;
        CHECKF(bad == 0, "%d tid2eid values wrong", bad);
        float f;
        CHECK(st_read_f32(t, &f, &err) == -1 && contains(err.msg, "I64"));
        free(v);
    }
    t = st_find(c, "head.weight");
    CHECK(t && t->dtype == ST_BF16 && t->shape[0] == 1024 && t->shape[1] == 128);
    CHECK(st_find(c, "no.such.tensor") == NULL);
    size_t found = 0;
    for (size_t i = 0; i < st_count(c); i++) {
        const st_tensor *a = st_at(c, i);
        if (a && st_find(c, a->name) == a && a->shard == 0) found++;
    }
    CHECK(found == st_count(c));
    CHECK(st_at(c, st_count(c)) == NULL);
    CHECK(st_shard_path(c, 0) && contains(st_shard_path(c, 0), "model.safetensors"));
    st_close(c);
}

/* ---------------------------------------------------------------------- */
/* A sharded checkpoint, built here. */

static void test_sharded(void) {
    const char *dir = test_path("%s/sharded", test_tmp_dir());
    mkdir(dir, 0755);

    float a[6] = {1, -2, 3.5f, 0, 1e-3f, -1e30f};
    uint16_t b[4] = {0x3c00, 0xc000, 0x0001, 0x7bff}; /* f16: 1, -2, 2^-24, 65504 */
    int32_t cc[3] = {-7, 0, 2147483647};
    uint8_t s1[24 + 8 + 12];
    memcpy(s1, a, 24);
    memcpy(s1 + 24, b, 8);
    memcpy(s1 + 32, cc, 12);
    CHECK(write_st(test_path("%s/part-1.safetensors", dir),
                   "{\"__metadata__\":{\"format\":\"pt\"},"
                   "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                   "\"b\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[24,32]},"
                   "\"c\":{\"dtype\":\"I32\",\"shape\":[3],\"data_offsets\":[32,44]}}",
                   s1, sizeof s1) == 0);

    uint16_t d[4] = {0x3f80, 0xbf80, 0x4049, 0x0000}; /* bf16: 1, -1, 3.140625, 0 */
    uint8_t e[5] = {0x38, 0x7e, 0xfe, 0x01, 0x7f};     /* e4m3: 1, 448, -448, 2^-9, NaN */
    int8_t f8[3] = {-128, 5, 127};
    uint8_t g = 200;
    double h[2] = {0.25, -1e10};
    uint8_t s2[8 + 5 + 3 + 1 + 16];
    memcpy(s2, d, 8);
    memcpy(s2 + 8, e, 5);
    memcpy(s2 + 13, f8, 3);
    s2[16] = g;
    memcpy(s2 + 17, h, 16); /* deliberately unaligned */
    CHECK(write_st(test_path("%s/part-2.safetensors", dir),
                   "{\"d\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,8]},"
                   "\"e\":{\"dtype\":\"F8_E4M3\",\"shape\":[5],\"data_offsets\":[8,13]},"
                   "\"f\":{\"dtype\":\"I8\",\"shape\":[3],\"data_offsets\":[13,16]},"
                   "\"g\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[16,17]},"
                   "\"h\":{\"dtype\":\"F64\",\"shape\":[1,2],\"data_offsets\":[17,33]},"
                   "\"z\":{\"dtype\":\"F8_E8M0\",\"shape\":[0,4],\"data_offsets\":[33,33]}}",
                   s2, sizeof s2) == 0);
    const char *index = test_path("%s/model.safetensors.index.json", dir);
    const char *idx_text = "{\"metadata\":{\"total_size\":77},\"weight_map\":{"
                           "\"a\":\"part-1.safetensors\",\"d\":\"part-2.safetensors\",\"b\":\"part-1.safetensors\","
                           "\"c\":\"part-1.safetensors\",\"e\":\"part-2.safetensors\",\"f\":\"part-2.safetensors\","
                           "\"g\":\"part-2.safetensors\",\"h\":\"part-2.safetensors\",\"z\":\"part-2.safetensors\"}}";
    CHECK(write_bytes(index, idx_text, strlen(idx_text)) == 0);

    for (int via = 0; via < 2; via++) {
        ds4_error err = {{0}};
        st_checkpoint *c = st_open(via ? index : dir, &err);
        CHECKF(c != NULL, "sharded open: %s", err.msg);
        if (!c) continue;
        CHECK(st_count(c) == 9);
        const st_tensor *t;
        float f[8];
        int64_t v[4];
        t = st_find(c, "a");
        CHECK(t && t->shard == 0 && t->n_dims == 2 && t->shape[1] == 3 && st_read_f32(t, f, &err) == 0 &&
              memcmp(f, a, 24) == 0);
        CHECK(t && contains(st_shard_path(c, t->shard), "part-1.safetensors"));
        t = st_find(c, "b");
        CHECK(t && st_read_f32(t, f, &err) == 0 && f[0] == 1 && f[1] == -2 && f[2] == ldexpf(1, -24) &&
              f[3] == 65504);
        t = st_find(c, "c");
        CHECK(t && st_read_i64(t, v, &err) == 0 && v[0] == -7 && v[1] == 0 && v[2] == 2147483647);
        t = st_find(c, "d");
        CHECK(t && t->shard == 1 && contains(st_shard_path(c, t->shard), "part-2.safetensors"));
        CHECK(t && st_read_f32(t, f, &err) == 0 && f[0] == 1 && f[1] == -1 && f[2] == 3.140625f && f[3] == 0);
        t = st_find(c, "e");
        CHECK(t && st_read_f32(t, f, &err) == 0 && f[0] == 1 && f[1] == 448 && f[2] == -448 &&
              f[3] == ldexpf(1, -9) && isnan(f[4]));
        t = st_find(c, "f");
        CHECK(t && st_read_i64(t, v, &err) == 0 && v[0] == -128 && v[1] == 5 && v[2] == 127);
        t = st_find(c, "g");
        CHECK(t && t->n_dims == 0 && t->n_elems == 1 && st_read_i64(t, v, &err) == 0 && v[0] == 200);
        t = st_find(c, "h");
        CHECK(t && st_read_f32(t, f, &err) == 0 && f[0] == 0.25f && f[1] == -1e10f);
        t = st_find(c, "z");
        CHECK(t && t->dtype == ST_F8_E8M0 && t->n_elems == 0 && t->nbytes == 0);
        CHECK(t && st_read_f32(t, f, &err) == -1 && contains(err.msg, "F8_E8M0"));
        st_close(c);
    }

    /* Index naming a shard that does not exist. */
    const char *bad_dir = test_path("%s/sharded-missing", test_tmp_dir());
    mkdir(bad_dir, 0755);
    const char *bad_index = test_path("%s/model.safetensors.index.json", bad_dir);
    const char *t1 = "{\"weight_map\":{\"a\":\"nope-1.safetensors\"}}";
    CHECK(write_bytes(bad_index, t1, strlen(t1)) == 0);
    expect_fail(bad_index, "index-missing-shard", bad_index, "nope-1.safetensors", "cannot open");

    /* Index naming a tensor its shard does not have. */
    char *t2 = NULL;
    CHECK(asprintf(&t2, "{\"weight_map\":{\"a\":\"../sharded/part-1.safetensors\",\"ghost\":\"../sharded/part-1.safetensors\"}}") > 0);
    CHECK(write_bytes(bad_index, t2, strlen(t2)) == 0);
    free(t2);
    expect_fail(bad_index, "index-absent-tensor", bad_index, "'ghost'", "does not contain");

    /* Index putting a tensor in the wrong shard. */
    const char *t3 = "{\"weight_map\":{\"a\":\"../sharded/part-2.safetensors\",\"d\":\"../sharded/part-1.safetensors\"}}";
    CHECK(write_bytes(bad_index, t3, strlen(t3)) == 0);
    expect_fail(bad_index, "index-wrong-shard", bad_index, "'a'", "part-1.safetensors");

    /* Same tensor in two shards. */
    CHECK(write_st(test_path("%s/dup.safetensors", bad_dir),
                   "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", "x", 1) == 0);
    const char *t4 = "{\"weight_map\":{\"a\":\"../sharded/part-1.safetensors\",\"x\":\"dup.safetensors\"}}";
    CHECK(write_bytes(bad_index, t4, strlen(t4)) == 0);
    expect_fail(bad_index, "dup-across-shards", "dup.safetensors", "'a'", "duplicated");

    const char *t5 = "{\"weight_map\":[1,2]}";
    CHECK(write_bytes(bad_index, t5, strlen(t5)) == 0);
    expect_fail(bad_index, "index-no-weight-map", bad_index, "weight_map", NULL);
    CHECK(write_bytes(bad_index, "{\"weight_map\":{", 15) == 0);
    expect_fail(bad_index, "index-bad-json", bad_index, "not valid JSON", NULL);

    /* A directory with neither an index nor a safetensors file. */
    const char *empty_dir = test_path("%s/empty", test_tmp_dir());
    mkdir(empty_dir, 0755);
    expect_fail(empty_dir, "empty-dir", empty_dir, "model.safetensors", NULL);
}

/* ---------------------------------------------------------------------- */
/* Malformed single files. */

static void bad_st(const char *name, const char *header, size_t data_len, const char *sub1, const char *sub2) {
    const char *path = test_path("%s/%s.safetensors", test_tmp_dir(), name);
    uint8_t *data = calloc(1, data_len + 1);
    CHECK(write_st(path, header, data, data_len) == 0);
    free(data);
    expect_fail(path, name, path, sub1, sub2);
}

static void test_bad_files(void) {
    /* header length past the end of the file */
    const char *path = test_path("%s/hdr-past-eof.safetensors", test_tmp_dir());
    uint8_t raw[16] = {0xe8, 0x03}; /* length 1000, then 8 bytes */
    CHECK(write_bytes(path, raw, sizeof raw) == 0);
    expect_fail(path, "header-past-eof", path, "header length 1000 extends past end of file", NULL);
    CHECK(write_bytes(path, raw, 5) == 0);
    expect_fail(path, "too-small", path, "too small", NULL);

    bad_st("bad-json", "{\"a\":{\"dtype\":\"F32\",", 0, "not valid JSON", NULL);
    bad_st("not-object", "[1,2,3]", 0, "not a JSON object", NULL);
    bad_st("offsets-out-of-range", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 12,
           "tensor 'w'", "outside the data section");
    bad_st("offsets-reversed", "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 12, "tensor 'w'",
           "ends before it begins");
    bad_st("size-mismatch", "{\"w\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,16]}}", 16, "tensor 'w'",
           "spans 16 bytes but shape and dtype BF16 need 12");
    bad_st("unknown-dtype", "{\"w\":{\"dtype\":\"F8_E5M2\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4, "tensor 'w'",
           "unknown dtype 'F8_E5M2'");
    bad_st("no-dtype", "{\"w\":{\"shape\":[4],\"data_offsets\":[0,4]}}", 4, "'dtype'", NULL);
    bad_st("negative-dim", "{\"w\":{\"dtype\":\"U8\",\"shape\":[-4],\"data_offsets\":[0,4]}}", 4, "'shape'", NULL);
    bad_st("fraction-dim", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, "'shape'", NULL);
    bad_st("shape-overflow",
           "{\"w\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,2],\"data_offsets\":[0,4]}}", 4, "tensor 'w'",
           "overflow");
    bad_st("bytes-overflow", "{\"w\":{\"dtype\":\"I64\",\"shape\":[2147483648,4294967296],\"data_offsets\":[0,4]}}",
           4, "tensor 'w'", "overflow");
    bad_st("too-many-dims", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
           "9 dimensions", NULL);
    bad_st("offsets-one", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", 1, "'data_offsets'", NULL);
    bad_st("entry-not-object", "{\"w\":5}", 0, "tensor 'w'", "not a JSON object");
    bad_st("dup-name",
           "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
           "\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
           1, "'w'", "duplicated");
}

/* ---------------------------------------------------------------------- */

static void test_e4m3(void) {
    uint8_t codes[256];
    for (int i = 0; i < 256; i++) codes[i] = (uint8_t)i;
    st_tensor t = {.name = "codes", .dtype = ST_F8_E4M3, .n_dims = 1, .shape = {256}, .n_elems = 256,
                   .nbytes = 256, .data = codes};
    float got[256];
    ds4_error err;
    CHECK(st_read_f32(&t, got, &err) == 0);
    int bad = 0;
    for (int i = 0; i < 256; i++) {
        uint32_t s = (uint32_t)i >> 7, e = ((uint32_t)i >> 3) & 15, m = (uint32_t)i & 7;
        float want;
        if (e == 15 && m == 7) {
            if (!isnan(got[i])) bad++;
            continue;
        }
        if (e == 0) {
            want = (float)((double)m / 512.0); /* m/8 * 2^(1-7) */
            if (s) want = -want;
        } else {
            /* rebias the exponent (7 -> 127) and widen the mantissa (3 -> 23 bits) */
            uint32_t bits = s << 31 | (e + 120) << 23 | m << 20;
            memcpy(&want, &bits, 4);
        }
        if (memcmp(&want, &got[i], 4) != 0) {
            bad++;
            fprintf(stderr, "e4m3 0x%02x: got %g want %g\n", i, got[i], want);
        }
        if (st_e4m3_to_f32((uint8_t)i) != got[i]) bad++;
    }
    CHECKF(bad == 0, "%d e4m3 codes decode wrongly", bad);
    CHECK(got[0x7e] == 448 && got[0xfe] == -448 && got[0x00] == 0 && signbit(got[0x80]));
    CHECK(got[0x08] == ldexpf(1, -6) && got[0x07] == 7 * ldexpf(1, -9));

    CHECK(st_e8m0_to_f32(127) == 1 && st_e8m0_to_f32(128) == 2 && st_e8m0_to_f32(0) == ldexpf(1, -127));
    CHECK(st_e8m0_to_f32(254) == ldexpf(1, 127) && isnan(st_e8m0_to_f32(255)));
    CHECK(strcmp(st_dtype_name(ST_F8_E4M3), "F8_E4M3") == 0 && st_dtype_size(ST_I64) == 8);
}

/* Mutated copies of a valid shard must open or fail cleanly (run under
 * `make san-test` to catch out-of-bounds reads); successful opens are read
 * in full. */
static void test_fuzz(void) {
    const char *src = test_path("%s/sharded/part-2.safetensors", test_tmp_dir());
    FILE *fp = fopen(src, "rb");
    CHECK(fp != NULL);
    if (!fp) return;
    uint8_t orig[4096];
    size_t n = fread(orig, 1, sizeof orig, fp);
    fclose(fp);
    uint64_t hl;
    memcpy(&hl, orig, 8);
    const char *mut = test_path("%s/mut.safetensors", test_tmp_dir());
    uint64_t x = 0x243f6a8885a308d3ull;
    int opened = 0;
    uint8_t m[4096];
    float *f = malloc(4096 * sizeof *f);
    int64_t *v = malloc(4096 * sizeof *v);
    for (int it = 0; it < 3000; it++) {
        memcpy(m, orig, n);
        size_t len = n;
        for (int e = 0; e < 1 + it % 3; e++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            size_t at = (size_t)(x % (8 + hl));
            static const char alphabet[] = "0123456789[]{},:\"-.eE ";
            m[at] = x >> 40 & 1 ? (uint8_t)alphabet[(x >> 20) % (sizeof alphabet - 1)] : (uint8_t)(x >> 32);
        }
        if (it % 17 == 0) len = (size_t)(x >> 8) % n;
        CHECK(write_bytes(mut, m, len) == 0);
        ds4_error err = {{0}};
        st_checkpoint *c = st_open(mut, &err);
        if (!c) {
            CHECKF(contains(err.msg, mut), "mutation %d: message lacks the path: %s", it, err.msg);
            continue;
        }
        opened++;
        for (size_t i = 0; i < st_count(c); i++) {
            const st_tensor *t = st_at(c, i);
            if (t->n_elems > 4096) continue;
            if (st_read_f32(t, f, &err) != 0) (void)st_read_i64(t, v, &err);
        }
        st_close(c);
    }
    printf("fuzz: 3000 mutations, %d still valid\n", opened);
    free(f);
    free(v);
}

int main(void) {
    check_fixture(test_path("%s/fixtures/tiny-a/model.safetensors", test_data_dir()), "tiny-a file");
    check_fixture(test_path("%s/fixtures/tiny-a", test_data_dir()), "tiny-a dir");
    test_sharded();
    test_bad_files();
    test_e4m3();
    test_fuzz();
    return test_finish();
}
