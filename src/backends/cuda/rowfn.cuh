/* Block-wide transforms of one row held in shared memory: RMSNorm, tail
 * RoPE, and the QAT simulations, with the operations of compute/ops.c in
 * the same order (see common.cuh on --fmad=false). Every thread of the
 * block must call them. */
#ifndef DS4_BACKENDS_CUDA_ROWFN_CUH
#define DS4_BACKENDS_CUDA_ROWFN_CUH

#include "backends/cuda/common.cuh"

/* cos/sin of the RoPE angle of pair j at position pos, as ds4_rope_angles:
 * an fp32 product, then double-precision cos/sin rounded to float. */
__device__ __forceinline__ void rope_cs(const float *inv_freq, uint32_t j, uint64_t pos, float *c, float *s) {
    float a = inv_freq[j] * (float)pos;
    *c = (float)cos((double)a);
    *s = (float)sin((double)a);
}

__device__ __forceinline__ void rope_pair(float *t, float c, float s, int inverse) {
    if (inverse) s = -s;
    float e = t[0], o = t[1];
    t[0] = e * c - o * s;
    t[1] = o * c + e * s;
}

/* v: n floats in shared memory; red: 32 doubles of shared memory. The
 * RMS sum of squares is partitioned over the first rbd threads (a multiple
 * of 32, at most the block): its bits depend on rbd, not on the block size
 * (the other threads add zeros after the rest). */
static __device__ void row_transform(float *v, uint32_t n, int norm, const float *norm_w, float eps, const float *inv_freq,
                              uint32_t n_pairs, uint64_t pos, int inverse, int qat, uint32_t n_rot, double *red,
                              uint32_t rbd) {
    uint32_t tid = threadIdx.x, bd = blockDim.x;
    if (norm) {
        /* the thread's first NW norm weights are asked for before the sum
         * (one load latency for them all, hidden behind the sum) */
        constexpr uint32_t NW = 8;
        float wr[NW];
#pragma unroll
        for (uint32_t k = 0; k < NW; k++) wr[k] = norm_w && tid + k * bd < n ? norm_w[tid + k * bd] : 1.0f;
        double ss = 0;
        for (uint32_t i = tid; tid < rbd && i < n; i += rbd) ss += (double)v[i] * v[i];
        ss = block_sum_d(ss, red);
        float r = (float)(1.0 / sqrt(ss / n + eps));
#pragma unroll
        for (uint32_t k = 0; k < NW; k++) {
            uint32_t i = tid + k * bd;
            if (i < n) v[i] = norm_w ? v[i] * r * wr[k] : v[i] * r;
        }
        for (uint32_t i = tid + NW * bd; i < n; i += bd) v[i] = norm_w ? v[i] * r * norm_w[i] : v[i] * r;
        __syncthreads();
    }
    if (inv_freq && n_pairs) {
        float *t = v + n - 2 * n_pairs;
        for (uint32_t j = tid; j < n_pairs; j += bd) {
            float c, s;
            rope_cs(inv_freq, j, pos, &c, &s);
            rope_pair(t + 2 * j, c, s, inverse);
        }
        __syncthreads();
    }
    if (qat == 1) {
        /* ds4_fp8_sim over the non-RoPE entries: a warp per block of 64,
         * two entries per lane (the block maximum does not depend on the
         * order it is taken in) */
        uint32_t len = n - n_rot, lane = tid & 31;
        for (uint32_t b = (tid >> 5) * 64; b < len; b += (bd >> 5) * 64) {
            uint32_t m = len - b < 64 ? len - b : 64;
            float a = 1e-4f;
            if (lane < m) a = fmaxf(a, fabsf(v[b + lane]));
            if (lane + 32 < m) a = fmaxf(a, fabsf(v[b + lane + 32]));
            float s = pow2_ceil(warp_max(a) / 448.0f);
            if (lane < m) v[b + lane] = e4m3_round(v[b + lane] / s) * s;
            if (lane + 32 < m) v[b + lane + 32] = e4m3_round(v[b + lane + 32] / s) * s;
        }
        __syncthreads();
    } else if (qat == 2) {
        /* ds4_hadamard (n a power of two), then ds4_fp4_sim in blocks of 32 */
        for (uint32_t h = 1; h < n; h *= 2) {
            for (uint32_t p = tid; p < n / 2; p += bd) {
                uint32_t i = (p / h) * 2 * h + p % h;
                float a = v[i], b = v[i + h];
                v[i] = a + b;
                v[i + h] = a - b;
            }
            __syncthreads();
        }
        float sc = (float)(1.0 / sqrt((double)n));
        for (uint32_t i = tid; i < n; i += bd) v[i] *= sc;
        __syncthreads();
        /* a warp per block of 32, a lane per entry */
        uint32_t lane = tid & 31;
        for (uint32_t b = (tid >> 5) * 32; b < n; b += (bd >> 5) * 32) {
            bool in = b + lane < n;
            float a = 6.0f * 0x1p-126f;
            if (in) a = fmaxf(a, fabsf(v[b + lane]));
            float s = pow2_ceil(warp_max(a) / 6.0f);
            if (in) v[b + lane] = e2m1_round(v[b + lane] / s) * s;
        }
        __syncthreads();
    }
}

/* dst[i] = src[i] for i < n, every thread of the block taking part: eight
 * loads per thread are issued before any is used, so a row costs about one
 * memory latency instead of one per element the thread handles. */
static __device__ __forceinline__ void load_row(float *dst, const float *src, uint32_t n) {
    uint32_t bd = blockDim.x;
    for (uint32_t i0 = threadIdx.x; i0 < n; i0 += 8 * bd) {
        float t[8];
#pragma unroll
        for (int u = 0; u < 8; u++) t[u] = i0 + u * bd < n ? src[i0 + u * bd] : 0.0f;
#pragma unroll
        for (int u = 0; u < 8; u++)
            if (i0 + u * bd < n) dst[i0 + u * bd] = t[u];
    }
}

#endif
