/* Attention-side kernels: compressors, indexer, attention over the raw
 * window and the compressed rows, the raw KV ring (compute/attention.c,
 * compute/compressor.c).
 *
 * The CPU feeds a chunk token by token; here every token of a chunk is
 * processed at once. That is the same computation because each token only
 * reads state written by earlier positions: a pooled row needs the k/z of
 * its window's tokens (from this chunk or from the frontier left by the
 * previous one), and a query reads raw rows of earlier positions (from this
 * chunk's projections or from the ring, which is only written after the
 * chunk's attention; a single token's row goes in before it, into the slot
 * of the position its window has just left) and compressed rows emitted for
 * windows that end at or before it (all emitted before the attention kernel
 * runs). */
#include "backends/cuda/common.cuh"
#include "backends/cuda/kernels.cuh"
#include "backends/cuda/rowfn.cuh"

#include <cuda_bf16.h>
#include <stdlib.h>

/* ---- compressors ------------------------------------------------------------ */

/* k and z (positional bias added) of the token at position p, column col:
 * from the chunk when p >= pos0, else from the frontier (CPU slot layout:
 * overlapping compressors keep the previous window in slots 0..r-1 and the
 * current one in r..2r-1). Positions before 0 weigh nothing. */
__device__ __forceinline__ void comp_kz(const comp_op &op, int64_t p, uint32_t col, float *k, float *z) {
    uint32_t r = op.ratio, hw = op.halves * op.width;
    if (p < 0) {
        *k = 0.0f;
        *z = -INFINITY;
        return;
    }
    if ((uint64_t)p >= op.pos0) {
        uint64_t i = (uint64_t)p - op.pos0;
        *k = op.ck[i * hw + col];
        float a = load_elem(op.ape_type, op.ape + (uint64_t)(p % r) * op.ape_row_bytes, col);
        *z = a + op.cz[i * hw + col];
        return;
    }
    uint64_t cur0 = op.pos0 / r * r; /* first position of the window being filled at pos0 */
    uint32_t slot = (uint32_t)(p % r);
    if (op.halves == 2 && (uint64_t)p >= cur0) slot += r;
    *k = op.fk_old[(uint64_t)slot * hw + col];
    *z = op.fz_old[(uint64_t)slot * hw + col];
}

/* The position and column of candidate slot s of the window starting at
 * start, channel ch (ds4_comp_push's slot order: overlapping windows pool
 * the previous window's first halves, then the current window's second
 * halves). */
__device__ __forceinline__ void comp_slot(const comp_op &op, int64_t start, uint32_t s, uint32_t ch, int64_t *p,
                                          uint32_t *col) {
    uint32_t r = op.ratio;
    *p = op.halves == 2 ? (s < r ? start - r + s : start + (s - r)) : start + s;
    *col = op.halves == 2 && s >= r ? op.width + ch : ch;
}

#define COMP_BATCH 8 /* slots whose k and z are loaded together */

/* One block per window completing in the chunk, a thread per channel (or
 * a few). A channel's softmax over its slots runs in slot order; the
 * slots' k and z are loaded COMP_BATCH at a time, all in flight together
 * (an HCA window has 128 slots, and one load after another made a single
 * emission cost tens of microseconds). */
__global__ void comp_emit_kernel(comp_op op, uint64_t w_first) {
    pdl_enter();
    extern __shared__ float pooled[];
    __shared__ double red[32];
    uint64_t w = w_first + blockIdx.x;
    uint32_t r = op.ratio, width = op.width, n_slots = op.halves == 2 ? 2 * r : r;
    int64_t start = (int64_t)(w * r);
    for (uint32_t ch = threadIdx.x; ch < width; ch += blockDim.x) {
        float m = -INFINITY, den = 0, num = 0;
        for (int pass = 0; pass < 2; pass++) { /* the maximum, then the sums */
            for (uint32_t s0 = 0; s0 < n_slots; s0 += COMP_BATCH) {
                float k[COMP_BATCH], z[COMP_BATCH];
#pragma unroll
                for (int b = 0; b < COMP_BATCH; b++) {
                    int64_t p;
                    uint32_t col;
                    comp_slot(op, start, s0 + b < n_slots ? s0 + b : s0, ch, &p, &col);
                    comp_kz(op, p, col, &k[b], &z[b]);
                }
#pragma unroll
                for (int b = 0; b < COMP_BATCH; b++) {
                    if (s0 + b >= n_slots) break;
                    if (pass == 0) {
                        if (z[b] > m) m = z[b];
                    } else {
                        float e = expf(z[b] - m);
                        den += e;
                        num += e * k[b];
                    }
                }
            }
        }
        pooled[ch] = num / den;
    }
    __syncthreads();
    row_transform(pooled, width, 1, op.norm_w, op.eps, op.inv_freq, op.n_pairs, (uint64_t)start, 0, op.qat, op.n_rot, red,
                  blockDim.x);
    float *dst = op.rows + w * width;
    for (uint32_t ch = threadIdx.x; ch < width; ch += blockDim.x) dst[ch] = pooled[ch];
}

cudaError_t k_comp_emit(cudaStream_t st, const comp_op *op) {
    uint64_t r = op->ratio;
    uint64_t w_first = op->pos0 / r, w_end = (op->pos0 + op->n) / r;
    if (w_end <= w_first) return cudaSuccess;
    size_t smem = (size_t)op->width * sizeof(float);
    if (smem > 48 * 1024) return cudaErrorInvalidValue;
    unsigned threads = op->width >= 512 ? 512 : (op->width >= 256 ? 256 : 128);
    k_launch(comp_emit_kernel, (unsigned)(w_end - w_first), threads, smem, st, *op, w_first);
    return LAUNCH_STATUS();
}

/* One block per slot: the frontier as the CPU would hold it at pos0 + n. */
__global__ void comp_frontier_kernel(comp_op op) {
    pdl_enter();
    uint32_t s = blockIdx.x, r = op.ratio, hw = op.halves * op.width;
    uint64_t P = op.pos0 + op.n, C = P / r * r;
    int64_t p = op.halves == 2 ? (s < r ? (int64_t)C - r + s : (int64_t)(C + s - r)) : (int64_t)(C + s);
    if (p >= (int64_t)P) return; /* not reached yet: never read before it is written */
    for (uint32_t col = threadIdx.x; col < hw; col += blockDim.x) {
        float k, z;
        comp_kz(op, p, col, &k, &z);
        op.fk_new[(uint64_t)s * hw + col] = k;
        op.fz_new[(uint64_t)s * hw + col] = z;
    }
}

cudaError_t k_comp_frontier(cudaStream_t st, const comp_op *op) {
    uint32_t n_slots = op->halves == 2 ? 2 * op->ratio : op->ratio;
    k_launch(comp_frontier_kernel, n_slots, 256, 0, st, *op);
    return LAUNCH_STATUS();
}

/* ---- indexer ------------------------------------------------------------------ */

#define IDX_KEYS 64     /* keys per block */
#define IDX_THREADS 256 /* 16 x 16 threads of 4 keys x 4 heads */
#define IDX_KT 4        /* keys a thread: kq, kq + 16, kq + 32, kq + 48 */
#define IDX_HT 4        /* heads a thread at a time: hg, hg + 16, hg + 32, hg + 48 */

/* Whether the head x key products can take the keys' place once those are
 * read: one round of heads (every thread then finishes its reads before
 * any writes), and room for them. Three blocks a multiprocessor instead
 * of two at 64 heads of 128. */
__host__ __device__ __forceinline__ bool idx_dots_alias(uint32_t IH, uint32_t d) {
    return IH <= 16 * IDX_HT && (size_t)IH * IDX_KEYS <= (size_t)IDX_KEYS * (d + 4);
}

/* Block: 64 keys. Phase one: every (head, key) dot product over the head
 * dim in order (four values at a time from 16-byte loads, each added on
 * its own), a thread 4 keys x 4 heads, kept in shared memory: a value of q
 * or of a key then serves four products (one key by one thread over its
 * heads, with scalar loads, had been most of the indexer's 348 us a CSA
 * layer for one decode token at 250K context on an H100). Phase two: thread (key kk, group g),
 * g < 4, sums heads g, g+4, ... in order; the four group sums are then
 * added in a fixed order. The same operations in the same order as ever:
 * the same bits. */
template <uint32_t DC>
__global__ void __launch_bounds__(IDX_THREADS) idx_scores_kernel(const float *iq, const float *iw, uint32_t IH, uint32_t d_arg,
                                                                 const float *keys, uint64_t pos0, uint32_t topk,
                                                                 float *scores, uint64_t stride) {
    pdl_enter();
    /* DC: the head dim known when compiled (and IH a multiple of 16 x
     * IDX_HT), so the inner loop's addresses are constant offsets and its
     * head guards go: the same operations (H100, 62.5K keys: 71 -> 59 us) */
    const uint32_t d = DC ? DC : d_arg;
    extern __shared__ __align__(16) float sm[];
    const uint32_t dp = d + 4;                   /* padded key row: 16-byte loads without bank conflicts */
    const bool alias = idx_dots_alias(IH, d);    /* the products over the keys, once read (one round of heads) */
    float *q = sm;                               /* IH x d */
    float *kt = q + (size_t)IH * d;              /* IDX_KEYS x dp */
    float *wt = kt + (size_t)IDX_KEYS * dp;      /* IH */
    float *part = wt + IH;                       /* 4 x IDX_KEYS */
    float *dots = alias ? kt : part + 4 * IDX_KEYS; /* IH x IDX_KEYS */
    uint32_t t = blockIdx.y;
    uint64_t n_vis = (pos0 + t + 1) / 4;
    uint64_t w0 = (uint64_t)blockIdx.x * IDX_KEYS;
    if (n_vis <= topk || w0 >= n_vis) return; /* uniform over the block */
    const uint32_t d4 = d / 4, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const float4 *qt = (const float4 *)(iq + (uint64_t)t * IH * d);
    for (uint32_t i = threadIdx.x; i < IH * d4; i += blockDim.x) ((float4 *)q)[i] = qt[i];
    float wscale = 1.0f / sqrtf((float)IH);
    for (uint32_t h = threadIdx.x; h < IH; h += blockDim.x) wt[h] = iw[(uint64_t)t * IH + h] * wscale;
    for (uint32_t kk = warp; kk < IDX_KEYS; kk += IDX_THREADS / 32) {
        uint64_t w = w0 + kk;
        const float4 *src = (const float4 *)(keys + w * d);
        for (uint32_t c4 = lane; c4 < d4; c4 += 32)
            ((float4 *)(kt + kk * dp))[c4] = w < n_vis ? src[c4] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    __syncthreads();
    {
        const uint32_t kq = threadIdx.x % 16, hg = threadIdx.x / 16;
        for (uint32_t h0 = hg; h0 - hg < IH; h0 += 16 * IDX_HT) { /* as many rounds on every thread */
            float dot[IDX_HT][IDX_KT] = {};
#pragma unroll 8
            for (uint32_t c4 = 0; c4 < d4; c4++) {
                float4 kv[IDX_KT], qv[IDX_HT];
#pragma unroll
                for (int i = 0; i < IDX_KT; i++) kv[i] = ((const float4 *)(kt + (kq + 16 * i) * dp))[c4];
#pragma unroll
                for (int j = 0; j < IDX_HT; j++)
                    qv[j] = DC || h0 + 16 * j < IH ? ((const float4 *)(q + (size_t)(h0 + 16 * j) * d))[c4]
                                                   : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
                for (int j = 0; j < IDX_HT; j++)
#pragma unroll
                    for (int i = 0; i < IDX_KT; i++) {
                        dot[j][i] += qv[j].x * kv[i].x;
                        dot[j][i] += qv[j].y * kv[i].y;
                        dot[j][i] += qv[j].z * kv[i].z;
                        dot[j][i] += qv[j].w * kv[i].w;
                    }
            }
            if (alias) __syncthreads(); /* every thread is done with the keys */
#pragma unroll
            for (int j = 0; j < IDX_HT; j++)
                if (h0 + 16 * j < IH)
#pragma unroll
                    for (int i = 0; i < IDX_KT; i++) dots[(h0 + 16 * j) * IDX_KEYS + kq + 16 * i] = dot[j][i];
        }
    }
    __syncthreads();
    if (threadIdx.x < 4 * IDX_KEYS) {
        uint32_t kk = threadIdx.x % IDX_KEYS, g = threadIdx.x / IDX_KEYS;
        float scale = 1.0f / sqrtf((float)d);
        float s = 0;
        for (uint32_t h = g; h < IH; h += 4) {
            float dot = dots[h * IDX_KEYS + kk];
            if (dot > 0) s += dot * scale * wt[h];
        }
        part[g * IDX_KEYS + kk] = s;
    }
    __syncthreads();
    if (threadIdx.x < IDX_KEYS && w0 + threadIdx.x < n_vis) {
        float tot = ((part[threadIdx.x] + part[IDX_KEYS + threadIdx.x]) + part[2 * IDX_KEYS + threadIdx.x]) +
                    part[3 * IDX_KEYS + threadIdx.x];
        scores[(uint64_t)t * stride + w0 + threadIdx.x] = tot;
    }
}

/* The scoring kernel compiled for the model's shape: head dim 128, whole rounds of heads */
static bool idx_fixed(uint32_t IH, uint32_t d) { return d == 128 && IH % (16 * IDX_HT) == 0; }

static size_t idx_smem(uint32_t IH, uint32_t d) {
    return ((size_t)IH * d + (size_t)IDX_KEYS * (d + 4) + IH + 4 * IDX_KEYS + (idx_dots_alias(IH, d) ? 0 : (size_t)IH * IDX_KEYS)) *
           sizeof(float);
}

/* The opt-in shared memory limit is a per-function setting: raised once at
 * model load, never while a decode step is being captured into a graph.
 * [0]: the generic kernel's, [1]: the fixed-shape one's. */
static size_t idx_smem_raised[2] = {48 * 1024, 48 * 1024};

cudaError_t k_idx_prepare(uint32_t n_head, uint32_t d) {
    size_t smem = idx_smem(n_head, d);
    int f = idx_fixed(n_head, d);
    if (smem <= idx_smem_raised[f]) return cudaSuccess;
    cudaError_t e = cudaFuncSetAttribute(f ? idx_scores_kernel<128> : idx_scores_kernel<0>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e == cudaSuccess) idx_smem_raised[f] = smem;
    return e;
}

cudaError_t k_idx_scores(cudaStream_t st, const float *iq, const float *iw, uint32_t n, uint32_t n_head, uint32_t d,
                         const float *keys, uint64_t pos0, uint32_t topk, float *scores, uint64_t score_stride) {
    uint64_t n_vis_max = (pos0 + n) / 4;
    if (n == 0 || n_vis_max <= topk) return cudaSuccess;
    if (d % 4 || (uintptr_t)iq % 16 || (uintptr_t)keys % 16) return cudaErrorInvalidValue; /* 16-byte loads */
    size_t smem = idx_smem(n_head, d);
    int f = idx_fixed(n_head, d);
    if (smem > idx_smem_raised[f]) return cudaErrorInvalidValue; /* k_idx_prepare first */
    k_launch(f ? idx_scores_kernel<128> : idx_scores_kernel<0>, dim3(div_up(n_vis_max, IDX_KEYS), n), IDX_THREADS, smem, st,
             iq, iw, n_head, d, keys, pos0, topk, scores, score_stride);
    return LAUNCH_STATUS();
}

/* Scores as unsigned keys that order like the floats (larger is better). */
__device__ __forceinline__ uint32_t order_key(float f) {
    uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* ---- top-k: a radix select spread over the GPU ------------------------------
 * The topk-th best key is found a byte at a time from the top (four
 * histogram passes, each over the keys that share the bytes found so far),
 * then every key above it is kept and the lowest-index keys equal to it,
 * in index order. A token's keys are cut into G chunks, one block each
 * (G > 1 when few tokens would leave the GPU idle: decode at long context
 * has one token and up to max_ctx / 4 keys), and the passes are launches
 * of their own, each reading what the one before left in `work`:
 *
 *   tk_kernel<0>      byte 3's histogram of the block's chunk -> bh[t][b]
 *   tk_kernel<1..3>   the byte found from the last histogram (block 0
 *                     keeps the state: prefix, mask, need), then the next
 *                     byte's histogram of the matching keys -> hist[p][t]
 *                     (integer atomics: the same counts in any order)
 *   tk_count_kernel   the threshold key; each warp counts the keys above
 *                     it and equal to it in its segment of the chunk
 *   tk_write_kernel   each warp writes its segment's picks at the offset
 *                     the earlier segments' counts give
 *
 * Everything is integer, so the picks are exactly those of one block
 * scanning the keys in order (the kernel this replaced, which took 350 us
 * a CSA layer for one decode token at 250K context on an H100). */
#define TK_THREADS 256
#define TK_WARPS (TK_THREADS / 32)
#define TK_MAX_G 64        /* blocks a token at most */
#define TK_MIN_CHUNK 2048  /* keys a block at least */

typedef struct tk_args {
    const float *scores;
    uint64_t stride, pos0;
    uint32_t topk, n, G, C; /* C: keys a block, a multiple of 32 * TK_WARPS */
    uint32_t *bh;           /* [n][G][256] byte 3's histogram of each block */
    uint32_t *hist;         /* [3][n][256] bytes 2, 1, 0 (given the bytes above) */
    uint32_t *state;        /* [5][n][4] after pass p: prefix, mask, need */
    uint32_t *cnt;          /* [n][G * TK_WARPS][2] above / equal to the threshold */
} tk_args;

/* Warp 0: the byte of the need-th best key of a 256-bin histogram h, from
 * the top bin down, and how many keys in that bin are still needed. */
__device__ __forceinline__ void tk_pick(const uint32_t *h, uint32_t need, uint32_t *digit, uint32_t *need_out) {
    uint32_t lane = threadIdx.x & 31, cnt[8], tot = 0;
#pragma unroll
    for (int j = 0; j < 8; j++) tot += cnt[j] = h[255 - 8 * lane - j]; /* lane l: bins 255-8l .. 248-8l */
    uint32_t above = tot;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        uint32_t v = __shfl_up_sync(0xffffffffu, above, o);
        if (lane >= (uint32_t)o) above += v;
    }
    above -= tot; /* keys in the bins of the lanes before this one */
    uint32_t hit = __ballot_sync(0xffffffffu, above < need && above + tot >= need);
    uint32_t all = __shfl_sync(0xffffffffu, above + tot, 31);
    if (hit && lane == (uint32_t)(__ffs(hit) - 1)) {
        uint32_t acc = above, jf = 0;
        bool found = false;
#pragma unroll
        for (uint32_t j = 0; j < 8; j++) {
            if (found) continue;
            if (acc + cnt[j] >= need) found = true, jf = j;
            else acc += cnt[j];
        }
        *digit = 255u - 8u * lane - jf;
        *need_out = need - acc;
    }
    if (!hit && lane == 0) *digit = 0, *need_out = need - all; /* never: need <= keys */
}

/* The keys of token t in block b's chunk, and whether the token selects */
__device__ __forceinline__ bool tk_chunk(const tk_args &a, uint32_t t, uint32_t b, uint64_t *c0, uint64_t *c1) {
    uint64_t n_vis = (a.pos0 + t + 1) / 4;
    *c0 = (uint64_t)b * a.C;
    *c1 = *c0 + a.C < n_vis ? *c0 + a.C : n_vis;
    return n_vis > a.topk;
}

/* The histogram of byte `shift` of the chunk's keys k with (k & mask) ==
 * prefix into the block's shared h (zeroed here). Each warp takes 32
 * consecutive keys at a time; lanes with the same byte add once. */
__device__ __forceinline__ void tk_histogram(const tk_args &a, uint32_t t, uint64_t c0, uint64_t c1, uint32_t prefix,
                                             uint32_t mask, int shift, uint32_t *h) {
    for (uint32_t i = threadIdx.x; i < 256; i += blockDim.x) h[i] = 0;
    __syncthreads();
    const float *sc = a.scores + (uint64_t)t * a.stride;
    uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (uint64_t base = c0 + 32 * warp; base < c1; base += TK_THREADS) {
        uint64_t w = base + lane;
        uint32_t k = w < c1 ? order_key(sc[w]) : 0;
        bool in = w < c1 && (k & mask) == prefix;
        uint32_t d = (k >> shift) & 255u;
        uint32_t same = __match_any_sync(0xffffffffu, in ? d : 256u + lane);
        if (in && lane == (uint32_t)(__ffs(same) - 1)) atomicAdd(&h[d], (uint32_t)__popc(same));
    }
    __syncthreads();
}

/* Pass P's state (P >= 1) from what pass P - 1 left: its histogram (byte
 * 3's summed over the blocks' for P = 1) into the shared h, and the state
 * before it (the start for P = 1). Every block finds the same byte; block
 * 0 stores the new state for the next launch. st: prefix, mask, need. */
__device__ __forceinline__ void tk_advance(const tk_args &a, uint32_t t, int P, uint32_t *h, uint32_t *st) {
    __shared__ uint32_t s_digit, s_need;
    for (uint32_t i = threadIdx.x; i < 256; i += blockDim.x) {
        uint32_t v = 0;
        if (P == 1)
            for (uint32_t g = 0; g < a.G; g++) v += a.bh[((uint64_t)t * a.G + g) * 256 + i];
        else
            v = a.hist[((uint64_t)(P - 2) * a.n + t) * 256 + i];
        h[i] = v;
    }
    st[0] = 0, st[1] = 0, st[2] = a.topk;
    if (P >= 2)
        for (int i = 0; i < 3; i++) st[i] = a.state[((uint64_t)(P - 1) * a.n + t) * 4 + i];
    __syncthreads();
    if (threadIdx.x < 32) tk_pick(h, st[2], &s_digit, &s_need);
    __syncthreads();
    int shift = 32 - 8 * P;
    st[0] |= s_digit << shift;
    st[1] |= 255u << shift;
    st[2] = s_need;
    if (blockIdx.x == 0 && threadIdx.x < 3) a.state[((uint64_t)P * a.n + t) * 4 + threadIdx.x] = st[threadIdx.x];
}

template <int P> __global__ void __launch_bounds__(TK_THREADS) tk_kernel(tk_args a) {
    pdl_enter();
    __shared__ uint32_t h[256];
    uint32_t t = blockIdx.y, b = blockIdx.x;
    uint64_t c0, c1;
    if (!tk_chunk(a, t, b, &c0, &c1)) return; /* uniform over the block */
    uint32_t st[3] = {0, 0, a.topk};
    if (P >= 1) {
        tk_advance(a, t, P, h, st);
        __syncthreads(); /* h is reused */
    }
    /* the next pass's histogram, zeroed before that pass adds to it */
    if (P <= 2 && b == 0)
        for (uint32_t i = threadIdx.x; i < 256; i += blockDim.x) a.hist[((uint64_t)P * a.n + t) * 256 + i] = 0;
    tk_histogram(a, t, c0, c1, st[0], st[1], 24 - 8 * P, h);
    for (uint32_t i = threadIdx.x; i < 256; i += blockDim.x) {
        if (P == 0) a.bh[((uint64_t)t * a.G + b) * 256 + i] = h[i];
        else if (h[i]) atomicAdd(&a.hist[((uint64_t)(P - 1) * a.n + t) * 256 + i], h[i]);
    }
}

/* A warp's segment of its block's chunk */
__device__ __forceinline__ void tk_segment(const tk_args &a, uint64_t c0, uint64_t c1, uint64_t *s0, uint64_t *s1) {
    uint64_t per = a.C / TK_WARPS, w = threadIdx.x >> 5;
    *s0 = c0 + w * per < c1 ? c0 + w * per : c1;
    *s1 = *s0 + per < c1 ? *s0 + per : c1;
}

__global__ void __launch_bounds__(TK_THREADS) tk_count_kernel(tk_args a) {
    pdl_enter();
    __shared__ uint32_t h[256];
    uint32_t t = blockIdx.y, b = blockIdx.x;
    uint64_t c0, c1;
    if (!tk_chunk(a, t, b, &c0, &c1)) return;
    uint32_t st[3];
    tk_advance(a, t, 4, h, st); /* st[0]: the threshold key, st[2]: how many equal to it are kept */
    uint64_t s0, s1;
    tk_segment(a, c0, c1, &s0, &s1);
    const float *sc = a.scores + (uint64_t)t * a.stride;
    uint32_t lane = threadIdx.x & 31, gt = 0, eq = 0;
    for (uint64_t base = s0; base < s1; base += 32) {
        uint64_t w = base + lane;
        uint32_t k = w < s1 ? order_key(sc[w]) : 0;
        gt += __popc(__ballot_sync(0xffffffffu, w < s1 && k > st[0]));
        eq += __popc(__ballot_sync(0xffffffffu, w < s1 && k == st[0]));
    }
    if (lane == 0) {
        uint32_t *c = a.cnt + ((uint64_t)t * a.G * TK_WARPS + b * TK_WARPS + (threadIdx.x >> 5)) * 2;
        c[0] = gt, c[1] = eq;
    }
}

__global__ void __launch_bounds__(TK_THREADS) tk_write_kernel(tk_args a, int32_t *sel) {
    pdl_enter();
    uint32_t t = blockIdx.y, b = blockIdx.x;
    uint64_t c0, c1;
    if (!tk_chunk(a, t, b, &c0, &c1)) return;
    const uint32_t thr = a.state[((uint64_t)4 * a.n + t) * 4], need = a.state[((uint64_t)4 * a.n + t) * 4 + 2];
    uint32_t lane = threadIdx.x & 31, e = b * TK_WARPS + (threadIdx.x >> 5);
    /* the counts of the segments before this warp's, in index order */
    uint32_t gt = 0, eq = 0;
    const uint32_t *c = a.cnt + (uint64_t)t * a.G * TK_WARPS * 2;
    for (uint32_t i = lane; i < e; i += 32) gt += c[2 * i], eq += c[2 * i + 1];
    for (int o = 16; o >= 1; o >>= 1) {
        gt += __shfl_xor_sync(0xffffffffu, gt, o);
        eq += __shfl_xor_sync(0xffffffffu, eq, o);
    }
    uint32_t out = gt + (eq < need ? eq : need), eq_seen = eq;
    uint64_t s0, s1;
    tk_segment(a, c0, c1, &s0, &s1);
    const float *sc = a.scores + (uint64_t)t * a.stride;
    int32_t *dst = sel + (uint64_t)t * a.topk;
    const uint32_t lt = (1u << lane) - 1;
    for (uint64_t base = s0; base < s1; base += 32) {
        uint64_t w = base + lane;
        uint32_t k = w < s1 ? order_key(sc[w]) : 0;
        uint32_t eqm = __ballot_sync(0xffffffffu, w < s1 && k == thr);
        bool take = (w < s1 && k > thr) || ((eqm >> lane & 1) && eq_seen + __popc(eqm & lt) < need);
        uint32_t tm = __ballot_sync(0xffffffffu, take);
        if (take) dst[out + __popc(tm & lt)] = (int32_t)w;
        out += __popc(tm);
        eq_seen += __popc(eqm);
    }
}

/* Blocks a token for n tokens with up to nvis keys */
static uint32_t tk_blocks(uint32_t n, uint64_t nvis) {
    uint64_t by_keys = (nvis + TK_MIN_CHUNK - 1) / TK_MIN_CHUNK, by_tokens = n < TK_MAX_G ? TK_MAX_G / n : 1;
    uint64_t g = by_keys < by_tokens ? by_keys : by_tokens;
    return g < 1 ? 1 : (uint32_t)g;
}

size_t k_idx_topk_work_bytes(uint32_t n_max) {
    uint64_t blocks = (uint64_t)n_max < TK_MAX_G ? TK_MAX_G : n_max; /* n x G at most */
    return (blocks * 256 + 3ull * n_max * 256 + 5ull * n_max * 4 + blocks * TK_WARPS * 2) * sizeof(uint32_t);
}

cudaError_t k_idx_topk(cudaStream_t st, const float *scores, uint64_t score_stride, uint32_t n, uint64_t pos0,
                       uint32_t topk, int32_t *sel, void *work) {
    uint64_t nvis = (pos0 + n) / 4;
    if (n == 0 || nvis <= topk) return cudaSuccess;
    tk_args a;
    a.scores = scores, a.stride = score_stride, a.pos0 = pos0, a.topk = topk, a.n = n;
    a.G = tk_blocks(n, nvis);
    uint64_t C = (nvis + a.G - 1) / a.G, unit = 32 * TK_WARPS;
    a.C = (uint32_t)((C + unit - 1) / unit * unit);
    a.G = (uint32_t)((nvis + a.C - 1) / a.C);
    uint64_t blocks = (uint64_t)n * a.G;
    a.bh = (uint32_t *)work;
    a.hist = a.bh + blocks * 256;
    a.state = a.hist + 3ull * n * 256;
    a.cnt = a.state + 5ull * n * 4;
    dim3 g(a.G, n);
    k_launch(tk_kernel<0>, g, TK_THREADS, 0, st, a);
    k_launch(tk_kernel<1>, g, TK_THREADS, 0, st, a);
    k_launch(tk_kernel<2>, g, TK_THREADS, 0, st, a);
    k_launch(tk_kernel<3>, g, TK_THREADS, 0, st, a);
    k_launch(tk_count_kernel, g, TK_THREADS, 0, st, a);
    k_launch(tk_write_kernel, g, TK_THREADS, 0, st, a, sel);
    return LAUNCH_STATUS();
}

/* ---- attention ------------------------------------------------------------------ */

#define ATT_THREADS 128
#define ATT_TILE 32
#define ATT_PAIRS (K_MAX_HEAD_DIM / (2 * ATT_THREADS)) /* value pairs per thread */

/* Candidate row i of token t (raw window first, oldest first; then the
 * compressed rows). */
__device__ __forceinline__ const float *att_row(const attn_op &op, uint64_t p, uint32_t t, uint32_t n_raw, uint32_t i) {
    if (i < n_raw) {
        uint64_t pr = p + 1 - n_raw + i;
        return pr >= op.pos0 ? op.kv + (pr - op.pos0) * op.hd : op.ring + (pr % op.W) * op.hd;
    }
    i -= n_raw;
    uint64_t n_vis = (p + 1) / op.ratio;
    uint64_t row = op.ratio == 4 && n_vis > op.topk ? (uint64_t)op.sel[(uint64_t)t * op.topk + i] : i;
    return op.comp + row * op.hd;
}

/* One block per (token, head): online softmax over tiles of rows, starting
 * from the sink (running max = sink, denominator 1). */
__global__ void attention_kernel(attn_op op) {
    pdl_enter();
    extern __shared__ float q[]; /* hd */
    __shared__ const float *rp[ATT_TILE];
    __shared__ float sc[ATT_TILE], pw[ATT_TILE];
    __shared__ float s_corr, s_m;
    uint32_t t = blockIdx.y, h = blockIdx.x, hd = op.hd;
    uint32_t tid = threadIdx.x, lane = tid & 31, wid = tid >> 5;
    uint64_t p = op.pos0 + t;
    const float *qs = op.q + ((uint64_t)t * op.H + h) * hd;
    for (uint32_t i = tid; i < hd; i += ATT_THREADS) q[i] = qs[i];
    uint32_t n_raw = (uint32_t)(p + 1 < op.W ? p + 1 : op.W);
    uint32_t n_comp = 0;
    if (op.ratio) {
        uint64_t n_vis = (p + 1) / op.ratio;
        n_comp = (uint32_t)(op.ratio == 4 && n_vis > op.topk ? op.topk : n_vis);
    }
    uint32_t n_rows = n_raw + n_comp;
    float scale = 1.0f / sqrtf((float)hd);
    float m = op.sinks[h], l = 1.0f; /* l and m are kept identical in every thread */
    float2 acc[ATT_PAIRS];
#pragma unroll
    for (int k = 0; k < ATT_PAIRS; k++) acc[k] = make_float2(0.0f, 0.0f);
    __syncthreads();
    for (uint32_t r0 = 0; r0 < n_rows; r0 += ATT_TILE) {
        uint32_t nr = n_rows - r0 < ATT_TILE ? n_rows - r0 : ATT_TILE;
        if (tid < nr) rp[tid] = att_row(op, p, t, n_raw, r0 + tid);
        __syncthreads();
        for (uint32_t i = wid; i < nr; i += ATT_THREADS / 32) {
            const float *row = rp[i];
            float s = 0;
            for (uint32_t c = lane; c < hd; c += 32) s += q[c] * row[c];
            s = warp_sum(s);
            if (lane == 0) sc[i] = s * scale;
        }
        __syncthreads();
        if (wid == 0) {
            float v = lane < nr ? sc[lane] : -INFINITY;
            float mt = warp_max(v);
            float mn = fmaxf(m, mt);
            float e = lane < nr ? expf(v - mn) : 0.0f;
            pw[lane] = e;
            float se = warp_sum(e);
            if (lane == 0) {
                s_corr = expf(m - mn);
                s_m = mn;
                sc[0] = se; /* reuse: the tile's sum of weights */
            }
        }
        __syncthreads();
        float corr = s_corr, se = sc[0];
        m = s_m;
        l = l * corr + se;
#pragma unroll
        for (int k = 0; k < ATT_PAIRS; k++) {
            uint32_t d = 2 * (tid + k * ATT_THREADS);
            if (d < hd) {
                float2 a = acc[k];
                a.x *= corr;
                a.y *= corr;
                for (uint32_t i = 0; i < nr; i++) {
                    float2 v = *(const float2 *)(rp[i] + d);
                    a.x += pw[i] * v.x;
                    a.y += pw[i] * v.y;
                }
                acc[k] = a;
            }
        }
        __syncthreads();
    }
    float *o = op.out + ((uint64_t)t * op.H + h) * hd;
    uint32_t rot0 = hd - 2 * op.n_pairs;
#pragma unroll
    for (int k = 0; k < ATT_PAIRS; k++) {
        uint32_t d = 2 * (tid + k * ATT_THREADS);
        if (d < hd) {
            float v[2] = {acc[k].x / l, acc[k].y / l};
            if (op.n_pairs && d >= rot0) {
                float c, s;
                rope_cs(op.inv_freq, (d - rot0) / 2, p, &c, &s);
                rope_pair(v, c, s, 1);
            }
            o[d] = v[0];
            o[d + 1] = v[1];
        }
    }
}

/* ---- attention on the tensor cores ----------------------------------------------
 *
 * DeepSeek V4 attention is MQA-like: every head of a token reads the same
 * candidate rows. So one block takes 16 or 32 heads of a token, stages each
 * tile of 32 rows once in shared memory, and multiplies with mma.sync
 * m16n8k16 (bf16 in, fp32 accumulation), heads as the M dimension:
 * S = Q K^T for the tile, then O = O * corr + P V.
 *
 * fp32 accuracy from bf16 operands: every operand x is split into
 * hi = bf16(x) and lo = bf16(x - hi) (x - hi is exact in fp32), and each
 * product is hi*hi + hi*lo + lo*hi; what is left out (lo*lo and the rounding
 * of lo) is below 2^-17 |x y| per product (docs/NUMERICS.md).
 *
 * Warps: a group of four per 16 heads (an M tile). In S = Q K^T, warp q of
 * the group sums the head-dim quarter q (for all 32 rows); the four partial
 * tiles are added as (q0 + q1) + (q2 + q3). In P V, warp q owns output dims
 * quarter q. Each head's arithmetic is therefore the same whichever other
 * heads (and tokens) share the block or the launch: the 16-head and 32-head
 * blocks give the same bits.
 *
 * Segments: a token's rows are cut into segments of AT_SEG rows (by row
 * index only). Each segment is an online softmax of its own (running max
 * from -inf, denominator 0, per tile max/exp/sum, the tile's exps summed per
 * thread then over the quad by a butterfly), and the segments are folded in
 * order into a state that starts from the sink (max = sink, denominator 1,
 * output 0): M' = max(M, m), a = exp(M - M'), b = exp(m - M'),
 * L = L a + l b, O = O a + o b. For chunks one block runs every segment of
 * its token and folds as it goes (the folded output in shared memory);
 * decode (few tokens) gives each segment its own block, writes (m, l, o) to
 * op.part and folds in attn_fold_kernel, with the same operations in the
 * same order. So chunked prefill, one prefill and decode agree bit for
 * bit. */

#define AT_ROWS 32 /* rows per tile */
#define AT_SEG 32  /* rows per segment (a multiple of AT_ROWS); 64 ran a decode step ~15 us slower (H100, synth6) */
#define AT_SP 40   /* row stride (floats) of the partial scores: no bank conflicts for float2 */

/* bf16 hi/lo halves of two floats, packed as the MMA operands want them
 * (the first float in the low 16 bits). */
__device__ __forceinline__ void split2(float x0, float x1, uint32_t *hi, uint32_t *lo) {
    __nv_bfloat162 h = __floats2bfloat162_rn(x0, x1);
    __nv_bfloat162 l = __floats2bfloat162_rn(x0 - __low2float(h), x1 - __high2float(h));
    *hi = *reinterpret_cast<uint32_t *>(&h);
    *lo = *reinterpret_cast<uint32_t *>(&l);
}

__device__ __forceinline__ void mma_bf16(float *d, const uint32_t *a, uint32_t b0, uint32_t b1) {
#if __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

/* The three products of the split, smallest first (they are added into the
 * accumulator before the large one). */
__device__ __forceinline__ void mma3(float *d, const uint32_t *ahi, const uint32_t *alo, uint32_t bh0, uint32_t bh1,
                                     uint32_t bl0, uint32_t bl1) {
    mma_bf16(d, alo, bh0, bh1);
    mma_bf16(d, ahi, bl0, bl1);
    mma_bf16(d, ahi, bh0, bh1);
}

/* Four transposed 8x8 bf16 matrices: the B operands of two n8 tiles. */
__device__ __forceinline__ void ldsm_x4_t(uint32_t *r, const uint16_t *p) {
#if __CUDA_ARCH__ >= 800
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
#endif
}

/* Rows of the token at position p (raw window, then compressed). */
__device__ __forceinline__ uint32_t att_rows(const attn_op &op, uint64_t p, uint32_t *n_raw) {
    *n_raw = (uint32_t)(p + 1 < op.W ? p + 1 : op.W);
    uint32_t n_comp = 0;
    if (op.ratio) {
        uint64_t n_vis = (p + 1) / op.ratio;
        n_comp = (uint32_t)(op.ratio == 4 && n_vis > op.topk ? op.topk : n_vis);
    }
    return *n_raw + n_comp;
}

/* Folds a segment's (m, l) into the running (M, L); the output is then
 * O * a + o * b (the same expression in both kernels). */
__device__ __forceinline__ void fold_ml(float *M, float *L, float m, float l, float *a, float *b) {
    float mn = fmaxf(*M, m);
    *a = expf(*M - mn);
    *b = expf(m - mn);
    *L = *L * *a + l * *b;
    *M = mn;
}

/* The rotation of the token at position p, pair i at rcs[i] (cos, sin),
 * made by the block's first n_pairs threads: a token's heads share it,
 * and a thread storing many rotated pairs would otherwise work through
 * their double-precision sin and cos one after another (at decode, most
 * of the time of a one-tile block). Before pdl_enter too: it reads only
 * the model's frequencies. */
__device__ __forceinline__ void att_rope_table(const attn_op &op, uint64_t p, float2 *rcs) {
    for (uint32_t i = threadIdx.x; i < op.n_pairs; i += blockDim.x) {
        float cs, sn;
        rope_cs(op.inv_freq, i, p, &cs, &sn);
        rcs[i] = make_float2(cs, sn);
    }
}

/* The folded output of a pair of dims divided by L, RoPE (table rcs) on
 * the last dims. */
__device__ __forceinline__ void att_store(const attn_op &op, const float2 *rcs, uint32_t t, uint32_t h, uint32_t d,
                                          float o0, float o1, float L) {
    float v[2] = {o0 / L, o1 / L};
    uint32_t rot0 = op.hd - 2 * op.n_pairs;
    if (op.n_pairs && d >= rot0) {
        float2 r = rcs[(d - rot0) / 2];
        rope_pair(v, r.x, r.y, 1);
    }
    *(float2 *)(op.out + ((uint64_t)t * op.H + h) * op.hd + d) = make_float2(v[0], v[1]);
}

/* Partials of (token, segment) slot: o at part[slot][h][hd], then (m, l) at
 * part[slots * H * hd + (slot * H + h) * 2]. */
__device__ __forceinline__ float *part_o(const attn_op &op, uint64_t slot, uint32_t h) {
    return op.part + (slot * op.H + h) * op.hd;
}
__device__ __forceinline__ float *part_ml(const attn_op &op, uint64_t slot, uint32_t h) {
    return op.part + (uint64_t)op.part_slots * op.H * op.hd + (slot * op.H + h) * 2;
}

/* The raw queries' row transform (op.q_eps; rows_kernel's for q: RMSNorm
 * without weight, then RoPE on the last n_pairs pairs at the token's
 * position, table rcs), on the A operands a[][] of attn_mma_kernel's warp
 * (dims quarter q of heads mt * 16 + g and + 8 of the block). A head's sum
 * of squares, in double: each lane's 4 KS values in load order, its four
 * lanes c by butterfly, then the quarters 0..3 in order. Every thread of
 * the block must call it. */
template <int KS, int MT>
__device__ __forceinline__ void att_q_transform(const attn_op &op, const float2 *rcs, float2 (*a)[4], uint32_t q, uint32_t mt,
                                                uint32_t g, uint32_t c) {
    constexpr uint32_t HD = 64 * KS, QW = 16 * KS;
    __shared__ double qss[4][MT * 16];
    double sA = 0.0, sB = 0.0;
#pragma unroll
    for (int ks = 0; ks < KS; ks++)
#pragma unroll
        for (int i = 0; i < 4; i += 2) {
            sA += (double)a[ks][i].x * a[ks][i].x;
            sA += (double)a[ks][i].y * a[ks][i].y;
            sB += (double)a[ks][i + 1].x * a[ks][i + 1].x;
            sB += (double)a[ks][i + 1].y * a[ks][i + 1].y;
        }
    sA += __shfl_xor_sync(0xffffffffu, sA, 1);
    sB += __shfl_xor_sync(0xffffffffu, sB, 1);
    sA += __shfl_xor_sync(0xffffffffu, sA, 2);
    sB += __shfl_xor_sync(0xffffffffu, sB, 2);
    if (c == 0) {
        qss[q][mt * 16 + g] = sA;
        qss[q][mt * 16 + g + 8] = sB;
    }
    __syncthreads();
    double tA = qss[0][mt * 16 + g], tB = qss[0][mt * 16 + g + 8];
#pragma unroll
    for (int k = 1; k < 4; k++) {
        tA += qss[k][mt * 16 + g];
        tB += qss[k][mt * 16 + g + 8];
    }
    float rA = (float)(1.0 / sqrt(tA / HD + op.q_eps)), rB = (float)(1.0 / sqrt(tB / HD + op.q_eps));
    uint32_t rot0 = HD - 2 * op.n_pairs;
#pragma unroll
    for (int ks = 0; ks < KS; ks++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float r = i & 1 ? rB : rA;
            float v[2] = {a[ks][i].x * r, a[ks][i].y * r};
            uint32_t d = q * QW + ks * 16 + 2 * c + (i >> 1) * 8;
            if (op.n_pairs && d >= rot0) {
                float2 cs = rcs[(d - rot0) / 2];
                rope_pair(v, cs.x, cs.y, 0);
            }
            a[ks][i] = make_float2(v[0], v[1]);
        }
}

static size_t attn_mma_smem(uint32_t hd, int mt, bool split) {
    return (size_t)AT_ROWS * hd * 4 + 2 * (size_t)AT_ROWS * (hd + 8) * 2 + 4 * (size_t)mt * 16 * AT_SP * 4 +
           (split ? 0 : (size_t)mt * 128 * (hd / 8) * 4);
}

/* KS = hd / 64 (k16 steps per head-dim quarter); MT = M tiles (16 heads)
 * per block. Grid: (head blocks, tokens), or with SPLIT (head blocks,
 * segments, tokens) with seg_stride slots per token. */
template <int KS, int MT, bool SPLIT>
__global__ void __launch_bounds__(128 * MT, 1) attn_mma_kernel(attn_op op, uint32_t seg_stride) {
    __shared__ float2 rcs[128]; /* the token's rotation: the output's (!SPLIT) and the raw queries' */
    if (!SPLIT || op.q_eps > 0.0f) att_rope_table(op, op.pos0 + (SPLIT ? blockIdx.z : blockIdx.y), rcs);
    pdl_enter();
#if __CUDA_ARCH__ >= 800
    constexpr int HD = 64 * KS, QW = 16 * KS, KST = HD + 8, NTH = 128 * MT, C4 = HD / 4;
    extern __shared__ __align__(16) unsigned char smem[];
    float *stage = (float *)smem;                            /* AT_ROWS x HD: the next tile as read */
    uint16_t *khi = (uint16_t *)(stage + AT_ROWS * HD);      /* AT_ROWS x KST */
    uint16_t *klo = khi + AT_ROWS * KST;                     /* AT_ROWS x KST */
    float *sp = (float *)(klo + AT_ROWS * KST);              /* 4 quarters x MT*16 heads x AT_SP */
    float *orun = sp + 4 * MT * 16 * AT_SP;                  /* !SPLIT: the folded output, 8 KS x NTH */
    __shared__ const float *rp[AT_ROWS];
    uint32_t t = SPLIT ? blockIdx.z : blockIdx.y, tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    uint32_t mt = w >> 2, q = w & 3, g = lane >> 2, c = lane & 3;
    uint64_t p = op.pos0 + t;
    uint32_t hA = (blockIdx.x * MT + mt) * 16 + g, hB = hA + 8;
    uint32_t n_raw, n_rows = att_rows(op, p, &n_raw);
    uint32_t r_begin = 0, r_end = n_rows;
    if (SPLIT) {
        r_begin = blockIdx.y * AT_SEG;
        if (r_begin >= n_rows) return; /* the whole block: this token has fewer segments */
        r_end = r_begin + AT_SEG < n_rows ? r_begin + AT_SEG : n_rows;
    }

    /* the first tile on its way while Q is split */
    if (tid < AT_ROWS) rp[tid] = r_begin + tid < r_end ? att_row(op, p, t, n_raw, r_begin + tid) : NULL;
    __syncthreads();
    for (uint32_t i = tid; i < AT_ROWS * C4; i += NTH) {
        uint32_t r = i / C4, c4 = i % C4;
        if (rp[r]) cp_async16(stage + r * HD + 4 * c4, rp[r] + 4 * c4);
    }
    cp_async_commit();

    /* this warp's A operands: heads hA, hB over dims quarter q (a[ks][i]:
     * dims d and d + 8 of hA (i = 0, 2) and hB (i = 1, 3)) */
    uint32_t qh[KS][4], ql[KS][4];
    {
        const float *qa = op.q + ((uint64_t)t * op.H + hA) * HD, *qb = op.q + ((uint64_t)t * op.H + hB) * HD;
        float2 a[KS][4];
#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
            uint32_t d = q * QW + ks * 16 + 2 * c;
            a[ks][0] = hA < op.H ? *(const float2 *)(qa + d) : make_float2(0.0f, 0.0f);
            a[ks][1] = hB < op.H ? *(const float2 *)(qb + d) : make_float2(0.0f, 0.0f);
            a[ks][2] = hA < op.H ? *(const float2 *)(qa + d + 8) : make_float2(0.0f, 0.0f);
            a[ks][3] = hB < op.H ? *(const float2 *)(qb + d + 8) : make_float2(0.0f, 0.0f);
        }
        if (op.q_eps > 0.0f) att_q_transform<KS, MT>(op, rcs, a, q, mt, g, c);
#pragma unroll
        for (int ks = 0; ks < KS; ks++)
#pragma unroll
            for (int i = 0; i < 4; i++) split2(a[ks][i].x, a[ks][i].y, &qh[ks][i], &ql[ks][i]);
    }
    float scale = 1.0f / sqrtf((float)HD);
    /* folded state (from the sink) and the current segment's */
    float MA = hA < op.H ? op.sinks[hA] : 0.0f, MB = hB < op.H ? op.sinks[hB] : 0.0f, LA = 1.0f, LB = 1.0f;
    float mA = -INFINITY, mB = -INFINITY, lA = 0.0f, lB = 0.0f;
    float o[2 * KS][4];
#pragma unroll
    for (int j = 0; j < 2 * KS; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    if (!SPLIT)
        for (int i = 0; i < 8 * KS; i++) orun[i * NTH + tid] = 0.0f;

    for (uint32_t r0 = r_begin; r0 < r_end; r0 += AT_ROWS) {
        uint32_t nr = r_end - r0 < AT_ROWS ? r_end - r0 : AT_ROWS;
        cp_async_wait_all();
        __syncthreads(); /* the tile is in stage; every warp is done with the previous one */
        for (uint32_t i = tid; i < AT_ROWS * C4; i += NTH) {
            uint32_t r = i / C4, c4 = i % C4;
            float4 v = r < nr ? *(const float4 *)(stage + r * HD + 4 * c4) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            uint2 h, l;
            split2(v.x, v.y, &h.x, &l.x);
            split2(v.z, v.w, &h.y, &l.y);
            *(uint2 *)(khi + r * KST + 4 * c4) = h;
            *(uint2 *)(klo + r * KST + 4 * c4) = l;
        }
        uint32_t r1 = r0 + AT_ROWS;
        if (tid < AT_ROWS) rp[tid] = r1 + tid < r_end ? att_row(op, p, t, n_raw, r1 + tid) : NULL;
        __syncthreads(); /* stage free, rows split, next row pointers visible */
        if (r1 < r_end) {
            for (uint32_t i = tid; i < AT_ROWS * C4; i += NTH) {
                uint32_t r = i / C4, c4 = i % C4;
                if (rp[r]) cp_async16(stage + r * HD + 4 * c4, rp[r] + 4 * c4);
            }
        }
        cp_async_commit();

        /* partial scores over dims quarter q: 16 heads x 32 rows */
        float s[4][4];
#pragma unroll
        for (int nt = 0; nt < 4; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
            uint32_t d = q * QW + ks * 16 + 2 * c;
#pragma unroll
            for (int nt = 0; nt < 4; nt++) {
                uint32_t off = (nt * 8 + g) * KST + d;
                uint32_t bh0 = *(const uint32_t *)(khi + off), bh1 = *(const uint32_t *)(khi + off + 8);
                uint32_t bl0 = *(const uint32_t *)(klo + off), bl1 = *(const uint32_t *)(klo + off + 8);
                mma3(s[nt], qh[ks], ql[ks], bh0, bh1, bl0, bl1);
            }
        }
        float *spw = sp + (q * MT * 16 + mt * 16 + g) * AT_SP + 2 * c;
#pragma unroll
        for (int nt = 0; nt < 4; nt++) {
            *(float2 *)(spw + nt * 8) = make_float2(s[nt][0], s[nt][1]);
            *(float2 *)(spw + 8 * AT_SP + nt * 8) = make_float2(s[nt][2], s[nt][3]);
        }
        __syncthreads();

        /* whole scores, online softmax (every warp of the group does the
         * same for its 16 heads) */
        float tmA = -INFINITY, tmB = -INFINITY;
        const float *spr = sp + (mt * 16 + g) * AT_SP + 2 * c;
        const uint32_t qs = MT * 16 * AT_SP;
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
#pragma unroll
            for (int hb = 0; hb < 2; hb++) {
                uint32_t off = hb * 8 * AT_SP + nt * 8;
                float2 p0 = *(const float2 *)(spr + off), p1 = *(const float2 *)(spr + qs + off);
                float2 p2 = *(const float2 *)(spr + 2 * qs + off), p3 = *(const float2 *)(spr + 3 * qs + off);
                float v0 = ((p0.x + p1.x) + (p2.x + p3.x)) * scale, v1 = ((p0.y + p1.y) + (p2.y + p3.y)) * scale;
                uint32_t col = nt * 8 + 2 * c;
                if (col >= nr) v0 = -INFINITY;
                if (col + 1 >= nr) v1 = -INFINITY;
                s[nt][2 * hb] = v0;
                s[nt][2 * hb + 1] = v1;
                if (hb) tmB = fmaxf(tmB, fmaxf(v0, v1));
                else tmA = fmaxf(tmA, fmaxf(v0, v1));
            }
        tmA = fmaxf(tmA, __shfl_xor_sync(0xffffffffu, tmA, 1));
        tmA = fmaxf(tmA, __shfl_xor_sync(0xffffffffu, tmA, 2));
        tmB = fmaxf(tmB, __shfl_xor_sync(0xffffffffu, tmB, 1));
        tmB = fmaxf(tmB, __shfl_xor_sync(0xffffffffu, tmB, 2));
        float mnA = fmaxf(mA, tmA), mnB = fmaxf(mB, tmB), seA = 0.0f, seB = 0.0f;
#pragma unroll
        for (int nt = 0; nt < 4; nt++) {
            s[nt][0] = expf(s[nt][0] - mnA);
            s[nt][1] = expf(s[nt][1] - mnA);
            s[nt][2] = expf(s[nt][2] - mnB);
            s[nt][3] = expf(s[nt][3] - mnB);
            seA += s[nt][0];
            seA += s[nt][1];
            seB += s[nt][2];
            seB += s[nt][3];
        }
        seA += __shfl_xor_sync(0xffffffffu, seA, 1);
        seA += __shfl_xor_sync(0xffffffffu, seA, 2);
        seB += __shfl_xor_sync(0xffffffffu, seB, 1);
        seB += __shfl_xor_sync(0xffffffffu, seB, 2);
        /* the first tile of a segment: exp(-inf) = 0 clears the state */
        float corrA = expf(mA - mnA), corrB = expf(mB - mnB);
        lA = lA * corrA + seA;
        lB = lB * corrB + seB;
        mA = mnA;
        mB = mnB;
#pragma unroll
        for (int j = 0; j < 2 * KS; j++) {
            o[j][0] *= corrA;
            o[j][1] *= corrA;
            o[j][2] *= corrB;
            o[j][3] *= corrB;
        }
        /* P as A operands: k16 step kk covers rows 16kk .. 16kk+15 */
        uint32_t ph[2][4], pl[2][4];
#pragma unroll
        for (int kk = 0; kk < 2; kk++) {
            split2(s[2 * kk][0], s[2 * kk][1], &ph[kk][0], &pl[kk][0]);
            split2(s[2 * kk][2], s[2 * kk][3], &ph[kk][1], &pl[kk][1]);
            split2(s[2 * kk + 1][0], s[2 * kk + 1][1], &ph[kk][2], &pl[kk][2]);
            split2(s[2 * kk + 1][2], s[2 * kk + 1][3], &ph[kk][3], &pl[kk][3]);
        }
        /* O += P V over this warp's dims quarter */
#pragma unroll
        for (int kk = 0; kk < 2; kk++) {
            uint32_t row = 16 * kk + ((lane >> 3) & 1) * 8 + (lane & 7);
#pragma unroll
            for (int jp = 0; jp < KS; jp++) {
                uint32_t off = row * KST + q * QW + jp * 16 + (lane >> 4) * 8;
                uint32_t vh[4], vl[4];
                ldsm_x4_t(vh, khi + off);
                ldsm_x4_t(vl, klo + off);
                mma3(o[2 * jp], ph[kk], pl[kk], vh[0], vh[1], vl[0], vl[1]);
                mma3(o[2 * jp + 1], ph[kk], pl[kk], vh[2], vh[3], vl[2], vl[3]);
            }
        }
        if (!SPLIT && ((r1 - r_begin) % AT_SEG == 0 || r1 >= r_end)) {
            /* a segment is complete: fold it in and start the next (with
             * SPLIT the block's one segment is written out below) */
            float aA, bA, aB, bB;
            fold_ml(&MA, &LA, mA, lA, &aA, &bA);
            fold_ml(&MB, &LB, mB, lB, &aB, &bB);
#pragma unroll
            for (int j = 0; j < 2 * KS; j++) {
                float *r = orun + j * 4 * NTH + tid;
                r[0] = r[0] * aA + o[j][0] * bA;
                r[NTH] = r[NTH] * aA + o[j][1] * bA;
                r[2 * NTH] = r[2 * NTH] * aB + o[j][2] * bB;
                r[3 * NTH] = r[3 * NTH] * aB + o[j][3] * bB;
                o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
            }
            mA = mB = -INFINITY;
            lA = lB = 0.0f;
        }
    }

    if (SPLIT) {
        uint64_t slot = (uint64_t)t * seg_stride + blockIdx.y;
#pragma unroll
        for (int hb = 0; hb < 2; hb++) {
            uint32_t h = hb ? hB : hA;
            if (h >= op.H) continue;
            float *po = part_o(op, slot, h);
#pragma unroll
            for (int j = 0; j < 2 * KS; j++)
                *(float2 *)(po + q * QW + j * 8 + 2 * c) = make_float2(o[j][2 * hb], o[j][2 * hb + 1]);
            if (q == 0 && c == 0) *(float2 *)part_ml(op, slot, h) = make_float2(hb ? mB : mA, hb ? lB : lA);
        }
    } else {
#pragma unroll
        for (int j = 0; j < 2 * KS; j++) {
            uint32_t d = q * QW + j * 8 + 2 * c;
            const float *r = orun + j * 4 * NTH + tid;
            if (hA < op.H) att_store(op, rcs, t, hA, d, r[0], r[NTH], LA);
            if (hB < op.H) att_store(op, rcs, t, hB, d, r[2 * NTH], r[3 * NTH], LB);
        }
    }
#else
    (void)op;
    (void)seg_stride;
#endif
}

/* Decode: folds the segments' partials of (head, token) in order, as the
 * chunk kernel does in its block. */
__global__ void attn_fold_kernel(attn_op op, uint32_t seg_stride) {
    __shared__ float2 rcs[128];
    uint32_t h = blockIdx.x, t = blockIdx.y;
    uint64_t p = op.pos0 + t;
    att_rope_table(op, p, rcs);
    __syncthreads();
    pdl_enter();
    uint32_t n_raw, n_seg = (att_rows(op, p, &n_raw) + AT_SEG - 1) / AT_SEG;
    uint64_t slot0 = (uint64_t)t * seg_stride;
    for (uint32_t d = 2 * threadIdx.x; d < op.hd; d += 2 * blockDim.x) {
        float M = op.sinks[h], L = 1.0f, o0 = 0.0f, o1 = 0.0f;
        for (uint32_t sg = 0; sg < n_seg; sg++) {
            float2 ml = *(const float2 *)part_ml(op, slot0 + sg, h);
            float2 v = *(const float2 *)(part_o(op, slot0 + sg, h) + d);
            float a, b;
            fold_ml(&M, &L, ml.x, ml.y, &a, &b);
            o0 = o0 * a + v.x * b;
            o1 = o1 * a + v.y * b;
        }
        att_store(op, rcs, t, h, d, o0, o1, L);
    }
}

/* The opt-in shared memory limits, raised at model load (k_attn_prepare)
 * and never while a decode step is being captured into a graph. A variant
 * whose shared memory the GPU cannot give a block is not used: head dim
 * 512 takes 141 KB (split), 173 KB (one M tile) and 215 KB (two), where
 * an A100 gives 163 KB and an RTX card 99 KB (Hopper: 227 KB); without the
 * one-tile variant the fp32 kernel runs (attn_mma_pick). */
enum { AV_ONE, AV_TWO, AV_SPLIT, AV_N }; /* MT = 1, MT = 2, MT = 1 split */
static bool attn_mma_ready[4], attn_mma_fits[4][AV_N];
static int attn_mma_ok = -1; /* device code has bf16 mma.sync (sm_80+) */

template <int KS> static cudaError_t attn_mma_raise(bool *fits) {
    size_t limit = k_smem_optin();
#define RAISE(V, MT, SP)                                                                                         \
    {                                                                                                            \
        size_t need = attn_mma_smem(64 * KS, MT, SP);                                                            \
        fits[V] = need <= limit;                                                                                 \
        if (fits[V]) {                                                                                           \
            cudaError_t e = cudaFuncSetAttribute(attn_mma_kernel<KS, MT, SP>,                                    \
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)need);        \
            if (e != cudaSuccess) return e;                                                                      \
        }                                                                                                        \
    }
    RAISE(AV_ONE, 1, false) RAISE(AV_TWO, 2, false) RAISE(AV_SPLIT, 1, true)
#undef RAISE
    return cudaSuccess;
}

static int attn_ks_index(uint32_t hd) {
    return hd == 64 ? 0 : hd == 128 ? 1 : hd == 256 ? 2 : hd == 512 ? 3 : -1;
}

cudaError_t k_attn_prepare(uint32_t hd) {
    if (attn_mma_ok < 0) {
        const char *env = getenv("DS4_CUDA_ATTN_FP32");
        attn_mma_ok = k_code_arch() >= 800 && !(env && env[0] == '1'); /* the mma instructions are there */
    }
    int ki = attn_ks_index(hd);
    if (!attn_mma_ok || ki < 0 || attn_mma_ready[ki]) return cudaSuccess;
    bool *f = attn_mma_fits[ki];
    cudaError_t e = ki == 0 ? attn_mma_raise<1>(f) : ki == 1 ? attn_mma_raise<2>(f) : ki == 2 ? attn_mma_raise<4>(f)
                                                                                               : attn_mma_raise<8>(f);
    if (e == cudaSuccess) attn_mma_ready[ki] = true;
    return e;
}

template <int KS> static void attn_mma_launch(cudaStream_t st, const attn_op *op, int mt, uint32_t n_seg) {
    unsigned m_tiles = div_up(op->H, 16);
    if (n_seg) {
        k_launch(attn_mma_kernel<KS, 1, true>, dim3(m_tiles, n_seg, op->n), 128, attn_mma_smem(op->hd, 1, true), st, *op, n_seg);
    } else if (mt == 2) {
        k_launch(attn_mma_kernel<KS, 2, false>, dim3(div_up(m_tiles, 2), op->n), 256, attn_mma_smem(op->hd, 2, false), st, *op, 0);
    } else {
        k_launch(attn_mma_kernel<KS, 1, false>, dim3(m_tiles, op->n), 128, attn_mma_smem(op->hd, 1, false), st, *op, 0);
    }
}

static bool aligned16(const void *ptr) { return ((uintptr_t)ptr & 15) == 0; }

uint32_t k_attn_segments(uint64_t rows) { return (uint32_t)((rows + AT_SEG - 1) / AT_SEG); }

/* The tensor-core variant for op: its M tiles and segment count (0: not
 * split), or false where none applies (then the fp32 kernel runs). The
 * kernel copies rows with 16-byte cp.async and needs the rotated dims to
 * start on a pair. */
static bool attn_mma_pick(const attn_op *op, int *mt, uint32_t *n_seg) {
    int ki = attn_ks_index(op->hd);
    if (ki < 0 || attn_mma_ok != 1 || !attn_mma_ready[ki] || !aligned16(op->kv) || !aligned16(op->ring) ||
        (op->ratio && !aligned16(op->comp)) || !aligned16(op->q) || !aligned16(op->out) || 2 * op->n_pairs > op->hd)
        return false;
    /* one M tile unsplit runs every call: where it does not fit, the fp32
     * kernel runs every call instead, so that chunks and single tokens
     * keep giving the same bits */
    const bool *fits = attn_mma_fits[ki];
    if (!fits[AV_ONE]) return false;
    /* Rows grow with the position: the last token has the most. */
    uint64_t p = op->pos0 + op->n - 1, n_raw = p + 1 < op->W ? p + 1 : op->W, n_comp = 0;
    if (op->ratio) {
        uint64_t n_vis = (p + 1) / op->ratio;
        n_comp = op->ratio == 4 && n_vis > op->topk ? op->topk : n_vis;
    }
    uint32_t segs = (uint32_t)((n_raw + n_comp + AT_SEG - 1) / AT_SEG);
    /* A block per segment when few tokens would leave the GPU idle and
     * the partials fit; 32 heads per block once there are tokens enough
     * to fill the GPU. The bits are the same either way (see above), so a
     * variant past the GPU's shared memory gives way to another. */
    bool split = fits[AV_SPLIT] && op->part && op->n <= 8 && segs > 1 && (uint64_t)op->n * segs <= op->part_slots;
    *mt = !split && op->n >= 16 && op->H > 16 && fits[AV_TWO] ? 2 : 1;
    *n_seg = split ? segs : 0;
    return true;
}

static bool attn_mma_usable(const attn_op *op) {
    int mt;
    uint32_t n_seg;
    return attn_mma_pick(op, &mt, &n_seg);
}

bool k_attention_norms_q(const attn_op *op) { return attn_mma_usable(op); } /* head dims 64..512 only */

cudaError_t k_attention(cudaStream_t st, const attn_op *op) {
    if (op->n == 0) return cudaSuccess;
    if (op->hd > K_MAX_HEAD_DIM || op->hd % 2) return cudaErrorInvalidValue;
    int ki = attn_ks_index(op->hd), mt;
    uint32_t n_seg;
    if (attn_mma_pick(op, &mt, &n_seg)) {
        switch (ki) {
        case 0: attn_mma_launch<1>(st, op, mt, n_seg); break;
        case 1: attn_mma_launch<2>(st, op, mt, n_seg); break;
        case 2: attn_mma_launch<4>(st, op, mt, n_seg); break;
        default: attn_mma_launch<8>(st, op, mt, n_seg); break;
        }
        if (n_seg) k_launch(attn_fold_kernel, dim3(op->H, op->n), 128, 0, st, *op, n_seg);
        return LAUNCH_STATUS();
    }
    if (op->q_eps > 0.0f) return cudaErrorInvalidValue; /* the caller transforms q here (k_attention_norms_q) */
    k_launch(attention_kernel, dim3(op->H, op->n), ATT_THREADS, op->hd * sizeof(float), st, *op);
    return LAUNCH_STATUS();
}

__global__ void ring_write_kernel(const float *kv, uint64_t first, uint64_t pos0, uint32_t W, uint32_t hd, float *ring) {
    pdl_enter();
    uint64_t p = first + blockIdx.x;
    for (uint32_t c = threadIdx.x; c < hd; c += blockDim.x) ring[(p % W) * hd + c] = kv[(p - pos0) * hd + c];
}

cudaError_t k_ring_write(cudaStream_t st, const float *kv, uint32_t n, uint64_t pos0, uint32_t W, uint32_t hd, float *ring) {
    if (n == 0) return cudaSuccess;
    uint64_t end = pos0 + n, first = n > W ? end - W : pos0;
    k_launch(ring_write_kernel, (unsigned)(end - first), 128, 0, st, kv, first, pos0, W, hd, ring);
    return LAUNCH_STATUS();
}

DS4_TRACE_EXPORT(k_attn)
