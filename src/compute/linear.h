/* Matrix products against weight tensors of any supported type.
 * A weight has ne[0] inputs per row and ne[1] rows (outputs). Every product
 * reads each weight row once for all the tokens of a batch, which is what
 * makes batched prefill cheaper per token than decode. */
#ifndef DS4_COMPUTE_LINEAR_H
#define DS4_COMPUTE_LINEAR_H

#include <stdbool.h>
#include <stdint.h>

#include "compute/threadpool.h"
#include "model/weights.h"

/* Whether rows of this type can be expanded to fp32 (checked at load). */
bool ds4_linear_type_ok(uint32_t type);
/* The same as a bit mask (1 << type) over all types. */
uint64_t ds4_linear_types(void);

/* Y[t][r - r0] = W[r] . X[t] for r in [r0, r0 + n_rows), t < n_tok.
 * X rows are x_stride floats apart, Y rows y_stride floats apart. */
void ds4_linear_rows(ds4_pool *pool, const ds4_tensor *w, uint64_t r0, uint64_t n_rows, const float *x,
                     uint64_t x_stride, uint32_t n_tok, float *y, uint64_t y_stride);

/* One product of a batch run by ds4_linear_multi: rows [r0, r0 + n_rows)
 * of w times n_tok activation rows (x_stride floats apart) into Y (rows
 * y_stride floats apart), as ds4_linear_rows would compute it. */
typedef struct {
    const ds4_tensor *w;
    uint64_t r0, n_rows;
    const float *x;
    uint64_t x_stride;
    uint32_t n_tok;
    float *y;
    uint64_t y_stride;
} ds4_linear_seg;

/* Several independent products in one parallel pass over all their rows:
 * one wait for the slowest thread instead of one per product, which is
 * what decode's many small products (a few hundred KB to a few MB each)
 * lose most time to with several threads. Results equal those of separate
 * ds4_linear_rows calls bit for bit. No product's X may be another's Y.
 * At most DS4_LINEAR_MAX_SEGS products. */
#define DS4_LINEAR_MAX_SEGS 16
void ds4_linear_multi(ds4_pool *pool, const ds4_linear_seg *segs, uint32_t n_segs);

/* The whole matrix: X is n_tok x ne[0], Y is n_tok x ne[1]. */
void ds4_linear(ds4_pool *pool, const ds4_tensor *w, const float *x, uint32_t n_tok, float *y);

/* Row r of W expanded to fp32 (embedding lookups). */
void ds4_tensor_row_f32(const ds4_tensor *w, uint64_t r, float *out);

#endif
