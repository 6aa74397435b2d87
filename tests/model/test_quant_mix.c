/* The tensor layout and the quantization mixes at the real Flash geometry:
 * 1328 tensors, every name's type in the q2 and q4 mixes exactly as in the
 * published files (spec/MODEL.md §8.3), the published sizes (80.76 GiB and
 * about 153 GiB), overrides, row-length fallbacks and refusals. */
#include <stdlib.h>
#include <string.h>

#include "formats/ggml_types.h"
#include "harness.h"
#include "model/layout.h"
#include "model/quant_mix.h"

/* §8.3, by name suffix (after "blk.N."), for the q2 / q4 files. */
typedef struct want {
    const char *suffix;
    uint32_t q2, q4;
} want;

static const want k_want[] = {
    {"token_embd.weight", GGML_TYPE_F16, GGML_TYPE_F16},
    {"output.weight", GGML_TYPE_Q8_0, GGML_TYPE_Q8_0},
    {"output_norm.weight", GGML_TYPE_F32, GGML_TYPE_F32},
    {"output_hc_fn.weight", GGML_TYPE_F16, GGML_TYPE_F16},
    {"output_hc_base.weight", GGML_TYPE_F32, GGML_TYPE_F32},
    {"output_hc_scale.weight", GGML_TYPE_F32, GGML_TYPE_F32},
    {"hc_attn_fn.weight", GGML_TYPE_F16, GGML_TYPE_F16},
    {"hc_ffn_fn.weight", GGML_TYPE_F16, GGML_TYPE_F16},
    {"hc_attn_base.weight", GGML_TYPE_F32, GGML_TYPE_F32},
    {"hc_ffn_base.weight", GGML_TYPE_F32, GGML_TYPE_F32},
    {"hc_attn_scale.weight", GGML_TYPE_F32, GGML_TYPE_F32},
    {"hc_ffn_scale.weight", GGML_TYPE_F32, GGML_TYPE_F32},
    {"attn_norm.weight", GGML_TYPE_F32, GGML_TYPE_F32},
    {"ffn_norm.weight", GGML_TYPE_F32, GGML_TYPE_F32},
    {"attn_q_a.weight", GGML_TYPE_Q8_0, GGML_TYPE_Q8_0},
    {"attn_q_a_norm.weight", GGML_TYPE_F32, GGML_TYPE_F32},
    {"attn_q_b.weight", GGML_TYPE_Q8_0, GGML_TYPE_Q8_0},
    {"attn_kv.weight", GGML_TYPE_Q8_0, GGML_TYPE_Q8_0},
    {"attn_kv_a_norm.weight", GGML_TYPE_F32, GGML_TYPE_F32},
    {"attn_sinks.weight", GGML_TYPE_F32, GGML_TYPE_F32},
    {"attn_output_a.weight", GGML_TYPE_Q8_0, GGML_TYPE_Q8_0},
    {"attn_output_b.weight", GGML_TYPE_Q8_0, GGML_TYPE_Q8_0},
    {"attn_compressor_ape.weight", GGML_TYPE_F16, GGML_TYPE_F16},
    {"attn_compressor_kv.weight", GGML_TYPE_F16, GGML_TYPE_F16},
    {"attn_compressor_gate.weight", GGML_TYPE_F16, GGML_TYPE_F16},
    {"attn_compressor_norm.weight", GGML_TYPE_F32, GGML_TYPE_F32},
    {"indexer.attn_q_b.weight", GGML_TYPE_F16, GGML_TYPE_F16},
    {"indexer.proj.weight", GGML_TYPE_F16, GGML_TYPE_F16},
    {"indexer_compressor_ape.weight", GGML_TYPE_F16, GGML_TYPE_F16},
    {"indexer_compressor_kv.weight", GGML_TYPE_F16, GGML_TYPE_F16},
    {"indexer_compressor_gate.weight", GGML_TYPE_F16, GGML_TYPE_F16},
    {"indexer_compressor_norm.weight", GGML_TYPE_F32, GGML_TYPE_F32},
    {"ffn_gate_inp.weight", GGML_TYPE_F16, GGML_TYPE_F16},
    {"exp_probs_b.bias", GGML_TYPE_F32, GGML_TYPE_F32},
    {"ffn_gate_tid2eid.weight", GGML_TYPE_I32, GGML_TYPE_I32},
    {"ffn_gate_exps.weight", GGML_TYPE_IQ2_XXS, GGML_TYPE_Q4_K},
    {"ffn_up_exps.weight", GGML_TYPE_IQ2_XXS, GGML_TYPE_Q4_K},
    {"ffn_down_exps.weight", GGML_TYPE_Q2_K, GGML_TYPE_Q4_K},
    {"ffn_gate_shexp.weight", GGML_TYPE_Q8_0, GGML_TYPE_Q8_0},
    {"ffn_up_shexp.weight", GGML_TYPE_Q8_0, GGML_TYPE_Q8_0},
    {"ffn_down_shexp.weight", GGML_TYPE_Q8_0, GGML_TYPE_Q8_0},
};

static const want *lookup(const char *name) {
    const char *s = name;
    if (!strncmp(s, "blk.", 4)) s = strchr(s + 4, '.') + 1;
    for (size_t i = 0; i < sizeof k_want / sizeof k_want[0]; i++)
        if (!strcmp(s, k_want[i].suffix)) return &k_want[i];
    return NULL;
}

static uint64_t file_bytes(const ds4_layout *l, const uint32_t *types) {
    uint64_t total = 0;
    for (size_t i = 0; i < l->n; i++) {
        uint64_t nb = 0;
        CHECK(ggml_nbytes(types[i], l->t[i].ne[0] * l->t[i].ne[1] * l->t[i].ne[2], &nb));
        total += nb;
    }
    return total;
}

static void check_published(const ds4_layout *l, const char *mix, int q4) {
    ds4_error err = {{0}};
    ds4_quant_mix *m = ds4_quant_mix_new(mix, &err);
    CHECKF(m != NULL, "%s", err.msg);
    if (!m) return;
    uint32_t *types = calloc(l->n, sizeof *types);
    CHECKF(ds4_quant_mix_resolve(m, l, types, NULL, "test", &err) == 0, "%s", err.msg);
    for (size_t i = 0; i < l->n; i++) {
        const want *w = lookup(l->t[i].name);
        CHECKF(w != NULL, "unexpected tensor %s", l->t[i].name);
        if (w)
            CHECKF(types[i] == (q4 ? w->q4 : w->q2), "%s %s: got %s", mix, l->t[i].name, ggml_type_name(types[i]));
    }
    /* The published sizes: q2 80.76 GiB (spec §8.1), q4 about 153 GB. */
    double gib = file_bytes(l, types) / (double)(1ull << 30);
    printf("%s: %.2f GiB\n", mix, gib);
    if (q4) CHECKF(gib > 153.0 && gib < 153.6, "%.3f GiB", gib);
    else CHECKF(gib > 80.75 && gib < 80.77, "%.3f GiB", gib);
    free(types);
    ds4_quant_mix_free(m);
}

static void test_flash_layout(void) {
    ds4_hparams hp;
    ds4_hparams_flash(&hp);
    ds4_layout l;
    ds4_error err = {{0}};
    CHECK(ds4_layout_build(&l, &hp, &err) == 0);
    /* 6 global + 43 x 24 per layer + 41 x 4 compressor + 21 x 6 indexer */
    CHECKF(l.n == 1328, "%zu tensors", l.n);
    size_t tid = 0, bias = 0, ape_csa = 0, ape_hca = 0;
    for (size_t i = 0; i < l.n; i++) {
        const ds4_layout_tensor *t = &l.t[i];
        if (strstr(t->name, "tid2eid")) {
            tid++;
            CHECK(t->ne[0] == 6 && t->ne[1] == 129280 && t->layer <= 2);
        }
        if (strstr(t->name, "exp_probs_b")) bias++;
        if (strstr(t->name, "attn_compressor_ape")) {
            if (t->ne[0] == 1024 && t->ne[1] == 4) ape_csa++;
            if (t->ne[0] == 512 && t->ne[1] == 128) ape_hca++;
        }
        if (!strcmp(t->name, "blk.7.ffn_down_exps.weight"))
            CHECK(t->ne[0] == 2048 && t->ne[1] == 4096 && t->ne[2] == 256 && !strcmp(t->src, "layers.7.ffn.experts.%u.w2.weight"));
        if (!strcmp(t->name, "blk.0.attn_output_a.weight")) CHECK(t->ne[0] == 4096 && t->ne[1] == 8192);
        if (!strcmp(t->name, "output_hc_fn.weight")) CHECK(t->ne[0] == 16384 && t->ne[1] == 4);
    }
    CHECK(tid == 3 && bias == 40 && ape_csa == 21 && ape_hca == 20);
    check_published(&l, "q2", 0);
    check_published(&l, "q4", 1);
    ds4_layout_free(&l);
}

static uint32_t type_of(const ds4_layout *l, const uint32_t *types, const char *name) {
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->t[i].name, name)) return types[i];
    return GGML_TYPE_COUNT_MAX;
}

static void test_overrides_and_fallbacks(void) {
    ds4_hparams hp;
    ds4_hparams_flash(&hp);
    hp.n_layer = 4;
    hp.n_embd = 4096;
    ds4_layout l;
    ds4_error err = {{0}};
    CHECK(ds4_layout_build(&l, &hp, &err) == 0);
    uint32_t *types = calloc(l.n, sizeof *types);

    /* A mixed file: q2 with layer 3's experts from q4, and Q8_0 routers. */
    ds4_quant_mix *m = ds4_quant_mix_new("q2", &err);
    CHECK(ds4_quant_mix_override(m, "blk.3.ffn_*_exps.weight=q4_k", &err) == 0);
    CHECK(ds4_quant_mix_override(m, "*.ffn_gate_inp.weight=Q8_0", &err) == 0);
    CHECK(ds4_quant_mix_override(m, "*=f32", &err) == 0);           /* broad: vectors keep F32 ... */
    CHECK(ds4_quant_mix_override(m, "*=q2_k", &err) == 0);          /* ... and the last match wins */
    CHECK(ds4_quant_mix_resolve(m, &l, types, NULL, "test", &err) != 0); /* hc fn cannot be Q2_K */
    CHECKF(strstr(err.msg, "hc_fn") && strstr(err.msg, "Q2_K") && strstr(err.msg, "--override '*'"), "%s", err.msg);
    ds4_quant_mix_free(m);

    m = ds4_quant_mix_new("q2", &err);
    CHECK(ds4_quant_mix_override(m, "blk.3.ffn_*_exps.weight=q4_k", &err) == 0);
    CHECK(ds4_quant_mix_override(m, "*.ffn_gate_inp.weight=Q8_0", &err) == 0);
    CHECKF(ds4_quant_mix_resolve(m, &l, types, NULL, "test", &err) == 0, "%s", err.msg);
    CHECK(type_of(&l, types, "blk.3.ffn_gate_exps.weight") == GGML_TYPE_Q4_K);
    CHECK(type_of(&l, types, "blk.3.ffn_down_exps.weight") == GGML_TYPE_Q4_K);
    CHECK(type_of(&l, types, "blk.2.ffn_up_exps.weight") == GGML_TYPE_IQ2_XXS);
    CHECK(type_of(&l, types, "blk.0.ffn_gate_inp.weight") == GGML_TYPE_Q8_0);
    CHECK(type_of(&l, types, "blk.0.ffn_gate_tid2eid.weight") == GGML_TYPE_I32);
    ds4_quant_mix_free(m);

    /* gate and up must agree */
    m = ds4_quant_mix_new("q2", &err);
    CHECK(ds4_quant_mix_override(m, "blk.1.ffn_up_exps.weight=q4_k", &err) == 0);
    CHECK(ds4_quant_mix_resolve(m, &l, types, NULL, "test", &err) != 0);
    CHECKF(strstr(err.msg, "blk.1.ffn_gate_exps.weight") && strstr(err.msg, "same type"), "%s", err.msg);
    ds4_quant_mix_free(m);

    /* bad specs */
    m = ds4_quant_mix_new("q2", &err);
    CHECK(ds4_quant_mix_override(m, "no-equals", &err) != 0 && strstr(err.msg, "PATTERN=TYPE"));
    CHECK(ds4_quant_mix_override(m, "x=q3_k", &err) != 0 && strstr(err.msg, "q3_k"));
    CHECK(ds4_quant_mix_override(m, "x=i32", &err) != 0);
    ds4_quant_mix_free(m);
    CHECK(ds4_quant_mix_new("q3", &err) == NULL && strstr(err.msg, "q3"));
    ds4_layout_free(&l);

    /* Row lengths: a 128-wide model cannot hold 256-value blocks. */
    hp.n_embd = 128;
    hp.n_ff_exp = 80; /* not even a multiple of 32 */
    CHECK(ds4_layout_build(&l, &hp, &err) == 0);
    free(types);
    types = calloc(l.n, sizeof *types);
    m = ds4_quant_mix_new("q2", &err);
    FILE *notes = tmpfile();
    CHECKF(ds4_quant_mix_resolve(m, &l, types, notes, "test", &err) == 0, "%s", err.msg);
    CHECK(type_of(&l, types, "blk.0.ffn_gate_exps.weight") == GGML_TYPE_Q8_0); /* rows of 128 */
    CHECK(type_of(&l, types, "blk.0.ffn_down_exps.weight") == GGML_TYPE_F16);  /* rows of 80 */
    CHECK(type_of(&l, types, "blk.0.ffn_down_shexp.weight") == GGML_TYPE_F16); /* Q8_0 -> F16 */
    CHECK(type_of(&l, types, "blk.0.attn_q_a.weight") == GGML_TYPE_Q8_0);
    char line[512] = "";
    rewind(notes);
    CHECK(fgets(line, sizeof line, notes) != NULL);
    CHECKF(strstr(line, "test: note:") && strstr(line, "do not fit") && strstr(line, "using"), "%s", line);
    fclose(notes);
    ds4_quant_mix_free(m);
    ds4_layout_free(&l);
    free(types);
}

int main(void) {
    test_flash_layout();
    test_overrides_and_fallbacks();
    return test_finish();
}
