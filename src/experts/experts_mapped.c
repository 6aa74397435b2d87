/* The simplest source: expert slabs of the 3-D tensors in the mapped GGUF. */
#include <stdlib.h>

#include "experts/experts.h"

typedef struct {
    ds4_expert_source base;
    const ds4_weights *w;
    uint32_t n_layer, n_expert;
} mapped_source;

static int mapped_acquire(ds4_expert_source *s, uint32_t il, const uint32_t *ids, uint32_t n, ds4_expert_view *views,
                          ds4_error *err) {
    mapped_source *m = (mapped_source *)s;
    if (il >= m->n_layer) return ds4_fail(err, "expert source: layer %u out of range", il);
    const ds4_layer_weights *lw = &m->w->layers[il];
    for (uint32_t i = 0; i < n; i++) {
        if (ids[i] >= m->n_expert) return ds4_fail(err, "expert source: expert %u out of range", ids[i]);
        views[i].gate = ds4_expert_slice(&lw->gate_exps, ids[i]);
        views[i].up = ds4_expert_slice(&lw->up_exps, ids[i]);
        views[i].down = ds4_expert_slice(&lw->down_exps, ids[i]);
    }
    return 0;
}

static uint32_t mapped_capacity(const ds4_expert_source *s) { return ((const mapped_source *)s)->n_expert; }

static void mapped_free(ds4_expert_source *s) { free(s); }

static const ds4_expert_source_ops k_mapped_ops = {mapped_acquire, NULL, mapped_capacity, mapped_free, NULL, NULL,
                                                   NULL,           NULL, NULL,            NULL,        NULL, NULL, NULL, NULL};

ds4_expert_source *ds4_experts_from_weights(const ds4_weights *w, uint32_t n_layer, uint32_t n_expert) {
    mapped_source *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->base.ops = &k_mapped_ops;
    m->w = w;
    m->n_layer = n_layer;
    m->n_expert = n_expert;
    return &m->base;
}
