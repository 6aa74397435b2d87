#include "roofline.h"
#include "util/clock.h"

#include <pthread.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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
    a->t0 = ds4_now_s();
    uint64_t acc[8] = {0};
    for (size_t i = 0; i + 8 <= a->n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] ^= a->p[i + k];
    a->t1 = ds4_now_s();
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

#if defined(__x86_64__)
/* Twelve independent FMA chains: enough to cover the FMA latency on two
 * pipes. Explicit FMA intrinsics, since ISO C mode never contracts a*b+c. */
__attribute__((target("avx2,fma"))) static float fma_avx2(long iters) {
    __m256 acc[12], a = _mm256_set1_ps(1.0001f), b = _mm256_set1_ps(0.9999f);
    for (int k = 0; k < 12; k++) acc[k] = _mm256_set1_ps((float)k);
    for (long i = 0; i < iters; i++)
        for (int k = 0; k < 12; k++) acc[k] = _mm256_fmadd_ps(acc[k], a, b);
    float s = 0;
    for (int k = 0; k < 12; k++) s += _mm256_cvtss_f32(acc[k]);
    return s;
}

__attribute__((target("avx512f"))) static float fma_avx512(long iters) {
    __m512 acc[12], a = _mm512_set1_ps(1.0001f), b = _mm512_set1_ps(0.9999f);
    for (int k = 0; k < 12; k++) acc[k] = _mm512_set1_ps((float)k);
    for (long i = 0; i < iters; i++)
        for (int k = 0; k < 12; k++) acc[k] = _mm512_fmadd_ps(acc[k], a, b);
    float s = 0;
    for (int k = 0; k < 12; k++) s += _mm512_cvtss_f32(acc[k]);
    return s;
}

/* Twelve independent dpbusd chains (64 byte products each). */
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static float vnni_avx512(long iters) {
    __m512i acc[12];
    const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
    for (int k = 0; k < 12; k++) acc[k] = _mm512_set1_epi32(k);
    for (long i = 0; i < iters; i++)
        for (int k = 0; k < 12; k++) acc[k] = _mm512_dpbusd_epi32(acc[k], a, b);
    long long s = 0; /* the lanes wrap around (each chain adds -6 per step): a 64-bit sum cannot overflow */
    for (int k = 0; k < 12; k++) s += _mm_cvtsi128_si32(_mm512_castsi512_si128(acc[k]));
    return (float)s;
}

#endif

static void *int8_thread(void *v) {
    flop_arg *a = v;
    long iters = 20000000;
    double t0 = ds4_now_s();
#if defined(__x86_64__)
    a->out = vnni_avx512(iters);
#else
    a->out = 0;
#endif
    a->secs = ds4_now_s() - t0;
    a->flops = (double)iters * 12 * 64 * 2;
    return NULL;
}

/* Runs fn on n_threads threads at once and adds up their operation rates. */
static double run_rate_threads(int n_threads, void *(*fn)(void *)) {
    pthread_t *th = calloc((size_t)n_threads, sizeof *th);
    flop_arg *args = calloc((size_t)n_threads, sizeof *args);
    if (!th || !args) {
        free(th);
        free(args);
        return 0;
    }
    for (int t = 0; t < n_threads; t++) pthread_create(&th[t], NULL, fn, &args[t]);
    double total = 0;
    for (int t = 0; t < n_threads; t++) {
        pthread_join(th[t], NULL);
        total += args[t].flops / args[t].secs;
    }
    free(th);
    free(args);
    return total;
}

double roofline_peak_int8(int n_threads) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512vnni") || !__builtin_cpu_supports("avx512bw")) return 0;
#else
    return 0;
#endif
    return run_rate_threads(n_threads, int8_thread);
}

static void *flop_thread(void *v) {
    flop_arg *a = v;
    long iters = 20000000;
#if defined(__x86_64__)
    int wide = __builtin_cpu_supports("avx512f");
    double t0 = ds4_now_s();
    a->out = wide ? fma_avx512(iters) : fma_avx2(iters);
#else
    int wide = 0;
    double t0 = ds4_now_s();
    a->out = 0;
#endif
    a->secs = ds4_now_s() - t0;
    a->flops = (double)iters * 12 * (wide ? 16 : 8) * 2;
    return NULL;
}

double roofline_peak_flops(int n_threads) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return 0;
#else
    return 0; /* only measured on x86-64 so far */
#endif
    return run_rate_threads(n_threads, flop_thread);
}
