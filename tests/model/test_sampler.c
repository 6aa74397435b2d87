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

/* ds4_sample against ds4_sample_plain, the scan that puts every logit
 * through expf: the same token for the same logits, settings and rng
 * state, over vocabulary-sized rows (flat, peaked, with non-finite
 * values and exact ties at the weight floor's edge), temperatures, floors
 * and the filtered paths (top-p sorts the whole row: a radix sort there,
 * qsort in the plain scan). */
static void test_fast_matches_plain(void) {
    const uint32_t n = 129280;
    float *lg = malloc(n * sizeof *lg), *cvals = malloc(n * sizeof *cvals);
    int32_t *cids = malloc(n * sizeof *cids);
    void *scratch = malloc((size_t)n * 8);
    const ds4_sampling cases[] = {
        {1.0f, 0, 1.0f, 0.05f}, {0.7f, 0, 1.0f, 0.05f}, {2.0f, 0, 1.0f, 0.05f}, {1.0f, 0, 1.0f, 0.0f},
        {1.0f, 0, 1.0f, 0.5f},  {0.3f, 0, 1.0f, 1.5f},  {1.0f, 40, 1.0f, 0.05f}, {1e-4f, 0, 1.0f, 0.05f},
        {1.0f, 0, 0.9f, 0.05f}, {0.8f, 0, 0.95f, 0.0f}, {2.0f, 0, 0.5f, 0.0f},
    };
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int shape = 0; shape < 4; shape++) {
        for (uint32_t i = 0; i < n; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            float u = (float)((x >> 40) & 0xffffff) / 16777216.0f;
            lg[i] = shape == 0 ? 20.0f * u - 10.0f : shape == 1 ? 6.0f * u : 30.0f * u * u * u - 5.0f;
        }
        if (shape == 2) {
            for (uint32_t i = 0; i < n; i += 977) lg[i] = NAN;
            for (uint32_t i = 5; i < n; i += 1231) lg[i] = -INFINITY;
            lg[77] = INFINITY;
            for (uint32_t i = 3; i < n; i += 401) lg[i] = i % 2 ? -0.0f : 0.0f; /* equal logits of both signs */
        }
        if (shape == 3) { /* weights right at the floor: logits lmax + T ln(min_p) */
            for (uint32_t i = 0; i < n; i++) lg[i] = -30.0f;
            lg[10] = 2.0f;
            for (uint32_t i = 100; i < 200; i++) lg[i] = 2.0f + logf(0.05f) + (float)((int)i - 150) * 1e-7f;
        }
        for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
            ds4_rng a, b;
            ds4_rng_seed(&a, 1000 + c), ds4_rng_seed(&b, 1000 + c);
            int same = 1;
            for (int draw = 0; draw < 6 && same; draw++)
                same = ds4_sample(lg, n, &cases[c], &a, scratch) == ds4_sample_plain(lg, n, &cases[c], &b, scratch);
            CHECKF(same, "shape %d, case %zu (T %g, min_p %g): the fast sampler picked another token", shape, c,
                   cases[c].temperature, cases[c].min_p);
            if (!ds4_sample_banded(&cases[c])) continue;
            /* the candidates a device would send back: every finite logit
             * within T (3 - ln min_p) of the maximum (a wider band than
             * needed), ascending */
            float lmax = lg[ds4_argmax(lg, n)];
            double lo = (double)lmax + (double)cases[c].temperature * (log((double)cases[c].min_p) - 3.0);
            uint32_t m = 0;
            for (uint32_t i = 0; i < n; i++)
                if (isfinite(lg[i]) && lg[i] >= lo) cids[m] = (int32_t)i, cvals[m++] = lg[i];
            ds4_rng_seed(&a, 77 + c), ds4_rng_seed(&b, 77 + c);
            for (int draw = 0; draw < 6 && same; draw++)
                same = ds4_sample_candidates(cvals, cids, m, &cases[c], &a) == ds4_sample_plain(lg, n, &cases[c], &b, scratch);
            CHECKF(same, "shape %d, case %zu: a draw from %u candidates differs from the whole row's", shape, c, m);
        }
    }
    free(lg);
    free(cvals);
    free(cids);
    free(scratch);
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
    test_fast_matches_plain();

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
