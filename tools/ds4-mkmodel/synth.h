/* ds4-mkmodel internals: random tensor contents.
 *
 * Values are random but shaped like a trained model's so activations stay
 * finite through any number of layers: matrices have std 1/sqrt(fan_in)
 * (the fan-in is ne[0], the row length), norms are 1, mHC scales 1, biases,
 * sinks and mHC bases 0, compressor position biases std 0.02, and tid2eid
 * rows hold distinct expert ids.
 *
 * Quantized matrices are assembled from a pool of blocks made once per
 * (type, fan-in) by quantizing Gaussian data with the real quantizers, so
 * every block is one a quantizer could produce (finite scales, realistic
 * code statistics) while a full-size model (hundreds of GB of IQ2_XXS)
 * costs only memcpy. Every row has its own random stream seeded from
 * (seed, tensor, row): the output does not depend on the thread count. */
#ifndef DS4_MKMODEL_SYNTH_H
#define DS4_MKMODEL_SYNTH_H

#include <stdint.h>

#include "compute/threadpool.h"
#include "model/layout.h"
#include "util/error.h"

typedef struct synth synth;

synth *synth_new(uint64_t seed, ds4_pool *pool, uint32_t n_expert, ds4_error *err);
void synth_free(synth *s);

/* Fills rows [r0, r0 + n) of tensor `index` of the layout (stored as
 * `type`) into dst, row after row. */
int synth_rows(synth *s, const ds4_layout_tensor *t, uint32_t index, uint32_t type, uint64_t r0, uint64_t n, uint8_t *dst,
               ds4_error *err);

#endif
