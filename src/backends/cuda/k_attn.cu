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
 * chunk's attention) and compressed rows emitted for windows that end at or
 * before it (all emitted before the attention kernel runs). */
#include "backends/cuda/common.cuh"
#include "backends/cuda/kernels.cuh"
#include "backends/cuda/rowfn.cuh"

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
    row_transform(pooled, width, 1, op.norm_w, op.eps, op.inv_freq, op.n_pairs, (uint64_t)start, 0, op.qat, op.n_rot, red);
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
    comp_emit_kernel<<<(unsigned)(w_end - w_first), threads, smem, st>>>(*op, w_first);
    return LAUNCH_STATUS();
}

/* One block per slot: the frontier as the CPU would hold it at pos0 + n. */
__global__ void comp_frontier_kernel(comp_op op) {
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
    comp_frontier_kernel<<<n_slots, 256, 0, st>>>(*op);
    return LAUNCH_STATUS();
}

/* ---- indexer ------------------------------------------------------------------ */

#define IDX_KEYS 32 /* keys per block */

/* Block: 32 keys x 4 head groups. Thread (key kk, group g) sums heads
 * g, g+4, ...; the four group sums are then added in a fixed order. */
__global__ void idx_scores_kernel(const float *iq, const float *iw, uint32_t IH, uint32_t d, const float *keys,
                                  uint64_t pos0, uint32_t topk, float *scores, uint64_t stride) {
    extern __shared__ float sm[];
    float *q = sm;                            /* IH x d */
    float *kt = q + (size_t)IH * d;           /* IDX_KEYS x (d + 1) */
    float *wt = kt + (size_t)IDX_KEYS * (d + 1); /* IH */
    float *part = wt + IH;                    /* 4 x IDX_KEYS */
    uint32_t t = blockIdx.y;
    uint64_t n_vis = (pos0 + t + 1) / 4;
    uint64_t w0 = (uint64_t)blockIdx.x * IDX_KEYS;
    if (n_vis <= topk || w0 >= n_vis) return; /* uniform over the block */
    const float *qt = iq + (uint64_t)t * IH * d;
    for (uint32_t i = threadIdx.x; i < IH * d; i += blockDim.x) q[i] = qt[i];
    float wscale = 1.0f / sqrtf((float)IH);
    for (uint32_t h = threadIdx.x; h < IH; h += blockDim.x) wt[h] = iw[(uint64_t)t * IH + h] * wscale;
    for (uint32_t i = threadIdx.x; i < IDX_KEYS * d; i += blockDim.x) {
        uint32_t kk = i / d, c = i % d;
        uint64_t w = w0 + kk;
        kt[kk * (d + 1) + c] = w < n_vis ? keys[w * d + c] : 0.0f;
    }
    __syncthreads();
    uint32_t kk = threadIdx.x % IDX_KEYS, g = threadIdx.x / IDX_KEYS;
    float scale = 1.0f / sqrtf((float)d);
    float s = 0;
    for (uint32_t h = g; h < IH; h += 4) {
        const float *qh = q + (size_t)h * d, *k = kt + kk * (d + 1);
        float dot = 0;
        for (uint32_t c = 0; c < d; c++) dot += qh[c] * k[c];
        if (dot > 0) s += dot * scale * wt[h];
    }
    part[g * IDX_KEYS + kk] = s;
    __syncthreads();
    if (threadIdx.x < IDX_KEYS && w0 + threadIdx.x < n_vis) {
        float tot = ((part[threadIdx.x] + part[IDX_KEYS + threadIdx.x]) + part[2 * IDX_KEYS + threadIdx.x]) +
                    part[3 * IDX_KEYS + threadIdx.x];
        scores[(uint64_t)t * stride + w0 + threadIdx.x] = tot;
    }
}

static size_t idx_smem(uint32_t IH, uint32_t d) {
    return ((size_t)IH * d + (size_t)IDX_KEYS * (d + 1) + IH + 4 * IDX_KEYS) * sizeof(float);
}

/* The opt-in shared memory limit is a per-function setting: raised once at
 * model load, never while a decode step is being captured into a graph. */
static size_t idx_smem_raised = 48 * 1024;

cudaError_t k_idx_prepare(uint32_t n_head, uint32_t d) {
    size_t smem = idx_smem(n_head, d);
    if (smem <= idx_smem_raised) return cudaSuccess;
    cudaError_t e = cudaFuncSetAttribute(idx_scores_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e == cudaSuccess) idx_smem_raised = smem;
    return e;
}

cudaError_t k_idx_scores(cudaStream_t st, const float *iq, const float *iw, uint32_t n, uint32_t n_head, uint32_t d,
                         const float *keys, uint64_t pos0, uint32_t topk, float *scores, uint64_t score_stride) {
    uint64_t n_vis_max = (pos0 + n) / 4;
    if (n == 0 || n_vis_max <= topk) return cudaSuccess;
    size_t smem = idx_smem(n_head, d);
    if (smem > 48 * 1024 && smem > idx_smem_raised) return cudaErrorInvalidValue; /* k_idx_prepare first */
    idx_scores_kernel<<<dim3(div_up(n_vis_max, IDX_KEYS), n), 4 * IDX_KEYS, smem, st>>>(iq, iw, n_head, d, keys, pos0, topk,
                                                                                       scores, score_stride);
    return LAUNCH_STATUS();
}

/* Scores as unsigned keys that order like the floats (larger is better). */
__device__ __forceinline__ uint32_t order_key(float f) {
    uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* Exclusive prefix sum of one flag per thread over the block (1024
 * threads); returns the thread's offset, *total gets the block's sum. */
__device__ __forceinline__ uint32_t block_scan(uint32_t flag, uint32_t *wsum, uint32_t *total) {
    uint32_t lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    uint32_t ballot = __ballot_sync(0xffffffffu, flag);
    uint32_t before = __popc(ballot & ((1u << lane) - 1));
    __syncthreads();
    if (lane == 0) wsum[wid] = __popc(ballot);
    __syncthreads();
    uint32_t off = 0, tot = 0;
    for (uint32_t i = 0; i < nw; i++) {
        if (i < wid) off += wsum[i];
        tot += wsum[i];
    }
    *total = tot;
    return off + before;
}

/* One block per query token: radix-select the topk-th best key, then keep
 * every key above it and the lowest-index keys equal to it, in index order. */
__global__ void idx_topk_kernel(const float *scores, uint64_t stride, uint64_t pos0, uint32_t topk, int32_t *sel) {
    __shared__ uint32_t hist[256];
    __shared__ uint32_t wsum[32];
    __shared__ uint32_t s_digit, s_need;
    uint32_t t = blockIdx.x;
    uint64_t n_vis = (pos0 + t + 1) / 4;
    if (n_vis <= topk) return;
    const float *sc = scores + (uint64_t)t * stride;
    uint32_t prefix = 0, mask = 0, need = topk;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (uint32_t i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        for (uint64_t w = threadIdx.x; w < n_vis; w += blockDim.x) {
            uint32_t k = order_key(sc[w]);
            if ((k & mask) == prefix) atomicAdd(&hist[(k >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            uint32_t acc = 0, dgt = 0;
            for (int b = 255; b >= 0; b--) {
                if (acc + hist[b] >= need) {
                    dgt = (uint32_t)b;
                    break;
                }
                acc += hist[b];
            }
            s_digit = dgt;
            s_need = need - acc;
        }
        __syncthreads();
        prefix |= s_digit << shift;
        mask |= 255u << shift;
        need = s_need;
        __syncthreads();
    }
    /* prefix is the threshold key; `need` keys equal to it are kept. */
    uint32_t out = 0, eq_seen = 0;
    int32_t *dst = sel + (uint64_t)t * topk;
    for (uint64_t base = 0; base < n_vis; base += blockDim.x) {
        uint64_t w = base + threadIdx.x;
        uint32_t k = w < n_vis ? order_key(sc[w]) : 0;
        uint32_t gt = w < n_vis && k > prefix, eq = w < n_vis && k == prefix;
        uint32_t n_eq;
        uint32_t eq_rank = block_scan(eq, wsum, &n_eq);
        uint32_t take = gt || (eq && eq_seen + eq_rank < need);
        uint32_t n_take;
        uint32_t pos = block_scan(take, wsum, &n_take);
        if (take) dst[out + pos] = (int32_t)w;
        out += n_take;
        eq_seen += n_eq;
    }
}

cudaError_t k_idx_topk(cudaStream_t st, const float *scores, uint64_t score_stride, uint32_t n, uint64_t pos0,
                       uint32_t topk, int32_t *sel) {
    if (n == 0 || (pos0 + n) / 4 <= topk) return cudaSuccess;
    idx_topk_kernel<<<n, 1024, 0, st>>>(scores, score_stride, pos0, topk, sel);
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

cudaError_t k_attention(cudaStream_t st, const attn_op *op) {
    if (op->n == 0) return cudaSuccess;
    if (op->hd > K_MAX_HEAD_DIM || op->hd % 2) return cudaErrorInvalidValue;
    attention_kernel<<<dim3(op->H, op->n), ATT_THREADS, op->hd * sizeof(float), st>>>(*op);
    return LAUNCH_STATUS();
}

__global__ void ring_write_kernel(const float *kv, uint64_t first, uint64_t pos0, uint32_t W, uint32_t hd, float *ring) {
    uint64_t p = first + blockIdx.x;
    for (uint32_t c = threadIdx.x; c < hd; c += blockDim.x) ring[(p % W) * hd + c] = kv[(p - pos0) * hd + c];
}

cudaError_t k_ring_write(cudaStream_t st, const float *kv, uint32_t n, uint64_t pos0, uint32_t W, uint32_t hd, float *ring) {
    if (n == 0) return cudaSuccess;
    uint64_t end = pos0 + n, first = n > W ? end - W : pos0;
    ring_write_kernel<<<(unsigned)(end - first), 128, 0, st>>>(kv, first, pos0, W, hd, ring);
    return LAUNCH_STATUS();
}
