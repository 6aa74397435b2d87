/* Checkpoint tensors under one canonical spelling (DeepSeek's official
 * names), whatever naming the checkpoint uses, and their conversion to
 * float32 including FP8 / FP4 block-scaled weights. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "convert.h"

typedef struct {
    char *name;
    const st_tensor *t;
} entry;

struct ckpt_index {
    entry *e;
    size_t n;
};

/* transformers spellings -> official spellings (after removing "model."). */
static const char *const k_renames[][2] = {
    {"embed_tokens.weight", "embed.weight"},
    {"lm_head.weight", "head.weight"},
    {"hc_head.hc_fn", "hc_head_fn"},
    {"hc_head.hc_base", "hc_head_base"},
    {"hc_head.hc_scale", "hc_head_scale"},
};

/* Per-layer transformers module names -> official (substring replace). */
static const char *const k_layer_renames[][2] = {
    {".self_attn.compressor.indexer.", ".attn.indexer."},
    {".self_attn.compressor.", ".attn.compressor."},
    {".self_attn.", ".attn."},
    {".mlp.shared_experts.gate_proj.", ".ffn.shared_experts.w1."},
    {".mlp.shared_experts.up_proj.", ".ffn.shared_experts.w3."},
    {".mlp.shared_experts.down_proj.", ".ffn.shared_experts.w2."},
    {".mlp.gate.e_score_correction_bias", ".ffn.gate.bias"},
    {".mlp.", ".ffn."},
    {".input_layernorm.", ".attn_norm."},
    {".post_attention_layernorm.", ".ffn_norm."},
    {".attn_hc.fn", ".hc_attn_fn"},
    {".attn_hc.base", ".hc_attn_base"},
    {".attn_hc.scale", ".hc_attn_scale"},
    {".ffn_hc.fn", ".hc_ffn_fn"},
    {".ffn_hc.base", ".hc_ffn_base"},
    {".ffn_hc.scale", ".hc_ffn_scale"},
    {".attn.q_a_proj.", ".attn.wq_a."},
    {".attn.q_b_proj.", ".attn.wq_b."},
    {".attn.q_a_norm.", ".attn.q_norm."},
    {".attn.kv_proj.", ".attn.wkv."},
    {".attn.kv_norm.", ".attn.kv_norm."},
    {".attn.o_a_proj.", ".attn.wo_a."},
    {".attn.o_b_proj.", ".attn.wo_b."},
    {".attn.sinks", ".attn.attn_sink"},
    {".compressor.position_bias", ".compressor.ape"},
    {".compressor.kv_proj.", ".compressor.wkv."},
    {".compressor.gate_proj.", ".compressor.wgate."},
    {".indexer.position_bias", ".indexer.compressor.ape"},
    {".indexer.kv_proj.", ".indexer.compressor.wkv."},
    {".indexer.gate_proj.", ".indexer.compressor.wgate."},
    {".indexer.kv_norm.", ".indexer.compressor.norm."},
    {".indexer.q_b_proj.", ".indexer.wq_b."},
    {".indexer.scorer.weights_proj.", ".indexer.weights_proj."},
};

static void replace_once(char *s, size_t cap, const char *from, const char *to) {
    char *at = strstr(s, from);
    if (!at) return;
    char tail[512];
    snprintf(tail, sizeof tail, "%s", at + strlen(from));
    *at = 0;
    size_t len = strlen(s);
    snprintf(s + len, cap - len, "%s%s", to, tail);
}

static void canonical(const char *in, char *out, size_t cap) {
    if (!strncmp(in, "model.", 6)) in += 6;
    snprintf(out, cap, "%s", in);
    for (size_t i = 0; i < sizeof k_renames / sizeof k_renames[0]; i++)
        if (!strcmp(out, k_renames[i][0])) {
            snprintf(out, cap, "%s", k_renames[i][1]);
            return;
        }
    if (strncmp(out, "layers.", 7)) return;
    for (size_t i = 0; i < sizeof k_layer_renames / sizeof k_layer_renames[0]; i++)
        replace_once(out, cap, k_layer_renames[i][0], k_layer_renames[i][1]);
    /* The fixtures' "attn.norm" is the KV norm. */
    replace_once(out, cap, ".attn.norm.weight", ".attn.kv_norm.weight");
    /* transformers FP8 scales are spelled weight_scale_inv. */
    replace_once(out, cap, ".weight_scale_inv", ".scale");
}

static int cmp_entry(const void *a, const void *b) { return strcmp(((const entry *)a)->name, ((const entry *)b)->name); }

ckpt_index *ckpt_index_build(const st_checkpoint *c, ds4_error *err) {
    ckpt_index *ix = calloc(1, sizeof *ix);
    size_t n = st_count(c);
    if (!ix || !(ix->e = calloc(n ? n : 1, sizeof *ix->e))) {
        free(ix);
        ds4_fail(err, "out of memory indexing the checkpoint");
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        char name[512];
        const st_tensor *t = st_at(c, i);
        canonical(t->name, name, sizeof name);
        ix->e[ix->n].name = strdup(name);
        ix->e[ix->n].t = t;
        ix->n++;
    }
    qsort(ix->e, ix->n, sizeof *ix->e, cmp_entry);
    for (size_t i = 1; i < ix->n; i++)
        if (!strcmp(ix->e[i].name, ix->e[i - 1].name)) {
            ds4_fail(err, "checkpoint: tensors '%s' and '%s' both map to '%s'", ix->e[i - 1].t->name, ix->e[i].t->name,
                     ix->e[i].name);
            ckpt_index_free(ix);
            return NULL;
        }
    return ix;
}

void ckpt_index_free(ckpt_index *ix) {
    if (!ix) return;
    for (size_t i = 0; i < ix->n; i++) free(ix->e[i].name);
    free(ix->e);
    free(ix);
}

const st_tensor *ckpt_find(const ckpt_index *ix, const char *canonical_name) {
    entry key = {(char *)canonical_name, NULL};
    const entry *e = bsearch(&key, ix->e, ix->n, sizeof *ix->e, cmp_entry);
    return e ? e->t : NULL;
}

static int check_shape(const st_tensor *t, uint64_t rows, uint64_t cols, uint64_t col_div, ds4_error *err) {
    uint64_t want_c = cols / col_div;
    int ok = cols ? (t->n_dims == 2 && t->shape[0] == rows && t->shape[1] == want_c)
                  : (t->n_elems == rows && (t->n_dims == 1 || (t->n_dims == 2 && t->shape[0] == 1)));
    if (ok) return 0;
    char got[128];
    int n = 0;
    for (uint32_t d = 0; d < t->n_dims; d++)
        n += snprintf(got + n, sizeof got - (size_t)n, "%s%llu", d ? ", " : "", (unsigned long long)t->shape[d]);
    if (cols) return ds4_fail(err, "checkpoint tensor '%s' has shape [%s], expected [%llu, %llu]", t->name, got,
                              (unsigned long long)rows, (unsigned long long)want_c);
    return ds4_fail(err, "checkpoint tensor '%s' has shape [%s], expected [%llu]", t->name, got, (unsigned long long)rows);
}

static float e8m0(uint8_t b) { return ldexpf(1.0f, (int)b - 127); }

static const float k_e2m1[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};

/* The block-scale companion of "X.weight" is "X.scale". */
static const st_tensor *find_scale(const ckpt_index *ix, const char *name, char *sname, size_t cap) {
    size_t n = strlen(name);
    if (n < 7 || strcmp(name + n - 7, ".weight")) return NULL;
    snprintf(sname, cap, "%.*s.scale", (int)(n - 7), name);
    return ckpt_find(ix, sname);
}

int ckpt_fp4_planes(const ckpt_index *ix, const char *name, uint64_t rows, uint64_t cols, const uint8_t **codes,
                    const uint8_t **scales, ds4_error *err) {
    const st_tensor *t = ckpt_find(ix, name);
    char sname[512];
    const st_tensor *sc = t ? find_scale(ix, name, sname, sizeof sname) : NULL;
    if (!t || !sc || t->dtype != ST_I8 || !cols || (sc->dtype != ST_F8_E8M0 && sc->dtype != ST_U8)) return 0;
    if (check_shape(t, rows, cols, 2, err) || check_shape(sc, rows, cols, 32, err)) return -1;
    *codes = t->data;
    *scales = sc->data;
    return 1;
}

int ckpt_read_f32(const ckpt_index *ix, const char *name, uint64_t rows, uint64_t cols, float *out, ds4_error *err) {
    const st_tensor *t = ckpt_find(ix, name);
    if (!t) return ds4_fail(err, "checkpoint: missing tensor '%s'", name);
    char sname[512];
    const st_tensor *sc = find_scale(ix, name, sname, sizeof sname);

    if (t->dtype == ST_I8 && sc && cols) {
        /* FP4 e2m1 experts: two codes per byte (low nibble first), one e8m0
         * scale per 32 inputs of a row. */
        if (check_shape(t, rows, cols, 2, err) || check_shape(sc, rows, cols, 32, err)) return -1;
        const uint8_t *q = t->data, *s = sc->data;
        for (uint64_t r = 0; r < rows; r++)
            for (uint64_t c = 0; c < cols; c++) {
                uint8_t byte = q[r * (cols / 2) + c / 2];
                out[r * cols + c] = k_e2m1[c & 1 ? byte >> 4 : byte & 15] * e8m0(s[r * (cols / 32) + c / 32]);
            }
        return 0;
    }
    if (check_shape(t, rows, cols, 1, err)) return -1;
    if (st_read_f32(t, out, err)) return ds4_fail_prefix(err, "checkpoint tensor '%s'", t->name);
    if (t->dtype == ST_F8_E4M3) {
        /* FP8 weights: one scale per 128 x 128 block (e8m0 or float). */
        if (!sc) return ds4_fail(err, "checkpoint: FP8 tensor '%s' has no '%s' companion", t->name, sname);
        uint64_t br = (rows + 127) / 128, bc = (cols + 127) / 128;
        if (sc->n_elems != br * bc)
            return ds4_fail(err, "checkpoint: scale '%s' has %llu entries, expected %llu x %llu", sc->name,
                            (unsigned long long)sc->n_elems, (unsigned long long)br, (unsigned long long)bc);
        float *scales = malloc(br * bc * sizeof(float));
        if (!scales) return ds4_fail(err, "out of memory");
        if (sc->dtype == ST_F8_E8M0 || sc->dtype == ST_U8) {
            const uint8_t *s = sc->data;
            for (uint64_t i = 0; i < br * bc; i++) scales[i] = e8m0(s[i]);
        } else if (st_read_f32(sc, scales, err)) {
            free(scales);
            return -1;
        }
        for (uint64_t r = 0; r < rows; r++)
            for (uint64_t c = 0; c < cols; c++) out[r * cols + c] *= scales[(r / 128) * bc + c / 128];
        free(scales);
    }
    return 0;
}

int ckpt_read_i32(const ckpt_index *ix, const char *name, uint64_t rows, uint64_t cols, uint32_t max_value, int32_t *out,
                  ds4_error *err) {
    const st_tensor *t = ckpt_find(ix, name);
    if (!t) return ds4_fail(err, "checkpoint: missing tensor '%s'", name);
    if (check_shape(t, rows, cols, 1, err)) return -1;
    int64_t *tmp = malloc(t->n_elems * sizeof *tmp);
    if (!tmp) return ds4_fail(err, "out of memory");
    if (st_read_i64(t, tmp, err)) {
        free(tmp);
        return ds4_fail_prefix(err, "checkpoint tensor '%s'", t->name);
    }
    for (uint64_t i = 0; i < t->n_elems; i++) {
        if (tmp[i] < 0 || tmp[i] > max_value) {
            long long bad = (long long)tmp[i];
            free(tmp);
            return ds4_fail(err, "checkpoint tensor '%s': entry %llu = %lld is out of range 0..%u", t->name,
                            (unsigned long long)i, bad, max_value);
        }
        out[i] = (int32_t)tmp[i];
    }
    free(tmp);
    return 0;
}
