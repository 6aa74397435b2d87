/* Where routed-expert weights come from. The forward pass asks a source for
 * the experts a layer needs and gets read-only views of their gate, up and
 * down matrices; whether they live in the mmap'ed GGUF, in RAM, or in a
 * slot bank filled from an SSD sidecar is invisible to it, so every source
 * gives bit-identical results. */
#ifndef DS4_EXPERTS_EXPERTS_H
#define DS4_EXPERTS_EXPERTS_H

#include <stdint.h>

#include "model/weights.h"
#include "util/error.h"

typedef struct ds4_expert_view {
    ds4_tensor gate, up, down; /* one expert: [in, out] matrices */
} ds4_expert_view;

typedef struct ds4_expert_source ds4_expert_source;

typedef struct ds4_expert_source_ops {
    /* Makes experts ids[0..n) of layer il readable and fills views[0..n).
     * Views stay valid until the next acquire on this source. n never
     * exceeds ds4_experts_capacity(). */
    int (*acquire)(ds4_expert_source *s, uint32_t il, const uint32_t *ids, uint32_t n, ds4_expert_view *views,
                   ds4_error *err);
    /* A hint that these experts of layer il will be needed soon. */
    void (*prefetch)(ds4_expert_source *s, uint32_t il, const uint32_t *ids, uint32_t n);
    /* How many experts one acquire may ask for (a slot bank's size). */
    uint32_t (*capacity)(const ds4_expert_source *s);
    void (*free)(ds4_expert_source *s);
} ds4_expert_source_ops;

struct ds4_expert_source {
    const ds4_expert_source_ops *ops;
};

static inline int ds4_experts_acquire(ds4_expert_source *s, uint32_t il, const uint32_t *ids, uint32_t n,
                                      ds4_expert_view *views, ds4_error *err) {
    return s->ops->acquire(s, il, ids, n, views, err);
}
static inline void ds4_experts_prefetch(ds4_expert_source *s, uint32_t il, const uint32_t *ids, uint32_t n) {
    if (s->ops->prefetch) s->ops->prefetch(s, il, ids, n);
}
static inline uint32_t ds4_experts_capacity(const ds4_expert_source *s) { return s->ops->capacity(s); }
static inline void ds4_experts_free(ds4_expert_source *s) {
    if (s) s->ops->free(s);
}

/* Experts read in place from the bound (mmap'ed) 3-D expert tensors. */
ds4_expert_source *ds4_experts_from_weights(const ds4_weights *w, uint32_t n_layer, uint32_t n_expert);

#endif
