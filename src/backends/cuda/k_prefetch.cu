/* L2 prefetch of weights (decode): a single-token step spends much of its
 * time in small kernels that leave device memory idle; a side lane can ask
 * L2 for the next large matrices meanwhile, so their products read from
 * L2 instead of waiting on device memory. */
#include <stdlib.h>

#include "backends/cuda/common.cuh"
#include "backends/cuda/kernels.cuh"

#define PF_CHUNK (32u * 1024u) /* bytes per bulk prefetch */

/* Bulk prefetches (the copy engine of each SM fetches them after the
 * instruction has issued; nothing waits for them): thread i asks for
 * chunks i, i + threads, ... of [p, p + bytes), p 16-byte aligned. */
__global__ void l2_prefetch_kernel(const uint8_t *p, uint64_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    uint64_t n = (bytes + PF_CHUNK - 1) / PF_CHUNK;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        uint64_t off = i * PF_CHUNK, len = bytes - off < PF_CHUNK ? bytes - off : PF_CHUNK;
        len &= ~(uint64_t)15; /* the bulk size is a multiple of 16 bytes */
        if (len) asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p + off), "r"((uint32_t)len) : "memory");
    }
#else
    (void)p, (void)bytes;
#endif
}

static int pf_state = -1; /* compute capability >= 9 and DS4_CUDA_PREFETCH not 0 */

bool k_l2_prefetch_on(void) {
    if (pf_state < 0) {
        int dev = 0, major = 0;
        const char *env = getenv("DS4_CUDA_PREFETCH");
        pf_state = cudaGetDevice(&dev) == cudaSuccess &&
                   cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major >= 9 &&
                   !(env && env[0] == '0');
    }
    return pf_state == 1;
}

cudaError_t k_l2_prefetch(cudaStream_t st, const void *p, uint64_t bytes) {
    uintptr_t a = (uintptr_t)p, b = (a + 15) & ~(uintptr_t)15;
    if (!p || !k_l2_prefetch_on() || bytes <= b - a) return cudaSuccess;
    bytes -= b - a;
    uint64_t chunks = (bytes + PF_CHUNK - 1) / PF_CHUNK;
    unsigned threads = 128, blocks = (unsigned)((chunks + threads - 1) / threads);
    if (blocks > 16) blocks = 16;
    k_launch(l2_prefetch_kernel, blocks, threads, 0, st, (const uint8_t *)b, bytes);
    return LAUNCH_STATUS();
}
