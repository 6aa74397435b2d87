/* MoE routing, grouping of tokens by expert, and the weighted sum of the
 * expert outputs (compute/moe.c). The expert matrices themselves run in
 * k_linear.cu (k_ffn_up / k_ffn_down). */
#include "backends/cuda/common.cuh"
#include "backends/cuda/kernels.cuh"
#include "backends/cuda/moefn.cuh"

/* ---- routing ------------------------------------------------------------------ */

__device__ __forceinline__ float softplus_(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

/* Whether candidate (v, i) beats (w, j): larger value, then lower index
 * (select_topk keeps the first maximum in ascending expert order). Scores
 * are never NaN here (route_kernel maps NaN to -inf), so this is a total
 * order and every expert has a distinct rank. */
__device__ __forceinline__ bool beats(float v, uint32_t i, float w, uint32_t j) { return v > w || (v == w && i < j); }

/* One block (256 threads) per token. The K best biased scores are found
 * by rank: each expert counts the experts that beat it, and rank k < K is
 * the k-th pick of the CPU's repeated arg-max (one pass and two barriers,
 * where K arg-max rounds took two barriers and a global load each). With
 * grp (a single token), the block also writes k_moe_group's grouping of
 * its K entries, which saves decode a launch. */
__global__ void route_kernel(const float *logits, uint32_t X, uint32_t K, const int32_t *tokens, const int32_t *tid2eid,
                             const float *bias, float scale, int32_t *ids, float *wts, int32_t *grp) {
    if (gridDim.x == 1) prefetch_l2(bias, (uint64_t)X * sizeof(float)); /* a decode step */
    pdl_enter();
    __shared__ float s[K_MAX_EXPERTS];
    __shared__ __align__(16) float key[K_MAX_EXPERTS];
    __shared__ int sel[K_MAX_USED];
    uint32_t t = blockIdx.x, tid = threadIdx.x;
    const float *l = logits + (uint64_t)t * X;
    for (uint32_t e = tid; e < X; e += blockDim.x) {
        float v = sqrtf(softplus_(l[e])), kb = v + (bias ? bias[e] : 0.0f);
        s[e] = v;
        key[e] = isnan(kb) ? -INFINITY : kb;
    }
    if (tid2eid && tid < K) sel[tid] = tid2eid[(uint64_t)tokens[t] * K + tid];
    __syncthreads();
    if (!tid2eid) {
        for (uint32_t e = tid; e < X; e += blockDim.x) {
            float ke = key[e];
            uint32_t r = 0, f = 0;
            /* four keys a load, eight loads in flight: a load at a time
             * made the count a chain of shared memory latencies */
            const float4 *k4 = (const float4 *)key;
#pragma unroll 8
            for (; f + 4 <= X; f += 4) {
                float4 v = k4[f / 4];
                r += beats(v.x, f, ke, e) + beats(v.y, f + 1, ke, e) + beats(v.z, f + 2, ke, e) + beats(v.w, f + 3, ke, e);
            }
            for (; f < X; f++) r += beats(key[f], f, ke, e);
            if (r < K) sel[r] = (int)e;
        }
        __syncthreads();
    }
    if (tid < K) {
        /* the picks and their scores in registers first, all loads at
         * once (a chain of shared-memory loads here had been 1.6 us of a
         * decode step's routing) */
        int sv[K_MAX_USED];
        float sc[K_MAX_USED];
#pragma unroll
        for (uint32_t k = 0; k < K_MAX_USED; k++) sv[k] = k < K ? sel[k] : 0;
#pragma unroll
        for (uint32_t k = 0; k < K_MAX_USED; k++) sc[k] = k < K ? s[sv[k]] : 0.0f;
        /* weights from the unbiased scores, the sum in slot order */
        int e = sel[tid];
        float sum = 0;
#pragma unroll
        for (uint32_t k = 0; k < K_MAX_USED; k++)
            if (k < K) sum += sc[k];
        ids[(uint64_t)t * K + tid] = e;
        wts[(uint64_t)t * K + tid] = s[e] / (sum + 1e-20f) * scale;
        if (grp) {
            /* distinct experts ascending; an expert's entries in entry
             * order: entry k's place is the number of entries before it in
             * (expert, entry) order */
            int32_t *used = grp + 1, *goff = used + X, *gcnt = goff + X, *members = gcnt + X, *pos = members + K;
            uint32_t place = 0, group = 0, count = 0, n_used = 0;
            bool first = true;
#pragma unroll
            for (uint32_t j = 0; j < K_MAX_USED; j++) {
                if (j >= K) break;
                int f = sv[j];
                bool jfirst = true;
#pragma unroll
                for (uint32_t i = 0; i < K_MAX_USED; i++)
                    if (i < j) jfirst = jfirst && sv[i] != f;
                place += f < e || (f == e && j < tid);
                count += f == e;
                first = first && !(f == e && j < tid);
                group += jfirst && f < e;
                n_used += jfirst;
            }
            members[place] = (int32_t)tid;
            pos[tid] = (int32_t)place;
            if (first) {
                used[group] = e;
                goff[group] = (int32_t)place;
                gcnt[group] = (int32_t)count;
            }
            if (tid == 0) grp[0] = (int32_t)n_used;
        }
    }
}

cudaError_t k_route(cudaStream_t st, const float *logits, uint32_t n, uint32_t n_expert, uint32_t k,
                    const int32_t *tokens, const int32_t *tid2eid, const float *bias, float scale, int32_t *ids,
                    float *wts, int32_t *grp) {
    if (n == 0) return cudaSuccess;
    if (n_expert > K_MAX_EXPERTS || k > K_MAX_USED || k > n_expert || (grp && n != 1)) return cudaErrorInvalidValue;
    k_launch(route_kernel, n, 256, 0, st, logits, n_expert, k, tokens, tid2eid, bias, scale, ids, wts, grp);
    return LAUNCH_STATUS();
}

/* ---- block scan ----------------------------------------------------------------- */

/* Exclusive prefix sum of v over the block (blockDim.x a multiple of 32,
 * at most 1024); *total gets the sum of all. */
__device__ __forceinline__ int block_excl_scan(int v, int *wsum, int *total) {
    uint32_t lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    int inc = v;
    for (int o = 1; o < 32; o <<= 1) {
        int t = __shfl_up_sync(0xffffffffu, inc, o);
        if ((int)lane >= o) inc += t;
    }
    __syncthreads(); /* wsum may still be read by a previous call */
    if (lane == 31) wsum[wid] = inc;
    __syncthreads();
    int before = 0, all = 0;
    for (uint32_t w = 0; w < nw; w++) {
        if (w < wid) before += wsum[w];
        all += wsum[w];
    }
    *total = all;
    return before + inc - v;
}

/* ---- greedy pick ----------------------------------------------------------------- */

/* Whether candidate (v, i) is a better greedy pick than (w, j): ds4_argmax
 * keeps the first maximum among finite logits, so a finite value beats a
 * non-finite one, a larger value a smaller, and on equal values the lower
 * index wins; j < 0 is "none yet". */
__device__ __forceinline__ bool pick_beats(float v, int32_t i, float w, int32_t j) {
    return i >= 0 && (j < 0 || beats(v, (uint32_t)i, w, (uint32_t)j));
}

/* The index of the first maximum among the finite values of x[0..n) (0
 * when none is finite), as ds4_argmax gives it, in two launches: each of
 * PICK_BLOCKS blocks reduces a strided share of x to its best (value,
 * index) pair, then one block reduces those. The order of the reductions
 * does not matter, since pick_beats is a total order on pairs with
 * distinct indices. (One block scanning the 129280 logits alone took 45 us,
 * one memory latency per 1024 values.) */
#define PICK_THREADS 1024
#define PICK_BLOCKS 64

/* The block's best pair, in thread 0's (bv, bi). */
__device__ __forceinline__ void pick_block_reduce(float *bv, int32_t *bi) {
    __shared__ float sv[PICK_THREADS / 32];
    __shared__ int32_t si[PICK_THREADS / 32];
    for (int o = 16; o >= 1; o >>= 1) {
        float v = __shfl_xor_sync(0xffffffffu, *bv, o);
        int32_t i = __shfl_xor_sync(0xffffffffu, *bi, o);
        if (pick_beats(v, i, *bv, *bi)) *bv = v, *bi = i;
    }
    uint32_t warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) sv[warp] = *bv, si[warp] = *bi;
    __syncthreads();
    if (warp == 0) {
        uint32_t nw = blockDim.x / 32;
        *bv = lane < nw ? sv[lane] : 0.0f;
        *bi = lane < nw ? si[lane] : -1;
        for (int o = 16; o >= 1; o >>= 1) {
            float v = __shfl_xor_sync(0xffffffffu, *bv, o);
            int32_t i = __shfl_xor_sync(0xffffffffu, *bi, o);
            if (pick_beats(v, i, *bv, *bi)) *bv = v, *bi = i;
        }
    }
}

__global__ void __launch_bounds__(PICK_THREADS) argmax_part_kernel(const float *x, uint32_t n, float *pv, int32_t *pi) {
    pdl_enter();
    float bv = 0.0f;
    int32_t bi = -1;
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        float v = x[i];
        if (isfinite(v) && (bi < 0 || v > bv)) bv = v, bi = (int32_t)i;
    }
    pick_block_reduce(&bv, &bi);
    if (threadIdx.x == 0) pv[blockIdx.x] = bv, pi[blockIdx.x] = bi;
}

__global__ void __launch_bounds__(PICK_THREADS) argmax_final_kernel(const float *pv, const int32_t *pi, uint32_t parts,
                                                                    int32_t *out, int32_t *out2) {
    pdl_enter();
    float bv = threadIdx.x < parts ? pv[threadIdx.x] : 0.0f;
    int32_t bi = threadIdx.x < parts ? pi[threadIdx.x] : -1;
    pick_block_reduce(&bv, &bi);
    if (threadIdx.x == 0) {
        *out = bi < 0 ? 0 : bi;
        if (out2) *out2 = bi < 0 ? 0 : bi;
    }
}

/* Blocks of a pick or band launch over n values. */
static uint32_t pick_parts(uint32_t n) {
    uint32_t b = div_up(n, PICK_THREADS);
    return b < PICK_BLOCKS ? b : PICK_BLOCKS;
}

uint64_t k_pick_scratch_bytes(void) { return PICK_BLOCKS * (sizeof(float) + sizeof(int32_t)); }

cudaError_t k_argmax(cudaStream_t st, const float *x, uint32_t n, void *scratch, int32_t *out, int32_t *out2) {
    if (n == 0) return cudaErrorInvalidValue;
    float *pv = (float *)scratch;
    int32_t *pi = (int32_t *)(pv + PICK_BLOCKS);
    uint32_t parts = pick_parts(n);
    k_launch(argmax_part_kernel, parts, PICK_THREADS, 0, st, x, n, pv, pi);
    k_launch(argmax_final_kernel, 1, 64, 0, st, (const float *)pv, (const int32_t *)pi, parts, out, out2);
    return LAUNCH_STATUS();
}

/* The candidates of a banded draw (ds4_sample_banded): the finite values
 * of x[0..n) at or above max + T (ln min_p - 3), in ascending index order;
 * out[0] = their count, out[1 + j] the j-th index and vals[j] its value
 * for j < cap. The band is one e-fold wider than the host's
 * (ds4_sample_candidates), so that the device's logf may differ from the
 * host's by its last bits. Three launches of up to PICK_BLOCKS blocks,
 * block b owning the contiguous range b of x: the blocks' maxima; each
 * block's count of candidates (every block takes the maximum of the
 * maxima, and so the same bound); then each block writes its candidates
 * after those of the blocks before it, each thread one contiguous stretch
 * placed by a scan of the threads' counts. (One block alone waits a memory
 * latency per 1024 values, as the one-block arg-max did.) */
__device__ __forceinline__ bool band_in(float v, double lo) { return isfinite(v) && v >= lo; }

__global__ void __launch_bounds__(PICK_THREADS) band_max_kernel(const float *x, uint32_t n, float *pm) {
    pdl_enter();
    __shared__ float smax[PICK_THREADS / 32];
    float mx = -INFINITY;
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        if (isfinite(x[i])) mx = fmaxf(mx, x[i]);
    for (int o = 16; o >= 1; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if ((threadIdx.x & 31) == 0) smax[threadIdx.x >> 5] = mx;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (uint32_t w = 1; w < blockDim.x / 32; w++) mx = fmaxf(mx, smax[w]);
        pm[blockIdx.x] = mx;
    }
}

/* The bound from the blocks' maxima (fmaxf: the same whatever the order). */
__device__ __forceinline__ double band_lo(const float *pm, uint32_t parts, float T, float min_p) {
    float mx = -INFINITY;
    for (uint32_t b = 0; b < parts; b++) mx = fmaxf(mx, pm[b]);
    return (double)mx + (double)T * ((double)logf(min_p) - 3.0);
}

/* This thread's stretch [b0, b1) of its block's range of x. */
__device__ __forceinline__ void band_stretch(uint32_t n, uint32_t parts, uint32_t *b0, uint32_t *b1) {
    uint32_t chunk = (n + parts - 1) / parts, r0 = blockIdx.x * chunk < n ? blockIdx.x * chunk : n;
    uint32_t r1 = r0 + chunk < n ? r0 + chunk : n, per = (chunk + blockDim.x - 1) / blockDim.x;
    *b0 = r0 + threadIdx.x * per < r1 ? r0 + threadIdx.x * per : r1;
    *b1 = *b0 + per < r1 ? *b0 + per : r1;
}

__global__ void __launch_bounds__(PICK_THREADS) band_count_kernel(const float *x, uint32_t n, const float *pm, float T,
                                                                  float min_p, uint32_t *pc) {
    pdl_enter();
    __shared__ int wsum[32];
    uint32_t parts = gridDim.x, b0, b1;
    int c = 0, total;
    double lo = band_lo(pm, parts, T, min_p);
    band_stretch(n, parts, &b0, &b1);
    for (uint32_t i = b0; i < b1; i++) c += band_in(x[i], lo);
    block_excl_scan(c, wsum, &total);
    if (threadIdx.x == 0) pc[blockIdx.x] = (uint32_t)total;
}

__global__ void __launch_bounds__(PICK_THREADS) band_write_kernel(const float *x, uint32_t n, const float *pm, float T,
                                                                  float min_p, const uint32_t *pc, uint32_t cap,
                                                                  int32_t *out, float *vals) {
    pdl_enter();
    __shared__ int wsum[32];
    uint32_t parts = gridDim.x, tid = threadIdx.x, b0, b1;
    int c = 0, all;
    double lo = band_lo(pm, parts, T, min_p);
    uint32_t base = 0, total = 0;
    for (uint32_t b = 0; b < parts; b++) {
        if (b < blockIdx.x) base += pc[b];
        total += pc[b];
    }
    if (blockIdx.x == 0 && tid == 0) out[0] = (int32_t)total;
    if (base >= cap) return; /* nothing of this block's is kept (the whole block leaves) */
    band_stretch(n, parts, &b0, &b1);
    for (uint32_t i = b0; i < b1; i++) c += band_in(x[i], lo);
    uint32_t off = base + (uint32_t)block_excl_scan(c, wsum, &all);
    for (uint32_t i = b0; i < b1 && off < cap; i++)
        if (band_in(x[i], lo)) {
            out[1 + off] = (int32_t)i, vals[off] = x[i];
            off++;
        }
}

cudaError_t k_band(cudaStream_t st, const float *x, uint32_t n, float T, float min_p, uint32_t cap, void *scratch,
                   int32_t *out, float *vals) {
    if (n == 0 || !(T > 0) || !(min_p > 0)) return cudaErrorInvalidValue;
    float *pm = (float *)scratch;
    uint32_t *pc = (uint32_t *)(pm + PICK_BLOCKS);
    uint32_t parts = pick_parts(n);
    k_launch(band_max_kernel, parts, PICK_THREADS, 0, st, x, n, pm);
    k_launch(band_count_kernel, parts, PICK_THREADS, 0, st, x, n, (const float *)pm, T, min_p, pc);
    k_launch(band_write_kernel, parts, PICK_THREADS, 0, st, x, n, (const float *)pm, T, min_p, (const uint32_t *)pc, cap,
             out, vals);
    return LAUNCH_STATUS();
}

/* ---- grouping ------------------------------------------------------------------- */

/* One block of K_MAX_EXPERTS threads, a thread per expert for the counts
 * and offsets. Entries of each expert keep their ascending entry order, so
 * an expert sees its tokens in chunk order: the first warp then places the
 * entries 32 at a time, in order, each after the entries of its expert in
 * earlier rounds (a running cursor per expert) and before its lane
 * neighbours' of the same expert. */
__global__ void moe_group_kernel(const int32_t *ids, uint32_t nE, uint32_t X, int32_t *grp) {
    pdl_enter();
    __shared__ uint16_t sid[K_MAX_GROUP_ENTRIES]; /* expert ids < K_MAX_EXPERTS */
    __shared__ int32_t cnt[K_MAX_EXPERTS];        /* counts, then cursors */
    __shared__ int wsum[32];
    int32_t *used = grp + 1, *goff = used + X, *gcnt = goff + X, *members = gcnt + X, *pos = members + nE;
    for (uint32_t i = threadIdx.x; i < nE; i += blockDim.x) sid[i] = (uint16_t)ids[i];
    for (uint32_t e = threadIdx.x; e < X; e += blockDim.x) cnt[e] = 0;
    __syncthreads();
    for (uint32_t i = threadIdx.x; i < nE; i += blockDim.x) atomicAdd(&cnt[sid[i]], 1);
    __syncthreads();
    uint32_t e = threadIdx.x;
    int c = e < X ? cnt[e] : 0, total;
    int o = block_excl_scan(c, wsum, &total);
    int j = block_excl_scan(c > 0, wsum, &total);
    if (threadIdx.x == 0) grp[0] = total;
    if (c > 0) {
        used[j] = (int32_t)e;
        goff[j] = o;
        gcnt[j] = c;
    }
    if (e < X) cnt[e] = o;
    __syncthreads();
    if (threadIdx.x >= 32) return;
    uint32_t lane = threadIdx.x, below = (1u << lane) - 1;
    for (uint32_t r0 = 0; r0 < nE; r0 += 32) {
        uint32_t i = r0 + lane;
        int ex = i < nE ? sid[i] : -1;
        uint32_t peers = __match_any_sync(0xffffffffu, ex);
        if (ex >= 0) {
            int p = cnt[ex] + __popc(peers & below);
            members[p] = (int32_t)i;
            pos[i] = p;
        }
        __syncwarp();
        if (ex >= 0 && !(peers & below)) cnt[ex] += __popc(peers); /* the expert's first lane moves its cursor */
        __syncwarp();
    }
}

cudaError_t k_moe_group(cudaStream_t st, const int32_t *ids, uint32_t n_entries, uint32_t n_expert, int32_t *grp) {
    if (n_entries > K_MAX_GROUP_ENTRIES || n_expert > K_MAX_EXPERTS) return cudaErrorInvalidValue;
    k_launch(moe_group_kernel, 1, K_MAX_EXPERTS, 0, st, ids, n_entries, n_expert, grp);
    return LAUNCH_STATUS();
}

/* ---- combination -------------------------------------------------------------------- */

__global__ void moe_combine_kernel(const float *shared, const float *dx, const int32_t *ids, const float *wts,
                                   const int32_t *pos, uint32_t K, uint32_t E, float *out) {
    pdl_enter();
    uint32_t t = blockIdx.y, d = blockIdx.x * blockDim.x + threadIdx.x;
    float v;
    if (moe_combine_column(shared, dx, ids, wts, pos, K, E, t, d, &v)) out[(uint64_t)t * E + d] = v;
}

cudaError_t k_moe_combine(cudaStream_t st, const float *shared, const float *d, const int32_t *ids, const float *wts,
                          const int32_t *grp, uint32_t n, uint32_t k, uint32_t n_expert, uint32_t E, float *out) {
    if (n == 0) return cudaSuccess;
    const int32_t *pos = moe_group_pos(grp, n_expert, n, k);
    k_launch(moe_combine_kernel, dim3(div_up(E, 256), n), 256, 0, st, shared, d, ids, wts, pos, k, E, out);
    return LAUNCH_STATUS();
}

DS4_TRACE_EXPORT(k_moe)
