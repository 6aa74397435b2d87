/* Decode state of one sequence (spec/MODEL.md §5): per layer a ring of the
 * last `window` raw KV rows; per compressed layer the emitted compressed
 * rows and the compressor frontier (projections of the tokens of the
 * window being filled, with the previous window kept for the overlapping
 * ratio-4 scheme); per ratio-4 layer the same for the indexer keys. */
#ifndef DS4_COMPUTE_STATE_H
#define DS4_COMPUTE_STATE_H

#include <stdint.h>

#include "compute/net.h"
#include "util/error.h"

typedef struct ds4_comp_state {
    uint32_t ratio, width, halves, n_slots; /* slot = one token's (k, z) of halves*width */
    float *k, *z;
    float *rows; /* emitted rows, `width` floats each */
    uint64_t n_rows, cap_rows;
} ds4_comp_state;

typedef struct ds4_layer_state {
    float *win; /* window x head_dim ring, row = position % window */
    ds4_comp_state comp, idx;
} ds4_layer_state;

typedef struct ds4_state {
    uint32_t pos;
    uint32_t window, head_dim;
    uint32_t max_ctx;
    uint32_t n_layer;
    ds4_layer_state *layers;
} ds4_state;

int ds4_state_init(ds4_state *s, const ds4_hparams *hp, uint32_t max_ctx, ds4_error *err);
/* Deep copy of src into dst (both initialised for the same model); dst keeps
 * its own max_ctx, which must hold src's rows. */
int ds4_state_copy(ds4_state *dst, const ds4_state *src, ds4_error *err);
void ds4_state_free(ds4_state *s);
void ds4_state_reset(ds4_state *s);
/* Bytes held for the KV state right now (window rings + compressed rows). */
uint64_t ds4_state_bytes(const ds4_state *s);

#endif
