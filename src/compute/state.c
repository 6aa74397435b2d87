#include "compute/state.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int comp_init(ds4_comp_state *c, uint32_t ratio, uint32_t width, uint32_t max_ctx, ds4_error *err) {
    c->ratio = ratio;
    c->width = width;
    c->halves = ratio == 4 ? 2 : 1;
    c->n_slots = ratio == 4 ? 2 * ratio : ratio;
    size_t n = (size_t)c->n_slots * c->halves * width;
    c->k = malloc(n * sizeof(float));
    c->z = malloc(n * sizeof(float));
    /* Compressed rows grow with the context; start small, double on demand
     * up to max_ctx / ratio rows. */
    c->cap_rows = max_ctx / ratio < 64 ? max_ctx / ratio + 1 : 64;
    c->rows = malloc(c->cap_rows * width * sizeof(float));
    if (!c->k || !c->z || !c->rows) return ds4_fail(err, "out of memory allocating compressor state");
    return 0;
}

static void comp_reset(ds4_comp_state *c) {
    if (!c->k) return;
    size_t n = (size_t)c->n_slots * c->halves * c->width;
    /* Empty previous window: zero values with -inf scores weigh nothing. */
    for (size_t i = 0; i < n; i++) {
        c->k[i] = 0.0f;
        c->z[i] = -INFINITY;
    }
    c->n_rows = 0;
}

static void comp_free(ds4_comp_state *c) {
    free(c->k);
    free(c->z);
    free(c->rows);
}

int ds4_state_init(ds4_state *s, const ds4_hparams *hp, uint32_t max_ctx, ds4_error *err) {
    memset(s, 0, sizeof *s);
    s->max_ctx = max_ctx;
    s->n_layer = hp->n_layer;
    s->window = hp->window;
    s->head_dim = hp->head_dim;
    s->layers = calloc(hp->n_layer, sizeof *s->layers);
    if (!s->layers) return ds4_fail(err, "out of memory allocating decode state");
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        ds4_layer_state *l = &s->layers[il];
        l->win = calloc((size_t)hp->window * hp->head_dim, sizeof(float));
        if (!l->win) return ds4_fail(err, "out of memory allocating the KV window");
        uint32_t r = hp->compress_ratio[il];
        if (r && comp_init(&l->comp, r, hp->head_dim, max_ctx, err)) return -1;
        if (r == 4 && comp_init(&l->idx, r, hp->idx_head_dim, max_ctx, err)) return -1;
    }
    ds4_state_reset(s);
    return 0;
}

void ds4_state_reset(ds4_state *s) {
    s->pos = 0;
    for (uint32_t il = 0; il < s->n_layer; il++) {
        comp_reset(&s->layers[il].comp);
        comp_reset(&s->layers[il].idx);
    }
}

void ds4_state_free(ds4_state *s) {
    if (!s->layers) return;
    for (uint32_t il = 0; il < s->n_layer; il++) {
        free(s->layers[il].win);
        comp_free(&s->layers[il].comp);
        comp_free(&s->layers[il].idx);
    }
    free(s->layers);
    s->layers = NULL;
}

uint64_t ds4_state_bytes(const ds4_state *s) {
    uint64_t b = 0;
    for (uint32_t il = 0; il < s->n_layer; il++) {
        const ds4_layer_state *l = &s->layers[il];
        b += (uint64_t)s->window * s->head_dim * 4;
        b += (uint64_t)l->comp.n_rows * l->comp.width * 4 + (uint64_t)l->idx.n_rows * l->idx.width * 4;
    }
    return b;
}

static int comp_copy(ds4_comp_state *d, const ds4_comp_state *s, ds4_error *err) {
    if (!s->k) return 0;
    size_t n = (size_t)s->n_slots * s->halves * s->width;
    memcpy(d->k, s->k, n * sizeof(float));
    memcpy(d->z, s->z, n * sizeof(float));
    if (d->cap_rows < s->n_rows) {
        float *rows = realloc(d->rows, s->n_rows * s->width * sizeof(float));
        if (!rows) return ds4_fail(err, "out of memory copying %llu compressed rows", (unsigned long long)s->n_rows);
        d->rows = rows;
        d->cap_rows = s->n_rows;
    }
    memcpy(d->rows, s->rows, s->n_rows * s->width * sizeof(float));
    d->n_rows = s->n_rows;
    return 0;
}

int ds4_state_copy(ds4_state *dst, const ds4_state *src, ds4_error *err) {
    if (dst->n_layer != src->n_layer || dst->window != src->window || dst->head_dim != src->head_dim)
        return ds4_fail(err, "state copy between different models");
    if (src->pos > dst->max_ctx)
        return ds4_fail(err, "state of %u tokens does not fit a session of %u", src->pos, dst->max_ctx);
    for (uint32_t il = 0; il < src->n_layer; il++) {
        memcpy(dst->layers[il].win, src->layers[il].win, (size_t)src->window * src->head_dim * sizeof(float));
        if (comp_copy(&dst->layers[il].comp, &src->layers[il].comp, err)) return -1;
        if (comp_copy(&dst->layers[il].idx, &src->layers[il].idx, err)) return -1;
    }
    dst->pos = src->pos;
    return 0;
}
