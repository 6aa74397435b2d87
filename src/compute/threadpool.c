#include "compute/threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

struct ds4_pool {
    int n_threads; /* including the caller */
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    /* Job state in one word: generation (upper 32 bits), a closed flag (bit
     * 31) and the number of workers that joined the job (low bits). A
     * worker works on a job only after joining it, which it can do only
     * while the job is open; the caller closes the job once it finds no
     * items left to claim, then waits for the joined workers alone. A
     * worker that is descheduled (another process holds its core) or slow
     * to wake therefore never holds up a job it had no part in. */
    atomic_uint_fast64_t state;
    atomic_int finished; /* joined workers done with the current job */
    atomic_bool quit;
    /* current job */
    ds4_pool_fn fn;
    void *ctx;
    uint64_t n, chunk;
    atomic_uint_fast64_t next;
    void *scratch;
    size_t scratch_bytes;
};

#define ST_CLOSED (1ull << 31)
#define ST_JOINED_MASK (ST_CLOSED - 1)
static inline uint64_t st_gen(uint64_t s) { return s >> 32; }

/* Items are claimed chunk by chunk from a shared counter, so uneven rows
 * (or a thread descheduled by a noisy neighbour) balance themselves.
 * Chunks shrink as the job drains (each takes a 1/(2 x threads) share of
 * what is left, never less than p->chunk): large ones while there is
 * plenty, small ones at the end, so the last thread to finish overshoots
 * the others by little. That wait is paid at every job, ~50 per decoded
 * token. */
static void work(ds4_pool *p, int thread) {
    const uint64_t div = 2 * (uint64_t)p->n_threads;
    uint64_t b = atomic_load(&p->next);
    for (;;) {
        if (b >= p->n) break;
        uint64_t size = (p->n - b) / div;
        if (size < p->chunk) size = p->chunk;
        uint64_t e = b + size < p->n ? b + size : p->n;
        if (!atomic_compare_exchange_weak(&p->next, &b, e)) continue; /* b reloaded */
        p->fn(p->ctx, b, e, thread);
        b = atomic_load(&p->next);
    }
}

typedef struct {
    ds4_pool *p;
    int index;
} worker_arg;

/* Jobs come in quick succession during a forward pass (dozens per layer),
 * so a worker spins briefly on the job word before sleeping: waking a
 * sleeping thread costs far more than the short wait. */
#define SPIN_ITERS 2000 /* ~50 us: long enough for back-to-back jobs, short enough not to starve others */
/* While spinning, give the core away now and then: free when the machine
 * is idle (sched_yield returns at once), and on a busy machine the process
 * that wants this core (or a worker of ours preempted on it) gets to run. */
#define YIELD_EVERY 256

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

static inline void spin_pause(int i) {
    cpu_relax();
    if (i % YIELD_EVERY == YIELD_EVERY - 1) sched_yield();
}

/* Joins generation g if that job is still open. */
static bool try_join(ds4_pool *p, uint64_t g) {
    uint64_t s = atomic_load(&p->state);
    while (st_gen(s) == g && !(s & ST_CLOSED))
        if (atomic_compare_exchange_weak(&p->state, &s, s + 1)) return true;
    return false;
}

static void *worker_main(void *arg) {
    worker_arg *wa = arg;
    ds4_pool *p = wa->p;
    int index = wa->index;
    free(wa);
    uint64_t seen = 0;
    for (;;) {
        uint64_t g = st_gen(atomic_load(&p->state));
        for (int i = 0; i < SPIN_ITERS && g == seen && !p->quit; i++) {
            spin_pause(i);
            g = st_gen(atomic_load(&p->state));
        }
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            while (!p->quit && (g = st_gen(atomic_load(&p->state))) == seen) pthread_cond_wait(&p->wake, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (p->quit) return NULL;
        seen = g;
        if (!try_join(p, g)) continue; /* already over: wait for the next one */
        work(p, index);
        atomic_fetch_add(&p->finished, 1);
        uint64_t s = atomic_load(&p->state);
        /* the caller may be asleep waiting for this last one */
        if ((s & ST_CLOSED) && atomic_load(&p->finished) == (int)(s & ST_JOINED_MASK)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

ds4_pool *ds4_pool_create(int n_threads) {
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    ds4_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    if (!p->threads) {
        free(p);
        return NULL;
    }
    for (int i = 1; i < n_threads; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (!wa) abort();
        wa->p = p;
        wa->index = i;
        if (pthread_create(&p->threads[i], NULL, worker_main, wa) != 0) abort();
    }
    return p;
}

void ds4_pool_free(ds4_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->quit = true;
    atomic_fetch_add(&p->state, 1ull << 32);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    free(p->threads);
    free(p->scratch);
    free(p);
}

void *ds4_pool_scratch(ds4_pool *p, size_t bytes) {
    if (!p) return NULL;
    if (bytes > p->scratch_bytes) {
        free(p->scratch);
        /* grow geometrically so alternating sizes settle quickly */
        size_t want = bytes + bytes / 2;
        want = (want + 63) & ~(size_t)63;
        p->scratch = aligned_alloc(64, want);
        p->scratch_bytes = p->scratch ? want : 0;
    }
    return p->scratch;
}

int ds4_pool_size(const ds4_pool *p) { return p ? p->n_threads : 1; }

void ds4_pool_run(ds4_pool *p, uint64_t n, uint64_t grain, ds4_pool_fn fn, void *ctx) {
    if (n == 0) return;
    if (grain == 0) grain = 1;
    if (!p || p->n_threads == 1 || n <= grain) {
        fn(ctx, 0, n, 0);
        return;
    }
    /* the smallest chunk: the grain */
    uint64_t chunk = grain;
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    p->chunk = chunk;
    atomic_store(&p->next, 0);
    atomic_store(&p->finished, 0);
    /* publish: a new generation, open, nobody joined */
    uint64_t gen = st_gen(atomic_load(&p->state)) + 1;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->state, gen << 32);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    work(p, 0);
    /* Every item is claimed: close the job, then wait only for the
     * workers that joined (they may still be running their last chunk). */
    uint64_t s = atomic_fetch_or(&p->state, ST_CLOSED);
    int joined = (int)(s & ST_JOINED_MASK);
    for (int i = 0; i < SPIN_ITERS && atomic_load(&p->finished) < joined; i++) spin_pause(i);
    if (atomic_load(&p->finished) < joined) {
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->finished) < joined) pthread_cond_wait(&p->done, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}
