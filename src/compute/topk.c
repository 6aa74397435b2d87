#include "compute/topk.h"

#include <stdlib.h>

/* Strict order: better score first, then lower index. */
static int better(const ds4_scored *x, const ds4_scored *y) {
    if (x->score != y->score) return x->score > y->score;
    return x->index < y->index;
}

void ds4_topk_front(ds4_scored *a, uint32_t n, uint32_t k) {
    if (k >= n) return;
    uint32_t lo = 0, hi = n; /* the boundary k lies in [lo, hi) */
    while (hi - lo > 1) {
        /* Hoare partition around the lower middle (never the last element,
         * so the split always shrinks the range). */
        ds4_scored pivot = a[lo + (hi - lo - 1) / 2];
        uint32_t i = lo, j = hi - 1;
        for (;;) {
            while (better(&a[i], &pivot)) i++;
            while (better(&pivot, &a[j])) j--;
            if (i >= j) break;
            ds4_scored t = a[i];
            a[i] = a[j];
            a[j] = t;
            i++;
            j--;
        }
        /* a[lo..j] are all at least as good as a[j+1..hi) */
        if (k <= j) hi = j + 1;
        else if (k == j + 1) return;
        else lo = j + 1;
    }
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

uint32_t ds4_topk_indices(const float *scores, uint32_t n, uint32_t k, uint32_t *out, ds4_scored *tmp) {
    if (k > n) k = n;
    for (uint32_t i = 0; i < n; i++) tmp[i] = (ds4_scored){scores[i], i};
    ds4_topk_front(tmp, n, k);
    for (uint32_t i = 0; i < k; i++) out[i] = tmp[i].index;
    qsort(out, k, sizeof *out, cmp_u32);
    return k;
}
