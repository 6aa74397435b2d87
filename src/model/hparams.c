#include "model/hparams.h"

#include <math.h>
#include <string.h>

static int get_u32(const gguf_file *f, const char *key, uint32_t *out, ds4_error *err) {
    return gguf_get_u32(f, key, out, err);
}

static int get_f32(const gguf_file *f, const char *key, float *out, ds4_error *err) {
    double v;
    if (gguf_get_f64(f, key, &v, err)) return -1;
    *out = (float)v;
    return 0;
}

static int positive(const gguf_file *f, const char *key, uint64_t v, ds4_error *err) {
    if (v == 0) return ds4_fail(err, "%s: metadata %s must be positive", f->path, key);
    return 0;
}

int ds4_hparams_load(ds4_hparams *hp, const gguf_file *f, ds4_error *err) {
    memset(hp, 0, sizeof *hp);
    struct {
        const char *key;
        uint32_t *dst;
    } u32s[] = {
        {KEY_BLOCK_COUNT, &hp->n_layer},    {KEY_EMBD, &hp->n_embd},
        {KEY_VOCAB, &hp->n_vocab},          {KEY_HEADS, &hp->n_head},
        {KEY_HEADS_KV, &hp->n_head_kv},     {KEY_KEY_LEN, &hp->head_dim},
        {KEY_ROPE_DIMS, &hp->n_rot},        {KEY_Q_LORA, &hp->q_lora},
        {KEY_O_LORA, &hp->o_lora},          {KEY_O_GROUPS, &hp->o_groups},
        {KEY_N_EXPERT, &hp->n_expert},      {KEY_N_EXPERT_USED, &hp->n_expert_used},
        {KEY_FF_EXP, &hp->n_ff_exp},        {KEY_N_SHARED, &hp->n_shared},
        {KEY_WINDOW, &hp->window},          {KEY_IDX_HEADS, &hp->idx_n_head},
        {KEY_IDX_KEY_LEN, &hp->idx_head_dim}, {KEY_IDX_TOPK, &hp->idx_topk},
        {KEY_HC, &hp->hc},                  {KEY_SINKHORN, &hp->sinkhorn_iters},
    };
    for (size_t i = 0; i < sizeof u32s / sizeof u32s[0]; i++) {
        if (get_u32(f, u32s[i].key, u32s[i].dst, err)) return -1;
        if (positive(f, u32s[i].key, *u32s[i].dst, err)) return -1;
    }
    if (get_u32(f, KEY_HASH_LAYERS, &hp->n_hash_layers, err)) return -1;
    uint32_t vlen;
    if (get_u32(f, KEY_VAL_LEN, &vlen, err)) return -1;

    struct {
        const char *key;
        float *dst;
    } f32s[] = {
        {KEY_HC_EPS, &hp->hc_eps},
        {KEY_RMS_EPS, &hp->rms_eps},
        {KEY_ROPE_BASE, &hp->rope_base},
        {KEY_COMPRESS_ROPE_BASE, &hp->compress_rope_base},
        {KEY_ROPE_FACTOR, &hp->rope_factor},
        {KEY_YARN_FAST, &hp->yarn_beta_fast},
        {KEY_YARN_SLOW, &hp->yarn_beta_slow},
        {KEY_EXPERT_SCALE, &hp->expert_scale},
    };
    for (size_t i = 0; i < sizeof f32s / sizeof f32s[0]; i++)
        if (get_f32(f, f32s[i].key, f32s[i].dst, err)) return -1;
    if (gguf_get_u64(f, KEY_ROPE_ORIG_CTX, &hp->rope_orig_ctx, err)) return -1;
    if (gguf_get_bool(f, KEY_EXPERT_NORM, &hp->expert_norm, err)) return -1;
    hp->n_ctx_train = 1u << 20;
    if (gguf_find_kv(f, KEY_CTX) && gguf_get_u64(f, KEY_CTX, &hp->n_ctx_train, err)) return -1;

    /* Consistency between keys: each message names the keys involved. */
    const char *p = f->path;
    if (hp->n_layer > DS4_MAX_LAYERS)
        return ds4_fail(err, "%s: %s = %u exceeds the supported maximum %d", p, KEY_BLOCK_COUNT, hp->n_layer, DS4_MAX_LAYERS);
    if (hp->hc > 16)
        return ds4_fail(err, "%s: %s = %u exceeds the supported maximum 16", p, KEY_HC, hp->hc);
    if (hp->n_head_kv != 1)
        return ds4_fail(err, "%s: %s = %u, DeepSeek V4 uses one shared K=V head", p, KEY_HEADS_KV, hp->n_head_kv);
    if (vlen != hp->head_dim)
        return ds4_fail(err, "%s: %s (%u) must equal %s (%u): K and V are the same head", p, KEY_VAL_LEN, vlen, KEY_KEY_LEN, hp->head_dim);
    if (hp->n_rot % 2 || hp->n_rot > 256 || hp->n_rot > hp->head_dim || hp->n_rot > hp->idx_head_dim)
        return ds4_fail(err, "%s: %s = %u must be even, at most 256 and at most the head widths (%u, %u)", p, KEY_ROPE_DIMS, hp->n_rot, hp->head_dim, hp->idx_head_dim);
    if (hp->n_head % hp->o_groups)
        return ds4_fail(err, "%s: %s = %u does not divide %s = %u", p, KEY_O_GROUPS, hp->o_groups, KEY_HEADS, hp->n_head);
    if (hp->n_expert_used > hp->n_expert)
        return ds4_fail(err, "%s: %s = %u exceeds %s = %u", p, KEY_N_EXPERT_USED, hp->n_expert_used, KEY_N_EXPERT, hp->n_expert);
    if (hp->n_shared != 1)
        return ds4_fail(err, "%s: %s = %u, only one shared expert is supported", p, KEY_N_SHARED, hp->n_shared);
    if (hp->n_hash_layers > hp->n_layer)
        return ds4_fail(err, "%s: %s = %u exceeds %s = %u", p, KEY_HASH_LAYERS, hp->n_hash_layers, KEY_BLOCK_COUNT, hp->n_layer);
    if (!hp->expert_norm)
        return ds4_fail(err, "%s: %s = false is not supported (DeepSeek V4 normalises top-k weights)", p, KEY_EXPERT_NORM);
    if (!(hp->rms_eps > 0) || !(hp->hc_eps > 0) || !(hp->rope_base > 1) || !(hp->compress_rope_base > 1) ||
        !(hp->rope_factor >= 1) || hp->rope_orig_ctx == 0)
        return ds4_fail(err, "%s: epsilon / rope metadata out of range (rms %g, hc %g, rope base %g, compress base %g, factor %g, original ctx %llu)",
                        p, hp->rms_eps, hp->hc_eps, hp->rope_base, hp->compress_rope_base, hp->rope_factor,
                        (unsigned long long)hp->rope_orig_ctx);
    if (hp->idx_head_dim & (hp->idx_head_dim - 1))
        return ds4_fail(err, "%s: %s = %u must be a power of two (Hadamard transform)", p, KEY_IDX_KEY_LEN, hp->idx_head_dim);
    uint32_t groups;
    if (gguf_find_kv(f, KEY_GROUP_COUNT)) {
        if (get_u32(f, KEY_GROUP_COUNT, &groups, err)) return -1;
        if (groups > 1) return ds4_fail(err, "%s: %s = %u: grouped expert routing is not part of DeepSeek V4", p, KEY_GROUP_COUNT, groups);
    }

    /* Per-layer arrays: at least n_layer entries (published files carry one
     * more for the MTP layer). */
    const gguf_kv *cr = gguf_find_kv(f, KEY_COMPRESS_RATIOS);
    if (!cr) return ds4_fail(err, "%s: missing metadata key %s", p, KEY_COMPRESS_RATIOS);
    if (cr->type != GGUF_VT_ARRAY || cr->arr_count < hp->n_layer)
        return ds4_fail(err, "%s: %s must be an integer array with at least %u entries", p, KEY_COMPRESS_RATIOS, hp->n_layer);
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        int64_t v;
        if (gguf_arr_get_i64(f, cr, il, &v, err)) return -1;
        if (v != 0 && v != 4 && (v < 8 || v > 1 << 16 || (v & (v - 1))))
            return ds4_fail(err, "%s: %s[%u] = %lld: expected 0, 4 or a larger power of two", p, KEY_COMPRESS_RATIOS, il, (long long)v);
        hp->compress_ratio[il] = (uint32_t)v;
    }
    const gguf_kv *sc = gguf_find_kv(f, KEY_SWIGLU_CLAMP);
    if (!sc) return ds4_fail(err, "%s: missing metadata key %s", p, KEY_SWIGLU_CLAMP);
    if (sc->type != GGUF_VT_ARRAY || sc->arr_count < hp->n_layer)
        return ds4_fail(err, "%s: %s must be a float array with at least %u entries", p, KEY_SWIGLU_CLAMP, hp->n_layer);
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        double v;
        if (gguf_arr_get_f64(f, sc, il, &v, err)) return -1;
        if (!(v > 0) || !isfinite(v))
            return ds4_fail(err, "%s: %s[%u] = %g must be positive", p, KEY_SWIGLU_CLAMP, il, v);
        hp->swiglu_clamp[il] = (float)v;
    }
    return 0;
}

int ds4_hparams_write(gguf_writer *w, const ds4_hparams *hp, uint32_t n_nextn, const char *name) {
    int rc = 0;
    rc |= gguf_writer_set_str(w, "general.architecture", DS4_ARCH);
    rc |= gguf_writer_set_str(w, "general.name", name);
    rc |= gguf_writer_set_u32(w, "general.alignment", GGUF_DEFAULT_ALIGNMENT);
    /* Integer keys are u32 (strict readers refuse other integer types);
     * the context lengths are u64 as in the published files. */
    const struct {
        const char *key;
        uint32_t v;
    } u32s[] = {
        {KEY_BLOCK_COUNT, hp->n_layer},      {KEY_EMBD, hp->n_embd},
        {KEY_VOCAB, hp->n_vocab},            {KEY_HEADS, hp->n_head},
        {KEY_HEADS_KV, hp->n_head_kv},       {KEY_KEY_LEN, hp->head_dim},
        {KEY_VAL_LEN, hp->head_dim},         {KEY_ROPE_DIMS, hp->n_rot},
        {KEY_Q_LORA, hp->q_lora},            {KEY_O_LORA, hp->o_lora},
        {KEY_O_GROUPS, hp->o_groups},        {KEY_N_EXPERT, hp->n_expert},
        {KEY_N_EXPERT_USED, hp->n_expert_used}, {KEY_FF_EXP, hp->n_ff_exp},
        {KEY_N_SHARED, hp->n_shared},        {KEY_HASH_LAYERS, hp->n_hash_layers},
        {KEY_WINDOW, hp->window},            {KEY_IDX_HEADS, hp->idx_n_head},
        {KEY_IDX_KEY_LEN, hp->idx_head_dim}, {KEY_IDX_TOPK, hp->idx_topk},
        {KEY_HC, hp->hc},                    {KEY_SINKHORN, hp->sinkhorn_iters},
        {KEY_GATING_FUNC, 4}, /* sqrt(softplus), the published files' value */
        {KEY_NEXTN, n_nextn},
    };
    for (size_t i = 0; i < sizeof u32s / sizeof u32s[0]; i++) rc |= gguf_writer_set_u32(w, u32s[i].key, u32s[i].v);
    rc |= gguf_writer_set_u64(w, KEY_CTX, hp->n_ctx_train);
    rc |= gguf_writer_set_u64(w, KEY_ROPE_ORIG_CTX, hp->rope_orig_ctx);
    const struct {
        const char *key;
        float v;
    } f32s[] = {
        {KEY_HC_EPS, hp->hc_eps},           {KEY_RMS_EPS, hp->rms_eps},
        {KEY_ROPE_BASE, hp->rope_base},     {KEY_ROPE_FACTOR, hp->rope_factor},
        {KEY_YARN_FAST, hp->yarn_beta_fast}, {KEY_YARN_SLOW, hp->yarn_beta_slow},
        {KEY_COMPRESS_ROPE_BASE, hp->compress_rope_base}, {KEY_EXPERT_SCALE, hp->expert_scale},
    };
    for (size_t i = 0; i < sizeof f32s / sizeof f32s[0]; i++) rc |= gguf_writer_set_f32(w, f32s[i].key, f32s[i].v);
    rc |= gguf_writer_set_str(w, KEY_ROPE_TYPE, "yarn");
    rc |= gguf_writer_set_bool(w, KEY_EXPERT_NORM, hp->expert_norm);
    /* Per-layer arrays carry one extra entry per MTP layer (sliding only),
     * as in the published files. */
    uint32_t n = hp->n_layer + n_nextn;
    if (n > DS4_MAX_LAYERS + 8) n = DS4_MAX_LAYERS + 8;
    uint32_t ratios[DS4_MAX_LAYERS + 8] = {0};
    float clamps[DS4_MAX_LAYERS + 8];
    for (uint32_t i = 0; i < n; i++) {
        ratios[i] = i < hp->n_layer ? hp->compress_ratio[i] : 0;
        clamps[i] = hp->swiglu_clamp[i < hp->n_layer ? i : hp->n_layer - 1];
    }
    rc |= gguf_writer_set_arr(w, KEY_COMPRESS_RATIOS, GGUF_VT_U32, ratios, n);
    rc |= gguf_writer_set_arr(w, KEY_SWIGLU_CLAMP, GGUF_VT_F32, clamps, n);
    return rc ? -1 : 0;
}

void ds4_hparams_flash(ds4_hparams *hp) {
    memset(hp, 0, sizeof *hp);
    hp->n_layer = 43;
    hp->n_embd = 4096;
    hp->n_vocab = 129280;
    hp->n_ctx_train = 1048576;
    hp->n_head = 64;
    hp->n_head_kv = 1;
    hp->head_dim = 512;
    hp->n_rot = 64;
    hp->q_lora = 1024;
    hp->o_lora = 1024;
    hp->o_groups = 8;
    hp->n_expert = 256;
    hp->n_expert_used = 6;
    hp->n_ff_exp = 2048;
    hp->n_shared = 1;
    hp->n_hash_layers = 3;
    hp->window = 128;
    hp->idx_n_head = 64;
    hp->idx_head_dim = 128;
    hp->idx_topk = 512;
    hp->hc = 4;
    hp->sinkhorn_iters = 20;
    hp->hc_eps = 1e-6f;
    hp->rms_eps = 1e-6f;
    hp->rope_base = 10000;
    hp->compress_rope_base = 160000;
    hp->rope_factor = 16;
    hp->yarn_beta_fast = 32;
    hp->yarn_beta_slow = 1;
    hp->rope_orig_ctx = 65536;
    hp->expert_scale = 1.5f;
    hp->expert_norm = true;
    /* layers 0-1 sliding only, then CSA (ratio 4) on even and HCA (128) on odd layers */
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        hp->compress_ratio[il] = il < 2 ? 0 : il % 2 ? 128 : 4;
        hp->swiglu_clamp[il] = 10.0f;
    }
}
