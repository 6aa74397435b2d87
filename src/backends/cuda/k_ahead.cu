/* Weights asked into L2 ahead of the product that reads them. In a decode
 * step the chain of small kernels before a large product (the mHC finish,
 * the row transforms, the attention) leaves device memory idle; a side
 * lane can meanwhile stream the product's weights into L2 with bulk
 * prefetches (the copy engine of each block's multiprocessor does the
 * work, so the lane takes almost no issue slots). Nothing is computed:
 * results keep their bits. */
#include "backends/cuda/common.cuh"
#include "backends/cuda/kernels.cuh"

#define AHEAD_CHUNK (16u << 10) /* bytes per prefetch request */

/* Requests [p, p + bytes) in AHEAD_CHUNK pieces, piece i by worker i mod
 * workers; the bulk prefetch wants 16-byte aligned starts and lengths, so
 * the ragged ends (under 16 bytes each) are left out. */
__device__ __forceinline__ void bulk_prefetch(const uint8_t *p, uint64_t bytes, uint32_t worker, uint32_t workers) {
    const uint8_t *a = (const uint8_t *)(((uintptr_t)p + 15) & ~(uintptr_t)15);
    uint64_t skip = (uint64_t)(a - p);
    if (bytes < skip + 16) return;
    bytes = (bytes - skip) & ~(uint64_t)15;
    uint64_t n = (bytes + AHEAD_CHUNK - 1) / AHEAD_CHUNK;
    for (uint64_t i = worker; i < n; i += workers) {
        uint64_t off = i * AHEAD_CHUNK;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        uint64_t left = bytes - off;
        uint32_t size = left < AHEAD_CHUNK ? (uint32_t)left : AHEAD_CHUNK;
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(a + off), "r"(size) : "memory");
#else
        asm volatile("prefetch.global.L2 [%0];" ::"l"(a + off)); /* older cards: the piece's first line only */
#endif
    }
}

__global__ void ahead_kernel(l2_spans sp) {
    uint32_t worker = blockIdx.x * blockDim.x + threadIdx.x, workers = gridDim.x * blockDim.x;
    for (uint32_t j = 0; j < sp.n; j++) bulk_prefetch(sp.p[j], sp.bytes[j], worker, workers);
}

cudaError_t k_l2_ahead(cudaStream_t st, const l2_spans *sp) {
    if (!sp->n) return cudaSuccess;
    /* A plain launch (no programmatic wait: it only touches weights), 32
     * blocks of a warp: enough multiprocessors issuing to keep device
     * memory busy (8 blocks did as well, 132 worse, on an H100). */
    ahead_kernel<<<32, 32, 0, st>>>(*sp);
    return cudaGetLastError();
}
