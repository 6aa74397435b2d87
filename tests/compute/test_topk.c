/* Top-k selection against a full sort, including crafted ties: equal scores
 * resolve to the lowest index (the indexer's rule). */
#include <stdlib.h>

#include "compute/topk.h"
#include "harness.h"

static int cmp_ref(const void *a, const void *b) {
    const ds4_scored *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return x->index < y->index ? -1 : 1;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void check_case(const float *s, uint32_t n, uint32_t k) {
    ds4_scored *tmp = malloc(n * sizeof *tmp), *ref = malloc(n * sizeof *ref);
    uint32_t *got = malloc(n * sizeof *got), *want = malloc(n * sizeof *want);
    for (uint32_t i = 0; i < n; i++) ref[i] = (ds4_scored){s[i], i};
    qsort(ref, n, sizeof *ref, cmp_ref);
    uint32_t m = k < n ? k : n;
    for (uint32_t i = 0; i < m; i++) want[i] = ref[i].index;
    qsort(want, m, sizeof *want, cmp_u32);
    CHECK(ds4_topk_indices(s, n, k, got, tmp) == m);
    int same = 1;
    for (uint32_t i = 0; i < m; i++) same &= got[i] == want[i];
    CHECKF(same, "n=%u k=%u: selection differs from the sorted reference", n, k);
    free(tmp), free(ref), free(got), free(want);
}

int main(void) {
    /* crafted: all equal -> the first k indices */
    float flat[64] = {0};
    check_case(flat, 64, 16);
    uint32_t got[64];
    ds4_scored tmp[64];
    ds4_topk_indices(flat, 64, 4, got, tmp);
    CHECK(got[0] == 0 && got[1] == 1 && got[2] == 2 && got[3] == 3);
    /* crafted: a tie straddling the boundary keeps the lower indices */
    float s[8] = {5, 1, 3, 3, 9, 3, 0, 3};
    ds4_topk_indices(s, 8, 3, got, tmp); /* 9 (4), 5 (0), then the lowest 3: index 2 */
    CHECK(got[0] == 0 && got[1] == 2 && got[2] == 4);
    /* random, with many ties (scores drawn from a few values) and sizes */
    srand(7);
    for (int rep = 0; rep < 300; rep++) {
        uint32_t n = 1 + (uint32_t)(rand() % 3000), k = (uint32_t)(rand() % (n + 5));
        float *v = malloc(n * sizeof *v);
        int levels = 1 + rand() % 20;
        for (uint32_t i = 0; i < n; i++) v[i] = (float)(rand() % levels) * (rep % 2 ? 1.0f : -0.5f);
        check_case(v, n, k);
        free(v);
    }
    return test_finish();
}
