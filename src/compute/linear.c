#include "compute/linear.h"

#include <stdlib.h>
#include <string.h>

#include "formats/ggml_types.h"
#include "formats/quant.h"

static bool is_float_type(uint32_t t) { return t == GGML_TYPE_F32 || t == GGML_TYPE_F16 || t == GGML_TYPE_BF16; }

bool ds4_linear_type_ok(uint32_t type) { return ds4_quant_supported(type) && type != GGML_TYPE_Q8_K; }

uint64_t ds4_linear_types(void) {
    uint64_t m = 0;
    for (uint32_t t = 0; t < 64; t++)
        if (ds4_linear_type_ok(t)) m |= 1ull << t;
    return m;
}

void ds4_tensor_row_f32(const ds4_tensor *w, uint64_t r, float *out) {
    ds4_dequantize_row(w->type, w->data + r * w->row_bytes, out, (int64_t)w->ne[0]);
}

/* Tokens per inner block: their activations stay in cache while a group of
 * weight rows is applied to each of them, so every weight row is read from
 * memory once per call however many tokens there are. */
#define TOKEN_BLOCK 32

typedef struct {
    const ds4_tensor *w;
    uint64_t r0;
    uint32_t n_tok;
    float *y;
    uint64_t y_stride;
    /* float weights: f32 activations; quantized weights: activations in the
     * weight type's activation format, act_bytes apart */
    const float *x;
    uint64_t x_stride;
    const uint8_t *act;
    size_t act_bytes;
    ds4_dot_f32_fn dot_f32;
    ds4_vec_dot_fn vec_dot;
    /* tile kernel and per-thread scratch for it (NULL: row by row) */
    ds4_vec_dot_tile_fn tile;
    uint8_t *tile_scratch;
    size_t tile_scratch_bytes;
} linear_job;

/* Tile path: rows outer, in groups that stay in L2 (1 MiB per core here)
 * next to the token block's re-encoded activations while every token
 * block passes over them, so a matrix larger than the caches is read from
 * memory once per call rather than once per token block. Each tile call
 * re-encodes its token block's activations (Q8_0: a transpose), which the
 * group's rows amortise: 384 KB measured ~3% faster prefill than 128 KB. */
#define TILE_GROUP_BYTES (384u << 10)

static void linear_tile_task(const linear_job *j, uint64_t begin, uint64_t end, int thread) {
    int64_t n_in = (int64_t)j->w->ne[0];
    uint64_t rb = TILE_GROUP_BYTES / j->w->row_bytes;
    rb = rb < 2 ? 2 : rb & ~(uint64_t)1;
    for (uint64_t r0 = begin; r0 < end; r0 += rb) {
        uint64_t r1 = r0 + rb < end ? r0 + rb : end;
        for (uint32_t t0 = 0; t0 < j->n_tok; t0 += TOKEN_BLOCK) {
            uint32_t t1 = t0 + TOKEN_BLOCK < j->n_tok ? t0 + TOKEN_BLOCK : j->n_tok;
            j->tile(n_in, j->w->data + (j->r0 + r0) * j->w->row_bytes, j->w->row_bytes, (uint32_t)(r1 - r0),
                    j->act + t0 * j->act_bytes, j->act_bytes, t1 - t0, j->y + t0 * j->y_stride + r0, j->y_stride,
                    j->tile_scratch + (size_t)thread * j->tile_scratch_bytes);
        }
    }
}

static void linear_range(const linear_job *j, uint64_t begin, uint64_t end, int thread) {
    if (j->tile) {
        /* bit-identical to the row-by-row path below */
        linear_tile_task(j, begin, end, thread);
        return;
    }
    int64_t n_in = (int64_t)j->w->ne[0];
    for (uint32_t t0 = 0; t0 < j->n_tok; t0 += TOKEN_BLOCK) {
        uint32_t t1 = t0 + TOKEN_BLOCK < j->n_tok ? t0 + TOKEN_BLOCK : j->n_tok;
        for (uint64_t i = begin; i < end; i++) {
            const uint8_t *row = j->w->data + (j->r0 + i) * j->w->row_bytes;
            if (j->dot_f32)
                for (uint32_t t = t0; t < t1; t++) j->y[t * j->y_stride + i] = j->dot_f32(n_in, row, j->x + t * j->x_stride);
            else
                for (uint32_t t = t0; t < t1; t++) j->y[t * j->y_stride + i] = j->vec_dot(n_in, row, j->act + t * j->act_bytes);
        }
    }
}

typedef struct {
    uint32_t type;
    int64_t n;
    const float *x;
    uint64_t x_stride;
    uint8_t *act;
    size_t act_bytes;
} act_job;

static void act_task(void *ctx, uint64_t begin, uint64_t end, int thread) {
    (void)thread;
    const act_job *a = ctx;
    for (uint64_t t = begin; t < end; t++) ds4_quantize_act(a->type, a->x + t * a->x_stride, a->act + t * a->act_bytes, a->n);
}

/* A batch of products sharing one pass: each product's job, and where its
 * rows start in the concatenated row space the pool splits. */
typedef struct {
    linear_job jobs[DS4_LINEAR_MAX_SEGS];
    uint64_t first[DS4_LINEAR_MAX_SEGS + 1];
    uint32_t n;
} multi_job;

static void multi_task(void *ctx, uint64_t begin, uint64_t end, int thread) {
    const multi_job *m = ctx;
    uint32_t k = 0;
    while (m->first[k + 1] <= begin) k++;
    for (; k < m->n && m->first[k] < end; k++) {
        uint64_t b = begin > m->first[k] ? begin - m->first[k] : 0;
        uint64_t e = (end < m->first[k + 1] ? end : m->first[k + 1]) - m->first[k];
        linear_range(&m->jobs[k], b, e, thread);
    }
}

void ds4_linear_multi(ds4_pool *pool, const ds4_linear_seg *segs, uint32_t n_segs) {
    if (n_segs > DS4_LINEAR_MAX_SEGS) abort(); /* a caller's bug */
    multi_job m = {.n = n_segs};
    /* scratch: every product's quantized activations, then one tile
     * scratch per thread, as large as the largest product needs */
    size_t act_off[DS4_LINEAR_MAX_SEGS], act_total = 0, tile_bytes = 0;
    int reuse[DS4_LINEAR_MAX_SEGS];
    uint64_t grain = 16;
    for (uint32_t k = 0; k < n_segs; k++) {
        const ds4_linear_seg *sg = &segs[k];
        const ds4_tensor *w = sg->w;
        linear_job *j = &m.jobs[k];
        *j = (linear_job){.w = w, .r0 = sg->r0, .n_tok = sg->n_tok, .y = sg->y, .y_stride = sg->y_stride, .x = sg->x,
                          .x_stride = sg->x_stride};
        m.first[k + 1] = m.first[k] + sg->n_rows;
        if (w->row_bytes >= 8192) grain = 4;
        reuse[k] = -1;
        if (is_float_type(w->type)) {
            j->dot_f32 = ds4_dot_f32_get(w->type);
            continue;
        }
        j->vec_dot = ds4_vec_dot_get(w->type);
        j->act_bytes = ds4_act_row_bytes(w->type, (int64_t)w->ne[0]);
        /* Where the type has one, the tile kernel: with several tokens it
         * decodes each row once for all of them, with one it takes the
         * type's best single-token path (Q8_0 prepares the activation once
         * per call rather than once per row). Its results equal vec_dot's
         * bit for bit, so the choice never changes a logit. */
        j->tile = ds4_vec_dot_tile_get(w->type);
        if (j->tile) {
            uint32_t tb = sg->n_tok < TOKEN_BLOCK ? sg->n_tok : TOKEN_BLOCK;
            size_t tsb = (ds4_vec_dot_tile_scratch((int64_t)w->ne[0], tb) + 63) & ~(size_t)63;
            if (tsb > tile_bytes) tile_bytes = tsb;
        }
        /* the same activations in the same format are quantized once */
        for (uint32_t i = 0; i < k && reuse[k] < 0; i++)
            if (segs[i].x == sg->x && segs[i].x_stride == sg->x_stride && segs[i].n_tok == sg->n_tok &&
                m.jobs[i].vec_dot && ds4_act_type(segs[i].w->type) == ds4_act_type(w->type) &&
                segs[i].w->ne[0] == w->ne[0])
                reuse[k] = (int)i;
        if (reuse[k] >= 0) continue;
        act_off[k] = act_total;
        act_total += (j->act_bytes * sg->n_tok + 63) & ~(size_t)63;
    }
    uint8_t *owned = NULL;
    size_t total = act_total + (size_t)ds4_pool_size(pool) * tile_bytes;
    uint8_t *buf = total ? ds4_pool_scratch(pool, total) : NULL;
    if (total && !buf) buf = owned = aligned_alloc(64, total);
    if (total && !buf) abort();
    for (uint32_t k = 0; k < n_segs; k++) {
        linear_job *j = &m.jobs[k];
        if (!j->vec_dot) continue;
        j->tile_scratch = buf + act_total;
        j->tile_scratch_bytes = tile_bytes;
        if (reuse[k] >= 0) {
            j->act = m.jobs[reuse[k]].act;
            continue;
        }
        j->act = buf + act_off[k];
        act_job a = {segs[k].w->type, (int64_t)segs[k].w->ne[0], segs[k].x, segs[k].x_stride, buf + act_off[k], j->act_bytes};
        ds4_pool_run(pool, segs[k].n_tok, 4, act_task, &a);
    }
    /* Big enough tasks that each streams a few KB of weights, small enough
     * that every thread gets several. */
    ds4_pool_run(pool, m.first[n_segs], grain, multi_task, &m);
    free(owned);
}

void ds4_linear_rows(ds4_pool *pool, const ds4_tensor *w, uint64_t r0, uint64_t n_rows, const float *x,
                     uint64_t x_stride, uint32_t n_tok, float *y, uint64_t y_stride) {
    ds4_linear_seg sg = {w, r0, n_rows, x, x_stride, n_tok, y, y_stride};
    ds4_linear_multi(pool, &sg, 1);
}

void ds4_linear(ds4_pool *pool, const ds4_tensor *w, const float *x, uint32_t n_tok, float *y) {
    ds4_linear_rows(pool, w, 0, w->ne[1], x, w->ne[0], n_tok, y, w->ne[1]);
}
