/* Loader compatibility: a model with a different type mix in every layer
 * loads, binds each layer's expert types and runs to finite logits; the
 * metadata variants a published file may carry (context lengths as u32 or
 * u64, per-layer arrays of n_layer or n_layer + 1 entries as u32 / i32 /
 * f32 / f64, float keys as f64, expert_group_count = 0) load to the same
 * hyperparameters; gate and up experts of different types are refused. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ds4.h"
#include "engine/model.h"
#include "formats/ggml_types.h"
#include "formats/gguf.h"
#include "harness.h"

typedef struct variant {
    int u32_contexts;      /* context_length / original_context_length as u32 */
    int exact_arrays;      /* per-layer arrays of exactly n_layer entries ... */
    int signed_ratios;     /* ... compress ratios as i32 */
    int f64_floats;        /* float keys and the clamp array as f64 */
    int expert_groups;     /* expert_group_count = expert_group_used_count = 0 */
    const char *retype;    /* store this tensor as Q4_K (zero data) */
} variant;

static int copy_kv(gguf_writer *w, const gguf_kv *kv, const variant *v, uint32_t n_layer) {
    const char *k = kv->key;
    int ctx = !strcmp(k, "deepseek4.context_length") || !strcmp(k, "deepseek4.rope.scaling.original_context_length");
    switch (kv->type) {
    case GGUF_VT_U32: return gguf_writer_set_u32(w, k, (uint32_t)kv->v.u64);
    case GGUF_VT_I32: return gguf_writer_set_i32(w, k, (int32_t)kv->v.i64);
    case GGUF_VT_U64:
        if (ctx && v->u32_contexts) return gguf_writer_set_u32(w, k, (uint32_t)kv->v.u64);
        return gguf_writer_set_u64(w, k, kv->v.u64);
    case GGUF_VT_F32:
        if (v->f64_floats) return gguf_writer_set_f64(w, k, kv->v.f64);
        return gguf_writer_set_f32(w, k, (float)kv->v.f64);
    case GGUF_VT_BOOL: return gguf_writer_set_bool(w, k, kv->v.u64 != 0);
    case GGUF_VT_STRING: {
        char *s = strndup(kv->v.str.ptr, kv->v.str.len);
        int rc = gguf_writer_set_str(w, k, s);
        free(s);
        return rc;
    }
    case GGUF_VT_ARRAY: {
        if (kv->arr_type == GGUF_VT_STRING) {
            const char **strs = calloc(kv->arr_count + 1, sizeof *strs);
            for (uint64_t i = 0; i < kv->arr_count; i++) strs[i] = strndup(kv->arr_strs[i].ptr, kv->arr_strs[i].len);
            int rc = gguf_writer_set_arr_str(w, k, strs, kv->arr_count);
            for (uint64_t i = 0; i < kv->arr_count; i++) free((char *)strs[i]);
            free(strs);
            return rc;
        }
        uint64_t n = v->exact_arrays && kv->arr_count > n_layer ? n_layer : kv->arr_count;
        if (!strcmp(k, "deepseek4.attention.compress_ratios") && v->signed_ratios) {
            int32_t r[64];
            memcpy(r, kv->arr_data, n * 4); /* array data is unaligned in the mapping */
            return gguf_writer_set_arr(w, k, GGUF_VT_I32, r, n);
        }
        if (!strcmp(k, "deepseek4.swiglu_clamp_exp") && v->f64_floats) {
            double d[64];
            for (uint64_t i = 0; i < n; i++) {
                float f;
                memcpy(&f, kv->arr_data + 4 * i, 4);
                d[i] = f;
            }
            return gguf_writer_set_arr(w, k, GGUF_VT_F64, d, n);
        }
        return gguf_writer_set_arr(w, k, kv->arr_type, kv->arr_data, n);
    }
    }
    return -1;
}

static int rewrite(const char *src, const char *dst, const variant *v) {
    ds4_error err = {{0}};
    gguf_file *f = gguf_open(src, &err);
    if (!f) return -1;
    uint32_t n_layer = 0;
    gguf_get_u32(f, "deepseek4.block_count", &n_layer, &err);
    gguf_writer *w = gguf_writer_create(dst, f->alignment, &err);
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (copy_kv(w, &f->kv[i], v, n_layer)) return -1;
    if (v->expert_groups) {
        gguf_writer_set_u32(w, "deepseek4.expert_group_count", 0);
        gguf_writer_set_u32(w, "deepseek4.expert_group_used_count", 0);
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        int re = v->retype && !strcmp(t->name, v->retype);
        gguf_writer_add_tensor(w, t->name, re ? GGML_TYPE_Q4_K : t->type, t->n_dims, t->ne);
    }
    if (gguf_writer_begin_data(w, &err)) return -1;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        if (v->retype && !strcmp(t->name, v->retype)) {
            uint64_t nb = 0;
            ggml_nbytes(GGML_TYPE_Q4_K, t->n_elems, &nb);
            gguf_writer_skip(w, nb, &err);
        } else {
            gguf_writer_write(w, t->data, t->nbytes, &err);
        }
    }
    int rc = gguf_writer_finish(w, &err);
    gguf_writer_free(w);
    gguf_close(f);
    return rc;
}

static int same_hparams(const ds4_hparams *a, const ds4_hparams *b) {
    return a->n_layer == b->n_layer && a->n_embd == b->n_embd && a->n_ctx_train == b->n_ctx_train &&
           a->rope_orig_ctx == b->rope_orig_ctx && a->rms_eps == b->rms_eps && a->hc_eps == b->hc_eps &&
           a->expert_scale == b->expert_scale && a->rope_base == b->rope_base &&
           !memcmp(a->compress_ratio, b->compress_ratio, sizeof a->compress_ratio) &&
           !memcmp(a->swiglu_clamp, b->swiglu_clamp, sizeof a->swiglu_clamp);
}

static void check_finite_run(ds4_model *m) {
    ds4_error err = {{0}};
    ds4_session *s = ds4_session_new(m, &(ds4_session_opts){.numerics = DS4_NUMERICS_HF, .max_ctx = 64}, &err);
    CHECKF(s != NULL, "%s", err.msg);
    if (!s) return;
    int32_t toks[12];
    for (int i = 0; i < 12; i++) toks[i] = (i * 37) % 512;
    CHECKF(ds4_session_eval(s, toks, 12, NULL, &err) == 0, "%s", err.msg);
    const float *lg = ds4_session_logits(s);
    int finite = 1;
    double ss = 0;
    for (uint32_t i = 0; i < m->hp.n_vocab; i++) {
        finite &= isfinite(lg[i]) != 0;
        ss += (double)lg[i] * lg[i];
    }
    CHECKF(finite && ss > 0, "logits finite %d, sum of squares %g", finite, ss);
    ds4_session_free(s);
}

int main(void) {
    const char *bin = getenv("DS4_BIN");
    if (!bin) {
        fprintf(stderr, "DS4_BIN not set (run through make test)\n");
        return 77;
    }
    /* Small, but with 256-multiple rows so every block type fits. Layer 0
     * keeps q2; 1: Q4_K; 2: MXFP4 gate/up with Q8_0 down; 3: F16 experts
     * and BF16 attention; 4: Q8_0 experts, F32 shared expert. */
    char *base = strdup(test_path("%s/mixed.gguf", test_tmp_dir()));
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "'%s/ds4-mkmodel' '%s' --layers 5 --embd 256 --vocab 512 --experts 8 --ff 256 --heads 4 --head-dim 64 "
             "--rope-dims 16 --q-lora 256 --o-lora 64 --o-groups 2 --idx-heads 4 --idx-head-dim 64 --idx-topk 4 "
             "--window 8 --hca-ratio 8 --seed 7 -t 2 "
             "--override 'blk.1.ffn_*_exps.weight=q4_k' --override 'blk.2.ffn_gate_exps.weight=mxfp4' "
             "--override 'blk.2.ffn_up_exps.weight=mxfp4' --override 'blk.2.ffn_down_exps.weight=q8_0' "
             "--override 'blk.3.ffn_*_exps.weight=f16' --override 'blk.3.attn_*.weight=bf16' "
             "--override 'blk.4.ffn_*_exps.weight=q8_0' --override 'blk.4.ffn_*_shexp.weight=f32' 2>/dev/null",
             bin, base);
    CHECK(system(cmd) == 0);
    ds4_error err = {{0}};
    ds4_model *m = ds4_model_load(base, &(ds4_model_opts){.n_threads = 2}, &err);
    CHECKF(m != NULL, "the mixed model must load: %s", err.msg);
    if (!m) return test_finish();
    static const uint32_t want[5][2] = {
        {GGML_TYPE_IQ2_XXS, GGML_TYPE_Q2_K}, {GGML_TYPE_Q4_K, GGML_TYPE_Q4_K}, {GGML_TYPE_MXFP4, GGML_TYPE_Q8_0},
        {GGML_TYPE_F16, GGML_TYPE_F16},     {GGML_TYPE_Q8_0, GGML_TYPE_Q8_0},
    };
    for (int il = 0; il < 5; il++) {
        const ds4_layer_weights *l = &m->w.layers[il];
        CHECKF(l->gate_exps.type == want[il][0] && l->up_exps.type == want[il][0] && l->down_exps.type == want[il][1],
               "layer %d: %s/%s/%s", il, ggml_type_name(l->gate_exps.type), ggml_type_name(l->up_exps.type),
               ggml_type_name(l->down_exps.type));
    }
    CHECK(m->w.layers[3].q_b.type == GGML_TYPE_BF16 && m->w.layers[4].down_shexp.type == GGML_TYPE_F32);
    check_finite_run(m);
    ds4_hparams ref = m->hp;
    ds4_model_free(m);

    const variant variants[] = {
        {.u32_contexts = 1},
        {.exact_arrays = 1, .signed_ratios = 1},
        {.f64_floats = 1},
        {.expert_groups = 1},
        {.u32_contexts = 1, .exact_arrays = 1, .signed_ratios = 1, .f64_floats = 1, .expert_groups = 1},
    };
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
        const char *path = test_path("%s/variant%zu.gguf", test_tmp_dir(), i);
        CHECK(rewrite(base, path, &variants[i]) == 0);
        m = ds4_model_load(path, &(ds4_model_opts){.n_threads = 1}, &err);
        CHECKF(m != NULL, "variant %zu refused: %s", i, err.msg);
        if (m) CHECKF(same_hparams(&m->hp, &ref), "variant %zu reads different hyperparameters", i);
        ds4_model_free(m);
    }

    const char *bad = test_path("%s/mismatch.gguf", test_tmp_dir());
    CHECK(rewrite(base, bad, &(variant){.retype = "blk.2.ffn_up_exps.weight"}) == 0);
    m = ds4_model_load(bad, &(ds4_model_opts){.n_threads = 1}, &err);
    CHECK(m == NULL);
    ds4_model_free(m);
    CHECKF(strstr(err.msg, "mismatch.gguf") && strstr(err.msg, "blk.2") && strstr(err.msg, "same type"), "%s", err.msg);
    free(base);
    return test_finish();
}
