/* Importance matrices: llama.cpp's legacy .dat (as ds4 --imatrix-out writes
 * it, with per-expert slices and the chunk/dataset trailer) and GGUF
 * (in_sum2 / counts) read back to the same importance; unseen experts give
 * none; size mismatches and corrupt files are refused with the file named. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/ggml_types.h"
#include "formats/gguf.h"
#include "formats/imatrix.h"
#include "harness.h"

#define NE0 64
#define NX 3 /* experts */

static void put_i32(FILE *f, int32_t v) { fwrite(&v, 4, 1, f); }

static void put_entry(FILE *f, const char *name, int32_t ncall, const float *v, int32_t n) {
    put_i32(f, (int32_t)strlen(name));
    fwrite(name, 1, strlen(name), f);
    put_i32(f, ncall);
    put_i32(f, n);
    fwrite(v, 4, (size_t)n, f);
}

/* Expert e, column k: mean square (e + 1) * (k + 1) / 8; expert 1 unseen. */
static float want(int e, int k) { return e == 1 ? 0.0f : (float)(e + 1) * (float)(k + 1) / 8.0f; }

static const char *write_dat(int trailer) {
    const char *path = test_path("%s/im%d.dat", test_tmp_dir(), trailer);
    FILE *f = fopen(path, "wb");
    put_i32(f, 2);
    float ex[NX * NE0], dense[NE0];
    for (int e = 0; e < NX; e++)
        for (int k = 0; k < NE0; k++) ex[e * NE0 + k] = 4 * want(e, k); /* stored as sums over 4 calls */
    for (int k = 0; k < NE0; k++) dense[k] = 0.5f + k;
    put_entry(f, "blk.0.ffn_gate_exps.weight", 4, ex, NX * NE0);
    put_entry(f, "blk.0.attn_q_a.weight", 0, dense, NE0); /* ncall 0 counts as 1 */
    if (trailer) {
        put_i32(f, 17);
        put_i32(f, 8);
        fwrite("prompts!", 1, 8, f);
    }
    fclose(f);
    return path;
}

static const char *write_gguf(void) {
    const char *path = test_path("%s/im.gguf", test_tmp_dir());
    ds4_error err = {{0}};
    gguf_writer *w = gguf_writer_create(path, 32, &err);
    const char *ds[] = {"calib.txt"};
    gguf_writer_set_str(w, "general.type", "imatrix");
    gguf_writer_set_arr_str(w, "imatrix.datasets", ds, 1);
    gguf_writer_set_u32(w, "imatrix.chunk_count", 9);
    float sums[NX * NE0], counts[NX] = {10, 0, 3}, dsum[NE0], dcount[1] = {2};
    for (int e = 0; e < NX; e++)
        for (int k = 0; k < NE0; k++) sums[e * NE0 + k] = want(e, k) * counts[e];
    for (int k = 0; k < NE0; k++) dsum[k] = 2 * (0.5f + k);
    gguf_writer_add_tensor(w, "blk.0.ffn_gate_exps.weight.in_sum2", GGML_TYPE_F32, 2, (const uint64_t[]){NE0, NX});
    gguf_writer_add_tensor(w, "blk.0.ffn_gate_exps.weight.counts", GGML_TYPE_F32, 2, (const uint64_t[]){1, NX});
    gguf_writer_add_tensor(w, "blk.0.attn_q_a.weight.in_sum2", GGML_TYPE_F32, 2, (const uint64_t[]){NE0, 1});
    gguf_writer_add_tensor(w, "blk.0.attn_q_a.weight.counts", GGML_TYPE_F32, 2, (const uint64_t[]){1, 1});
    CHECK(gguf_writer_begin_data(w, &err) == 0);
    gguf_writer_write(w, sums, sizeof sums, &err);
    gguf_writer_write(w, counts, sizeof counts, &err);
    gguf_writer_write(w, dsum, sizeof dsum, &err);
    gguf_writer_write(w, dcount, sizeof dcount, &err);
    CHECKF(gguf_writer_finish(w, &err) == 0, "%s", err.msg);
    gguf_writer_free(w);
    return path;
}

static void check_contents(const char *path, int chunks, const char *dataset) {
    ds4_error err = {{0}};
    ds4_imatrix *im = ds4_imatrix_load(path, &err);
    CHECKF(im != NULL, "%s: %s", path, err.msg);
    if (!im) return;
    CHECK(ds4_imatrix_entries(im) == 2);
    CHECKF(ds4_imatrix_chunks(im) == chunks, "%s: chunks %d", path, ds4_imatrix_chunks(im));
    CHECKF(!strcmp(ds4_imatrix_dataset(im), dataset), "%s: dataset '%s'", path, ds4_imatrix_dataset(im));
    for (int e = 0; e < NX; e++) {
        const float *v = (const float *)1;
        CHECK(ds4_imatrix_get(im, "blk.0.ffn_gate_exps.weight", NE0, NX, (uint64_t)e, &v, &err) == 0);
        if (e == 1) {
            CHECKF(v == NULL, "%s: the unseen expert must have no importance", path);
            continue;
        }
        CHECK(v != NULL);
        int ok = 1;
        for (int k = 0; v && k < NE0; k++) ok &= fabsf(v[k] - want(e, k)) <= 1e-6f * want(e, k);
        CHECKF(ok, "%s: expert %d values", path, e);
    }
    const float *d = NULL;
    CHECK(ds4_imatrix_get(im, "blk.0.attn_q_a.weight", NE0, 1, 0, &d, &err) == 0 && d && d[3] == 3.5f);
    CHECK(ds4_imatrix_get(im, "blk.9.attn_q_a.weight", NE0, 1, 0, &d, &err) == 0 && d == NULL); /* absent */
    CHECK(ds4_imatrix_get(im, "blk.0.attn_q_a.weight", 128, 1, 0, &d, &err) != 0);            /* wrong size */
    CHECKF(strstr(err.msg, path) && strstr(err.msg, "blk.0.attn_q_a.weight"), "%s", err.msg);
    ds4_imatrix_free(im);
}

static void expect_bad(const void *bytes, size_t n, const char *want_msg) {
    const char *path = test_path("%s/bad.dat", test_tmp_dir());
    FILE *f = fopen(path, "wb");
    fwrite(bytes, 1, n, f);
    fclose(f);
    ds4_error err = {{0}};
    ds4_imatrix *im = ds4_imatrix_load(path, &err);
    CHECKF(im == NULL, "corrupt file accepted (%s)", want_msg);
    ds4_imatrix_free(im);
    CHECKF(strstr(err.msg, "bad.dat") && strstr(err.msg, want_msg), "%s", err.msg);
}

int main(void) {
    check_contents(write_dat(1), 17, "prompts!");
    check_contents(write_dat(0), -1, "");
    check_contents(write_gguf(), 9, "calib.txt");

    ds4_error err = {{0}};
    CHECK(ds4_imatrix_load(test_path("%s/none.dat", test_tmp_dir()), &err) == NULL && strstr(err.msg, "cannot open"));
    expect_bad("", 0, "empty");
    int32_t neg = -1;
    expect_bad(&neg, 4, "entry count");
    /* one entry claiming 1000 values with 2 present */
    uint8_t trunc[4 + 4 + 1 + 4 + 4 + 8] = {1, 0, 0, 0, 1, 0, 0, 0, 'x', 1, 0, 0, 0, 0xe8, 0x03, 0, 0};
    expect_bad(trunc, sizeof trunc, "'x'");
    /* the same name twice */
    const char *path = test_path("%s/dup.dat", test_tmp_dir());
    FILE *f = fopen(path, "wb");
    float one = 1;
    put_i32(f, 2);
    put_entry(f, "t", 1, &one, 1);
    put_entry(f, "t", 1, &one, 1);
    fclose(f);
    CHECK(ds4_imatrix_load(path, &err) == NULL && strstr(err.msg, "twice"));
    return test_finish();
}
