/* mHC pieces shared by the kernels that run them, so that all give the
 * same bits: the coefficients of the mixing logits and their Sinkhorn
 * (k_rows.cu's finish, k_mhc.cu's single-token step), the collapse of the
 * streams, and the post step of one column (k_rows.cu and the
 * single-token product that ends in it, k_quant.cu). */
#ifndef DS4_BACKENDS_CUDA_MHCFN_CUH
#define DS4_BACKENDS_CUDA_MHCFN_CUH

#include "backends/cuda/common.cuh"
#include "backends/cuda/kernels.cuh"

/* Column d of token t of the mHC post step, with ot the block's output;
 * hc <= MAXHC (a smaller MAXHC: fewer registers, the same arithmetic). */
template <uint32_t MAXHC = K_MAX_HC>
__device__ __forceinline__ void mhc_post_at(float *X, float ot, const float *post, const float *comb, uint32_t hc,
                                            uint32_t E, uint32_t t, uint32_t d) {
    float *x = X + (uint64_t)t * hc * E + d;
    const float *c = comb + (uint64_t)t * hc * hc, *p = post + (uint64_t)t * hc;
    float in[MAXHC], out[MAXHC];
#pragma unroll
    for (uint32_t i = 0; i < MAXHC; i++)
        if (i < hc) in[i] = x[(uint64_t)i * E];
#pragma unroll
    for (uint32_t j = 0; j < MAXHC; j++) {
        if (j < hc) {
            float s = p[j] * ot;
#pragma unroll
            for (uint32_t i = 0; i < MAXHC; i++)
                if (i < hc) s += c[i * hc + j] * in[i];
            out[j] = s;
        }
    }
#pragma unroll
    for (uint32_t j = 0; j < MAXHC; j++)
        if (j < hc) x[(uint64_t)j * E] = out[j];
}

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

/* ds4_mhc_pre's pre[i] and post[i] from a token's mixing logits m. */
__device__ __forceinline__ float mhc_pre_coef_of(float mi, const float *scale, const float *base, float eps, uint32_t i) {
    return sigmoidf_(mi * scale[0] + base[i]) + eps;
}
__device__ __forceinline__ float mhc_pre_coef(const float *m, const float *scale, const float *base, float eps, uint32_t i) {
    return mhc_pre_coef_of(m[i], scale, base, eps, i);
}
__device__ __forceinline__ float mhc_post_coef(const float *m, uint32_t hc, const float *scale, const float *base, uint32_t i) {
    return 2.0f * sigmoidf_(m[hc + i] * scale[1] + base[hc + i]);
}

/* v / (sum of the HC entries in lanes first, first + step, ... + eps), the
 * sum gathered by shuffles and added in the CPU's order. */
template <int HC> __device__ __forceinline__ float sinkhorn_div(float v, uint32_t first, uint32_t step, float eps) {
    float t[HC], s = 0;
#pragma unroll
    for (int k = 0; k < HC; k++) t[k] = __shfl_sync(0xffffffffu, v, first + k * step);
#pragma unroll
    for (int k = 0; k < HC; k++) s += t[k];
    return v / (s + eps);
}

/* Sinkhorn for a compile-time HC (HC * HC <= 32): lane e < HC*HC holds
 * entry (e / HC, e % HC) in a register; row and column sums gather their
 * HC entries with shuffles and add them in the CPU's order. */
template <int HC>
__device__ __forceinline__ float sinkhorn_lanes(float v, uint32_t lane, float eps, uint32_t iters) {
    const uint32_t i = (lane / HC) % HC, j = lane % HC;
    float row[HC];
#pragma unroll
    for (int k = 0; k < HC; k++) row[k] = __shfl_sync(0xffffffffu, v, i * HC + k);
    float mx = -INFINITY, sum = 0;
#pragma unroll
    for (int k = 0; k < HC; k++)
        if (row[k] > mx) mx = row[k];
#pragma unroll
    for (int k = 0; k < HC; k++) sum += expf(row[k] - mx);
    v = expf(row[j] - mx) / sum + eps;
    for (uint32_t it = 0; it < iters; it++) {
        if (it > 0) v = sinkhorn_div<HC>(v, i * HC, 1, eps); /* rows */
        v = sinkhorn_div<HC>(v, j, HC, eps);                  /* columns */
    }
    return v;
}

/* post and comb (ds4_mhc_pre's arithmetic), by one warp for one token
 * (m: its mixing logits; c: hc*hc floats of shared memory). Entries are
 * spread over the lanes; every sum runs in the CPU's order. Only one warp
 * of a block calls it. */
__device__ __forceinline__ void mhc_coeffs_warp(const float *m, uint32_t hc, const float *base, const float *scale, float eps,
                                                uint32_t iters, float *post, float *comb, float *c) {
    uint32_t lane = threadIdx.x & 31, nn = hc * hc;
    for (uint32_t i = lane; i < hc; i += 32) post[i] = mhc_post_coef(m, hc, scale, base, i);
    if (hc == 4) { /* the published models' 4 streams: all in registers */
        float v = lane < 16 ? m[8 + lane] * scale[2] + base[8 + lane] : 0.0f;
        v = sinkhorn_lanes<4>(v, lane, eps, iters);
        if (lane < 16) comb[lane] = v;
        return;
    }
    for (uint32_t e = lane; e < nn; e += 32) c[e] = m[2 * hc + e] * scale[2] + base[2 * hc + e];
    __syncwarp();
    constexpr int EPL = K_MAX_HC * K_MAX_HC / 32; /* entries per lane at most */
    float v[EPL];
    /* row softmax plus eps */
#pragma unroll
    for (int q = 0; q < EPL; q++) {
        uint32_t e = lane + 32 * q;
        if (e >= nn) break;
        const float *row = c + (e / hc) * hc;
        float mx = -INFINITY, sum = 0;
        for (uint32_t k = 0; k < hc; k++)
            if (row[k] > mx) mx = row[k];
        for (uint32_t k = 0; k < hc; k++) sum += expf(row[k] - mx);
        v[q] = expf(row[e % hc] - mx) / sum + eps;
    }
    __syncwarp();
#pragma unroll
    for (int q = 0; q < EPL; q++)
        if (lane + 32 * q < nn) c[lane + 32 * q] = v[q];
    __syncwarp();
    for (uint32_t it = 0; it < iters; it++) {
        /* rows (from the second iteration on), then columns */
        for (int pass = it > 0 ? 0 : 1; pass < 2; pass++) {
#pragma unroll
            for (int q = 0; q < EPL; q++) {
                uint32_t e = lane + 32 * q;
                if (e >= nn) break;
                uint32_t i = e / hc, j = e % hc;
                float s = 0;
                for (uint32_t k = 0; k < hc; k++) s += pass == 0 ? c[i * hc + k] : c[k * hc + j];
                v[q] = c[e] / (s + eps);
            }
            __syncwarp();
#pragma unroll
            for (int q = 0; q < EPL; q++)
                if (lane + 32 * q < nn) c[lane + 32 * q] = v[q];
            __syncwarp();
        }
    }
    for (uint32_t e = lane; e < nn; e += 32) comb[e] = c[e];
}

/* sum_i p[i] * v[i] over the 4 streams of one float4 column group, added
 * from 0 in stream order (the collapse of ds4_mhc_pre) */
__device__ __forceinline__ float4 collapse4(const float *p, const float4 *v) {
    float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        o.x += p[i] * v[i].x;
        o.y += p[i] * v[i].y;
        o.z += p[i] * v[i].z;
        o.w += p[i] * v[i].w;
    }
    return o;
}
__device__ __forceinline__ void load_streams4(const float *x, uint32_t E, uint32_t c4, float4 *v) {
#pragma unroll
    for (int i = 0; i < 4; i++) v[i] = ((const float4 *)(x + (uint64_t)i * E))[c4];
}

/* The order of the RMS of a collapsed row y of E values, the same in every
 * mHC kernel whatever its shape (the one-block finish, the cluster of
 * k_mhc.cu): the row is cut into float4 groups; virtual thread v (of
 * MHC_RMS_V) adds in double the squares of groups v, v + MHC_RMS_V, ...,
 * each group's four values in order (mhc_sq4); a butterfly (warp_sum_d)
 * over the 32 virtual threads of each virtual warp; the 32 warp sums added
 * in order from zero. */
#define MHC_RMS_V 1024
__device__ __forceinline__ double mhc_sq4(double ss, float4 y) {
    ss += (double)y.x * y.x;
    ss += (double)y.y * y.y;
    ss += (double)y.z * y.z;
    ss += (double)y.w * y.w;
    return ss;
}
/* virtual thread v's part, y anywhere (no alignment needed) */
__device__ __forceinline__ double mhc_rms_part(const float *y, uint32_t E, uint32_t v) {
    double ss = 0;
    for (uint32_t g = v; 4 * g < E; g += MHC_RMS_V)
        for (uint32_t i = 4 * g; i < 4 * g + 4 && i < E; i++) ss += (double)y[i] * y[i];
    return ss;
}

#endif
