#include "model/layout.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct builder {
    ds4_layout *l;
    size_t cap;
    int failed;
} builder;

static void add(builder *b, ds4_role role, int32_t layer, const char *src, uint32_t n_dims, uint64_t ne0, uint64_t ne1,
                uint64_t ne2, const char *fmt, ...) __attribute__((format(printf, 9, 10)));

static void add(builder *b, ds4_role role, int32_t layer, const char *src, uint32_t n_dims, uint64_t ne0, uint64_t ne1,
                uint64_t ne2, const char *fmt, ...) {
    if (b->failed) return;
    if (b->l->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 256;
        ds4_layout_tensor *t = realloc(b->l->t, cap * sizeof *t);
        if (!t) {
            b->failed = 1;
            return;
        }
        b->l->t = t;
        b->cap = cap;
    }
    ds4_layout_tensor *t = &b->l->t[b->l->n++];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    snprintf(t->src, sizeof t->src, "%s", src);
    t->role = role;
    t->layer = layer;
    t->n_dims = n_dims;
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    t->ne[2] = ne2;
}

#define VEC(src, n, ...) add(b, DS4_ROLE_VECTOR, il, src, 1, n, 1, 1, __VA_ARGS__)
#define MAT(role, src, in, out, ...) add(b, role, il, src, 2, in, out, 1, __VA_ARGS__)

static void add_globals(builder *b, const ds4_hparams *hp) {
    int32_t il = -1;
    uint64_t E = hp->n_embd;
    MAT(DS4_ROLE_EMBED, "embed.weight", E, hp->n_vocab, "token_embd.weight");
    MAT(DS4_ROLE_OUTPUT, "head.weight", E, hp->n_vocab, "output.weight");
    VEC("norm.weight", E, "output_norm.weight");
    MAT(DS4_ROLE_HC_FN, "hc_head_fn", (uint64_t)hp->hc * E, hp->hc, "output_hc_fn.weight");
    VEC("hc_head_base", hp->hc, "output_hc_base.weight");
    VEC("hc_head_scale", 1, "output_hc_scale.weight");
}

static void add_layer(builder *b, const ds4_hparams *hp, int32_t il) {
    char s[128];
#define S(fmt) (snprintf(s, sizeof s, "layers.%d." fmt, il), s)
    uint64_t E = hp->n_embd, hc = hp->hc, n_mix = (2 + hc) * hc, qdim = (uint64_t)hp->n_head * hp->head_dim;
    static const char *const site[2] = {"attn", "ffn"};
    for (int k = 0; k < 2; k++) {
        char fn[64], base[64], scale[64];
        snprintf(fn, sizeof fn, "layers.%d.hc_%s_fn", il, site[k]);
        snprintf(base, sizeof base, "layers.%d.hc_%s_base", il, site[k]);
        snprintf(scale, sizeof scale, "layers.%d.hc_%s_scale", il, site[k]);
        MAT(DS4_ROLE_HC_FN, fn, hc * E, n_mix, "blk.%d.hc_%s_fn.weight", il, site[k]);
        VEC(base, n_mix, "blk.%d.hc_%s_base.weight", il, site[k]);
        VEC(scale, 3, "blk.%d.hc_%s_scale.weight", il, site[k]);
    }
    VEC(S("attn_norm.weight"), E, "blk.%d.attn_norm.weight", il);
    VEC(S("ffn_norm.weight"), E, "blk.%d.ffn_norm.weight", il);
    MAT(DS4_ROLE_ATTN, S("attn.wq_a.weight"), E, hp->q_lora, "blk.%d.attn_q_a.weight", il);
    VEC(S("attn.q_norm.weight"), hp->q_lora, "blk.%d.attn_q_a_norm.weight", il);
    MAT(DS4_ROLE_ATTN, S("attn.wq_b.weight"), hp->q_lora, qdim, "blk.%d.attn_q_b.weight", il);
    MAT(DS4_ROLE_ATTN, S("attn.wkv.weight"), E, hp->head_dim, "blk.%d.attn_kv.weight", il);
    VEC(S("attn.kv_norm.weight"), hp->head_dim, "blk.%d.attn_kv_a_norm.weight", il);
    VEC(S("attn.attn_sink"), hp->n_head, "blk.%d.attn_sinks.weight", il);
    MAT(DS4_ROLE_ATTN, S("attn.wo_a.weight"), qdim / hp->o_groups, (uint64_t)hp->o_groups * hp->o_lora,
        "blk.%d.attn_output_a.weight", il);
    MAT(DS4_ROLE_ATTN, S("attn.wo_b.weight"), (uint64_t)hp->o_groups * hp->o_lora, E, "blk.%d.attn_output_b.weight", il);
    uint32_t r = hp->compress_ratio[il];
    if (r) {
        /* Overlapping (ratio 4) compressors produce two halves per row. */
        uint64_t w = (r == 4 ? 2 : 1) * (uint64_t)hp->head_dim;
        MAT(DS4_ROLE_APE, S("attn.compressor.ape"), w, r, "blk.%d.attn_compressor_ape.weight", il);
        MAT(DS4_ROLE_COMPRESSOR, S("attn.compressor.wkv.weight"), E, w, "blk.%d.attn_compressor_kv.weight", il);
        MAT(DS4_ROLE_COMPRESSOR, S("attn.compressor.wgate.weight"), E, w, "blk.%d.attn_compressor_gate.weight", il);
        VEC(S("attn.compressor.norm.weight"), hp->head_dim, "blk.%d.attn_compressor_norm.weight", il);
    }
    if (r == 4) {
        uint64_t w = 2 * (uint64_t)hp->idx_head_dim;
        MAT(DS4_ROLE_INDEXER, S("attn.indexer.wq_b.weight"), hp->q_lora, (uint64_t)hp->idx_n_head * hp->idx_head_dim,
            "blk.%d.indexer.attn_q_b.weight", il);
        MAT(DS4_ROLE_INDEXER, S("attn.indexer.weights_proj.weight"), E, hp->idx_n_head, "blk.%d.indexer.proj.weight", il);
        MAT(DS4_ROLE_APE, S("attn.indexer.compressor.ape"), w, 4, "blk.%d.indexer_compressor_ape.weight", il);
        MAT(DS4_ROLE_COMPRESSOR, S("attn.indexer.compressor.wkv.weight"), E, w, "blk.%d.indexer_compressor_kv.weight", il);
        MAT(DS4_ROLE_COMPRESSOR, S("attn.indexer.compressor.wgate.weight"), E, w, "blk.%d.indexer_compressor_gate.weight",
            il);
        VEC(S("attn.indexer.compressor.norm.weight"), hp->idx_head_dim, "blk.%d.indexer_compressor_norm.weight", il);
    }
    MAT(DS4_ROLE_ROUTER, S("ffn.gate.weight"), E, hp->n_expert, "blk.%d.ffn_gate_inp.weight", il);
    if (ds4_layer_is_hash(hp, (uint32_t)il))
        add(b, DS4_ROLE_TID2EID, il, S("ffn.gate.tid2eid"), 2, hp->n_expert_used, hp->n_vocab, 1,
            "blk.%d.ffn_gate_tid2eid.weight", il);
    else
        VEC(S("ffn.gate.bias"), hp->n_expert, "blk.%d.exp_probs_b.bias", il);
    static const char *const ew[3] = {"w1", "w3", "w2"}, *const en[3] = {"gate", "up", "down"};
    static const ds4_role er[3] = {DS4_ROLE_EXPERT_GATE, DS4_ROLE_EXPERT_UP, DS4_ROLE_EXPERT_DOWN};
    for (int k = 0; k < 3; k++) {
        uint64_t in = k == 2 ? hp->n_ff_exp : E, out = k == 2 ? E : hp->n_ff_exp;
        char pat[128];
        snprintf(pat, sizeof pat, "layers.%d.ffn.experts.%%u.%s.weight", il, ew[k]);
        add(b, er[k], il, pat, 3, in, out, hp->n_expert, "blk.%d.ffn_%s_exps.weight", il, en[k]);
        snprintf(pat, sizeof pat, "layers.%d.ffn.shared_experts.%s.weight", il, ew[k]);
        MAT(DS4_ROLE_SHEXP, pat, in, out, "blk.%d.ffn_%s_shexp.weight", il, en[k]);
    }
#undef S
}

int ds4_layout_build(ds4_layout *l, const ds4_hparams *hp, ds4_error *err) {
    memset(l, 0, sizeof *l);
    builder b = {l, 0, 0};
    add_globals(&b, hp);
    for (uint32_t il = 0; il < hp->n_layer; il++) add_layer(&b, hp, (int32_t)il);
    if (b.failed) {
        ds4_layout_free(l);
        return ds4_fail(err, "out of memory listing the model's tensors");
    }
    return 0;
}

void ds4_layout_free(ds4_layout *l) {
    free(l->t);
    l->t = NULL;
    l->n = 0;
}

uint64_t ds4_role_types(ds4_role r) {
    switch (r) {
    case DS4_ROLE_VECTOR: return DS4_TYPES_VEC;
    case DS4_ROLE_HC_FN:
    case DS4_ROLE_APE: return DS4_TYPES_SMALL;
    case DS4_ROLE_TID2EID: return DS4_TYPES_I32;
    default: return DS4_TYPES_DENSE;
    }
}

const char *ds4_role_name(ds4_role r) {
    static const char *const names[DS4_ROLE_COUNT] = {
        [DS4_ROLE_VECTOR] = "vector",       [DS4_ROLE_EMBED] = "token embedding",
        [DS4_ROLE_OUTPUT] = "output head",  [DS4_ROLE_HC_FN] = "mHC fn",
        [DS4_ROLE_ATTN] = "attention",      [DS4_ROLE_APE] = "compressor ape",
        [DS4_ROLE_COMPRESSOR] = "compressor", [DS4_ROLE_INDEXER] = "indexer",
        [DS4_ROLE_ROUTER] = "router",       [DS4_ROLE_TID2EID] = "hash routing table",
        [DS4_ROLE_SHEXP] = "shared expert", [DS4_ROLE_EXPERT_GATE] = "routed expert gate",
        [DS4_ROLE_EXPERT_UP] = "routed expert up", [DS4_ROLE_EXPERT_DOWN] = "routed expert down",
    };
    return r < DS4_ROLE_COUNT ? names[r] : "?";
}
