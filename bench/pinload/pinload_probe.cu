/* How fast can tens of GB of host memory be made page-locked for the GPU?
 * A stand-alone check (no library) for the load of a GGUF whose experts go
 * to page-locked memory: cudaMallocHost of the whole size (as the engine
 * does), against anonymous memory faulted in by T threads and registered
 * with cudaHostRegister afterwards, whole or in pieces of P bytes. Each
 * step is timed; a kernel reading the registered memory through its host
 * address checks the device sees it (unified addressing).
 *
 *   nvcc -O2 -arch=sm_90 -o pinload_probe bench/pinload/pinload_probe.cu -lpthread
 *   ./pinload_probe GB THREADS PIECE_GB
 */
#include <cuda_runtime.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define PROBE_NAME "pinload_probe"
#include "../probe.cuh"

typedef struct {
    uint8_t *p;
    size_t n;
} part;

static void *touch(void *v) {
    part *a = (part *)v;
    memset(a->p, 1, a->n);
    return NULL;
}

static void fill(uint8_t *p, size_t n, int T) {
    pthread_t th[64];
    part a[64];
    for (int t = 0; t < T; t++) {
        a[t].p = p + n / T * t;
        a[t].n = t + 1 == T ? n - n / T * t : n / T;
        pthread_create(&th[t], NULL, touch, &a[t]);
    }
    for (int t = 0; t < T; t++) pthread_join(th[t], NULL);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s GB THREADS PIECE_GB\n", argv[0]);
        return 2;
    }
    size_t n = (size_t)(atof(argv[1]) * 1e9) & ~(size_t)4095;
    int T = atoi(argv[2]);
    size_t piece = (size_t)(atof(argv[3]) * 1e9) & ~(size_t)4095;
    if (T < 1 || T > 64 || !piece) return 2;
    CK(cudaFree(0));
    double t0 = now();
    uint8_t *h = NULL;
    CK(cudaMallocHost((void **)&h, n));
    double t1 = now();
    fill(h, n, T);
    double t2 = now();
    printf("cudaMallocHost %.1f GB: %.2f s, then filled by %d threads: %.2f s\n", n / 1e9, t1 - t0, T, t2 - t1);
    CK(cudaFreeHost(h));

    t0 = now();
    uint8_t *a = (uint8_t *)mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED) return 1;
    fill(a, n, T);
    t1 = now();
    size_t done = 0;
    for (; done < n; done += piece) CK(cudaHostRegister(a + done, n - done < piece ? n - done : piece, 0));
    t2 = now();
    printf("mmap + %d threads filling: %.2f s, cudaHostRegister in %.1f GB pieces: %.2f s\n", T, t1 - t0, piece / 1e9,
           t2 - t1);
    unsigned long long *d, got = 0;
    CK(cudaMalloc((void **)&d, 8));
    CK(cudaMemset(d, 0, 8));
    sum_kernel<<<264, 256>>>(a, n, d); /* through the host address: all pieces, one pointer */
    CK(cudaGetLastError());
    CK(cudaMemcpy(&got, d, 8, cudaMemcpyDeviceToHost));
    printf("device sum through the host address: %llu (want %llu)\n", got, (unsigned long long)n);
    return got == n ? 0 : 1;
}
