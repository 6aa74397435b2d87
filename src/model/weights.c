#include "model/weights.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "formats/ggml_types.h"
#include "model/layout.h"

/* Allowed-type sets per role, shared with the writers (model/layout.h). */
#define T(x) DS4_TYPE_BIT(x)
#define TYPES_VEC DS4_TYPES_VEC
#define TYPES_DENSE DS4_TYPES_DENSE
#define TYPES_SMALL DS4_TYPES_SMALL
#define TYPES_I32 DS4_TYPES_I32

typedef struct binder {
    const gguf_file *f;
    uint64_t supported; /* matrix types the backend can multiply */
    unsigned flags;     /* DS4_BIND_* */
    ds4_error *err;
} binder;

static int bind(binder *b, ds4_tensor *dst, int required, uint64_t types, uint32_t n_dims, const uint64_t *ne,
                const char *fmt, ...) __attribute__((format(printf, 7, 8)));

static int bind(binder *b, ds4_tensor *dst, int required, uint64_t types, uint32_t n_dims, const uint64_t *ne,
                const char *fmt, ...) {
    char name[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const gguf_tensor *t = gguf_find_tensor(b->f, name);
    if (!t) {
        if (!required) return 0;
        return ds4_fail(b->err, "%s: missing tensor '%s'", b->f->path, name);
    }
    uint32_t rank = t->n_dims;
    while (rank > 1 && t->ne[rank - 1] == 1) rank--; /* trailing 1s are not a shape mismatch */
    uint32_t want_rank = n_dims;
    while (want_rank > 1 && ne[want_rank - 1] == 1) want_rank--;
    int ok = rank == want_rank;
    for (uint32_t d = 0; ok && d < n_dims; d++) ok = t->ne[d] == ne[d];
    if (!ok) {
        char got[96], want[96];
        int g = 0, w = 0;
        for (uint32_t d = 0; d < t->n_dims; d++)
            g += snprintf(got + g, sizeof got - (size_t)g, "%s%llu", d ? " x " : "", (unsigned long long)t->ne[d]);
        for (uint32_t d = 0; d < n_dims; d++)
            w += snprintf(want + w, sizeof want - (size_t)w, "%s%llu", d ? " x " : "", (unsigned long long)ne[d]);
        return ds4_fail(b->err, "%s: tensor '%s' has shape [%s], expected [%s] from the metadata", b->f->path, name, got, want);
    }
    if (t->type >= 64 || !(types & T(t->type))) {
        char list[256];
        int n = 0;
        for (uint32_t ty = 0; ty < 64; ty++)
            if (types & T(ty)) n += snprintf(list + n, sizeof list - (size_t)n, "%s%s", n ? ", " : "", ggml_type_name(ty));
        return ds4_fail(b->err, "%s: tensor '%s' has type %s, expected one of: %s", b->f->path, name,
                        ggml_type_name(t->type), list);
    }
    if ((types & TYPES_DENSE) == TYPES_DENSE && !(b->supported & T(t->type)))
        return ds4_fail(b->err, "%s: tensor '%s' has type %s, which this build cannot multiply yet", b->f->path, name,
                        ggml_type_name(t->type));
    dst->name = t->name;
    dst->type = t->type;
    for (int d = 0; d < 4; d++) dst->ne[d] = d < (int)t->n_dims ? t->ne[d] : 1;
    dst->data = t->data;
    uint64_t rb;
    if (!ggml_nbytes(t->type, t->ne[0], &rb)) return ds4_fail(b->err, "%s: tensor '%s': bad row size", b->f->path, name);
    dst->row_bytes = rb;
    return 0;
}

#define SHAPE(...) (sizeof((uint64_t[]){__VA_ARGS__}) / sizeof(uint64_t)), ((const uint64_t[]){__VA_ARGS__})

static int bind_hc(binder *b, ds4_hc_weights *hc, const ds4_hparams *hp, uint64_t n_mix, const char *prefix) {
    uint64_t flat = (uint64_t)hp->hc * hp->n_embd;
    uint64_t n_scale = n_mix == hp->hc ? 1 : 3;
    if (bind(b, &hc->fn, 1, TYPES_SMALL, SHAPE(flat, n_mix), "%s_fn.weight", prefix)) return -1;
    if (bind(b, &hc->base, 1, TYPES_VEC, SHAPE(n_mix), "%s_base.weight", prefix)) return -1;
    if (bind(b, &hc->scale, 1, TYPES_VEC, SHAPE(n_scale), "%s_scale.weight", prefix)) return -1;
    return 0;
}

static int bind_compressor(binder *b, ds4_compressor_weights *c, const ds4_hparams *hp, uint32_t il, const char *prefix,
                           uint64_t width, uint64_t ratio, uint64_t halves) {
    if (bind(b, &c->ape, 1, TYPES_SMALL, SHAPE(halves * width, ratio), "blk.%u.%s_ape.weight", il, prefix)) return -1;
    if (bind(b, &c->kv, 1, TYPES_DENSE, SHAPE(hp->n_embd, halves * width), "blk.%u.%s_kv.weight", il, prefix)) return -1;
    if (bind(b, &c->gate, 1, TYPES_DENSE, SHAPE(hp->n_embd, halves * width), "blk.%u.%s_gate.weight", il, prefix)) return -1;
    if (bind(b, &c->norm, 1, TYPES_VEC, SHAPE(width), "blk.%u.%s_norm.weight", il, prefix)) return -1;
    return 0;
}

static int bind_layer(binder *b, ds4_layer_weights *l, const ds4_hparams *hp, uint32_t il) {
    char pre[64];
    uint64_t E = hp->n_embd, qdim = (uint64_t)hp->n_head * hp->head_dim;
    snprintf(pre, sizeof pre, "blk.%u.hc_attn", il);
    if (bind_hc(b, &l->hc_attn, hp, (2 + hp->hc) * hp->hc, pre)) return -1;
    snprintf(pre, sizeof pre, "blk.%u.hc_ffn", il);
    if (bind_hc(b, &l->hc_ffn, hp, (2 + hp->hc) * hp->hc, pre)) return -1;
    if (bind(b, &l->attn_norm, 1, TYPES_VEC, SHAPE(E), "blk.%u.attn_norm.weight", il)) return -1;
    if (bind(b, &l->ffn_norm, 1, TYPES_VEC, SHAPE(E), "blk.%u.ffn_norm.weight", il)) return -1;
    if (bind(b, &l->q_a, 1, TYPES_DENSE, SHAPE(E, hp->q_lora), "blk.%u.attn_q_a.weight", il)) return -1;
    if (bind(b, &l->q_a_norm, 1, TYPES_VEC, SHAPE(hp->q_lora), "blk.%u.attn_q_a_norm.weight", il)) return -1;
    if (bind(b, &l->q_b, 1, TYPES_DENSE, SHAPE(hp->q_lora, qdim), "blk.%u.attn_q_b.weight", il)) return -1;
    if (bind(b, &l->kv, 1, TYPES_DENSE, SHAPE(E, hp->head_dim), "blk.%u.attn_kv.weight", il)) return -1;
    if (bind(b, &l->kv_norm, 1, TYPES_VEC, SHAPE(hp->head_dim), "blk.%u.attn_kv_a_norm.weight", il)) return -1;
    if (bind(b, &l->sinks, 1, TYPES_VEC, SHAPE(hp->n_head), "blk.%u.attn_sinks.weight", il)) return -1;
    if (bind(b, &l->out_a, 1, TYPES_DENSE, SHAPE(qdim / hp->o_groups, (uint64_t)hp->o_groups * hp->o_lora),
             "blk.%u.attn_output_a.weight", il))
        return -1;
    if (bind(b, &l->out_b, 1, TYPES_DENSE, SHAPE((uint64_t)hp->o_groups * hp->o_lora, E), "blk.%u.attn_output_b.weight", il))
        return -1;
    uint32_t ratio = hp->compress_ratio[il];
    if (ratio) {
        uint64_t halves = ratio == 4 ? 2 : 1;
        if (bind_compressor(b, &l->comp, hp, il, "attn_compressor", hp->head_dim, ratio, halves)) return -1;
    }
    if (ratio == 4) {
        if (bind_compressor(b, &l->idx_comp, hp, il, "indexer_compressor", hp->idx_head_dim, ratio, 2)) return -1;
        if (bind(b, &l->idx_q_b, 1, TYPES_DENSE, SHAPE(hp->q_lora, (uint64_t)hp->idx_n_head * hp->idx_head_dim),
                 "blk.%u.indexer.attn_q_b.weight", il))
            return -1;
        if (bind(b, &l->idx_proj, 1, TYPES_DENSE, SHAPE(E, hp->idx_n_head), "blk.%u.indexer.proj.weight", il)) return -1;
    }
    uint64_t X = hp->n_expert, F = hp->n_ff_exp;
    if (bind(b, &l->gate_inp, 1, TYPES_DENSE, SHAPE(E, X), "blk.%u.ffn_gate_inp.weight", il)) return -1;
    if (ds4_layer_is_hash(hp, il)) {
        if (bind(b, &l->tid2eid, 1, TYPES_I32, SHAPE(hp->n_expert_used, hp->n_vocab), "blk.%u.ffn_gate_tid2eid.weight", il))
            return -1;
    } else if (bind(b, &l->probs_bias, 0, TYPES_VEC, SHAPE(X), "blk.%u.exp_probs_b.bias", il)) {
        return -1;
    }
    if (!(b->flags & DS4_BIND_NO_ROUTED_EXPERTS)) {
        if (bind(b, &l->gate_exps, 1, TYPES_DENSE, SHAPE(E, F, X), "blk.%u.ffn_gate_exps.weight", il)) return -1;
        if (bind(b, &l->up_exps, 1, TYPES_DENSE, SHAPE(E, F, X), "blk.%u.ffn_up_exps.weight", il)) return -1;
        if (bind(b, &l->down_exps, 1, TYPES_DENSE, SHAPE(F, E, X), "blk.%u.ffn_down_exps.weight", il)) return -1;
        if (l->gate_exps.type != l->up_exps.type)
            return ds4_fail(b->err, "%s: blk.%u: ffn_gate_exps (%s) and ffn_up_exps (%s) must have the same type", b->f->path,
                            il, ggml_type_name(l->gate_exps.type), ggml_type_name(l->up_exps.type));
    }
    if (bind(b, &l->gate_shexp, 1, TYPES_DENSE, SHAPE(E, F), "blk.%u.ffn_gate_shexp.weight", il)) return -1;
    if (bind(b, &l->up_shexp, 1, TYPES_DENSE, SHAPE(E, F), "blk.%u.ffn_up_shexp.weight", il)) return -1;
    if (bind(b, &l->down_shexp, 1, TYPES_DENSE, SHAPE(F, E), "blk.%u.ffn_down_shexp.weight", il)) return -1;
    return 0;
}

/* Hash routing reads tid2eid[token] as expert ids: every entry must name an
 * existing expert, checked once at load instead of on every token. A row
 * may name an expert twice (zero-filled test files do): the MoE then applies
 * it once per occurrence, as transformers does. */
static int check_tid2eid(const ds4_tensor *t, const ds4_hparams *hp, const char *path, ds4_error *err) {
    const int32_t *ids = (const int32_t *)t->data;
    uint64_t n = t->ne[0] * t->ne[1];
    for (uint64_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (uint32_t)ids[i] >= hp->n_expert)
            return ds4_fail(err, "%s: tensor '%s': entry %llu = %d is not an expert id (0..%u)", path, t->name,
                            (unsigned long long)i, ids[i], hp->n_expert - 1);
    }
    return 0;
}

int ds4_weights_bind(ds4_weights *w, const ds4_hparams *hp, const gguf_file *f, uint64_t matrix_types, ds4_error *err) {
    return ds4_weights_bind_ex(w, hp, f, matrix_types, 0, err);
}

int ds4_weights_bind_ex(ds4_weights *w, const ds4_hparams *hp, const gguf_file *f, uint64_t matrix_types, unsigned flags,
                        ds4_error *err) {
    binder b = {f, matrix_types, flags, err};
    uint64_t E = hp->n_embd;
    w->layers = calloc(hp->n_layer, sizeof *w->layers);
    if (!w->layers) return ds4_fail(err, "out of memory binding %s", f->path);
    if (bind(&b, &w->tok_embd, 1, TYPES_DENSE, SHAPE(E, hp->n_vocab), "token_embd.weight")) return -1;
    if (bind(&b, &w->output, 1, TYPES_DENSE, SHAPE(E, hp->n_vocab), "output.weight")) return -1;
    if (bind(&b, &w->output_norm, 1, TYPES_VEC, SHAPE(E), "output_norm.weight")) return -1;
    if (bind_hc(&b, &w->hc_head, hp, hp->hc, "output_hc")) return -1;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        if (bind_layer(&b, &w->layers[il], hp, il)) return -1;
        if (ds4_layer_is_hash(hp, il) && check_tid2eid(&w->layers[il].tid2eid, hp, f->path, err)) return -1;
    }
    return 0;
}

void ds4_weights_free(ds4_weights *w) {
    free(w->layers);
    w->layers = NULL;
}
