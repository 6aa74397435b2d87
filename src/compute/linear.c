#include "compute/linear.h"

#include <stdlib.h>
#include <string.h>

#include "compute/ops.h"
#include "formats/ggml_types.h"
#include "util/half.h"

bool ds4_linear_type_ok(uint32_t type) {
    return type == GGML_TYPE_F32 || type == GGML_TYPE_F16 || type == GGML_TYPE_BF16;
}

uint64_t ds4_linear_types(void) {
    uint64_t m = 0;
    for (uint32_t t = 0; t < 64; t++)
        if (ds4_linear_type_ok(t)) m |= 1ull << t;
    return m;
}

static void row_to_f32(uint32_t type, const uint8_t *src, float *dst, uint64_t n) {
    switch (type) {
    case GGML_TYPE_F32:
        memcpy(dst, src, n * sizeof(float));
        break;
    case GGML_TYPE_F16: {
        const uint16_t *h = (const uint16_t *)src;
        for (uint64_t i = 0; i < n; i++) dst[i] = ds4_f16_to_f32(h[i]);
        break;
    }
    case GGML_TYPE_BF16: {
        const uint16_t *h = (const uint16_t *)src;
        for (uint64_t i = 0; i < n; i++) dst[i] = ds4_bf16_to_f32(h[i]);
        break;
    }
    default:
        /* ds4_linear_type_ok is checked at load; reaching this is a bug. */
        abort();
    }
}

void ds4_tensor_row_f32(const ds4_tensor *w, uint64_t r, float *out) {
    row_to_f32(w->type, w->data + r * w->row_bytes, out, w->ne[0]);
}

typedef struct {
    const ds4_tensor *w;
    uint64_t r0;
    const float *x;
    uint64_t x_stride;
    uint32_t n_tok;
    float *y;
    uint64_t y_stride;
} linear_job;

static void linear_task(void *ctx, uint64_t begin, uint64_t end, int thread) {
    (void)thread;
    const linear_job *j = ctx;
    uint64_t n_in = j->w->ne[0];
    float *buf = NULL;
    if (j->w->type != GGML_TYPE_F32) {
        buf = malloc(n_in * sizeof(float));
        if (!buf) abort();
    }
    for (uint64_t i = begin; i < end; i++) {
        uint64_t r = j->r0 + i;
        const float *row;
        if (buf) {
            row_to_f32(j->w->type, j->w->data + r * j->w->row_bytes, buf, n_in);
            row = buf;
        } else {
            row = (const float *)(j->w->data + r * j->w->row_bytes);
        }
        for (uint32_t t = 0; t < j->n_tok; t++)
            j->y[t * j->y_stride + i] = ds4_dot_f32(row, j->x + t * j->x_stride, (uint32_t)n_in);
    }
    free(buf);
}

void ds4_linear_rows(ds4_pool *pool, const ds4_tensor *w, uint64_t r0, uint64_t n_rows, const float *x,
                     uint64_t x_stride, uint32_t n_tok, float *y, uint64_t y_stride) {
    linear_job j = {w, r0, x, x_stride, n_tok, y, y_stride};
    ds4_pool_run(pool, n_rows, 16, linear_task, &j);
}

void ds4_linear(ds4_pool *pool, const ds4_tensor *w, const float *x, uint32_t n_tok, float *y) {
    ds4_linear_rows(pool, w, 0, w->ne[1], x, w->ne[0], n_tok, y, w->ne[1]);
}
