/* Sampler: greedy, reproducibility, and the distribution each filter keeps. */
#include <math.h>
#include <stdlib.h>

#include "harness.h"
#include "ds4_sampler.h"

#define V 1000

static void test_rng(void) {
    /* Reference values computed by hand from the xorshift* definition. */
    ds4_rng r;
    ds4_rng_seed(&r, 1);
    uint64_t x = 1;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    CHECK(ds4_rng_next(&r) == x * 0x2545f4914f6cdd1dull);
    ds4_rng_seed(&r, 0);
    CHECK(r.state == 0x9e3779b97f4a7c15ull);
    for (int i = 0; i < 1000; i++) {
        float u = ds4_rng_uniform(&r);
        CHECK(u >= 0 && u < 1);
    }
}

static void test_greedy(float *lg) {
    ds4_sampling g = {0, 0, 1, 0};
    ds4_rng r;
    ds4_rng_seed(&r, 5);
    CHECK(ds4_sample(lg, V, &g, &r, NULL) == 123);
    lg[7] = lg[123]; /* first maximum in id order wins */
    CHECK(ds4_argmax(lg, V) == 7);
    lg[7] = -10.0f;
    float nanlg[3] = {NAN, 1.0f, INFINITY};
    CHECK(ds4_argmax(nanlg, 3) == 1);
}

static void histogram(const float *lg, const ds4_sampling *s, int draws, int *hist, void *scratch) {
    ds4_rng r;
    ds4_rng_seed(&r, 42);
    for (int i = 0; i < V; i++) hist[i] = 0;
    for (int i = 0; i < draws; i++) hist[ds4_sample(lg, V, s, &r, scratch)]++;
}

int main(void) {
    float *lg = calloc(V, sizeof *lg);
    void *scratch = malloc(V * 8);
    int *hist = malloc(V * sizeof *hist), *hist2 = malloc(V * sizeof *hist2);
    for (int i = 0; i < V; i++) lg[i] = -10.0f;
    /* Four live tokens with probabilities ~ 0.5, 0.25, 0.125, 0.125. */
    lg[123] = logf(0.5f);
    lg[200] = logf(0.25f);
    lg[300] = logf(0.125f);
    lg[400] = logf(0.125f);
    test_rng();
    test_greedy(lg);

    ds4_sampling s = {1.0f, 0, 1.0f, 0.0f};
    histogram(lg, &s, 20000, hist, scratch);
    histogram(lg, &s, 20000, hist2, scratch);
    int same = 1;
    for (int i = 0; i < V; i++) same &= hist[i] == hist2[i];
    CHECKF(same, "same seed must reproduce the same draws");
    double mass4 = hist[123] + hist[200] + hist[300] + hist[400];
    CHECKF(fabs(hist[123] / mass4 - 0.5) < 0.02, "p(123)=%g", hist[123] / mass4);
    CHECKF(fabs(hist[200] / mass4 - 0.25) < 0.02, "p(200)=%g", hist[200] / mass4);

    /* min_p 0.3 keeps tokens with p >= 0.3 * 0.5: only 123 and 200. */
    s.min_p = 0.3f;
    histogram(lg, &s, 5000, hist, scratch);
    CHECK(hist[300] == 0 && hist[400] == 0 && hist[123] + hist[200] == 5000);
    CHECKF(fabs(hist[123] / 5000.0 - 2.0 / 3) < 0.03, "renormalised p(123)=%g", hist[123] / 5000.0);

    /* top_k 1 is greedy; top_k 2 keeps the two best. */
    s = (ds4_sampling){1.0f, 1, 1.0f, 0.0f};
    histogram(lg, &s, 1000, hist, scratch);
    CHECK(hist[123] == 1000);
    s.top_k = 2;
    histogram(lg, &s, 5000, hist, scratch);
    CHECK(hist[123] + hist[200] == 5000 && hist[200] > 1300);

    /* top_p 0.6: 0.5 < 0.6 so the second token is needed, the third is not. */
    s = (ds4_sampling){1.0f, 0, 0.6f, 0.0f};
    histogram(lg, &s, 5000, hist, scratch);
    CHECK(hist[123] + hist[200] == 5000 && hist[200] > 1300);

    /* Low temperature concentrates on the best token. */
    s = (ds4_sampling){0.05f, 0, 1.0f, 0.0f};
    histogram(lg, &s, 2000, hist, scratch);
    CHECK(hist[123] == 2000);
    free(lg);
    free(scratch);
    free(hist);
    free(hist2);
    return test_finish();
}
