/* The mHC pre step of one decode token in one launch: the mixing logits
 * (the split-fp32 tensor-core product of flfn.cuh, the RMS in front), the
 * pre coefficients, the collapse of the streams, the weighted RMSNorm and
 * the activation quantization. Prefill runs the same arithmetic in two
 * launches (k_linear_rms, then k_mhc_finish); a token's bits are the same
 * either way (test_cuda_kernels compares them). The post and comb
 * coefficients (a serial Sinkhorn chain, needed only by the step's mHC
 * post) are left to k_mhc_coeffs (pre == NULL), which the caller runs on
 * a side lane.
 *
 * Why one launch: a decode step runs this twice a layer, and in two
 * launches the second (one block: collapse, RMS, quantization) waits for
 * the first to end and then for its own loads, on one SM. Here a cluster
 * of MP_CL blocks shares the work after the product:
 *
 *  1. Warp w of rank r takes the slices (j * CL + r) * WK + w of the
 *     K = hc * E inputs for all the mixing rows (24: a tile of 16 and the
 *     first half of a second), as k_linear.cu's flmma_one_kernel does for
 *     one tile, on the row times FL_RMS_PRE (the RMS products scale
 *     their outputs). WK is FL_RMS_GROUP: the rank adds the group of slices it
 *     has made (FL_RMS_GROUP's order) and writes the group's totals into
 *     the shared memory of every rank (the pre rows) or of rank 0 (all
 *     rows) before a cluster barrier; likewise the group's sum of squares
 *     for the RMS, which fl_scales adds in the same groups.
 *  2. After it, every rank adds the groups' pre rows in order: all hold
 *     the same pre coefficients. Rank 0's other warps write the mixing
 *     logits for k_mhc_coeffs.
 *  3. Each rank collapses its own columns: chunks of MP_CG float4 groups,
 *     chunk c on rank c % MP_CL, by its first four warps, which are the
 *     virtual warps 4r .. 4r + 3 of the mHC RMS order (mhcfn.cuh). Each
 *     warp's sum of squares goes into every rank's shared memory.
 *  4. Cluster barrier. Every rank adds the 32 warp sums in order, then
 *     normalizes and quantizes its own columns. */
#include "backends/cuda/common.cuh"
#include "backends/cuda/flfn.cuh"
#include "backends/cuda/kernels.cuh"
#include "backends/cuda/mhcfn.cuh"
#include "backends/cuda/quantfn.cuh"

#include <cooperative_groups.h>
#include <stdlib.h>

#define MP_WK FL_RMS_GROUP      /* warps a block: a block's slices of a round are one group */
#define MP_CL 8                 /* blocks in the cluster */
#define MP_ROWS 24              /* mixing rows at most: a 16-row tile and half of a second */
#define MP_CG 128               /* float4 column groups a chunk: the four collapse warps' lanes */
#define MP_CRIT (MP_CG)         /* threads of the collapse (warps 0..3) */
#define MP_MAXG 32              /* slice groups at most (E up to 16384) */
static_assert(MP_CG * MP_CL == MHC_RMS_V, "a rank's collapse warps are the RMS order's virtual warps 4r .. 4r + 3");

typedef struct mhc_one_args {
    const uint8_t *w; /* mixing weights: n_mix rows of K = 4 * E F16 / BF16 values */
    uint64_t row_bytes;
    uint32_t n_mix, E;
    const float *X; /* the token's 4 streams of E values */
    float rms_eps;
    const float *scale, *base;
    float hc_eps;
    float *mix, *pre;
    const float *norm_w;
    float norm_eps;
    float *y;
    uint8_t *q8, *q8k;
} mhc_one_args;

#if __CUDA_ARCH__ >= 900
namespace cg = cooperative_groups;

/* The collapse warps' barrier; the cluster barrier in halves. */
__device__ __forceinline__ void bar_crit() { asm volatile("bar.sync 1, %0;" ::"n"(MP_CRIT) : "memory"); }
__device__ __forceinline__ void cluster_arrive() { asm volatile("barrier.cluster.arrive.release;" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire;" ::: "memory"); }

/* 1 / rms of the row from its groups' sums of squares (fl_scales's). */
__device__ __forceinline__ float mp_scale(const double *gss, uint32_t ng, uint32_t K, float eps) {
    double t = 0;
    for (uint32_t g = 0; g < ng; g++) t += gss[g];
    return (float)(1.0 / sqrt(t / K + eps));
}

/* Mixing logit i from the groups' totals gp[g][i][part], g < ng, and the
 * row's scale (the RMS products' output, k_linear.cu). */
template <int FMT> __device__ __forceinline__ float mp_row(const float *gp, uint32_t ng, uint32_t i, float xs) {
    float T0 = 0.0f, T1 = 0.0f, T2 = 0.0f;
    for (uint32_t g = 0; g < ng; g++) {
        const float *v = gp + (g * MP_ROWS + i) * 3;
        T0 += v[0], T1 += v[1], T2 += v[2];
    }
    return fl_combine<FMT>(T0, T1, T2) * (xs * FL_RMS_POST);
}
#endif

template <int FMT> __global__ void __launch_bounds__(32 * MP_WK) mhc_one_kernel(mhc_one_args p) {
#if __CUDA_ARCH__ < 900
    __trap(); /* never launched there (k_mhc_one checks) */
#else
    extern __shared__ __align__(16) float sm[];
    __shared__ float gp[MP_MAXG * MP_ROWS * 3], spre[4];
    __shared__ double sred[32], gss[MP_MAXG], wss[MP_MAXG / MP_CL][MP_WK];
    const uint32_t warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g8 = lane >> 2, q = lane & 3, tid = threadIdx.x;
    const uint32_t rank = blockIdx.x, E = p.E, K = 4 * E, G = E / 4, hc = 4;
    const uint32_t S = K / FL_SLICE, ng = (S + FL_RMS_GROUP - 1) / FL_RMS_GROUP;
    const uint32_t rounds = (S + MP_WK * MP_CL - 1) / (MP_WK * MP_CL), ntile = (p.n_mix + 15) / 16;
    /* shared memory: slice results [rounds][WK][ROWS][3]; the split
     * activations [rounds * WK * FL_CPS][3][4] uint4; this rank's
     * collapsed columns */
    float *res = sm;
    uint4 *xb = (uint4 *)(sm + rounds * MP_WK * MP_ROWS * 3);
    float *yv = (float *)(xb + rounds * MP_WK * FL_CPS * 12);

    /* the lane's weight rows g8, g8 + 8 and 16 + g8 (the second tile's
     * rows 24..31 do not exist: zeros in the product) */
    const uint8_t *wrow[3];
    bool wlive[3];
#pragma unroll
    for (int h = 0; h < 3; h++) {
        uint32_t r = g8 + 8 * h;
        wlive[h] = r < p.n_mix;
        wrow[h] = p.w + (uint64_t)(wlive[h] ? r : 0) * p.row_bytes;
    }
    uint4 wv[FL_CPS][3];
    auto loadw = [&](uint32_t s) { fl_load_slice<3>(wv, wrow, wlive, s, K, q); };
    uint32_t s0 = rank * MP_WK + warp;
    if (s0 < S) loadw(s0); /* weights only: before the wait */
    if (tid < MP_CRIT && p.norm_w) prefetch_l2(p.norm_w + (uint64_t)rank * MP_CG * 4, MP_CG * 16);
    pdl_enter();

    {
        /* this block's activations (a round's are one group of the RMS,
         * FL_RMS_VPT values a thread: thread = virtual thread), split
         * (times FL_RMS_PRE) into local chunk (j * WK + w) * CPS + cc, and the
         * group's sums of squares by warp (fl_scales's order) */
        static_assert(MP_WK * 32 == FL_RMS_VT && MP_WK * FL_SLICE == FL_RMS_VALS, "a block's round is an RMS group");
        uint16_t *xh = (uint16_t *)xb;
        for (uint32_t j = 0; j < rounds; j++) {
            uint32_t k0 = (j * MP_CL + rank) * FL_RMS_VALS;
            float xv[FL_RMS_VPT];
#pragma unroll
            for (uint32_t i = 0; i < FL_RMS_VPT; i++) {
                uint32_t k = k0 + tid + i * FL_RMS_VT;
                xv[i] = k < K ? __ldg(p.X + k) : 0.0f;
            }
            double ss = 0;
#pragma unroll
            for (uint32_t i = 0; i < FL_RMS_VPT; i++) {
                uint32_t kk = tid + i * FL_RMS_VT, h[3];
                ss += (double)xv[i] * xv[i];
                fl_split<FMT>(xv[i] * FL_RMS_PRE, h);
                uint32_t lc = j * MP_WK * FL_CPS + kk / FL_CHUNK;
#pragma unroll
                for (int c = 0; c < 3; c++) xh[(lc * 3 + c) * FL_CHUNK + kk % FL_CHUNK] = (uint16_t)h[c];
            }
            ss = warp_sum_d(ss);
            if (lane == 0) wss[j][warp] = ss;
        }
    }
    __syncthreads();
    for (uint32_t j = 0; j < rounds; j++) {
        uint32_t s = (j * MP_CL + rank) * MP_WK + warp;
        if (s >= S) break;
        float acc[2][3][4] = {};
#pragma unroll
        for (int cc = 0; cc < FL_CPS; cc++) {
            uint32_t lc = (j * MP_WK + warp) * FL_CPS + cc;
            uint4 b[3];
#pragma unroll
            for (int c = 0; c < 3; c++) b[c] = g8 == 0 ? xb[(lc * 3 + c) * 4 + q] : make_uint4(0, 0, 0, 0);
            fl_chunk<FMT>(acc[0], wv[cc][0], wv[cc][1], b);
            if (ntile > 1) fl_chunk<FMT>(acc[1], wv[cc][2], make_uint4(0, 0, 0, 0), b);
        }
        if (s + MP_WK * MP_CL < S) loadw(s + MP_WK * MP_CL);
        if (q == 0) /* column 0: i = 0 (row g8) and 2 (row g8 + 8) */
#pragma unroll
            for (int t = 0; t < 2; t++)
#pragma unroll
                for (int c = 0; c < 3; c++) {
                    float *o = res + ((j * MP_WK + warp) * MP_ROWS + t * 16 + g8) * 3 + c;
                    o[0] = acc[t][c][0];
                    if (t == 0) o[8 * 3] = acc[t][c][2];
                }
    }
    __syncthreads();
    /* this rank's groups (one a round): 0 + its slices in order, into the
     * pre rows of every rank and the other rows of rank 0 */
    if (tid >= 32 * MP_WK - 32) { /* the last warp: the groups' sums of squares, to every rank */
        uint32_t j = (tid & 31) / MP_CL, r = tid % MP_CL, g = j * MP_CL + rank;
        if (j < rounds && g < ng) {
            double t = 0;
            for (uint32_t w = 0; w < MP_WK; w++) t += wss[j][w];
            cg::this_cluster().map_shared_rank(gss, r)[g] = t;
        }
    }
    if (tid < p.n_mix * 3) {
        uint32_t row = tid / 3, c = tid % 3;
        for (uint32_t j = 0; j < rounds; j++) {
            uint32_t g = j * MP_CL + rank;
            if (g >= ng) break;
            uint32_t n_in = S - g * MP_WK < MP_WK ? S - g * MP_WK : MP_WK;
            float P = 0.0f;
            for (uint32_t w = 0; w < n_in; w++) P += res[((j * MP_WK + w) * MP_ROWS + row) * 3 + c];
            uint32_t idx = (g * MP_ROWS + row) * 3 + c;
            if (row < hc)
                for (uint32_t r = 0; r < MP_CL; r++) cg::this_cluster().map_shared_rank(gp, r)[idx] = P;
            else
                cg::this_cluster().map_shared_rank(gp, 0)[idx] = P;
        }
    }
    /* the collapse's first chunk of streams and norm weights, asked for
     * before the barrier */
    const bool crit = tid < MP_CRIT;
    float4 v0[4], w0 = make_float4(1.0f, 1.0f, 1.0f, 1.0f);
    uint32_t g0 = rank * MP_CG + tid;
    if (crit && g0 < G) {
        load_streams4(p.X, E, g0, v0);
        if (p.norm_w) w0 = ((const float4 *)p.norm_w)[g0];
    }
    cluster_arrive();
    cluster_wait();

    if (!crit) {
        /* rank 0: the mixing logits for the post coefficients */
        uint32_t i = tid - MP_CRIT;
        if (rank == 0 && i < p.n_mix) p.mix[i] = mp_row<FMT>(gp, ng, i, mp_scale(gss, ng, K, p.rms_eps));
        cluster_arrive(); /* the second barrier is the collapse warps' */
        cluster_wait();
        return;
    }
    if (tid < hc) {
        float v = mhc_pre_coef_of(mp_row<FMT>(gp, ng, tid, mp_scale(gss, ng, K, p.rms_eps)), p.scale, p.base, p.hc_eps, tid);
        spre[tid] = v;
        if (rank == 0) p.pre[tid] = v;
    }
    bar_crit();
    /* the collapse of this rank's chunks (chunk c = rank + MP_CL * k at
     * yv[k * MP_CG * 4]) and virtual thread rank * MP_CG + tid's sum of
     * squares: its groups in the RMS order */
    double ss = 0;
    for (uint32_t c = rank, k = 0; c * MP_CG < G; c += MP_CL, k++) {
        uint32_t g = c * MP_CG + tid;
        if (g >= G) continue;
        float4 v[4];
        if (k == 0) {
#pragma unroll
            for (int i = 0; i < 4; i++) v[i] = v0[i];
        } else {
            load_streams4(p.X, E, g, v);
        }
        float4 yy = collapse4(spre, v);
        ((float4 *)yv)[k * MP_CG + tid] = yy;
        ss = mhc_sq4(ss, yy);
    }
    float r = 1.0f;
    if (p.norm_w) {
        ss = warp_sum_d(ss);
        if (lane < MP_CL) cg::this_cluster().map_shared_rank(sred, lane)[rank * 4 + warp] = ss;
    }
    cluster_arrive();
    cluster_wait();
    if (p.norm_w) {
        double t = 0;
#pragma unroll
        for (int w = 0; w < 32; w++) t += sred[w];
        r = (float)(1.0 / sqrt(t / E + p.norm_eps));
    }
    for (uint32_t c = rank, k = 0; c * MP_CG < G; c += MP_CL, k++) {
        uint32_t g = c * MP_CG + tid;
        if (g >= G) continue;
        float4 yy = ((const float4 *)yv)[k * MP_CG + tid];
        if (p.norm_w) {
            float4 w = k == 0 ? w0 : ((const float4 *)p.norm_w)[g];
            yy.x = yy.x * r * w.x;
            yy.y = yy.y * r * w.y;
            yy.z = yy.z * r * w.z;
            yy.w = yy.w * r * w.w;
        }
        ((float4 *)p.y)[g] = yy;
        ((float4 *)yv)[k * MP_CG + tid] = yy;
    }
    if (p.q8 || p.q8k) {
        bar_crit();
        for (uint32_t c = rank, k = 0; c * MP_CG < G; c += MP_CL, k++) {
            uint32_t e0 = c * MP_CG * 4, n = E - e0 < MP_CG * 4 ? E - e0 : MP_CG * 4;
            if (p.q8) q8_0_row(yv + k * MP_CG * 4, n, p.q8 + (uint64_t)(e0 / DS4_QK8_0) * sizeof(ds4_block_q8_0), 0, MP_CRIT / 32);
            if (p.q8k)
                q8_K_row(yv + k * MP_CG * 4, n, p.q8k + (uint64_t)(e0 / DS4_QK_K) * sizeof(ds4_block_q8_K), 0, MP_CRIT / 32);
        }
    }
#endif
}

cudaError_t k_mhc_one(cudaStream_t st, const ds4_tensor *fn, const float *X, uint32_t hc, uint32_t E, float rms_eps,
                      const float *base, const float *scale, float hc_eps, int head, float *mix, float *pre,
                      const float *norm_w, float norm_eps, float *y, uint8_t *q8, uint8_t *q8k) {
    static int off = -1;
    if (off < 0) {
        const char *e = getenv("DS4_CUDA_MHC_ONE");
        off = e && e[0] == '0';
    }
    uint32_t n_mix = head ? hc : (2 + hc) * hc;
    bool fmt_ok = fn->type == GGML_TYPE_F16 || fn->type == GGML_TYPE_BF16;
    uint32_t S = hc * E / FL_SLICE, ng = (S + FL_RMS_GROUP - 1) / FL_RMS_GROUP;
    if (off || !k_flmma_cluster_on() || !fmt_ok || hc != 4 || E % DS4_QK8_0 || ng > MP_MAXG || n_mix > MP_ROWS ||
        fn->ne[0] != (uint64_t)hc * E || fn->ne[1] != n_mix || fn->row_bytes % 16 || (uintptr_t)fn->data % 16 ||
        (uintptr_t)X % 16 || (uintptr_t)y % 16 || (norm_w && (uintptr_t)norm_w % 16) || (q8k && E % DS4_QK_K))
        return cudaErrorNotSupported;
    uint32_t rounds = (S + MP_WK * MP_CL - 1) / (MP_WK * MP_CL), G = E / 4;
    uint32_t chunks = (G + MP_CG - 1) / MP_CG, per_rank = (chunks + MP_CL - 1) / MP_CL;
    size_t smem = ((size_t)rounds * MP_WK * MP_ROWS * 3 + (size_t)rounds * MP_WK * FL_CPS * 48 + (size_t)per_rank * MP_CG * 4) * 4;
    if (smem > 200 * 1024) return cudaErrorNotSupported;
    mhc_one_args a = {(const uint8_t *)fn->data, fn->row_bytes, n_mix, E, X, rms_eps, scale, base, hc_eps, mix, pre, norm_w,
                      norm_eps, y, q8, q8k};
    auto kern = fn->type == GGML_TYPE_F16 ? mhc_one_kernel<1> : mhc_one_kernel<2>;
    if (smem > 47 * 1024) cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    k_launch_cluster(kern, dim3(MP_CL), dim3(32 * MP_WK), smem, st, MP_CL, a);
    return LAUNCH_STATUS();
}

DS4_TRACE_EXPORT(k_mhc)
