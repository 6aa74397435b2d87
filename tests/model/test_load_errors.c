/* Bad models are refused with a message naming the file and the problem:
 * variants of a valid converted fixture with one thing broken each. */
#include <stdlib.h>
#include <string.h>

#include "ds4.h"
#include "formats/ggml_types.h"
#include "formats/gguf.h"
#include "harness.h"
#include "util/half.h"

typedef struct edit {
    const char *drop_tensor;   /* omit this tensor */
    const char *f16_tensor;    /* store this F32 tensor as F16 */
    const char *grow_tensor;   /* add one to ne[0] (data padded with zeros) */
    const char *drop_key;      /* omit this metadata key */
    const char *u32_key;       /* overwrite this u32 key ... */
    uint32_t u32_value;        /* ... with this value */
} edit;

static int rewrite(const char *src, const char *dst, const edit *e) {
    ds4_error err;
    gguf_file *f = gguf_open(src, &err);
    if (!f) return -1;
    gguf_writer *w = gguf_writer_create(dst, f->alignment, &err);
    for (uint64_t i = 0; i < f->n_kv; i++) {
        const gguf_kv *kv = &f->kv[i];
        if (e->drop_key && !strcmp(kv->key, e->drop_key)) continue;
        if (e->u32_key && !strcmp(kv->key, e->u32_key)) {
            gguf_writer_set_u32(w, kv->key, e->u32_value);
            continue;
        }
        if (gguf_writer_copy_kv(w, kv)) return -1;
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        if (e->drop_tensor && !strcmp(t->name, e->drop_tensor)) continue;
        uint64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
        uint32_t type = t->type;
        if (e->grow_tensor && !strcmp(t->name, e->grow_tensor)) ne[0]++;
        if (e->f16_tensor && !strcmp(t->name, e->f16_tensor)) type = GGML_TYPE_F16;
        gguf_writer_add_tensor(w, t->name, type, t->n_dims, ne);
    }
    if (gguf_writer_begin_data(w, &err)) return -1;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        if (e->drop_tensor && !strcmp(t->name, e->drop_tensor)) continue;
        if (e->f16_tensor && !strcmp(t->name, e->f16_tensor)) {
            uint16_t *h = malloc(t->n_elems * 2);
            for (uint64_t k = 0; k < t->n_elems; k++) h[k] = ds4_f32_to_f16(((const float *)t->data)[k]);
            gguf_writer_write(w, h, t->n_elems * 2, &err);
            free(h);
        } else if (e->grow_tensor && !strcmp(t->name, e->grow_tensor)) {
            /* an F32 tensor one column wider: contents do not matter */
            size_t n = (size_t)(t->n_elems / t->ne[0]) * (t->ne[0] + 1) * 4;
            uint8_t *z = calloc(1, n);
            gguf_writer_write(w, z, n, &err);
            free(z);
        } else {
            gguf_writer_write(w, t->data, t->nbytes, &err);
        }
    }
    int rc = gguf_writer_finish(w, &err);
    gguf_writer_free(w);
    gguf_close(f);
    return rc;
}

static void expect_refused(const char *valid, const edit *e, const char *want1, const char *want2) {
    const char *path = test_path("%s/bad.gguf", test_tmp_dir());
    CHECK(rewrite(valid, path, e) == 0);
    ds4_error err = {{0}};
    ds4_model_opts o = {.n_threads = 1};
    ds4_model *m = ds4_model_load(path, &o, &err);
    CHECKF(m == NULL, "variant was accepted (expected: %s)", want1);
    ds4_model_free(m);
    CHECKF(strstr(err.msg, "bad.gguf") != NULL, "message does not name the file: %s", err.msg);
    CHECKF(strstr(err.msg, want1) != NULL, "message lacks '%s': %s", want1, err.msg);
    if (want2) CHECKF(strstr(err.msg, want2) != NULL, "message lacks '%s': %s", want2, err.msg);
    fprintf(stderr, "refused as expected: %s\n", err.msg);
}

int main(void) {
    const char *bin = getenv("DS4_BIN");
    if (!bin) {
        fprintf(stderr, "DS4_BIN not set (run through make test)\n");
        return 77;
    }
    char *valid = strdup(test_path("%s/valid.gguf", test_tmp_dir())); /* test_path buffers rotate */
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s/ds4-convert' '%s/fixtures/tiny-a' '%s' --type f32 2>/dev/null", bin, test_data_dir(), valid);
    CHECK(system(cmd) == 0);
    ds4_error err;
    ds4_model_opts o = {.n_threads = 1};
    ds4_model *m = ds4_model_load(valid, &o, &err);
    CHECKF(m != NULL, "the unmodified model must load: %s", err.msg);
    ds4_model_free(m);

    expect_refused(valid, &(edit){.drop_tensor = "blk.1.attn_kv.weight"}, "missing tensor 'blk.1.attn_kv.weight'", NULL);
    expect_refused(valid, &(edit){.drop_tensor = "blk.2.indexer.proj.weight"}, "blk.2.indexer.proj.weight", NULL);
    expect_refused(valid, &(edit){.grow_tensor = "blk.0.attn_q_a.weight"}, "blk.0.attn_q_a.weight", "shape");
    expect_refused(valid, &(edit){.f16_tensor = "blk.3.attn_norm.weight"}, "blk.3.attn_norm.weight", "type F16");
    expect_refused(valid, &(edit){.drop_key = "deepseek4.attention.sliding_window"}, "deepseek4.attention.sliding_window", NULL);
    expect_refused(valid, &(edit){.u32_key = "deepseek4.attention.value_length", .u32_value = 32}, "value_length", NULL);
    expect_refused(valid, &(edit){.u32_key = "deepseek4.attention.output_group_count", .u32_value = 3}, "output_group_count",
                   NULL);
    expect_refused(valid, &(edit){.u32_key = "deepseek4.expert_count", .u32_value = 16}, "shape", NULL);
    expect_refused(valid, &(edit){.u32_key = "deepseek4.block_count", .u32_value = 9}, "compress_ratios", NULL);
    free(valid);
    return test_finish();
}
