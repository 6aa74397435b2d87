/* The VRAM expert slot bank kept on the device, for experts in page-locked
 * host memory (the GGUF's routed experts copied there at load).
 *
 * Why: the host-driven bank reads each layer's routing back, decides hits
 * and victims on the host and queues the copies, which drains the GPU's
 * queue once a layer and rules out CUDA graphs (bench/cuda-h100-decode.md:
 * 43 layers whose experts all hit still ran about 50 us a layer slower than
 * resident ones). Here the same least-recently-used bank lives in device
 * memory: a one-block kernel looks the group's experts up, picks victims
 * and writes the slot table, and a copy kernel reads the missing records
 * from host memory over the bus (mapped, page-locked). A decode step then
 * has no host round trip and runs as one graph.
 *
 * The decisions are the host bank's exactly (gpu_forward.cu: hits first, then each
 * miss takes the least recently used slot), so the counters agree with
 * it: every slot carries a stamp, larger = more recent; a group's hits get
 * clock + their rank among the hits, its misses clock + hits + their rank
 * among the misses, and the clock then advances by the group's size.
 * Initial stamps n_slots - 1 - i make slot n_slots - 1 the first victim,
 * as the host's initial recency list does. */
#include "backends/cuda/common.cuh"
#include "backends/cuda/kernels.cuh"

#define BANK_THREADS 1024

/* The least stamp over n slots, with its slot (stamps are distinct). */
__device__ static uint32_t bank_victim(const uint64_t *stamp, uint32_t n) {
    __shared__ uint64_t ws[BANK_THREADS / 32];
    __shared__ uint32_t wi[BANK_THREADS / 32];
    uint64_t best = UINT64_MAX;
    uint32_t bi = 0;
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
        if (__ldcg(stamp + i) < best) best = __ldcg(stamp + i), bi = i; /* past L1: thread 0 rewrites stamps */
    for (int o = 16; o >= 1; o >>= 1) {
        uint64_t v = __shfl_xor_sync(0xffffffffu, best, o);
        uint32_t j = __shfl_xor_sync(0xffffffffu, bi, o);
        if (v < best) best = v, bi = j;
    }
    uint32_t warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    __syncthreads(); /* ws and wi of a previous call are read */
    if (lane == 0) ws[warp] = best, wi[warp] = bi;
    __syncthreads();
    if (warp == 0) {
        best = lane < nw ? ws[lane] : UINT64_MAX;
        bi = lane < nw ? wi[lane] : 0;
        for (int o = 16; o >= 1; o >>= 1) {
            uint64_t v = __shfl_xor_sync(0xffffffffu, best, o);
            uint32_t j = __shfl_xor_sync(0xffffffffu, bi, o);
            if (v < best) best = v, bi = j;
        }
        if (lane == 0) wi[0] = bi;
    }
    __syncthreads();
    return wi[0];
}

__global__ void __launch_bounds__(BANK_THREADS) bank_lookup_kernel(bank_dev a, const int32_t *grp, uint32_t il, uint32_t g0,
                                                                   uint32_t gn, const uint8_t **wtab) {
    pdl_enter();
    __shared__ int32_t slot[K_MAX_EXPERTS];
    __shared__ uint32_t rank[K_MAX_EXPERTS], n_hit;
    const int32_t *used = grp + 1;
    if (gn == UINT32_MAX) gn = (uint32_t)grp[0] - g0; /* a decode step: the whole routing, one group */
    const uint64_t clock = a.st->clock, base = (uint64_t)il * a.n_expert;
    for (uint32_t j = threadIdx.x; j < gn; j += blockDim.x) slot[j] = a.slot_of[base + used[g0 + j]];
    __syncthreads();
    if (threadIdx.x == 0) { /* ranks in group order: the hits, then the misses */
        uint32_t h = 0;
        for (uint32_t j = 0; j < gn; j++)
            if (slot[j] >= 0) rank[j] = h++;
        uint32_t m = h;
        for (uint32_t j = 0; j < gn; j++)
            if (slot[j] < 0) rank[j] = m++;
        n_hit = h;
    }
    __syncthreads();
    for (uint32_t j = threadIdx.x; j < gn; j += blockDim.x)
        if (slot[j] >= 0) a.stamp[slot[j]] = clock + rank[j];
    uint32_t n_miss = 0;
    for (uint32_t j = 0; j < gn; j++) { /* misses one by one: each victim sees the stamps before it */
        if (slot[j] >= 0) continue;
        __syncthreads(); /* the stamps written above or by the last miss */
        uint32_t v = bank_victim(a.stamp, a.n_slots);
        if (threadIdx.x == 0) {
            uint64_t key = base + (uint32_t)used[g0 + j], old = a.key[v];
            if (old != UINT64_MAX) a.slot_of[old] = -1;
            a.key[v] = key;
            a.slot_of[key] = (int32_t)v;
            a.stamp[v] = clock + rank[j];
            a.miss_slot[n_miss] = v;
            a.miss_src[n_miss] = a.host + a.layer_off[il] + (uint64_t)used[g0 + j] * a.stride[il];
            slot[j] = (int32_t)v;
        }
        n_miss++;
    }
    __syncthreads();
    for (uint32_t j = threadIdx.x; j < gn; j += blockDim.x) {
        const uint8_t *b = a.dev + (uint64_t)slot[j] * a.slot_bytes;
        wtab[3 * (g0 + j)] = b;
        wtab[3 * (g0 + j) + 1] = b + a.off_up[il];
        wtab[3 * (g0 + j) + 2] = b + a.off_down[il];
    }
    if (threadIdx.x == 0) {
        a.st->clock = clock + gn;
        a.st->hits += n_hit;
        a.st->misses += n_miss;
        a.st->bytes += (uint64_t)n_miss * a.rec_bytes[il];
        a.st->n_miss = n_miss;
        a.st->miss_bytes = a.rec_bytes[il];
    }
}

/* The records the lookup found missing, host to slots: 16-byte loads over
 * the bus, several in flight per thread (a record is 16-byte aligned and
 * its length a multiple of 16 bytes past the last whole line is copied
 * bytewise). */
__global__ void bank_copy_kernel(bank_dev a) {
    pdl_enter();
    const uint32_t n = a.st->n_miss;
    const uint64_t bytes = a.st->miss_bytes, lines = bytes / 16;
    const uint64_t tid = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x, nt = (uint64_t)gridDim.x * blockDim.x;
    for (uint32_t m = 0; m < n; m++) {
        const uint4 *src = (const uint4 *)a.miss_src[m];
        uint4 *dst = (uint4 *)(a.dev + (uint64_t)a.miss_slot[m] * a.slot_bytes);
        constexpr int U = 4;
        for (uint64_t i = tid; i < lines; i += U * nt) {
            uint4 v[U];
#pragma unroll
            for (int u = 0; u < U; u++)
                if (i + u * nt < lines) v[u] = src[i + u * nt];
#pragma unroll
            for (int u = 0; u < U; u++)
                if (i + u * nt < lines) dst[i + u * nt] = v[u];
        }
        for (uint64_t i = lines * 16 + tid; i < bytes; i += nt) ((uint8_t *)dst)[i] = ((const uint8_t *)src)[i];
    }
}

cudaError_t k_bank_lookup(cudaStream_t st, const bank_dev *a, const int32_t *grp, uint32_t il, uint32_t g0, uint32_t gn,
                          const uint8_t **wtab) {
    k_launch(bank_lookup_kernel, dim3(1), dim3(BANK_THREADS), 0, st, *a, grp, il, g0, gn, wtab);
    return LAUNCH_STATUS();
}

cudaError_t k_bank_copy(cudaStream_t st, const bank_dev *a) {
    /* a block per multiprocessor keeps the bus busy */
    k_launch(bank_copy_kernel, dim3((unsigned)k_sm_count()), dim3(256), 0, st, *a);
    return LAUNCH_STATUS();
}

DS4_TRACE_EXPORT(k_bank)
