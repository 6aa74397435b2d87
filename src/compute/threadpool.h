/* A persistent worker pool. ds4_pool_run splits [0, n) into tasks and
 * blocks until every task has run; the calling thread works too. Workers
 * are created once per pool, so per-call cost is a wake-up, not a spawn. */
#ifndef DS4_COMPUTE_THREADPOOL_H
#define DS4_COMPUTE_THREADPOOL_H

#include <stddef.h>
#include <stdint.h>

typedef struct ds4_pool ds4_pool;

/* fn(ctx, begin, end, thread_index) processes items [begin, end). */
typedef void (*ds4_pool_fn)(void *ctx, uint64_t begin, uint64_t end, int thread);

ds4_pool *ds4_pool_create(int n_threads); /* n_threads <= 0: all online cores */
void ds4_pool_free(ds4_pool *p);
int ds4_pool_size(const ds4_pool *p);

/* A buffer of at least `bytes` (64-byte aligned) owned by the pool and
 * reused from call to call: valid until the next ds4_pool_scratch call.
 * Lets the per-call work buffers of the kernels skip malloc, whose large
 * blocks come back as fresh pages the kernel must zero on every call. Like
 * ds4_pool_run, for the one thread driving the pool. NULL pool or out of
 * memory: NULL. */
void *ds4_pool_scratch(ds4_pool *p, size_t bytes);

/* Runs fn over [0, n) in chunks of at least `grain` items (grain >= 1). */
void ds4_pool_run(ds4_pool *p, uint64_t n, uint64_t grain, ds4_pool_fn fn, void *ctx);

#endif
