/* Tensor bytes: read, encode in the target type, stream to the GGUF. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "convert.h"
#include "formats/ggml_types.h"
#include "formats/quant.h"
#include "util/clock.h"

typedef struct encode_job {
    uint32_t type;
    const float *src;
    uint64_t cols;
    const float *importance;
    uint8_t *dst;
    size_t row_bytes;
} encode_job;

static void encode_rows(void *ctx, uint64_t begin, uint64_t end, int thread) {
    (void)thread;
    const encode_job *j = ctx;
    for (uint64_t r = begin; r < end; r++)
        ds4_quantize_row(j->type, j->src + r * j->cols, j->dst + r * j->row_bytes, (int64_t)j->cols, j->importance);
}

/* rows x cols floats -> rows encoded rows, in parallel. The quantizers are
 * slow (IQ2_XXS: a few million values per second per core), so rows are
 * split over the pool; cheap types take big chunks to keep the hand-off
 * overhead small. */
static size_t encode(convert_emit *c, uint32_t type, const float *src, uint64_t rows, uint64_t cols,
                     const float *importance) {
    encode_job j = {type, src, cols, importance, c->enc, ds4_quant_row_bytes(type, (int64_t)cols)};
    int slow = ggml_type_get(type)->block_elems == 256;
    uint64_t grain = slow ? 1 : 1 + (1u << 16) / cols;
    ds4_pool_run(c->pool, rows, grain, encode_rows, &j);
    return (size_t)(rows * j.row_bytes);
}

void convert_progress(convert_emit *c, const char *name, int final) {
    double t = ds4_now_s();
    /* tty: a live line at most 10 times a second; log: every 64 tensors. */
    if (!final && (c->tty ? t - c->last_report < 0.1 : c->n_done % 64 != 0)) return;
    c->last_report = t;
    fprintf(stderr, "%s[%3d%%] %zu/%zu tensors, %.1f/%.1f MB  %-40s%s", c->tty ? "\r" : "",
            c->total ? (int)(100 * c->done / c->total) : 100, c->n_done, c->n_total, c->done / 1e6, c->total / 1e6, name,
            c->tty && !final ? "" : "\n");
}

uint64_t convert_max_matrix_elems(const ds4_layout *l) {
    uint64_t m = 0;
    for (size_t i = 0; i < l->n; i++) {
        const ds4_layout_tensor *t = &l->t[i];
        uint64_t per = t->ne[0] * t->ne[1]; /* experts are written one at a time */
        if (per > m) m = per;
    }
    return m;
}

static int importance_for(convert_emit *c, const ds4_layout_tensor *t, uint64_t mat, const float **imp, ds4_error *err) {
    *imp = NULL;
    if (!c->im || t->role == DS4_ROLE_VECTOR) return 0;
    return ds4_imatrix_get(c->im, t->name, t->ne[0], t->ne[2], mat, imp, err);
}

static int emit_matrix(convert_emit *c, const ds4_layout_tensor *t, const char *src, uint64_t mat, uint32_t type,
                       ds4_error *err) {
    uint64_t rows = t->n_dims == 1 ? 1 : t->ne[1], cols = t->ne[0];
    /* FP4 experts land in MXFP4 without a round trip through float: same
     * codes, same E8M0 scales, only the nibble arrangement changes. */
    if (type == GGML_TYPE_MXFP4 && ds4_role_is_expert(t->role)) {
        const uint8_t *codes, *scales;
        int fp4 = ckpt_fp4_planes(c->ix, src, rows, cols, &codes, &scales, err);
        if (fp4 < 0) return -1;
        if (fp4) {
            ds4_mxfp4_native_to_blocks(codes, scales, (int64_t)rows, (int64_t)cols, c->enc);
            c->n_passthrough++;
            return gguf_writer_write(c->w, c->enc, ds4_quant_row_bytes(type, (int64_t)cols) * rows, err);
        }
    }
    /* A vector is read by its length alone (cols = 0 in the checkpoint). */
    if (ckpt_read_f32(c->ix, src, t->n_dims == 1 ? cols : rows, t->n_dims == 1 ? 0 : cols, c->buf, err)) return -1;
    const float *imp;
    if (importance_for(c, t, mat, &imp, err)) return -1;
    size_t n = encode(c, type, c->buf, rows, cols, imp);
    return gguf_writer_write(c->w, c->enc, n, err);
}

int convert_emit_tensor(convert_emit *c, const ds4_layout_tensor *t, uint32_t type, ds4_error *err) {
    uint64_t row_bytes = t->role == DS4_ROLE_TID2EID ? 0 : ds4_quant_row_bytes(type, (int64_t)t->ne[0]);
    switch (t->role) {
    case DS4_ROLE_TID2EID: {
        int32_t *ids = (int32_t *)c->enc;
        if (ckpt_read_i32(c->ix, t->src, t->ne[1], t->ne[0], c->hp->n_expert - 1, ids, err)) return -1;
        if (gguf_writer_write(c->w, ids, (size_t)(t->ne[0] * t->ne[1] * 4), err)) return -1;
        c->done += t->ne[0] * t->ne[1] * 4;
        break;
    }
    case DS4_ROLE_EXPERT_GATE:
    case DS4_ROLE_EXPERT_UP:
    case DS4_ROLE_EXPERT_DOWN:
        for (uint64_t e = 0; e < t->ne[2]; e++) {
            char name[160];
            snprintf(name, sizeof name, t->src, (unsigned)e);
            if (emit_matrix(c, t, name, e, type, err)) return -1;
            c->done += row_bytes * t->ne[1];
            convert_progress(c, t->name, 0);
        }
        break;
    default:
        if (emit_matrix(c, t, t->src, 0, type, err)) return -1;
        c->done += row_bytes * t->ne[1];
    }
    c->n_done++;
    convert_progress(c, t->name, c->n_done == c->n_total);
    return 0;
}
