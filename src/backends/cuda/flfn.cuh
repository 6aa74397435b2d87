/* The split-fp32 tensor-core arithmetic of the F16 / BF16 products (see
 * below), shared by k_linear.cu's kernels and the single-token mHC step
 * (k_mhc.cu), so that both give the same bits. */
#ifndef DS4_BACKENDS_CUDA_FLFN_CUH
#define DS4_BACKENDS_CUDA_FLFN_CUH

#include "backends/cuda/common.cuh"

/* Whether the tensor-core products run (k_linear.cu: compute capability 8.0+,
 * DS4_CUDA_NO_FLMMA unset) on a GPU with thread block clusters (9.0+). */
bool k_flmma_cluster_on(void);

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

/* ---- tensor-core products for F16 and BF16 weights ----------------------------
 *
 * mma.sync m16n8k16 (16-bit inputs, fp32 accumulate), with the fp32
 * activations split into three 16-bit parts of the weight's format, so the
 * weight is used as stored and the activation keeps fp32 precision:
 *   BF16: p0 = bf16(v), p1 = bf16(v - p0), p2 = bf16(v - p0 - p1)
 *         (8 + 8 + 8 significant bits: v = p0 + p1 + p2 exactly);
 *   F16:  p0 = f16(v * 2^-16), p1 = f16(v - p0 * 2^16),
 *         p2 = f16((v - p0 * 2^16 - p1) * 2^11)
 *         (the scales move the parts into f16's exponent range with no
 *         per-token scale to find first; every subtraction is exact:
 *         |v| in [2^-12, 2^27) keeps at least 22 significant bits, smaller
 *         values an absolute error of at most 2^-36; from |v| = 2^27
 *         (1.3e8) p1 overflows, which no activation of this model comes
 *         near).
 * Two parts (hi, lo) would keep only 16 bits for BF16 and would need a
 * per-token scale for F16's range. Each part has its own fp32 accumulator
 * chain, and y = (T2 * s2 + T1) + T0 * s0 (s = 2^-11, 1, 2^16 for F16; 1
 * for BF16).
 *
 * Fixed order, whatever the number of tokens: K is cut into slices of
 * FL_SLICE values; a slice is summed from zero by one mma chain per part,
 * chunk by chunk (32 values, two mma k-steps) in ascending order, and a
 * part's total is 0 + slice 0 + slice 1 + ... in ascending order (in
 * registers when one warp walks all slices, from shared memory when the
 * slices are spread over warps or over the blocks of a cluster). Inside a
 * chunk the k positions map to the mma's k lanes in one fixed permutation
 * (quad q of a warp loads values 8q..8q+7 of its rows as one 16-byte load;
 * k-step s takes 8q+4s..8q+4s+3 as k = 2q, 2q+1, 2q+8, 2q+9), used by all
 * three kernels (one token; 2 to 8 tokens and the mHC logits; prefill
 * tiles). The mHC mixing logits (the products with the RMS in front) add
 * their slices in groups of FL_RMS_GROUP instead: a group's total is 0 +
 * its slices in order, a part's total 0 + the groups' totals in order, so
 * that the blocks of a cluster can each add their own group before they
 * meet (k_mhc.cu). A token is one
 * column of an n = 8 tile; its outputs come from the same operands and the
 * same accumulator chains in a decode launch and in a prefill tile, and the
 * mma's result for a column does not depend on the other columns, so they
 * are the same bits (test_cuda_kernels checks single tokens against
 * batches, and the logits across chunkings). */

#define FL_CHUNK 32 /* k values per load step (two mma k-steps) */
#define FL_SLICE 128 /* k values per slice: 4 chunks */
#define FL_CPS (FL_SLICE / FL_CHUNK)
#define FL_RMS_GROUP 16 /* slices a group of the RMS products */

/* Whether slice sl (of S) is the last of its group. */
__device__ __forceinline__ bool fl_rms_group_end(uint32_t sl, uint32_t S) {
    return (sl + 1) % FL_RMS_GROUP == 0 || sl + 1 == S;
}

/* Round to nearest even fp32 -> bf16 bits (finite inputs). */
__device__ __forceinline__ uint32_t fl_bf16_bits(float v) {
    uint32_t u = __float_as_uint(v);
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

/* The three parts of v as 16-bit patterns of format FMT (1 F16, 2 BF16). */
template <int FMT> __device__ __forceinline__ void fl_split(float v, uint32_t *h) {
    if (FMT == 2) {
        h[0] = fl_bf16_bits(v);
        float r = v - __uint_as_float(h[0] << 16);
        h[1] = fl_bf16_bits(r);
        float r2 = r - __uint_as_float(h[1] << 16);
        h[2] = fl_bf16_bits(r2);
    } else {
        __half h0 = __float2half_rn(v * 0x1p-16f);
        float r = v - __half2float(h0) * 0x1p16f;
        __half h1 = __float2half_rn(r);
        float r2 = r - __half2float(h1);
        __half h2 = __float2half_rn(r2 * 0x1p11f);
        h[0] = __half_as_ushort(h0), h[1] = __half_as_ushort(h1), h[2] = __half_as_ushort(h2);
    }
}

template <int FMT> __device__ __forceinline__ float fl_combine(float t0, float t1, float t2) {
    if (FMT == 2) return (t2 + t1) + t0;
    return (t2 * 0x1p-11f + t1) + t0 * 0x1p16f;
}

/* B fragments of one lane for the two k-steps of a chunk, per part: the
 * lane's 8 activation values (its token's, zero when !live), scaled by xs
 * first when scaled (the CPU's x * scale), split; b[p] = {step 0 b0, b1,
 * step 1 b0, b1}. */
template <int FMT>
__device__ __forceinline__ void fl_bfrag(const float *xp, bool live, float xs, bool scaled, uint4 *b) {
    float v[8];
    if (live) {
        float4 v0 = __ldg((const float4 *)xp), v1 = __ldg((const float4 *)xp + 1);
        v[0] = v0.x, v[1] = v0.y, v[2] = v0.z, v[3] = v0.w, v[4] = v1.x, v[5] = v1.y, v[6] = v1.z, v[7] = v1.w;
    } else {
#pragma unroll
        for (int j = 0; j < 8; j++) v[j] = 0.0f;
    }
    uint32_t h[8][3];
#pragma unroll
    for (int j = 0; j < 8; j++) fl_split<FMT>(scaled ? v[j] * xs : v[j], h[j]);
#pragma unroll
    for (int p = 0; p < 3; p++)
        b[p] = make_uint4(h[0][p] | h[1][p] << 16, h[2][p] | h[3][p] << 16, h[4][p] | h[5][p] << 16,
                          h[6][p] | h[7][p] << 16);
}

template <int FMT>
__device__ __forceinline__ void fl_mma(float *d, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                       uint32_t b1) {
#if __CUDA_ARCH__ < 800
    __trap(); /* never launched there (flmma_on) */
#else
    if (FMT == 2)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

/* The weights of slice s for one lane of a single-token kernel: quad q's
 * 16 bytes of each chunk of rows wrow[h] (zeros past K, or for a row that
 * is not there: !live[h]). */
template <int NH>
__device__ __forceinline__ void fl_load_slice(uint4 (*wv)[NH], const uint8_t *const *wrow, const bool *live, uint32_t s,
                                              uint32_t K, uint32_t q) {
#pragma unroll
    for (int cc = 0; cc < FL_CPS; cc++) {
        uint32_t k = (s * FL_CPS + cc) * FL_CHUNK + q * 8;
#pragma unroll
        for (int h = 0; h < NH; h++)
            wv[cc][h] = live[h] && k < K ? __ldg((const uint4 *)(wrow[h] + (uint64_t)k * 2)) : make_uint4(0, 0, 0, 0);
    }
}

/* One chunk of a 16-row tile against one 8-token tile, all three parts:
 * w0 / w1 = the lane's 16 bytes of rows g and g + 8. */
template <int FMT> __device__ __forceinline__ void fl_chunk(float (*acc)[4], uint4 w0, uint4 w1, const uint4 *b) {
#pragma unroll
    for (int p = 0; p < 3; p++) {
        fl_mma<FMT>(acc[p], w0.x, w1.x, w0.y, w1.y, b[p].x, b[p].y);
        fl_mma<FMT>(acc[p], w0.z, w1.z, w0.w, w1.w, b[p].z, b[p].w);
    }
}

/* Per-token scales of a tile of up to 8 tokens from t0 into sxs (shared):
 * xscale or 1, or (RMS) 1/rms of the token's row in the RMS products'
 * order, whatever the block size: the row in groups of FL_RMS_VALS values
 * (a group of slices); in a group, virtual thread v (of FL_RMS_VT) adds in
 * double the squares of its values v + FL_RMS_VT * i, i < FL_RMS_VPT, in
 * order; a butterfly over each 32 consecutive v; the group's total is 0 +
 * its warps' sums in order, the row's 0 + the groups' totals in order (so
 * a block of a cluster can add the group it holds, k_mhc.cu). The RMS
 * products apply the scale to their outputs, so the product need not wait
 * for the RMS: they split x * FL_RMS_PRE and scale the result by
 * rms_scale * FL_RMS_POST (exact powers of two). The F16 split keeps all
 * of fp32's bits for |v| from about 2^-6 to 2^27 (above); the RMS row
 * would sit near 1, the raw streams may not: times 2^8, every |x| in
 * [2^-14, 2^19) keeps them (unscaled, test_cuda_kernels' rows of
 * magnitude 1e-3 kept 22 bits). Ends with a barrier. */
#define FL_RMS_VALS (FL_RMS_GROUP * FL_SLICE)
#define FL_RMS_VT 512
#define FL_RMS_VPT (FL_RMS_VALS / FL_RMS_VT)
#define FL_RMS_PRE 0x1p8f
#define FL_RMS_POST 0x1p-8f
template <bool RMS, int NT>
__device__ __forceinline__ void fl_scales(const lin_args &a, const float *xg, uint32_t t0, float *sxs) {
    constexpr int nt = NT;
    if (RMS) {
        static_assert(!RMS || NT <= 8, "tokens per tile");
        /* groups a pass (one token: a row of 16384 values in one), warps a group */
        constexpr uint32_t GB = NT == 1 ? 8 : 4, WG = FL_RMS_VT / 32;
        __shared__ double red[RMS ? NT : 1][GB * WG];
        int live = a.n_tok - t0 < (uint32_t)nt ? (int)(a.n_tok - t0) : nt;
        const uint32_t ng = (a.K + FL_RMS_VALS - 1) / FL_RMS_VALS;
        double tot = 0; /* thread tt < live: its token's */
        /* one token: VU virtual threads' values in registers before any
         * is added (one memory latency for them all) */
        constexpr uint32_t VU = NT == 1 ? 8 : 1;
        for (uint32_t g0 = 0; g0 < ng; g0 += GB) {
            for (uint32_t vv0 = threadIdx.x; vv0 < GB * FL_RMS_VT; vv0 += VU * blockDim.x) {
                float xv[VU][NT][FL_RMS_VPT];
#pragma unroll
                for (uint32_t u = 0; u < VU; u++) {
                    uint32_t vv = vv0 + u * blockDim.x, g = g0 + vv / FL_RMS_VT, base = g * FL_RMS_VALS + vv % FL_RMS_VT;
#pragma unroll
                    for (int tt = 0; tt < NT; tt++)
#pragma unroll
                        for (int i = 0; i < FL_RMS_VPT; i++) {
                            uint32_t k = base + FL_RMS_VT * i;
                            xv[u][tt][i] = vv < GB * FL_RMS_VT && tt < live && g < ng && k < a.K
                                               ? xg[(uint64_t)(t0 + tt) * a.x_stride + k]
                                               : 0.0f;
                        }
                }
#pragma unroll
                for (uint32_t u = 0; u < VU; u++) {
                    uint32_t vv = vv0 + u * blockDim.x;
                    if (vv >= GB * FL_RMS_VT) break; /* whole warps */
#pragma unroll
                    for (int tt = 0; tt < NT; tt++) {
                        double ss = 0;
#pragma unroll
                        for (int i = 0; i < FL_RMS_VPT; i++) ss += (double)xv[u][tt][i] * xv[u][tt][i];
                        double w = warp_sum_d(ss);
                        if ((threadIdx.x & 31) == 0) red[tt][vv >> 5] = w;
                    }
                }
            }
            __syncthreads();
            if (threadIdx.x < (unsigned)live)
                for (uint32_t gg = 0; gg < GB && g0 + gg < ng; gg++) {
                    double gs = 0;
                    for (uint32_t w = 0; w < WG; w++) gs += red[threadIdx.x][gg * WG + w];
                    tot += gs;
                }
            __syncthreads();
        }
        if (threadIdx.x < (unsigned)live)
            sxs[threadIdx.x] = (float)(1.0 / sqrt(tot / a.K + a.rms_eps));
        else if (threadIdx.x < (unsigned)nt)
            sxs[threadIdx.x] = 1.0f;
    } else if (threadIdx.x < (unsigned)nt) {
        uint32_t t = t0 + threadIdx.x < a.n_tok ? t0 + threadIdx.x : a.n_tok - 1;
        sxs[threadIdx.x] = a.xscale ? a.xscale[t] : 1.0f;
    }
    __syncthreads();
}

#endif
