/* Does a persistent kernel beat a chain of launches for one token's
 * products? A stand-alone measurement (no model, no library) of the shape
 * a decode half-layer has: three matrix-vector products of 33.5 MB each
 * (the sizes of q_b, out_a and out_b), each followed by a small one-block
 * step (a norm and a requantization, standing in for the attention, the
 * row transforms and the routing), in a dependent chain.
 *
 *   A  the chain as separate launches captured in a CUDA graph
 *   AP A with programmatic dependent launch (how decode runs today: each
 *      kernel's blocks start while the one before finishes, and wait for
 *      it with griddepcontrol.wait)
 *   A1 A with one block of 32 warps a multiprocessor (the persistent
 *      kernel's warps), to tell a barrier's cost from the warps'
 *   B0 one cooperative kernel, all blocks resident, grid barriers in
 *      place of launches
 *   B  B0, and each block asks for the first bytes of its next product's
 *      rows (asynchronous copies into shared memory) before it waits at
 *      the barrier in front of the small step, so the weights stream
 *      while the small step runs
 *   B0 and B also with each warp taking two rows at a time (twice the
 *      bytes in flight, for half as many warps as A)
 *   AQ AP over contiguous row slabs, each block asking for its slab's
 *      first rows (96 KB with two blocks a multiprocessor, 192 KB with
 *      one) into shared memory before its programmatic wait, all at once
 *      or in pieces of 8, 16 or 32 KB with one piece in flight; block 0's
 *      timeline of one chain follows each AQ line (start / wait returned
 *      / weights landed / end, us)
 *
 * Then the part of the chain that is not grid-wide in a decode layer
 * (q_b -> a step per head group -> out_a, 8 groups), followed by out_b:
 *
 *   G  PDL launches: q_b, one block per group for the step, out_a
 *   D  one launch working down a list of items (q_b row chunks group by
 *      group, each group's step and out_a chunks LAG groups later), every
 *      item waiting on per-group counters in global memory for what it
 *      reads instead of on the whole grid; one block of 1024 threads a
 *      multiprocessor, or two of 512
 *
 * The weights are int8 rows with a float scale per row; every version
 * computes the same integer dot products, so the outputs must be
 * identical (checked; D with blocks of 512 threads sums the step's squares
 * in another order, so only its 1024-thread version is compared). Build
 * and run (sm_90):
 *
 *   nvcc -O3 -arch=sm_90 -std=c++17 --fmad=false -o persist_bench bench/persist/persist_bench.cu
 *   ./persist_bench [iterations] [small-step repeats]
 *
 * It prints the time of one chain (3 products + 3 small steps) for each
 * version, and what the products alone would take at the card's read
 * rate (measured by a plain read kernel here). */
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

namespace cg = cooperative_groups;

#define PROBE_NAME "persist_bench"
#include "../probe.cuh"

#define NP 3           /* products in the chain */
#define THREADS 1024   /* persistent block: 32 warps */
#define PF_MAX (160 << 10) /* shared memory a block fills ahead */
#define KMAX 8192

typedef struct prod {
    const int8_t *w;   /* rows x k int8, row-major */
    const float *ws;   /* rows scales */
    uint32_t rows, k;
} prod;

typedef struct chain {
    prod p[NP];
    int8_t *x[NP];     /* each product's int8 input (k values) */
    float *xs;         /* their scales [NP] */
    float *y[NP];      /* outputs (rows values) */
    uint32_t small_reps;
} chain;

/* ---- the pieces, shared by both shapes --------------------------------------- */

__device__ __forceinline__ int dot16(int4 a, int4 b, int s) {
    s = __dp4a(a.x, b.x, s);
    s = __dp4a(a.y, b.y, s);
    s = __dp4a(a.z, b.z, s);
    return __dp4a(a.w, b.w, s);
}

/* One row by one warp: lane l takes 16-byte pieces l, l + 32, ...; the
 * integer sum does not depend on the order. */
__device__ __forceinline__ float row_dot(const int8_t *wrow, const int8_t *x, uint32_t k, float scale) {
    uint32_t lane = threadIdx.x & 31, n = k / 16, i = lane;
    const int4 *w4 = (const int4 *)wrow, *x4 = (const int4 *)x;
    int s = 0;
    for (; i + 96 < n; i += 128) { /* four pieces in flight a lane */
        int4 a = w4[i], b = w4[i + 32], c = w4[i + 64], d = w4[i + 96];
        s = dot16(a, x4[i], s);
        s = dot16(b, x4[i + 32], s);
        s = dot16(c, x4[i + 64], s);
        s = dot16(d, x4[i + 96], s);
    }
    for (; i < n; i += 32) s = dot16(w4[i], x4[i], s);
    for (int o = 16; o >= 1; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    return (float)s * scale;
}

/* Two rows by one warp, their loads issued together (twice the bytes in
 * flight of row_dot, for a kernel with half the warps). */
__device__ __forceinline__ void row_dot2(const int8_t *wa, const int8_t *wb, const int8_t *x, uint32_t k, float *va,
                                         float *vb) {
    uint32_t lane = threadIdx.x & 31, n = k / 16, i = lane;
    const int4 *a4 = (const int4 *)wa, *b4 = (const int4 *)wb, *x4 = (const int4 *)x;
    int s = 0, t = 0;
    for (; i + 32 < n; i += 64) {
        int4 a = a4[i], b = a4[i + 32], c = b4[i], d = b4[i + 32];
        s = dot16(a, x4[i], s);
        s = dot16(b, x4[i + 32], s);
        t = dot16(c, x4[i], t);
        t = dot16(d, x4[i + 32], t);
    }
    for (; i < n; i += 32) s = dot16(a4[i], x4[i], s), t = dot16(b4[i], x4[i], t);
    for (int o = 16; o >= 1; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o), t += __shfl_xor_sync(0xffffffffu, t, o);
    *va = (float)s, *vb = (float)t;
}

/* The small step after product j: RMS of the first k_next outputs, then
 * those values normalised and quantized to int8 as the next product's
 * input; repeated reps times (a longer step). One block. */
__device__ void small_step(const float *y, uint32_t k_next, uint32_t reps, int8_t *xn, float *xs) {
    __shared__ float red[32];
    __shared__ float amax_s[32];
    for (uint32_t r = 0; r < reps; r++) {
        float ss = 0.0f, am = 0.0f;
        for (uint32_t i = threadIdx.x; i < k_next; i += blockDim.x) ss += __ldcg(y + i) * __ldcg(y + i);
        for (int o = 16; o >= 1; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
        if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
        __syncthreads();
        if (threadIdx.x < 32) {
            float t = threadIdx.x < blockDim.x / 32 ? red[threadIdx.x] : 0.0f;
            for (int o = 16; o >= 1; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
            if (threadIdx.x == 0) red[0] = rsqrtf(t / k_next + 1e-6f);
        }
        __syncthreads();
        float inv = red[0];
        for (uint32_t i = threadIdx.x; i < k_next; i += blockDim.x) am = fmaxf(am, fabsf(__ldcg(y + i) * inv));
        for (int o = 16; o >= 1; o >>= 1) am = fmaxf(am, __shfl_xor_sync(0xffffffffu, am, o));
        if ((threadIdx.x & 31) == 0) amax_s[threadIdx.x >> 5] = am;
        __syncthreads();
        if (threadIdx.x < 32) {
            float t = threadIdx.x < blockDim.x / 32 ? amax_s[threadIdx.x] : 0.0f;
            for (int o = 16; o >= 1; o >>= 1) t = fmaxf(t, __shfl_xor_sync(0xffffffffu, t, o));
            if (threadIdx.x == 0) amax_s[0] = t > 0.0f ? t : 1.0f;
        }
        __syncthreads();
        float q = 127.0f / amax_s[0];
        for (uint32_t i = threadIdx.x; i < k_next; i += blockDim.x) xn[i] = (int8_t)__float2int_rn(__ldcg(y + i) * inv * q);
        if (threadIdx.x == 0) *xs = amax_s[0] / 127.0f; /* of the normalised values: no growth */
        __syncthreads();
    }
}

/* ---- A: separate launches ----------------------------------------------------- */

/* Programmatic dependent launch (PDL builds): let the next kernel's
 * blocks start, then wait for the one before to finish. */
template <bool PDL> __device__ __forceinline__ void pdl_wait() {
    if (PDL) asm volatile("griddepcontrol.launch_dependents;\n\tgriddepcontrol.wait;" ::: "memory");
}

template <bool PDL> __global__ void gemv_kernel(prod p, const int8_t *x, const float *xs, float *y) {
    __shared__ __align__(16) int8_t sx[KMAX];
    pdl_wait<PDL>();
    for (uint32_t i = threadIdx.x; i < p.k / 16; i += blockDim.x) ((int4 *)sx)[i] = __ldcg((const int4 *)x + i);
    __syncthreads();
    uint32_t warps = gridDim.x * (blockDim.x / 32), w = blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
    float s0 = __ldcg(xs);
    for (uint32_t r = w; r < p.rows; r += warps) {
        float v = row_dot(p.w + (uint64_t)r * p.k, sx, p.k, p.ws[r] * s0);
        if ((threadIdx.x & 31) == 0) y[r] = v;
    }
}

/* Global timer stamps of one chain (block 0, thread 0), for the AQ
 * timeline: [launch][start, after the wait, weights landed, end]. */
__device__ unsigned long long d_stamp[2 * NP][4];
__device__ __forceinline__ void stamp(int slot, int i) {
    if (slot >= 0 && blockIdx.x == 0 && threadIdx.x == 0) {
        unsigned long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        d_stamp[slot][i] = t;
    }
}

/* slot: where block 0 stamps its start, wait and end (AQ's timeline), or -1 */
template <bool PDL>
__global__ void small_kernel(const float *y, uint32_t k_next, uint32_t reps, int8_t *xn, float *xs, int slot) {
    stamp(slot, 0);
    pdl_wait<PDL>();
    stamp(slot, 1);
    small_step(y, k_next, reps, xn, xs);
    stamp(slot, 3);
}

/* ---- B0 / B: one persistent kernel -------------------------------------------- */

/* Block b's rows of product p: a contiguous run (so its bytes are one
 * contiguous range of the weights). */
__device__ __forceinline__ void slab(const prod &p, uint32_t *r0, uint32_t *r1) {
    uint32_t per = (p.rows + gridDim.x - 1) / gridDim.x;
    *r0 = blockIdx.x * per < p.rows ? blockIdx.x * per : p.rows;
    *r1 = *r0 + per < p.rows ? *r0 + per : p.rows;
}

/* Rows of product p already asked into shared memory by this block
 * (whole rows that fit PF_MAX), their copies issued by every thread. */
__device__ uint32_t prefetch_rows(const prod &p, uint8_t *sw) {
    uint32_t r0, r1;
    slab(p, &r0, &r1);
    uint32_t n = PF_MAX / p.k;
    if (n > r1 - r0) n = r1 - r0;
    const uint8_t *src = (const uint8_t *)(p.w + (uint64_t)r0 * p.k);
    uint32_t lines = n * p.k / 16;
    for (uint32_t i = threadIdx.x; i < lines; i += blockDim.x) {
        uint32_t saddr = (uint32_t)__cvta_generic_to_shared(sw + 16 * i);
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(saddr), "l"(src + 16 * i) : "memory");
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
    return n;
}

/* AQ: gemv_kernel over contiguous row slabs (as the persistent kernel
 * takes them), each block asking for its slab's first pf bytes of rows
 * (whole rows) into shared memory before its programmatic wait. With PDL
 * the small kernel in front triggers at its start, so these blocks are
 * resident while it runs and the weights stream during the small step. */
template <bool PDL>
__global__ void gemv_pf_kernel(prod p, const int8_t *x, const float *xs, float *y, uint32_t pf, uint32_t pfc, int slot) {
    extern __shared__ __align__(16) uint8_t sw[];
    stamp(slot, 0);
    __shared__ __align__(16) int8_t sx[KMAX];
    uint32_t r0, r1, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    slab(p, &r0, &r1);
    uint32_t ahead = pf / p.k < r1 - r0 ? pf / p.k : r1 - r0;
    const uint8_t *src = (const uint8_t *)(p.w + (uint64_t)r0 * p.k);
    /* in pieces of pfc bytes, one piece in flight (pfc = 0: all at once),
     * which holds the prefetch's share of the bus down */
    uint32_t lines = ahead * p.k / 16, per = pfc ? pfc / 16 : lines;
    for (uint32_t l0 = 0; l0 < lines; l0 += per) {
        uint32_t l1 = l0 + per < lines ? l0 + per : lines;
        for (uint32_t i = l0 + threadIdx.x; i < l1; i += blockDim.x) {
            uint32_t saddr = (uint32_t)__cvta_generic_to_shared(sw + 16 * i);
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(saddr), "l"(src + 16 * i) : "memory");
        }
        asm volatile("cp.async.commit_group;" ::: "memory");
        if (l1 < lines) asm volatile("cp.async.wait_all;" ::: "memory");
    }
    pdl_wait<PDL>();
    stamp(slot, 1);
    for (uint32_t i = threadIdx.x; i < p.k / 16; i += blockDim.x) ((int4 *)sx)[i] = __ldcg((const int4 *)x + i);
    asm volatile("cp.async.wait_all;" ::: "memory");
    __syncthreads();
    stamp(slot, 2);
    float s0 = __ldcg(xs);
    for (uint32_t r = r0 + warp; r < r1; r += nw) {
        const int8_t *wr = r - r0 < ahead ? (const int8_t *)(sw + (uint64_t)(r - r0) * p.k) : p.w + (uint64_t)r * p.k;
        float v = row_dot(wr, sx, p.k, p.ws[r] * s0);
        if ((threadIdx.x & 31) == 0) y[r] = v;
    }
    __syncthreads();
    stamp(slot, 3);
}

template <bool PF, bool PAIR>
__global__ void __launch_bounds__(THREADS, 1) persist_kernel(chain c, uint32_t iters) {
    extern __shared__ __align__(16) uint8_t sm[];
    __shared__ __align__(16) int8_t sx[KMAX];
    uint8_t *sw = sm;
    cg::grid_group grid = cg::this_grid();
    uint32_t ahead = 0; /* rows of the current product waiting in sw */
    if (PF) ahead = prefetch_rows(c.p[0], sw);
    for (uint32_t it = 0; it < iters; it++)
        for (int j = 0; j < NP; j++) {
            const prod p = c.p[j];
            /* the product: the input into shared memory, then the rows */
            /* (past L1: block 0 rewrote them; L1 is not coherent) */
            for (uint32_t i = threadIdx.x; i < p.k / 16; i += blockDim.x) ((int4 *)sx)[i] = __ldcg((const int4 *)c.x[j] + i);
            if (PF) asm volatile("cp.async.wait_all;" ::: "memory");
            __syncthreads();
            uint32_t r0, r1, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
            slab(p, &r0, &r1);
            float s0 = __ldcg(c.xs + j);
#define WROW(r) ((r) - r0 < ahead ? (const int8_t *)(sw + (uint64_t)((r) - r0) * p.k) : p.w + (uint64_t)(r) * p.k)
            for (uint32_t r = r0 + warp; r < r1; r += PAIR ? 2 * nw : nw) {
                if (PAIR && r + nw < r1) {
                    float va, vb;
                    row_dot2(WROW(r), WROW(r + nw), sx, p.k, &va, &vb);
                    if ((threadIdx.x & 31) == 0) c.y[j][r] = va * (p.ws[r] * s0), c.y[j][r + nw] = vb * (p.ws[r + nw] * s0);
                    continue;
                }
                float v = row_dot(WROW(r), sx, p.k, p.ws[r] * s0);
                if ((threadIdx.x & 31) == 0) c.y[j][r] = v;
            }
#undef WROW
            __syncthreads(); /* sw is read: it may be refilled */
            /* the next product's first rows, while the small step runs */
            int jn = j + 1 < NP ? j + 1 : 0;
            ahead = PF && (it + 1 < iters || jn != 0) ? prefetch_rows(c.p[jn], sw) : 0;
            grid.sync();
            if (blockIdx.x == 0) small_step(c.y[j], c.p[jn].k, c.small_reps, c.x[jn], c.xs + jn);
            grid.sync();
        }
}

/* Values of a that differ from b bit for bit (NaN-safe), and how many of
 * a's are not finite. */
static int differ(const float *a, const float *b, uint32_t n, int *nonfinite) {
    int bad = 0;
    for (uint32_t i = 0; i < n; i++) {
        bad += memcmp(a + i, b + i, sizeof(float)) != 0;
        *nonfinite += !(a[i] - a[i] == 0.0f);
    }
    return bad;
}

/* A launch on st, with programmatic dependent launch where pdl (the
 * kernels then overlap their predecessor's end, as decode runs). */
template <class K, class... A>
static void launch_on(cudaStream_t st, bool pdl, K kern, dim3 grid, dim3 block, size_t smem, A... args) {
    cudaLaunchAttribute at;
    at.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = st;
    cfg.attrs = pdl ? &at : NULL, cfg.numAttrs = pdl ? 1 : 0;
    CK(cudaLaunchKernelEx(&cfg, kern, args...));
}

/* The chain's outputs against ref (kept as ref where ref[j] is NULL):
 * how many differ bit for bit; *nf counts those not finite. */
static int check_outputs(const chain &c, float **ref, int *nf) {
    int bad = 0;
    for (int j = 0; j < NP; j++) {
        uint32_t n = c.p[j].rows;
        float *h = (float *)malloc(n * sizeof(float));
        CK(cudaMemcpy(h, c.y[j], n * sizeof(float), cudaMemcpyDeviceToHost));
        bad += differ(h, ref[j] ? ref[j] : h, n, nf);
        if (ref[j]) free(h);
        else ref[j] = h;
    }
    return bad;
}

/* The best of three runs of `run` (iters chains on st, each run after
 * `prep`), in us a chain. */
template <class Prep, class Run> static double best_of_3(cudaStream_t st, uint32_t iters, Prep prep, Run run) {
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    double t = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        float ms;
        prep();
        CK(cudaEventRecord(e0, st));
        run();
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (ms * 1e3 / iters < t) t = ms * 1e3 / iters;
    }
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    return t;
}

/* best_of_3 of the launches `capture` makes on st, captured as one graph */
template <class Prep, class Capture>
static double graph_best_of_3(cudaStream_t st, uint32_t iters, Prep prep, Capture capture) {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    capture();
    CK(cudaStreamEndCapture(st, &graph));
    CK(cudaGraphInstantiate(&exec, graph, 0));
    double t = best_of_3(st, iters, prep, [&]() { CK(cudaGraphLaunch(exec, st)); });
    CK(cudaGraphExecDestroy(exec));
    CK(cudaGraphDestroy(graph));
    return t;
}

/* ---- G / D: the grouped half (q_b -> a step per head group -> out_a) ---------
 * In a decode layer only part of the chain is grid-wide: attention for a
 * group of heads needs only that group's rows of q_b, and out_a's group g
 * only its heads' attention output. G runs that part as PDL launches (q_b,
 * one block per group for the step, out_a over all groups); D runs it as
 * one launch of one block a multiprocessor working down a list of items
 * (q_b row chunks group by group, then each group's step and out_a chunks
 * placed LAG groups later), each item waiting only for what it reads
 * through per-group counters in global memory, never for the grid. */
#define NG 8
enum { IT_P1 = 0, IT_S = 1, IT_P2 = 2 };

typedef struct gchain {
    prod p1, p2, p3;      /* q_b (NG groups of rows), out_a (NG groups, k = q_b's group), out_b */
    int8_t *x1, *x2, *x3; /* inputs: q_b's, out_a's (group g at g * p2.k), out_b's */
    float *x1s, *x2s, *x3s;
    float *y1, *y2, *y3;
    uint32_t reps, c1, c2; /* the step's repeats; row chunks a group of q_b and of out_a */
    unsigned *done1, *done2; /* per group: q_b chunks done, steps done */
    const uint32_t *items;
    uint32_t n_items;
} gchain;

/* Rows [r0, r1) of p against the staged input sx (scale s0) into y, by
 * the block's warps. */
__device__ __forceinline__ void block_rows(const prod &p, uint32_t r0, uint32_t r1, const int8_t *sx, float s0, float *y) {
    for (uint32_t r = r0 + (threadIdx.x >> 5); r < r1; r += blockDim.x >> 5) {
        float v = row_dot(p.w + (uint64_t)r * p.k, sx, p.k, p.ws[r] * s0);
        if ((threadIdx.x & 31) == 0) y[r] = v;
    }
}

__device__ __forceinline__ void stage_input(int8_t *sx, const int8_t *x, uint32_t k) {
    for (uint32_t i = threadIdx.x; i < k / 16; i += blockDim.x) ((int4 *)sx)[i] = __ldcg((const int4 *)x + i);
}

/* G: out_a over all its groups (each block stages every group's input) */
__global__ void ggemv_kernel(prod p, const int8_t *x, const float *xs, float *y) {
    extern __shared__ __align__(16) int8_t gsx[];
    pdl_wait<true>();
    stage_input(gsx, x, NG * p.k);
    __syncthreads();
    uint32_t warps = gridDim.x * (blockDim.x / 32), w = blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5), per = p.rows / NG;
    for (uint32_t r = w; r < p.rows; r += warps) {
        uint32_t g = r / per;
        float v = row_dot(p.w + (uint64_t)r * p.k, gsx + (uint64_t)g * p.k, p.k, p.ws[r] * __ldcg(xs + g));
        if ((threadIdx.x & 31) == 0) y[r] = v;
    }
}

/* G: block g makes out_a's input of group g from q_b's rows of group g */
__global__ void gstep_kernel(gchain c) {
    pdl_wait<true>();
    uint32_t g = blockIdx.x, k = c.p2.k;
    small_step(c.y1 + (uint64_t)g * k, k, c.reps, c.x2 + (uint64_t)g * k, c.x2s + g);
}

__device__ __forceinline__ unsigned ld_acquire(const unsigned *p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
/* thread 0 waits until *p reaches target, then the block goes on */
__device__ __forceinline__ void wait_count(const unsigned *p, unsigned target) {
    if (threadIdx.x == 0)
        while (ld_acquire(p) < target) __nanosleep(32);
    __syncthreads();
}
/* the block's writes, then one more on *p */
__device__ __forceinline__ void signal_count(unsigned *p) {
    __syncthreads();
    if (threadIdx.x == 0) asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(p) : "memory");
}

/* D: the grouped half in one launch; epoch counts the launches since the
 * counters were cleared (their targets grow with it). Every item waits
 * only on items earlier in the list, and each block takes its items in
 * list order, so with all blocks resident nothing waits forever. */
template <int NT, int MINB> __global__ void __launch_bounds__(NT, MINB) dflow_kernel(gchain c, uint32_t epoch) {
    __shared__ __align__(16) int8_t sx1[KMAX];
    __shared__ __align__(16) int8_t sx2[KMAX];
    pdl_wait<true>();
    stage_input(sx1, c.x1, c.p1.k);
    __syncthreads();
    float s1 = __ldcg(c.x1s);
    uint32_t per1 = c.p1.rows / NG, per2 = c.p2.rows / NG, k2 = c.p2.k;
    for (uint32_t j = blockIdx.x; j < c.n_items; j += gridDim.x) {
        uint32_t it = c.items[j], type = it >> 24, g = (it >> 16) & 255, cc = it & 65535;
        if (type == IT_P1) {
            block_rows(c.p1, g * per1 + cc * per1 / c.c1, g * per1 + (cc + 1) * per1 / c.c1, sx1, s1, c.y1);
            signal_count(c.done1 + g);
        } else if (type == IT_S) {
            wait_count(c.done1 + g, epoch * c.c1);
            small_step(c.y1 + (uint64_t)g * k2, k2, c.reps, c.x2 + (uint64_t)g * k2, c.x2s + g);
            signal_count(c.done2 + g);
        } else {
            wait_count(c.done2 + g, epoch);
            stage_input(sx2, c.x2 + (uint64_t)g * k2, k2);
            __syncthreads();
            block_rows(c.p2, g * per2 + cc * per2 / c.c2, g * per2 + (cc + 1) * per2 / c.c2, sx2, __ldcg(c.x2s + g), c.y2);
            __syncthreads(); /* sx2 is restaged by the next item */
        }
    }
}

/* G and D on the same data: the time of one chain (the grouped half, then
 * out_b with its global steps) and the outputs, which must agree. */
static void run_grouped(const chain &base, int sms, uint32_t iters, uint32_t reps, uint32_t lag, uint32_t c1, uint32_t c2) {
    gchain c;
    memset(&c, 0, sizeof c);
    /* q_b 32768 x 1024 as 8 groups of 4096 rows; out_a 8 groups of 1024 x 4096; out_b 4096 x 8192 */
    c.p1 = base.p[0], c.p2 = base.p[1], c.p3 = base.p[2];
    c.p2.k = c.p1.rows / NG;
    c.p2.rows = NG * 1024;
    /* (out_a's weights: the first NG * 1024 * 4096 bytes of the 8192 x 4096 matrix) */
    c.reps = reps, c.c1 = c1, c.c2 = c2;
    CK(cudaMalloc(&c.x1, KMAX));
    CK(cudaMalloc(&c.x2, NG * c.p2.k));
    CK(cudaMalloc(&c.x3, KMAX));
    CK(cudaMalloc(&c.x1s, 4));
    CK(cudaMalloc(&c.x2s, NG * 4));
    CK(cudaMalloc(&c.x3s, 4));
    CK(cudaMalloc(&c.y1, c.p1.rows * 4));
    CK(cudaMalloc(&c.y2, c.p2.rows * 4));
    CK(cudaMalloc(&c.y3, c.p3.rows * 4));
    CK(cudaMalloc(&c.done1, NG * 4));
    CK(cudaMalloc(&c.done2, NG * 4));
    /* the items: q_b's chunks group by group; group g's step and out_a
     * chunks after q_b's group g + lag */
    uint32_t *hi = (uint32_t *)malloc((NG * (c1 + c2 + 1)) * 4), n = 0;
    /* lag = S + 16 * P: the step LAG % 16 groups later, out_a's chunks
     * lag / 16 groups after the step (0: right after it) */
    uint32_t ls = lag % 16, lp = ls + lag / 16;
    auto step = [&](uint32_t g) { hi[n++] = IT_S << 24 | g << 16; };
    auto outa = [&](uint32_t g) {
        for (uint32_t cc = 0; cc < c2; cc++) hi[n++] = IT_P2 << 24 | g << 16 | cc;
    };
    for (uint32_t g = 0; g < NG + lp; g++) {
        if (g < NG)
            for (uint32_t cc = 0; cc < c1; cc++) hi[n++] = IT_P1 << 24 | g << 16 | cc;
        if (g >= ls && g - ls < NG) step(g - ls);
        if (g >= lp && g - lp < NG) outa(g - lp);
    }
    uint32_t *di;
    CK(cudaMalloc(&di, n * 4));
    CK(cudaMemcpy(di, hi, n * 4, cudaMemcpyHostToDevice));
    c.items = di, c.n_items = n;
    free(hi);

    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    auto launch = [&](auto kern, dim3 grid, dim3 block, size_t smem, auto... args) {
        launch_on(st, true, kern, grid, block, smem, args...);
    };
    size_t gsm = NG * c.p2.k;
    CK(cudaFuncSetAttribute(ggemv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)gsm));
    int8_t ones[KMAX];
    memset(ones, 1, sizeof ones);
    float one = 1.0f;
    float *out[3][3];
    double t[3];
    for (int v = 0; v < 3; v++) {
        auto prep = [&]() {
            CK(cudaMemcpy(c.x1, ones, KMAX, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(c.x1s, &one, 4, cudaMemcpyHostToDevice));
        };
        t[v] = graph_best_of_3(st, iters, prep, [&]() {
            CK(cudaMemsetAsync(c.done1, 0, NG * 4, st));
            CK(cudaMemsetAsync(c.done2, 0, NG * 4, st));
            for (uint32_t it = 0; it < iters; it++) {
                if (v == 0) {
                    launch(gemv_kernel<true>, dim3(sms * 2), dim3(1024), 0, c.p1, (const int8_t *)c.x1, (const float *)c.x1s, c.y1);
                    launch(gstep_kernel, dim3(NG), dim3(THREADS), 0, c);
                    launch(ggemv_kernel, dim3(sms * 2), dim3(1024), gsm, c.p2, (const int8_t *)c.x2, (const float *)c.x2s, c.y2);
                } else if (v == 1) {
                    launch(dflow_kernel<THREADS, 1>, dim3(sms), dim3(THREADS), 0, c, it + 1);
                } else {
                    launch(dflow_kernel<THREADS / 2, 2>, dim3(2 * sms), dim3(THREADS / 2), 0, c, it + 1);
                }
                launch(small_kernel<true>, dim3(1), dim3(THREADS), 0, (const float *)c.y2, c.p3.k, reps, c.x3, c.x3s, -1);
                launch(gemv_kernel<true>, dim3(sms * 2), dim3(1024), 0, c.p3, (const int8_t *)c.x3, (const float *)c.x3s, c.y3);
                launch(small_kernel<true>, dim3(1), dim3(THREADS), 0, (const float *)c.y3, c.p1.k, reps, c.x1, c.x1s, -1);
            }
        });
        const prod *ps[3] = {&c.p1, &c.p2, &c.p3};
        float *ys[3] = {c.y1, c.y2, c.y3};
        for (int j = 0; j < 3; j++) {
            out[v][j] = (float *)malloc(ps[j]->rows * 4);
            CK(cudaMemcpy(out[v][j], ys[j], ps[j]->rows * 4, cudaMemcpyDeviceToHost));
        }
    }
    int bad = 0, nf = 0;
    const uint32_t rows[3] = {c.p1.rows, c.p2.rows, c.p3.rows};
    for (int j = 0; j < 3; j++) {
        differ(out[0][j], out[0][j], rows[j], &nf);
        /* (two blocks of 512: the step's sums run in another order, so
         * other bits; only the 1024-thread version must match G) */
        bad += differ(out[1][j], out[0][j], rows[j], &nf);
        differ(out[2][j], out[2][j], rows[j], &nf);
        for (int v = 0; v < 3; v++) free(out[v][j]);
    }
    printf("grouped half, step %u groups later, out_a %u after it, %u + %u chunks a group: G (PDL launches) %.1f us; D (one launch, per-group counters) "
           "%.1f us with one block of 1024 threads a multiprocessor, %.1f us with two of 512 (a chain)",
           ls, lp - ls, c1, c2, t[0], t[1], t[2]);
    if (bad || nf) printf("  (%d outputs differ, %d not finite)", bad, nf);
    printf("\n");
}

/* ---- the card's read rate ------------------------------------------------------ */

__global__ void read_kernel(const int4 *p, uint64_t n, int *sink) {
    int acc = 0;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        int4 v = p[i];
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x12345678) *sink = acc;
}

int main(int argc, char **argv) {
    uint32_t iters = argc > 1 ? (uint32_t)atoi(argv[1]) : 50, reps = argc > 2 ? (uint32_t)atoi(argv[2]) : 1;
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    const uint32_t rows[NP] = {32768, 8192, 4096}, ks[NP] = {1024, 4096, 8192}; /* q_b, out_a, out_b */
    chain c;
    memset(&c, 0, sizeof c);
    c.small_reps = reps;
    uint64_t total = 0;
    srand(7);
    for (int j = 0; j < NP; j++) {
        uint64_t n = (uint64_t)rows[j] * ks[j];
        int8_t *hw = (int8_t *)malloc(n);
        float *hs = (float *)malloc(rows[j] * sizeof(float));
        for (uint64_t i = 0; i < n; i++) hw[i] = (int8_t)(rand() % 255 - 127);
        for (uint32_t i = 0; i < rows[j]; i++) hs[i] = 1e-3f * (1 + rand() % 100);
        int8_t *dw;
        float *ds;
        CK(cudaMalloc(&dw, n));
        CK(cudaMalloc(&ds, rows[j] * sizeof(float)));
        CK(cudaMemcpy(dw, hw, n, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(ds, hs, rows[j] * sizeof(float), cudaMemcpyHostToDevice));
        free(hw), free(hs);
        c.p[j] = (prod){dw, ds, rows[j], ks[j]};
        CK(cudaMalloc(&c.x[j], KMAX));
        CK(cudaMalloc(&c.y[j], rows[j] * sizeof(float)));
        total += n + rows[j] * 4;
    }
    CK(cudaMalloc(&c.xs, NP * sizeof(float)));
    /* the same start for every version: x[0] of ones, scale 1 */
    int8_t ones[KMAX];
    memset(ones, 1, sizeof ones);
    float one[NP] = {1, 1, 1};
    auto reset = [&]() {
        CK(cudaMemcpy(c.x[0], ones, KMAX, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(c.xs, one, sizeof one, cudaMemcpyHostToDevice));
    };

    /* read rate */
    int *sink;
    CK(cudaMalloc(&sink, 4));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    float best = 1e30f, ms;
    for (int i = 0; i < 5; i++) {
        CK(cudaEventRecord(e0));
        read_kernel<<<sms * 8, 512>>>((const int4 *)c.p[0].w, (uint64_t)rows[0] * ks[0] / 16, sink);
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (ms < best) best = ms;
    }
    double bw = (double)rows[0] * ks[0] / (best * 1e-3);
    printf("read rate %.2f TB/s; the three products' %.1f MB alone: %.1f us a chain\n", bw / 1e12, total / 1e6,
           total / bw * 1e6);

    /* A, AP: the chain as launches in a graph, without and with PDL */
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    float *ref[NP] = {NULL, NULL, NULL};
    double tA = 1e30;
    /* A1: A with one block a multiprocessor (the persistent kernel's
     * warps), to tell the barrier's cost from the warps' */
    for (int v = 0; v < 3; v++) {
        int pdl = v == 1, bpsm = v == 2 ? 1 : 2;
        auto launch = [&](auto kern, dim3 grid, dim3 block, auto... args) {
            launch_on(st, pdl, kern, grid, block, 0, args...);
        };
        double t = graph_best_of_3(st, iters, reset, [&]() {
            for (uint32_t it = 0; it < iters; it++)
                for (int j = 0; j < NP; j++) {
                    int jn = (j + 1) % NP;
                    const int8_t *xj = c.x[j];
                    const float *xsj = c.xs + j, *yj = c.y[j];
                    uint32_t kn = c.p[jn].k;
                    if (pdl) {
                        launch(gemv_kernel<true>, dim3(sms * bpsm), dim3(1024), c.p[j], xj, xsj, c.y[j]);
                        launch(small_kernel<true>, dim3(1), dim3(THREADS), yj, kn, reps, c.x[jn], c.xs + jn, -1);
                    } else {
                        launch(gemv_kernel<false>, dim3(sms * bpsm), dim3(1024), c.p[j], xj, xsj, c.y[j]);
                        launch(small_kernel<false>, dim3(1), dim3(THREADS), yj, kn, reps, c.x[jn], c.xs + jn, -1);
                    }
                }
        });
        int nf = 0, bad = check_outputs(c, ref, &nf); /* the first (A) is the reference */
        if (v == 0) tA = t;
        printf("A%s launches in a graph%s: %8.1f us a chain", v == 1 ? "P" : v == 2 ? "1" : " ",
               v == 1 ? ", PDL" : v == 2 ? ", 1 block/SM" : "     ", t);
        if (bad || nf) printf("  (%d outputs differ from A, %d not finite)", bad, nf);
        printf("\n");
    }

    /* AQ: PDL launches, the products' first rows asked into shared
     * memory before the wait (pf bytes a block; 0: the slabs alone), in
     * one block of 1024 threads or two of 512 a multiprocessor */
    for (uint32_t bpsm : {2u, 1u})
        for (uint32_t pfc : {1u, 0u, 32u << 10, 16u << 10, 8u << 10}) {
            uint32_t pf = pfc == 1 ? 0 : bpsm == 2 ? 96u << 10 : 192u << 10;
            if (bpsm == 2 && pfc > 1) continue;
            CK(cudaFuncSetAttribute(gemv_pf_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)pf));
            double t = graph_best_of_3(st, iters, reset, [&]() {
                for (uint32_t it = 0; it < iters; it++)
                    for (int j = 0; j < NP; j++) {
                        int jn = (j + 1) % NP;
                        int sl = it == iters / 2 ? 2 * j : -1; /* a chain in the middle */
                        launch_on(st, true, gemv_pf_kernel<true>, dim3(sms * bpsm), dim3(1024 / bpsm), pf, c.p[j],
                                  (const int8_t *)c.x[j], (const float *)(c.xs + j), c.y[j], pf, pfc == 1 ? 0 : pfc, sl);
                        launch_on(st, true, small_kernel<true>, dim3(1), dim3(THREADS), 0, (const float *)c.y[j], c.p[jn].k,
                                  reps, c.x[jn], c.xs + jn, sl < 0 ? -1 : sl + 1);
                    }
            });
            int nf = 0, bad = check_outputs(c, ref, &nf);
            printf("AQ PDL, %u block%s/SM, %3u KB ahead a block (%2u KB pieces): %8.1f us a chain (%.2fx A)", bpsm, bpsm > 1 ? "s" : " ",
                   pf >> 10, pfc > 1 ? pfc >> 10 : 0, t, tA / t);
            if (bad || nf) printf("  (%d outputs differ from A, %d not finite)", bad, nf);
            printf("\n");
            /* block 0's timeline of one chain, us from the first product's start: start / waited / weights in / end */
            unsigned long long hs[2 * NP][4];
            CK(cudaMemcpyFromSymbol(hs, d_stamp, sizeof hs));
            printf("   ");
            for (int l = 0; l < 2 * NP; l++)
                printf(" %s%d %.1f/%.1f/%.1f/%.1f", l % 2 ? "s" : "p", l / 2, (hs[l][0] - hs[0][0]) / 1e3, (hs[l][1] - hs[0][0]) / 1e3,
                       l % 2 ? 0.0 : (hs[l][2] - hs[0][0]) / 1e3, (hs[l][3] - hs[0][0]) / 1e3);
            printf("\n");
        }

    /* B0, B: one cooperative kernel */
    for (int vb = 0; vb < 4; vb++) {
        int pf = vb & 1, pair = vb >> 1;
        void (*kern)(chain, uint32_t) = pair ? (pf ? persist_kernel<true, true> : persist_kernel<false, true>)
                                             : (pf ? persist_kernel<true, false> : persist_kernel<false, false>);
        size_t smem = pf ? PF_MAX : 0;
        CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        int per = 0;
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per, kern, THREADS, smem));
        if (per < 1) {
            printf("B%s: no block fits a multiprocessor\n", pf ? "" : "0");
            continue;
        }
        void *args[] = {&c, &iters};
        double tB = best_of_3(st, iters, reset, [&]() {
            CK(cudaLaunchCooperativeKernel((void *)kern, dim3(sms), dim3(THREADS), args, smem, st));
        });
        int nf = 0, bad = check_outputs(c, ref, &nf);
        printf("B%s one kernel%s%s: %8.1f us a chain (%.2fx A)", pf ? " " : "0", pf ? ", weights ahead" : ", barriers only  ",
               pair ? ", rows in pairs" : "               ", tB, tA / tB);
        if (bad || nf) printf("  (%d outputs differ from A, %d not finite)", bad, nf);
        printf("\n");
    }
    /* G, D: the grouped half */
    /* (lag NG: every group's step after all of q_b, the list's cost alone) */
    for (uint32_t lag : {1u, 2u, 1u + 16 * 2, 1u + 16 * 3, 2u + 16 * 2, (uint32_t)NG}) run_grouped(c, sms, iters, reps, lag, 64, 16);
    run_grouped(c, sms, iters, reps, 1, 32, 8);
    return 0;
}
