/* Shared by the sidecar-backed expert sources (resident and slot bank):
 * views of one expert's families and the reader set-up. Private to
 * src/experts/. */
#ifndef DS4_EXPERTS_SIDECAR_SOURCE_H
#define DS4_EXPERTS_SIDECAR_SOURCE_H

#include <stdio.h>

#include "experts/expert_io.h"
#include "experts/experts.h"
#include "formats/sidecar.h"

#define DS4_DEFAULT_QUEUE_DEPTH 64

/* A [in, out] matrix view of one family of one expert at `data`. */
static inline ds4_tensor ds4_sidecar_family_view(const ds4_sidecar_family *fam, int f, const uint8_t *data) {
    ds4_tensor t = {0};
    t.name = ds4_sidecar_family_name[f];
    t.type = fam->type;
    t.ne[0] = fam->shape[0];
    t.ne[1] = fam->shape[1];
    t.ne[2] = t.ne[3] = 1;
    t.data = data;
    t.row_bytes = fam->row_bytes;
    return t;
}

/* Views of an expert held as one in-memory record (sidecar.h mem_off). */
static inline void ds4_sidecar_record_views(const ds4_sidecar_layer *L, const uint8_t *rec, ds4_expert_view *v) {
    v->gate = ds4_sidecar_family_view(&L->fam[DS4_FAM_GATE], DS4_FAM_GATE, rec + L->fam[DS4_FAM_GATE].mem_off);
    v->up = ds4_sidecar_family_view(&L->fam[DS4_FAM_UP], DS4_FAM_UP, rec + L->fam[DS4_FAM_UP].mem_off);
    v->down = ds4_sidecar_family_view(&L->fam[DS4_FAM_DOWN], DS4_FAM_DOWN, rec + L->fam[DS4_FAM_DOWN].mem_off);
}

/* Opens a reader over all the layer files of sc (file index = layer). */
static inline ds4_expert_io *ds4_sidecar_open_io(const ds4_sidecar *sc, const ds4_sidecar_source_opts *o,
                                                 ds4_io_done_fn done, void *ctx, ds4_error *err) {
    const char **paths = malloc(sc->geom.n_layer * sizeof *paths);
    if (!paths) {
        ds4_fail(err, "out of memory opening %s", sc->dir);
        return NULL;
    }
    for (uint32_t il = 0; il < sc->geom.n_layer; il++) paths[il] = sc->layers[il].path;
    ds4_expert_io *io = ds4_expert_io_open(paths, sc->geom.n_layer, o->direct,
                                           o->queue_depth ? o->queue_depth : DS4_DEFAULT_QUEUE_DEPTH, done, ctx, err);
    free(paths);
    return io;
}

/* "io_uring (queue depth 64), O_DIRECT" and the like. */
static inline void ds4_sidecar_describe_io(const ds4_sidecar *sc, const ds4_expert_io *io, bool want_direct, char *buf,
                                           size_t cap) {
    uint32_t direct = 0;
    for (uint32_t il = 0; il < sc->geom.n_layer; il++) direct += ds4_expert_io_direct(io, il);
    const char *mode = !want_direct                    ? "buffered"
                       : direct == sc->geom.n_layer     ? "O_DIRECT"
                       : direct == 0                    ? "buffered (O_DIRECT unsupported here)"
                                                        : "O_DIRECT where supported";
    snprintf(buf, cap, "%s, %s", ds4_expert_io_engine(io), mode);
}

#endif
