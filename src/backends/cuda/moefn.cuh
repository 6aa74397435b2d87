/* The weighted sum of a token's expert outputs, column by column, shared
 * by k_moe_combine and the fused MoE + mHC post step (k_mhc_post_moe), so
 * that both give the same bits. */
#ifndef DS4_BACKENDS_CUDA_MOEFN_CUH
#define DS4_BACKENDS_CUDA_MOEFN_CUH

#include "backends/cuda/common.cuh"
#include "backends/cuda/kernels.cuh"

/* The combine of token t: its K expert entries in ascending id (stable:
 * ties keep slot order), as weights w[] and rows row[] of d (pos: each
 * entry's row, the grouping's), in shared memory for all the block's
 * columns. The first K threads fetch the entries together and one thread
 * sorts them there (sorting from global memory had been a chain of
 * dependent loads per block). Every thread of the block must call it. */
__device__ __forceinline__ void moe_combine_order(const int32_t *ids, const float *wts, const int32_t *pos, uint32_t K,
                                                  uint32_t t, float *w, uint32_t *row) {
    __shared__ int32_t sid[K_MAX_USED];
    __shared__ float sw[K_MAX_USED];
    __shared__ uint32_t srow[K_MAX_USED];
    if (threadIdx.x < K) {
        uint64_t entry = (uint64_t)t * K + threadIdx.x;
        sid[threadIdx.x] = ids[entry];
        sw[threadIdx.x] = wts[entry];
        srow[threadIdx.x] = (uint32_t)pos[entry];
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int order[K_MAX_USED];
        for (uint32_t k = 0; k < K; k++) {
            int j = (int)k;
            while (j > 0 && sid[order[j - 1]] > sid[k]) {
                order[j] = order[j - 1];
                j--;
            }
            order[j] = (int)k;
        }
        for (uint32_t k = 0; k < K; k++) {
            w[k] = sw[order[k]];
            row[k] = srow[order[k]];
        }
    }
    __syncthreads();
}

/* shared[t][d] + the sum, in that order, of w * d[row][d]. */
__device__ __forceinline__ float moe_combine_sum(const float *shared, const float *dx, const float *w, const uint32_t *row,
                                                 uint32_t K, uint32_t E, uint32_t t, uint32_t d) {
    float acc = shared[(uint64_t)t * E + d];
    for (uint32_t k = 0; k < K; k++) acc += w[k] * dx[(uint64_t)row[k] * E + d];
    return acc;
}

/* moe_combine_sum of columns d .. d + 3 (16-byte aligned), each column's
 * operations the same, from acc = the shared expert's columns. */
__device__ __forceinline__ float4 moe_combine_add4(float4 acc, const float *dx, const float *w, const uint32_t *row, uint32_t K,
                                                   uint32_t E, uint32_t d) {
    for (uint32_t k = 0; k < K; k++) {
        float4 v = *(const float4 *)(dx + (uint64_t)row[k] * E + d);
        acc.x += w[k] * v.x, acc.y += w[k] * v.y, acc.z += w[k] * v.z, acc.w += w[k] * v.w;
    }
    return acc;
}
__device__ __forceinline__ float4 moe_combine_sum4(const float *shared, const float *dx, const float *w, const uint32_t *row,
                                                   uint32_t K, uint32_t E, uint32_t t, uint32_t d) {
    return moe_combine_add4(*(const float4 *)(shared + (uint64_t)t * E + d), dx, w, row, K, E, d);
}

/* Column d of token t's combine into *v (V float), or columns d .. d + 3
 * (V float4, 16-byte aligned rows); false where d is past the row. The
 * order of t's experts is worked out once per block, into shared memory,
 * so every thread of the block must call it. */
template <typename V>
__device__ __forceinline__ bool moe_combine_column(const float *shared, const float *dx, const int32_t *ids, const float *wts,
                                                   const int32_t *pos, uint32_t K, uint32_t E, uint32_t t, uint32_t d, V *v) {
    __shared__ float w[K_MAX_USED];
    __shared__ uint32_t row[K_MAX_USED];
    moe_combine_order(ids, wts, pos, K, t, w, row);
    if (d >= E) return false;
    if constexpr (sizeof(V) == sizeof(float4)) *v = moe_combine_sum4(shared, dx, w, row, K, E, t, d);
    else *v = moe_combine_sum(shared, dx, w, row, K, E, t, d);
    return true;
}

/* Where the grouping (k_moe_group) keeps each entry's row of d. */
__host__ __device__ __forceinline__ const int32_t *moe_group_pos(const int32_t *grp, uint32_t n_expert, uint32_t n,
                                                                 uint32_t k) {
    return grp + 1 + 3 * (uint64_t)n_expert + (uint64_t)n * k;
}

#endif
