/* Host-array wrappers around single kernels (backends/gpu_testops.h). */
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "backends/gpu_testops.h"
}
#include "backends/cuda/common.cuh"
#include "backends/cuda/kernels.cuh"

/* Device buffers of one call, freed together. */
typedef struct pool {
    void *p[32];
    int n;
} pool;

static void pool_free(pool *pl) {
    for (int i = 0; i < pl->n; i++) cudaFree(pl->p[i]);
    pl->n = 0;
}

/* A device copy of host bytes (or uninitialised when src is NULL). */
static int dev(pool *pl, void **out, const void *src, size_t bytes, ds4_error *err) {
    *out = NULL;
    if (pl->n == 32) return ds4_fail(err, "testops: too many buffers");
    if (bytes == 0) bytes = 4;
    CU(cudaMalloc(out, bytes));
    pl->p[pl->n++] = *out;
    if (src) CU(cudaMemcpy(*out, src, bytes, cudaMemcpyHostToDevice));
    else CU(cudaMemset(*out, 0xff, bytes)); /* NaN poison: unwritten outputs show */
    return 0;
}
#define DEV(ptr, src, bytes)                                            \
    do {                                                                \
        void *d_;                                                       \
        if (dev(&pl, &d_, (src), (bytes), err)) goto fail;              \
        *(void **)&(ptr) = d_;                                          \
    } while (0)
#define RUN(call)                                                                                       \
    do {                                                                                                \
        cudaError_t e_ = (call);                                                                        \
        if (e_ == cudaSuccess) e_ = cudaDeviceSynchronize();                                            \
        if (e_ != cudaSuccess) {                                                                        \
            ds4_fail(err, "CUDA: %s (%s:%d: %s)", cudaGetErrorString(e_), __FILE__, __LINE__, #call); \
            goto fail;                                                                                  \
        }                                                                                               \
    } while (0)
#define BACK(dst, src, bytes) RUN(cudaMemcpy((dst), (src), (bytes), cudaMemcpyDeviceToHost))

static uint64_t row_bytes_of(uint32_t type, uint64_t K) {
    uint64_t b = 0;
    ggml_nbytes(type, K, &b);
    return b;
}

static ds4_tensor tensor(uint32_t type, const void *data, uint64_t ne0, uint64_t ne1, uint64_t ne2) {
    ds4_tensor t;
    memset(&t, 0, sizeof t);
    t.name = "test";
    t.type = type;
    t.ne[0] = ne0, t.ne[1] = ne1, t.ne[2] = ne2, t.ne[3] = 1;
    t.data = (const uint8_t *)data;
    t.row_bytes = row_bytes_of(type, ne0);
    return t;
}

extern "C" int ds4_gpu_test_linear(uint32_t type, const void *w, uint32_t K, uint32_t rows, uint32_t groups,
                                   uint64_t x_group, const float *x, uint64_t x_stride, const float *xscale,
                                   uint32_t n_tok, float *y, uint64_t y_stride, ds4_error *err) {
    pool pl = {{0}, 0};
    void *dw, *dx, *ds = NULL, *dy, *dact = NULL;
    uint64_t x_floats = (n_tok - 1) * x_stride + (groups - 1) * x_group + K;
    size_t ybytes = (size_t)n_tok * y_stride * 4;
    bool quant = k_quant_type(type);
    RUN(k_quant_init());
    DEV(dw, w, row_bytes_of(type, K) * rows * groups);
    DEV(dx, x, x_floats * 4);
    if (xscale) DEV(ds, xscale, n_tok * 4);
    DEV(dy, NULL, ybytes);
    if (quant) DEV(dact, NULL, k_act_bytes(type, K, (uint64_t)n_tok * groups));
    {
        ds4_tensor t = tensor(type, dw, K, (uint64_t)rows * groups, 1);
        if (quant)
            RUN(k_qlinear(0, &t, 0, rows, groups, x_group, (const float *)dx, x_stride, (const float *)ds, n_tok,
                          (float *)dy, y_stride, dact));
        else
            RUN(k_linear(0, &t, 0, rows, groups, x_group, (const float *)dx, x_stride, (const float *)ds, n_tok,
                         (float *)dy, y_stride));
    }
    BACK(y, dy, ybytes);
    if (quant && n_tok == 1 && groups == 1 && !xscale) {
        /* the product ending in the mHC post step of 4 streams: the bits of
         * k_qlinear then k_mhc_post */
        const uint32_t hc = 4;
        size_t nx = (size_t)hc * rows + hc + hc * hc;
        float *hx = (float *)malloc(nx * 4 * 2);
        if (!hx) {
            ds4_fail(err, "testops: out of memory");
            goto fail;
        }
        uint32_t r = 12345;
        for (size_t i = 0; i < nx; i++) r = r * 1664525u + 1013904223u, hx[i] = (float)(r >> 8) / 16777216.0f - 0.5f;
        float *dX1, *dX2, *dpc, *dy2;
        DEV(dX1, hx, (size_t)hc * rows * 4);
        DEV(dX2, hx, (size_t)hc * rows * 4);
        DEV(dpc, hx + (size_t)hc * rows, (size_t)(hc + hc * hc) * 4);
        DEV(dy2, NULL, (size_t)rows * 4);
        RUN(k_mhc_post(0, dX1, (const float *)dy, dpc, dpc + hc, 1, hc, rows));
        ds4_tensor t1 = tensor(type, dw, K, rows, 1);
        RUN(k_qlinear_post(0, &t1, (const float *)dx, dact, dy2, dX2, dpc, dpc + hc, hc));
        bool same = cudaMemcpy(hx, dX1, (size_t)hc * rows * 4, cudaMemcpyDeviceToHost) == cudaSuccess &&
                    cudaMemcpy(hx + nx, dX2, (size_t)hc * rows * 4, cudaMemcpyDeviceToHost) == cudaSuccess &&
                    memcmp(hx, hx + nx, (size_t)hc * rows * 4) == 0 &&
                    cudaMemcpy(hx, dy2, (size_t)rows * 4, cudaMemcpyDeviceToHost) == cudaSuccess &&
                    memcmp(hx, y, (size_t)rows * 4) == 0;
        free(hx);
        if (!same) {
            ds4_fail(err, "k_qlinear_post (%u rows of type %u): not the bits of k_qlinear and k_mhc_post", rows, type);
            goto fail;
        }
    }
    if (quant && n_tok == 1 && groups == 1 && !xscale && rows >= 2) {
        /* the same rows as a pair of matrices (a third, the rest) in one
         * launch: the same bits as the single product */
        uint32_t r1 = rows / 3 ? rows / 3 : 1;
        uint64_t rb = row_bytes_of(type, K);
        ds4_tensor t1 = tensor(type, dw, K, r1, 1), t2 = tensor(type, (const uint8_t *)dw + r1 * rb, K, rows - r1, 1);
        float *dp;
        DEV(dp, NULL, (size_t)rows * 4);
        RUN(k_qlinear_pair(0, &t1, dp, &t2, dp + r1, (const float *)dx, dact));
        float *two = (float *)malloc(rows * sizeof(float));
        bool same = two && cudaMemcpy(two, dp, rows * 4, cudaMemcpyDeviceToHost) == cudaSuccess &&
                    memcmp(two, y, rows * sizeof(float)) == 0;
        free(two);
        if (!same) {
            ds4_fail(err, "k_qlinear_pair (%u + %u rows of type %u): not the bits of k_qlinear", r1, rows - r1, type);
            goto fail;
        }
    }
    pool_free(&pl);
    return 0;
fail:
    pool_free(&pl);
    return -1;
}

extern "C" void ds4_gpu_test_set_plain_linear(int plain) { k_linear_set_plain(plain); }

extern "C" int ds4_gpu_test_linear_rms(uint32_t type, const void *w, uint32_t K, uint32_t rows, const float *x,
                                       uint64_t x_stride, uint32_t n_tok, float eps, float *y, uint64_t y_stride,
                                       ds4_error *err) {
    pool pl = {{0}, 0};
    void *dw, *dx, *dy;
    size_t ybytes = (size_t)n_tok * y_stride * 4;
    DEV(dw, w, row_bytes_of(type, K) * rows);
    DEV(dx, x, ((n_tok - 1) * x_stride + K) * 4);
    DEV(dy, NULL, ybytes);
    {
        ds4_tensor t = tensor(type, dw, K, rows, 1);
        RUN(k_linear_rms(0, &t, (const float *)dx, x_stride, n_tok, eps, (float *)dy, y_stride));
    }
    BACK(y, dy, ybytes);
    pool_free(&pl);
    return 0;
fail:
    pool_free(&pl);
    return -1;
}

/* Whether the activation rows a kernel wrote at dq (n_rows rows of n
 * floats at dx, in the activation format of weight type wtype: Q8_0 or
 * Q8_K blocks) are the bytes the activation quantizer makes of them. */
static int q8_same(void *dx, void *dq, uint32_t n_rows, uint32_t n, uint32_t wtype, const char *who, ds4_error *err) {
    size_t bytes = (size_t)n_rows * k_act_row_bytes(wtype, n);
    void *dref = NULL;
    uint8_t *a = (uint8_t *)malloc(bytes), *b = (uint8_t *)malloc(bytes);
    int rc = -1;
    if (!a || !b) {
        ds4_fail(err, "out of memory");
    } else if (cudaMalloc(&dref, bytes) != cudaSuccess ||
               k_quantize_act(0, wtype, (const float *)dx, n, 0, NULL, n, 1, n_rows, dref) != cudaSuccess ||
               cudaMemcpy(a, dq, bytes, cudaMemcpyDeviceToHost) != cudaSuccess ||
               cudaMemcpy(b, dref, bytes, cudaMemcpyDeviceToHost) != cudaSuccess) {
        ds4_fail(err, "%s: Q8_0 check: %s", who, cudaGetErrorString(cudaGetLastError()));
    } else if (memcmp(a, b, bytes) != 0) {
        ds4_fail(err, "%s: its %s activation rows differ from the quantizer's", who, k_act_is_q8k(wtype) ? "Q8_K" : "Q8_0");
    } else {
        rc = 0;
    }
    if (dref) cudaFree(dref);
    free(a), free(b);
    return rc;
}

extern "C" int ds4_gpu_test_rows(float *x, uint32_t n_rows, uint32_t n, uint32_t rows_per_tok, int norm,
                                 const float *norm_w, float eps, const float *inv_freq, uint32_t n_pairs, uint64_t pos0,
                                 int inverse, int qat, uint32_t n_rot, uint32_t split, ds4_error *err) {
    pool pl = {{0}, 0};
    void *dx, *dw = NULL, *df = NULL, *dq = NULL; /* dq: the rows' Q8_0 blocks, made by the rows kernel */
    DEV(dx, x, (size_t)n_rows * n * 4);
    if (norm_w) DEV(dw, norm_w, n * 4);
    if (inv_freq) DEV(df, inv_freq, n_pairs * 4 + 4);
    if (n % 32 == 0) DEV(dq, NULL, (size_t)n_rows * (n / 32) * 34);
    {
        row_op op = {(float *)dx, n_rows, n, n, rows_per_tok, norm, (const float *)dw, eps, (const float *)df, n_pairs,
                     pos0, inverse, qat, n_rot, NULL, (uint8_t *)dq};
        if (split && split < n_rows) { /* rows [0, split) and the rest as the two ops of one k_rows2 launch */
            row_op op1 = op;
            op.n_rows = split;
            op1.n_rows = n_rows - split;
            op1.x = (float *)dx + (size_t)split * n;
            if (dq) op1.q8 = (uint8_t *)dq + (size_t)split * (n / 32) * 34;
            op1.pos0 = pos0 + split / rows_per_tok;
            if (split % rows_per_tok) { ds4_fail(err, "split must be whole tokens"); goto fail; }
            RUN(k_rows2(0, &op, &op1));
        } else {
            RUN(k_rows(0, &op));
        }
    }
    if (dq && q8_same(dx, dq, n_rows, n, GGML_TYPE_Q8_0, "k_rows", err)) goto fail;
    BACK(x, dx, (size_t)n_rows * n * 4);
    pool_free(&pl);
    return 0;
fail:
    pool_free(&pl);
    return -1;
}

extern "C" int ds4_gpu_test_mhc_pre(uint32_t hc, uint32_t E, uint32_t n_tok, float rms_eps, float hc_eps, uint32_t iters,
                                    int head, const float *fn, const float *base, const float *scale, const float *X,
                                    int fused, const float *norm_w, float *y, float *post, float *comb, ds4_error *err) {
    pool pl = {{0}, 0};
    uint32_t n_mix = head ? hc : (2 + hc) * hc, n_scale = head ? 1 : 3;
    void *dfn, *db, *ds, *dX, *dy, *dpre, *dpost, *dcomb, *dmix, *drinv, *dnw = NULL;
    void *dq = NULL, *dqk = NULL; /* y's Q8_0 and Q8_K rows, made by the finish kernel */
    if (norm_w) DEV(dnw, norm_w, (size_t)E * 4);
    if (fused == 2) { /* F16 mixing weights (the published files'): the tensor-core path */
        size_t nw = (size_t)n_mix * hc * E;
        uint16_t *h = (uint16_t *)malloc(nw * 2);
        if (!h) {
            ds4_fail(err, "out of host memory");
            goto fail;
        }
        for (size_t i = 0; i < nw; i++) h[i] = __half_as_ushort(__float2half_rn(fn[i]));
        int bad = dev(&pl, &dfn, h, nw * 2, err);
        free(h);
        if (bad) goto fail;
    } else {
        DEV(dfn, fn, (size_t)n_mix * hc * E * 4);
    }
    DEV(db, base, n_mix * 4);
    DEV(ds, scale, n_scale * 4);
    DEV(dX, X, (size_t)n_tok * hc * E * 4);
    DEV(dy, NULL, (size_t)n_tok * E * 4);
    DEV(dpre, NULL, (size_t)n_tok * hc * 4);
    DEV(dpost, NULL, (size_t)n_tok * hc * 4);
    DEV(dcomb, NULL, (size_t)n_tok * hc * hc * 4);
    DEV(dmix, NULL, (size_t)n_tok * n_mix * 4);
    DEV(drinv, NULL, (size_t)n_tok * 4);
    if (E % 32 == 0) DEV(dq, NULL, (size_t)n_tok * k_act_row_bytes(GGML_TYPE_Q8_0, E));
    if (E % 256 == 0) DEV(dqk, NULL, (size_t)n_tok * k_act_row_bytes(GGML_TYPE_Q2_K, E));
    {
        ds4_tensor t = tensor(fused == 2 ? GGML_TYPE_F16 : GGML_TYPE_F32, dfn, (uint64_t)hc * E, n_mix, 1);
        cudaError_t one = cudaErrorNotSupported;
        if (fused == 2 && n_tok == 1) /* one launch; not where clusters are missing */
            one = k_mhc_one(0, &t, (const float *)dX, hc, E, rms_eps, (const float *)db, (const float *)ds, hc_eps, head,
                            (float *)dmix, (float *)dpre, (const float *)dnw, rms_eps, (float *)dy, (uint8_t *)dq,
                            (uint8_t *)dqk);
        if (one != cudaErrorNotSupported) {
            RUN(one);
            if (!head)
                RUN(k_mhc_coeffs(0, (const float *)dmix, 1, hc, (const float *)db, (const float *)ds, hc_eps, iters, 0,
                                 NULL, (float *)dpost, (float *)dcomb));
            if (dq && q8_same(dy, dq, n_tok, E, GGML_TYPE_Q8_0, "k_mhc_one", err)) goto fail;
            if (dqk && q8_same(dy, dqk, n_tok, E, GGML_TYPE_Q2_K, "k_mhc_one", err)) goto fail;
        } else if (fused) {
            RUN(k_linear_rms(0, &t, (const float *)dX, (uint64_t)hc * E, n_tok, rms_eps, (float *)dmix, n_mix));
            RUN(k_mhc_finish(0, (const float *)dmix, (const float *)dX, n_tok, hc, E, (const float *)db,
                             (const float *)ds, hc_eps, iters, head, (float *)dpre, (float *)dpost, (float *)dcomb,
                             (const float *)dnw, rms_eps, (float *)dy, (uint8_t *)dq, (uint8_t *)dqk));
            if (dq && q8_same(dy, dq, n_tok, E, GGML_TYPE_Q8_0, "k_mhc_finish", err)) goto fail;
            if (dqk && q8_same(dy, dqk, n_tok, E, GGML_TYPE_Q2_K, "k_mhc_finish", err)) goto fail;
        } else {
            RUN(k_rms_inv(0, (const float *)dX, n_tok, hc * E, rms_eps, (float *)drinv));
            RUN(k_linear(0, &t, 0, n_mix, 1, 0, (const float *)dX, (uint64_t)hc * E, (const float *)drinv, n_tok,
                         (float *)dmix, n_mix));
            RUN(k_mhc_coeffs(0, (const float *)dmix, n_tok, hc, (const float *)db, (const float *)ds, hc_eps, iters,
                             head, (float *)dpre, (float *)dpost, (float *)dcomb));
            RUN(k_mhc_collapse(0, (const float *)dX, (const float *)dpre, n_tok, hc, E, (float *)dy));
        }
    }
    BACK(y, dy, (size_t)n_tok * E * 4);
    if (!head) {
        BACK(post, dpost, (size_t)n_tok * hc * 4);
        BACK(comb, dcomb, (size_t)n_tok * hc * hc * 4);
    }
    pool_free(&pl);
    return 0;
fail:
    pool_free(&pl);
    return -1;
}

extern "C" int ds4_gpu_test_mhc_post(uint32_t hc, uint32_t E, uint32_t n_tok, float *X, const float *o, const float *post,
                                     const float *comb, ds4_error *err) {
    pool pl = {{0}, 0};
    void *dX, *dO, *dp, *dc;
    DEV(dX, X, (size_t)n_tok * hc * E * 4);
    DEV(dO, o, (size_t)n_tok * E * 4);
    DEV(dp, post, (size_t)n_tok * hc * 4);
    DEV(dc, comb, (size_t)n_tok * hc * hc * 4);
    RUN(k_mhc_post(0, (float *)dX, (const float *)dO, (const float *)dp, (const float *)dc, n_tok, hc, E));
    BACK(X, dX, (size_t)n_tok * hc * E * 4);
    pool_free(&pl);
    return 0;
fail:
    pool_free(&pl);
    return -1;
}

extern "C" int ds4_gpu_test_compressor(uint32_t ratio, uint32_t width, uint32_t n_rot, const float *ape,
                                       const float *norm_w, float eps, const float *inv_freq, int qat, uint32_t T,
                                       const float *ck, const float *cz, const uint32_t *chunks, uint32_t n_chunks,
                                       float *rows, ds4_error *err) {
    pool pl = {{0}, 0};
    uint32_t halves = ratio == 4 ? 2 : 1, hw = halves * width, slots = halves == 2 ? 2 * ratio : ratio;
    void *dape, *dnorm, *dfreq, *dck, *dcz, *dfk[2], *dfz[2], *drows;
    DEV(dape, ape, (size_t)ratio * hw * 4);
    DEV(dnorm, norm_w, width * 4);
    DEV(dfreq, inv_freq, 128 * 4);
    DEV(dck, ck, (size_t)T * hw * 4);
    DEV(dcz, cz, (size_t)T * hw * 4);
    for (int i = 0; i < 2; i++) {
        DEV(dfk[i], NULL, (size_t)slots * hw * 4);
        DEV(dfz[i], NULL, (size_t)slots * hw * 4);
    }
    DEV(drows, NULL, (size_t)(T / ratio) * width * 4 + 4);
    {
        uint64_t pos = 0;
        int fr = 0;
        for (uint32_t c = 0; c < n_chunks && pos < T; c++) {
            uint32_t n = chunks[c] < T - pos ? chunks[c] : (uint32_t)(T - pos);
            comp_op op;
            memset(&op, 0, sizeof op);
            op.ratio = ratio, op.width = width, op.halves = halves;
            op.ck = (const float *)dck + pos * hw;
            op.cz = (const float *)dcz + pos * hw;
            op.ape = (const uint8_t *)dape, op.ape_type = GGML_TYPE_F32, op.ape_row_bytes = (uint64_t)hw * 4;
            op.fk_old = (const float *)dfk[fr], op.fz_old = (const float *)dfz[fr];
            op.fk_new = (float *)dfk[fr ^ 1], op.fz_new = (float *)dfz[fr ^ 1];
            op.pos0 = pos, op.n = n;
            op.norm_w = (const float *)dnorm, op.eps = eps;
            op.inv_freq = (const float *)dfreq, op.n_pairs = n_rot / 2;
            op.qat = qat, op.n_rot = n_rot;
            op.rows = (float *)drows;
            RUN(k_comp_emit(0, &op));
            RUN(k_comp_frontier(0, &op));
            fr ^= 1;
            pos += n;
        }
        if (pos != T) {
            ds4_fail(err, "testops: chunks cover %llu of %u tokens", (unsigned long long)pos, T);
            goto fail;
        }
    }
    BACK(rows, drows, (size_t)(T / ratio) * width * 4);
    pool_free(&pl);
    return 0;
fail:
    pool_free(&pl);
    return -1;
}

extern "C" int ds4_gpu_test_indexer(const float *iq, const float *iw, uint32_t n, uint32_t n_head, uint32_t d,
                                    const float *keys, uint64_t pos0, uint32_t topk, float *scores, uint64_t stride,
                                    int32_t *sel, ds4_error *err) {
    pool pl = {{0}, 0};
    uint64_t n_keys = (pos0 + n) / 4;
    void *dq, *dw, *dk, *ds, *dsel, *dwork;
    DEV(dq, iq, (size_t)n * n_head * d * 4);
    DEV(dw, iw, (size_t)n * n_head * 4);
    DEV(dk, keys, n_keys * d * 4);
    DEV(ds, scores, (size_t)n * stride * 4);
    DEV(dsel, sel, (size_t)n * topk * 4);
    DEV(dwork, NULL, k_idx_topk_work_bytes(n));
    RUN(k_idx_prepare(n_head, d));
    RUN(k_idx_scores(0, (const float *)dq, (const float *)dw, n, n_head, d, (const float *)dk, pos0, topk, (float *)ds,
                     stride));
    RUN(k_idx_topk(0, (const float *)ds, stride, n, pos0, topk, (int32_t *)dsel, dwork));
    BACK(scores, ds, (size_t)n * stride * 4);
    BACK(sel, dsel, (size_t)n * topk * 4);
    pool_free(&pl);
    return 0;
fail:
    pool_free(&pl);
    return -1;
}

extern "C" int ds4_gpu_test_topk(const float *scores, uint32_t n, uint64_t stride, uint64_t pos0, uint32_t topk,
                                 int32_t *sel, ds4_error *err) {
    pool pl = {{0}, 0};
    void *ds, *dsel, *dwork;
    DEV(ds, scores, (size_t)n * stride * 4);
    DEV(dsel, sel, (size_t)n * topk * 4);
    DEV(dwork, NULL, k_idx_topk_work_bytes(n));
    RUN(k_idx_topk(0, (const float *)ds, stride, n, pos0, topk, (int32_t *)dsel, dwork));
    BACK(sel, dsel, (size_t)n * topk * 4);
    pool_free(&pl);
    return 0;
fail:
    pool_free(&pl);
    return -1;
}

extern "C" int ds4_gpu_test_attention(const float *q, const float *kv, const float *ring, const float *comp,
                                      uint64_t n_comp_rows, const int32_t *sel, const float *sinks, uint32_t n,
                                      uint32_t H, uint32_t hd, uint32_t W, uint32_t ratio, uint32_t topk, uint64_t pos0,
                                      const float *inv_freq, uint32_t n_pairs, uint32_t part_slots, float q_eps,
                                      float *out, ds4_error *err) {
    pool pl = {{0}, 0};
    void *dq, *dkv, *dring, *dcomp = NULL, *dsel = NULL, *dsinks, *dfreq, *dout, *dpart = NULL;
    DEV(dq, q, (size_t)n * H * hd * 4);
    DEV(dkv, kv, (size_t)n * hd * 4);
    DEV(dring, ring, (size_t)W * hd * 4);
    if (comp) DEV(dcomp, comp, n_comp_rows * hd * 4);
    if (sel) DEV(dsel, sel, (size_t)n * topk * 4);
    DEV(dsinks, sinks, H * 4);
    DEV(dfreq, inv_freq, 128 * 4);
    DEV(dout, NULL, (size_t)n * H * hd * 4);
    if (part_slots) DEV(dpart, NULL, (size_t)part_slots * H * (hd + 2) * 4);
    {
        attn_op op;
        memset(&op, 0, sizeof op);
        op.q = (const float *)dq, op.kv = (const float *)dkv, op.ring = (const float *)dring;
        op.comp = (const float *)dcomp, op.sel = (const int32_t *)dsel, op.sinks = (const float *)dsinks;
        op.n = n, op.H = H, op.hd = hd, op.W = W, op.ratio = ratio, op.topk = topk, op.pos0 = pos0;
        op.inv_freq = (const float *)dfreq, op.n_pairs = n_pairs, op.out = (float *)dout;
        op.part = (float *)dpart, op.part_slots = part_slots;
        RUN(k_attn_prepare(hd));
        op.q_eps = q_eps;
        if (q_eps > 0.0f && !k_attention_norms_q(&op)) RUN(cudaErrorNotSupported);
        RUN(k_attention(0, &op));
    }
    BACK(out, dout, (size_t)n * H * hd * 4);
    pool_free(&pl);
    return 0;
fail:
    pool_free(&pl);
    return -1;
}

extern "C" int ds4_gpu_test_argmax(const float *x, uint32_t n, int32_t *out, ds4_error *err) {
    pool pl = {{0}, 0};
    void *dx, *dout, *dpart;
    DEV(dx, x, (size_t)n * 4);
    DEV(dout, NULL, 4);
    DEV(dpart, NULL, k_pick_scratch_bytes());
    RUN(k_argmax(0, (const float *)dx, n, dpart, (int32_t *)dout, NULL));
    BACK(out, dout, 4);
    pool_free(&pl);
    return 0;
fail:
    pool_free(&pl);
    return -1;
}

/* k_l2_ahead over [off, bytes - tail) of a device copy of data, which is
 * read back into out: the prefetches must leave memory as it was. */
extern "C" int ds4_gpu_test_l2_ahead(const void *data, size_t bytes, size_t off, size_t tail, void *out, ds4_error *err) {
    pool pl = {{0}, 0};
    void *d;
    DEV(d, data, bytes);
    {
        l2_spans sp;
        memset(&sp, 0, sizeof sp);
        sp.p[0] = (const uint8_t *)d + off, sp.bytes[0] = bytes - off - tail;
        sp.p[1] = (const uint8_t *)d, sp.bytes[1] = bytes;
        sp.n = 2;
        RUN(k_l2_ahead(0, &sp));
    }
    BACK(out, d, bytes);
    pool_free(&pl);
    return 0;
fail:
    pool_free(&pl);
    return -1;
}

extern "C" int ds4_gpu_test_band(const float *x, uint32_t n, float T, float min_p, uint32_t cap, int32_t *out, float *vals,
                                 ds4_error *err) {
    pool pl = {{0}, 0};
    void *dx, *dout, *dv, *dpart;
    DEV(dx, x, (size_t)n * 4);
    DEV(dout, NULL, (1 + (size_t)cap) * 4);
    DEV(dv, NULL, (size_t)cap * 4);
    DEV(dpart, NULL, k_pick_scratch_bytes());
    RUN(k_band(0, (const float *)dx, n, T, min_p, cap, dpart, (int32_t *)dout, (float *)dv));
    BACK(out, dout, (1 + (size_t)cap) * 4);
    BACK(vals, dv, (size_t)cap * 4);
    pool_free(&pl);
    return 0;
fail:
    pool_free(&pl);
    return -1;
}

extern "C" int ds4_gpu_test_route(const float *logits, uint32_t n, uint32_t n_expert, uint32_t k, const int32_t *tokens,
                                  const int32_t *tid2eid, uint32_t n_vocab, const float *bias, float scale,
                                  int32_t *ids, float *wts, ds4_error *err) {
    pool pl = {{0}, 0};
    void *dl, *dt, *dtab = NULL, *db = NULL, *dids, *dw;
    DEV(dl, logits, (size_t)n * n_expert * 4);
    DEV(dt, tokens, n * 4);
    if (tid2eid) DEV(dtab, tid2eid, (size_t)n_vocab * k * 4);
    if (bias) DEV(db, bias, n_expert * 4);
    DEV(dids, NULL, (size_t)n * k * 4);
    DEV(dw, NULL, (size_t)n * k * 4);
    RUN(k_route(0, (const float *)dl, n, n_expert, k, (const int32_t *)dt, (const int32_t *)dtab, (const float *)db, scale,
                (int32_t *)dids, (float *)dw, NULL));
    BACK(ids, dids, (size_t)n * k * 4);
    BACK(wts, dw, (size_t)n * k * 4);
    /* each token alone, with the grouping made in the routing kernel: the
     * same ids and weights, and the grouping k_moe_group makes of them */
    {
        uint64_t gi = k_group_ints(n_expert, k);
        void *dg1, *dg2;
        DEV(dg1, NULL, gi * 4);
        DEV(dg2, NULL, gi * 4);
        int32_t g1[1 + 3 * K_MAX_EXPERTS + 2 * K_MAX_USED], g2[1 + 3 * K_MAX_EXPERTS + 2 * K_MAX_USED], id1[K_MAX_USED];
        float w1[K_MAX_USED];
        for (uint32_t t = 0; t < n; t++) {
            cudaMemset(dg1, 0, gi * 4), cudaMemset(dg2, 0, gi * 4);
            RUN(k_route(0, (const float *)dl + (uint64_t)t * n_expert, 1, n_expert, k, (const int32_t *)dt + t,
                        (const int32_t *)dtab, (const float *)db, scale, (int32_t *)dids, (float *)dw, (int32_t *)dg1));
            RUN(k_moe_group(0, (const int32_t *)dids, k, n_expert, (int32_t *)dg2));
            BACK(id1, dids, k * 4);
            BACK(w1, dw, k * 4);
            BACK(g1, dg1, gi * 4);
            BACK(g2, dg2, gi * 4);
            if (memcmp(id1, ids + (uint64_t)t * k, k * 4) || memcmp(w1, wts + (uint64_t)t * k, k * 4) ||
                memcmp(g1, g2, gi * 4)) {
                ds4_fail(err, "k_route of token %u alone: %s differ", t,
                         memcmp(g1, g2, gi * 4) ? "grouping and k_moe_group's" : "ids or weights and the batch's");
                goto fail;
            }
        }
    }
    pool_free(&pl);
    return 0;
fail:
    pool_free(&pl);
    return -1;
}

extern "C" int ds4_gpu_test_group(const int32_t *ids, uint32_t n_entries, uint32_t n_expert, int32_t *grp,
                                  ds4_error *err) {
    pool pl = {{0}, 0};
    void *dids, *dgrp;
    size_t gi = k_group_ints(n_expert, n_entries);
    DEV(dids, ids, (size_t)n_entries * 4);
    DEV(dgrp, NULL, gi * 4);
    RUN(k_moe_group(0, (const int32_t *)dids, n_entries, n_expert, (int32_t *)dgrp));
    BACK(grp, dgrp, gi * 4);
    pool_free(&pl);
    return 0;
fail:
    pool_free(&pl);
    return -1;
}

extern "C" int ds4_gpu_test_moe(uint32_t type, uint32_t type_down, uint32_t n, uint32_t E, uint32_t F, uint32_t X, uint32_t k, float limit,
                                const void *gate, const void *up, const void *down, const void *sgate, const void *sup,
                                const void *sdown, const float *x, const int32_t *ids, const float *wts, float *out,
                                ds4_error *err) {
    pool pl = {{0}, 0};
    size_t eb = row_bytes_of(type, E) * F, fb = row_bytes_of(type_down, F) * E; /* one expert's up/gate and down */
    void *dg, *du, *dd, *dsg, *dsu, *dsd, *dx, *dids, *dw, *dgrp, *dh, *dhs, *ddx, *dsh, *dout, *dact = NULL;
    uint32_t slots = n * k < X ? n * k : X;
    bool quant = k_quant_type(type);
    RUN(k_quant_init());
    if (quant != k_quant_type(type_down)) {
        ds4_fail(err, "testops: mixed float and quantized expert types");
        goto fail;
    }
    DEV(dg, gate, eb * X);
    DEV(du, up, eb * X);
    DEV(dd, down, fb * X);
    DEV(dsg, sgate, eb);
    DEV(dsu, sup, eb);
    DEV(dsd, sdown, fb);
    DEV(dx, x, (size_t)n * E * 4);
    DEV(dids, ids, (size_t)n * k * 4);
    DEV(dw, wts, (size_t)n * k * 4);
    DEV(dgrp, NULL, k_group_ints(X, n * k) * 4);
    DEV(dh, NULL, (size_t)n * k * F * 4);
    DEV(dhs, NULL, (size_t)n * F * 4);
    DEV(ddx, NULL, (size_t)n * k * E * 4);
    DEV(dsh, NULL, (size_t)n * E * 4);
    DEV(dout, NULL, (size_t)n * E * 4);
    if (quant) DEV(dact, NULL, (size_t)n * k * (E > F ? E : F) * 2 + 4096);
    {
        ds4_tensor tg = tensor(type, dg, E, F, X), tu = tensor(type, du, E, F, X), td = tensor(type_down, dd, F, E, X);
        ds4_tensor sg = tensor(type, dsg, E, F, 1), su = tensor(type, dsu, E, F, 1), sd = tensor(type_down, dsd, F, E, 1);
        const float *fx = (const float *)dx;
        const int32_t *grp = (const int32_t *)dgrp;
        RUN(k_moe_group(0, (const int32_t *)dids, n * k, X, (int32_t *)dgrp));
        if (quant) {
            RUN(k_qffn_up(0, &sg, &su, NULL, k, n, 0, 1, NULL, fx, limit, (float *)dhs, dact));
            RUN(k_qffn_down(0, &sd, NULL, k, n, 0, 1, NULL, (const float *)dhs, (float *)dsh, dact));
            RUN(k_qffn_up(0, &tg, &tu, grp, k, n, 0, slots, NULL, fx, limit, (float *)dh, dact));
            RUN(k_qffn_down(0, &td, grp, k, n, 0, slots, NULL, (const float *)dh, (float *)ddx, dact));
        } else {
            RUN(k_ffn_up(0, &sg, &su, NULL, k, n, 0, 1, NULL, fx, limit, (float *)dhs));
            RUN(k_ffn_down(0, &sd, NULL, n, 0, 1, NULL, (const float *)dhs, (float *)dsh));
            RUN(k_ffn_up(0, &tg, &tu, grp, k, n, 0, slots, NULL, fx, limit, (float *)dh));
            RUN(k_ffn_down(0, &td, grp, n, 0, slots, NULL, (const float *)dh, (float *)ddx));
        }
        RUN(k_moe_combine(0, (const float *)dsh, (const float *)ddx, (const int32_t *)dids, (const float *)dw,
                          (const int32_t *)dgrp, n, k, X, E, (float *)dout));
    }
    BACK(out, dout, (size_t)n * E * 4);
    pool_free(&pl);
    return 0;
fail:
    pool_free(&pl);
    return -1;
}
