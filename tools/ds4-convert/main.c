/* ds4-convert: DeepSeek V4 checkpoint (config.json + safetensors) -> GGUF
 * in the ds4 layout (spec/MODEL.md §8), written atomically with progress. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "convert.h"
#include "formats/ggml_types.h"
#include "ds4_tokenizer.h"
#include "model/tokenizer_gguf.h"
#include "util/fileio.h"
#include "util/half.h"

enum src_kind { SRC_PLAIN, SRC_EXPERTS, SRC_TID2EID };

typedef struct plan_item {
    char name[96];      /* GGUF tensor name */
    char src[128];      /* canonical checkpoint name; for experts a pattern with %u */
    enum src_kind kind;
    uint32_t type;
    uint32_t n_dims;
    uint64_t ne[3];
} plan_item;

typedef struct plan {
    plan_item *items;
    size_t n, cap;
} plan;

static plan_item *plan_add(plan *p, enum src_kind kind, uint32_t type, const char *src, uint32_t n_dims, uint64_t ne0,
                           uint64_t ne1, uint64_t ne2, const char *fmt, ...) __attribute__((format(printf, 9, 10)));

static plan_item *plan_add(plan *p, enum src_kind kind, uint32_t type, const char *src, uint32_t n_dims, uint64_t ne0,
                           uint64_t ne1, uint64_t ne2, const char *fmt, ...) {
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 256;
        p->items = realloc(p->items, p->cap * sizeof *p->items);
        if (!p->items) abort();
    }
    plan_item *it = &p->items[p->n++];
    memset(it, 0, sizeof *it);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(it->name, sizeof it->name, fmt, ap);
    va_end(ap);
    snprintf(it->src, sizeof it->src, "%s", src);
    it->kind = kind;
    it->type = type;
    it->n_dims = n_dims;
    it->ne[0] = ne0;
    it->ne[1] = ne1;
    it->ne[2] = ne2;
    return it;
}

/* Vectors stay F32 (they enter elementwise arithmetic); matrices take the
 * requested type. */
#define VEC(src, n, ...) plan_add(p, SRC_PLAIN, GGML_TYPE_F32, src, 1, n, 1, 1, __VA_ARGS__)
#define MAT(src, in, out, ...) plan_add(p, SRC_PLAIN, mtype, src, 2, in, out, 1, __VA_ARGS__)

static void build_plan(plan *p, const ds4_hparams *hp, uint32_t mtype) {
    char s[128];
    uint64_t E = hp->n_embd, hc = hp->hc, n_mix = (2 + hc) * hc, qdim = (uint64_t)hp->n_head * hp->head_dim;
    MAT("embed.weight", E, hp->n_vocab, "token_embd.weight");
    MAT("head.weight", E, hp->n_vocab, "output.weight");
    VEC("norm.weight", E, "output_norm.weight");
    MAT("hc_head_fn", hc * E, hc, "output_hc_fn.weight");
    VEC("hc_head_base", hc, "output_hc_base.weight");
    VEC("hc_head_scale", 1, "output_hc_scale.weight");
    for (uint32_t il = 0; il < hp->n_layer; il++) {
#define S(fmt) (snprintf(s, sizeof s, "layers.%u." fmt, il), s)
        const char *site[2] = {"attn", "ffn"};
        for (int k = 0; k < 2; k++) {
            char a[64], b[64], c[64];
            snprintf(a, sizeof a, "layers.%u.hc_%s_fn", il, site[k]);
            snprintf(b, sizeof b, "layers.%u.hc_%s_base", il, site[k]);
            snprintf(c, sizeof c, "layers.%u.hc_%s_scale", il, site[k]);
            MAT(a, hc * E, n_mix, "blk.%u.hc_%s_fn.weight", il, site[k]);
            VEC(b, n_mix, "blk.%u.hc_%s_base.weight", il, site[k]);
            VEC(c, 3, "blk.%u.hc_%s_scale.weight", il, site[k]);
        }
        VEC(S("attn_norm.weight"), E, "blk.%u.attn_norm.weight", il);
        VEC(S("ffn_norm.weight"), E, "blk.%u.ffn_norm.weight", il);
        MAT(S("attn.wq_a.weight"), E, hp->q_lora, "blk.%u.attn_q_a.weight", il);
        VEC(S("attn.q_norm.weight"), hp->q_lora, "blk.%u.attn_q_a_norm.weight", il);
        MAT(S("attn.wq_b.weight"), hp->q_lora, qdim, "blk.%u.attn_q_b.weight", il);
        MAT(S("attn.wkv.weight"), E, hp->head_dim, "blk.%u.attn_kv.weight", il);
        VEC(S("attn.kv_norm.weight"), hp->head_dim, "blk.%u.attn_kv_a_norm.weight", il);
        VEC(S("attn.attn_sink"), hp->n_head, "blk.%u.attn_sinks.weight", il);
        MAT(S("attn.wo_a.weight"), qdim / hp->o_groups, (uint64_t)hp->o_groups * hp->o_lora, "blk.%u.attn_output_a.weight", il);
        MAT(S("attn.wo_b.weight"), (uint64_t)hp->o_groups * hp->o_lora, E, "blk.%u.attn_output_b.weight", il);
        uint32_t r = hp->compress_ratio[il];
        if (r) {
            uint64_t w = (r == 4 ? 2 : 1) * (uint64_t)hp->head_dim;
            MAT(S("attn.compressor.ape"), w, r, "blk.%u.attn_compressor_ape.weight", il);
            MAT(S("attn.compressor.wkv.weight"), E, w, "blk.%u.attn_compressor_kv.weight", il);
            MAT(S("attn.compressor.wgate.weight"), E, w, "blk.%u.attn_compressor_gate.weight", il);
            VEC(S("attn.compressor.norm.weight"), hp->head_dim, "blk.%u.attn_compressor_norm.weight", il);
        }
        if (r == 4) {
            uint64_t w = 2 * (uint64_t)hp->idx_head_dim;
            MAT(S("attn.indexer.wq_b.weight"), hp->q_lora, (uint64_t)hp->idx_n_head * hp->idx_head_dim,
                "blk.%u.indexer.attn_q_b.weight", il);
            MAT(S("attn.indexer.weights_proj.weight"), E, hp->idx_n_head, "blk.%u.indexer.proj.weight", il);
            MAT(S("attn.indexer.compressor.ape"), w, 4, "blk.%u.indexer_compressor_ape.weight", il);
            MAT(S("attn.indexer.compressor.wkv.weight"), E, w, "blk.%u.indexer_compressor_kv.weight", il);
            MAT(S("attn.indexer.compressor.wgate.weight"), E, w, "blk.%u.indexer_compressor_gate.weight", il);
            VEC(S("attn.indexer.compressor.norm.weight"), hp->idx_head_dim, "blk.%u.indexer_compressor_norm.weight", il);
        }
        MAT(S("ffn.gate.weight"), E, hp->n_expert, "blk.%u.ffn_gate_inp.weight", il);
        if (ds4_layer_is_hash(hp, il))
            plan_add(p, SRC_TID2EID, GGML_TYPE_I32, S("ffn.gate.tid2eid"), 2, hp->n_expert_used, hp->n_vocab, 1,
                     "blk.%u.ffn_gate_tid2eid.weight", il);
        else
            VEC(S("ffn.gate.bias"), hp->n_expert, "blk.%u.exp_probs_b.bias", il);
        const char *ew[3] = {"w1", "w3", "w2"}, *en[3] = {"gate", "up", "down"};
        for (int k = 0; k < 3; k++) {
            uint64_t in = k == 2 ? hp->n_ff_exp : E, out = k == 2 ? E : hp->n_ff_exp;
            char pat[128];
            snprintf(pat, sizeof pat, "layers.%u.ffn.experts.%%u.%s.weight", il, ew[k]);
            plan_add(p, SRC_EXPERTS, mtype, pat, 3, in, out, hp->n_expert, "blk.%u.ffn_%s_exps.weight", il, en[k]);
            snprintf(pat, sizeof pat, "layers.%u.ffn.shared_experts.%s.weight", il, ew[k]);
            MAT(pat, in, out, "blk.%u.ffn_%s_shexp.weight", il, en[k]);
        }
#undef S
    }
}

/* Converts n floats to the output type. */
static void encode(uint32_t type, const float *src, uint64_t n, void *dst) {
    switch (type) {
    case GGML_TYPE_F32:
        memcpy(dst, src, n * sizeof(float));
        break;
    case GGML_TYPE_F16:
        for (uint64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = ds4_f32_to_f16(src[i]);
        break;
    case GGML_TYPE_BF16:
        for (uint64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = ds4_f32_to_bf16(src[i]);
        break;
    default:
        abort();
    }
}

static int write_matrix(gguf_writer *w, const ckpt_index *ix, const char *src, uint32_t type, uint64_t rows, uint64_t cols,
                        float *buf, void *enc, ds4_error *err) {
    if (ckpt_read_f32(ix, src, rows, cols, buf, err)) return -1;
    uint64_t n = rows * (cols ? cols : 1), nbytes;
    ggml_nbytes(type, n, &nbytes);
    encode(type, buf, n, enc);
    return gguf_writer_write(w, enc, nbytes, err);
}

static int write_item(gguf_writer *w, const ckpt_index *ix, const plan_item *it, const ds4_hparams *hp, float *buf,
                      void *enc, ds4_error *err) {
    uint64_t rows = it->ne[1], cols = it->n_dims == 1 ? 0 : it->ne[0];
    if (it->n_dims == 1) rows = it->ne[0];
    switch (it->kind) {
    case SRC_PLAIN:
        return write_matrix(w, ix, it->src, it->type, rows, cols, buf, enc, err);
    case SRC_EXPERTS:
        for (uint32_t e = 0; e < it->ne[2]; e++) {
            char name[160];
            snprintf(name, sizeof name, it->src, e);
            if (write_matrix(w, ix, name, it->type, rows, cols, buf, enc, err)) return -1;
        }
        return 0;
    case SRC_TID2EID: {
        int32_t *ids = (int32_t *)enc;
        if (ckpt_read_i32(ix, it->src, hp->n_vocab, hp->n_expert_used, hp->n_expert - 1, ids, err)) return -1;
        return gguf_writer_write(w, ids, (size_t)hp->n_vocab * hp->n_expert_used * 4, err);
    }
    }
    return -1;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: ds4-convert CHECKPOINT_DIR OUT.gguf [--type f32|f16|bf16]\n"
            "  Reads a DeepSeek V4 checkpoint (config.json + safetensors, official or\n"
            "  transformers naming, FP8/FP4 block-scaled weights dequantised) and writes\n"
            "  a GGUF in the ds4 layout. Vectors are F32, tid2eid I32, matrices --type\n"
            "  (default bf16). The output is written to a temporary file and renamed.\n");
}

int main(int argc, char **argv) {
    const char *in = NULL, *out = NULL, *type_name = "bf16";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--type") && i + 1 < argc) type_name = argv[++i];
        else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "ds4-convert: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        } else if (!in) in = argv[i];
        else if (!out) out = argv[i];
        else {
            fprintf(stderr, "ds4-convert: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!in || !out) {
        usage(stderr);
        return 2;
    }
    uint32_t mtype;
    if (!strcmp(type_name, "f32")) mtype = GGML_TYPE_F32;
    else if (!strcmp(type_name, "f16")) mtype = GGML_TYPE_F16;
    else if (!strcmp(type_name, "bf16")) mtype = GGML_TYPE_BF16;
    else {
        fprintf(stderr, "ds4-convert: --type '%s' is not supported (f32, f16, bf16)\n", type_name);
        return 2;
    }

    ds4_error err = {{0}};
    convert_config cfg;
    st_checkpoint *ck = NULL;
    ckpt_index *ix = NULL;
    ds4_tokenizer *tok = NULL;
    gguf_writer *w = NULL;
    plan p = {0};
    float *buf = NULL;
    void *enc = NULL;
    char tmp[4096] = "";
    int rc = 1;
    if (convert_read_config(in, &cfg, &err)) goto out;
    if (!(ck = st_open(in, &err))) goto out;
    if (!(ix = ckpt_index_build(ck, &err))) goto out;
    /* The tokenizer is embedded when the checkpoint carries one. */
    char tj[4096], tc[4096];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", in);
    snprintf(tc, sizeof tc, "%s/tokenizer_config.json", in);
    if (access(tj, R_OK) == 0) {
        if (!(tok = ds4_tokenizer_from_json(tj, access(tc, R_OK) == 0 ? tc : NULL, &err))) goto out;
        if (ds4_tokenizer_n_vocab(tok) > cfg.hp.n_vocab) {
            ds4_fail(&err, "%s: %u tokens do not fit the model's vocab_size %u", tj, ds4_tokenizer_n_vocab(tok), cfg.hp.n_vocab);
            goto out;
        }
        fprintf(stderr, "ds4-convert: embedding the tokenizer from %s (%u tokens)\n", tj, ds4_tokenizer_n_vocab(tok));
    }
    build_plan(&p, &cfg.hp, mtype);

    uint64_t max_elems = 0, total = 0;
    for (size_t i = 0; i < p.n; i++) {
        plan_item *it = &p.items[i];
        uint64_t per = it->ne[0] * it->ne[1] * (it->kind == SRC_EXPERTS ? 1 : it->ne[2]);
        if (per > max_elems) max_elems = per;
        uint64_t nb;
        ggml_nbytes(it->type, it->ne[0] * it->ne[1] * it->ne[2], &nb);
        total += nb;
    }
    buf = malloc(max_elems * sizeof(float));
    enc = malloc(max_elems * sizeof(float));
    if (!buf || !enc) {
        ds4_fail(&err, "out of memory (%llu floats per tensor)", (unsigned long long)max_elems);
        goto out;
    }
    if (ds4_atomic_begin(out, tmp, sizeof tmp, &err)) goto out;
    if (!(w = gguf_writer_create(tmp, GGUF_DEFAULT_ALIGNMENT, &err))) goto out;
    const char *base = strrchr(in, '/');
    if (convert_write_metadata(w, &cfg, base && base[1] ? base + 1 : in, tok != NULL)) {
        ds4_fail(&err, "%s: cannot record metadata", tmp);
        goto out;
    }
    if (tok && ds4_tokenizer_write_gguf(w, tok, cfg.hp.n_vocab, &err)) goto out;
    for (size_t i = 0; i < p.n; i++)
        if (gguf_writer_add_tensor(w, p.items[i].name, p.items[i].type, p.items[i].n_dims, p.items[i].ne)) {
            ds4_fail(&err, "%s: cannot declare tensor %s", tmp, p.items[i].name);
            goto out;
        }
    if (gguf_writer_begin_data(w, &err)) goto out;
    int tty = isatty(2);
    uint64_t done = 0;
    for (size_t i = 0; i < p.n; i++) {
        plan_item *it = &p.items[i];
        if (write_item(w, ix, it, &cfg.hp, buf, enc, &err)) goto out;
        uint64_t nb;
        ggml_nbytes(it->type, it->ne[0] * it->ne[1] * it->ne[2], &nb);
        done += nb;
        if (tty || i + 1 == p.n || i % 64 == 0)
            fprintf(stderr, "%s[%3d%%] %zu/%zu tensors, %.1f/%.1f MB  %-40s%s", tty ? "\r" : "", (int)(100 * done / total),
                    i + 1, p.n, done / 1e6, total / 1e6, it->name, tty ? "" : "\n");
    }
    if (tty) fputc('\n', stderr);
    if (gguf_writer_finish(w, &err)) goto out;
    gguf_writer_free(w);
    w = NULL;
    if (ds4_atomic_commit(tmp, out, &err)) goto out;
    tmp[0] = 0;
    fprintf(stderr, "ds4-convert: wrote %s (%zu tensors, %.1f MB)\n", out, p.n, total / 1e6);
    rc = 0;
out:
    if (rc) fprintf(stderr, "ds4-convert: %s\n", err.msg);
    gguf_writer_free(w);
    if (tmp[0]) ds4_atomic_abort(tmp);
    free(buf);
    free(enc);
    free(p.items);
    ckpt_index_free(ix);
    ds4_tokenizer_free(tok);
    st_close(ck);
    return rc;
}
