/* What the forward pass needs from a loaded model: hyperparameters, bound
 * weights, the worker pool and the two RoPE frequency tables. */
#ifndef DS4_COMPUTE_NET_H
#define DS4_COMPUTE_NET_H

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
    ds4_rope rope_main; /* sliding-only layers */
    ds4_rope rope_comp; /* compressed layers, their compressors and indexers (YaRN) */
} ds4_net;

void ds4_net_init_rope(ds4_net *net);

static inline const ds4_rope *ds4_net_layer_rope(const ds4_net *net, uint32_t il) {
    return net->hp->compress_ratio[il] ? &net->rope_comp : &net->rope_main;
}

#endif
