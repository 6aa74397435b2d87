/* Resident sidecar (spec §3.1): every layer file's expert bytes read into
 * RAM once at load, so decode never touches the SSD. A layer's buffer is
 * a copy of its file's expert region: for expert-major layers the records
 * as they lie (expert e at e × stride), for family-major layers the three
 * family runs one after another. Loading queues large aligned chunks of
 * all layers at once so the SSD works at full queue depth. */
#include <stdlib.h>
#include <string.h>

#include "experts/sidecar_source.h"
#include "util/bankmem.h"
#include "util/progress.h"

#define CHUNK_BYTES (16u << 20)

typedef struct {
    ds4_expert_source base;
    const ds4_sidecar *sc;
    uint8_t **buf;       /* per layer */
    uint64_t *buf_bytes; /* per layer */
    uint64_t (*base_off)[DS4_FAM_COUNT]; /* per layer: where each family's expert 0 is in buf */
    uint64_t (*step)[DS4_FAM_COUNT];     /* per layer: bytes from one expert to the next */
    ds4_io_stats io; /* of the load */
    uint64_t acquires, hits;
    char describe[256];
    int failed;
    ds4_error err;
} resident_source;

static int resident_acquire(ds4_expert_source *s, uint32_t il, const uint32_t *ids, uint32_t n, ds4_expert_view *views,
                            ds4_error *err) {
    resident_source *r = (resident_source *)s;
    const ds4_sidecar *sc = r->sc;
    if (il >= sc->geom.n_layer) return ds4_fail(err, "expert source: layer %u out of range", il);
    const ds4_sidecar_layer *L = &sc->layers[il];
    r->acquires++;
    r->hits += n; /* everything is in RAM */
    for (uint32_t i = 0; i < n; i++) {
        if (ids[i] >= sc->geom.n_expert) return ds4_fail(err, "expert source: expert %u out of range", ids[i]);
        ds4_tensor *t[DS4_FAM_COUNT] = {&views[i].gate, &views[i].up, &views[i].down};
        for (int f = 0; f < DS4_FAM_COUNT; f++)
            *t[f] = ds4_sidecar_family_view(&L->fam[f], f, r->buf[il] + r->base_off[il][f] + (uint64_t)ids[i] * r->step[il][f]);
    }
    return 0;
}

static uint32_t resident_capacity(const ds4_expert_source *s) { return ((const resident_source *)s)->sc->geom.n_expert; }

static void resident_stats(const ds4_expert_source *s, ds4_expert_stats *out) {
    const resident_source *r = (const resident_source *)s;
    out->acquires = r->acquires;
    out->hits = r->hits;
    out->reads = r->io.requests;
    out->bytes_read = r->io.bytes;
    out->retries = r->io.retries;
    out->direct = r->io.direct;
    out->buffered = r->io.buffered;
    out->io_busy_s = r->io.busy_s;
}

static const char *resident_describe(const ds4_expert_source *s) { return ((const resident_source *)s)->describe; }

static void resident_free(ds4_expert_source *s) {
    resident_source *r = (resident_source *)s;
    if (r->buf)
        for (uint32_t il = 0; il < r->sc->geom.n_layer; il++) ds4_bank_free(r->buf[il], r->buf_bytes[il]);
    free(r->buf);
    free(r->buf_bytes);
    free(r->base_off);
    free(r->step);
    free(r);
}

static void on_read(void *ctx, uint64_t tag, const ds4_error *err) {
    (void)tag;
    resident_source *r = ctx;
    if (err && !r->failed) {
        r->failed = 1;
        r->err = *err;
    }
}

/* A layer's buffer a region */
static const void *resident_region(const ds4_expert_source *s, uint32_t i, uint64_t *bytes) {
    const resident_source *r = (const resident_source *)s;
    if (i >= r->sc->geom.n_layer) return NULL;
    *bytes = r->buf_bytes[i];
    return r->buf[i];
}

static const ds4_expert_source_ops k_resident_ops = {resident_acquire, NULL, resident_capacity, resident_free,
                                                     resident_stats,   resident_describe, NULL, NULL, NULL, NULL,
                                                     resident_region,  NULL, NULL, NULL};

/* Queues reads of file range [off, off + len) into dst in chunks. */
static int queue_range(ds4_expert_io *io, uint32_t il, uint64_t off, uint64_t len, uint8_t *dst, uint64_t cap,
                       ds4_error *err) {
    for (uint64_t done = 0; done < len; done += CHUNK_BYTES) {
        uint64_t n = len - done < CHUNK_BYTES ? len - done : CHUNK_BYTES;
        ds4_io_req q = {il, off + done, n, dst + done, cap - done, il};
        if (ds4_expert_io_submit(io, &q, err)) return -1;
    }
    return 0;
}

ds4_expert_source *ds4_experts_resident_new(const ds4_sidecar *sc, const ds4_sidecar_source_opts *o, ds4_error *err) {
    uint32_t NL = sc->geom.n_layer;
    uint64_t X = sc->geom.n_expert;
    resident_source *r = calloc(1, sizeof *r);
    if (!r) {
        ds4_fail(err, "out of memory loading the experts of %s", sc->dir);
        return NULL;
    }
    r->base.ops = &k_resident_ops;
    r->sc = sc;
    r->buf = calloc(NL, sizeof *r->buf);
    r->buf_bytes = calloc(NL, sizeof *r->buf_bytes);
    r->base_off = calloc(NL, sizeof *r->base_off);
    r->step = calloc(NL, sizeof *r->step);
    ds4_expert_io *io = NULL;
    if (!r->buf || !r->buf_bytes || !r->base_off || !r->step) goto oom;
    if (!(io = ds4_sidecar_open_io(sc, o, on_read, r, err))) goto fail;
    /* tens of GB at the full size: a progress line on a terminal (the
     * reads of a layer are queued once the earlier ones have drained) */
    bool show = ds4_show_progress(sc->expert_bytes);
    for (uint32_t il = 0; il < NL; il++) {
        if (show) fprintf(stderr, "\rds4: reading the experts into RAM: layer %u/%u", il + 1, NL);
        const ds4_sidecar_layer *L = &sc->layers[il];
        uint64_t total = 0;
        if (L->family_major) {
            for (int f = 0; f < DS4_FAM_COUNT; f++) {
                r->base_off[il][f] = total;
                r->step[il][f] = L->fam[f].bytes;
                total += L->fam[f].bytes * X;
            }
        } else {
            total = (X - 1) * L->stride + L->record_bytes;
            for (int f = 0; f < DS4_FAM_COUNT; f++) {
                r->base_off[il][f] = L->fam[f].offset;
                r->step[il][f] = L->stride;
            }
        }
        /* Rounded up so the final O_DIRECT chunk may read whole blocks. */
        uint64_t cap = (total + DS4_IO_ALIGN - 1) / DS4_IO_ALIGN * DS4_IO_ALIGN;
        r->buf[il] = ds4_bank_alloc(cap);
        r->buf_bytes[il] = cap;
        if (!r->buf[il]) {
            ds4_fail(err, "out of memory: %llu bytes for the experts of layer %u (%s)", (unsigned long long)cap, il, L->path);
            goto fail;
        }
        if (L->family_major) {
            /* Each run's reads stay inside the run: a block-rounded O_DIRECT
             * tail must not land on the next run while it is being read. */
            for (int f = 0; f < DS4_FAM_COUNT; f++) {
                uint64_t end = f + 1 < DS4_FAM_COUNT ? r->base_off[il][f + 1] : cap;
                if (queue_range(io, il, L->fam[f].offset, L->fam[f].bytes * X, r->buf[il] + r->base_off[il][f],
                                end - r->base_off[il][f], err))
                    goto fail;
            }
        } else if (queue_range(io, il, 0, total, r->buf[il], cap, err)) {
            goto fail;
        }
        ds4_expert_io_flush(io);
        if (r->failed) break;
    }
    while (ds4_expert_io_reap(io, true)) {
    }
    if (show) fputc('\n', stderr);
    if (r->failed) {
        *err = r->err;
        goto fail;
    }
    ds4_expert_io_get_stats(io, &r->io);
    char how[128];
    ds4_sidecar_describe_io(sc, io, o->direct, how, sizeof how);
    snprintf(r->describe, sizeof r->describe, "resident (all %llu experts per layer preloaded by %s)", (unsigned long long)X,
             how);
    ds4_expert_io_close(io);
    return &r->base;
oom:
    ds4_fail(err, "out of memory loading the experts of %s", sc->dir);
fail:
    ds4_expert_io_close(io);
    resident_free(&r->base);
    return NULL;
}
