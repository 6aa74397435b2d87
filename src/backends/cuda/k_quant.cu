/* Matrix products against quantized weights (Q8_0, Q2_K, Q4_K, IQ2_XXS,
 * MXFP4), computed like the CPU path (compute/linear.c, formats/quant/):
 * each token's activations are first quantized to the weight type's
 * activation format (Q8_0 blocks of 32 for Q8_0 and MXFP4, Q8_K blocks of
 * 256 for the K-quants and IQ2_XXS) with the CPU quantizers' exact
 * arithmetic, then every block contributes an exact integer inner product
 * scaled in float as in the scalar reference kernels. Only the order in
 * which block results are added differs from the CPU's: every quantized
 * product of this backend (these kernels and the tensor-core ones of
 * k_mmq.cu) uses one fixed order (qdot_range, docs/NUMERICS.md), so a
 * token's result is the same bits whatever the chunk it is computed in.
 *
 * Layout: one warp per output row, lanes over blocks; the block formats are
 * the ggml layouts of formats/quant/blocks.h. */
#include <stdlib.h>
#include <string.h>

#include "backends/cuda/common.cuh"
#include "backends/cuda/kernels.cuh"
#include "backends/cuda/mhcfn.cuh"
#include "backends/cuda/quantfn.cuh" /* and formats/quant/blocks.h */

#define ROWS_PER_BLOCK 8

/* IQ2_XXS tables (formats/quant/iq2_tables.c), copied once by k_quant_init:
 * the grid (256 entries of 8 bytes) and then the 128 sign patterns. The
 * lookups are random, so the staged kernels copy them to shared memory. */
#define IQ2_TAB_BYTES (256 * 8 + 128)
__device__ __align__(16) uint8_t d_iq2_tab[IQ2_TAB_BYTES];

/* The same tables as byte-permute selectors for the single-token expert
 * kernels (qffn_dec_kernel): every IQ2_XXS grid byte is one of three
 * magnitudes (8, 25, 43), so grid entry i becomes eight 4-bit selectors
 * (value v in bits 4v..4v+3: 0, 1, 2 pick the magnitude), and sign pattern
 * j sets bit 2 of the selectors of its negative values, which then pick
 * the negated magnitude: __byte_perm(IQ2_POS, IQ2_NEG, grid | sign) gives
 * four signed values (low 16 selector bits), the same int8 values as the
 * grid times the signs. Words 0-255: grid, 256-383: signs. The kernel
 * reads them from shared memory in DEC_COPIES interleaved copies (word w's
 * copy c at w * DEC_COPIES + c, see qffn_dec_kernel); d_iq2_dec holds them
 * laid out so, for one straight copy. */
#define IQ2_DEC_WORDS (256 + 128)
#define DEC_COPIES 32
#define IQ2_POS 0x002b1908u /* bytes 8, 25, 43 */
#define IQ2_NEG 0x00d5e7f8u /* bytes -8, -25, -43 */
__device__ uint4 d_iq2_dec[IQ2_DEC_WORDS * DEC_COPIES / 4];
/* __byte_perm(IQ2_POS, IQ2_NEG, sel) without its masking of the selectors
 * to 3 bits: the tables' selectors are 0..6, never with bit 3 (prmt's
 * sign-replication flag) set, so the bytes are the same, an instruction
 * fewer per four values. */
__device__ __forceinline__ uint32_t iq2_signed(uint32_t sel, uint32_t pos = IQ2_POS) {
    uint32_t d;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(pos), "r"(IQ2_NEG), "r"(sel));
    return d;
}
/* IQ2_POS where the compiler cannot see the constant: the decode kernel's
 * loop then keeps it in a register. With the literal, the machine code
 * moved it into a register before every byte permute (64 of the 800
 * instructions of a gate/up row pair). */
__device__ uint32_t d_iq2_pos = IQ2_POS;

cudaError_t k_quant_init(void) {
    static bool done = false;
    if (done) return cudaSuccess;
    cudaError_t e = cudaMemcpyToSymbol(d_iq2_tab, ds4_iq2xxs_grid, 256 * 8);
    if (e == cudaSuccess) e = cudaMemcpyToSymbol(d_iq2_tab, ds4_iq2_signs, 128, 256 * 8);
    static uint32_t dec[IQ2_DEC_WORDS * DEC_COPIES]; /* 48 KB: not on the stack */
    for (int i = 0; i < 256; i++) {
        dec[i] = 0;
        for (int v = 0; v < 8; v++) {
            uint8_t g = ds4_iq2xxs_grid[i][v];
            uint32_t c = g == 0x08 ? 0 : g == 0x19 ? 1 : g == 0x2b ? 2 : 3;
            if (c == 3) return cudaErrorInvalidValue; /* not the IQ2_XXS grid this encoding assumes */
            dec[i] |= c << (4 * v);
        }
    }
    for (int j = 0; j < 128; j++) {
        dec[256 + j] = 0;
        for (int v = 0; v < 8; v++)
            if (ds4_iq2_signs[j] >> v & 1) dec[256 + j] |= 4u << (4 * v);
    }
    for (int w = IQ2_DEC_WORDS - 1; w >= 0; w--) /* the copies, from the top: word w is read before it is overwritten */
        for (int c = DEC_COPIES - 1; c >= 0; c--) dec[w * DEC_COPIES + c] = dec[w];
    if (e == cudaSuccess) e = cudaMemcpyToSymbol(d_iq2_dec, dec, sizeof dec);
    done = e == cudaSuccess;
    return e;
}

/* The tables' device address, for the tensor-core kernels (k_mmq.cu). */
static const uint8_t *iq2_table(void) {
    static void *p = nullptr;
    if (!p && cudaGetSymbolAddress(&p, d_iq2_tab) != cudaSuccess) p = nullptr;
    return (const uint8_t *)p;
}

bool k_quant_type(uint32_t type) {
    return type == GGML_TYPE_Q8_0 || type == GGML_TYPE_Q2_K || type == GGML_TYPE_Q4_K || type == GGML_TYPE_IQ2_XXS ||
           type == GGML_TYPE_MXFP4;
}

/* Activation format of a weight type: true = Q8_K (256), false = Q8_0 (32). */
static bool act_is_q8k(uint32_t type) { return type != GGML_TYPE_Q8_0 && type != GGML_TYPE_MXFP4; }
bool k_act_is_q8k(uint32_t type) { return k_quant_type(type) && act_is_q8k(type); }

uint64_t k_act_row_bytes(uint32_t type, uint64_t K) {
    return act_is_q8k(type) ? K / DS4_QK_K * sizeof(ds4_block_q8_K) : K / DS4_QK8_0 * sizeof(ds4_block_q8_0);
}

__device__ __forceinline__ float half_f(uint16_t h) { return f16_to_f32(h); }

/* ---- activation quantizers (ds4_q8_0_quantize, ds4_q8_K_quantize) ------------- */

/* The quantizers' grid: blocks of 8 warps along a row's blocks (x), rows
 * (token, group) along y, looping where there are more than a grid's y;
 * 32-bit index arithmetic (64-bit divisions had been most of their time). */
#define QUANT_WARPS 8
#define QUANT_MAX_Y 65535u

/* One warp per Q8_0 block of 32 values: lane j holds value j. */
__global__ void quant_q8_0_kernel(const float *x, uint64_t x_stride, uint64_t x_group, const float *xscale, uint32_t K,
                                  uint32_t groups, uint32_t n_rows, uint8_t *act, uint64_t act_row, act_split sp) {
    pdl_enter();
    uint32_t nb = K / DS4_QK8_0, lane = threadIdx.x & 31, b = blockIdx.x * QUANT_WARPS + (threadIdx.x >> 5);
    if (b >= nb) return;
    for (uint32_t rg = blockIdx.y; rg < n_rows * groups; rg += gridDim.y) {
        uint32_t g = rg % groups, t = rg / groups;
        float v = x[t * x_stride + g * x_group + (uint64_t)b * DS4_QK8_0 + lane];
        if (xscale) v = v * xscale[t];
        uint16_t h;
        int8_t qv = q8_0_lane(v, &h);
        uint64_t row = rg;
        if (sp.qs) {
            sp.qs[row * K + (uint64_t)b * DS4_QK8_0 + lane] = qv;
            if (lane == 0) sp.d[row * nb + b] = half_f(h);
            continue;
        }
        ds4_block_q8_0 *blk = (ds4_block_q8_0 *)(act + row * act_row) + b;
        blk->qs[lane] = qv;
        if (lane == 0) blk->d = h;
    }
}

/* One warp per Q8_K block of 256 values: lane l holds values 8l..8l+7. */
__global__ void quant_q8_K_kernel(const float *x, uint64_t x_stride, uint64_t x_group, const float *xscale, uint32_t K,
                                  uint32_t groups, uint32_t n_rows, uint8_t *act, uint64_t act_row, act_split sp) {
    pdl_enter();
    uint32_t nb = K / DS4_QK_K, lane = threadIdx.x & 31, b = blockIdx.x * QUANT_WARPS + (threadIdx.x >> 5);
    if (b >= nb) return;
    for (uint32_t rg = blockIdx.y; rg < n_rows * groups; rg += gridDim.y) {
        uint32_t g = rg % groups, t = rg / groups;
        const float *src = x + t * x_stride + g * x_group + (uint64_t)b * DS4_QK_K + 8 * lane;
        float v[8];
        for (int i = 0; i < 8; i++) v[i] = xscale ? src[i] * xscale[t] : src[i];
        uint64_t row = rg;
        ds4_block_q8_K *blk = (ds4_block_q8_K *)(act + row * act_row) + b;
        if (sp.qs)
            q8_K_lane(v, sp.qs + row * K + (uint64_t)b * DS4_QK_K, sp.bs + row * (K / 16) + (uint64_t)b * 16, sp.d + row * nb + b);
        else
            q8_K_lane(v, blk->qs, blk->bsums, &blk->d);
    }
}


act_split k_act_split(uint32_t wtype, void *act, uint64_t rows, uint64_t K) {
    uint8_t *p = (uint8_t *)act;
    uint64_t nd = rows * (K / (act_is_q8k(wtype) ? DS4_QK_K : DS4_QK8_0));
    act_split sp = {(int8_t *)p, (float *)(p + align256(rows * K)), nullptr};
    sp.bs = (int16_t *)((uint8_t *)sp.d + align256(nd * sizeof(float)));
    return sp;
}

uint64_t k_act_bytes(uint32_t wtype, uint64_t K, uint64_t rows) {
    uint64_t blocks = rows * k_act_row_bytes(wtype, K);
    uint64_t split = align256(rows * K) + align256(rows * (K / (act_is_q8k(wtype) ? DS4_QK_K : DS4_QK8_0)) * 4) +
                     (act_is_q8k(wtype) ? rows * (K / 16) * 2 : 0);
    return blocks > split ? blocks : split;
}

static cudaError_t quantize(cudaStream_t st, uint32_t wtype, const float *x, uint64_t x_stride, uint64_t x_group,
                            const float *xscale, uint32_t K, uint32_t groups, uint32_t n_rows, void *act, act_split sp) {
    if (n_rows == 0) return cudaSuccess;
    uint64_t row = k_act_row_bytes(wtype, K);
    bool q8k = act_is_q8k(wtype);
    uint32_t rows = n_rows * groups;
    dim3 grid(div_up(K / (q8k ? DS4_QK_K : DS4_QK8_0), QUANT_WARPS), rows < QUANT_MAX_Y ? rows : QUANT_MAX_Y);
    if (q8k) k_launch(quant_q8_K_kernel, grid, 32 * QUANT_WARPS, 0, st, x, x_stride, x_group, xscale, K, groups, n_rows, (uint8_t *)act, row, sp);
    else k_launch(quant_q8_0_kernel, grid, 32 * QUANT_WARPS, 0, st, x, x_stride, x_group, xscale, K, groups, n_rows, (uint8_t *)act, row, sp);
    return LAUNCH_STATUS();
}

cudaError_t k_quantize_act(cudaStream_t st, uint32_t wtype, const float *x, uint64_t x_stride, uint64_t x_group,
                           const float *xscale, uint32_t K, uint32_t groups, uint32_t n_rows, void *act) {
    act_split none = {nullptr, nullptr, nullptr};
    return quantize(st, wtype, x, x_stride, x_group, xscale, K, groups, n_rows, act, none);
}

cudaError_t k_quantize_split(cudaStream_t st, uint32_t wtype, const float *x, uint64_t x_stride, uint64_t x_group,
                             const float *xscale, uint32_t K, uint32_t groups, uint32_t n_rows, void *act) {
    act_split sp = k_act_split(wtype, act, (uint64_t)n_rows * groups, K);
    return quantize(st, wtype, x, x_stride, x_group, xscale, K, groups, n_rows, act, sp);
}

/* ---- block dot products (the scalar reference kernels) -------------------------- */

/* The float contribution of weight block b of a row against activation
 * block b: Q8_0 and MXFP4 use Q8_0 activations (34-byte blocks), the others
 * Q8_K (292-byte blocks). */
template <uint32_t TYPE> struct qb;

__device__ __forceinline__ int ld_i8x4_a4(const uint8_t *p) { return *(const int *)p; }

/* The integer sums below use __dp4a (four exact int8 products added to an
 * int32): the same integers as the scalar loops of formats/quant/. */
template <> struct qb<GGML_TYPE_Q8_0> {
    static constexpr uint32_t QK = DS4_QK8_0, BYTES = 34;
    __device__ static float dot(const uint8_t *w, const uint8_t *a) {
        int isum = 0;
#pragma unroll
        for (int j = 0; j < 32; j += 4) isum = __dp4a(ld_i8x4_a2(w + 2 + j), ld_i8x4_a2(a + 2 + j), isum);
        return (float)isum * (half_f(ld16(w)) * half_f(ld16(a)));
    }
};

template <> struct qb<GGML_TYPE_MXFP4> {
    static constexpr uint32_t QK = DS4_QK_MXFP4, BYTES = 17;
    /* ds4_e2m1_x2: code -> twice the E2M1 value (packed nibble table) */
    __device__ static int e2m1_x2(int c) {
        int m = c & 7; /* magnitudes 0, 1, 2, 3, 4, 6, 8, 12 without a table */
        int v = m < 4 ? m : (m < 6 ? 2 * m - 4 : (m == 6 ? 8 : 12));
        return c & 8 ? -v : v;
    }
    __device__ static float e8m0_half(uint8_t e) {
        uint32_t bits = e < 2 ? (uint32_t)0x00200000u << e : (uint32_t)(e - 1) << 23;
        return __uint_as_float(bits);
    }
    __device__ static float dot(const uint8_t *w, const uint8_t *a) {
        const int8_t *aq = (const int8_t *)(a + 2);
        int isum = 0;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            isum += e2m1_x2(w[1 + j] & 15) * aq[j];
            isum += e2m1_x2(w[1 + j] >> 4) * aq[j + 16];
        }
        return (float)isum * (e8m0_half(w[0]) * half_f(ld16(a)));
    }
};

/* The 256-value formats are split over 8 lanes: part() gives one lane's
 * share (sub = 0..7, 32 values) of the block's integer sums, which the lanes
 * add exactly; finish() applies the block's float scales once, as the
 * scalar reference does after its whole-block integer sums. */
template <> struct qb<GGML_TYPE_Q2_K> {
    static constexpr uint32_t QK = DS4_QK_K, BYTES = 84;
    /* 84-byte blocks: qs (offset 16) is 4-byte aligned; Q8_K values too.
     * Lane sub takes sub-blocks 2 sub and 2 sub + 1 (16 values each). */
    __device__ static void part(const uint8_t *w, const uint8_t *a, int sub, int *isum, int *msum, const uint8_t *) {
        const ds4_block_q2_K *x = (const ds4_block_q2_K *)w;
        const ds4_block_q8_K *y = (const ds4_block_q8_K *)a;
        int is = 0, ms = 0;
#pragma unroll
        for (int kk = 0; kk < 2; kk++) {
            const int k = 2 * sub + kk, h = k >> 3, sh = (k >> 1) & 3, off = (k & 1) * 16;
            const uint8_t *qs = x->qs + 32 * h + off;
            const uint8_t *q8 = (const uint8_t *)(y->qs + 16 * k);
            int s = 0;
#pragma unroll
            for (int l = 0; l < 16; l += 4)
                s = __dp4a((int)(((uint32_t)ld_i8x4_a4(qs + l) >> (2 * sh)) & 0x03030303u), ld_i8x4_a4(q8 + l), s);
            is += (x->scales[k] & 15) * s;
            ms += (x->scales[k] >> 4) * y->bsums[k];
        }
        *isum = is, *msum = ms;
    }
    __device__ static float finish(const uint8_t *w, const uint8_t *a, int isum, int msum) {
        const ds4_block_q2_K *x = (const ds4_block_q2_K *)w;
        const ds4_block_q8_K *y = (const ds4_block_q8_K *)a;
        const float dall = y->d * half_f(ld16((const uint8_t *)&x->d)), dmin = y->d * half_f(ld16((const uint8_t *)&x->dmin));
        return dall * (float)isum - dmin * (float)msum;
    }
};

template <> struct qb<GGML_TYPE_Q4_K> {
    static constexpr uint32_t QK = DS4_QK_K, BYTES = 144;
    /* lane sub takes sub-block j = sub (32 values) */
    __device__ static void part(const uint8_t *w, const uint8_t *a, int j, int *isum, int *msum, const uint8_t *) {
        const ds4_block_q4_K *x = (const ds4_block_q4_K *)w;
        const ds4_block_q8_K *y = (const ds4_block_q8_K *)a;
        int sc, m;
        if (j < 4) {
            sc = x->scales[j] & 63;
            m = x->scales[j + 4] & 63;
        } else {
            sc = (x->scales[j + 4] & 15) | ((x->scales[j - 4] >> 6) << 4);
            m = (x->scales[j + 4] >> 4) | ((x->scales[j] >> 6) << 4);
        }
        /* 144-byte blocks: qs (offset 16) is 16-byte aligned */
        const uint8_t *qs = x->qs + 32 * (j >> 1);
        const uint8_t *q8 = (const uint8_t *)(y->qs + 32 * j);
        const int shift = (j & 1) * 4;
        int s = 0;
#pragma unroll
        for (int l = 0; l < 32; l += 4)
            s = __dp4a((int)(((uint32_t)ld_i8x4_a4(qs + l) >> shift) & 0x0f0f0f0fu), ld_i8x4_a4(q8 + l), s);
        *isum = sc * s;
        *msum = m * (y->bsums[2 * j] + y->bsums[2 * j + 1]);
    }
    __device__ static float finish(const uint8_t *w, const uint8_t *a, int isum, int msum) {
        const ds4_block_q4_K *x = (const ds4_block_q4_K *)w;
        const ds4_block_q8_K *y = (const ds4_block_q8_K *)a;
        const float dall = y->d * half_f(x->d), dmin = y->d * half_f(x->dmin);
        return dall * (float)isum - dmin * (float)msum;
    }
};

template <> struct qb<GGML_TYPE_IQ2_XXS> {
    static constexpr uint32_t QK = DS4_QK_K, BYTES = 66;
    /* lane sub takes group ib = sub (32 values) */
    __device__ static void part(const uint8_t *w, const uint8_t *a, int ib, int *isum, int *msum, const uint8_t *tab) {
        const ds4_block_q8_K *y = (const ds4_block_q8_K *)a;
        const uint8_t *qs = w + 2 + 8 * ib; /* 2-byte aligned only (66-byte blocks) */
        uint32_t aux = (uint32_t)ld16(qs + 4) | ((uint32_t)ld16(qs + 6) << 16);
        int s = 0;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            /* grid magnitudes (< 128) times the activations with the signs
             * applied bytewise: (a ^ m) - m negates where m = 0xff
             * (activations are in [-127, 127], so nothing overflows) */
            const uint32_t *g = (const uint32_t *)(tab + 8 * qs[k]);
            const uint8_t *q8 = (const uint8_t *)(y->qs + 32 * ib + 8 * k);
            uint32_t sg = tab[256 * 8 + ((aux >> (7 * k)) & 127)];
            uint32_t m0 = sign_mask4(sg & 15), m1 = sign_mask4(sg >> 4);
            uint32_t a0 = (uint32_t)ld_i8x4_a4(q8), a1 = (uint32_t)ld_i8x4_a4(q8 + 4);
            s = __dp4a((int)g[0], (int)__vsub4(a0 ^ m0, m0), s);
            s = __dp4a((int)g[1], (int)__vsub4(a1 ^ m1, m1), s);
        }
        *isum = (int)(2 * (aux >> 28) + 1) * s;
        *msum = 0;
    }
    __device__ static float finish(const uint8_t *w, const uint8_t *a, int isum, int) {
        const ds4_block_q8_K *y = (const ds4_block_q8_K *)a;
        return 0.125f * (half_f(ld16(w)) * y->d) * (float)isum;
    }
};

template <uint32_t TYPE> struct act_of {
    static constexpr uint32_t BYTES = TYPE == GGML_TYPE_Q8_0 || TYPE == GGML_TYPE_MXFP4 ? 34 : 292;
};

/* The 32-value formats' lane loop of qdot_range: lane l takes block b0 + l
 * of each step of 32 (dot(m, tt, b): its float result for matrix m and
 * act row tt), the results are summed over 8 lanes by a butterfly and the
 * four sums added to acc in lane-group order. */
template <int TT, int NM, class Dot>
__device__ __forceinline__ void lane_blocks(uint32_t nb, int nt, float (*acc)[TT], Dot dot) {
    uint32_t lane = threadIdx.x & 31;
    for (uint32_t b0 = 0; b0 < nb; b0 += 32) {
        uint32_t b = b0 + lane;
#pragma unroll
        for (int m = 0; m < NM; m++) {
#pragma unroll
            for (int tt = 0; tt < TT; tt++) {
                if (tt >= nt) continue;
                float t = b < nb ? dot(m, tt, b) : 0.0f;
                t += __shfl_xor_sync(0xffffffffu, t, 1);
                t += __shfl_xor_sync(0xffffffffu, t, 2);
                t += __shfl_xor_sync(0xffffffffu, t, 4);
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    float v = __shfl_sync(0xffffffffu, t, 8 * q);
                    if (b0 + 8 * q < nb) acc[m][tt] += v;
                }
            }
        }
    }
}

/* Adds blocks [0, nb) of a row against act rows ar[tt] to acc[m][tt], in
 * the order every quantized product of this backend uses (k_mmq.cu too,
 * docs/NUMERICS.md): 256-value steps in ascending order, a Q8_0 step being
 * the tree ((b0 + b1) + (b2 + b3)) + ((b4 + b5) + (b6 + b7)) of its eight
 * block results. 32-value formats take a block per lane (the tree is the
 * butterfly over 8 lanes), 256-value formats a block per 8 lanes
 * (qb::part/finish); acc ends the same on every lane. nb must start at a
 * multiple of 32 (Q8_0) or 4 blocks (the others), so a row split into
 * chunks sums exactly like the row in one piece. */
template <uint32_t TYPE, int TT, int NM = 1>
__device__ __forceinline__ void qdot_range(const uint8_t *wrow, uint32_t nb, const uint8_t *const *ar, int nt, float (*acc)[TT],
                                           const uint8_t *tab, uint64_t mstride = 0) {
    /* NM matrices mstride bytes apart (gate and up) share each step, so
     * their independent block sums and lane reductions overlap */
    int lane = threadIdx.x & 31;
    if constexpr (qb<TYPE>::QK == DS4_QK_K) {
        int sub = lane & 7;
        for (uint32_t b0 = 0; b0 < nb; b0 += 4) {
            uint32_t b = b0 + (lane >> 3);
            bool valid = b < nb;
#pragma unroll
            for (int tt = 0; tt < TT; tt++) {
                if (tt >= nt) continue; /* uniform over the warp */
                const uint8_t *ab = ar[tt] + (uint64_t)b * act_of<TYPE>::BYTES;
                int is[NM], ms[NM];
#pragma unroll
                for (int m = 0; m < NM; m++) {
                    is[m] = 0, ms[m] = 0;
                    if (valid) qb<TYPE>::part(wrow + m * mstride + (uint64_t)b * qb<TYPE>::BYTES, ab, sub, &is[m], &ms[m], tab);
                }
                for (int o = 1; o < 8; o <<= 1)
#pragma unroll
                    for (int m = 0; m < NM; m++) {
                        is[m] += __shfl_xor_sync(0xffffffffu, is[m], o);
                        if (TYPE != GGML_TYPE_IQ2_XXS) ms[m] += __shfl_xor_sync(0xffffffffu, ms[m], o); /* IQ2_XXS: 0 */
                    }
#pragma unroll
                for (int m = 0; m < NM; m++) {
                    float t = valid ? qb<TYPE>::finish(wrow + m * mstride + (uint64_t)b * qb<TYPE>::BYTES, ab, is[m], ms[m]) : 0.0f;
#pragma unroll
                    for (int q = 0; q < 4; q++) {
                        float v = __shfl_sync(0xffffffffu, t, 8 * q);
                        if (b0 + q < nb) acc[m][tt] += v;
                    }
                }
            }
        }
    } else {
        lane_blocks<TT, NM>(nb, nt, acc, [&](int m, int tt, uint32_t b) {
            return qb<TYPE>::dot(wrow + m * mstride + (uint64_t)b * qb<TYPE>::BYTES, ar[tt] + (uint64_t)b * act_of<TYPE>::BYTES);
        });
    }
}
template <uint32_t TYPE, int TT>
__device__ __forceinline__ void qdot_tile(const uint8_t *wrow, uint32_t nb, const uint8_t *const *ar, int nt, float *acc) {
#pragma unroll
    for (int tt = 0; tt < TT; tt++) acc[tt] = 0.0f;
    qdot_range<TYPE, TT>(wrow, nb, ar, nt, (float(*)[TT])acc, d_iq2_tab);
}

/* Q8_0 against activations staged split (stage_act_for): aq the block's 32
 * quants (16-byte aligned), ad its scale as a float; w a weight block in
 * shared memory (2-byte aligned, so its quants start 0 or 2 bytes past a
 * word: nine aligned words and funnel shifts give them). The same integer
 * sum and float products as qb<Q8_0>::dot, with two 16-byte loads for the
 * activations and nine 4-byte ones for the weights instead of thirty-two
 * 2-byte loads and sixteen byte permutes. */
__device__ __forceinline__ float q8_0_dot_split(const uint8_t *w, const int8_t *aq, float ad) {
    int4 a0 = *(const int4 *)aq, a1 = *(const int4 *)(aq + 16);
    int a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
    uint32_t off = (uint32_t)(uintptr_t)(w + 2) & 3; /* 0 or 2 */
    const uint32_t *pw = (const uint32_t *)(w + 2 - off); /* from w, so the loads stay shared-memory ones */
    uint32_t sh = 8 * off, wd[9];
#pragma unroll
    for (int k = 0; k < 8; k++) wd[k] = pw[k];
    wd[8] = sh ? pw[8] : 0u; /* an aligned block's last word would lie past it (and past the buffer at its end) */
    int isum = 0;
#pragma unroll
    for (int j = 0; j < 8; j++) isum = __dp4a((int)__funnelshift_r(wd[j], wd[j + 1], sh), a[j], isum);
    return (float)isum * (half_f(*(const uint16_t *)w) * ad);
}

/* qdot_range's Q8_0 branch (same lanes, tree and order) against split
 * activations: aq[tt] / ad[tt] the quants and scales of act row tt from
 * the range's first block. */
template <int TT, int NM>
__device__ __forceinline__ void qdot_range_q8s(const uint8_t *wrow, uint32_t nb, const int8_t *const *aq, const float *const *ad,
                                               int nt, float (*acc)[TT], uint64_t mstride) {
    lane_blocks<TT, NM>(nb, nt, acc, [&](int m, int tt, uint32_t b) {
        return q8_0_dot_split(wrow + m * mstride + (uint64_t)b * qb<GGML_TYPE_Q8_0>::BYTES, aq[tt] + (uint64_t)b * DS4_QK8_0,
                              ad[tt][b]);
    });
}

/* ---- staging through shared memory ----------------------------------------------
 * The block formats are 17 to 292 bytes long and mostly 2-byte aligned, so a
 * lane reading its own blocks issues many narrow loads that each touch a
 * different 32-byte sector: the memory system then serves a fraction of the
 * bandwidth. Where rows are 16-byte aligned, the block instead copies the
 * tokens' activation rows into shared memory once, and each warp streams
 * its weight rows through two shared-memory buffers in chunks with
 * asynchronous 16-byte copies: the copy of the next chunk (of this row or
 * the warp's next row) is in flight while the current one is multiplied.
 * The dot products read shared memory with the same lane assignment and
 * order as the direct path, so results are bit-identical to it. */
template <uint32_t TYPE> struct chunk_of {
    /* blocks per chunk: whole lane rounds (32 or 4 blocks) of whole 16-byte lines */
    static constexpr uint32_t CB = qb<TYPE>::QK == DS4_QK_K ? (TYPE == GGML_TYPE_Q4_K ? 8 : 16) : 32;
    static constexpr uint32_t WB = CB * qb<TYPE>::BYTES;
    static_assert(WB % 16 == 0 && (CB * act_of<TYPE>::BYTES) % 16 == 0, "chunks must be whole 16-byte lines");
};

/* Bytes of one staged activation row of act_row bytes: Q8_0 rows are
 * staged split (all quants, 16-byte aligned, then the scales as floats:
 * 36 bytes a block), the other formats as they are. */
template <uint32_t TYPE> __host__ __device__ __forceinline__ uint64_t staged_act_row(uint64_t act_row) {
    return TYPE == GGML_TYPE_Q8_0 ? act_row / 34 * 36 : act_row;
}

/* Shared memory of a staged block: TT activation rows, then per warp NBUF
 * buffers of NM weight chunks. */
template <uint32_t TYPE, int TT, int NM, int NBUF = 2> static uint32_t staged_smem(uint64_t act_row) {
    return (uint32_t)(TT * staged_act_row<TYPE>(act_row)) + ROWS_PER_BLOCK * NBUF * NM * chunk_of<TYPE>::WB +
           (TYPE == GGML_TYPE_IQ2_XXS ? IQ2_TAB_BYTES : 0);
}

/* The IQ2_XXS tables in shared memory at tab (the block copies them; a
 * barrier must follow before use); other types need none. */
template <uint32_t TYPE> __device__ __forceinline__ void stage_tables(uint8_t *tab) {
    if constexpr (TYPE == GGML_TYPE_IQ2_XXS)
        for (uint32_t i = threadIdx.x; i < IQ2_TAB_BYTES / 8; i += blockDim.x) ((uint2 *)tab)[i] = ((const uint2 *)d_iq2_tab)[i];
}

/* Whether rows of row_bytes at w (and activation rows) allow staging. */
template <uint32_t TYPE> static bool stageable(const void *w, uint64_t row_bytes, uint64_t act_row) {
    return (uintptr_t)w % 16 == 0 && row_bytes % 16 == 0 && act_row % 16 == 0 && 4 * staged_act_row<TYPE>(act_row) <= 64 * 1024;
}

/* The block copies nt activation rows (act_row bytes each) into sact. */
__device__ __forceinline__ void stage_act(uint8_t *sact, const uint8_t *const *ar, int nt, uint64_t act_row) {
    uint32_t n16 = (uint32_t)(act_row / 16);
    for (int tt = 0; tt < nt; tt++)
        for (uint32_t i = threadIdx.x; i < n16; i += blockDim.x)
            ((uint4 *)(sact + tt * act_row))[i] = __ldg((const uint4 *)ar[tt] + i);
}

/* stage_act in the staged layout of TYPE (staged_act_row): Q8_0 rows are
 * split into their quants (4 bytes a thread) and their scales (as floats),
 * staged rows staged_act_row apart. */
template <uint32_t TYPE>
__device__ __forceinline__ void stage_act_for(uint8_t *sact, const uint8_t *const *ar, int nt, uint64_t act_row) {
    if constexpr (TYPE == GGML_TYPE_Q8_0) {
        uint32_t nb = (uint32_t)(act_row / 34);
        uint64_t srow = staged_act_row<TYPE>(act_row);
        for (int tt = 0; tt < nt; tt++) {
            int *qs = (int *)(sact + tt * srow);
            float *d = (float *)(sact + tt * srow + (uint64_t)nb * DS4_QK8_0);
            for (uint32_t i = threadIdx.x; i < nb * 8; i += blockDim.x) qs[i] = ld_i8x4_a2(ar[tt] + (i / 8) * 34 + 2 + 4 * (i % 8));
            for (uint32_t b = threadIdx.x; b < nb; b += blockDim.x) d[b] = half_f(ld16(ar[tt] + b * 34));
        }
    } else {
        stage_act(sact, ar, nt, act_row);
    }
}

/* One warp's rows w[m] + i * row_bytes (i < n_rows) against the staged
 * activation rows: emit(i, acc) with acc[m][tt] = row i of matrix m . act
 * row tt, on every lane, after each row. sbuf: the warp's NBUF buffers,
 * NBUF - 1 chunks in flight while one is multiplied. */
template <uint32_t TYPE, int TT, int NM, int NBUF = 2, class Emit>
__device__ __forceinline__ void warp_rows(const uint8_t *const *w, uint64_t row_bytes, uint32_t n_rows, uint32_t nb,
                                          const uint8_t *sact, uint64_t act_row, int nt, uint8_t *sbuf, const uint8_t *tab,
                                          Emit emit) {
    using C = chunk_of<TYPE>;
    constexpr uint32_t WBY = qb<TYPE>::BYTES, ABY = act_of<TYPE>::BYTES;
    uint32_t lane = threadIdx.x & 31, nch = (nb + C::CB - 1) / C::CB, items = n_rows * nch;
    /* item it is chunk c of row i: (i, c) are counted along rather than
     * divided out of it (a division by a run-time nch was about a tenth
     * of a single-token row's instructions) */
    uint32_t qi = 0, qc = 0; /* the next item to copy */
    auto issue = [&](uint32_t it) {
        uint32_t b0 = qc * C::CB, nbc = nb - b0 < C::CB ? nb - b0 : C::CB;
        uint8_t *dst = sbuf + (it % NBUF) * NM * C::WB;
#pragma unroll
        for (int m = 0; m < NM; m++) {
            const uint8_t *src = w[m] + qi * row_bytes + (uint64_t)b0 * WBY;
            for (uint32_t l = lane; l < nbc * WBY / 16; l += 32) cp_async16(dst + m * C::WB + 16 * l, src + 16 * l);
        }
        cp_async_commit();
        if (++qc == nch) qc = 0, qi++;
    };
    float acc[NM][TT];
#pragma unroll
    for (uint32_t p = 0; p + 1 < NBUF; p++)
        if (p < items) issue(p);
        else cp_async_commit();
    uint32_t i = 0, c = 0; /* the item being multiplied */
    for (uint32_t it = 0; it < items; it++, c = c + 1 == nch ? 0 : c + 1, i += c == 0) {
        if (it + NBUF - 1 < items) issue(it + NBUF - 1);
        else cp_async_commit(); /* empty groups keep "all but NBUF - 1" meaning item it */
        cp_async_wait_keep<NBUF - 1>();
        __syncwarp();
        uint32_t b0 = c * C::CB, nbc = nb - b0 < C::CB ? nb - b0 : C::CB;
        if (c == 0)
#pragma unroll
            for (int m = 0; m < NM; m++)
#pragma unroll
                for (int tt = 0; tt < TT; tt++) acc[m][tt] = 0.0f;
        const uint8_t *cur = sbuf + (it % NBUF) * NM * C::WB;
        if constexpr (TYPE == GGML_TYPE_Q8_0) { /* staged split: stage_act_for */
            const uint64_t srow = staged_act_row<TYPE>(act_row);
            const int8_t *aq[TT];
            const float *ad[TT];
#pragma unroll
            for (int tt = 0; tt < TT; tt++) {
                aq[tt] = (const int8_t *)(sact + tt * srow) + (uint64_t)b0 * DS4_QK8_0;
                ad[tt] = (const float *)(sact + tt * srow + (uint64_t)nb * DS4_QK8_0) + b0;
            }
            qdot_range_q8s<TT, NM>(cur, nbc, aq, ad, nt, acc, C::WB);
        } else {
            const uint8_t *sar[TT];
#pragma unroll
            for (int tt = 0; tt < TT; tt++) sar[tt] = sact + tt * act_row + (uint64_t)b0 * ABY;
            qdot_range<TYPE, TT, NM>(cur, nbc, sar, nt, acc, tab, C::WB);
        }
        if (c == nch - 1) emit(i, acc);
        __syncwarp(); /* this buffer is refilled by the next iteration's copy */
    }
}

/* Rows per warp for n_rows rows (times grid_y) on blocks of `warps` warps:
 * as few as keep the launch within one wave of resident blocks (a partial
 * second wave would leave most of the GPU idle at the end), so the large
 * matrices run as long pipelined streams per warp; at most max_rpw. */
template <class K>
static uint32_t rows_per_warp(K kernel, uint32_t smem, uint64_t n_rows, uint32_t grid_y, uint32_t warps = ROWS_PER_BLOCK,
                              uint64_t max_rpw = 32) {
    int sms = k_sm_count(), per_sm = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 32 * warps, smem) != cudaSuccess || per_sm < 1)
        per_sm = 1;
    uint64_t wave = (uint64_t)sms * per_sm * warps;
    uint64_t per = (n_rows * grid_y + wave - 1) / wave;
    return per < 1 ? 1 : (uint32_t)(per > max_rpw ? max_rpw : per);
}

/* ---- dense rows ------------------------------------------------------------------------ */

typedef struct qlin_args {
    const uint8_t *w;
    uint64_t row_bytes, r0, n_rows;
    uint32_t nb, groups, n_tok;
    const uint8_t *act;
    uint64_t act_row; /* bytes of one (token, group) activation row */
    float *y;
    uint64_t y_stride;
    /* A second matrix of the same layout against the same activations
     * (k_qlinear_pair): blocks blocks1.. of the staged kernel take its
     * n_rows2 rows into y2; blocks1 = the grid's width otherwise. */
    const uint8_t *w2;
    uint64_t n_rows2;
    float *y2;
    uint32_t blocks1;
    /* Optional (one token, one group): row d's result also goes through
     * the mHC post step of column d of the hc streams mhc_X (k_qlinear_post) */
    float *mhc_X;
    const float *mhc_post, *mhc_comb;
    uint32_t hc;
} qlin_args;

/* qlin_args for n_tok tokens through rows [r0, r0 + n_rows) of w (times
 * groups) with act holding their activations; no second matrix, no post
 * step. */
static qlin_args qlin_of(const ds4_tensor *w, uint64_t r0, uint64_t n_rows, uint32_t groups, uint32_t n_tok, const void *act,
                         float *y, uint64_t y_stride) {
    qlin_args a;
    memset(&a, 0, sizeof a);
    uint32_t K = (uint32_t)w->ne[0];
    a.w = w->data, a.row_bytes = w->row_bytes, a.r0 = r0, a.n_rows = n_rows;
    a.nb = K / (act_is_q8k(w->type) ? DS4_QK_K : DS4_QK8_0), a.groups = groups, a.n_tok = n_tok;
    a.act = (const uint8_t *)act, a.act_row = k_act_row_bytes(w->type, K), a.y = y, a.y_stride = y_stride;
    a.blocks1 = UINT32_MAX;
    return a;
}

template <uint32_t TYPE, int TT> __global__ void qlinear_kernel(qlin_args a) {
    pdl_enter();
    uint64_t r = (uint64_t)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (r >= a.n_rows) return;
    uint32_t g = blockIdx.y;
    const uint8_t *wrow = a.w + (a.r0 + g * a.n_rows + r) * a.row_bytes;
    float *y = a.y + g * a.n_rows + r;
    int lane = threadIdx.x & 31;
    for (uint32_t t0 = 0; t0 < a.n_tok; t0 += TT) {
        int nt = a.n_tok - t0 < TT ? (int)(a.n_tok - t0) : TT;
        const uint8_t *ar[TT];
        float acc[TT];
#pragma unroll
        for (int tt = 0; tt < TT; tt++) ar[tt] = a.act + ((uint64_t)(t0 + (tt < nt ? tt : 0)) * a.groups + g) * a.act_row;
        qdot_tile<TYPE, TT>(wrow, a.nb, ar, nt, acc);
#pragma unroll
        for (int tt = 0; tt < TT; tt++)
            if (tt < nt && lane == tt) y[(uint64_t)(t0 + tt) * a.y_stride] = acc[tt];
    }
}

/* POST: the variant that ends in the mHC post step of 4 streams (a.mhc_X;
 * its own instance, since the step's registers cost the other products
 * occupancy) */
template <uint32_t TYPE, int TT, bool POST = false, int NBUF = 2>
__global__ void qlinear_staged_kernel(qlin_args a, uint32_t rpw) {
    pdl_enter();
    extern __shared__ __align__(16) uint8_t sm[];
    uint32_t warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = blockIdx.y, bx = blockIdx.x;
    if (bx >= a.blocks1) /* the second matrix (one group, from row 0) */
        bx -= a.blocks1, a.w = a.w2, a.n_rows = a.n_rows2, a.y = a.y2, a.r0 = 0;
    uint64_t r0 = ((uint64_t)bx * ROWS_PER_BLOCK + warp) * rpw;
    uint32_t nr = r0 >= a.n_rows ? 0 : (uint32_t)(a.n_rows - r0 < rpw ? a.n_rows - r0 : rpw);
    const uint8_t *w = a.w + (a.r0 + g * a.n_rows + r0) * a.row_bytes;
    uint8_t *sbuf = sm + TT * staged_act_row<TYPE>(a.act_row) + warp * NBUF * chunk_of<TYPE>::WB;
    uint8_t *tab = sm + TT * staged_act_row<TYPE>(a.act_row) + ROWS_PER_BLOCK * NBUF * chunk_of<TYPE>::WB;
    stage_tables<TYPE>(tab);
    for (uint32_t t0 = 0; t0 < a.n_tok; t0 += TT) {
        int nt = a.n_tok - t0 < TT ? (int)(a.n_tok - t0) : TT;
        const uint8_t *ar[TT];
#pragma unroll
        for (int tt = 0; tt < TT; tt++) ar[tt] = a.act + ((uint64_t)(t0 + (tt < nt ? tt : 0)) * a.groups + g) * a.act_row;
        __syncthreads(); /* the previous tile's activations are consumed */
        stage_act_for<TYPE>(sm, ar, nt, a.act_row);
        __syncthreads();
        warp_rows<TYPE, TT, 1, NBUF>(&w, a.row_bytes, nr, a.nb, sm, a.act_row, nt, sbuf, tab, [&](uint32_t i, float (*acc)[TT]) {
#pragma unroll
            for (int tt = 0; tt < TT; tt++)
                if (tt < nt && lane == tt) {
                    a.y[(uint64_t)(t0 + tt) * a.y_stride + g * a.n_rows + r0 + i] = acc[0][tt];
                    if (POST) mhc_post_at<4>(a.mhc_X, acc[0][0], a.mhc_post, a.mhc_comb, a.hc, (uint32_t)a.n_rows, 0, r0 + i);
                }
        });
    }
}

/* Dynamic shared memory beyond 48 KiB must be allowed per kernel (a host
 * call, made only for the large prefill tiles). */
template <class K> static void allow_smem(K kernel, uint32_t bytes) {
    if (bytes > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
}

/* A staged kernel over n_rows rows (times grid_y), its rows per warp
 * chosen for one wave. */
template <class K, class A>
static void launch_staged(K kernel, uint32_t smem, uint64_t n_rows, uint32_t grid_y, bool one_token, const A &a,
                          cudaStream_t st) {
    allow_smem(kernel, smem);
    /* Compute-heavy launches (token tiles, expert blocks) spread best as
     * many blocks of one row per warp; a single token against a dense
     * matrix streams long runs of rows per warp. */
    uint32_t rpw = one_token ? rows_per_warp(kernel, smem, n_rows, grid_y) : 1;
    dim3 g(div_up(n_rows, (uint64_t)ROWS_PER_BLOCK * rpw), grid_y);
    k_launch(kernel, g, 32 * ROWS_PER_BLOCK, smem, st, a, rpw);
}

/* The single-token staged product of a pair of matrices in one launch:
 * rows per warp for both together, the first's blocks, then the second's. */
template <uint32_t TYPE> static void launch_qlinear_pair(qlin_args a, cudaStream_t st) {
    auto kernel = qlinear_staged_kernel<TYPE, 1>;
    uint32_t smem = staged_smem<TYPE, 1, 1>(a.act_row);
    allow_smem(kernel, smem);
    uint32_t rpw = rows_per_warp(kernel, smem, a.n_rows + a.n_rows2, 1);
    a.blocks1 = (uint32_t)div_up(a.n_rows, (uint64_t)ROWS_PER_BLOCK * rpw);
    unsigned blocks = a.blocks1 + (unsigned)div_up(a.n_rows2, (uint64_t)ROWS_PER_BLOCK * rpw);
    k_launch(kernel, dim3(blocks, 1), 32 * ROWS_PER_BLOCK, smem, st, a, rpw);
}

template <uint32_t TYPE> static void launch_qlinear(const qlin_args &a, cudaStream_t st) {
    dim3 grid(div_up(a.n_rows, ROWS_PER_BLOCK), a.groups);
    if (stageable<TYPE>(a.w, a.row_bytes, a.act_row)) {
        if (a.n_tok == 1)
            if (a.mhc_X) /* out_b: long rows on few resident warps (the post step's registers): four buffers
                          * a warp keep enough of them in flight (bench/cuda-h100-decode.md) */
                launch_staged(qlinear_staged_kernel<TYPE, 1, true, 4>, staged_smem<TYPE, 1, 1, 4>(a.act_row), a.n_rows, a.groups, true, a, st);
            else
                launch_staged(qlinear_staged_kernel<TYPE, 1>, staged_smem<TYPE, 1, 1>(a.act_row), a.n_rows, a.groups, true, a, st);
        else
            launch_staged(qlinear_staged_kernel<TYPE, 4>, staged_smem<TYPE, 4, 1>(a.act_row), a.n_rows, a.groups, false, a, st);
        return;
    }
    if (a.n_tok == 1) k_launch(qlinear_kernel<TYPE, 1>, grid, 32 * ROWS_PER_BLOCK, 0, st, a);
    else k_launch(qlinear_kernel<TYPE, 4>, grid, 32 * ROWS_PER_BLOCK, 0, st, a);
}

#define QTYPE_SWITCH(type, CALL)                                 \
    switch (type) {                                              \
    case GGML_TYPE_Q8_0: CALL(GGML_TYPE_Q8_0); break;            \
    case GGML_TYPE_Q2_K: CALL(GGML_TYPE_Q2_K); break;            \
    case GGML_TYPE_Q4_K: CALL(GGML_TYPE_Q4_K); break;            \
    case GGML_TYPE_IQ2_XXS: CALL(GGML_TYPE_IQ2_XXS); break;      \
    case GGML_TYPE_MXFP4: CALL(GGML_TYPE_MXFP4); break;          \
    default: return cudaErrorInvalidValue;                       \
    }

cudaError_t k_qlinear(cudaStream_t st, const ds4_tensor *w, uint64_t r0, uint64_t n_rows, uint32_t groups,
                      uint64_t x_group, const float *x, uint64_t x_stride, const float *xscale, uint32_t n_tok, float *y,
                      uint64_t y_stride, void *act) {
    if (n_tok == 0 || n_rows == 0) return cudaSuccess;
    uint32_t K = (uint32_t)w->ne[0];
    cudaError_t e;
    if (n_tok >= 2 && k_mmq_usable(w->type, w->data, w->row_bytes, K)) {
        if (x) {
            e = k_quantize_split(st, w->type, x, x_stride, x_group, xscale, K, groups, n_tok, act);
            if (e != cudaSuccess) return e;
        }
        return k_mmq_linear(st, w, r0, n_rows, groups, act, n_tok, y, y_stride, iq2_table());
    }
    if (x) {
        e = k_quantize_act(st, w->type, x, x_stride, x_group, xscale, K, groups, n_tok, act);
        if (e != cudaSuccess) return e;
    }
    qlin_args a = qlin_of(w, r0, n_rows, groups, n_tok, act, y, y_stride);
#define QL(T) launch_qlinear<T>(a, st)
    QTYPE_SWITCH(w->type, QL)
#undef QL
    return LAUNCH_STATUS();
}

/* Whether the staged kernels take w's rows against activation rows of
 * act_row bytes (stageable for w's type). */
static bool stageable_rows(const ds4_tensor *w, uint64_t act_row) {
    switch (w->type) {
    case GGML_TYPE_Q8_0: return stageable<GGML_TYPE_Q8_0>(w->data, w->row_bytes, act_row);
    case GGML_TYPE_Q2_K: return stageable<GGML_TYPE_Q2_K>(w->data, w->row_bytes, act_row);
    case GGML_TYPE_Q4_K: return stageable<GGML_TYPE_Q4_K>(w->data, w->row_bytes, act_row);
    case GGML_TYPE_IQ2_XXS: return stageable<GGML_TYPE_IQ2_XXS>(w->data, w->row_bytes, act_row);
    case GGML_TYPE_MXFP4: return stageable<GGML_TYPE_MXFP4>(w->data, w->row_bytes, act_row);
    default: return false;
    }
}

cudaError_t k_qlinear_post(cudaStream_t st, const ds4_tensor *w, const float *x, void *act, float *y, float *X,
                           const float *post, const float *comb, uint32_t hc) {
    uint32_t K = (uint32_t)w->ne[0], E = (uint32_t)w->ne[1];
    uint64_t act_row = k_act_row_bytes(w->type, K);
    bool staged = stageable_rows(w, act_row);
    cudaError_t e = cudaSuccess;
    if (!staged || hc != 4) { /* two launches (one: the published 4 streams) */
        e = k_qlinear(st, w, 0, E, 1, 0, x, K, NULL, 1, y, E, act);
        return e != cudaSuccess ? e : k_mhc_post(st, X, y, post, comb, 1, hc, E);
    }
    if (x && (e = k_quantize_act(st, w->type, x, K, 0, NULL, K, 1, 1, act)) != cudaSuccess) return e;
    qlin_args a = qlin_of(w, 0, E, 1, 1, act, y, E);
    a.mhc_X = X, a.mhc_post = post, a.mhc_comb = comb, a.hc = hc;
#define QL(T) launch_qlinear<T>(a, st)
    QTYPE_SWITCH(w->type, QL)
#undef QL
    return LAUNCH_STATUS();
}

cudaError_t k_qlinear_pair(cudaStream_t st, const ds4_tensor *w1, float *y1, const ds4_tensor *w2, float *y2, const float *x,
                           void *act) {
    uint32_t K = (uint32_t)w1->ne[0];
    bool one = w2->type == w1->type && w2->ne[0] == w1->ne[0] && w2->row_bytes == w1->row_bytes;
    uint64_t act_row = k_act_row_bytes(w1->type, K);
    bool staged = stageable_rows(w1, act_row) && stageable_rows(w2, act_row);
    if (!one || !staged) { /* two launches, the second on the first's activations */
        cudaError_t e = k_qlinear(st, w1, 0, w1->ne[1], 1, 0, x, K, NULL, 1, y1, w1->ne[1], act);
        return e != cudaSuccess ? e
                                : k_qlinear(st, w2, 0, w2->ne[1], 1, 0, w2->type == w1->type && w2->ne[0] == K ? NULL : x, K,
                                            NULL, 1, y2, w2->ne[1], act);
    }
    if (x) {
        cudaError_t e = k_quantize_act(st, w1->type, x, K, 0, NULL, K, 1, 1, act);
        if (e != cudaSuccess) return e;
    }
    qlin_args a = qlin_of(w1, 0, w1->ne[1], 1, 1, act, y1, w1->ne[1]);
    a.w2 = w2->data, a.n_rows2 = w2->ne[1], a.y2 = y2;
#define QP(T) launch_qlinear_pair<T>(a, st)
    QTYPE_SWITCH(w1->type, QP)
#undef QP
    return LAUNCH_STATUS();
}

/* ---- experts ------------------------------------------------------------------------------ */

typedef struct qffn_args {
    const uint8_t *w0, *w1;
    uint64_t row_bytes, rows;
    uint32_t nb, n_expert, k, n;
    const int32_t *grp;
    const uint8_t *act; /* up: one row per token; down: one row per h row */
    uint64_t act_row;
    float limit;
    float *y;
    uint32_t j0;
    const uint8_t *const *wtab;
    /* Optional: the activations as floats (rows of nb blocks' values, xf_rows
     * of them) not yet quantized into act. The single-token kernel
     * quantizes its row itself (a quantizer's launch saved); launch_qffn
     * quantizes them into act for the other kernels. */
    const float *xf;
    uint32_t xf_rows;
} qffn_args;

/* Activation rows of entries m..m+nt of an expert's group: up reads its
 * token's row (member / k), down the entry's own h row. */
template <bool UP> __device__ __forceinline__ uint32_t expert_act_row(const qffn_args &a, const int32_t *members, uint32_t i) {
    return members && UP ? (uint32_t)members[i] / a.k : i;
}
template <int TT, bool UP>
__device__ __forceinline__ void expert_act_rows(const qffn_args &a, const int32_t *members, uint32_t m, int nt,
                                                const uint8_t **ar) {
#pragma unroll
    for (int tt = 0; tt < TT; tt++) ar[tt] = a.act + (uint64_t)expert_act_row<UP>(a, members, m + (tt < nt ? tt : 0)) * a.act_row;
}

template <uint32_t TYPE, int TT, bool UP> __global__ void qffn_kernel(qffn_args a) {
    pdl_enter();
    expert_warp_rows<TT, UP, ROWS_PER_BLOCK>(
        a, [&](const uint8_t *w0, const uint8_t *w1, const int32_t *members, uint32_t m, int nt, float *g, float *u) {
            const uint8_t *ar[TT];
            expert_act_rows<TT, UP>(a, members, m, nt, ar);
            qdot_tile<TYPE, TT>(w0, a.nb, ar, nt, g);
            if (UP) qdot_tile<TYPE, TT>(w1, a.nb, ar, nt, u);
        });
}

template <uint32_t TYPE, int TT, bool UP> __global__ void qffn_staged_kernel(qffn_args a, uint32_t rpw) {
    pdl_enter();
    extern __shared__ __align__(16) uint8_t sm[];
    constexpr int NM = UP ? 2 : 1;
    uint32_t warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    uint64_t r0 = ((uint64_t)blockIdx.x * ROWS_PER_BLOCK + warp) * rpw;
    uint32_t nr = r0 >= a.rows ? 0 : (uint32_t)(a.rows - r0 < rpw ? a.rows - r0 : rpw);
    uint32_t e, m0, cnt;
    const int32_t *members;
    if (!expert_slot(a, blockIdx.y, &e, &m0, &cnt, &members)) return; /* the whole block */
    const uint8_t *w[2] = {nullptr, nullptr};
    w[0] = expert_row<UP>(a, e, nr ? (uint32_t)r0 : 0, &w[1]);
    uint8_t *sbuf = sm + TT * staged_act_row<TYPE>(a.act_row) + warp * 2 * NM * chunk_of<TYPE>::WB;
    uint8_t *tab = sm + TT * staged_act_row<TYPE>(a.act_row) + ROWS_PER_BLOCK * 2 * NM * chunk_of<TYPE>::WB;
    stage_tables<TYPE>(tab);
    for (uint32_t i0 = 0; i0 < cnt; i0 += TT) {
        int nt = cnt - i0 < TT ? (int)(cnt - i0) : TT;
        const uint8_t *ar[TT];
        expert_act_rows<TT, UP>(a, members, m0 + i0, nt, ar);
        __syncthreads();
        stage_act_for<TYPE>(sm, ar, nt, a.act_row);
        __syncthreads();
        warp_rows<TYPE, TT, NM>(w, a.row_bytes, nr, a.nb, sm, a.act_row, nt, sbuf, tab, [&](uint32_t i, float (*acc)[TT]) {
#pragma unroll
            for (int tt = 0; tt < TT; tt++) {
                if (tt < nt && lane == tt) {
                    float v = acc[0][tt];
                    if (UP) v = swiglu_clamped(v, acc[NM - 1][tt], a.limit);
                    a.y[(uint64_t)(m0 + i0 + tt) * a.rows + r0 + i] = v;
                }
            }
        });
    }
}

/* ---- single-token experts (decode) -------------------------------------------------
 * The decode step's routed products (IQ2_XXS gate/up, Q2_K down: 6 experts
 * of a token) run one warp per row with the lane split of qdot_range (lane
 * sub = lane % 8 takes 32 values of block 4 j + lane / 8), but everything
 * that does not depend on the row is done once per warp: the lane's
 * activation values stay in registers over all its rows, and the lane
 * block sums of a row are combined with a reduce-scatter (each lane ends
 * with the whole integer sums of one block), whose float results are
 * added by one lane in ascending block order through shared memory: the
 * same integers, the same float expressions (qb::finish) and the same
 * order as qdot_range, so the same bits, with a fraction of the shuffles.
 *
 * IQ2_XXS values are decoded with byte permutes from selector tables (see
 * d_iq2_dec) instead of grid bytes, sign bytes and masks. The lookups are
 * random, and shared memory serves one word per bank per cycle: with one
 * copy of a table a warp's lookup costs about 3.5 cycles of conflicts, so
 * the tables are replicated DEC_COPIES (32) times, interleaved, and lane
 * l reads copy l (conflict-free). */
#define DEC_WARPS 8

/* dp4a of unsigned bytes a (Q2_K values shifted in place, up to 192) and
 * signed bytes b: exact, like __dp4a. */
__device__ __forceinline__ int dp4a_us(uint32_t a, int b, int c) {
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

/* Reduce-scatter over the 8 lanes of a block (xor 4, 2, 1) of U units of
 * W ints: afterwards v[0] holds, on every lane, the sum over the 8 lanes of
 * unit dec_unit<U>(sub). Integer sums: any order gives the same result. */
template <int U, int W> __device__ __forceinline__ void dec_reduce(int (*v)[W], uint32_t sub) {
    int n = U;
#pragma unroll
    for (int o = 4; o >= 1; o >>= 1) {
        if (n >= 2) {
            bool hi = (sub & o) != 0;
#pragma unroll
            for (int i = 0; i < U / 2; i++) {
                if (i >= n / 2) break;
#pragma unroll
                for (int w = 0; w < W; w++) {
                    int send = hi ? v[i][w] : v[n / 2 + i][w];
                    int keep = hi ? v[n / 2 + i][w] : v[i][w];
                    v[i][w] = keep + __shfl_xor_sync(0xffffffffu, send, o);
                }
            }
            n /= 2;
        } else {
#pragma unroll
            for (int w = 0; w < W; w++) v[0][w] += __shfl_xor_sync(0xffffffffu, v[0][w], o);
        }
    }
}
template <int U> __device__ __forceinline__ uint32_t dec_unit(uint32_t sub) {
    return U == 8 ? sub : U == 4 ? ((sub >> 2) & 1) * 2 + ((sub >> 1) & 1) : U == 2 ? (sub >> 2) & 1 : 0;
}

template <uint32_t TYPE> struct dec_of {
    static constexpr uint32_t BYTES = qb<TYPE>::BYTES;
    static constexpr int W = TYPE == GGML_TYPE_Q2_K ? 2 : 1; /* ints per block sum: isum (and msum) */
};

/* Shared memory: the IQ2_XXS tables, the activation row, then per warp two
 * buffers of NM rows of nb blocks and 32 floats of block results. */
template <uint32_t TYPE, int NM, int NBUF> static uint32_t dec_smem(uint64_t act_row, uint32_t nb) {
    return (uint32_t)act_row + DEC_WARPS * (NBUF * NM * nb * qb<TYPE>::BYTES + 32 * 4) +
           (TYPE == GGML_TYPE_IQ2_XXS ? IQ2_DEC_WORDS * 4 * DEC_COPIES : 0);
}

template <uint32_t TYPE, bool UP, int NJ, int NBUF>
__global__ void __launch_bounds__(32 * DEC_WARPS) qffn_dec_kernel(qffn_args a, uint32_t rpw) {
    extern __shared__ __align__(16) uint8_t sm[];
    /* the tables first: their lookups then address shared memory by
     * constant offsets plus one shifted and masked index. No kernel writes
     * them, so their copy (48 KB from L2) starts before the wait for the
     * kernel in front and overlaps its end. */
    constexpr uint32_t CP = DEC_COPIES, TB = TYPE == GGML_TYPE_IQ2_XXS ? IQ2_DEC_WORDS * 4 * CP : 0;
    uint32_t pos = IQ2_POS;
    if constexpr (TB != 0) {
        for (uint32_t i = threadIdx.x; i < TB / 16; i += blockDim.x) cp_async16(sm + 16 * i, d_iq2_dec + i);
        cp_async_commit();
        pos = *(volatile const uint32_t *)&d_iq2_pos;
    }
    pdl_enter();
    constexpr int NM = UP ? 2 : 1, U = NM * NJ, W = dec_of<TYPE>::W;
    constexpr uint32_t NB = 4 * NJ, BY = qb<TYPE>::BYTES, RB = NB * BY, ABY = act_of<TYPE>::BYTES;
    static_assert(U <= 8 && RB % 16 == 0, "unit count or row size");
    const uint32_t warp = threadIdx.x >> 5, lane = threadIdx.x & 31, sub = lane & 7, q = lane >> 3;
    uint32_t e, m0, cnt;
    const int32_t *members;
    if (!expert_slot(a, blockIdx.y, &e, &m0, &cnt, &members) || cnt == 0) { /* the whole block */
        cp_async_wait_all(); /* no copy outlives the block */
        return;
    }
    uint64_t r0 = ((uint64_t)blockIdx.x * DEC_WARPS + warp) * rpw;
    uint32_t nr = r0 >= a.rows ? 0 : (uint32_t)(a.rows - r0 < rpw ? a.rows - r0 : rpw);
    uint8_t *sact = sm + TB;
    uint8_t *wbuf = sm + TB + a.act_row + warp * (NBUF * NM * RB + 32 * 4);
    float *sres = (float *)(wbuf + NBUF * NM * RB);
    const uint8_t *w[2] = {nullptr, nullptr};
    w[0] = expert_row<UP>(a, e, nr ? (uint32_t)r0 : 0, &w[1]);

    /* row i goes to buffer i % NBUF; every call commits one group (empty
     * past the last row), so waiting for all but NBUF - 1 groups means row
     * i has landed. The NM rows' 16-byte lines are one unrolled run over
     * the lanes: a loop per row with its bounds was about 130 of the 800
     * instructions of a gate/up row pair. */
    auto issue = [&](uint32_t i) {
        if (i < nr) {
            uint8_t *dst = wbuf + (i % NBUF) * NM * RB;
            constexpr uint32_t L = RB / 16, N = NM * L;
#pragma unroll
            for (uint32_t k = 0; k < (N + 31) / 32; k++) {
                uint32_t l = lane + 32 * k, m = l >= L;
                if (l < N) cp_async16(dst + 16 * l, (m ? w[1] : w[0]) + i * a.row_bytes + 16 * (l - m * L));
            }
        }
        cp_async_commit();
    };
    /* the first rows are in flight while the block stages the activations and tables */
#pragma unroll
    for (int b = 0; b < NBUF - 1; b++) issue(b);
    if (a.xf) {
        /* the row's Q8_K blocks, a warp each, as quant_q8_K_kernel makes them */
        const float *xr = a.xf + (uint64_t)expert_act_row<UP>(a, members, m0) * a.nb * DS4_QK_K;
        for (uint32_t b = warp; b < a.nb; b += DEC_WARPS) {
            const float4 *p = (const float4 *)(xr + b * DS4_QK_K + 8 * lane);
            float4 u = p[0], v = p[1];
            float x[8] = {u.x, u.y, u.z, u.w, v.x, v.y, v.z, v.w};
            ds4_block_q8_K *blk = (ds4_block_q8_K *)sact + b;
            q8_K_lane(x, blk->qs, blk->bsums, &blk->d);
        }
    } else {
        const uint8_t *ar;
        expert_act_rows<1, UP>(a, members, m0, 1, &ar);
        stage_act(sact, &ar, 1, a.act_row);
    }
    if constexpr (TB != 0) cp_async_wait_keep<NBUF - 1>(); /* the tables (committed before the rows) */
    __syncthreads();
    if (!nr) return;

    /* the lane's activations: 32 values of blocks 4 j + q, and what finish needs */
    int A[NJ][8];
    int bs[NJ][2]; /* Q2_K: the 16-value sums of sub-blocks 2 sub, 2 sub + 1 */
#pragma unroll
    for (int j = 0; j < NJ; j++) {
        const uint8_t *ab = sact + (4 * j + q) * ABY;
#pragma unroll
        for (int i = 0; i < 8; i++) A[j][i] = *(const int *)(ab + 4 + 32 * sub + 4 * i);
        if constexpr (TYPE == GGML_TYPE_Q2_K) {
            uint32_t v = *(const uint32_t *)(ab + 4 + 256 + 4 * sub);
            bs[j][0] = (int16_t)(v & 0xffff), bs[j][1] = (int16_t)(v >> 16);
        }
    }
    const uint32_t u = dec_unit<U>(sub), um = u / NJ, ub = 4 * (u % NJ) + q; /* the block this lane finishes */
    const uint8_t *aub = sact + ub * ABY;
    /* table word w, copy lane, at byte (w << L) | lb */
    constexpr uint32_t L = 7;
    static_assert(CP == 32, "one copy per lane");
    const uint32_t lb = lane * 4;

    for (uint32_t i = 0; i < nr; i++) {
        issue(i + NBUF - 1);
        cp_async_wait_keep<NBUF - 1>();
        __syncwarp();
        const uint8_t *cur = wbuf + (i % NBUF) * NM * RB;
        int v[U][W];
#pragma unroll
        for (int m = 0; m < NM; m++)
#pragma unroll
            for (int j = 0; j < NJ; j++) {
                const uint8_t *blk = cur + m * RB + (4 * j + q) * BY;
                if constexpr (TYPE == GGML_TYPE_IQ2_XXS) {
                    /* the group's 8 bytes (2-byte aligned): 4 grid indices, then signs and scale */
                    /* (by offset from sm, which is 16-byte aligned: the
                     * loads stay shared-memory loads) */
                    uint32_t off = (uint32_t)(blk + 2 + 8 * sub - sm);
                    const uint32_t *pw = (const uint32_t *)(sm + (off & ~3u));
                    uint32_t sh = 8 * (off & 3), w0 = pw[0], w1 = pw[1], w2 = pw[2];
                    uint32_t lo = __funnelshift_r(w0, w1, sh), aux = __funnelshift_r(w1, w2, sh);
                    int s = 0;
#pragma unroll
                    for (int k = 0; k < 4; k++) {
                        /* (field << L) | lb, the field being grid index k (byte k of lo) and sign index k (bits 7 k.. of aux) */
                        uint32_t go = ((8 * k >= (int)L ? lo >> (8 * k - L) : lo << (L - 8 * k)) & (255u << L)) | lb;
                        uint32_t so = ((7 * k >= (int)L ? aux >> (7 * k - L) : aux << (L - 7 * k)) & (127u << L)) | lb;
                        uint32_t sel = *(const uint32_t *)(sm + go) | *(const uint32_t *)(sm + 256 * 4 * CP + so);
                        s = __dp4a((int)iq2_signed(sel, pos), A[j][2 * k], s);
                        s = __dp4a((int)iq2_signed(sel >> 16, pos), A[j][2 * k + 1], s);
                    }
                    v[m * NJ + j][0] = (int)(2 * (aux >> 28) + 1) * s;
                } else { /* Q2_K: sub-blocks 2 sub, 2 sub + 1 (values 32 (sub / 4).., bits 2 (sub % 4)) */
                    const uint32_t *qs = (const uint32_t *)(blk + 16 + 32 * (sub >> 2));
                    const uint32_t sh = 2 * (sub & 3), mask = 0x03030303u << sh;
                    uint32_t scw = ld16(blk + 2 * sub);
                    int is = 0, ms = 0;
#pragma unroll
                    for (int kk = 0; kk < 2; kk++) {
                        int s = 0;
#pragma unroll
                        for (int l = 0; l < 4; l++) s = dp4a_us(qs[4 * kk + l] & mask, A[j][4 * kk + l], s);
                        s >>= sh; /* every term was a multiple of 2^sh */
                        uint32_t sc = (scw >> (8 * kk)) & 255;
                        is += (int)(sc & 15) * s;
                        ms += (int)(sc >> 4) * bs[j][kk];
                    }
                    v[m * NJ + j][0] = is, v[m * NJ + j][1] = ms;
                }
            }
        dec_reduce<U, W>(v, sub);
        /* this lane's block result (lanes holding the same unit agree) */
        const uint8_t *wb = cur + um * RB + ub * BY;
        float t = qb<TYPE>::finish(wb, aub, v[0][0], v[0][W - 1]);
        sres[um * NB + ub] = t;
        __syncwarp();
        float acc = 0.0f;
        if (lane < NM) {
            const float4 *r4 = (const float4 *)(sres + lane * NB);
#pragma unroll
            for (uint32_t b = 0; b < NB / 4; b++) {
                float4 x = r4[b];
                acc += x.x;
                acc += x.y;
                acc += x.z;
                acc += x.w;
            }
        }
        if (UP) {
            float up = __shfl_sync(0xffffffffu, acc, 1);
            if (lane == 0) a.y[(uint64_t)m0 * a.rows + r0 + i] = swiglu_clamped(acc, up, a.limit);
        } else if (lane == 0) {
            a.y[(uint64_t)m0 * a.rows + r0 + i] = acc;
        }
        __syncwarp(); /* sres and this buffer are rewritten next */
    }
}

/* The decode kernel for a single token where it applies (IQ2_XXS or Q2_K
 * rows of 8 or 16 blocks, staged); false: use the general kernels. */
template <uint32_t TYPE, bool UP> static bool launch_dec(const qffn_args &a, uint32_t slots, cudaStream_t st) {
    /* the published q2 mix: IQ2_XXS gate/up, Q2_K down (others: the general kernels) */
    if constexpr ((TYPE != GGML_TYPE_IQ2_XXS || !UP) && (TYPE != GGML_TYPE_Q2_K || UP)) {
        (void)a, (void)slots, (void)st;
        return false;
    } else {
        static int off = -1; /* DS4_CUDA_NO_DEC: the general kernels, for comparison */
        if (off < 0) off = getenv("DS4_CUDA_NO_DEC") != nullptr;
        if (off) return false;
        auto go = [&](auto kernel, uint32_t smem) {
            allow_smem(kernel, smem);
            /* one wave of resident blocks, the rows split evenly */
            uint32_t rpw = rows_per_warp(kernel, smem, a.rows, slots, DEC_WARPS, UINT64_MAX);
            dim3 g(div_up(a.rows, (uint64_t)DEC_WARPS * rpw), slots);
            k_launch(kernel, g, 32 * DEC_WARPS, smem, st, a, rpw);
        };
        /* IQ2_XXS tables in 32 copies and two row buffers per warp: 16
         * copies and 3 or 4 buffers measured slower (bench/cuda-h100-decode.md) */
        constexpr int NM = UP ? 2 : 1, NB = 2;
        if (a.nb == 16) go(qffn_dec_kernel<TYPE, UP, 4, NB>, dec_smem<TYPE, NM, NB>(a.act_row, 16));
        else if (a.nb == 8) go(qffn_dec_kernel<TYPE, UP, 2, NB>, dec_smem<TYPE, NM, NB>(a.act_row, 8));
        else return false;
        return true;
    }
}

template <uint32_t TYPE, bool UP> static cudaError_t launch_qffn(qffn_args a, uint32_t slots, cudaStream_t st) {
    dim3 grid(div_up(a.rows, ROWS_PER_BLOCK), slots);
    /* bank slots and the offsets of up and down in them are 256-byte aligned */
    bool staged = a.wtab ? stageable<TYPE>(nullptr, a.row_bytes, a.act_row)
                         : stageable<TYPE>(a.w0, a.row_bytes, a.act_row) && (!UP || (uintptr_t)a.w1 % 16 == 0);
    /* the single-token kernel quantizes a.xf's rows itself (Q8_K rows in
     * 16-byte lines: whole blocks of 256 floats) */
    bool dec_xf = !a.xf || (act_is_q8k(TYPE) && (uintptr_t)a.xf % 16 == 0);
    if (staged && a.n == 1 && dec_xf && launch_dec<TYPE, UP>(a, slots, st)) return cudaSuccess;
    if (a.xf) {
        uint32_t K = a.nb * (act_is_q8k(TYPE) ? DS4_QK_K : DS4_QK8_0);
        cudaError_t e = k_quantize_act(st, TYPE, a.xf, K, 0, NULL, K, 1, a.xf_rows, (void *)a.act);
        if (e != cudaSuccess) return e;
        a.xf = nullptr;
    }
    if (staged) {
        constexpr int NM = UP ? 2 : 1;
        /* gate/up: one row per warp, since they are bound by the block
         * arithmetic (IQ2_XXS grid lookups), which wants every warp slot */
        if (a.n == 1)
            launch_staged(qffn_staged_kernel<TYPE, 1, UP>, staged_smem<TYPE, 1, NM>(a.act_row), a.rows, slots, !UP, a, st);
        else
            launch_staged(qffn_staged_kernel<TYPE, 4, UP>, staged_smem<TYPE, 4, NM>(a.act_row), a.rows, slots, false, a, st);
        return cudaSuccess;
    }
    if (a.n == 1) k_launch(qffn_kernel<TYPE, 1, UP>, grid, 32 * ROWS_PER_BLOCK, 0, st, a);
    else k_launch(qffn_kernel<TYPE, 4, UP>, grid, 32 * ROWS_PER_BLOCK, 0, st, a);
    return cudaSuccess;
}

cudaError_t k_qffn_up(cudaStream_t st, const ds4_tensor *gate, const ds4_tensor *up, const int32_t *grp, uint32_t k,
                      uint32_t n, uint32_t j0, uint32_t max_slots, const uint8_t *const *wtab, const float *x, float limit,
                      float *h, void *act) {
    if (n == 0 || max_slots == 0) return cudaSuccess;
    if (gate->type != up->type || gate->row_bytes != up->row_bytes) return cudaErrorInvalidValue;
    uint32_t K = (uint32_t)gate->ne[0];
    cudaError_t e;
    if (x && n >= 2 && k_mmq_usable(gate->type, wtab ? nullptr : gate->data, gate->row_bytes, K) &&
        (wtab || (uintptr_t)up->data % 16 == 0)) {
        e = k_quantize_split(st, gate->type, x, K, 0, NULL, K, 1, n, act);
        if (e != cudaSuccess) return e;
        return k_mmq_ffn(st, true, gate, up, grp, k, n, j0, max_slots, wtab, act, n, limit, h, iq2_table());
    }
    if (x) { /* else act holds the rows already, in the activation block layout */
        e = k_quantize_act(st, gate->type, x, K, 0, NULL, K, 1, n, act);
        if (e != cudaSuccess) return e;
    }
    uint32_t qk = act_is_q8k(gate->type) ? DS4_QK_K : DS4_QK8_0;
    qffn_args a = {gate->data, up->data, gate->row_bytes, gate->ne[1], K / qk, (uint32_t)gate->ne[2], k, n, grp,
                   (const uint8_t *)act, k_act_row_bytes(gate->type, K), limit, h, j0, wtab, nullptr, 0};
    uint32_t slots = grp ? max_slots : 1;
#define QU(T) e = launch_qffn<T, true>(a, slots, st)
    QTYPE_SWITCH(gate->type, QU)
#undef QU
    return e != cudaSuccess ? e : LAUNCH_STATUS();
}

cudaError_t k_qffn_down(cudaStream_t st, const ds4_tensor *down, const int32_t *grp, uint32_t k, uint32_t n, uint32_t j0,
                        uint32_t max_slots, const uint8_t *const *wtab, const float *h, float *out, void *act) {
    if (n == 0 || max_slots == 0) return cudaSuccess;
    uint32_t K = (uint32_t)down->ne[0];
    uint32_t rows_h = grp ? n * k : n; /* h rows: one per member (routed) or per token */
    cudaError_t e;
    if (n >= 2 && k_mmq_usable(down->type, wtab ? nullptr : down->data, down->row_bytes, K)) {
        e = k_quantize_split(st, down->type, h, K, 0, NULL, K, 1, rows_h, act);
        if (e != cudaSuccess) return e;
        return k_mmq_ffn(st, false, down, NULL, grp, k, n, j0, max_slots, wtab, act, rows_h, 0.0f, out, iq2_table());
    }
    /* h's rows go to launch_qffn as floats: a single token's kernel
     * quantizes them itself, the others after a quantizer's launch */
    uint32_t qk = act_is_q8k(down->type) ? DS4_QK_K : DS4_QK8_0;
    qffn_args a = {down->data, nullptr, down->row_bytes, down->ne[1], K / qk, (uint32_t)down->ne[2], k, n, grp,
                   (const uint8_t *)act, k_act_row_bytes(down->type, K), 0.0f, out, j0, wtab, h, rows_h};
    uint32_t slots = grp ? max_slots : 1;
#define QD(T) e = launch_qffn<T, false>(a, slots, st)
    QTYPE_SWITCH(down->type, QD)
#undef QD
    return e != cudaSuccess ? e : LAUNCH_STATUS();
}

DS4_TRACE_EXPORT(k_quant)
