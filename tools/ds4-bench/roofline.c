#include "roofline.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct {
    const uint64_t *p;
    size_t n;
    uint64_t sink;
    pthread_barrier_t *bar;
    double t0, t1;
} read_arg;

/* Eight independent xor chains keep several loads in flight per core; the
 * compiler vectorises them. The result is kept so the loads stay. */
static void *read_thread(void *v) {
    read_arg *a = v;
    pthread_barrier_wait(a->bar);
    a->t0 = now();
    uint64_t acc[8] = {0};
    for (size_t i = 0; i + 8 <= a->n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] ^= a->p[i + k];
    a->t1 = now();
    for (int k = 0; k < 8; k++) a->sink ^= acc[k];
    return NULL;
}

double roofline_read_bandwidth(int n_threads, double *seconds_out) {
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    size_t bytes = (size_t)1 << 30; /* 1 GiB, or an eighth of RAM on small machines */
    if (pages > 0 && psz > 0 && (size_t)pages * (size_t)psz / 8 < bytes) bytes = (size_t)pages * (size_t)psz / 8;
    uint64_t *buf = aligned_alloc(4096, bytes);
    if (!buf) return 0;
    memset(buf, 1, bytes); /* fault every page in before timing */
    double best = 0, best_s = 0;
    pthread_t *th = calloc((size_t)n_threads, sizeof *th);
    read_arg *args = calloc((size_t)n_threads, sizeof *args);
    pthread_barrier_t bar;
    size_t per = bytes / 8 / (size_t)n_threads;
    for (int rep = 0; rep < 5; rep++) {
        pthread_barrier_init(&bar, NULL, (unsigned)n_threads);
        for (int t = 0; t < n_threads; t++) {
            args[t] = (read_arg){buf + per * (size_t)t, per, 0, &bar, 0, 0};
            pthread_create(&th[t], NULL, read_thread, &args[t]);
        }
        double t0 = 1e300, t1 = 0;
        for (int t = 0; t < n_threads; t++) {
            pthread_join(th[t], NULL);
            if (args[t].t0 < t0) t0 = args[t].t0;
            if (args[t].t1 > t1) t1 = args[t].t1;
        }
        pthread_barrier_destroy(&bar);
        double bw = (double)per * 8 * n_threads / (t1 - t0);
        if (bw > best) best = bw, best_s = t1 - t0;
    }
    free(th);
    free(args);
    free(buf);
    if (seconds_out) *seconds_out = best_s;
    return best;
}

typedef struct {
    double flops, secs;
    float out;
} flop_arg;

/* 16 independent accumulators of 16 floats (AVX-512) or twice 8 (AVX2):
 * enough chains to cover FMA latency on current cores. */
__attribute__((target("avx2,fma"))) static float fma_avx2(long iters) {
    typedef float v8 __attribute__((vector_size(32)));
    v8 acc[12], a = {1.0001f, 1, 1, 1, 1, 1, 1, 1}, b = {0.9999f, 1, 1, 1, 1, 1, 1, 1};
    for (int k = 0; k < 12; k++) acc[k] = (v8){(float)k};
    for (long i = 0; i < iters; i++)
        for (int k = 0; k < 12; k++) acc[k] = acc[k] * a + b;
    float s = 0;
    for (int k = 0; k < 12; k++) s += acc[k][0];
    return s;
}

__attribute__((target("avx512f"))) static float fma_avx512(long iters) {
    typedef float v16 __attribute__((vector_size(64)));
    v16 acc[12], a = {1.0001f}, b = {0.9999f};
    for (int k = 0; k < 12; k++) acc[k] = (v16){(float)k};
    for (long i = 0; i < iters; i++)
        for (int k = 0; k < 12; k++) acc[k] = acc[k] * a + b;
    float s = 0;
    for (int k = 0; k < 12; k++) s += acc[k][0];
    return s;
}

static void *flop_thread(void *v) {
    flop_arg *a = v;
    long iters = 20000000;
    int wide = __builtin_cpu_supports("avx512f");
    double t0 = now();
    a->out = wide ? fma_avx512(iters) : fma_avx2(iters);
    a->secs = now() - t0;
    a->flops = (double)iters * 12 * (wide ? 16 : 8) * 2;
    return NULL;
}

double roofline_peak_flops(int n_threads) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return 0;
    pthread_t *th = calloc((size_t)n_threads, sizeof *th);
    flop_arg *args = calloc((size_t)n_threads, sizeof *args);
    for (int t = 0; t < n_threads; t++) pthread_create(&th[t], NULL, flop_thread, &args[t]);
    double total = 0;
    for (int t = 0; t < n_threads; t++) {
        pthread_join(th[t], NULL);
        total += args[t].flops / args[t].secs;
    }
    free(th);
    free(args);
    return total;
}
