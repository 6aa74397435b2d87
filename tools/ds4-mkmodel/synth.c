#include "synth.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "formats/ggml_types.h"
#include "formats/quant.h"

#define POOL_BLOCKS 4096
#define MAX_POOLS 64

typedef struct block_pool {
    uint32_t type;
    uint64_t fan_in;
    uint8_t *blocks; /* POOL_BLOCKS blocks */
    uint32_t block_bytes;
} block_pool;

struct synth {
    uint64_t seed;
    ds4_pool *pool;
    uint32_t n_expert;
    block_pool pools[MAX_POOLS];
    int n_pools;
    float **row_buf; /* one per worker thread */
    uint64_t row_cap;
    int n_threads;
};

/* splitmix64: tiny state, good enough statistics for test weights. */
static uint64_t next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double uniform(uint64_t *s) { return (next(s) >> 11) * (1.0 / 9007199254740992.0); }

static float gaussian(uint64_t *s) {
    double u = uniform(s), v = uniform(s);
    return (float)(sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v));
}

static uint64_t row_seed(const synth *s, uint32_t tensor, uint64_t row) {
    uint64_t x = s->seed ^ ((uint64_t)tensor << 40) ^ row;
    next(&x);
    return next(&x);
}

synth *synth_new(uint64_t seed, ds4_pool *pool, uint32_t n_expert, ds4_error *err) {
    synth *s = calloc(1, sizeof *s);
    if (!s) {
        ds4_fail(err, "out of memory");
        return NULL;
    }
    s->seed = seed;
    s->pool = pool;
    s->n_expert = n_expert;
    s->n_threads = ds4_pool_size(pool);
    s->row_buf = calloc((size_t)s->n_threads, sizeof *s->row_buf);
    if (!s->row_buf) {
        free(s);
        ds4_fail(err, "out of memory");
        return NULL;
    }
    return s;
}

void synth_free(synth *s) {
    if (!s) return;
    for (int i = 0; i < s->n_pools; i++) free(s->pools[i].blocks);
    for (int i = 0; i < s->n_threads; i++) free(s->row_buf[i]);
    free(s->row_buf);
    free(s);
}

/* Blocks of `type` quantized from N(0, 1/fan_in) data. */
static const block_pool *get_pool(synth *s, uint32_t type, uint64_t fan_in, ds4_error *err) {
    for (int i = 0; i < s->n_pools; i++)
        if (s->pools[i].type == type && s->pools[i].fan_in == fan_in) return &s->pools[i];
    if (s->n_pools == MAX_POOLS) {
        ds4_fail(err, "too many distinct (type, row length) pairs");
        return NULL;
    }
    const ggml_type_info *ti = ggml_type_get(type);
    block_pool *p = &s->pools[s->n_pools];
    p->type = type;
    p->fan_in = fan_in;
    p->block_bytes = ti->block_bytes;
    p->blocks = malloc((size_t)POOL_BLOCKS * ti->block_bytes);
    float *x = malloc(ti->block_elems * sizeof *x);
    if (!p->blocks || !x) {
        free(p->blocks);
        free(x);
        ds4_fail(err, "out of memory");
        return NULL;
    }
    uint64_t rng = s->seed ^ ((uint64_t)type << 56) ^ fan_in;
    float std = 1.0f / sqrtf((float)fan_in);
    for (uint32_t b = 0; b < POOL_BLOCKS; b++) {
        for (uint32_t k = 0; k < ti->block_elems; k++) x[k] = std * gaussian(&rng);
        ds4_quantize_row(type, x, p->blocks + (size_t)b * ti->block_bytes, ti->block_elems, NULL);
    }
    free(x);
    s->n_pools++;
    return p;
}

typedef struct job {
    synth *s;
    const ds4_layout_tensor *t;
    uint32_t index, type;
    uint64_t r0, row_bytes;
    uint8_t *dst;
    const block_pool *bp;
} job;

/* The value every element of a vector gets, from its name. */
static float vector_value(const char *name) {
    if (strstr(name, "norm")) return 1.0f;
    if (strstr(name, "_scale.weight")) return 1.0f;
    return 0.0f; /* mHC bases, attention sinks, routing biases */
}

static void fill_rows(void *ctx, uint64_t begin, uint64_t end, int thread) {
    const job *j = ctx;
    const ds4_layout_tensor *t = j->t;
    uint64_t ne0 = t->ne[0];
    for (uint64_t r = begin; r < end; r++) {
        uint8_t *out = j->dst + r * j->row_bytes;
        uint64_t rng = row_seed(j->s, j->index, j->r0 + r);
        if (t->role == DS4_ROLE_TID2EID) {
            /* n_used distinct experts: a partial Fisher-Yates shuffle. */
            int32_t ids[1024];
            uint32_t n = j->s->n_expert < 1024 ? j->s->n_expert : 1024;
            for (uint32_t e = 0; e < n; e++) ids[e] = (int32_t)e;
            for (uint64_t k = 0; k < ne0; k++) {
                uint32_t pick = (uint32_t)(k + next(&rng) % (n - k));
                int32_t tmp = ids[k];
                ids[k] = ids[pick];
                ids[pick] = tmp;
            }
            memcpy(out, ids, ne0 * sizeof(int32_t));
        } else if (j->bp) {
            uint32_t bb = j->bp->block_bytes;
            uint64_t nb = j->row_bytes / bb;
            for (uint64_t b = 0; b < nb; b++) memcpy(out + b * bb, j->bp->blocks + (next(&rng) % POOL_BLOCKS) * bb, bb);
        } else {
            float *x = j->s->row_buf[thread];
            if (t->role == DS4_ROLE_VECTOR) {
                float v = vector_value(t->name);
                for (uint64_t k = 0; k < ne0; k++) x[k] = v;
            } else {
                /* Uniform with the target std: cheaper than Gaussian for
                 * the big F16 tables (the embedding is 0.5 G values). */
                float std = t->role == DS4_ROLE_APE ? 0.02f : 1.0f / sqrtf((float)ne0);
                float a = std * 1.7320508f;
                for (uint64_t k = 0; k < ne0; k++) x[k] = (float)((2 * uniform(&rng) - 1) * a);
            }
            ds4_quantize_row(j->type, x, out, (int64_t)ne0, NULL);
        }
    }
}

int synth_rows(synth *s, const ds4_layout_tensor *t, uint32_t index, uint32_t type, uint64_t r0, uint64_t n, uint8_t *dst,
               ds4_error *err) {
    job j = {s, t, index, type, r0, 0, dst, NULL};
    if (t->role == DS4_ROLE_TID2EID) {
        if (t->ne[0] > s->n_expert || s->n_expert > 1024)
            return ds4_fail(err, "%s: %llu distinct experts per token out of %u", t->name, (unsigned long long)t->ne[0],
                            s->n_expert);
        j.row_bytes = t->ne[0] * sizeof(int32_t);
    } else {
        j.row_bytes = ds4_quant_row_bytes(type, (int64_t)t->ne[0]);
        if (ggml_type_get(type)->block_elems > 1 && !(j.bp = get_pool(s, type, t->ne[0], err))) return -1;
    }
    if (!j.bp && t->ne[0] > s->row_cap) {
        for (int i = 0; i < s->n_threads; i++) {
            free(s->row_buf[i]);
            if (!(s->row_buf[i] = malloc(t->ne[0] * sizeof(float)))) {
                s->row_cap = 0;
                return ds4_fail(err, "out of memory");
            }
        }
        s->row_cap = t->ne[0];
    }
    ds4_pool_run(s->pool, n, 1 + (1u << 16) / (t->ne[0] ? t->ne[0] : 1), fill_rows, &j);
    return 0;
}
