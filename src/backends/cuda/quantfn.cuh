/* The Q8_0 activation quantizer (ds4_q8_0_quantize) as warp and block
 * pieces, shared by k_quant.cu's quantizer kernel and the kernels that
 * quantize the row they have just made (a decode step's launch saved), so
 * that both give the same bytes. */
#ifndef DS4_BACKENDS_CUDA_QUANTFN_CUH
#define DS4_BACKENDS_CUDA_QUANTFN_CUH

#include "backends/cuda/common.cuh"

/* blocks.h is C11; its layout checks are C++'s static_assert. */
#define _Static_assert static_assert
extern "C" {
#include "formats/quant/blocks.h"
}
#undef _Static_assert

/* One block of 32 values, lane j holding value j (the whole warp calls
 * it): the lane's quant; *h gets the block's scale as half bits. */
__device__ __forceinline__ int8_t q8_0_lane(float v, uint16_t *h) {
    float amax = warp_max(fabsf(v));
    float d = amax / 127.0f;
    uint16_t hb = __half_as_ushort(__float2half_rn(d));
    if (hb == 0 && d > 0.0f) hb = 1;
    if (hb > 0x7bffu) hb = 0x7bffu;
    float dh = f16_to_f32(hb);
    float id = dh > 0.0f ? 1.0f / dh : 0.0f;
    float q = fminf(fmaxf(v * id, -127.0f), 127.0f);
    *h = hb;
    return (int8_t)__float2int_rn(q);
}

/* The n values of v (n a multiple of 32) as Q8_0 blocks at dst, by the
 * warps first_warp, first_warp + 1, ... n_warps - 1 of the block (whole
 * warps; the others do nothing). */
__device__ __forceinline__ void q8_0_row(const float *v, uint32_t n, uint8_t *dst, uint32_t first_warp, uint32_t n_warps) {
    uint32_t warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (warp < first_warp) return;
    for (uint32_t b = warp - first_warp; b < n / DS4_QK8_0; b += n_warps - first_warp) {
        uint16_t h;
        int8_t q = q8_0_lane(v[b * DS4_QK8_0 + lane], &h);
        ds4_block_q8_0 *blk = (ds4_block_q8_0 *)dst + b;
        blk->qs[lane] = q;
        if (lane == 0) blk->d = h;
    }
}

#endif
