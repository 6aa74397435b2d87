/* The weighted sum of a token's expert outputs, column by column, shared
 * by k_moe_combine and the fused MoE + mHC post step (k_mhc_post_moe), so
 * that both give the same bits. */
#ifndef DS4_BACKENDS_CUDA_MOEFN_CUH
#define DS4_BACKENDS_CUDA_MOEFN_CUH

#include "backends/cuda/common.cuh"
#include "backends/cuda/kernels.cuh"

/* shared[t][d] + sum over t's K experts in ascending id (stable: ties keep
 * slot order) of w * d[pos]; pos: each entry's row of d (the grouping's). */
__device__ __forceinline__ float moe_combine_at(const float *shared, const float *dx, const int32_t *ids,
                                                const float *wts, const int32_t *pos, uint32_t K, uint32_t E, uint32_t t,
                                                uint32_t d) {
    int order[K_MAX_USED];
    for (uint32_t k = 0; k < K; k++) {
        int j = (int)k;
        while (j > 0 && ids[(uint64_t)t * K + order[j - 1]] > ids[(uint64_t)t * K + k]) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = (int)k;
    }
    float acc = shared[(uint64_t)t * E + d];
    for (uint32_t k = 0; k < K; k++) {
        uint64_t entry = (uint64_t)t * K + order[k];
        acc += wts[entry] * dx[(uint64_t)pos[entry] * E + d];
    }
    return acc;
}

/* Where the grouping (k_moe_group) keeps each entry's row of d. */
__host__ __device__ __forceinline__ const int32_t *moe_group_pos(const int32_t *grp, uint32_t n_expert, uint32_t n,
                                                                 uint32_t k) {
    return grp + 1 + 3 * (uint64_t)n_expert + (uint64_t)n * k;
}

#endif
