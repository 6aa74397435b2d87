/* config.json -> hyperparameters and GGUF metadata. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "convert.h"
#include "util/textfile.h"

typedef struct {
    const cJSON *root;
    const char *path;
    ds4_error *err;
} cfg_ctx;

static const cJSON *field(cfg_ctx *c, const cJSON *obj, const char *key) {
    return cJSON_GetObjectItemCaseSensitive(obj ? obj : c->root, key);
}

static int num(cfg_ctx *c, const cJSON *obj, const char *key, double *out) {
    const cJSON *v = field(c, obj, key);
    if (!v) return ds4_fail(c->err, "%s: missing config field '%s'", c->path, key);
    if (!cJSON_IsNumber(v)) return ds4_fail(c->err, "%s: config field '%s' must be a number", c->path, key);
    *out = v->valuedouble;
    return 0;
}

static int u32f(cfg_ctx *c, const cJSON *obj, const char *key, uint32_t *out) {
    double d = 0;
    if (num(c, obj, key, &d)) return -1;
    if (d < 0 || d > 4294967295.0 || d != floor(d))
        return ds4_fail(c->err, "%s: config field '%s' = %g is not a non-negative integer", c->path, key, d);
    *out = (uint32_t)d;
    return 0;
}

static int f32f(cfg_ctx *c, const cJSON *obj, const char *key, float *out) {
    double d = 0;
    if (num(c, obj, key, &d)) return -1;
    *out = (float)d;
    return 0;
}

static int read_layer_schedule(cfg_ctx *c, ds4_hparams *hp) {
    const cJSON *ratios = field(c, NULL, "compress_ratios");
    if (ratios) {
        if (!cJSON_IsArray(ratios) || cJSON_GetArraySize(ratios) < (int)hp->n_layer)
            return ds4_fail(c->err, "%s: 'compress_ratios' must be an array of at least %u numbers", c->path, hp->n_layer);
        for (uint32_t il = 0; il < hp->n_layer; il++) {
            const cJSON *v = cJSON_GetArrayItem(ratios, (int)il);
            if (!cJSON_IsNumber(v) || v->valuedouble < 0)
                return ds4_fail(c->err, "%s: 'compress_ratios'[%u] is not a ratio", c->path, il);
            hp->compress_ratio[il] = (uint32_t)v->valuedouble;
        }
    } else {
        const cJSON *types = field(c, NULL, "layer_types"), *rates = field(c, NULL, "compress_rates");
        if (!cJSON_IsArray(types) || cJSON_GetArraySize(types) != (int)hp->n_layer)
            return ds4_fail(c->err, "%s: missing config field 'compress_ratios' (or 'layer_types' with %u entries)", c->path,
                            hp->n_layer);
        for (uint32_t il = 0; il < hp->n_layer; il++) {
            const cJSON *t = cJSON_GetArrayItem(types, (int)il);
            if (!cJSON_IsString(t)) return ds4_fail(c->err, "%s: 'layer_types'[%u] is not a string", c->path, il);
            if (!strcmp(t->valuestring, "sliding_attention")) {
                hp->compress_ratio[il] = 0;
                continue;
            }
            if (!rates) return ds4_fail(c->err, "%s: missing config field 'compress_rates'", c->path);
            uint32_t r;
            if (u32f(c, rates, t->valuestring, &r)) return -1;
            hp->compress_ratio[il] = r;
        }
    }
    /* Hash-routed layers: a count, or the leading "hash_moe" entries. */
    const cJSON *mlp = field(c, NULL, "mlp_layer_types");
    if (field(c, NULL, "n_hash_layers")) return u32f(c, NULL, "n_hash_layers", &hp->n_hash_layers);
    if (!cJSON_IsArray(mlp)) return ds4_fail(c->err, "%s: missing config field 'n_hash_layers' or 'mlp_layer_types'", c->path);
    hp->n_hash_layers = 0;
    int seen_topk = 0;
    for (int i = 0; i < cJSON_GetArraySize(mlp); i++) {
        const cJSON *t = cJSON_GetArrayItem(mlp, i);
        int hash = cJSON_IsString(t) && !strcmp(t->valuestring, "hash_moe");
        if (hash && seen_topk)
            return ds4_fail(c->err, "%s: 'mlp_layer_types': hash-routed layers must come first (entry %d)", c->path, i);
        if (hash) hp->n_hash_layers++;
        else seen_topk = 1;
    }
    return 0;
}

int convert_read_config(const char *dir, convert_config *cfg, ds4_error *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *text = ds4_read_text_file(path, (size_t)1 << 26, NULL, err); /* a config: small */
    if (!text) return -1;
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return ds4_fail(err, "%s: not a JSON object", path);
    }
    cfg_ctx c = {root, path, err};
    ds4_hparams *hp = &cfg->hp;
    memset(cfg, 0, sizeof *cfg);
    int rc = -1;
    const cJSON *rp = field(&c, NULL, "rope_parameters");
    const cJSON *rp_main = rp ? field(&c, rp, "main") : NULL;
    const cJSON *rp_comp = rp ? field(&c, rp, "compress") : NULL;
    const cJSON *yarn = rp_comp ? rp_comp : field(&c, NULL, "rope_scaling");
    double d = 0;
    if (u32f(&c, NULL, "num_hidden_layers", &hp->n_layer) || u32f(&c, NULL, "hidden_size", &hp->n_embd) ||
        u32f(&c, NULL, "vocab_size", &hp->n_vocab) || u32f(&c, NULL, "num_attention_heads", &hp->n_head) ||
        u32f(&c, NULL, "head_dim", &hp->head_dim) || u32f(&c, NULL, "qk_rope_head_dim", &hp->n_rot) ||
        u32f(&c, NULL, "q_lora_rank", &hp->q_lora) || u32f(&c, NULL, "o_lora_rank", &hp->o_lora) ||
        u32f(&c, NULL, "o_groups", &hp->o_groups) || u32f(&c, NULL, "n_routed_experts", &hp->n_expert) ||
        u32f(&c, NULL, "num_experts_per_tok", &hp->n_expert_used) ||
        u32f(&c, NULL, "moe_intermediate_size", &hp->n_ff_exp) || u32f(&c, NULL, "n_shared_experts", &hp->n_shared) ||
        u32f(&c, NULL, "sliding_window", &hp->window) || u32f(&c, NULL, "index_n_heads", &hp->idx_n_head) ||
        u32f(&c, NULL, "index_head_dim", &hp->idx_head_dim) || u32f(&c, NULL, "index_topk", &hp->idx_topk) ||
        u32f(&c, NULL, "hc_mult", &hp->hc) || u32f(&c, NULL, "hc_sinkhorn_iters", &hp->sinkhorn_iters) ||
        f32f(&c, NULL, "hc_eps", &hp->hc_eps) || f32f(&c, NULL, "rms_norm_eps", &hp->rms_eps) ||
        f32f(&c, NULL, "routed_scaling_factor", &hp->expert_scale) ||
        u32f(&c, NULL, "num_key_value_heads", &hp->n_head_kv))
        goto out;
    if (hp->n_layer == 0 || hp->n_layer > DS4_MAX_LAYERS) {
        ds4_fail(err, "%s: num_hidden_layers = %u is out of range (1..%d)", path, hp->n_layer, DS4_MAX_LAYERS);
        goto out;
    }
    /* transformers nests the two rope sets; official configs keep them flat. */
    if (f32f(&c, rp_main, "rope_theta", &hp->rope_base)) goto out;
    if (f32f(&c, rp_comp, rp_comp ? "rope_theta" : "compress_rope_theta", &hp->compress_rope_base)) goto out;
    if (!yarn) {
        ds4_fail(err, "%s: missing config field 'rope_parameters.compress' (or 'rope_scaling')", path);
        goto out;
    }
    if (f32f(&c, yarn, "factor", &hp->rope_factor) || f32f(&c, yarn, "beta_fast", &hp->yarn_beta_fast) ||
        f32f(&c, yarn, "beta_slow", &hp->yarn_beta_slow) || num(&c, yarn, "original_max_position_embeddings", &d))
        goto out;
    hp->rope_orig_ctx = (uint64_t)d;
    hp->n_ctx_train = 1u << 20;
    if (field(&c, NULL, "max_position_embeddings") && num(&c, NULL, "max_position_embeddings", &d) == 0)
        hp->n_ctx_train = (uint64_t)d;
    const cJSON *nt = field(&c, NULL, "norm_topk_prob");
    hp->expert_norm = !nt || cJSON_IsTrue(nt);
    float limit = 0;
    if (f32f(&c, NULL, "swiglu_limit", &limit)) goto out;
    for (uint32_t il = 0; il < hp->n_layer; il++) hp->swiglu_clamp[il] = limit;
    const cJSON *sf = field(&c, NULL, "scoring_func");
    if (sf && (!cJSON_IsString(sf) || strcmp(sf->valuestring, "sqrtsoftplus"))) {
        ds4_fail(err, "%s: scoring_func must be \"sqrtsoftplus\" for DeepSeek V4", path);
        goto out;
    }
    if (field(&c, NULL, "num_nextn_predict_layers") && u32f(&c, NULL, "num_nextn_predict_layers", &cfg->n_nextn)) goto out;
    cfg->bos_id = 0;
    cfg->eos_id = 1;
    if (cJSON_IsNumber(field(&c, NULL, "bos_token_id"))) cfg->bos_id = (uint32_t)field(&c, NULL, "bos_token_id")->valuedouble;
    if (cJSON_IsNumber(field(&c, NULL, "eos_token_id"))) cfg->eos_id = (uint32_t)field(&c, NULL, "eos_token_id")->valuedouble;
    if (read_layer_schedule(&c, hp)) goto out;
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

int convert_write_metadata(gguf_writer *w, const convert_config *cfg, const char *name, bool has_tokenizer) {
    int rc = ds4_hparams_write(w, &cfg->hp, cfg->n_nextn, name);
    /* With an embedded tokenizer its writer records the special ids. */
    if (!has_tokenizer) {
        rc |= gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", cfg->bos_id);
        rc |= gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", cfg->eos_id);
    }
    return rc ? -1 : 0;
}
