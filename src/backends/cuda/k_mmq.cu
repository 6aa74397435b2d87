/* Tensor-core products for prefill: Q8_0, Q2_K and IQ2_XXS weights against
 * activations quantized like the CPU's (Q8_0 or Q8_K values, in the split
 * layout of k_quantize_split), with mma.sync m16n8k32 (int8 x int8 into
 * exact int32 sums), for every product of two or more tokens.
 *
 * The integer sums are the ones of the dp4a kernels and of the scalar
 * reference: mma adds exact int8 products into int32, so a 32-value block
 * (Q8_0, IQ2_XXS) or a 256-value block with its sub-block scales folded into
 * the weights (Q2_K: scale * q <= 45 still fits int8) gives the same integer
 * as the reference. Scales then apply in the reference's float expressions,
 * and results add in the fixed order of docs/NUMERICS.md (a tree over the
 * eight Q8_0 blocks of every 256 values, then 256-value steps in ascending
 * order), which the single-token kernels of k_quant.cu follow too: a token's
 * result never depends on how many tokens shared its launch.
 *
 * A block of 4 warps takes 64 weight rows (16 per warp) and a tile of BN
 * tokens, and walks K in steps of 256 values: the weight rows' bytes of the
 * next step and the tokens' int8 values are copied to shared memory with
 * cp.async while the current step is multiplied. Each thread decodes the
 * IQ2_XXS or Q2_K bytes of its own A fragment straight into registers (no
 * decoded copy in shared memory: less shared memory per block, more blocks
 * per SM). Every step's copies are waited for by all threads before the
 * barrier that precedes the next step's copies. Needs sm_80 (k_mmq_usable
 * checks). */
#include <stdlib.h>
#include <string.h>

#include "backends/cuda/common.cuh"
#include "backends/cuda/kernels.cuh"

#define _Static_assert static_assert
extern "C" {
#include "formats/quant/blocks.h"
}
#undef _Static_assert

#define MM_ROWS 64
#define MM_THREADS 128
#define EXPERT_BN16_MAX 8
#define EXPERT_BN32_MAX 32
#define MM_XS (256 + 16) /* bytes per staged row of 256 int8 (the pad makes fragment loads conflict-free) */

/* Bytes per 256 values (SB) and the 16-byte lines that can cover them at
 * any 16-byte phase (RL); QKA: the activation block (scale granule), ND
 * of them per 256 values. */
template <uint32_t TYPE> struct mw;
template <> struct mw<GGML_TYPE_Q8_0> {
    static constexpr uint32_t SB = 8 * 34, RL = 17, QKA = 32, ND = 8;
};
template <> struct mw<GGML_TYPE_Q2_K> {
    static constexpr uint32_t SB = 84, RL = 7, QKA = 256, ND = 1;
};
template <> struct mw<GGML_TYPE_IQ2_XXS> {
    static constexpr uint32_t SB = 66, RL = 6, QKA = 256, ND = 1;
};

typedef struct mmq_args {
    const uint8_t *w0, *w1; /* dense: the matrix; experts: gate (or down) and up tensors */
    uint64_t row_bytes, rows; /* rows: per group (dense) or per expert */
    uint64_t r0;              /* dense: first row of group 0 */
    uint32_t K, groups, n_tok;
    act_split x; /* activation rows: dense t * groups + g; up: the token; down: the h row */
    float *y;
    uint64_t y_stride;
    /* experts (expert_slot / expert_row) */
    const int32_t *grp;
    uint32_t n_expert, k, n, j0;
    const uint8_t *const *wtab;
    float limit;
    const uint8_t *tab; /* IQ2_XXS grid and signs (device) */
} mmq_args;

/* c += A (16x32, rows g / g+8, k 4t.. / 16+4t..) . B (32x8) */
__device__ __forceinline__ void mma_s8(int *c, const int *a, const int *b) {
#if __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    (void)c, (void)a, (void)b;
    __trap(); /* never launched below sm_80 */
#endif
}

/* Shared memory of a block (see the layout in mmq_kernel). */
template <uint32_t TYPE> static constexpr uint32_t mmq_smem(int BN) {
    return 2 * MM_ROWS * mw<TYPE>::RL * 16 + 2 * BN * MM_XS + 2 * BN * mw<TYPE>::ND * 4 +
           (TYPE == GGML_TYPE_Q2_K ? 2 * BN * 16 * 2 : 0) + BN * 4 + (TYPE == GGML_TYPE_IQ2_XXS ? 256 * 8 + 128 : 0);
}

/* The A fragment (rows r, r + 8; values 4 t.. and 16 + 4 t.. of 32-value
 * block sub) decoded from the staged bytes p0 (row r) and p1 (row r + 8)
 * of a step, into registers: Q8_0 copies, Q2_K scale * q (the sub-block
 * scales folded in: at most 45), IQ2_XXS signed grid values (the block's
 * 2 ls + 1 goes to sc[0], sc[1]). Each thread decodes only what its own
 * fragment holds, so there is no decoded copy in shared memory. */
template <uint32_t TYPE>
__device__ __forceinline__ void frag_a(const uint8_t *p0, const uint8_t *p1, int sub, uint32_t t, const uint8_t *tab, int *A,
                                       int *sc) {
    const uint8_t *pr[2] = {p0, p1};
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const uint8_t *p = pr[h];
        if constexpr (TYPE == GGML_TYPE_Q8_0) {
            A[h] = ld_i8x4_a2(p + 34 * sub + 2 + 4 * t);
            A[2 + h] = ld_i8x4_a2(p + 34 * sub + 18 + 4 * t);
        } else if constexpr (TYPE == GGML_TYPE_Q2_K) {
            /* value i = 32 sub + v: (qs[32 (sub / 4) + v % 32] >> 2 (sub % 4)) & 3, sub-block i / 16 */
            const uint8_t *qs = p + 16 + 32 * (sub >> 2) + 4 * t; /* 4-byte aligned: the phase is */
            uint32_t sh = 2 * (sub & 3);
            A[h] = (int)(((*(const uint32_t *)qs >> sh) & 0x03030303u) * (uint32_t)(p[2 * sub] & 15));
            A[2 + h] = (int)(((*(const uint32_t *)(qs + 16) >> sh) & 0x03030303u) * (uint32_t)(p[2 * sub + 1] & 15));
        } else { /* IQ2_XXS: 8-value groups k = t / 2 and 2 + t / 2, half t % 2 */
            const uint8_t *qs = p + 2 + 8 * sub;
            uint32_t aux = (uint32_t)ld16(qs + 4) | ((uint32_t)ld16(qs + 6) << 16), half = t & 1;
#pragma unroll
            for (int q = 0; q < 2; q++) {
                uint32_t k = 2 * q + (t >> 1);
                uint32_t sg = tab[256 * 8 + ((aux >> (7 * k)) & 127)];
                uint32_t m = sign_mask4((sg >> (4 * half)) & 15);
                uint32_t gv = *(const uint32_t *)(tab + 8 * qs[k] + 4 * half);
                A[2 * q + h] = (int)__vsub4(gv ^ m, m);
            }
            sc[h] = (int)(2 * (aux >> 28) + 1);
        }
    }
}

/* Blocks per SM the register allocation must leave room for: 4 (128
 * registers a thread) where that needs no spills and shared memory allows
 * 4, else 3 for Q8_0 (its 64-token tiles' shared memory allows 3, and the
 * expert kernels spill at 128); 1: the compiler's choice. */
static constexpr int mmq_min_blocks(uint32_t type, int bn, int nm, int mode) {
    return type == GGML_TYPE_Q8_0 ? (bn == 64 || nm == 2 || (mode != 0 && bn == 32) ? 3 : 4)
                                  : (type == GGML_TYPE_IQ2_XXS && bn == 64 ? 4 : 1);
}

/* MODE 0: dense rows (groups in grid y); 1: expert gate and up with SwiGLU
 * (NM = 2); 2: expert down. The NM matrices of MODE 1 pass over K one after
 * the other (their results stay in registers), so shared memory holds one
 * matrix's rows and more blocks fit an SM. Dense rows and the shared expert
 * take token tiles in grid x and row blocks in grid z: the blocks of one
 * row block over all the tiles are launched together and read its weights
 * from L2 (with row blocks in x, every tile read them from memory again).
 * Routed experts: row blocks in grid x, experts in grid y. */
template <uint32_t TYPE, int BN, int NM, int MODE> __global__ void __launch_bounds__(MM_THREADS, mmq_min_blocks(TYPE, BN, NM, MODE)) mmq_kernel(mmq_args a) {
    pdl_enter();
    using F = mw<TYPE>;
    constexpr int NT = BN / 8;
    constexpr uint32_t RB = F::RL * 16, ND = F::ND;
    extern __shared__ __align__(16) uint8_t sm[];
    uint8_t *sraw = sm;                                          /* [2][64][RB] */
    uint8_t *sx = sraw + 2 * MM_ROWS * RB;                       /* [2][BN][MM_XS] */
    float *sxd = (float *)(sx + 2 * BN * MM_XS);                 /* [2][BN][ND] */
    int16_t *sbs = (int16_t *)(sxd + 2 * BN * ND);               /* Q2_K: [2][BN][16] */
    int *srow = (int *)(sbs + (TYPE == GGML_TYPE_Q2_K ? 2 * BN * 16 : 0)); /* [BN] */
    uint8_t *tab = (uint8_t *)(srow + BN);                       /* IQ2_XXS tables */

    uint32_t warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tg = lane & 3;
    const bool tiled = MODE == 0 || !a.grp;
    uint64_t rt = (uint64_t)(tiled ? blockIdx.z : blockIdx.x) * MM_ROWS;
    if (rt >= a.rows) return;
    uint32_t nr = a.rows - rt < MM_ROWS ? (uint32_t)(a.rows - rt) : MM_ROWS;
    const uint8_t *wb[NM];
    uint32_t m0 = 0, cnt = a.n_tok, gi = 0, t_first = 0, t_step = BN;
    const int32_t *members = nullptr;
    if constexpr (MODE == 0) {
        gi = blockIdx.y;
        wb[0] = a.w0 + (a.r0 + (uint64_t)gi * a.rows + rt) * a.row_bytes;
        t_first = blockIdx.x * BN;
        t_step = cnt; /* one tile */
    } else {
        uint32_t e;
        if (!expert_slot(a, blockIdx.y, &e, &m0, &cnt, &members)) return;
        if (!a.grp) { /* the shared expert: token tiles like dense rows */
            t_first = blockIdx.x * BN;
            t_step = cnt;
        }
        const uint8_t *up = nullptr;
        wb[0] = expert_row<MODE == 1>(a, e, (uint32_t)rt, &up);
        if constexpr (NM == 2) wb[1] = up;
    }
    if constexpr (TYPE == GGML_TYPE_IQ2_XXS)
        for (uint32_t i = threadIdx.x; i < (256 * 8 + 128) / 4; i += MM_THREADS) ((uint32_t *)tab)[i] = ((const uint32_t *)a.tab)[i];
    const uint32_t S = a.K / 256;
    const uint32_t r_lo = 16 * warp + g; /* this thread's rows: r_lo and r_lo + 8 */
    /* Q8_0 (whole lines per step: no phase): the weight lines this thread
     * copies at every step, line i = r RL + l of the block's rows at byte
     * r row_bytes + 16 l of the step's bytes (~0u: past the last row),
     * worked out once instead of at every step. */
    constexpr bool WHOLE = F::SB % 16 == 0;
    constexpr uint32_t CW = WHOLE ? (MM_ROWS * F::RL + MM_THREADS - 1) / MM_THREADS : 1;
    uint32_t wsrc[CW];
    if constexpr (WHOLE) {
#pragma unroll
        for (uint32_t k = 0; k < CW; k++) {
            uint32_t i = threadIdx.x + k * MM_THREADS, r = i / F::RL;
            wsrc[k] = i < MM_ROWS * F::RL && r < nr ? (uint32_t)(r * a.row_bytes) + 16 * (i % F::RL) : ~0u;
        }
    }

    for (uint32_t t0 = t_first; t0 < cnt; t0 += t_step) {
        uint32_t nt = cnt - t0 < BN ? cnt - t0 : BN;
        __syncthreads(); /* the previous tile is done with srow and the buffers */
        if (threadIdx.x < BN) {
            uint32_t i = t0 + (threadIdx.x < nt ? threadIdx.x : nt - 1);
            srow[threadIdx.x] = MODE == 0 ? (int)(i * a.groups + gi)
                                          : (int)(MODE == 1 && members ? (uint32_t)members[m0 + i] / a.k : m0 + i);
        }
        __syncthreads();
        float acc[NM][NT][4];
#pragma unroll
        for (int m = 0; m < NM; m++) {
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int i = 0; i < 4; i++) acc[m][j][i] = 0.0f;
            /* step s of matrix m into buffer s & 1: its rows' bytes (16-byte
             * lines covering them), the tokens' int8 values and scales */
            auto issue = [&](uint32_t s) {
                uint32_t buf = s & 1, o = s * F::SB, l0 = o / 16, nl = (o % 16 + F::SB + 15) / 16;
                if constexpr (WHOLE) {
                    /* staged row r's line l sits at 16 (r RL + l) = 16 i */
#pragma unroll
                    for (uint32_t k = 0; k < CW; k++)
                        if (wsrc[k] != ~0u) cp_async16(sraw + buf * MM_ROWS * RB + 16 * (threadIdx.x + k * MM_THREADS), wb[m] + wsrc[k] + o);
                } else {
                    for (uint32_t i = threadIdx.x; i < MM_ROWS * F::RL; i += MM_THREADS) {
                        uint32_t r = i / F::RL, l = i % F::RL;
                        if (r < nr && l < nl) cp_async16(sraw + (buf * MM_ROWS + r) * RB + 16 * l, wb[m] + r * a.row_bytes + 16 * (l0 + l));
                    }
                }
                for (uint32_t i = threadIdx.x; i < BN * 16; i += MM_THREADS) {
                    uint32_t t = i >> 4, l = i & 15;
                    if (t < nt) cp_async16(sx + (buf * BN + t) * MM_XS + 16 * l, a.x.qs + (uint64_t)srow[t] * a.K + s * 256 + 16 * l);
                }
                /* scales: a few words per token, plain loads from L2 */
                for (uint32_t i = threadIdx.x; i < BN * ND; i += MM_THREADS) {
                    uint32_t t = i / ND, j = i % ND;
                    if (t < nt) sxd[(buf * BN + t) * ND + j] = __ldcg(a.x.d + (uint64_t)srow[t] * (a.K / F::QKA) + s * ND + j);
                }
                if constexpr (TYPE == GGML_TYPE_Q2_K) {
                    for (uint32_t i = threadIdx.x; i < BN * 2; i += MM_THREADS) {
                        uint32_t t = i >> 1, h = i & 1;
                        if (t < nt) cp_async16(sbs + (buf * BN + t) * 16 + 8 * h, a.x.bs + (uint64_t)srow[t] * (a.K / 16) + s * 16 + 8 * h);
                    }
                }
                cp_async_commit(); /* braces above: unbraced, nvcc dropped this commit for Q8_0 and IQ2_XXS */
            };

            /* The copies of step s + 1 start once every thread has seen
             * step s land (wait for all, then the barrier), and run while
             * step s is multiplied; the barrier at the end of a step keeps
             * them off the buffer the step before was reading. */
            issue(0);
            for (uint32_t s = 0; s < S; s++) {
                cp_async_wait_all();
                __syncthreads();
                if (s + 1 < S) issue(s + 1);
                uint32_t buf = s & 1, off = (s * F::SB) % 16;
                const uint8_t *raw = sraw + buf * MM_ROWS * RB;
                const uint8_t *xs = sx + buf * BN * MM_XS;
                const float *xd = sxd + buf * BN * ND;
                /* per-output integer sums (Q2_K: of the whole step; IQ2_XXS: scaled per block) */
                int isum[NT][4];
#pragma unroll
                for (int j = 0; j < NT; j++)
#pragma unroll
                    for (int i = 0; i < 4; i++) isum[j][i] = 0;
                const uint8_t *p0 = raw + r_lo * RB + off, *p1 = p0 + 8 * RB; /* this step's block(s) of the rows */
                if constexpr (TYPE == GGML_TYPE_Q8_0) {
                    /* the 8 blocks' fragments and scales of both rows once,
                     * then each column group's 8 products and its tree in a row */
                    int A8[8][4];
                    float dw8[8][2];
#pragma unroll
                    for (int sub = 0; sub < 8; sub++) {
                        int sc[2];
                        frag_a<TYPE>(p0, p1, sub, tg, tab, A8[sub], sc);
                        dw8[sub][0] = f16_to_f32(ld16(p0 + 34 * sub));
                        dw8[sub][1] = f16_to_f32(ld16(p1 + 34 * sub));
                    }
#pragma unroll
                    for (int j = 0; j < NT; j++) {
                        if (8 * j >= (int)nt) break; /* uniform: the tile's unused column groups */
                        const uint8_t *pb = xs + (8 * j + g) * MM_XS + 4 * tg;
                        /* the block scales of this thread's two columns (8 floats each, 32-byte aligned) */
                        const float4 *xc = (const float4 *)(xd + (8 * j + 2 * tg) * ND);
                        float4 xv[4] = {xc[0], xc[1], xc[2], xc[3]};
                        const float *xf = (const float *)xv;
                        float q0[4], q1[4], q2[4];
#pragma unroll
                        for (int sub = 0; sub < 8; sub++) {
                            int B[2] = {*(const int *)(pb + 32 * sub), *(const int *)(pb + 32 * sub + 16)};
                            /* the sums land on the bits of 1.5 * 2^23 (small_int_to_float) */
                            int c[4] = {SMALL_INT_BIAS, SMALL_INT_BIAS, SMALL_INT_BIAS, SMALL_INT_BIAS};
                            mma_s8(c, A8[sub], B);
#pragma unroll
                            for (int i = 0; i < 4; i++) {
                                float t = biased_int_to_float(c[i]) * (dw8[sub][i >> 1] * xf[(i & 1) * 8 + sub]);
                                /* ((t0 + t1) + (t2 + t3)) + ((t4 + t5) + (t6 + t7)) */
                                if (sub == 0) q0[i] = t;
                                else if (sub == 2 || sub == 4) q1[i] = t;
                                else if (sub == 6) q2[i] = t;
                                else if (sub == 1) q0[i] = q0[i] + t;
                                else if (sub == 3) {
                                    q1[i] = q1[i] + t;
                                    q0[i] = q0[i] + q1[i];
                                } else if (sub == 5) q1[i] = q1[i] + t;
                                else {
                                    q2[i] = q2[i] + t;
                                    q1[i] = q1[i] + q2[i];
                                    acc[m][j][i] += q0[i] + q1[i];
                                }
                            }
                        }
                    }
                } else {
#pragma unroll
                    for (int sub = 0; sub < 8; sub++) {
                        int A[4], sc[2] = {1, 1};
                        frag_a<TYPE>(p0, p1, sub, tg, tab, A, sc);
#pragma unroll
                        for (int j = 0; j < NT; j++) {
                            if (8 * j >= (int)nt) break; /* uniform: the tile's unused column groups */
                            const uint8_t *p = xs + (8 * j + g) * MM_XS + 32 * sub + 4 * tg;
                            int B[2] = {*(const int *)p, *(const int *)(p + 16)};
                            if constexpr (TYPE == GGML_TYPE_Q2_K) {
                                mma_s8(isum[j], A, B);
                            } else {
                                int c[4] = {0, 0, 0, 0};
                                mma_s8(c, A, B);
#pragma unroll
                                for (int i = 0; i < 4; i++) isum[j][i] += c[i] * sc[i >> 1];
                            }
                        }
                    }
                }
                if constexpr (TYPE != GGML_TYPE_Q8_0) {
#pragma unroll
                    for (int j = 0; j < NT; j++) {
                        if (8 * j >= (int)nt) break;
#pragma unroll
                        for (int i = 0; i < 4; i++) {
                            uint32_t col = 8 * j + 2 * tg + (i & 1);
                            const uint8_t *p = (i >> 1) ? p1 : p0;
                            float dx = xd[col * ND];
                            if constexpr (TYPE == GGML_TYPE_IQ2_XXS) {
                                acc[m][j][i] += 0.125f * (f16_to_f32(ld16(p)) * dx) * (float)isum[j][i];
                            } else {
                                const int16_t *bs = sbs + (buf * BN + col) * 16;
                                int ms = 0;
#pragma unroll
                                for (int kk = 0; kk < 16; kk++) ms += (p[kk] >> 4) * bs[kk];
                                float dall = dx * f16_to_f32(ld16(p + 80)), dmin = dx * f16_to_f32(ld16(p + 82));
                                acc[m][j][i] += dall * (float)isum[j][i] - dmin * (float)ms;
                            }
                        }
                    }
                }
                __syncthreads(); /* buffer s & 1 is refilled next */
            }
        }

#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                uint32_t r = r_lo + 8 * (i >> 1), col = 8 * j + 2 * tg + (i & 1);
                if (r >= nr || col >= nt) continue;
                if constexpr (MODE == 0) {
                    a.y[(uint64_t)(t0 + col) * a.y_stride + (uint64_t)gi * a.rows + rt + r] = acc[0][j][i];
                } else {
                    float v = acc[0][j][i];
                    if constexpr (MODE == 1) v = swiglu_clamped(v, acc[NM - 1][j][i], a.limit);
                    a.y[(uint64_t)(m0 + t0 + col) * a.rows + rt + r] = v;
                }
            }
    }
}

static bool mmq_type(uint32_t type) {
    return type == GGML_TYPE_Q8_0 || type == GGML_TYPE_Q2_K || type == GGML_TYPE_IQ2_XXS;
}

bool k_mmq_usable(uint32_t type, const void *w, uint64_t row_bytes, uint64_t K) {
    static int arch = -1; /* < 800: no tensor-core path (code without mma, or DS4_CUDA_NO_MMA set) */
    if (arch < 0) arch = getenv("DS4_CUDA_NO_MMA") ? 0 : k_code_arch();
    return arch >= 800 && mmq_type(type) && K % 256 == 0 && row_bytes % 16 == 0 && (uintptr_t)w % 16 == 0;
}

template <class Kern> static void mmq_launch(Kern kernel, uint32_t smem, dim3 grid, const mmq_args &a, cudaStream_t st) {
    if (smem > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    k_launch(kernel, grid, MM_THREADS, smem, st, a);
}

#define MMQ_SWITCH(type, CALL)                            \
    switch (type) {                                       \
    case GGML_TYPE_Q8_0: CALL(GGML_TYPE_Q8_0); break;     \
    case GGML_TYPE_Q2_K: CALL(GGML_TYPE_Q2_K); break;     \
    case GGML_TYPE_IQ2_XXS: CALL(GGML_TYPE_IQ2_XXS); break; \
    default: return cudaErrorInvalidValue;                \
    }

#define MM_DENSE_BN 32
#define MM_EXPERT_BN 16

/* Token tile of the routed IQ2_XXS and Q2_K experts: each A fragment is
 * decoded once per tile and feeds one MMA per 8 tokens of it, so a wider
 * tile decodes an expert's weights fewer times when a chunk gives it many
 * tokens (a 512-token chunk gives each of 256 experts about 12, a
 * 2048-token chunk about 48), at the price of shared memory and registers
 * (fewer blocks per SM); column groups past the tile's tokens are skipped.
 * A token's sums never depend on its tile (each column is its own exact
 * integer sums and float order), so any choice gives the same bits.
 * DS4_CUDA_EXPERT_BN (16, 32, 64) overrides, for measurements. */
static int expert_bn(uint32_t type, uint32_t n, uint32_t k, uint32_t n_expert) {
    if (type == GGML_TYPE_Q8_0) return MM_EXPERT_BN;
    static int forced = -1;
    if (forced < 0) {
        const char *e = getenv("DS4_CUDA_EXPERT_BN");
        forced = e ? atoi(e) : 0;
        if (forced != 16 && forced != 32 && forced != 64) forced = 0;
    }
    if (forced) return forced;
    uint64_t avg = (uint64_t)n * k / (n_expert ? n_expert : 1); /* tokens per expert on average */
    return avg <= EXPERT_BN16_MAX ? 16 : avg <= EXPERT_BN32_MAX ? 32 : 64;
}

/* A tile read once from the environment variable `name`: `alt` where it
 * says so (measurements), `def` otherwise. */
static int tile_knob(const char *name, int def, int alt) {
    const char *e = getenv(name);
    return e && atoi(e) == alt ? alt : def;
}

/* Token tile of dense products: 64 for Q8_0, whose per-block float work
 * leaves the A fragments and the weight copies a large share of the
 * instructions unless they feed more tokens; 32 otherwise.
 * DS4_CUDA_Q8_BN=32 overrides, for measurements. */
static int dense_bn(uint32_t type) {
    static int q8 = 0;
    if (!q8) q8 = tile_knob("DS4_CUDA_Q8_BN", 64, 32);
    return type == GGML_TYPE_Q8_0 ? q8 : MM_DENSE_BN;
}

/* Token tile of the shared expert (every token, like a dense product):
 * 32 for Q8_0 (16 with DS4_CUDA_SHARED_BN=16, for measurements), 16
 * otherwise. */
static int shared_bn(uint32_t type) {
    static int bn = 0;
    if (!bn) bn = tile_knob("DS4_CUDA_SHARED_BN", 32, 16);
    return type == GGML_TYPE_Q8_0 ? bn : MM_EXPERT_BN;
}

cudaError_t k_mmq_linear(cudaStream_t st, const ds4_tensor *w, uint64_t r0, uint64_t n_rows, uint32_t groups,
                         const void *act, uint32_t n_tok, float *y, uint64_t y_stride, const uint8_t *tab) {
    mmq_args a;
    memset(&a, 0, sizeof a);
    a.w0 = w->data, a.row_bytes = w->row_bytes, a.rows = n_rows, a.r0 = r0;
    a.K = (uint32_t)w->ne[0], a.groups = groups, a.n_tok = n_tok;
    a.x = k_act_split(w->type, (void *)act, (uint64_t)n_tok * groups, a.K);
    a.y = y, a.y_stride = y_stride, a.tab = tab;
    int bn = dense_bn(w->type);
    dim3 grid(div_up(n_tok, bn), groups, div_up(n_rows, MM_ROWS));
    if (w->type == GGML_TYPE_Q8_0 && bn == 64) {
        mmq_launch(mmq_kernel<GGML_TYPE_Q8_0, 64, 1, 0>, mmq_smem<GGML_TYPE_Q8_0>(64), grid, a, st);
        return LAUNCH_STATUS();
    }
#define ML(T) mmq_launch(mmq_kernel<T, MM_DENSE_BN, 1, 0>, mmq_smem<T>(MM_DENSE_BN), grid, a, st)
    MMQ_SWITCH(w->type, ML)
#undef ML
    return LAUNCH_STATUS();
}

cudaError_t k_mmq_ffn(cudaStream_t st, bool up, const ds4_tensor *w0, const ds4_tensor *w1, const int32_t *grp, uint32_t k,
                      uint32_t n, uint32_t j0, uint32_t slots, const uint8_t *const *wtab, const void *act,
                      uint64_t act_rows, float limit, float *y, const uint8_t *tab) {
    mmq_args a;
    memset(&a, 0, sizeof a);
    a.w0 = w0->data, a.w1 = w1 ? w1->data : nullptr, a.row_bytes = w0->row_bytes, a.rows = w0->ne[1];
    a.K = (uint32_t)w0->ne[0], a.groups = 1, a.n_tok = n;
    a.x = k_act_split(w0->type, (void *)act, act_rows, a.K);
    a.y = y, a.grp = grp, a.n_expert = (uint32_t)w0->ne[2], a.k = k, a.n = n, a.j0 = j0, a.wtab = wtab, a.limit = limit;
    a.tab = tab;
    int bn = grp ? expert_bn(w0->type, n, k, a.n_expert) : shared_bn(w0->type);
    dim3 grid = grp ? dim3(div_up(a.rows, MM_ROWS), slots, 1) : dim3(div_up(n, bn), 1, div_up(a.rows, MM_ROWS));
#define MU(T, BN) mmq_launch(mmq_kernel<T, BN, 2, 1>, mmq_smem<T>(BN), grid, a, st)
#define MD(T, BN) mmq_launch(mmq_kernel<T, BN, 1, 2>, mmq_smem<T>(BN), grid, a, st)
#define MBN(M)                                                             \
    switch (w0->type) {                                                    \
    case GGML_TYPE_Q8_0:                                                   \
        if (bn == 32) M(GGML_TYPE_Q8_0, 32);                               \
        else M(GGML_TYPE_Q8_0, MM_EXPERT_BN);                              \
        break;                                                             \
    case GGML_TYPE_Q2_K:                                                   \
        if (bn == 64) M(GGML_TYPE_Q2_K, 64);                               \
        else if (bn == 32) M(GGML_TYPE_Q2_K, 32);                          \
        else M(GGML_TYPE_Q2_K, MM_EXPERT_BN);                              \
        break;                                                             \
    case GGML_TYPE_IQ2_XXS:                                                \
        if (bn == 64) M(GGML_TYPE_IQ2_XXS, 64);                            \
        else if (bn == 32) M(GGML_TYPE_IQ2_XXS, 32);                       \
        else M(GGML_TYPE_IQ2_XXS, MM_EXPERT_BN);                           \
        break;                                                             \
    default: return cudaErrorInvalidValue;                                 \
    }
    if (up) MBN(MU)
    else MBN(MD)
#undef MBN
#undef MD
#undef MU
    return LAUNCH_STATUS();
}

DS4_TRACE_EXPORT(k_mmq)
