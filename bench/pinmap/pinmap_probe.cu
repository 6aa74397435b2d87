/* Can a file's read-only mapping be pinned in place for the GPU?
 * A stand-alone check (no library) of the step the GPU slot bank would
 * take instead of copying a GGUF's experts to page-locked memory: mmap a
 * file (PROT_READ, MAP_PRIVATE, as the engine maps a GGUF), register the
 * mapping with cudaHostRegister(Mapped | ReadOnly), then let a kernel sum
 * its bytes through the mapped device pointer and compare with the CPU's
 * sum. Each step is timed and printed before the next starts, so a step
 * that never returns is the last one named.
 *
 *   nvcc -O2 -arch=sm_90 -o pinmap_probe bench/pinmap/pinmap_probe.cu
 *   ./pinmap_probe FILE [bytes]      (bytes: only the first so many)
 */
#include <cuda_runtime.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PROBE_NAME "pinmap_probe"
#include "../probe.cuh"

int main(int argc, char **argv) {
    if (argc < 2) {
        printf("usage: pinmap_probe FILE [bytes]\n");
        return 2;
    }
    int fd = open(argv[1], O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        perror(argv[1]);
        return 1;
    }
    uint64_t n = argc > 2 ? strtoull(argv[2], NULL, 10) : (uint64_t)st.st_size;
    if (n > (uint64_t)st.st_size) n = (uint64_t)st.st_size;
    const uint8_t *map = (const uint8_t *)mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    int ro = 0;
    CK(cudaDeviceGetAttribute(&ro, cudaDevAttrHostRegisterReadOnlySupported, 0));
    printf("read-only registration supported: %d\n", ro);
    fflush(stdout);
    double t = now();
    unsigned long long cpu = 0;
    for (uint64_t i = 0; i < n; i++) cpu += map[i];
    printf("CPU sum of %llu bytes: %llu (%.2f s, the pages now cached)\n", (unsigned long long)n, cpu, now() - t);
    fflush(stdout);
    long ps = sysconf(_SC_PAGESIZE);
    uint64_t len = (n + ps - 1) / ps * ps;
    t = now();
    printf("registering %llu bytes...\n", (unsigned long long)len);
    fflush(stdout);
    CK(cudaHostRegister((void *)map, len, cudaHostRegisterMapped | cudaHostRegisterReadOnly));
    printf("registered in %.3f s\n", now() - t);
    fflush(stdout);
    const uint8_t *dp = NULL;
    CK(cudaHostGetDevicePointer((void **)&dp, (void *)map, 0));
    unsigned long long *d_out = NULL, gpu = 0;
    CK(cudaMalloc(&d_out, sizeof *d_out));
    CK(cudaMemset(d_out, 0, sizeof *d_out));
    t = now();
    printf("summing on the GPU...\n");
    fflush(stdout);
    sum_kernel<<<132, 256>>>(dp, n, d_out);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(&gpu, d_out, sizeof gpu, cudaMemcpyDeviceToHost));
    double dt = now() - t;
    printf("GPU sum %llu in %.3f s (%.2f GB/s over the bus): %s\n", gpu, dt, n / dt / 1e9, gpu == cpu ? "same" : "DIFFERENT");
    t = now();
    CK(cudaHostUnregister((void *)map));
    printf("unregistered in %.3f s\n", now() - t);
    return gpu == cpu ? 0 : 1;
}
