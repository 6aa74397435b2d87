/* Token sampling (spec/INTERFACES.md §3): greedy, temperature, top-k,
 * top-p and min-p over a logit vector, with a seeded xorshift* generator so
 * runs with the same seed reproduce exactly. */
#ifndef DS4_MODEL_SAMPLER_H
#define DS4_MODEL_SAMPLER_H

#include <stdbool.h>
#include <stdint.h>

typedef struct ds4_sampling {
    float temperature; /* <= 0: greedy */
    int top_k;         /* 0: off; capped at 1024 and the vocabulary */
    float top_p;       /* outside (0, 1]: off */
    float min_p;       /* relative to the best token's probability */
} ds4_sampling;

#define DS4_SAMPLING_DEFAULTS ((ds4_sampling){1.0f, 0, 1.0f, 0.05f})

typedef struct ds4_rng {
    uint64_t state;
} ds4_rng;

void ds4_rng_seed(ds4_rng *r, uint64_t seed);
uint64_t ds4_rng_next(ds4_rng *r);
float ds4_rng_uniform(ds4_rng *r); /* [0, 1) with 24 bits */

/* Index of the first maximum among finite logits (0 when none is finite). */
int32_t ds4_argmax(const float *logits, uint32_t n);

/* Draws a token. `scratch` must hold n entries of 8 bytes (only used by the
 * top-k / top-p paths); it may be NULL for greedy and the default path. */
int32_t ds4_sample(const float *logits, uint32_t n, const ds4_sampling *s, ds4_rng *rng, void *scratch);
/* Whether ds4_sample's draw for settings s depends only on the tokens whose
 * logits lie within T * (2 - ln min_p) of the maximum: a temperature above
 * 0, a min-p floor in (0, 1], no top-k and no top-p. */
bool ds4_sample_banded(const ds4_sampling *s);
/* For banded settings: ds4_sample's draw from candidates alone. ids[0..m)
 * ascending with their logits lg[], holding at least every finite token
 * whose logit is >= max + T * (ln min_p - 2); the same token as ds4_sample
 * over the whole row for the same rng state. */
int32_t ds4_sample_candidates(const float *lg, const int32_t *ids, uint32_t m, const ds4_sampling *s, ds4_rng *rng);

/* ds4_sample computing every logit's weight (the reference the tests hold
 * ds4_sample to: the same token for the same logits, settings and rng). */
int32_t ds4_sample_plain(const float *logits, uint32_t n, const ds4_sampling *s, ds4_rng *rng, void *scratch);

#endif
