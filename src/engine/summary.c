/* ds4_model_print_summary: a description of a loaded model for --inspect,
 * read from the bound tensors and metadata only (so it is instant even on
 * an 81 GB file, or on a sparse one whose data is all holes). */
#include <stdio.h>
#include <string.h>

#include "engine/model.h"
#include "formats/ggml_types.h"

/* Sizes from kilobytes to terabytes in one column: "2.53 GB", "80.5 MB". */
static const char *human(double v, const char *unit, char *buf, size_t cap) {
    static const char *const prefix[] = {"", "K", "M", "G", "T"};
    int p = 0;
    while (v >= 1000 && p < 4) {
        v /= 1000;
        p++;
    }
    snprintf(buf, cap, "%.*f %s%s", v < 10 ? 2 : 1, v, prefix[p], unit);
    return buf;
}

static void print_str_key(const gguf_file *f, FILE *out, const char *label, const char *key) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (kv && kv->type == GGUF_VT_STRING) fprintf(out, "  %-14s %.*s\n", label, (int)kv->v.str.len, kv->v.str.ptr);
}

/* Layers [a, b] share one expert type triple: one line per run. */
static void print_expert_runs(const ds4_model *m, FILE *out) {
    const ds4_hparams *hp = &m->hp;
    uint32_t start = 0;
    for (uint32_t il = 1; il <= hp->n_layer; il++) {
        const ds4_layer_weights *a = &m->w.layers[start];
        const ds4_layer_weights *b = il < hp->n_layer ? &m->w.layers[il] : NULL;
        if (b && b->gate_exps.type == a->gate_exps.type && b->down_exps.type == a->down_exps.type) continue;
        char range[32];
        if (il - 1 == start) snprintf(range, sizeof range, "layer %u", start);
        else snprintf(range, sizeof range, "layers %u-%u", start, il - 1);
        fprintf(out, "  %-14s %s: gate/up %s, down %s\n", start == 0 ? "routed experts" : "", range,
                ggml_type_name(a->gate_exps.type), ggml_type_name(a->down_exps.type));
        start = il;
    }
}

void ds4_model_print_summary(const ds4_model *m, FILE *out) {
    const ds4_hparams *hp = &m->hp;
    const gguf_file *f = m->file;
    ds4_model_info info;
    ds4_model_get_info(m, &info);
    fprintf(out, "model: %s (GGUF v%u, %llu metadata keys)\n", f->path, f->version, (unsigned long long)f->n_kv);
    print_str_key(f, out, "name", "general.name");
    print_str_key(f, out, "architecture", "general.architecture");
    fprintf(out, "  %-14s %u layers, %u wide, %u heads x %u (rope %u), q/o lora %u/%u, %u output groups\n", "geometry",
            hp->n_layer, hp->n_embd, hp->n_head, hp->head_dim, hp->n_rot, hp->q_lora, hp->o_lora, hp->o_groups);
    fprintf(out, "  %-14s %u routed (%u used, width %u) + %u shared; hash routing in the first %u layers\n", "experts",
            hp->n_expert, hp->n_expert_used, hp->n_ff_exp, hp->n_shared, hp->n_hash_layers);
    uint32_t n_slide = 0, n_csa = 0, n_hca = 0, hca_ratio = 0;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        uint32_t r = hp->compress_ratio[il];
        if (!r) n_slide++;
        else if (r == 4) n_csa++;
        else {
            n_hca++;
            hca_ratio = r;
        }
    }
    fprintf(out, "  %-14s %u sliding (window %u), %u CSA (ratio 4, indexer top-%u), %u HCA (ratio %u); mHC x%u\n",
            "attention", n_slide, hp->window, n_csa, hp->idx_topk, n_hca, hca_ratio, hp->hc);
    fprintf(out, "  %-14s vocab %u, context %llu\n", "tokens", hp->n_vocab, (unsigned long long)info.context_length);

    uint64_t bytes[GGML_TYPE_COUNT_MAX] = {0};
    uint64_t count[GGML_TYPE_COUNT_MAX] = {0};
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        uint32_t t = f->tensors[i].type < GGML_TYPE_COUNT_MAX ? f->tensors[i].type : 0;
        bytes[t] += f->tensors[i].nbytes;
        count[t]++;
    }
    char h1[32], h2[32], h3[32], h4[32];
    fprintf(out, "  %-14s %llu, %s (%.2f GiB):", "tensors", (unsigned long long)f->n_tensors,
            human((double)info.weight_bytes, "B", h1, sizeof h1), info.weight_bytes / (double)(1ull << 30));
    for (uint32_t t = 0; t < GGML_TYPE_COUNT_MAX; t++)
        if (count[t])
            fprintf(out, " %s %llu (%s)", ggml_type_name(t), (unsigned long long)count[t],
                    human((double)bytes[t], "B", h1, sizeof h1));
    fputc('\n', out);
    print_expert_runs(m, out);
    fprintf(out, "  %-14s %s params (%s per token), routed experts %s, %s read per token\n", "size",
            human((double)info.n_params, "", h1, sizeof h1), human((double)info.token_params, "", h2, sizeof h2),
            human((double)info.routed_bytes, "B", h3, sizeof h3), human((double)info.token_bytes, "B", h4, sizeof h4));
    if (m->tok)
        fprintf(out, "  %-14s %u tokens, %u merges (bos %d, eos %d)\n", "tokenizer", ds4_tokenizer_n_vocab(m->tok),
                ds4_tokenizer_n_merges(m->tok), info.bos_id, info.eos_id);
    else
        fprintf(out, "  %-14s none (use --tokens)\n", "tokenizer");
}
