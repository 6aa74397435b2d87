/* The mHC post step of one column, shared by its own kernels (k_rows.cu)
 * and the single-token product that ends in it (k_quant.cu), so that both
 * give the same bits. */
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

#endif
