/* DeepSeek V4 hyperparameters, read from GGUF metadata (never constants):
 * the same code runs a 128-wide test model and the 4096-wide real one. */
#ifndef DS4_MODEL_HPARAMS_H
#define DS4_MODEL_HPARAMS_H

#include <stdbool.h>
#include <stdint.h>

#include "formats/gguf.h"
#include "util/error.h"

#define DS4_ARCH "deepseek4"
#define DS4_MAX_LAYERS 256

/* Metadata keys (the published ds4 GGUF layout; see spec/MODEL.md §8.2). */
#define KEY_BLOCK_COUNT "deepseek4.block_count"
#define KEY_EMBD "deepseek4.embedding_length"
#define KEY_VOCAB "deepseek4.vocab_size"
#define KEY_CTX "deepseek4.context_length"
#define KEY_HEADS "deepseek4.attention.head_count"
#define KEY_HEADS_KV "deepseek4.attention.head_count_kv"
#define KEY_KEY_LEN "deepseek4.attention.key_length"
#define KEY_VAL_LEN "deepseek4.attention.value_length"
#define KEY_ROPE_DIMS "deepseek4.rope.dimension_count"
#define KEY_Q_LORA "deepseek4.attention.q_lora_rank"
#define KEY_O_LORA "deepseek4.attention.output_lora_rank"
#define KEY_O_GROUPS "deepseek4.attention.output_group_count"
#define KEY_N_EXPERT "deepseek4.expert_count"
#define KEY_N_EXPERT_USED "deepseek4.expert_used_count"
#define KEY_FF_EXP "deepseek4.expert_feed_forward_length"
#define KEY_N_SHARED "deepseek4.expert_shared_count"
#define KEY_HASH_LAYERS "deepseek4.hash_layer_count"
#define KEY_WINDOW "deepseek4.attention.sliding_window"
#define KEY_IDX_HEADS "deepseek4.attention.indexer.head_count"
#define KEY_IDX_KEY_LEN "deepseek4.attention.indexer.key_length"
#define KEY_IDX_TOPK "deepseek4.attention.indexer.top_k"
#define KEY_HC "deepseek4.hyper_connection.count"
#define KEY_SINKHORN "deepseek4.hyper_connection.sinkhorn_iterations"
#define KEY_HC_EPS "deepseek4.hyper_connection.epsilon"
#define KEY_ROPE_ORIG_CTX "deepseek4.rope.scaling.original_context_length"
#define KEY_ROPE_BASE "deepseek4.rope.freq_base"
#define KEY_ROPE_FACTOR "deepseek4.rope.scaling.factor"
#define KEY_YARN_FAST "deepseek4.rope.scaling.yarn_beta_fast"
#define KEY_YARN_SLOW "deepseek4.rope.scaling.yarn_beta_slow"
#define KEY_ROPE_TYPE "deepseek4.rope.scaling.type"
#define KEY_COMPRESS_ROPE_BASE "deepseek4.attention.compress_rope_freq_base"
#define KEY_EXPERT_SCALE "deepseek4.expert_weights_scale"
#define KEY_EXPERT_NORM "deepseek4.expert_weights_norm"
#define KEY_GATING_FUNC "deepseek4.expert_gating_func"
#define KEY_RMS_EPS "deepseek4.attention.layer_norm_rms_epsilon"
#define KEY_COMPRESS_RATIOS "deepseek4.attention.compress_ratios"
#define KEY_SWIGLU_CLAMP "deepseek4.swiglu_clamp_exp"
#define KEY_NEXTN "deepseek4.nextn_predict_layers"
#define KEY_GROUP_COUNT "deepseek4.expert_group_count"
#define KEY_GROUP_USED "deepseek4.expert_group_used_count"

typedef struct ds4_hparams {
    uint32_t n_layer, n_embd, n_vocab;
    uint64_t n_ctx_train;
    uint32_t n_head, n_head_kv, head_dim, n_rot;
    uint32_t q_lora, o_lora, o_groups;
    uint32_t n_expert, n_expert_used, n_ff_exp, n_shared, n_hash_layers;
    uint32_t window;
    uint32_t idx_n_head, idx_head_dim, idx_topk;
    uint32_t hc, sinkhorn_iters;
    float hc_eps, rms_eps;
    /* RoPE: sliding layers use rope_base plainly; compressed layers use
     * compress_rope_base with YaRN (factor, original ctx, betas). */
    float rope_base, compress_rope_base, rope_factor, yarn_beta_fast, yarn_beta_slow;
    uint64_t rope_orig_ctx;
    float expert_scale;
    bool expert_norm;
    uint32_t compress_ratio[DS4_MAX_LAYERS]; /* 0 = sliding only */
    float swiglu_clamp[DS4_MAX_LAYERS];
} ds4_hparams;

/* The published DeepSeek V4 Flash values (spec/MODEL.md §1 and §8.2), for
 * synthetic models and tests; real models always read their metadata. */
void ds4_hparams_flash(ds4_hparams *hp);

/* Reads and validates every key; the message names the file and the key. */
int ds4_hparams_load(ds4_hparams *hp, const gguf_file *f, ds4_error *err);
/* Records every key of the ds4 layout (spec/MODEL.md §8.2) with the types
 * the published files use, plus general.* and the informational keys.
 * n_nextn MTP layers add one sliding entry each to the per-layer arrays. The
 * writer keeps its first failure for gguf_writer_begin_data; -1 here. */
int ds4_hparams_write(gguf_writer *w, const ds4_hparams *hp, uint32_t n_nextn, const char *name);

static inline bool ds4_layer_is_hash(const ds4_hparams *hp, uint32_t il) { return il < hp->n_hash_layers; }
/* Overlapping compression (two halves, with an indexer) vs heavy (one half). */
static inline bool ds4_layer_is_csa(const ds4_hparams *hp, uint32_t il) { return hp->compress_ratio[il] == 4; }

#endif
