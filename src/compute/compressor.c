#include "compute/compressor.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compute/linear.h"

bool ds4_comp_push(ds4_comp_state *c, const ds4_tensor *ape, uint64_t pos, const float *k, const float *z, float *pooled) {
    uint32_t r = c->ratio, hw = c->halves * c->width;
    uint32_t off = (uint32_t)(pos % r);
    /* Overlapping layout: slots 0..r-1 hold the previous window, r..2r-1 the
     * current one. */
    uint32_t slot = c->halves == 2 ? r + off : off;
    float *ks = c->k + (size_t)slot * hw, *zs = c->z + (size_t)slot * hw;
    memcpy(ks, k, hw * sizeof(float));
    ds4_tensor_row_f32(ape, off, zs);
    for (uint32_t i = 0; i < hw; i++) zs[i] += z[i];
    if (off != r - 1) return false;

    /* Window complete. Per channel, a softmax over the candidate slots:
     * overlapping windows pool the first halves of the previous window's
     * tokens with the second halves of the current window's tokens. */
    uint32_t w = c->width;
    for (uint32_t ch = 0; ch < w; ch++) {
        float m = -INFINITY;
        for (uint32_t s = 0; s < c->n_slots; s++) {
            uint32_t col = c->halves == 2 ? (s < r ? ch : w + ch) : ch;
            float v = c->z[(size_t)s * hw + col];
            if (v > m) m = v;
        }
        float den = 0, num = 0;
        for (uint32_t s = 0; s < c->n_slots; s++) {
            uint32_t col = c->halves == 2 ? (s < r ? ch : w + ch) : ch;
            float e = expf(c->z[(size_t)s * hw + col] - m);
            den += e;
            num += e * c->k[(size_t)s * hw + col];
        }
        pooled[ch] = num / den;
    }
    if (c->halves == 2) {
        memcpy(c->k, c->k + (size_t)r * hw, (size_t)r * hw * sizeof(float));
        memcpy(c->z, c->z + (size_t)r * hw, (size_t)r * hw * sizeof(float));
    }
    return true;
}

int ds4_comp_append(ds4_comp_state *c, const float *row, ds4_error *err) {
    if (c->n_rows == c->cap_rows) {
        uint64_t cap = c->cap_rows * 2;
        float *rows = realloc(c->rows, cap * c->width * sizeof(float));
        if (!rows) return ds4_fail(err, "out of memory growing the compressed KV store to %llu rows", (unsigned long long)cap);
        c->rows = rows;
        c->cap_rows = cap;
    }
    memcpy(c->rows + c->n_rows * c->width, row, c->width * sizeof(float));
    c->n_rows++;
    return 0;
}
