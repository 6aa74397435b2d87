#include "ds4_sampler.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

void ds4_rng_seed(ds4_rng *r, uint64_t seed) { r->state = seed ? seed : 0x9e3779b97f4a7c15ull; }

uint64_t ds4_rng_next(ds4_rng *r) {
    uint64_t x = r->state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->state = x;
    return x * 0x2545f4914f6cdd1dull;
}

float ds4_rng_uniform(ds4_rng *r) { return (float)((ds4_rng_next(r) >> 40) & 0xffffff) / 16777216.0f; }

int32_t ds4_argmax(const float *logits, uint32_t n) {
    int32_t best = -1;
    float bv = 0.0f; /* logits[best], kept in a register */
    for (uint32_t i = 0; i < n; i++) {
        float l = logits[i];
        if (isfinite(l) && (best < 0 || l > bv)) best = (int32_t)i, bv = l;
    }
    return best < 0 ? 0 : best;
}

typedef struct {
    float logit;
    int32_t id;
} cand;

static int cmp_cand(const void *a, const void *b) {
    const cand *x = a, *y = b;
    if (x->logit != y->logit) return x->logit > y->logit ? -1 : 1;
    return x->id - y->id;
}

/* Sorts c[0..m) as qsort with cmp_cand does (logit descending, then id
 * ascending) in linear time: a stable least-significant-digit radix sort
 * on an order-preserving integer image of the logit (finite values, -0
 * taken as +0 since they compare equal), the input being in ascending id
 * order. qsort where its buffers cannot be had. */
static void sort_cands(cand *c, uint32_t m) {
    cand *tmp = malloc((size_t)m * (sizeof *tmp + 2 * sizeof(uint32_t)));
    if (!tmp) {
        qsort(c, m, sizeof *c, cmp_cand);
        return;
    }
    uint32_t *key = (uint32_t *)(tmp + m), *key2 = key + m;
    for (uint32_t i = 0; i < m; i++) {
        float l = c[i].logit == 0.0f ? 0.0f : c[i].logit;
        uint32_t u;
        memcpy(&u, &l, sizeof u);
        u = u & 0x80000000u ? ~u : u | 0x80000000u; /* ascending */
        key[i] = ~u;                                 /* descending */
    }
    cand *src = c, *dst = tmp;
    for (int shift = 0; shift < 32; shift += 8) {
        uint32_t count[257] = {0};
        for (uint32_t i = 0; i < m; i++) count[((key[i] >> shift) & 255) + 1]++;
        for (int d = 0; d < 256; d++) count[d + 1] += count[d];
        for (uint32_t i = 0; i < m; i++) {
            uint32_t at = count[(key[i] >> shift) & 255]++;
            dst[at] = src[i];
            key2[at] = key[i];
        }
        cand *t = src;
        src = dst, dst = t;
        uint32_t *tk = key;
        key = key2, key2 = tk;
    }
    free(tmp); /* four passes: the result is back in c */
}

/* Keeps the k best candidates in c[0..k) sorted, scanning all n logits with
 * a bounded insertion (k is at most 1024, far below the vocabulary). */
static uint32_t top_candidates(const float *logits, uint32_t n, uint32_t k, cand *c) {
    uint32_t m = 0;
    for (uint32_t i = 0; i < n; i++) {
        float l = logits[i];
        if (!isfinite(l)) continue;
        if (m == k && l <= c[m - 1].logit) continue;
        uint32_t j = m < k ? m++ : m - 1;
        while (j > 0 && c[j - 1].logit < l) {
            c[j] = c[j - 1];
            j--;
        }
        c[j].logit = l;
        c[j].id = (int32_t)i;
    }
    return m;
}

/* Samples among sorted candidates: softmax at temperature T, cut at min_p
 * (relative to the best) and at cumulative top_p mass. */
static int32_t sample_sorted(cand *c, uint32_t m, const ds4_sampling *s, float T, ds4_rng *rng) {
    float lmax = c[0].logit, sum = 0;
    for (uint32_t i = 0; i < m; i++) sum += (c[i].logit = expf((c[i].logit - lmax) / T));
    uint32_t keep = 0;
    float mass = 0;
    for (uint32_t i = 0; i < m; i++) {
        float p = c[i].logit / sum;
        if (i > 0 && p < s->min_p * (c[0].logit / sum)) break;
        keep = i + 1;
        mass += p;
        if (mass >= s->top_p) break;
    }
    float kept = 0;
    for (uint32_t i = 0; i < keep; i++) kept += c[i].logit;
    float r = ds4_rng_uniform(rng) * kept;
    for (uint32_t i = 0; i < keep; i++) {
        r -= c[i].logit;
        if (r <= 0) return c[i].id;
    }
    return c[keep - 1].id;
}

/* The default path's weight floor as a bound on the logits: a logit below
 * it has a weight expf((l - lmax) / T) under floor_w / e^2 whatever the
 * float rounding of that expression (a few units in the last place), so
 * skipping it without the expf keeps exactly the tokens and weights of the
 * plain scan. -inf (nothing skipped) without a floor. */
static double weight_floor_logit(float lmax, float T, float floor_w) {
    if (!(floor_w > 0)) return -INFINITY;
    return (double)lmax + (double)T * ((double)logf(floor_w) - 2.0);
}

/* The default path's draw over logits lg[0..m) of tokens ids[j] (NULL:
 * token j): the mass of the weights at or above the floor in token order,
 * then the walk to the drawn one; best is the first maximum. Logits under
 * lo are passed over without their expf (see weight_floor_logit). */
static int32_t sample_floor(const float *lg, const int32_t *ids, uint32_t m, float lmax, int32_t best, float T, float floor_w,
                            double lo, ds4_rng *rng) {
    float sum = 0;
    for (uint32_t j = 0; j < m; j++) {
        if (!(lg[j] >= lo) || !isfinite(lg[j])) continue;
        float w = expf((lg[j] - lmax) / T);
        if (w >= floor_w) sum += w;
    }
    float r = ds4_rng_uniform(rng) * sum;
    int32_t last = best;
    for (uint32_t j = 0; j < m; j++) {
        if (!(lg[j] >= lo) || !isfinite(lg[j])) continue;
        float w = expf((lg[j] - lmax) / T);
        if (w < floor_w) continue;
        last = ids ? ids[j] : (int32_t)j;
        r -= w;
        if (r <= 0) return last;
    }
    return last;
}

/* ds4_sample's settings as it applies them. */
static ds4_sampling normalized(const ds4_sampling *sp, uint32_t n) {
    ds4_sampling s = *sp;
    if (!(s.top_p > 0 && s.top_p <= 1)) s.top_p = 1;
    if (!(s.min_p >= 0)) s.min_p = 0;
    if (s.top_k < 0) s.top_k = 0;
    if (s.top_k > 1024) s.top_k = 1024;
    if ((uint32_t)s.top_k > n) s.top_k = (int)n;
    return s;
}

bool ds4_sample_banded(const ds4_sampling *sp) {
    ds4_sampling s = normalized(sp, UINT32_MAX);
    return s.temperature > 0 && s.top_k == 0 && s.top_p >= 1 && s.min_p > 0 && s.min_p <= 1;
}

int32_t ds4_sample_candidates(const float *lg, const int32_t *ids, uint32_t m, const ds4_sampling *sp, ds4_rng *rng) {
    if (m == 0) return 0;
    ds4_sampling s = normalized(sp, UINT32_MAX);
    uint32_t jb = (uint32_t)ds4_argmax(lg, m);
    float lmax = lg[jb], T = s.temperature;
    if (!isfinite(lmax)) return ids[jb];
    return sample_floor(lg, ids, m, lmax, ids[jb], T, s.min_p, weight_floor_logit(lmax, T, s.min_p), rng);
}

static int32_t sample(const float *logits, uint32_t n, const ds4_sampling *sp, ds4_rng *rng, void *scratch, bool plain) {
    if (!(sp->temperature > 0) || n == 0) return ds4_argmax(logits, n);
    ds4_sampling s = normalized(sp, n);
    float T = s.temperature;
    int32_t best = ds4_argmax(logits, n);
    float lmax = logits[best];
    if (!isfinite(lmax)) return best;

    if (s.top_k == 0 && s.top_p >= 1) {
        /* Fast path: one pass for the mass of tokens above min_p, one walk;
         * plain: every logit through expf (the reference), else the logits
         * far below the floor are passed over (same result) */
        return sample_floor(logits, NULL, n, lmax, best, T, s.min_p,
                            plain ? -INFINITY : weight_floor_logit(lmax, T, s.min_p), rng);
    }
    cand *c = scratch;
    uint32_t m;
    if (s.top_k > 0) {
        m = top_candidates(logits, n, (uint32_t)s.top_k, c);
    } else {
        m = 0;
        for (uint32_t i = 0; i < n; i++)
            if (isfinite(logits[i])) c[m++] = (cand){logits[i], (int32_t)i};
        if (plain) qsort(c, m, sizeof *c, cmp_cand);
        else sort_cands(c, m);
    }
    return sample_sorted(c, m, &s, T, rng);
}

int32_t ds4_sample(const float *logits, uint32_t n, const ds4_sampling *sp, ds4_rng *rng, void *scratch) {
    return sample(logits, n, sp, rng, scratch, false);
}

int32_t ds4_sample_plain(const float *logits, uint32_t n, const ds4_sampling *sp, ds4_rng *rng, void *scratch) {
    return sample(logits, n, sp, rng, scratch, true);
}
