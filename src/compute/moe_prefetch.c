/* Cross-layer expert prefetch (spec §2.5–2.6, antirez/ds4#840): while
 * layer il computes, start reading the experts layer il+1 will probably
 * route to, so a streaming expert source overlaps SSD reads with compute.
 *
 * Hash-routed layers are exact: their experts are tid2eid[token]. Top-k
 * layers are predicted by running layer il+1's router on layer il's MoE
 * input (the hidden state changes little between adjacent layers), top-k
 * per token with the selection bias. Predictions are only hints: routing
 * itself is unchanged, so results are bit-identical with or without them.
 * Nothing is computed when the source ignores hints (in-memory sources). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compute/layers.h"
#include "compute/linear.h"

typedef struct cand {
    uint32_t expert, votes;
    float best; /* highest biased score among the tokens voting */
} cand;

static int by_votes(const void *a, const void *b) {
    const cand *x = a, *y = b;
    if (x->votes != y->votes) return x->votes < y->votes ? 1 : -1;
    if (x->best != y->best) return x->best < y->best ? 1 : -1;
    return x->expert < y->expert ? -1 : x->expert > y->expert;
}

/* The voted experts of layer next (c: one entry per expert, reordered
 * here) to the source, the most voted first, as many as leave its bank
 * room; ids: scratch of n_expert entries. */
static void hint_voted(const ds4_net *net, uint32_t next, bool hash, cand *c, uint32_t *ids) {
    uint32_t X = net->hp->n_expert, K = net->hp->n_expert_used;
    qsort(c, X, sizeof *c, by_votes);
    /* Guesses must leave a bank room for the experts the next layer will
     * really ask for: with fewer than 2K slots, wrong guesses still being
     * read would be the only victims left, and the real misses would queue
     * behind them. Hash layers are exact and may take every slot. */
    uint32_t cap = ds4_experts_capacity(net->experts), room = X;
    if (!hash) room = cap > K ? cap - K : 0;
    uint32_t m = 0;
    while (m < X && m < room && c[m].votes) {
        ids[m] = c[m].expert;
        m++;
    }
    if (m) ds4_experts_prefetch(net->experts, next, ids, m);
}

void ds4_moe_prefetch_next(const ds4_net *net, uint32_t il, const float *x, const int32_t *tokens, uint32_t n) {
    const ds4_hparams *hp = net->hp;
    uint32_t next = il + 1, X = hp->n_expert, K = hp->n_expert_used;
    if (next >= hp->n_layer || !ds4_experts_can_prefetch(net->experts)) return;
    const ds4_layer_weights *lw = &net->w->layers[next];
    cand *c = calloc(X, sizeof *c);
    uint32_t *ids = malloc(X * sizeof *ids);
    float *logits = NULL;
    if (!c || !ids) goto out; /* a hint: on failure just skip it */
    for (uint32_t e = 0; e < X; e++) c[e] = (cand){e, 0, -INFINITY};
    bool hash = ds4_layer_is_hash(hp, next);
    if (!hash && net->no_guess) goto out;
    if (hash) {
        const int32_t *tab = (const int32_t *)lw->tid2eid.data;
        for (uint32_t t = 0; t < n; t++)
            for (uint32_t k = 0; k < K; k++) c[tab[(size_t)tokens[t] * K + k]].votes++;
    } else {
        if (!(logits = malloc((size_t)n * X * sizeof *logits))) goto out;
        ds4_linear(net->pool, &lw->gate_inp, x, n, logits);
        const float *bias = lw->probs_bias.data ? (const float *)lw->probs_bias.data : NULL;
        for (uint32_t t = 0; t < n; t++) {
            float *s = logits + (size_t)t * X;
            for (uint32_t e = 0; e < X; e++) s[e] = sqrtf(ds4_softplus(s[e])) + (bias ? bias[e] : 0.0f);
            /* K best of this token (ties to the lower index, as routing). */
            for (uint32_t k = 0; k < K; k++) {
                uint32_t best = X;
                for (uint32_t e = 0; e < X; e++)
                    if (s[e] != -INFINITY && (best == X || s[e] > s[best])) best = e;
                if (best == X) break;
                c[best].votes++;
                if (s[best] > c[best].best) c[best].best = s[best];
                s[best] = -INFINITY;
            }
        }
    }
    hint_voted(net, next, hash, c, ids);
out:
    free(c);
    free(ids);
    free(logits);
}

void ds4_moe_prefetch_picks(const ds4_net *net, uint32_t next, const int32_t *picks, uint32_t n_picks) {
    const ds4_hparams *hp = net->hp;
    uint32_t X = hp->n_expert;
    if (next >= hp->n_layer || !ds4_experts_can_prefetch(net->experts)) return;
    cand *c = calloc(X, sizeof *c);
    uint32_t *ids = malloc(X * sizeof *ids);
    if (c && ids) { /* a hint: on failure just skip it */
        for (uint32_t e = 0; e < X; e++) c[e] = (cand){e, 0, -INFINITY};
        for (uint32_t i = 0; i < n_picks; i++)
            if (picks[i] >= 0 && (uint32_t)picks[i] < X) c[picks[i]].votes++;
        hint_voted(net, next, ds4_layer_is_hash(hp, next), c, ids);
    }
    free(c);
    free(ids);
}
