/* Attention sub-layer: low-rank Q with per-head norm, the shared K=V head,
 * tail RoPE, the raw sliding window, compressed rows (all of them for HCA
 * layers, the indexer's top-k for CSA layers), attention sinks, inverse RoPE
 * on the output and the grouped output projection (spec/MODEL.md §3.5). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compute/compressor.h"
#include "compute/layers.h"
#include "compute/linear.h"
#include "compute/topk.h"
#include "formats/quant.h"

/* Official numerics: FP8 simulation on the non-RoPE dims of every KV row. */
static void kv_qat(float *row, uint32_t hd, uint32_t n_rot) { ds4_fp8_sim(row, hd - n_rot, 64); }

/* Normalises, rotates and (officially) quantises a freshly pooled row, then
 * stores it. `indexer` selects the indexer-key treatment. */
static int finish_row(const ds4_net *net, ds4_comp_state *c, const ds4_compressor_weights *cw, float *row, uint64_t wpos,
                      bool official, bool indexer, ds4_error *err) {
    const ds4_hparams *hp = net->hp;
    float cs[128], sn[128];
    ds4_rmsnorm(row, row, (const float *)cw->norm.data, c->width, hp->rms_eps);
    const ds4_rope *rope = ds4_net_rope(net, official, true);
    ds4_rope_angles(rope, wpos, cs, sn);
    ds4_rope_apply(row, c->width, rope->n_pairs, cs, sn, 0);
    if (official) {
        if (indexer) {
            ds4_hadamard(row, c->width);
            ds4_fp4_sim(row, c->width, 32);
        } else {
            kv_qat(row, c->width, hp->n_rot);
        }
    }
    return ds4_comp_append(c, row, err);
}

typedef struct {
    const ds4_hparams *hp;
    const float *keys, *q, *wts;
    float *out;
    ds4_dot_f32_fn dot;
} score_job;

static void score_keys(void *ctx, uint64_t w0, uint64_t w1, int thread) {
    (void)thread;
    const score_job *j = ctx;
    uint32_t d = j->hp->idx_head_dim;
    float scale = 1.0f / sqrtf((float)d);
    for (uint64_t w = w0; w < w1; w++) {
        const float *k = j->keys + w * d;
        float s = 0;
        for (uint32_t h = 0; h < j->hp->idx_n_head; h++) {
            float dot = j->dot(d, k, j->q + (size_t)h * d);
            if (dot > 0) s += dot * scale * j->wts[h];
        }
        j->out[w] = s;
    }
}

/* Indexer selection for a query: the top-k visible compressed entries by
 * sum_h w_h * relu(q_h . K_w); ties keep the lower index. Scores are
 * computed in parallel over the entries. */
static uint32_t indexer_select(ds4_pool *pool, const ds4_hparams *hp, const ds4_comp_state *keys, uint32_t n_vis,
                               const float *q, const float *wts, uint32_t *sel, float *scores, ds4_scored *tmp) {
    if (n_vis <= hp->idx_topk) {
        for (uint32_t i = 0; i < n_vis; i++) sel[i] = i;
        return n_vis;
    }
    score_job j = {hp, keys->rows, q, wts, scores, ds4_dot_f32_get(GGML_TYPE_F32)};
    ds4_pool_run(pool, n_vis, 256, score_keys, &j);
    return ds4_topk_indices(scores, n_vis, hp->idx_topk, sel, tmp);
}

/* One query token against its candidates, all heads. */
typedef struct {
    const ds4_hparams *hp;
    const float *q;      /* H x hd */
    const float *sinks;  /* H */
    const float **rows;  /* candidate K=V rows */
    ds4_dot_f32_fn dot;
    uint32_t n_rows;
    float *out;          /* H x hd */
    float *scores;       /* n_threads x n_rows */
} attn_job;

static void attn_heads(void *ctx, uint64_t h0, uint64_t h1, int thread) {
    attn_job *j = ctx;
    uint32_t hd = j->hp->head_dim;
    float *sc = j->scores + (size_t)thread * j->n_rows;
    float scale = 1.0f / sqrtf((float)hd);
    for (uint64_t h = h0; h < h1; h++) {
        const float *q = j->q + h * hd;
        float m = j->sinks[h];
        for (uint32_t i = 0; i < j->n_rows; i++) {
            sc[i] = j->dot(hd, j->rows[i], q) * scale;
            if (sc[i] > m) m = sc[i];
        }
        float den = expf(j->sinks[h] - m);
        for (uint32_t i = 0; i < j->n_rows; i++) den += (sc[i] = expf(sc[i] - m));
        float *o = j->out + h * hd;
        memset(o, 0, hd * sizeof(float));
        for (uint32_t i = 0; i < j->n_rows; i++) ds4_axpy(o, sc[i] / den, j->rows[i], hd);
    }
}

int ds4_attention(const ds4_net *net, ds4_state *st, uint32_t il, bool official, const float *x, uint32_t n,
                  uint64_t pos0, float *out, ds4_arena *ar, ds4_error *err) {
    const ds4_hparams *hp = net->hp;
    const ds4_layer_weights *lw = &net->w->layers[il];
    ds4_layer_state *ls = &st->layers[il];
    const ds4_rope *rope = ds4_net_layer_rope(net, official, il);
    const ds4_rope *crope = ds4_net_rope(net, official, true);
    uint32_t H = hp->n_head, hd = hp->head_dim, ratio = hp->compress_ratio[il];
    uint32_t np = rope->n_pairs;
    size_t qdim = (size_t)H * hd;

    /* Batched projections for the whole chunk. */
    float *qa = ds4_arena_get(ar, (size_t)n * hp->q_lora);
    float *q = ds4_arena_get(ar, (size_t)n * qdim);
    float *kv = ds4_arena_get(ar, (size_t)n * hd);
    float *att = ds4_arena_get(ar, (size_t)n * qdim);
    float *low = ds4_arena_get(ar, (size_t)n * hp->o_groups * hp->o_lora);
    float *cs = ds4_arena_get(ar, (size_t)n * 2 * np);
    if (!qa || !q || !kv || !att || !low || !cs) return ds4_fail(err, "attention workspace too small");
    /* Compressor and indexer buffers. */
    float *ck = NULL, *cz = NULL, *ik = NULL, *iz = NULL, *iq = NULL, *iw = NULL, *pooled = NULL;
    uint32_t cw = 0, iwd = 0;
    if (ratio) {
        cw = ls->comp.halves * hd;
        ck = ds4_arena_get(ar, (size_t)n * cw);
        cz = ds4_arena_get(ar, (size_t)n * cw);
        pooled = ds4_arena_get(ar, hd > hp->idx_head_dim ? hd : hp->idx_head_dim);
        if (!ck || !cz || !pooled) return ds4_fail(err, "attention workspace too small");
    }
    if (ratio == 4) {
        uint32_t d = hp->idx_head_dim, IH = hp->idx_n_head;
        iwd = 2 * d;
        ik = ds4_arena_get(ar, (size_t)n * iwd);
        iz = ds4_arena_get(ar, (size_t)n * iwd);
        iq = ds4_arena_get(ar, (size_t)n * IH * d);
        iw = ds4_arena_get(ar, (size_t)n * IH);
        if (!ik || !iz || !iq || !iw) return ds4_fail(err, "attention workspace too small");
    }

    /* Every projection of x in one parallel pass (one wait instead of up
     * to seven), then those of the normalised q_a. */
    ds4_linear_seg xs[7];
    uint32_t nx = 0;
#define XSEG(T, Y) xs[nx++] = (ds4_linear_seg){&(T), 0, (T).ne[1], x, (T).ne[0], n, (Y), (T).ne[1]}
    XSEG(lw->q_a, qa);
    XSEG(lw->kv, kv);
    if (ratio) {
        XSEG(lw->comp.kv, ck);
        XSEG(lw->comp.gate, cz);
    }
    if (ratio == 4) {
        XSEG(lw->idx_comp.kv, ik);
        XSEG(lw->idx_comp.gate, iz);
        XSEG(lw->idx_proj, iw);
    }
    ds4_linear_multi(net->pool, xs, nx);
    for (uint32_t t = 0; t < n; t++)
        ds4_rmsnorm(qa + (size_t)t * hp->q_lora, qa + (size_t)t * hp->q_lora, (const float *)lw->q_a_norm.data, hp->q_lora,
                    hp->rms_eps);
    nx = 0;
    xs[nx++] = (ds4_linear_seg){&lw->q_b, 0, lw->q_b.ne[1], qa, lw->q_b.ne[0], n, q, lw->q_b.ne[1]};
    if (ratio == 4) xs[nx++] = (ds4_linear_seg){&lw->idx_q_b, 0, lw->idx_q_b.ne[1], qa, lw->idx_q_b.ne[0], n, iq, lw->idx_q_b.ne[1]};
#undef XSEG
    ds4_linear_multi(net->pool, xs, nx);
    for (uint32_t t = 0; t < n; t++) {
        float *c = cs + (size_t)t * 2 * np;
        ds4_rope_angles(rope, pos0 + t, c, c + np);
        for (uint32_t h = 0; h < H; h++) {
            float *qh = q + (size_t)t * qdim + (size_t)h * hd;
            ds4_rmsnorm(qh, qh, NULL, hd, hp->rms_eps);
            ds4_rope_apply(qh, hd, np, c, c + np, 0);
        }
        float *k = kv + (size_t)t * hd;
        ds4_rmsnorm(k, k, (const float *)lw->kv_norm.data, hd, hp->rms_eps);
        ds4_rope_apply(k, hd, np, c, c + np, 0);
        if (official) kv_qat(k, hd, hp->n_rot);
    }
    if (ratio == 4) {
        uint32_t d = hp->idx_head_dim, IH = hp->idx_n_head;
        float wscale = 1.0f / sqrtf((float)IH);
        for (uint32_t t = 0; t < n; t++) {
            float c[256];
            ds4_rope_angles(crope, pos0 + t, c, c + crope->n_pairs);
            for (uint32_t h = 0; h < IH; h++) {
                float *qh = iq + ((size_t)t * IH + h) * d;
                ds4_rope_apply(qh, d, crope->n_pairs, c, c + crope->n_pairs, 0);
                if (official) {
                    ds4_hadamard(qh, d);
                    ds4_fp4_sim(qh, d, 32);
                }
            }
            for (uint32_t h = 0; h < IH; h++) iw[(size_t)t * IH + h] *= wscale;
        }
    }

    /* Token by token: update the state, then attend. */
    int n_threads = ds4_pool_size(net->pool);
    uint64_t max_rows = hp->window + (ratio ? ls->comp.n_rows + n / ratio + 1 : 0);
    const float **rows = malloc(max_rows * sizeof *rows);
    float *scores = malloc((size_t)n_threads * max_rows * sizeof(float));
    uint32_t *sel = NULL;
    ds4_scored *tmp = NULL;
    float *iscores = NULL;
    if (ratio == 4) {
        uint64_t max_keys = ls->idx.n_rows + n / 4 + 1;
        sel = malloc(max_keys * sizeof *sel);
        tmp = malloc(max_keys * sizeof *tmp);
        iscores = malloc(max_keys * sizeof *iscores);
    }
    int rc = 0;
    if (!rows || !scores || (ratio == 4 && (!sel || !tmp || !iscores))) {
        rc = ds4_fail(err, "out of memory for attention candidates");
        goto done;
    }
    for (uint32_t t = 0; t < n && rc == 0; t++) {
        uint64_t p = pos0 + t;
        memcpy(ls->win + (p % hp->window) * hd, kv + (size_t)t * hd, hd * sizeof(float));
        if (ratio && ds4_comp_push(&ls->comp, &lw->comp.ape, p, ck + (size_t)t * cw, cz + (size_t)t * cw, pooled))
            rc = finish_row(net, &ls->comp, &lw->comp, pooled, p + 1 - ratio, official, false, err);
        if (rc == 0 && ratio == 4 &&
            ds4_comp_push(&ls->idx, &lw->idx_comp.ape, p, ik + (size_t)t * iwd, iz + (size_t)t * iwd, pooled))
            rc = finish_row(net, &ls->idx, &lw->idx_comp, pooled, p + 1 - ratio, official, true, err);
        if (rc) break;

        uint32_t n_rows = 0;
        uint64_t first = p + 1 > hp->window ? p + 1 - hp->window : 0;
        for (uint64_t r = first; r <= p; r++) rows[n_rows++] = ls->win + (r % hp->window) * hd;
        if (ratio) {
            uint32_t n_vis = (uint32_t)((p + 1) / ratio);
            if (ratio == 4) {
                uint32_t IH = hp->idx_n_head;
                uint32_t k = indexer_select(net->pool, hp, &ls->idx, n_vis, iq + (size_t)t * IH * hp->idx_head_dim, iw + (size_t)t * IH,
                                            sel, iscores, tmp);
                for (uint32_t i = 0; i < k; i++) rows[n_rows++] = ls->comp.rows + (size_t)sel[i] * hd;
            } else {
                for (uint32_t i = 0; i < n_vis; i++) rows[n_rows++] = ls->comp.rows + (size_t)i * hd;
            }
        }
        attn_job job = {hp,     q + (size_t)t * qdim,   (const float *)lw->sinks.data, rows, ds4_dot_f32_get(GGML_TYPE_F32),
                        n_rows, att + (size_t)t * qdim, scores};
        ds4_pool_run(net->pool, H, 1, attn_heads, &job);
        const float *c = cs + (size_t)t * 2 * np;
        for (uint32_t h = 0; h < H; h++) ds4_rope_apply(att + (size_t)t * qdim + (size_t)h * hd, hd, np, c, c + np, 1);
    }
    if (rc) goto done;

    /* Grouped output projection: group g's heads go through rows
     * [g*o_lora, (g+1)*o_lora) of out_a, then out_b mixes all groups. */
    uint64_t gin = qdim / hp->o_groups, glow = (uint64_t)hp->o_groups * hp->o_lora;
    ds4_linear_seg og[DS4_LINEAR_MAX_SEGS];
    for (uint32_t g0 = 0; g0 < hp->o_groups; g0 += DS4_LINEAR_MAX_SEGS) {
        uint32_t ng = hp->o_groups - g0 < DS4_LINEAR_MAX_SEGS ? hp->o_groups - g0 : DS4_LINEAR_MAX_SEGS;
        for (uint32_t g = g0; g < g0 + ng; g++)
            og[g - g0] = (ds4_linear_seg){&lw->out_a, (uint64_t)g * hp->o_lora, hp->o_lora, att + g * gin, qdim, n,
                                          low + (size_t)g * hp->o_lora, glow};
        ds4_linear_multi(net->pool, og, ng);
    }
    ds4_linear(net->pool, &lw->out_b, low, n, out);
done:
    free(rows);
    free(scores);
    free(sel);
    free(tmp);
    free(iscores);
    return rc;
}
