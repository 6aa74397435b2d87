/* The two sub-layers of a DeepSeek V4 block, over a chunk of n tokens.
 * Inputs are the normalised sub-layer inputs (n x E); outputs n x E. */
#ifndef DS4_COMPUTE_LAYERS_H
#define DS4_COMPUTE_LAYERS_H

#include <stdbool.h>

#include "compute/net.h"
#include "compute/state.h"

/* A grow-only float arena for per-chunk temporaries, reset per sub-layer. */
typedef struct ds4_arena {
    float *buf;
    size_t cap, used;
} ds4_arena;

float *ds4_arena_get(ds4_arena *a, size_t n); /* NULL only when a grow fails */

int ds4_attention(const ds4_net *net, ds4_state *st, uint32_t il, bool official, const float *x, uint32_t n,
                  uint64_t pos0, float *out, ds4_arena *ar, ds4_error *err);

int ds4_moe(const ds4_net *net, uint32_t il, const float *x, const int32_t *tokens, uint32_t n, float *out, ds4_arena *ar,
            ds4_error *err);

/* Hints the expert source with the experts layer il+1 will likely use
 * (moe_prefetch.c); a no-op for sources that ignore hints. */
void ds4_moe_prefetch_next(const ds4_net *net, uint32_t il, const float *x, const int32_t *tokens, uint32_t n);
/* The same from picks made elsewhere (n_picks expert ids of layer next,
 * e.g. the GPU's routing of it on layer next - 1's input): the most
 * picked first, as many as the source's bank has room for. */
void ds4_moe_prefetch_picks(const ds4_net *net, uint32_t next, const int32_t *picks, uint32_t n_picks);

#endif
