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
#include "backends/cuda/flfn.cuh"

#include <cooperative_groups.h>
#include <stdlib.h>

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

/* The input rows of a token tile t0 .. t0 + nt - 1 (the last one again
 * past nt) and their scales (1 without a.xscale). */
template <int TT>
__device__ __forceinline__ void tile_rows(const lin_args &a, const float *x, uint32_t t0, int nt, const float **xr, float *xs) {
#pragma unroll
    for (int tt = 0; tt < TT; tt++) {
        uint32_t t = t0 + (tt < nt ? tt : 0);
        xr[tt] = x + t * a.x_stride;
        xs[tt] = a.xscale ? a.xscale[t] : 1.0f;
    }
}

template <int KIND, int TT> __global__ void linear_kernel(lin_args a) {
    pdl_enter();
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
        tile_rows<TT>(a, x, t0, nt, xr, xs);
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
    pdl_enter();
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
        tile_rows<TT>(a, x, t0, nt, xr, xs);
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

/* Kernel for 2 to 8 tokens and the mHC mixing logits: one block per MT x
 * 16 rows and 8 tokens, its WK warps on the slices in rounds (round j:
 * slice j * WK + w on warp w; each lane splits its token's values); after
 * each round the slice results meet in shared memory and one thread per
 * output adds them, in slice order, to its running totals. */
template <int FMT, int MT, int WK, bool RMS>
__global__ void __launch_bounds__(32 * WK) flmma_slices_kernel(lin_args a) {
    pdl_enter();
    constexpr int NC = 8, TR = 16 * MT; /* token columns, rows */
    static_assert(TR * NC <= 32 * WK, "one thread per output");
    extern __shared__ __align__(16) float fl_sm[]; /* [WK][TR][NC][3] floats */
    __shared__ float sxs[8];
    const uint32_t warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g8 = lane >> 2, q = lane & 3;
    const uint32_t K = a.K, nchunk = (K + FL_CHUNK - 1) / FL_CHUNK, S = (K + FL_SLICE - 1) / FL_SLICE;
    const uint32_t grp = blockIdx.y;
    const float *xg = a.x + grp * a.x_group;
    const uint8_t *wrow[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            uint64_t r = (uint64_t)blockIdx.x * TR + mt * 16 + g8 + 8 * h;
            if (r >= a.n_rows) r = a.n_rows - 1; /* loads stay inside; the output is not kept */
            wrow[mt][h] = a.w + (a.r0 + grp * a.n_rows + r) * a.row_bytes;
        }
    const uint32_t tstep = 8, rounds = (S + WK - 1) / WK;
    uint4 wv[FL_CPS][MT][2];
    auto loadw = [&](uint32_t s) {
#pragma unroll
        for (int cc = 0; cc < FL_CPS; cc++) {
            uint32_t k = (s * FL_CPS + cc) * FL_CHUNK + q * 8;
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int h = 0; h < 2; h++)
                    wv[cc][mt][h] = k < K ? __ldg((const uint4 *)(wrow[mt][h] + (uint64_t)k * 2)) : make_uint4(0, 0, 0, 0);
        }
    };
    for (uint32_t t0 = blockIdx.z * tstep; t0 < a.n_tok; t0 += tstep * gridDim.z) {
        fl_scales<RMS, 8>(a, xg, t0, sxs);
        const bool live = t0 + g8 < a.n_tok, scaled = RMS || a.xscale; /* RMS: FL_RMS_PRE, the scale on the output */
        const float *xr = xg + (uint64_t)(live ? t0 + g8 : t0) * a.x_stride;
        const float xs = RMS ? FL_RMS_PRE : (live ? sxs[g8] : 1.0f);
        float T[3] = {0.0f, 0.0f, 0.0f}; /* this thread's output: running totals of the parts */
        float P[3] = {0.0f, 0.0f, 0.0f}; /* RMS: the current group's (fl_rms_group_end) */
        for (uint32_t j = 0; j < rounds; j++) {
            uint32_t s = j * WK + warp;
            if (s < S) {
                loadw(s);
                float acc[MT][3][4];
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
#pragma unroll
                    for (int p = 0; p < 3; p++)
#pragma unroll
                        for (int i = 0; i < 4; i++) acc[mt][p][i] = 0.0f;
#pragma unroll
                for (int cc = 0; cc < FL_CPS; cc++) {
                    uint32_t c = s * FL_CPS + cc, k = c * FL_CHUNK + q * 8;
                    if (c >= nchunk) break;
                    uint4 b[3];
                    fl_bfrag<FMT>(xr + k, k < K && live, xs, scaled, b);
#pragma unroll
                    for (int mt = 0; mt < MT; mt++) fl_chunk<FMT>(acc[mt], wv[cc][mt][0], wv[cc][mt][1], b);
                }
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
#pragma unroll
                    for (int p = 0; p < 3; p++)
#pragma unroll
                        for (int i = 0; i < 4; i++) {
                            uint32_t rl = mt * 16 + g8 + (i >= 2 ? 8 : 0), tl = 2 * q + (i & 1);
                            fl_sm[(((size_t)warp * TR + rl) * NC + tl) * 3 + p] = acc[mt][p][i];
                        }
            }
            __syncthreads();
            if (threadIdx.x < TR * NC) {
                uint32_t n_in = S - j * WK < WK ? S - j * WK : WK;
#pragma unroll 8
                for (uint32_t w = 0; w < n_in; w++) {
                    bool end = RMS && fl_rms_group_end(j * WK + w, S);
#pragma unroll
                    for (int p = 0; p < 3; p++) {
                        float v = fl_sm[((size_t)w * TR * NC + threadIdx.x) * 3 + p];
                        if (!RMS) {
                            T[p] += v;
                        } else {
                            P[p] += v;
                            if (end) T[p] += P[p], P[p] = 0.0f;
                        }
                    }
                }
            }
            __syncthreads();
        }
        if (threadIdx.x < TR * NC) {
            uint32_t rl = threadIdx.x / NC, tl = threadIdx.x % NC;
            uint64_t r = (uint64_t)blockIdx.x * TR + rl;
            if (r < a.n_rows && t0 + tl < a.n_tok)
                a.y[(uint64_t)(t0 + tl) * a.y_stride + grp * a.n_rows + r] =
                    RMS ? fl_combine<FMT>(T[0], T[1], T[2]) * (sxs[tl] * FL_RMS_POST) : fl_combine<FMT>(T[0], T[1], T[2]);
        }
    }
}

/* Single-token kernel: CL blocks (a thread block cluster, Hopper) share a
 * 16-row tile, so the weights of even a few rows stream through enough
 * SMs; warp w of cluster rank r takes slices (j * CL + r) * WK + w. Each
 * block splits the token's activations of its own slices once into shared
 * memory and keeps every slice result there; after a cluster barrier, rank
 * 0 copies all slice results into its own shared memory (reading the other
 * blocks' through distributed shared memory, all loads in flight at once),
 * adds them in slice order and writes the outputs. The weights of a warp's first slice are requested
 * before the scale and the activations are ready. */
template <int FMT, int WK, int CL, bool RMS>
__global__ void __launch_bounds__(32 * WK) flmma_one_kernel(lin_args a) {
    extern __shared__ __align__(16) float fl_sm[]; /* [rounds][WK][16][3] floats, [nchunk][3][4] uint4, [S][16][3] floats */
    __shared__ float sxs[1];
    const uint32_t warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g8 = lane >> 2, q = lane & 3;
    const uint32_t K = a.K, nchunk = (K + FL_CHUNK - 1) / FL_CHUNK, S = (K + FL_SLICE - 1) / FL_SLICE;
    const uint32_t rounds = (S + WK * CL - 1) / (WK * CL), rank = CL > 1 ? blockIdx.x % CL : 0, tile = blockIdx.x / CL;
    const uint32_t grp = blockIdx.y, t = blockIdx.z;
    const float *xr = a.x + grp * a.x_group + (uint64_t)t * a.x_stride;
    const uint8_t *wrow[2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
        uint64_t r = (uint64_t)tile * 16 + g8 + 8 * h;
        if (r >= a.n_rows) r = a.n_rows - 1; /* loads stay inside; the output is not kept */
        wrow[h] = a.w + (a.r0 + grp * a.n_rows + r) * a.row_bytes;
    }
    uint4 *xb = (uint4 *)(fl_sm + (size_t)rounds * WK * 16 * 3);
    uint4 wv[FL_CPS][2];
    const bool live[2] = {true, true};
    auto loadw = [&](uint32_t s) { fl_load_slice<2>(wv, wrow, live, s, K, q); };
    uint32_t s0 = rank * WK + warp;
    if (s0 < S) loadw(s0); /* weights only: before the wait (see prefetch_l2) */
    pdl_enter();
    lin_args a1 = a;
    a1.x = xr, a1.n_tok = 1, a1.xscale = a.xscale ? a.xscale + t : nullptr;
    fl_scales<RMS, 1>(a1, xr, 0, sxs);
    const bool scaled = RMS || a.xscale; /* RMS: FL_RMS_PRE, the scale on the output */
    const float xs = RMS ? FL_RMS_PRE : sxs[0];
    /* this block's activations: values of its slices, all rounds */
    {
        uint16_t *xh = (uint16_t *)xb;
        uint32_t per = WK * FL_SLICE;
        for (uint32_t j = 0; j < rounds; j++) {
            uint32_t k0 = (j * CL + rank) * per;
#pragma unroll 4
            for (uint32_t k = k0 + threadIdx.x; k < k0 + per && k < nchunk * FL_CHUNK; k += blockDim.x) {
                float v = k < K ? __ldg(xr + k) : 0.0f; /* read-only here: the loads of the unrolled steps go together */
                uint32_t h[3];
                fl_split<FMT>(scaled ? v * xs : v, h);
#pragma unroll
                for (int p = 0; p < 3; p++) xh[((k / FL_CHUNK) * 3 + p) * FL_CHUNK + k % FL_CHUNK] = (uint16_t)h[p];
            }
        }
    }
    __syncthreads();
    for (uint32_t j = 0; j < rounds; j++) {
        uint32_t s = (j * CL + rank) * WK + warp;
        if (s >= S) break;
        float acc[3][4];
#pragma unroll
        for (int p = 0; p < 3; p++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[p][i] = 0.0f;
#pragma unroll
        for (int cc = 0; cc < FL_CPS; cc++) {
            uint32_t c = s * FL_CPS + cc;
            if (c >= nchunk) break;
            uint4 b[3];
#pragma unroll
            for (int p = 0; p < 3; p++) b[p] = g8 == 0 ? xb[(c * 3 + p) * 4 + q] : make_uint4(0, 0, 0, 0);
            fl_chunk<FMT>(acc, wv[cc][0], wv[cc][1], b);
        }
        if (s + WK * CL < S) loadw(s + WK * CL);
        if (q == 0) /* column 0: i = 0 (row g8) and 2 (row g8 + 8) */
#pragma unroll
            for (int p = 0; p < 3; p++) {
                fl_sm[(((size_t)j * WK + warp) * 16 + g8) * 3 + p] = acc[p][0];
                fl_sm[(((size_t)j * WK + warp) * 16 + g8 + 8) * 3 + p] = acc[p][2];
            }
    }
#if __CUDA_ARCH__ >= 900
    namespace cg = cooperative_groups;
    if (CL > 1) cg::this_cluster().sync();
    else __syncthreads();
#else
    __syncthreads();
#endif
    if (rank == 0) { /* block-uniform: the barriers below are the whole block's */
        /* gather every slice result here first (independent loads, remote
         * ones included, all in flight together), then add them in order */
        float *gl = (float *)(xb + (size_t)nchunk * 3 * 4);
        __shared__ float tp[16 * 3];
        constexpr int GU = 4; /* loads in flight per thread */
        for (uint32_t idx0 = threadIdx.x; idx0 < S * 48; idx0 += GU * blockDim.x) {
            float v[GU];
#pragma unroll
            for (int u = 0; u < GU; u++) {
                uint32_t idx = idx0 + u * blockDim.x, sl = idx / 48, e = idx % 48, r = (sl / WK) % CL, j = sl / (WK * CL),
                         w = sl % WK;
                const float *src = fl_sm;
#if __CUDA_ARCH__ >= 900
                if (CL > 1) src = cg::this_cluster().map_shared_rank(fl_sm, r);
#endif
                (void)r;
                v[u] = idx < S * 48 ? src[(j * WK + w) * 48 + e] : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < GU; u++)
                if (idx0 + u * blockDim.x < S * 48) gl[idx0 + u * blockDim.x] = v[u];
        }
        __syncthreads();
        if (threadIdx.x < 48) {
            float T = 0.0f, P = 0.0f;
#pragma unroll 8
            for (uint32_t sl = 0; sl < S; sl++) {
                if (!RMS) {
                    T += gl[sl * 48 + threadIdx.x];
                } else {
                    P += gl[sl * 48 + threadIdx.x];
                    if (fl_rms_group_end(sl, S)) T += P, P = 0.0f;
                }
            }
            tp[threadIdx.x] = T;
        }
        __syncthreads();
        uint64_t row = (uint64_t)tile * 16 + threadIdx.x;
        if (threadIdx.x < 16 && row < a.n_rows)
            a.y[(uint64_t)t * a.y_stride + grp * a.n_rows + row] =
                fl_combine<FMT>(tp[threadIdx.x * 3], tp[threadIdx.x * 3 + 1], tp[threadIdx.x * 3 + 2]) * (RMS ? sxs[0] * FL_RMS_POST : 1.0f);
    }
#if __CUDA_ARCH__ >= 900
    if (CL > 1) cg::this_cluster().sync(); /* the other blocks' shared memory stays until rank 0 has read it */
#endif
}

/* Prefill kernel: a block of 4 warps on 128 rows x 16 tokens, each warp on
 * 32 rows and all of K (slice totals in registers). Per stage of FL_CS
 * chunks the block splits the activations once into shared memory (B
 * fragments in lane order, double-buffered); the weights go from global
 * memory straight into A fragments. The next stage's activations and
 * weights are loaded into registers while this stage multiplies. */
#define FL_CS 2
#define FL_PM 4 /* warps, over rows */
template <int FMT> __global__ void __launch_bounds__(32 * FL_PM) flmma_tile_kernel(lin_args a) {
    pdl_enter();
    constexpr int TR = 32 * FL_PM, TT = 16, NTB = 2, NTHR = 32 * FL_PM, UPT = FL_CS * NTB * 32 / NTHR;
    static_assert(UPT >= 1 && UPT * NTHR == FL_CS * NTB * 32, "staging units per thread");
    extern __shared__ __align__(16) uint4 fl_bs[]; /* [2][FL_CS][NTB][3][32] */
    __shared__ float sxs[TT];
    const uint32_t warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g8 = lane >> 2, q = lane & 3;
    const uint32_t K = a.K, nchunk = (K + FL_CHUNK - 1) / FL_CHUNK, nst = (nchunk + FL_CS - 1) / FL_CS;
    const uint32_t grp = blockIdx.y;
    const float *xg = a.x + grp * a.x_group;
    const uint8_t *wrow[2][2];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            uint64_t r = (uint64_t)blockIdx.x * TR + warp * 32 + mt * 16 + g8 + 8 * h;
            if (r >= a.n_rows) r = a.n_rows - 1;
            wrow[mt][h] = a.w + (a.r0 + grp * a.n_rows + r) * a.row_bytes;
        }
    for (uint32_t t0 = blockIdx.z * TT; t0 < a.n_tok; t0 += TT * gridDim.z) {
        fl_scales<false, TT>(a, xg, t0, sxs);
        const bool scaled = a.xscale != nullptr;
        float xv[UPT][8];
        uint4 wn[FL_CS][2][2], wc[FL_CS][2][2];
        auto load = [&](uint32_t st) {
#pragma unroll
            for (int u = 0; u < UPT; u++) {
                uint32_t id = threadIdx.x + u * NTHR, ul = id & 31, ntb = (id >> 5) % NTB, cc = id / (32 * NTB);
                uint32_t tl = ntb * 8 + (ul >> 2), k = (st * FL_CS + cc) * FL_CHUNK + (ul & 3) * 8;
                bool live = k < K && t0 + tl < a.n_tok;
                const float *xp = xg + (uint64_t)(t0 + tl) * a.x_stride + k;
                if (live) {
                    float4 v0 = __ldg((const float4 *)xp), v1 = __ldg((const float4 *)xp + 1);
                    xv[u][0] = v0.x, xv[u][1] = v0.y, xv[u][2] = v0.z, xv[u][3] = v0.w;
                    xv[u][4] = v1.x, xv[u][5] = v1.y, xv[u][6] = v1.z, xv[u][7] = v1.w;
                } else {
#pragma unroll
                    for (int j = 0; j < 8; j++) xv[u][j] = 0.0f;
                }
            }
#pragma unroll
            for (int cc = 0; cc < FL_CS; cc++) {
                uint32_t k = (st * FL_CS + cc) * FL_CHUNK + q * 8;
#pragma unroll
                for (int mt = 0; mt < 2; mt++)
#pragma unroll
                    for (int h = 0; h < 2; h++)
                        wn[cc][mt][h] = k < K ? __ldg((const uint4 *)(wrow[mt][h] + (uint64_t)k * 2)) : make_uint4(0, 0, 0, 0);
            }
        };
        float tot[2][2][3][4], acc[2][2][3][4];
        float *tf = &tot[0][0][0][0], *af = &acc[0][0][0][0]; /* flat views (constant indices once unrolled) */
#pragma unroll
        for (int e = 0; e < 48; e++) tf[e] = 0.0f, af[e] = 0.0f;
        load(0);
        for (uint32_t st = 0; st < nst; st++) {
            uint4 *buf = fl_bs + (size_t)(st & 1) * FL_CS * NTB * 3 * 32;
#pragma unroll
            for (int u = 0; u < UPT; u++) {
                uint32_t id = threadIdx.x + u * NTHR, ul = id & 31, ntb = (id >> 5) % NTB, cc = id / (32 * NTB);
                float xs = sxs[ntb * 8 + (ul >> 2)];
                uint32_t h[8][3];
#pragma unroll
                for (int j = 0; j < 8; j++) fl_split<FMT>(scaled ? xv[u][j] * xs : xv[u][j], h[j]);
#pragma unroll
                for (int p = 0; p < 3; p++)
                    buf[((cc * NTB + ntb) * 3 + p) * 32 + ul] =
                        make_uint4(h[0][p] | h[1][p] << 16, h[2][p] | h[3][p] << 16, h[4][p] | h[5][p] << 16,
                                   h[6][p] | h[7][p] << 16);
            }
#pragma unroll
            for (int cc = 0; cc < FL_CS; cc++)
#pragma unroll
                for (int mt = 0; mt < 2; mt++)
#pragma unroll
                    for (int h = 0; h < 2; h++) wc[cc][mt][h] = wn[cc][mt][h];
            __syncthreads();
            if (st + 1 < nst) load(st + 1);
#pragma unroll
            for (int cc = 0; cc < FL_CS; cc++) {
                uint32_t c = st * FL_CS + cc;
                if (c >= nchunk) break;
#pragma unroll
                for (int nt = 0; nt < 2; nt++) {
                    uint4 b[3];
#pragma unroll
                    for (int p = 0; p < 3; p++) b[p] = buf[((cc * NTB + nt) * 3 + p) * 32 + lane];
#pragma unroll
                    for (int mt = 0; mt < 2; mt++) fl_chunk<FMT>(acc[mt][nt], wc[cc][mt][0], wc[cc][mt][1], b);
                }
                if ((c + 1) % FL_CPS == 0 || c + 1 == nchunk) /* end of a slice */
#pragma unroll
                    for (int e = 0; e < 48; e++) tf[e] += af[e], af[e] = 0.0f;
            }
        }
#pragma unroll
        for (int mt = 0; mt < 2; mt++)
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    uint64_t r = (uint64_t)blockIdx.x * TR + warp * 32 + mt * 16 + g8 + (i >= 2 ? 8 : 0);
                    uint32_t t = t0 + nt * 8 + 2 * q + (i & 1);
                    if (r < a.n_rows && t < a.n_tok)
                        a.y[(uint64_t)t * a.y_stride + grp * a.n_rows + r] =
                            fl_combine<FMT>(tot[mt][nt][0][i], tot[mt][nt][1][i], tot[mt][nt][2][i]);
                }
        __syncthreads(); /* sxs and the buffers are reused by the next tile */
    }
}

/* Whether F16 / BF16 products take the tensor cores: code built for sm_80
 * or newer (k_code_arch) and DS4_CUDA_NO_FLMMA unset (then the fp32 kernels
 * above run; the kernel test compares both); k_linear_set_plain overrides
 * (tests). Clusters need code built for sm_90. */
static int fl_plain = -1, fl_arch = -1; /* fl_arch: k_code_arch(), once known */
void k_linear_set_plain(int plain) { fl_plain = plain; }
static bool flmma_on(void) {
    static int env = 0;
    if (fl_arch < 0) {
        env = getenv("DS4_CUDA_NO_FLMMA") != NULL;
        fl_arch = k_code_arch();
    }
    return fl_arch >= 800 && !(fl_plain >= 0 ? fl_plain : env);
}

bool k_flmma_cluster_on(void) { return flmma_on() && fl_arch >= 900; }

template <class Kern> static void fl_go(Kern kern, dim3 grid, unsigned threads, size_t smem, cudaStream_t st, const lin_args &a) {
    /* with the static shared memory (under 1 KiB) above 48 KiB: opt in */
    if (smem > 47 * 1024) cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    k_launch(kern, grid, threads, smem, st, a);
}

template <int FMT, int MT, int WK, bool RMS> static void fl_slices(const lin_args &a, uint32_t groups, cudaStream_t st) {
    unsigned tiles = div_up(a.n_tok, 8);
    size_t smem = (size_t)WK * MT * 16 * 8 * 3 * sizeof(float);
    dim3 grid(div_up(a.n_rows, MT * 16), groups, tiles < 4096 ? tiles : 4096);
    fl_go(flmma_slices_kernel<FMT, MT, WK, RMS>, grid, 32 * WK, smem, st, a);
}

template <int FMT, int WK, int CL, bool RMS> static void fl_one(const lin_args &a, uint32_t groups, cudaStream_t st) {
    if (CL > 1 && fl_arch < 900) {
        fl_one<FMT, WK, 1, RMS>(a, groups, st);
        return;
    }
    uint32_t S = (a.K + FL_SLICE - 1) / FL_SLICE, nchunk = (a.K + FL_CHUNK - 1) / FL_CHUNK;
    uint32_t rounds = (S + WK * CL - 1) / (WK * CL);
    size_t smem = (size_t)rounds * WK * 16 * 3 * sizeof(float) + (size_t)nchunk * 3 * 4 * 16 + (size_t)S * 48 * sizeof(float);
    auto kern = flmma_one_kernel<FMT, WK, CL, RMS>;
    if (smem > 47 * 1024) cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    k_launch_cluster(kern, dim3(div_up(a.n_rows, 16) * CL, groups, a.n_tok), 32 * WK, smem, st, CL, a);
}

/* The shape of the launch; only speed depends on it (see above). Up to 8
 * tokens, and the mHC mixing logits (the RMS in front; few rows of long
 * K) at any count: the slices spread over the warps of a block (one token:
 * split once per block; several: 32 rows per block, so the activations are
 * read once); otherwise 128 x 16 tiles. */
template <int FMT, bool RMS> static void fl_dispatch(const lin_args &a, uint32_t groups, cudaStream_t st) {
    uint32_t S = (a.K + FL_SLICE - 1) / FL_SLICE;
    /* without clusters one block would hold a long row's every slice (the
     * mHC logits' 16384 values: 147 KB, past an RTX card's 99 KB): the
     * slices kernel instead */
    if (a.n_tok == 1 && (S <= 16 || fl_arch >= 900)) {
        /* 8 or 16 warps a block; clusters of up to 8 blocks for long rows */
        if (S <= 8) fl_one<FMT, 8, 1, RMS>(a, groups, st);
        else if (S <= 16) fl_one<FMT, 8, 2, RMS>(a, groups, st);
        else if (S <= 32) fl_one<FMT, 8, 4, RMS>(a, groups, st);
        else if (S <= 64) fl_one<FMT, 8, 8, RMS>(a, groups, st);
        else fl_one<FMT, 16, 8, RMS>(a, groups, st);
        return;
    }
    if (RMS || a.n_tok <= 8) {
        if (S <= 4) fl_slices<FMT, 1, 4, RMS>(a, groups, st);
        else if (S <= 8) fl_slices<FMT, 2, 8, RMS>(a, groups, st);
        else fl_slices<FMT, 2, 16, RMS>(a, groups, st);
        return;
    }
    unsigned tiles = div_up(a.n_tok, 16);
    dim3 grid(div_up(a.n_rows, 32 * FL_PM), groups, tiles < 4096 ? tiles : 4096);
    fl_go(flmma_tile_kernel<FMT>, grid, 32 * FL_PM, (size_t)2 * FL_CS * 2 * 3 * 32 * sizeof(uint4), st, a);
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
        if (a.n_tok == 1) k_launch(linear_rowblock_kernel<KIND, 1>, g, 32 * ROWS_PER_BLOCK, 0, st, a);
        else k_launch(linear_rowblock_kernel<KIND, 8>, g, 32 * ROWS_PER_BLOCK, 0, st, a);
        return;
    }
    if (a.n_tok == 1) k_launch(linear_kernel<KIND, 1>, grid, 32 * ROWS_PER_BLOCK, 0, st, a);
    else k_launch(linear_kernel<KIND, 8>, grid, 32 * ROWS_PER_BLOCK, 0, st, a);
}

cudaError_t k_linear(cudaStream_t st, const ds4_tensor *w, uint64_t r0, uint64_t n_rows, uint32_t groups, uint64_t x_group,
                     const float *x, uint64_t x_stride, const float *xscale, uint32_t n_tok, float *y, uint64_t y_stride) {
    if (n_tok == 0 || n_rows == 0) return cudaSuccess;
    lin_args a = {w->data, w->row_bytes, w->type, (uint32_t)w->ne[0], r0, n_rows, x_group, x, x_stride, xscale, n_tok, y, y_stride, 0.0f};
    dim3 grid(div_up(n_rows, ROWS_PER_BLOCK), groups);
    int kind = pick_kind(w->type, w->ne[0], w->row_bytes, w->data, x, x_stride, x_group);
    if ((kind == 1 || kind == 2) && flmma_on()) {
        if (kind == 1) fl_dispatch<1, false>(a, groups, st);
        else fl_dispatch<2, false>(a, groups, st);
        return LAUNCH_STATUS();
    }
    switch (kind) {
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
    pdl_enter();
    expert_warp_rows<TT, UP, ROWS_PER_BLOCK>(
        a, [&](const uint8_t *w0, const uint8_t *w1, const int32_t *members, uint32_t m, int nt, float *g, float *u) {
            const float *xr[TT];
#pragma unroll
            for (int tt = 0; tt < TT; tt++) {
                uint32_t i = m + (tt < nt ? tt : 0);
                /* Up: the token's input row (entry / k); down: this entry's h row. */
                uint32_t src = members && UP ? (uint32_t)members[i] / a.k : i;
                xr[tt] = a.x + (uint64_t)src * a.K;
            }
            dot_tile<KIND, TT>(w0, a.type, a.K, xr, nullptr, nt, g);
            if (UP) dot_tile<KIND, TT>(w1, a.type, a.K, xr, nullptr, nt, u);
        });
}

template <bool UP> static cudaError_t launch_ffn(cudaStream_t st, const ffn_args &a, const void *xbase, uint32_t slots) {
    dim3 grid(div_up(a.rows, ROWS_PER_BLOCK), slots);
    /* bank slots are 256-byte aligned, like the tensors */
    int kind = pick_kind(a.type, a.K, a.row_bytes, a.w0 ? a.w0 : (const uint8_t *)xbase, (const float *)xbase, a.K, 0);
    if (UP && (uintptr_t)a.w1 % 16) kind = 3;
    bool one = a.n == 1; /* one token: one member per slot */
#define FFN_CASE(KD)                                                           \
    case KD:                                                                   \
        if (one) k_launch(ffn_kernel<KD, 1, UP>, grid, 32 * ROWS_PER_BLOCK, 0, st, a); \
        else k_launch(ffn_kernel<KD, 8, UP>, grid, 32 * ROWS_PER_BLOCK, 0, st, a);     \
        break;
    switch (kind) {
        FFN_CASE(0)
        FFN_CASE(1)
        FFN_CASE(2)
    default:
        if (one) k_launch(ffn_kernel<3, 1, UP>, grid, 32 * ROWS_PER_BLOCK, 0, st, a);
        else k_launch(ffn_kernel<3, 8, UP>, grid, 32 * ROWS_PER_BLOCK, 0, st, a);
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
    int kind = pick_kind(w->type, w->ne[0], w->row_bytes, w->data, x, x_stride, 0);
    if ((kind == 1 || kind == 2) && flmma_on()) {
        if (kind == 1) fl_dispatch<1, true>(a, 1, st);
        else fl_dispatch<2, true>(a, 1, st);
        return LAUNCH_STATUS();
    }
    dim3 g(n_rows, 1, token_tiles(n_tok));
#define RB(KD)                                                                              \
    case KD:                                                                                \
        if (n_tok == 1) k_launch(linear_rowblock_kernel<KD, 1>, g, 32 * ROWS_PER_BLOCK, 0, st, a); \
        else k_launch(linear_rowblock_kernel<KD, 8>, g, 32 * ROWS_PER_BLOCK, 0, st, a);           \
        break;
    switch (kind) {
        RB(0)
        RB(1)
        RB(2)
        RB(3)
    }
#undef RB
    return LAUNCH_STATUS();
}

DS4_TRACE_EXPORT(k_linear)
