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

/* The Q8_0 block scale of a block whose largest magnitude is amax, as
 * half bits, and the inverse scale the quants are made with. */
__device__ __forceinline__ uint16_t q8_0_scale(float amax, float *id) {
    float d = amax / 127.0f;
    uint16_t hb = __half_as_ushort(__float2half_rn(d));
    if (hb == 0 && d > 0.0f) hb = 1;
    if (hb > 0x7bffu) hb = 0x7bffu;
    float dh = f16_to_f32(hb);
    *id = dh > 0.0f ? 1.0f / dh : 0.0f;
    return hb;
}
__device__ __forceinline__ int8_t q8_0_quant(float v, float id) {
    return (int8_t)__float2int_rn(fminf(fmaxf(v * id, -127.0f), 127.0f));
}

/* One block of 32 values, lane j holding value j (the whole warp calls
 * it): the lane's quant; *h gets the block's scale as half bits. */
__device__ __forceinline__ int8_t q8_0_lane(float v, uint16_t *h) {
    float id;
    *h = q8_0_scale(warp_max(fabsf(v)), &id);
    return q8_0_quant(v, id);
}

/* The n values of v (n a multiple of 32) as Q8_0 blocks at dst, by the
 * warps first_warp, first_warp + 1, ... n_warps - 1 of the block (whole
 * warps; the others do nothing). A warp takes four blocks at a time, eight
 * lanes a block and four values a lane: a quarter of the instructions of a
 * block a warp (the maximum does not depend on the order it is taken in,
 * so the bytes are q8_0_lane's). */
__device__ __forceinline__ void q8_0_row(const float *v, uint32_t n, uint8_t *dst, uint32_t first_warp, uint32_t n_warps) {
    uint32_t warp = threadIdx.x >> 5, lane = threadIdx.x & 31, part = lane & 7, nb = n / DS4_QK8_0;
    if (warp < first_warp) return;
    for (uint32_t b0 = 4 * (warp - first_warp); b0 < nb; b0 += 4 * (n_warps - first_warp)) {
        uint32_t b = b0 + (lane >> 3);
        bool live = b < nb;
        const float *p = v + b * DS4_QK8_0 + 4 * part;
        float x[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (live && (uintptr_t)p % 16 == 0) {
            float4 q = *(const float4 *)p;
            x[0] = q.x, x[1] = q.y, x[2] = q.z, x[3] = q.w;
        } else if (live) {
#pragma unroll
            for (int k = 0; k < 4; k++) x[k] = p[k];
        }
        float amax = fabsf(x[0]);
#pragma unroll
        for (int k = 1; k < 4; k++) amax = fmaxf(amax, fabsf(x[k]));
#pragma unroll
        for (int o = 4; o >= 1; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        float id;
        uint16_t hb = q8_0_scale(amax, &id);
        if (live) {
            ds4_block_q8_0 *blk = (ds4_block_q8_0 *)dst + b;
            /* qs is 2-byte aligned (34-byte blocks): two 16-bit stores */
            uint32_t q[4];
#pragma unroll
            for (int k = 0; k < 4; k++) q[k] = (uint8_t)q8_0_quant(x[k], id);
            uint16_t *qs = (uint16_t *)(blk->qs + 4 * part);
            qs[0] = (uint16_t)(q[0] | q[1] << 8);
            qs[1] = (uint16_t)(q[2] | q[3] << 8);
            if (part == 0) blk->d = hb;
        }
    }
}

/* One Q8_K block of 256 values (ds4_q8_K_quantize), lane l holding values
 * 8l .. 8l + 7 in v (the whole warp calls it): the block's 256 quants at
 * qs, its 16 sums of 16 at bsums, its scale at *d. */
__device__ __forceinline__ void q8_K_lane(const float *v, int8_t *qs, int16_t *bsums, float *d) {
    uint32_t lane = threadIdx.x & 31;
    float amax = 0.0f;
    for (int i = 0; i < 8; i++) amax = fmaxf(fabsf(v[i]), amax);
    amax = warp_max(amax);
    float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    int s = 0;
    for (int i = 0; i < 8; i++) {
        int q = __float2int_rn(fminf(fmaxf(v[i] * id, -127.0f), 127.0f));
        qs[8 * lane + i] = (int8_t)q;
        s += q;
    }
    /* bsums[k] covers values 16k..16k+15: lanes 2k and 2k+1 */
    s += __shfl_xor_sync(0xffffffffu, s, 1);
    if ((lane & 1) == 0) bsums[lane >> 1] = (int16_t)s;
    if (lane == 0) *d = amax / 127.0f;
}

/* The n values of v (n a multiple of 256) as Q8_K blocks at dst, by warps
 * first_warp .. n_warps - 1 of the block (as q8_0_row). */
__device__ __forceinline__ void q8_K_row(const float *v, uint32_t n, uint8_t *dst, uint32_t first_warp, uint32_t n_warps) {
    uint32_t warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (warp < first_warp) return;
    for (uint32_t b = warp - first_warp; b < n / DS4_QK_K; b += n_warps - first_warp) {
        float x[8];
        for (int i = 0; i < 8; i++) x[i] = v[b * DS4_QK_K + 8 * lane + i];
        ds4_block_q8_K *blk = (ds4_block_q8_K *)dst + b;
        q8_K_lane(x, blk->qs, blk->bsums, &blk->d);
    }
}

#endif
