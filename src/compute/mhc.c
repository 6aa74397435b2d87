#include "compute/mhc.h"

#include <math.h>
#include <string.h>

#include "compute/linear.h"

/* m = fn . rmsnorm(flatten(X)) for every token: n_mix numbers each. */
static void mix_logits(const ds4_net *net, const ds4_hc_weights *w, const float *X, uint32_t n_tok, float *mix,
                       float *flat) {
    const ds4_hparams *hp = net->hp;
    uint32_t n = hp->hc * hp->n_embd;
    for (uint32_t t = 0; t < n_tok; t++) ds4_rmsnorm(flat + (size_t)t * n, X + (size_t)t * n, NULL, n, hp->rms_eps);
    ds4_linear(net->pool, &w->fn, flat, n_tok, mix);
}

static void collapse(const float *X, const float *pre, uint32_t hc, uint32_t E, float *y) {
    memset(y, 0, E * sizeof(float));
    for (uint32_t i = 0; i < hc; i++) ds4_axpy(y, pre[i], X + (size_t)i * E, E);
}

void ds4_mhc_pre(const ds4_net *net, const ds4_hc_weights *w, const float *X, uint32_t n_tok, float *y, float *post,
                 float *comb, float *scratch) {
    const ds4_hparams *hp = net->hp;
    uint32_t hc = hp->hc, E = hp->n_embd, n_mix = (2 + hc) * hc;
    float *mix = scratch, *flat = scratch + (size_t)n_tok * n_mix;
    mix_logits(net, w, X, n_tok, mix, flat);
    const float *base = (const float *)w->base.data, *scale = (const float *)w->scale.data;
    float eps = hp->hc_eps;
    for (uint32_t t = 0; t < n_tok; t++) {
        const float *m = mix + (size_t)t * n_mix;
        float pre[16];
        for (uint32_t i = 0; i < hc; i++) {
            pre[i] = ds4_sigmoid(m[i] * scale[0] + base[i]) + eps;
            post[(size_t)t * hc + i] = 2.0f * ds4_sigmoid(m[hc + i] * scale[1] + base[hc + i]);
        }
        /* Sinkhorn-Knopp: row softmax (+eps), a column normalisation, then
         * (row, column) normalisations for the remaining iterations. */
        float *c = comb + (size_t)t * hc * hc;
        for (uint32_t i = 0; i < hc; i++) {
            float *row = c + i * hc, mx = -INFINITY, sum = 0;
            for (uint32_t j = 0; j < hc; j++) {
                row[j] = m[2 * hc + i * hc + j] * scale[2] + base[2 * hc + i * hc + j];
                if (row[j] > mx) mx = row[j];
            }
            for (uint32_t j = 0; j < hc; j++) sum += (row[j] = expf(row[j] - mx));
            for (uint32_t j = 0; j < hc; j++) row[j] = row[j] / sum + eps;
        }
        for (uint32_t it = 0; it < hp->sinkhorn_iters; it++) {
            if (it > 0)
                for (uint32_t i = 0; i < hc; i++) {
                    float s = 0;
                    for (uint32_t j = 0; j < hc; j++) s += c[i * hc + j];
                    for (uint32_t j = 0; j < hc; j++) c[i * hc + j] /= s + eps;
                }
            for (uint32_t j = 0; j < hc; j++) {
                float s = 0;
                for (uint32_t i = 0; i < hc; i++) s += c[i * hc + j];
                for (uint32_t i = 0; i < hc; i++) c[i * hc + j] /= s + eps;
            }
        }
        collapse(X + (size_t)t * hc * E, pre, hc, E, y + (size_t)t * E);
    }
}

void ds4_mhc_post(const ds4_net *net, float *X, const float *o, const float *post, const float *comb, uint32_t n_tok) {
    uint32_t hc = net->hp->hc, E = net->hp->n_embd;
    for (uint32_t t = 0; t < n_tok; t++) {
        float *Xt = X + (size_t)t * hc * E;
        const float *c = comb + (size_t)t * hc * hc, *p = post + (size_t)t * hc, *ot = o + (size_t)t * E;
        /* Mix per channel so the old streams are read before being replaced. */
        for (uint32_t d = 0; d < E; d++) {
            float in[16], out[16];
            for (uint32_t i = 0; i < hc; i++) in[i] = Xt[(size_t)i * E + d];
            for (uint32_t j = 0; j < hc; j++) {
                float s = p[j] * ot[d];
                for (uint32_t i = 0; i < hc; i++) s += c[i * hc + j] * in[i];
                out[j] = s;
            }
            for (uint32_t j = 0; j < hc; j++) Xt[(size_t)j * E + d] = out[j];
        }
    }
}

void ds4_mhc_head(const ds4_net *net, const ds4_hc_weights *w, const float *X, uint32_t n_tok, float *y, float *scratch) {
    const ds4_hparams *hp = net->hp;
    uint32_t hc = hp->hc, E = hp->n_embd;
    float *mix = scratch, *flat = scratch + (size_t)n_tok * hc;
    mix_logits(net, w, X, n_tok, mix, flat);
    const float *base = (const float *)w->base.data, *scale = (const float *)w->scale.data;
    for (uint32_t t = 0; t < n_tok; t++) {
        float pre[16];
        for (uint32_t i = 0; i < hc; i++) pre[i] = ds4_sigmoid(mix[(size_t)t * hc + i] * scale[0] + base[i]) + hp->hc_eps;
        collapse(X + (size_t)t * hc * E, pre, hc, E, y + (size_t)t * E);
    }
}
