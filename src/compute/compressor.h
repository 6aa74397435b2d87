/* The KV compressors of the CSA (ratio 4, overlapping) and HCA (large ratio)
 * layers, and the indexer's own ratio-4 compressor (spec/MODEL.md §3.5, §5). */
#ifndef DS4_COMPUTE_COMPRESSOR_H
#define DS4_COMPUTE_COMPRESSOR_H

#include <stdbool.h>

#include "compute/state.h"

/* Feeds one token (absolute position pos) with its projections k and z
 * (halves*width each; the positional bias is added here). When the token
 * completes a window, writes the softmax-pooled row (width floats, before
 * norm and RoPE) to `pooled` and returns true. */
bool ds4_comp_push(ds4_comp_state *c, const ds4_tensor *ape, uint64_t pos, const float *k, const float *z, float *pooled);

/* Appends a finished row; grows the store (fails past max_ctx/ratio + 1). */
int ds4_comp_append(ds4_comp_state *c, const float *row, ds4_error *err);

#endif
