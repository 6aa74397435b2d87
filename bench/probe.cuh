/* What the stand-alone GPU probes under bench/ share (each builds with one
 * nvcc command of its own; define PROBE_NAME before including this). */
#ifndef DS4_BENCH_PROBE_CUH
#define DS4_BENCH_PROBE_CUH
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* Monotonic seconds. */
static inline double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* A CUDA call that must succeed: otherwise the probe says which, and where,
 * and exits with status 1. */
#define CK(x)                                                                                            \
    do {                                                                                                 \
        cudaError_t e_ = (x);                                                                            \
        if (e_ != cudaSuccess) {                                                                         \
            fprintf(stderr, "%s: %s: %s (line %d)\n", PROBE_NAME, #x, cudaGetErrorString(e_), __LINE__); \
            exit(1);                                                                                     \
        }                                                                                                \
    } while (0)

/* The sum of the n bytes at p into *out (a grid-stride pass: what reading
 * the bytes through the device costs, with a result to check). */
__global__ void sum_kernel(const uint8_t *p, uint64_t n, unsigned long long *out) {
    unsigned long long s = 0;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) s += p[i];
    atomicAdd(out, s);
}
#endif
