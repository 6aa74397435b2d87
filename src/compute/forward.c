#include "compute/forward.h"

#include <stdlib.h>
#include <string.h>

#include "compute/layers.h"
#include "compute/linear.h"
#include "compute/mhc.h"

struct ds4_workspace {
    ds4_arena arena;
};

ds4_workspace *ds4_workspace_new(void) { return calloc(1, sizeof(ds4_workspace)); }

void ds4_workspace_free(ds4_workspace *ws) {
    if (!ws) return;
    free(ws->arena.buf);
    free(ws);
}

/* Upper bound of the floats a chunk of n tokens takes from the arena. */
static size_t arena_need(const ds4_hparams *hp, uint32_t n) {
    size_t E = hp->n_embd, hc = hp->hc, qdim = (size_t)hp->n_head * hp->head_dim;
    size_t n_mix = (2 + hc) * hc;
    size_t fwd = n * (hc * E          /* streams */
                      + 3 * E         /* y, xn, sub-layer output */
                      + hc + hc * hc  /* post, comb */
                      + hc * E + n_mix); /* mHC scratch */
    size_t attn = n * (hp->q_lora + 2 * qdim + hp->head_dim + (size_t)hp->o_groups * hp->o_lora + 2 * 128 /* rope */
                       + 4 * (size_t)hp->head_dim + 4 * (size_t)hp->idx_head_dim +
                       (size_t)hp->idx_n_head * (hp->idx_head_dim + 1)) +
                  hp->head_dim + hp->idx_head_dim;
    size_t moe = n * (hp->n_expert + hp->n_expert_used + 2 * E + 2 * (size_t)hp->n_ff_exp) +
                 /* one-token decode: every expert's gate, up and down outputs at once */
                 (hp->n_expert_used + 1) * 2 * (size_t)hp->n_ff_exp + hp->n_expert_used * E;
    size_t head = n * (E + hc * E + hc);
    size_t sub = attn > moe ? attn : moe;
    if (head > sub) sub = head;
    return fwd + sub + 64 * 32; /* alignment slack for every get */
}

static int reserve(ds4_workspace *ws, size_t floats, ds4_error *err) {
    if (ws->arena.cap >= floats) return 0;
    free(ws->arena.buf);
    ws->arena.buf = aligned_alloc(64, ((floats * sizeof(float)) + 63) & ~(size_t)63);
    ws->arena.cap = ws->arena.buf ? floats : 0;
    if (!ws->arena.buf) return ds4_fail(err, "out of memory reserving %zu floats of workspace", floats);
    return 0;
}

int ds4_forward(const ds4_net *net, ds4_state *st, ds4_workspace *ws, bool official, const int32_t *tokens, uint32_t n,
                float *logits, bool all_logits, ds4_error *err) {
    const ds4_hparams *hp = net->hp;
    const ds4_weights *w = net->w;
    if (n == 0) return 0;
    if ((uint64_t)st->pos + n > st->max_ctx)
        return ds4_fail(err, "context full: %u tokens held, %u more would exceed the session's %u", st->pos, n, st->max_ctx);
    for (uint32_t t = 0; t < n; t++)
        if (tokens[t] < 0 || (uint32_t)tokens[t] >= hp->n_vocab)
            return ds4_fail(err, "token id %d at input position %u is outside the vocabulary (0..%u)", tokens[t], t,
                            hp->n_vocab - 1);
    if (reserve(ws, arena_need(hp, n), err)) return -1;
    ds4_arena *ar = &ws->arena;
    ar->used = 0;
    size_t E = hp->n_embd, hc = hp->hc;
    float *X = ds4_arena_get(ar, n * hc * E);
    float *y = ds4_arena_get(ar, n * E);
    float *xn = ds4_arena_get(ar, n * E);
    float *o = ds4_arena_get(ar, n * E);
    float *post = ds4_arena_get(ar, n * hc);
    float *comb = ds4_arena_get(ar, n * hc * hc);
    float *scratch = ds4_arena_get(ar, n * (hc * E + (2 + hc) * hc));
    size_t mark = ar->used;

    for (uint32_t t = 0; t < n; t++) {
        float *xt = X + t * hc * E;
        ds4_tensor_row_f32(&w->tok_embd, (uint64_t)tokens[t], xt);
        for (size_t i = 1; i < hc; i++) memcpy(xt + i * E, xt, E * sizeof(float));
    }
    uint64_t pos0 = st->pos;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const ds4_layer_weights *lw = &w->layers[il];
        ds4_mhc_pre(net, &lw->hc_attn, X, n, y, post, comb, scratch);
        for (uint32_t t = 0; t < n; t++)
            ds4_rmsnorm(xn + t * E, y + t * E, (const float *)lw->attn_norm.data, (uint32_t)E, hp->rms_eps);
        ar->used = mark;
        if (ds4_attention(net, st, il, official, xn, n, pos0, o, ar, err)) return ds4_fail_prefix(err, "layer %u attention", il);
        ds4_mhc_post(net, X, o, post, comb, n);

        ds4_mhc_pre(net, &lw->hc_ffn, X, n, y, post, comb, scratch);
        for (uint32_t t = 0; t < n; t++)
            ds4_rmsnorm(xn + t * E, y + t * E, (const float *)lw->ffn_norm.data, (uint32_t)E, hp->rms_eps);
        ar->used = mark;
        if (ds4_moe(net, il, xn, tokens, n, o, ar, err)) return ds4_fail_prefix(err, "layer %u MoE", il);
        ds4_mhc_post(net, X, o, post, comb, n);
    }
    st->pos += n;

    /* Head: only the positions whose logits are wanted. */
    uint32_t first = all_logits ? 0 : n - 1, m = n - first;
    ds4_mhc_head(net, &w->hc_head, X + first * hc * E, m, y, scratch);
    for (uint32_t t = 0; t < m; t++)
        ds4_rmsnorm(y + t * E, y + t * E, (const float *)w->output_norm.data, (uint32_t)E, hp->rms_eps);
    ds4_linear(net->pool, &w->output, y, m, logits);
    return 0;
}
