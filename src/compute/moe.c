/* Mixture-of-experts sub-layer (spec/MODEL.md §3.6): sqrt-softplus router,
 * hash routing (tid2eid) or top-k with a selection-only bias, normalised
 * weights times the routed scale, clamped SwiGLU experts plus one shared
 * expert. Tokens of a chunk are grouped by expert so each expert's weights
 * are read once per chunk. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compute/layers.h"
#include "compute/linear.h"

/* Top-k of biased scores; ties keep the lower expert index. */
static void select_topk(const float *score, const float *bias, uint32_t n_expert, uint32_t k, int32_t *ids) {
    for (uint32_t i = 0; i < k; i++) {
        int32_t best = -1;
        float bv = -INFINITY;
        for (uint32_t e = 0; e < n_expert; e++) {
            int taken = 0;
            for (uint32_t j = 0; j < i; j++) taken |= ids[j] == (int32_t)e;
            if (taken) continue;
            float v = score[e] + (bias ? bias[e] : 0.0f);
            if (best < 0 || v > bv) {
                best = (int32_t)e;
                bv = v;
            }
        }
        ids[i] = best;
    }
}

/* One expert (or the shared one) over a group of token rows:
 * out = down(swiglu(gate x, up x)). */
static void run_expert(const ds4_net *net, const ds4_tensor *gate, const ds4_tensor *up, const ds4_tensor *down,
                       const float *xs, uint32_t m, float limit, float *g, float *u, float *out) {
    ds4_linear(net->pool, gate, xs, m, g);
    ds4_linear(net->pool, up, xs, m, u);
    ds4_swiglu_clamped(g, u, m * (uint32_t)gate->ne[1], limit);
    ds4_linear(net->pool, down, g, m, out);
}

/* The rows of x routed to expert e, packed into xs; members records each
 * one's token and slot. Each token at most once per expert; a row naming
 * the expert in several slots (possible in hash tables) adds each slot's
 * weight in slot order (scatter). */
static uint32_t gather(const int32_t *ids, const float *x, uint32_t n, uint32_t K, uint32_t E, int32_t e,
                       uint32_t *members, float *xs) {
    uint32_t m = 0;
    for (uint32_t t = 0; t < n; t++)
        for (uint32_t j = 0; j < K; j++)
            if (ids[(size_t)t * K + j] == e) {
                members[m] = t * K + j;
                memcpy(xs + (size_t)m * E, x + (size_t)t * E, E * sizeof(float));
                m++;
                break;
            }
    return m;
}

/* out[token] += weight x d[row] for the m rows gather packed. */
static void scatter(float *out, const int32_t *ids, const float *wts, uint32_t K, uint32_t E, int32_t e,
                    const uint32_t *members, uint32_t m, const float *d) {
    for (uint32_t i = 0; i < m; i++) {
        uint32_t t = members[i] / K;
        for (uint32_t j = members[i] % K; j < K; j++)
            if (ids[(size_t)t * K + j] == e) ds4_axpy(out + (size_t)t * E, wts[(size_t)t * K + j], d + (size_t)i * E, E);
    }
}

/* What the routed experts of one MoE call share. */
typedef struct {
    const ds4_net *net;
    uint32_t il;
    const float *x;
    const int32_t *tokens;
    uint32_t n;
    const int32_t *ids;
    const float *wts;
    float limit;
    float *xs, *g, *u, *d;
    uint32_t *members;
    float *out;
} moe_ctx;

/* One acquired group of experts (used[0..gn), their views), each run over
 * its tokens and summed into out in ascending expert order. Each expert
 * computes as soon as its own bytes are in, while the group's other reads
 * go on. guessed: the next layer's likely experts were already
 * requested. */
static int moe_group(const moe_ctx *c, const uint32_t *used, uint32_t gn, ds4_expert_view *views, bool guessed,
                     ds4_error *err) {
    const ds4_net *net = c->net;
    const ds4_hparams *hp = net->hp;
    uint32_t E = hp->n_embd, K = hp->n_expert_used, n = c->n, il = c->il;
    const int32_t *ids = c->ids, *tokens = c->tokens;
    const float *x = c->x, *wts = c->wts;
    float limit = c->limit, *xs = c->xs, *g = c->g, *u = c->u, *d = c->d, *out = c->out;
    uint32_t *members = c->members;
    int rc = 0;
    /* Decode-sized groups take whichever expert is in (the hits at once,
     * then reads as they land) instead of waiting in ascending order
     * behind a miss, and keep its output until those before it are
     * summed: the sums run in ascending expert order whatever arrives
     * first, as without streaming. Larger groups (prefill) go in order. */
    bool any_order = (size_t)gn * n <= 64;
    float *dk = any_order ? malloc((size_t)gn * n * E * sizeof *dk) : NULL;
    uint32_t *mk = any_order ? malloc(((size_t)gn * n + gn) * sizeof *mk) : NULL, *cnt = mk ? mk + (size_t)gn * n : NULL;
    uint8_t *done = calloc(gn, 1);
    if (!done) {
        free(dk), free(mk);
        return ds4_fail(err, "out of memory routing experts");
    }
    if (!dk || !mk) any_order = false; /* in order needs nothing more */
    uint32_t next_sum = 0, n_done = 0;
    while (n_done < gn) {
        uint32_t k = gn;
        if (any_order)
            for (uint32_t j = next_sum; j < gn && k == gn; j++)
                if (!done[j] && ds4_experts_ready(net->experts, j)) k = j;
        for (uint32_t j = next_sum; j < gn && k == gn; j++)
            if (!done[j]) k = j;
        if ((rc = ds4_experts_wait(net->experts, k, err))) break;
        /* As soon as the disk has nothing left to do for this layer
         * (at once when all were hits), start the next layer's likely
         * experts: they load while these and the next attention
         * compute, without delaying this layer's own reads. */
        if (!guessed && (n_done + 1 == gn || !ds4_experts_reading(net->experts))) {
            ds4_moe_prefetch_next(net, il, x, tokens, n);
            guessed = true;
        }
        uint32_t *mem_k = any_order ? mk + (size_t)k * n : members;
        float *d_k = any_order ? dk + (size_t)k * n * E : d;
        uint32_t m = gather(ids, x, n, K, E, (int32_t)used[k], mem_k, xs);
        run_expert(net, &views[k].gate, &views[k].up, &views[k].down, xs, m, limit, g, u, d_k);
        done[k] = 1;
        n_done++;
        if (!any_order) {
            scatter(out, ids, wts, K, E, (int32_t)used[k], mem_k, m, d_k);
            next_sum = k + 1;
            continue;
        }
        cnt[k] = m;
        for (; next_sum < gn && done[next_sum]; next_sum++)
            scatter(out, ids, wts, K, E, (int32_t)used[next_sum], mk + (size_t)next_sum * n, cnt[next_sum],
                    dk + (size_t)next_sum * n * E);
    }
    free(dk);
    free(mk);
    free(done);
    return rc;
}

/* Decode (one token, every expert of the layer in memory): the shared
 * expert's and all routed experts' gate and up products in one parallel
 * pass, SwiGLU, then all down products in another, instead of three
 * passes per expert; then the routed outputs are summed in ascending
 * expert order as moe_group does. Same kernels on the same inputs: equal
 * to moe_group bit for bit. Returns 1 (nothing done) when the workspace
 * has no room. */
static int moe_decode_fused(const moe_ctx *c, const uint32_t *used, uint32_t gn, ds4_expert_view *views, ds4_arena *ar,
                            ds4_error *err) {
    const ds4_net *net = c->net;
    const ds4_hparams *hp = net->hp;
    const ds4_layer_weights *lw = &net->w->layers[c->il];
    uint32_t E = hp->n_embd, F = hp->n_ff_exp, K = hp->n_expert_used;
    if (gn + 1 > DS4_LINEAR_MAX_SEGS / 2) return 1;
    float *gb = ds4_arena_get(ar, (size_t)(gn + 1) * F);
    float *ub = ds4_arena_get(ar, (size_t)(gn + 1) * F);
    float *db = ds4_arena_get(ar, (size_t)gn * E);
    if (!gb || !ub || !db) return 1;
    for (uint32_t k = 0; k < gn; k++) {
        int rc = ds4_experts_wait(net->experts, k, err);
        if (rc) return rc;
    }
    ds4_moe_prefetch_next(net, c->il, c->x, c->tokens, 1);
    ds4_linear_seg sg[DS4_LINEAR_MAX_SEGS];
    for (uint32_t k = 0; k <= gn; k++) {
        const ds4_tensor *gt = k ? &views[k - 1].gate : &lw->gate_shexp, *ut = k ? &views[k - 1].up : &lw->up_shexp;
        sg[2 * k] = (ds4_linear_seg){gt, 0, gt->ne[1], c->x, gt->ne[0], 1, gb + (size_t)k * F, gt->ne[1]};
        sg[2 * k + 1] = (ds4_linear_seg){ut, 0, ut->ne[1], c->x, ut->ne[0], 1, ub + (size_t)k * F, ut->ne[1]};
    }
    ds4_linear_multi(net->pool, sg, 2 * (gn + 1));
    ds4_swiglu_clamped(gb, ub, (gn + 1) * F, c->limit);
    for (uint32_t k = 0; k <= gn; k++) {
        const ds4_tensor *dt = k ? &views[k - 1].down : &lw->down_shexp;
        float *y = k ? db + (size_t)(k - 1) * E : c->out;
        sg[k] = (ds4_linear_seg){dt, 0, dt->ne[1], gb + (size_t)k * F, dt->ne[0], 1, y, dt->ne[1]};
    }
    ds4_linear_multi(net->pool, sg, gn + 1);
    for (uint32_t k = 0; k < gn; k++) {
        uint32_t j = 0;
        while (c->ids[j] != (int32_t)used[k]) j++;
        c->members[0] = j; /* the token's first slot naming the expert, as gather records */
        scatter(c->out, c->ids, c->wts, K, E, (int32_t)used[k], c->members, 1, db + (size_t)k * E);
    }
    return 0;
}

int ds4_moe(const ds4_net *net, uint32_t il, const float *x, const int32_t *tokens, uint32_t n, float *out, ds4_arena *ar,
            ds4_error *err) {
    const ds4_hparams *hp = net->hp;
    const ds4_layer_weights *lw = &net->w->layers[il];
    uint32_t E = hp->n_embd, F = hp->n_ff_exp, X = hp->n_expert, K = hp->n_expert_used;
    float limit = hp->swiglu_clamp[il];

    float *logits = ds4_arena_get(ar, (size_t)n * X);
    float *wts = ds4_arena_get(ar, (size_t)n * K);
    float *xs = ds4_arena_get(ar, (size_t)n * E);
    float *g = ds4_arena_get(ar, (size_t)n * F);
    float *u = ds4_arena_get(ar, (size_t)n * F);
    float *d = ds4_arena_get(ar, (size_t)n * E);
    int32_t *ids = malloc((size_t)n * K * sizeof *ids);
    uint32_t *members = malloc((size_t)n * sizeof *members);
    if (!logits || !wts || !xs || !g || !u || !d || !ids || !members) {
        free(ids);
        free(members);
        return ds4_fail(err, "MoE workspace too small");
    }

    ds4_linear(net->pool, &lw->gate_inp, x, n, logits);
    const float *bias = lw->probs_bias.data ? (const float *)lw->probs_bias.data : NULL;
    for (uint32_t t = 0; t < n; t++) {
        float *s = logits + (size_t)t * X;
        for (uint32_t e = 0; e < X; e++) s[e] = sqrtf(ds4_softplus(s[e]));
        int32_t *sel = ids + (size_t)t * K;
        if (ds4_layer_is_hash(hp, il)) {
            const int32_t *tab = (const int32_t *)lw->tid2eid.data;
            memcpy(sel, tab + (size_t)tokens[t] * K, K * sizeof *sel);
        } else {
            select_topk(s, bias, X, K, sel);
        }
        /* Weights use the unbiased scores. */
        float sum = 0;
        for (uint32_t k = 0; k < K; k++) sum += s[sel[k]];
        for (uint32_t k = 0; k < K; k++) wts[(size_t)t * K + k] = s[sel[k]] / (sum + 1e-20f) * hp->expert_scale;
    }

    /* Shared expert on every token, then the routed experts: the distinct
     * experts of the chunk are acquired from the expert source in groups
     * that fit it (a slot bank may hold fewer than the chunk touches), and
     * each expert runs once over all of its tokens. */
    uint32_t cap = ds4_experts_capacity(net->experts), n_used = 0;
    uint32_t *used = malloc(X * sizeof *used);
    uint8_t *seen = calloc(X, 1);
    ds4_expert_view *views = malloc((cap < X ? cap : X) * sizeof *views);
    if (!used || !seen || !views) {
        free(ids), free(members), free(used), free(seen), free(views);
        return ds4_fail(err, "out of memory routing experts");
    }
    /* Ascending expert order: every token then sums its experts in the same
     * order whatever the chunking, so prefill and decode agree bit for bit. */
    for (size_t i = 0; i < (size_t)n * K; i++) seen[ids[i]] = 1;
    for (uint32_t e = 0; e < X; e++)
        if (seen[e]) used[n_used++] = e;
    free(seen);
    /* Streaming sources: start this layer's first group of reads now, so
     * they overlap the shared expert below (a no-op for in-memory ones). */
    ds4_experts_prefetch(net->experts, il, used, n_used < cap ? n_used : cap);
    moe_ctx mc = {net, il, x, tokens, n, ids, wts, limit, xs, g, u, d, members, out};
    int rc = 0;
    if (n == 1 && n_used <= cap) {
        /* Decode: when every expert is in at once (always, for in-memory
         * sources), all of them and the shared one run in two passes. */
        if ((rc = ds4_experts_acquire_start(net->experts, il, used, n_used, views, err)) == 0) {
            bool all = true;
            for (uint32_t k = 0; k < n_used && all; k++) all = ds4_experts_ready(net->experts, k);
            int fr = all ? moe_decode_fused(&mc, used, n_used, views, ar, err) : 1;
            if (fr != 1) {
                rc = fr;
            } else {
                run_expert(net, &lw->gate_shexp, &lw->up_shexp, &lw->down_shexp, x, n, limit, g, u, out);
                rc = moe_group(&mc, used, n_used, views, false, err);
            }
        }
    } else {
        run_expert(net, &lw->gate_shexp, &lw->up_shexp, &lw->down_shexp, x, n, limit, g, u, out);
        for (uint32_t g0 = 0; g0 < n_used && rc == 0; g0 += cap) {
            uint32_t gn = n_used - g0 < cap ? n_used - g0 : cap;
            if ((rc = ds4_experts_acquire_start(net->experts, il, used + g0, gn, views, err))) break;
            rc = moe_group(&mc, used + g0, gn, views, g0 > 0, err);
        }
    }
    free(ids);
    free(members);
    free(used);
    free(views);
    return rc;
}
