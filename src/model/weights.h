/* The tensor binding table: every DeepSeek V4 tensor by GGUF name, with the
 * shape rule derived from the hyperparameters and the types it may have.
 * Binding checks presence, rank, every dimension and the type, and names the
 * tensor and the file in each message. */
#ifndef DS4_MODEL_WEIGHTS_H
#define DS4_MODEL_WEIGHTS_H

#include <stdint.h>

#include "formats/gguf.h"
#include "model/hparams.h"

typedef struct ds4_tensor {
    const char *name; /* owned by the gguf_file */
    uint32_t type;    /* enum ggml_type */
    uint64_t ne[4];   /* ne[0] contiguous; a 2-D weight has ne[0] inputs, ne[1] outputs */
    const uint8_t *data;
    uint64_t row_bytes; /* bytes of one ne[0]-row */
} ds4_tensor;

/* One expert's matrix inside a 3-D expert tensor [in, out, n_expert]. */
static inline ds4_tensor ds4_expert_slice(const ds4_tensor *t, uint32_t e) {
    ds4_tensor s = *t;
    s.ne[2] = 1;
    s.data = t->data + (uint64_t)e * t->ne[1] * t->row_bytes;
    return s;
}

typedef struct ds4_hc_weights {
    ds4_tensor fn, base, scale;
} ds4_hc_weights;

typedef struct ds4_compressor_weights {
    ds4_tensor ape, kv, gate, norm;
} ds4_compressor_weights;

typedef struct ds4_layer_weights {
    ds4_hc_weights hc_attn, hc_ffn;
    ds4_tensor attn_norm, ffn_norm;
    ds4_tensor q_a, q_a_norm, q_b, kv, kv_norm, sinks, out_a, out_b;
    ds4_compressor_weights comp;           /* ratio > 0 */
    ds4_compressor_weights idx_comp;       /* ratio == 4 */
    ds4_tensor idx_q_b, idx_proj;          /* ratio == 4 */
    ds4_tensor gate_inp, probs_bias, tid2eid; /* probs_bias optional (data NULL when absent) */
    ds4_tensor gate_exps, up_exps, down_exps;
    ds4_tensor gate_shexp, up_shexp, down_shexp;
} ds4_layer_weights;

typedef struct ds4_weights {
    ds4_tensor tok_embd, output, output_norm;
    ds4_hc_weights hc_head;
    ds4_layer_weights *layers; /* n_layer entries */
} ds4_weights;

/* `matrix_types` is a bit mask (1 << ggml_type) of the matrix types the
 * compute backend can multiply; others are refused with a clear message. */
int ds4_weights_bind(ds4_weights *w, const ds4_hparams *hp, const gguf_file *f, uint64_t matrix_types, ds4_error *err);

/* Binding options. DS4_BIND_NO_ROUTED_EXPERTS: the routed expert tensors
 * (ffn_{gate,up,down}_exps) come from elsewhere (a sidecar package), so they
 * are neither required nor bound from this file; their ds4_tensor entries
 * stay zeroed for the caller to describe. Every other check is unchanged. */
#define DS4_BIND_NO_ROUTED_EXPERTS 1u
int ds4_weights_bind_ex(ds4_weights *w, const ds4_hparams *hp, const gguf_file *f, uint64_t matrix_types, unsigned flags,
                        ds4_error *err);
void ds4_weights_free(ds4_weights *w);

#endif
