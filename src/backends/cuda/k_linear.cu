/* Matrix products against weight tensors (F32, F16, BF16), for dense
 * layers and for the MoE experts.
 *
 * One warp computes one output row for a tile of up to TT tokens: each lane
 * walks its chunks of the row (VEC elements, 16-byte loads) in a fixed order
 * and the lanes are summed by a butterfly. The order depends only on the row
 * length, never on how many tokens are in flight, so prefill, chunked
 * prefill and decode give bit-identical results (like the CPU path). */
#include "backends/cuda/common.cuh"
#include "backends/cuda/kernels.cuh"

#define ROWS_PER_BLOCK 8 /* warps per block, one output row each */

/* Weight chunk loaders: KIND 0 = F32 x4, 1 = F16 x8, 2 = BF16 x8, 3 = any
 * float type one element at a time (rows or activations not 16-byte
 * aligned). */
template <int KIND> struct wl;
template <> struct wl<0> {
    static constexpr int V = 4;
    __device__ static void load(const uint8_t *row, uint32_t c, uint32_t, float *w) {
        float4 v = __ldg((const float4 *)row + c);
        w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
    }
};
template <> struct wl<1> {
    static constexpr int V = 8;
    __device__ static void load(const uint8_t *row, uint32_t c, uint32_t, float *w) {
        uint4 v = __ldg((const uint4 *)row + c);
        uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            w[2 * j] = f16_to_f32((uint16_t)(u[j] & 0xffffu));
            w[2 * j + 1] = f16_to_f32((uint16_t)(u[j] >> 16));
        }
    }
};
template <> struct wl<2> {
    static constexpr int V = 8;
    __device__ static void load(const uint8_t *row, uint32_t c, uint32_t, float *w) {
        uint4 v = __ldg((const uint4 *)row + c);
        uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            w[2 * j] = __uint_as_float(u[j] << 16);
            w[2 * j + 1] = __uint_as_float(u[j] & 0xffff0000u);
        }
    }
};
template <> struct wl<3> {
    static constexpr int V = 1;
    __device__ static void load(const uint8_t *row, uint32_t c, uint32_t type, float *w) { w[0] = load_elem(type, row, c); }
};

template <int V> __device__ __forceinline__ void load_x(const float *x, uint32_t c, float *v) {
    if (V == 1) {
        v[0] = x[c];
    } else {
#pragma unroll
        for (int j = 0; j < V / 4; j++) {
            float4 q = *((const float4 *)x + (uint64_t)c * (V / 4) + j);
            v[4 * j] = q.x, v[4 * j + 1] = q.y, v[4 * j + 2] = q.z, v[4 * j + 3] = q.w;
        }
    }
}

/* acc[tt] = W row . (x[tt] * xs[tt]) for tt < nt, on every lane of the
 * warp, over the chunks [c0, c1) of the row (all of it when c1 == 0). */
template <int KIND, int TT>
__device__ __forceinline__ void dot_tile(const uint8_t *wrow, uint32_t type, uint32_t K, const float *const *xr,
                                         const float *xs, int nt, float *acc, uint32_t c0 = 0, uint32_t c1 = 0) {
    constexpr int V = wl<KIND>::V;
    int lane = threadIdx.x & 31;
#pragma unroll
    for (int tt = 0; tt < TT; tt++) acc[tt] = 0.0f;
    uint32_t nch = c1 ? c1 : K / V;
#pragma unroll 2
    for (uint32_t c = c0 + lane; c < nch; c += 32) {
        float w[V];
        wl<KIND>::load(wrow, c, type, w);
#pragma unroll
        for (int tt = 0; tt < TT; tt++) {
            if (tt < nt) {
                float xv[V];
                load_x<V>(xr[tt], c, xv);
                float s = acc[tt];
                if (xs) {
#pragma unroll
                    for (int j = 0; j < V; j++) s += w[j] * (xv[j] * xs[tt]);
                } else {
#pragma unroll
                    for (int j = 0; j < V; j++) s += w[j] * xv[j];
                }
                acc[tt] = s;
            }
        }
    }
#pragma unroll
    for (int tt = 0; tt < TT; tt++) acc[tt] = warp_sum(acc[tt]);
}

typedef struct lin_args {
    const uint8_t *w;
    uint64_t row_bytes;
    uint32_t type, K;
    uint64_t r0, n_rows, x_group;
    const float *x;
    uint64_t x_stride;
    const float *xscale;
    uint32_t n_tok;
    float *y;
    uint64_t y_stride;
    float rms_eps; /* > 0: xscale[t] = 1/rms(x row t) is computed in the kernel (k_linear_rms) */
} lin_args;

template <int KIND, int TT> __global__ void linear_kernel(lin_args a) {
    uint64_t r = (uint64_t)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (r >= a.n_rows) return; /* whole warps leave; no block barriers here */
    uint32_t g = blockIdx.y;
    const uint8_t *wrow = a.w + (a.r0 + g * a.n_rows + r) * a.row_bytes;
    const float *x = a.x + g * a.x_group;
    float *y = a.y + g * a.n_rows + r;
    int lane = threadIdx.x & 31;
    /* grid z: token tiles (token_tiles), so a prefill chunk spreads over
     * the GPU; a token's operations are the same whichever block takes it */
    for (uint32_t t0 = blockIdx.z * TT; t0 < a.n_tok; t0 += TT * gridDim.z) {
        int nt = a.n_tok - t0 < TT ? (int)(a.n_tok - t0) : TT;
        const float *xr[TT];
        float xs[TT], acc[TT];
#pragma unroll
        for (int tt = 0; tt < TT; tt++) {
            uint32_t t = t0 + (tt < nt ? tt : 0);
            xr[tt] = x + t * a.x_stride;
            xs[tt] = a.xscale ? a.xscale[t] : 1.0f;
        }
        dot_tile<KIND, TT>(wrow, a.type, a.K, xr, a.xscale ? xs : nullptr, nt, acc);
#pragma unroll
        for (int tt = 0; tt < TT; tt++)
            if (tt < nt && lane == tt) y[(uint64_t)(t0 + tt) * a.y_stride] = acc[tt];
    }
}

/* Few rows, long ones (the mHC mixing matrices: 24 rows of 16384): one
 * block per row, its warps on consecutive slices, the slices' sums added in
 * warp order. Chosen from the shape alone, so a token's result still does
 * not depend on the chunk. */
template <int KIND, int TT> __global__ void linear_rowblock_kernel(lin_args a) {
    constexpr int V = wl<KIND>::V;
    __shared__ float part[ROWS_PER_BLOCK][TT];
    __shared__ double red[32];
    uint64_t r = blockIdx.x;
    uint32_t g = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const uint8_t *wrow = a.w + (a.r0 + g * a.n_rows + r) * a.row_bytes;
    const float *x = a.x + g * a.x_group;
    float *y = a.y + g * a.n_rows + r;
    uint32_t nch = a.K / V, per = (nch + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
    uint32_t c0 = warp * per < nch ? warp * per : nch, c1 = c0 + per < nch ? c0 + per : nch;
    /* grid z: token tiles (token_tiles), so a prefill chunk spreads over
     * the GPU; a token's operations are the same whichever block takes it */
    for (uint32_t t0 = blockIdx.z * TT; t0 < a.n_tok; t0 += TT * gridDim.z) {
        int nt = a.n_tok - t0 < TT ? (int)(a.n_tok - t0) : TT;
        const float *xr[TT];
        float xs[TT], acc[TT];
#pragma unroll
        for (int tt = 0; tt < TT; tt++) {
            uint32_t t = t0 + (tt < nt ? tt : 0);
            xr[tt] = x + t * a.x_stride;
            xs[tt] = a.xscale ? a.xscale[t] : 1.0f;
        }
        if (a.rms_eps > 0.0f) {
            /* 1/rms of each token's row, as k_rms_inv computes it, by the block */
            for (int tt = 0; tt < nt; tt++) {
                double ss = 0;
                for (uint32_t i0 = threadIdx.x; i0 < a.K; i0 += 8 * blockDim.x) {
                    float v[8];
#pragma unroll
                    for (int u = 0; u < 8; u++) v[u] = i0 + u * blockDim.x < a.K ? xr[tt][i0 + u * blockDim.x] : 0.0f;
#pragma unroll
                    for (int u = 0; u < 8; u++) ss += (double)v[u] * v[u];
                }
                ss = block_sum_d(ss, red);
                xs[tt] = (float)(1.0 / sqrt(ss / a.K + a.rms_eps));
            }
        }
        bool scaled = a.xscale || a.rms_eps > 0.0f;
        if (c0 < c1) dot_tile<KIND, TT>(wrow, a.type, a.K, xr, scaled ? xs : nullptr, nt, acc, c0, c1);
        else
            for (int tt = 0; tt < TT; tt++) acc[tt] = 0.0f;
        if (lane == 0)
            for (int tt = 0; tt < TT; tt++) part[warp][tt] = acc[tt];
        __syncthreads();
        if (threadIdx.x < (unsigned)nt) {
            float sum = 0.0f;
            for (int w = 0; w < ROWS_PER_BLOCK; w++) sum += part[w][threadIdx.x];
            y[(uint64_t)(t0 + threadIdx.x) * a.y_stride] = sum;
        }
        __syncthreads();
    }
}

/* The vector kind a weight and its activations allow: 16-byte chunks need
 * rows, activations and their strides to stay 16-byte aligned. */
static int pick_kind(uint32_t type, uint64_t K, uint64_t row_bytes, const void *w, const float *x, uint64_t x_stride,
                     uint64_t x_group) {
    int v = type == GGML_TYPE_F32 ? 4 : 8;
    bool ok = K % v == 0 && row_bytes % 16 == 0 && (uintptr_t)w % 16 == 0 && (uintptr_t)x % 16 == 0 && x_stride % 4 == 0 &&
              x_group % 4 == 0;
    if (!ok) return 3;
    return type == GGML_TYPE_F32 ? 0 : (type == GGML_TYPE_F16 ? 1 : 2);
}

/* Grid z of the float products: tiles of 8 tokens (the TT of the
 * multi-token kernels), capped; 1 for a single token. */
static unsigned token_tiles(uint32_t n_tok) {
    unsigned t = div_up(n_tok, 8);
    return n_tok == 1 ? 1 : (t < 4096 ? t : 4096);
}

template <int KIND> static void launch_linear(const lin_args &a, dim3 grid, cudaStream_t st) {
    grid.z = token_tiles(a.n_tok);
    if (a.n_rows <= 512 && a.K >= 4096) {
        dim3 g(a.n_rows, grid.y, grid.z);
        if (a.n_tok == 1) linear_rowblock_kernel<KIND, 1><<<g, 32 * ROWS_PER_BLOCK, 0, st>>>(a);
        else linear_rowblock_kernel<KIND, 8><<<g, 32 * ROWS_PER_BLOCK, 0, st>>>(a);
        return;
    }
    if (a.n_tok == 1) linear_kernel<KIND, 1><<<grid, 32 * ROWS_PER_BLOCK, 0, st>>>(a);
    else linear_kernel<KIND, 8><<<grid, 32 * ROWS_PER_BLOCK, 0, st>>>(a);
}

cudaError_t k_linear(cudaStream_t st, const ds4_tensor *w, uint64_t r0, uint64_t n_rows, uint32_t groups, uint64_t x_group,
                     const float *x, uint64_t x_stride, const float *xscale, uint32_t n_tok, float *y, uint64_t y_stride) {
    if (n_tok == 0 || n_rows == 0) return cudaSuccess;
    lin_args a = {w->data, w->row_bytes, w->type, (uint32_t)w->ne[0], r0, n_rows, x_group, x, x_stride, xscale, n_tok, y, y_stride, 0.0f};
    dim3 grid(div_up(n_rows, ROWS_PER_BLOCK), groups);
    switch (pick_kind(w->type, w->ne[0], w->row_bytes, w->data, x, x_stride, x_group)) {
    case 0: launch_linear<0>(a, grid, st); break;
    case 1: launch_linear<1>(a, grid, st); break;
    case 2: launch_linear<2>(a, grid, st); break;
    default: launch_linear<3>(a, grid, st); break;
    }
    return LAUNCH_STATUS();
}

/* ---- expert feed-forward --------------------------------------------------- */

typedef struct ffn_args {
    const uint8_t *w0, *w1; /* gate and up (k_ffn_up) or down (w0 only) */
    uint64_t row_bytes, rows; /* rows of one expert's matrix */
    uint32_t type, K;
    const int32_t *grp;
    uint32_t n_expert, k, n;
    const float *x; /* rows of K floats */
    float limit;
    float *y; /* rows of `rows` floats */
    uint32_t j0;
    const uint8_t *const *wtab;
} ffn_args;

template <int KIND, int TT, bool UP> __global__ void ffn_kernel(ffn_args a) {
    uint64_t r = (uint64_t)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (r >= a.rows) return;
    uint32_t e, m0, cnt;
    const int32_t *members;
    if (!expert_slot(a, blockIdx.y, &e, &m0, &cnt, &members)) return;
    const uint8_t *w1 = nullptr, *w0 = expert_row<UP>(a, e, r, &w1);
    int lane = threadIdx.x & 31;
    for (uint32_t i0 = 0; i0 < cnt; i0 += TT) {
        int nt = cnt - i0 < TT ? (int)(cnt - i0) : TT;
        const float *xr[TT];
#pragma unroll
        for (int tt = 0; tt < TT; tt++) {
            uint32_t i = m0 + i0 + (tt < nt ? tt : 0);
            /* Up: the token's input row (entry / k); down: this entry's h row. */
            uint32_t src = members && UP ? (uint32_t)members[i] / a.k : i;
            xr[tt] = a.x + (uint64_t)src * a.K;
        }
        float g[TT], u[TT];
        dot_tile<KIND, TT>(w0, a.type, a.K, xr, nullptr, nt, g);
        if (UP) dot_tile<KIND, TT>(w1, a.type, a.K, xr, nullptr, nt, u);
#pragma unroll
        for (int tt = 0; tt < TT; tt++) {
            if (tt < nt && lane == tt) {
                float v = g[tt];
                if (UP) v = swiglu_clamped(v, u[tt], a.limit);
                a.y[(uint64_t)(m0 + i0 + tt) * a.rows + r] = v;
            }
        }
    }
}

template <bool UP> static cudaError_t launch_ffn(cudaStream_t st, const ffn_args &a, const void *xbase, uint32_t slots) {
    dim3 grid(div_up(a.rows, ROWS_PER_BLOCK), slots);
    /* bank slots are 256-byte aligned, like the tensors */
    int kind = pick_kind(a.type, a.K, a.row_bytes, a.w0 ? a.w0 : (const uint8_t *)xbase, (const float *)xbase, a.K, 0);
    if (UP && (uintptr_t)a.w1 % 16) kind = 3;
    bool one = a.grp ? a.n == 1 : a.n == 1; /* one token: one member per slot */
#define FFN_CASE(KD)                                                           \
    case KD:                                                                   \
        if (one) ffn_kernel<KD, 1, UP><<<grid, 32 * ROWS_PER_BLOCK, 0, st>>>(a); \
        else ffn_kernel<KD, 8, UP><<<grid, 32 * ROWS_PER_BLOCK, 0, st>>>(a);     \
        break;
    switch (kind) {
        FFN_CASE(0)
        FFN_CASE(1)
        FFN_CASE(2)
    default:
        if (one) ffn_kernel<3, 1, UP><<<grid, 32 * ROWS_PER_BLOCK, 0, st>>>(a);
        else ffn_kernel<3, 8, UP><<<grid, 32 * ROWS_PER_BLOCK, 0, st>>>(a);
        break;
    }
#undef FFN_CASE
    return LAUNCH_STATUS();
}

cudaError_t k_ffn_up(cudaStream_t st, const ds4_tensor *gate, const ds4_tensor *up, const int32_t *grp, uint32_t k,
                     uint32_t n, uint32_t j0, uint32_t max_slots, const uint8_t *const *wtab, const float *x, float limit,
                     float *h) {
    if (n == 0 || max_slots == 0) return cudaSuccess;
    if (gate->type != up->type || gate->row_bytes != up->row_bytes) return cudaErrorInvalidValue;
    ffn_args a = {gate->data, up->data, gate->row_bytes, gate->ne[1], gate->type, (uint32_t)gate->ne[0], grp,
                  (uint32_t)gate->ne[2], k, n, x, limit, h, j0, wtab};
    return launch_ffn<true>(st, a, x, grp ? max_slots : 1);
}

cudaError_t k_ffn_down(cudaStream_t st, const ds4_tensor *down, const int32_t *grp, uint32_t n, uint32_t j0,
                       uint32_t max_slots, const uint8_t *const *wtab, const float *h, float *out) {
    if (n == 0 || max_slots == 0) return cudaSuccess;
    ffn_args a = {down->data, nullptr, down->row_bytes, down->ne[1], down->type, (uint32_t)down->ne[0], grp,
                  (uint32_t)down->ne[2], 1, n, h, 0.0f, out, j0, wtab};
    return launch_ffn<false>(st, a, h, grp ? max_slots : 1);
}

cudaError_t k_linear_rms(cudaStream_t st, const ds4_tensor *w, const float *x, uint64_t x_stride, uint32_t n_tok, float eps,
                         float *y, uint64_t y_stride) {
    if (n_tok == 0) return cudaSuccess;
    if (!(eps > 0.0f)) return cudaErrorInvalidValue;
    uint64_t n_rows = w->ne[1];
    lin_args a = {w->data, w->row_bytes, w->type, (uint32_t)w->ne[0], 0, n_rows, 0, x, x_stride, NULL, n_tok, y, y_stride,
                  eps};
    dim3 g(n_rows, 1, token_tiles(n_tok));
#define RB(KD)                                                                              \
    case KD:                                                                                \
        if (n_tok == 1) linear_rowblock_kernel<KD, 1><<<g, 32 * ROWS_PER_BLOCK, 0, st>>>(a); \
        else linear_rowblock_kernel<KD, 8><<<g, 32 * ROWS_PER_BLOCK, 0, st>>>(a);           \
        break;
    switch (pick_kind(w->type, w->ne[0], w->row_bytes, w->data, x, x_stride, 0)) {
        RB(0)
        RB(1)
        RB(2)
        RB(3)
    }
#undef RB
    return LAUNCH_STATUS();
}
