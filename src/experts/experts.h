/* Where routed-expert weights come from. The forward pass asks a source for
 * the experts a layer needs and gets read-only views of their gate, up and
 * down matrices; whether they live in the mmap'ed GGUF, in RAM, or in a
 * slot bank filled from an SSD sidecar is invisible to it, so every source
 * gives bit-identical results. */
#ifndef DS4_EXPERTS_EXPERTS_H
#define DS4_EXPERTS_EXPERTS_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "model/weights.h"
#include "util/error.h"

typedef struct ds4_expert_view {
    ds4_tensor gate, up, down; /* one expert: [in, out] matrices */
} ds4_expert_view;

typedef struct ds4_expert_source ds4_expert_source;

/* Counters of a caching source. Each expert an acquire asks for is one of:
 * a hit (already in the bank), prefetched (its read was started by a hint
 * before the acquire; "late" when still in flight then), or a miss (read
 * started by the acquire). Wasted: hinted experts evicted unused. */
typedef struct ds4_expert_stats {
    uint64_t acquires, hits, misses;
    uint64_t prefetch_issued, prefetch_used, prefetch_late, prefetch_wasted;
    uint64_t reads, bytes_read, retries;
    uint64_t direct, buffered; /* read syscalls by kind (a retry or a
                                  short read's continuation is another) */
    uint64_t returned;         /* experts handed back by a cache in front (adopt) */
    double stall_s;   /* time acquire spent waiting for reads */
    double io_busy_s; /* time with at least one read in flight */
} ds4_expert_stats;

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
    /* Optional: counters (NULL = nothing to report). */
    void (*stats)(const ds4_expert_source *s, ds4_expert_stats *out);
    /* Optional: how experts are served, for startup lines. */
    const char *(*describe)(const ds4_expert_source *s);
    /* Optional pair: acquire_start is acquire without waiting for the
     * reads (the views point where the bytes will land); wait(k) returns
     * once expert k of that acquire is readable. The caller computes each
     * expert as soon as its own read is in, while the others still arrive.
     * Without them acquire_start waits for all and wait does nothing. */
    int (*acquire_start)(ds4_expert_source *s, uint32_t il, const uint32_t *ids, uint32_t n, ds4_expert_view *views,
                         ds4_error *err);
    int (*wait)(ds4_expert_source *s, uint32_t k, ds4_error *err);
    /* Optional: whether reads are in flight (the disk has work). */
    bool (*reading)(const ds4_expert_source *s);
    /* Optional: whether wait(k) would return at once (expert k of the
     * latest acquire_start is in, or its read failed). */
    bool (*ready)(ds4_expert_source *s, uint32_t k);
    /* Optional: host memory region i that views point into (NULL past the
     * last), fixed for the source's life. A GPU backend pins these for
     * DMA, so that its copies out of them run asynchronously at the bus's
     * rate instead of through a staging buffer. */
    const void *(*region)(const ds4_expert_source *s, uint32_t i, uint64_t *bytes);
    /* Optional: expert e of layer il is now held (or no longer held) by a
     * cache in front of this source, a GPU's slot bank. A slot bank gives
     * up such experts' slots first, so that the two caches keep different
     * experts rather than the same ones twice. */
    void (*held_elsewhere)(ds4_expert_source *s, uint32_t il, uint32_t e, bool held);
    /* Optional pair: the cache in front hands an expert back as it evicts
     * it, so that the source keeps it without reading it again (with
     * held_elsewhere, the two caches then hold different experts: a
     * victim cache). adopt_start gives the expert a slot (the views say
     * where its matrices go) and returns 1: the caller copies the bytes
     * there and then calls adopt_done, saying whether they all arrived;
     * no acquire may come in between. It returns 0 (nothing to copy) when
     * the source holds the expert already or has no slot to give. */
    int (*adopt_start)(ds4_expert_source *s, uint32_t il, uint32_t e, ds4_expert_view *view);
    void (*adopt_done)(ds4_expert_source *s, uint32_t il, uint32_t e, bool ok);
} ds4_expert_source_ops;

struct ds4_expert_source {
    const ds4_expert_source_ops *ops;
};

static inline int ds4_experts_acquire(ds4_expert_source *s, uint32_t il, const uint32_t *ids, uint32_t n,
                                      ds4_expert_view *views, ds4_error *err) {
    return s->ops->acquire(s, il, ids, n, views, err);
}
static inline int ds4_experts_acquire_start(ds4_expert_source *s, uint32_t il, const uint32_t *ids, uint32_t n,
                                            ds4_expert_view *views, ds4_error *err) {
    return s->ops->acquire_start ? s->ops->acquire_start(s, il, ids, n, views, err)
                                 : s->ops->acquire(s, il, ids, n, views, err);
}
static inline int ds4_experts_wait(ds4_expert_source *s, uint32_t k, ds4_error *err) {
    return s->ops->wait ? s->ops->wait(s, k, err) : 0;
}
static inline bool ds4_experts_reading(const ds4_expert_source *s) { return s->ops->reading && s->ops->reading(s); }
static inline bool ds4_experts_ready(ds4_expert_source *s, uint32_t k) { return !s->ops->ready || s->ops->ready(s, k); }
static inline const void *ds4_experts_region(const ds4_expert_source *s, uint32_t i, uint64_t *bytes) {
    *bytes = 0;
    return s->ops->region ? s->ops->region(s, i, bytes) : NULL;
}
static inline void ds4_experts_held_elsewhere(ds4_expert_source *s, uint32_t il, uint32_t e, bool held) {
    if (s->ops->held_elsewhere) s->ops->held_elsewhere(s, il, e, held);
}
static inline int ds4_experts_adopt_start(ds4_expert_source *s, uint32_t il, uint32_t e, ds4_expert_view *view) {
    return s->ops->adopt_start ? s->ops->adopt_start(s, il, e, view) : 0;
}
static inline void ds4_experts_adopt_done(ds4_expert_source *s, uint32_t il, uint32_t e, bool ok) {
    if (s->ops->adopt_done) s->ops->adopt_done(s, il, e, ok);
}
static inline void ds4_experts_prefetch(ds4_expert_source *s, uint32_t il, const uint32_t *ids, uint32_t n) {
    if (s->ops->prefetch) s->ops->prefetch(s, il, ids, n);
}
/* False when prefetch hints are ignored: callers can skip computing them. */
static inline bool ds4_experts_can_prefetch(const ds4_expert_source *s) { return s->ops->prefetch != NULL; }
static inline void ds4_experts_get_stats(const ds4_expert_source *s, ds4_expert_stats *out) {
    memset(out, 0, sizeof *out); /* (not a {0} initializer: C++ sources include this too) */
    if (s->ops->stats) s->ops->stats(s, out);
}
static inline uint32_t ds4_experts_capacity(const ds4_expert_source *s) { return s->ops->capacity(s); }
static inline void ds4_experts_free(ds4_expert_source *s) {
    if (s) s->ops->free(s);
}

/* Experts read in place from the bound (mmap'ed) 3-D expert tensors. */
ds4_expert_source *ds4_experts_from_weights(const ds4_weights *w, uint32_t n_layer, uint32_t n_expert);

/* Sources over a sidecar package (formats/sidecar.h); the package must
 * outlive the source. */
struct ds4_sidecar;
typedef struct ds4_sidecar_source_opts {
    uint32_t slots;       /* slot bank: slots per layer */
    bool direct;          /* try O_DIRECT reads */
    bool prefetch;        /* honour prefetch hints */
    uint32_t queue_depth; /* reads in flight at most (0 = default) */
} ds4_sidecar_source_opts;

/* Every expert record read into RAM at creation; acquire only makes views. */
ds4_expert_source *ds4_experts_resident_new(const struct ds4_sidecar *sc, const ds4_sidecar_source_opts *o,
                                            ds4_error *err);
/* A per-layer bank of o->slots expert records, filled from the layer files
 * on demand (LRU replacement, the experts of an acquire pinned). */
ds4_expert_source *ds4_experts_slotbank_new(const struct ds4_sidecar *sc, const ds4_sidecar_source_opts *o,
                                            ds4_error *err);
static inline const char *ds4_experts_describe(const ds4_expert_source *s) {
    return s->ops->describe ? s->ops->describe(s) : "in place (mapped file)";
}

#endif
