/* Row transforms and the mHC kernels (compute/mhc.c, compute/ops.c). */
#include "backends/cuda/common.cuh"
#include "backends/cuda/kernels.cuh"
#include "backends/cuda/rowfn.cuh"

/* ---- row transforms ------------------------------------------------------- */

__global__ void rows_kernel(row_op op) {
    extern __shared__ float v[];
    __shared__ double red[32];
    uint32_t row = blockIdx.x;
    float *x = op.x + (uint64_t)row * op.stride;
    load_row(v, x, op.n);
    __syncthreads();
    row_transform(v, op.n, op.norm, op.norm_w, op.eps, op.inv_freq, op.n_pairs, op.pos0 + row / op.rows_per_tok,
                  op.inverse, op.qat, op.n_rot, red);
    for (uint32_t i = threadIdx.x; i < op.n; i += blockDim.x) x[i] = v[i];
}

cudaError_t k_rows(cudaStream_t st, const row_op *op) {
    if (op->n_rows == 0) return cudaSuccess;
    size_t smem = (size_t)op->n * sizeof(float);
    if (smem > 48 * 1024) return cudaErrorInvalidValue; /* rows are at most a few thousand floats */
    unsigned threads = op->n >= 2048 ? 512 : (op->n >= 1024 ? 256 : 128);
    rows_kernel<<<op->n_rows, threads, smem, st>>>(*op);
    return LAUNCH_STATUS();
}

/* ---- embedding ---------------------------------------------------------------- */

__global__ void embed_kernel(const uint8_t *data, uint64_t row_bytes, uint32_t type, uint32_t E, const int32_t *tokens,
                             uint32_t hc, float *X) {
    uint32_t t = blockIdx.y, d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= E) return;
    float v = load_elem(type, data + (uint64_t)tokens[t] * row_bytes, d);
    for (uint32_t i = 0; i < hc; i++) X[((uint64_t)t * hc + i) * E + d] = v;
}

cudaError_t k_embed(cudaStream_t st, const ds4_tensor *emb, const int32_t *tokens, uint32_t n, uint32_t hc, float *X) {
    if (n == 0) return cudaSuccess;
    uint32_t E = (uint32_t)emb->ne[0];
    embed_kernel<<<dim3(div_up(E, 256), n), 256, 0, st>>>(emb->data, emb->row_bytes, emb->type, E, tokens, hc, X);
    return LAUNCH_STATUS();
}

/* ---- mHC ------------------------------------------------------------------------ */

/* One block per row; eight loads per thread in flight (see load_row). */
__global__ void rms_inv_kernel(const float *x, uint32_t n, float eps, float *rinv) {
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
    rms_inv_kernel<<<n_rows, n >= 8192 ? 1024 : 256, 0, st>>>(x, n, eps, rinv);
    return LAUNCH_STATUS();
}

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

/* One block per token, one thread per entry (i, j) of the hc x hc mixing
 * matrix. Every thread of a row (column) adds that row's (column's)
 * entries in the CPU's order, so all agree on the sum and the result is
 * ds4_mhc_pre's to the bit. */
__global__ void mhc_coeffs_kernel(const float *mix, uint32_t hc, const float *base, const float *scale, float eps,
                                  uint32_t iters, int head, float *pre, float *post, float *comb) {
    __shared__ float c[K_MAX_HC * K_MAX_HC];
    uint32_t t = blockIdx.x, tid = threadIdx.x, i = tid / hc, j = tid % hc;
    uint32_t n_mix = head ? hc : (2 + hc) * hc;
    const float *m = mix + (uint64_t)t * n_mix;
    if (tid < hc) pre[(uint64_t)t * hc + tid] = sigmoidf_(m[tid] * scale[0] + base[tid]) + eps;
    if (head) return;
    if (tid < hc) post[(uint64_t)t * hc + tid] = 2.0f * sigmoidf_(m[hc + tid] * scale[1] + base[hc + tid]);
    bool mine = tid < hc * hc;
    if (mine) c[tid] = m[2 * hc + tid] * scale[2] + base[2 * hc + tid];
    __syncthreads();
    float v = 0;
    if (mine) {
        /* row softmax plus eps */
        const float *row = c + i * hc;
        float mx = -INFINITY, sum = 0;
        for (uint32_t k = 0; k < hc; k++)
            if (row[k] > mx) mx = row[k];
        for (uint32_t k = 0; k < hc; k++) sum += expf(row[k] - mx);
        v = expf(row[j] - mx) / sum + eps;
    }
    __syncthreads();
    if (mine) c[tid] = v;
    __syncthreads();
    for (uint32_t it = 0; it < iters; it++) {
        if (it > 0) {
            float s = 0;
            if (mine)
                for (uint32_t k = 0; k < hc; k++) s += c[i * hc + k];
            __syncthreads();
            if (mine) c[tid] /= s + eps;
            __syncthreads();
        }
        float s = 0;
        if (mine)
            for (uint32_t k = 0; k < hc; k++) s += c[k * hc + j];
        __syncthreads();
        if (mine) c[tid] /= s + eps;
        __syncthreads();
    }
    if (mine) comb[(uint64_t)t * hc * hc + tid] = c[tid];
}

cudaError_t k_mhc_coeffs(cudaStream_t st, const float *mix, uint32_t n_tok, uint32_t hc, const float *base,
                         const float *scale, float eps, uint32_t iters, int head, float *pre, float *post, float *comb) {
    if (n_tok == 0) return cudaSuccess;
    unsigned threads = (hc * hc + 31) / 32 * 32;
    mhc_coeffs_kernel<<<n_tok, threads, 0, st>>>(mix, hc, base, scale, eps, iters, head, pre, post, comb);
    return LAUNCH_STATUS();
}

__global__ void mhc_collapse_kernel(const float *X, const float *pre, uint32_t hc, uint32_t E, float *y) {
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
    mhc_collapse_kernel<<<dim3(div_up(E, 256), n_tok), 256, 0, st>>>(X, pre, hc, E, y);
    return LAUNCH_STATUS();
}

__global__ void mhc_post_kernel(float *X, const float *o, const float *post, const float *comb, uint32_t hc, uint32_t E) {
    uint32_t t = blockIdx.y, d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= E) return;
    float *x = X + (uint64_t)t * hc * E + d;
    const float *c = comb + (uint64_t)t * hc * hc, *p = post + (uint64_t)t * hc;
    float ot = o[(uint64_t)t * E + d];
    float in[K_MAX_HC], out[K_MAX_HC];
#pragma unroll
    for (uint32_t i = 0; i < K_MAX_HC; i++)
        if (i < hc) in[i] = x[(uint64_t)i * E];
#pragma unroll
    for (uint32_t j = 0; j < K_MAX_HC; j++) {
        if (j < hc) {
            float s = p[j] * ot;
#pragma unroll
            for (uint32_t i = 0; i < K_MAX_HC; i++)
                if (i < hc) s += c[i * hc + j] * in[i];
            out[j] = s;
        }
    }
#pragma unroll
    for (uint32_t j = 0; j < K_MAX_HC; j++)
        if (j < hc) x[(uint64_t)j * E] = out[j];
}

cudaError_t k_mhc_post(cudaStream_t st, float *X, const float *o, const float *post, const float *comb, uint32_t n_tok,
                       uint32_t hc, uint32_t E) {
    if (n_tok == 0) return cudaSuccess;
    mhc_post_kernel<<<dim3(div_up(E, 256), n_tok), 256, 0, st>>>(X, o, post, comb, hc, E);
    return LAUNCH_STATUS();
}
