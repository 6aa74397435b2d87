/* Row transforms and the mHC kernels (compute/mhc.c, compute/ops.c). */
#include <string.h>

#include "backends/cuda/common.cuh"
#include "backends/cuda/kernels.cuh"
#include "backends/cuda/mhcfn.cuh"
#include "backends/cuda/moefn.cuh"
#include "backends/cuda/quantfn.cuh"
#include "backends/cuda/rowfn.cuh"

/* ---- row transforms ------------------------------------------------------- */

/* Threads a row of n floats takes: its RMS sum's partition (row_transform's
 * rbd), whatever block it shares. */
__host__ __device__ __forceinline__ unsigned rows_threads(uint32_t n) { return n >= 2048 ? 512 : (n >= 1024 ? 256 : 128); }

/* A decode step's rows (one or two blocks) ask L2 for their norm weights
 * before the programmatic wait. */
__device__ __forceinline__ void rows_prefetch(const row_op &op) {
    if (gridDim.x <= 2 && op.norm) prefetch_l2(op.norm_w, (uint64_t)op.n * sizeof(float));
}

/* One row of op (row: its index among op's rows). */
__device__ __forceinline__ void rows_one(const row_op &op, uint32_t row, float *v, double *red) {
    float *x = op.x + (uint64_t)row * op.stride;
    load_row(v, x, op.n);
    __syncthreads();
    row_transform(v, op.n, op.norm, op.norm_w, op.eps, op.inv_freq, op.n_pairs, op.pos0 + row / op.rows_per_tok,
                  op.inverse, op.qat, op.n_rot, red, rows_threads(op.n));
    float *c = op.copy ? op.copy + (uint64_t)row * op.n : NULL;
    for (uint32_t i = threadIdx.x; i < op.n; i += blockDim.x) {
        x[i] = v[i];
        if (c) c[i] = v[i];
    }
    if (op.q8) q8_0_row(v, op.n, op.q8 + (uint64_t)row * (op.n / DS4_QK8_0) * sizeof(ds4_block_q8_0), 0, blockDim.x / 32);
}

/* Blocks below op0.n_rows take op0's rows, the others op1's (when op1 has
 * rows): two independent transforms in one launch, each row with the bits
 * it has alone. Each op is used in its own branch (a reference picked at
 * run time between two kernel parameters had put them in local memory:
 * 2.5x the time of the 131072 q rows of a prefill). */
__global__ void rows_kernel(row_op op0, row_op op1) {
    extern __shared__ float v[];
    __shared__ double red[32];
    bool second = blockIdx.x >= op0.n_rows;
    if (second) rows_prefetch(op1);
    else rows_prefetch(op0);
    pdl_enter();
    if (second) rows_one(op1, blockIdx.x - op0.n_rows, v, red);
    else rows_one(op0, blockIdx.x, v, red);
}

cudaError_t k_rows2(cudaStream_t st, const row_op *op0, const row_op *op1) {
    row_op none;
    memset(&none, 0, sizeof none);
    if (!op1) op1 = &none;
    uint32_t n = op0->n > op1->n ? op0->n : op1->n, blocks = op0->n_rows + op1->n_rows;
    if (blocks == 0) return cudaSuccess;
    size_t smem = (size_t)n * sizeof(float);
    if (smem > 48 * 1024) return cudaErrorInvalidValue; /* rows are at most a few thousand floats */
    if ((op0->q8 && op0->n % DS4_QK8_0) || (op1->q8 && op1->n % DS4_QK8_0)) return cudaErrorInvalidValue;
    k_launch(rows_kernel, blocks, rows_threads(n), smem, st, *op0, *op1);
    return LAUNCH_STATUS();
}

cudaError_t k_rows(cudaStream_t st, const row_op *op) { return k_rows2(st, op, NULL); }

/* ---- embedding ---------------------------------------------------------------- */

__global__ void embed_kernel(const uint8_t *data, uint64_t row_bytes, uint32_t type, uint32_t E, const int32_t *tokens,
                             uint32_t hc, float *X, int32_t *tok_copy, const int32_t *dev_pick) {
    pdl_enter();
    uint32_t t = blockIdx.y, d = blockIdx.x * blockDim.x + threadIdx.x;
    int32_t tok = tokens[t];
    if (tok < 0 && dev_pick) tok = *dev_pick;
    if (tok_copy && d == 0) tok_copy[t] = tok;
    if (d >= E) return;
    float v = load_elem(type, data + (uint64_t)tok * row_bytes, d);
    for (uint32_t i = 0; i < hc; i++) X[((uint64_t)t * hc + i) * E + d] = v;
}

cudaError_t k_embed(cudaStream_t st, const ds4_tensor *emb, const int32_t *tokens, uint32_t n, uint32_t hc, float *X,
                    int32_t *tok_copy, const int32_t *dev_pick) {
    if (n == 0) return cudaSuccess;
    uint32_t E = (uint32_t)emb->ne[0];
    k_launch(embed_kernel, dim3(div_up(E, 256), n), 256, 0, st, emb->data, emb->row_bytes, emb->type, E, tokens, hc, X,
             tok_copy, dev_pick);
    return LAUNCH_STATUS();
}

/* ---- mHC ------------------------------------------------------------------------ */

/* One block per row; eight loads per thread in flight (see load_row). */
__global__ void rms_inv_kernel(const float *x, uint32_t n, float eps, float *rinv) {
    pdl_enter();
    __shared__ double red[32];
    const float *r = x + (uint64_t)blockIdx.x * n;
    uint32_t bd = blockDim.x;
    double ss = 0;
    for (uint32_t i0 = threadIdx.x; i0 < n; i0 += 8 * bd) {
        float t[8];
#pragma unroll
        for (int u = 0; u < 8; u++) t[u] = i0 + u * bd < n ? r[i0 + u * bd] : 0.0f;
#pragma unroll
        for (int u = 0; u < 8; u++) ss += (double)t[u] * t[u];
    }
    ss = block_sum_d(ss, red);
    if (threadIdx.x == 0) rinv[blockIdx.x] = (float)(1.0 / sqrt(ss / n + eps));
}

cudaError_t k_rms_inv(cudaStream_t st, const float *x, uint32_t n_rows, uint32_t n, float eps, float *rinv) {
    if (n_rows == 0) return cudaSuccess;
    k_launch(rms_inv_kernel, n_rows, n >= 8192 ? 1024 : 256, 0, st, x, n, eps, rinv);
    return LAUNCH_STATUS();
}

/* One warp per token: pre by the first hc lanes (when asked for), post
 * and comb by mhc_coeffs_warp, every sum in the CPU's order (ds4_mhc_pre's
 * bits). */
__global__ void __launch_bounds__(32) mhc_coeffs_kernel(const float *mix, uint32_t hc, const float *base, const float *scale,
                                                        float eps, uint32_t iters, int head, float *pre, float *post,
                                                        float *comb) {
    pdl_enter();
    __shared__ float c[K_MAX_HC * K_MAX_HC];
    uint32_t t = blockIdx.x, lane = threadIdx.x;
    const float *m = mix + (uint64_t)t * (head ? hc : (2 + hc) * hc);
    if (pre && lane < hc) pre[(uint64_t)t * hc + lane] = mhc_pre_coef(m, scale, base, eps, lane);
    if (!head) mhc_coeffs_warp(m, hc, base, scale, eps, iters, post + (uint64_t)t * hc, comb + (uint64_t)t * hc * hc, c);
}

cudaError_t k_mhc_coeffs(cudaStream_t st, const float *mix, uint32_t n_tok, uint32_t hc, const float *base,
                         const float *scale, float eps, uint32_t iters, int head, float *pre, float *post, float *comb) {
    if (n_tok == 0) return cudaSuccess;
    if (hc > K_MAX_HC) return cudaErrorInvalidValue;
    k_launch(mhc_coeffs_kernel, n_tok, 32, 0, st, mix, hc, base, scale, eps, iters, head, pre, post, comb);
    return LAUNCH_STATUS();
}

__global__ void mhc_collapse_kernel(const float *X, const float *pre, uint32_t hc, uint32_t E, float *y) {
    pdl_enter();
    uint32_t t = blockIdx.y, d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= E) return;
    const float *x = X + (uint64_t)t * hc * E + d;
    const float *p = pre + (uint64_t)t * hc;
    float s = 0.0f;
    for (uint32_t i = 0; i < hc; i++) s += p[i] * x[(uint64_t)i * E];
    y[(uint64_t)t * E + d] = s;
}

cudaError_t k_mhc_collapse(cudaStream_t st, const float *X, const float *pre, uint32_t n_tok, uint32_t hc, uint32_t E,
                           float *y) {
    if (n_tok == 0) return cudaSuccess;
    k_launch(mhc_collapse_kernel, dim3(div_up(E, 256), n_tok), 256, 0, st, X, pre, hc, E, y);
    return LAUNCH_STATUS();
}

/* Columns d .. d + 3 of token t of the mHC post step with HC streams (each
 * column's operations those of mhc_post_at): 16-byte loads and stores. The
 * step's inputs other than the block's output (the streams, post and comb)
 * are loaded first (post4_load), so that a caller can ask for them before
 * it waits for the output. */
template <int HC> struct post4_in {
    float4 in[HC];
    float p[HC], c[HC * HC];
};
template <int HC>
__device__ __forceinline__ void post4_load(const float *X, const float *post, const float *comb, uint32_t E, uint32_t t,
                                           uint32_t d, post4_in<HC> *s) {
    const float *x = X + (uint64_t)t * HC * E + d;
#pragma unroll
    for (int i = 0; i < HC; i++) s->in[i] = *(const float4 *)(x + (uint64_t)i * E);
#pragma unroll
    for (int i = 0; i < HC; i++) s->p[i] = post[(uint64_t)t * HC + i];
#pragma unroll
    for (int i = 0; i < HC * HC; i++) s->c[i] = comb[(uint64_t)t * HC * HC + i];
}
template <int HC>
__device__ __forceinline__ void post4_apply(float *X, float4 ot, const post4_in<HC> &s, uint32_t E, uint32_t t, uint32_t d) {
    float *x = X + (uint64_t)t * HC * E + d;
#pragma unroll
    for (int j = 0; j < HC; j++) {
        float4 o = make_float4(s.p[j] * ot.x, s.p[j] * ot.y, s.p[j] * ot.z, s.p[j] * ot.w);
#pragma unroll
        for (int i = 0; i < HC; i++) {
            float ci = s.c[i * HC + j];
            o.x += ci * s.in[i].x, o.y += ci * s.in[i].y, o.z += ci * s.in[i].z, o.w += ci * s.in[i].w;
        }
        *(float4 *)(x + (uint64_t)j * E) = o;
    }
}
template <int HC>
__device__ __forceinline__ void mhc_post_at4(float *X, float4 ot, const float *post, const float *comb, uint32_t E, uint32_t t,
                                             uint32_t d) {
    post4_in<HC> s;
    post4_load<HC>(X, post, comb, E, t, d, &s);
    post4_apply<HC>(X, ot, s, E, t, d);
}

/* The post steps take 4 columns a thread when the streams are 4 (as in the
 * published models) and every row is 16-byte aligned. */
#define MHC_POST_HC4 4
static bool post_vec4(uint32_t hc, uint32_t E, const void *a, const void *b) {
    return hc == MHC_POST_HC4 && E % 4 == 0 && (uintptr_t)a % 16 == 0 && (uintptr_t)b % 16 == 0;
}

__global__ void mhc_post4_kernel(float *X, const float *o, const float *post, const float *comb, uint32_t E) {
    pdl_enter();
    uint32_t t = blockIdx.y, d = 4 * (blockIdx.x * blockDim.x + threadIdx.x);
    if (d >= E) return;
    mhc_post_at4<MHC_POST_HC4>(X, *(const float4 *)(o + (uint64_t)t * E + d), post, comb, E, t, d);
}

__global__ void mhc_post_kernel(float *X, const float *o, const float *post, const float *comb, uint32_t hc, uint32_t E) {
    pdl_enter();
    uint32_t t = blockIdx.y, d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= E) return;
    mhc_post_at(X, o[(uint64_t)t * E + d], post, comb, hc, E, t, d);
}

cudaError_t k_mhc_post(cudaStream_t st, float *X, const float *o, const float *post, const float *comb, uint32_t n_tok,
                       uint32_t hc, uint32_t E) {
    if (n_tok == 0) return cudaSuccess;
    if (post_vec4(hc, E, X, o)) k_launch(mhc_post4_kernel, dim3(div_up(E / 4, 256), n_tok), 256, 0, st, X, o, post, comb, E);
    else k_launch(mhc_post_kernel, dim3(div_up(E, 256), n_tok), 256, 0, st, X, o, post, comb, hc, E);
    return LAUNCH_STATUS();
}

/* k_moe_combine and k_mhc_post in one launch: the MoE output of a column
 * goes straight into the post step, the same bits as through memory. */
__global__ void mhc_post_moe_kernel(float *X, const float *shared, const float *dx, const int32_t *ids, const float *wts,
                                    const int32_t *pos, uint32_t K, const float *post, const float *comb, uint32_t hc,
                                    uint32_t E) {
    pdl_enter();
    uint32_t t = blockIdx.y, d = blockIdx.x * blockDim.x + threadIdx.x;
    float v;
    if (moe_combine_column(shared, dx, ids, wts, pos, K, E, t, d, &v)) mhc_post_at(X, v, post, comb, hc, E, t, d);
}

/* The streams, post, comb and the shared expert's output do not depend on
 * the order of the token's experts: they are asked for before it is worked
 * out (its barriers), so that one memory latency covers them and the
 * experts' entries. */
__global__ void mhc_post_moe4_kernel(float *X, const float *shared, const float *dx, const int32_t *ids, const float *wts,
                                     const int32_t *pos, uint32_t K, const float *post, const float *comb, uint32_t E) {
    pdl_enter();
    __shared__ float w[K_MAX_USED];
    __shared__ uint32_t row[K_MAX_USED];
    uint32_t t = blockIdx.y, d = 4 * (blockIdx.x * blockDim.x + threadIdx.x);
    post4_in<MHC_POST_HC4> in;
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (d < E) {
        post4_load<MHC_POST_HC4>(X, post, comb, E, t, d, &in);
        acc = *(const float4 *)(shared + (uint64_t)t * E + d);
    }
    moe_combine_order(ids, wts, pos, K, t, w, row);
    if (d >= E) return;
    post4_apply<MHC_POST_HC4>(X, moe_combine_add4(acc, dx, w, row, K, E, d), in, E, t, d);
}

cudaError_t k_mhc_post_moe(cudaStream_t st, float *X, const float *shared, const float *d, const int32_t *ids,
                           const float *wts, const int32_t *grp, uint32_t n_expert, uint32_t k, const float *post,
                           const float *comb, uint32_t n_tok, uint32_t hc, uint32_t E) {
    if (n_tok == 0) return cudaSuccess;
    const int32_t *pos = moe_group_pos(grp, n_expert, n_tok, k);
    if (post_vec4(hc, E, X, shared) && (uintptr_t)d % 16 == 0)
        k_launch(mhc_post_moe4_kernel, dim3(div_up(E / 4, 256), n_tok), 256, 0, st, X, shared, d, ids, wts, pos, k, post, comb, E);
    else
        k_launch(mhc_post_moe_kernel, dim3(div_up(E, 256), n_tok), 256, 0, st, X, shared, d, ids, wts, pos, k, post, comb, hc, E);
    return LAUNCH_STATUS();
}

/* ---- fused mHC steps ------------------------------------------------------------ */

/* Barriers of the finish kernel, by number: barrier 1 is the n threads of
 * warps 1, 2, ... (warp 0 does not wait at it); at barrier 2 those threads
 * wait while warp 0 only arrives (bar.arrive), so that warp 0 can hand over
 * a share of the collapse and go on to its Sinkhorn iterations (n: all the
 * block's threads; multiples of 32). */
__device__ __forceinline__ void bar_rest(uint32_t n) { asm volatile("bar.sync 1, %0;" ::"r"(n) : "memory"); }
__device__ __forceinline__ void bar_all_wait(uint32_t n) { asm volatile("bar.sync 2, %0;" ::"r"(n) : "memory"); }
__device__ __forceinline__ void bar_all_arrive(uint32_t n) { asm volatile("bar.arrive 2, %0;" ::"r"(n) : "memory"); }

/* One block per token. Warp 0 runs the Sinkhorn iterations of the mixing
 * matrix (post and comb, needed only by the later mhc_post) while the other
 * warps, which need only pre, do the collapse y = sum_i pre[i] * X[i] and,
 * with norm_w, y's weighted RMSNorm: the serial Sinkhorn chain no longer
 * holds up the rest of the block at a barrier. A decode step runs one such
 * block on one SM, all of it on the step's critical path: the work every
 * thread needs once (the RMS's sum of the warps' sums, its square root) is
 * done by one warp and shared, and loads are issued before the values they
 * wait for (X before pre, the norm weights before the sum). */
__global__ void __launch_bounds__(1024) mhc_finish_kernel(const float *mix, const float *X, uint32_t hc, uint32_t E, const float *base,
                                  const float *scale, float eps, uint32_t iters, int head, float *pre, float *post,
                                  float *comb, const float *norm_w, float norm_eps, float *y, uint8_t *q8,
                                  uint8_t *q8k) {
    if (gridDim.x == 1) { /* a decode step */
        prefetch_l2(norm_w, (uint64_t)E * sizeof(float));
        prefetch_l2(base, (uint64_t)(head ? hc : (2 + hc) * hc) * sizeof(float));
    }
    pdl_enter();
    extern __shared__ __align__(16) float yv[]; /* E floats */
    __shared__ float spre[K_MAX_HC], c[K_MAX_HC * K_MAX_HC], srms;
    __shared__ double red[32];
    uint32_t t = blockIdx.x, n_mix = head ? hc : (2 + hc) * hc;
    const float *m = mix + (uint64_t)t * n_mix;
    const float *x = X + (uint64_t)t * hc * E;
    float *out = y + (uint64_t)t * E;
    const uint32_t bd = blockDim.x - 32; /* the collapse threads */
    /* the published 4 streams: 16-byte loads, four per thread in flight at
     * once (this collapse is bound by one SM's load latency); G column
     * groups of 4, and warp 0 takes those the collapse threads would reach
     * only in a second round, [bd, bd + 32) */
    const bool vec = hc == 4 && E % 4 == 0 && (uintptr_t)X % 16 == 0;
    const uint32_t G = E / 4;
    const bool warp0_cols = vec && G > bd;
    if (threadIdx.x < 32) {
        if (warp0_cols) {
            uint32_t lane = threadIdx.x, c4 = bd + lane;
            float4 v[4];
            if (c4 < G) load_streams4(x, E, c4, v);
            float pv = lane < 4 ? mhc_pre_coef(m, scale, base, eps, lane) : 0.0f, p[4];
#pragma unroll
            for (int i = 0; i < 4; i++) p[i] = __shfl_sync(0xffffffffu, pv, i);
            if (c4 < G) ((float4 *)yv)[c4] = collapse4(p, v);
            bar_all_arrive(blockDim.x);
        }
        if (!head) mhc_coeffs_warp(m, hc, base, scale, eps, iters, post + (uint64_t)t * hc, comb + (uint64_t)t * hc * hc, c);
        return;
    }
    uint32_t tid = threadIdx.x - 32;
    float4 v0[4];
    if (vec && tid < G) load_streams4(x, E, tid, v0); /* in flight while pre is made */
    if (tid < hc) {
        float v = mhc_pre_coef(m, scale, base, eps, tid);
        spre[tid] = v;
        pre[(uint64_t)t * hc + tid] = v;
    }
    bar_rest(bd);
    if (vec) {
        if (tid < G) ((float4 *)yv)[tid] = collapse4(spre, v0);
        for (uint32_t c4 = tid + bd; c4 < G; c4 += bd) {
            if (warp0_cols && c4 < bd + 32) continue; /* warp 0's */
            float4 v[4];
            load_streams4(x, E, c4, v);
            ((float4 *)yv)[c4] = collapse4(spre, v);
        }
        if (warp0_cols) bar_all_wait(blockDim.x);
        else bar_rest(bd);
    } else {
        for (uint32_t d0 = tid; d0 < E; d0 += 2 * bd) {
            float xs[2][K_MAX_HC];
#pragma unroll
            for (int u = 0; u < 2; u++)
#pragma unroll
                for (uint32_t i = 0; i < K_MAX_HC; i++)
                    if (i < hc && d0 + u * bd < E) xs[u][i] = x[(uint64_t)i * E + d0 + u * bd];
#pragma unroll
            for (int u = 0; u < 2; u++) {
                if (d0 + u * bd >= E) break;
                float acc = 0.0f;
#pragma unroll
                for (uint32_t i = 0; i < K_MAX_HC; i++)
                    if (i < hc) acc += spre[i] * xs[u][i];
                yv[d0 + u * bd] = acc;
            }
        }
        bar_rest(bd);
    }
    /* the norm's output in 16-byte steps where everything is aligned; this
     * thread's first two steps' weights are asked for before the sum */
    const bool vnorm = E % 4 == 0 && ((uintptr_t)out | (uintptr_t)norm_w) % 16 == 0;
    float4 w0 = make_float4(1.0f, 1.0f, 1.0f, 1.0f), w1 = w0;
    if (norm_w && vnorm) {
        if (tid < G) w0 = ((const float4 *)norm_w)[tid];
        if (tid + bd < G) w1 = ((const float4 *)norm_w)[tid + bd];
    }
    float r = 1.0f;
    if (norm_w) {
        /* the RMS in mhc_rms's order (that of the single-token cluster
         * kernel, k_mhc.cu): the collapse threads take the virtual threads
         * in whole warps; one thread adds the 32 warp sums, for all */
        for (uint32_t v = tid; v < MHC_RMS_V; v += bd) {
            double ss = warp_sum_d(mhc_rms_part(yv, E, v));
            if ((tid & 31) == 0) red[v >> 5] = ss;
        }
        bar_rest(bd);
        if (tid == 0) {
            double ss = 0;
            for (uint32_t w = 0; w < MHC_RMS_V / 32; w++) ss += red[w];
            srms = (float)(1.0 / sqrt(ss / E + norm_eps));
        }
        bar_rest(bd);
        r = srms;
    }
    if (vnorm) {
        for (uint32_t c4 = tid; c4 < G; c4 += bd) {
            float4 yy = ((const float4 *)yv)[c4], w = w0;
            if (norm_w && c4 != tid) w = c4 == tid + bd ? w1 : ((const float4 *)norm_w)[c4];
            if (norm_w) {
                yy.x = yy.x * r * w.x;
                yy.y = yy.y * r * w.y;
                yy.z = yy.z * r * w.z;
                yy.w = yy.w * r * w.w;
            }
            ((float4 *)out)[c4] = yy;
            ((float4 *)yv)[c4] = yy;
        }
    } else {
        for (uint32_t d = tid; d < E; d += bd) {
            float o = norm_w ? yv[d] * r * norm_w[d] : yv[d];
            out[d] = o;
            yv[d] = o;
        }
    }
    if (q8 || q8k) bar_rest(bd);
    if (q8) q8_0_row(yv, E, q8 + (uint64_t)t * (E / DS4_QK8_0) * sizeof(ds4_block_q8_0), 1, blockDim.x / 32);
    if (q8k) q8_K_row(yv, E, q8k + (uint64_t)t * (E / DS4_QK_K) * sizeof(ds4_block_q8_K), 1, blockDim.x / 32);
}

cudaError_t k_mhc_finish(cudaStream_t st, const float *mix, const float *X, uint32_t n_tok, uint32_t hc, uint32_t E,
                         const float *base, const float *scale, float eps, uint32_t iters, int head, float *pre,
                         float *post, float *comb, const float *norm_w, float norm_eps, float *y, uint8_t *q8,
                         uint8_t *q8k) {
    if (n_tok == 0) return cudaSuccess;
    size_t smem = (size_t)E * sizeof(float);
    if (hc > K_MAX_HC || smem > 48 * 1024 || (q8 && E % DS4_QK8_0) || (q8k && E % DS4_QK_K))
        return cudaErrorInvalidValue;
    unsigned threads = E >= 4096 ? 1024 : (E >= 2048 ? 512 : 256); /* warp 0 + the collapse threads */
    k_launch(mhc_finish_kernel, n_tok, threads, smem, st, mix, X, hc, E, base, scale, eps, iters, head, pre, post, comb, norm_w,
                                                    norm_eps, y, q8, q8k);
    return LAUNCH_STATUS();
}

DS4_TRACE_EXPORT(k_rows)
