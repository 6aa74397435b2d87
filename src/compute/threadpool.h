/* A persistent worker pool. ds4_pool_run splits [0, n) into tasks and
 * blocks until every task has run; the calling thread works too. Workers
 * are created once per pool, so per-call cost is a wake-up, not a spawn. */
#ifndef DS4_COMPUTE_THREADPOOL_H
#define DS4_COMPUTE_THREADPOOL_H

#include <stdint.h>

typedef struct ds4_pool ds4_pool;

/* fn(ctx, begin, end, thread_index) processes items [begin, end). */
typedef void (*ds4_pool_fn)(void *ctx, uint64_t begin, uint64_t end, int thread);

ds4_pool *ds4_pool_create(int n_threads); /* n_threads <= 0: all online cores */
void ds4_pool_free(ds4_pool *p);
int ds4_pool_size(const ds4_pool *p);

/* Runs fn over [0, n) in chunks of at least `grain` items (grain >= 1). */
void ds4_pool_run(ds4_pool *p, uint64_t n, uint64_t grain, ds4_pool_fn fn, void *ctx);

#endif
