/* What the forward pass needs from a loaded model: hyperparameters, bound
 * weights, the worker pool and the two RoPE frequency tables. */
#ifndef DS4_COMPUTE_NET_H
#define DS4_COMPUTE_NET_H

#include <stdbool.h>

#include "compute/ops.h"
#include "compute/threadpool.h"
#include "experts/experts.h"
#include "model/hparams.h"
#include "model/weights.h"

typedef struct ds4_net {
    const ds4_hparams *hp;
    const ds4_weights *w;
    ds4_pool *pool;
    ds4_expert_source *experts; /* routed experts (mapped, resident or streamed) */
    bool no_guess;              /* prefetch only experts known exactly (moe_prefetch.c) */
    /* RoPE frequency tables, [numerics][kind]: kind 0 for sliding-only
     * layers, 1 for compressed layers, their compressors and indexers
     * (YaRN). numerics 0 = official (fp32 frequencies), 1 = hf (the
     * frequencies rounded to bf16 like the transformers reference). */
    ds4_rope rope[2][2];
} ds4_net;

void ds4_net_init_rope(ds4_net *net);

static inline const ds4_rope *ds4_net_rope(const ds4_net *net, bool official, bool compressed) {
    return &net->rope[official ? 0 : 1][compressed ? 1 : 0];
}

static inline const ds4_rope *ds4_net_layer_rope(const ds4_net *net, bool official, uint32_t il) {
    return ds4_net_rope(net, official, net->hp->compress_ratio[il] != 0);
}

#endif
