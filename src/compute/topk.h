/* Top-k selection with a fixed tie rule: higher score first, and among
 * equal scores the lower index (as ds4 does; torch leaves ties unordered).
 * Used by the lightning indexer over up to ctx/4 compressed entries. */
#ifndef DS4_COMPUTE_TOPK_H
#define DS4_COMPUTE_TOPK_H

#include <stdint.h>

typedef struct ds4_scored {
    float score;
    uint32_t index;
} ds4_scored;

/* Reorders a[0..n) so that its first k entries are the k best (in no
 * particular order). Expected linear time. */
void ds4_topk_front(ds4_scored *a, uint32_t n, uint32_t k);

/* The k best indices of scores[0..n), in ascending index order (a
 * canonical order, so the caller's arithmetic does not depend on the
 * selection algorithm). tmp holds n entries. Returns min(k, n). */
uint32_t ds4_topk_indices(const float *scores, uint32_t n, uint32_t k, uint32_t *out, ds4_scored *tmp);

#endif
