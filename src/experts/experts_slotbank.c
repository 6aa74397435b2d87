/* Slot bank (spec §2.1–2.5): per layer, a bank of N buffers ("slots") each
 * holding one expert record, filled from the layer file on demand.
 *
 * Replacement is LRU on one global clock, per layer. An acquire resolves
 * all its experts before any byte moves: hits are pinned first, then each
 * miss takes a victim that is neither pinned by this acquire nor being
 * read, and only then are all the misses' reads submitted together, so the
 * SSD sees them at once. Prefetch hints start reads the same way without
 * waiting for them; they never evict a slot pinned by the latest acquire
 * (its views must stay valid until the next acquire) nor one holding an
 * expert of the same hint. Hints come in priority order (the caller sends
 * at most what one acquire would ask), and a hinted slot is stamped as
 * just used, so it is not the next victim.
 *
 * A failed read (after the reader's retries) leaves its slot empty and
 * makes the next acquire fail with the reader's message: numbers are never
 * computed from a slot whose bytes did not all arrive. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "experts/sidecar_source.h"
#include "util/bankmem.h"
#include "util/clock.h"

enum { SLOT_EMPTY, SLOT_LOADING, SLOT_READY };

typedef struct slot {
    int32_t expert;    /* -1: none */
    uint8_t state;
    bool prefetched;   /* loaded by a hint and not yet acquired */
    uint8_t pending;   /* reads of this slot in flight */
    bool read_failed;
    uint64_t age;      /* global clock at the last touch */
    uint64_t pin;      /* acquire stamp that pinned it */
    uint64_t hint;     /* prefetch stamp that chose it */
} slot;

typedef struct bank {
    uint8_t *mem;     /* n_slots × slot_bytes */
    uint64_t slot_bytes;
    slot *slots;
    int32_t *where;   /* expert -> slot, -1 when absent */
    uint8_t *elsewhere; /* expert -> held by a cache in front (held_elsewhere) */
} bank;

typedef struct {
    ds4_expert_source base;
    const ds4_sidecar *sc;
    ds4_expert_io *io;
    uint32_t n_slots;
    bool prefetch;
    bank *banks;
    uint64_t clock, stamp, hint_stamp;
    uint32_t last_layer; /* layer of the latest acquire: its pins protect views */
    uint32_t *last_ids;  /* the latest acquire's experts, for wait */
    uint32_t last_n;
    bool failed;
    ds4_error err;
    ds4_expert_stats st;
    char describe[256];
} slot_source;

static uint64_t make_tag(uint32_t il, uint32_t s) { return (uint64_t)il << 32 | s; }

static void on_read(void *ctx, uint64_t tag, const ds4_error *err) {
    slot_source *b = ctx;
    uint32_t il = (uint32_t)(tag >> 32), si = (uint32_t)tag;
    bank *bk = &b->banks[il];
    slot *s = &bk->slots[si];
    if (err) {
        s->read_failed = true;
        if (!b->failed) {
            b->failed = true;
            b->err = *err;
        }
    }
    if (--s->pending) return;
    if (s->read_failed) {
        /* Nothing of this slot may be used: forget the expert. */
        if (s->expert >= 0) bk->where[s->expert] = -1;
        s->expert = -1;
        s->state = SLOT_EMPTY;
        s->read_failed = false;
        s->prefetched = false;
    } else {
        s->state = SLOT_READY;
    }
}

/* Starts the reads that bring expert e of layer il into slot si. */
static int load_slot(slot_source *b, uint32_t il, uint32_t si, uint32_t e, ds4_error *err) {
    bank *bk = &b->banks[il];
    slot *s = &bk->slots[si];
    ds4_sidecar_read rd[DS4_FAM_COUNT];
    uint32_t n = ds4_sidecar_expert_reads(b->sc, il, e, rd);
    uint8_t *mem = bk->mem + (uint64_t)si * bk->slot_bytes;
    s->expert = (int32_t)e;
    s->state = SLOT_LOADING;
    s->pending = (uint8_t)n;
    s->read_failed = false;
    bk->where[e] = (int32_t)si;
    for (uint32_t i = 0; i < n; i++) {
        /* Each read owns the slot bytes up to the next read's: an O_DIRECT
         * read rounded up to whole blocks must not spill into a part that
         * another read is filling (family-major records are 3 reads). */
        uint64_t end = i + 1 < n ? rd[i + 1].mem_off : bk->slot_bytes;
        ds4_io_req q = {il, rd[i].file_off, rd[i].len, mem + rd[i].mem_off, end - rd[i].mem_off, make_tag(il, si)};
        if (ds4_expert_io_submit(b->io, &q, err)) return -1;
    }
    return 0;
}

/* Drops slot si's expert (the slot must not be loading). */
static void evict(slot_source *b, bank *bk, slot *s) {
    if (s->expert >= 0) {
        bk->where[s->expert] = -1;
        if (s->prefetched) b->st.prefetch_wasted++;
    }
    s->expert = -1;
    s->state = SLOT_EMPTY;
    s->prefetched = false;
}

/* The slot to reuse: an empty one, else the least recently used ready one
 * whose expert a cache in front holds, else the least recently used ready
 * one; never one pinned with `pin` or chosen by hint `hint`. Loading slots
 * are returned only when `wait_loading` and nothing else is free (the
 * caller waits for the read to land). -1 when there is none. */
static int pick_victim(const bank *bk, uint32_t n_slots, uint64_t pin, uint64_t hint, bool wait_loading) {
    int best = -1, held = -1, loading = -1;
    for (uint32_t i = 0; i < n_slots; i++) {
        const slot *s = &bk->slots[i];
        if ((pin && s->pin == pin) || (hint && s->hint == hint)) continue;
        if (s->state == SLOT_EMPTY) return (int)i;
        if (s->state == SLOT_LOADING) {
            if (loading < 0) loading = (int)i;
            continue;
        }
        if (best < 0 || s->age < bk->slots[best].age) best = (int)i;
        if (bk->elsewhere[s->expert] && (held < 0 || s->age < bk->slots[held].age)) held = (int)i;
    }
    if (held >= 0) return held;
    if (best >= 0) return best;
    return wait_loading ? loading : -1;
}

static int slot_acquire_start(ds4_expert_source *src, uint32_t il, const uint32_t *ids, uint32_t n, ds4_expert_view *views,
                        ds4_error *err) {
    slot_source *b = (slot_source *)src;
    const ds4_sidecar *sc = b->sc;
    if (il >= sc->geom.n_layer) return ds4_fail(err, "expert source: layer %u out of range", il);
    if (n > b->n_slots) return ds4_fail(err, "expert source: %u experts asked of a %u-slot bank", n, b->n_slots);
    for (uint32_t i = 0; i < n; i++)
        if (ids[i] >= sc->geom.n_expert) return ds4_fail(err, "expert source: expert %u out of range", ids[i]);
    bank *bk = &b->banks[il];
    uint64_t stamp = ++b->stamp;
    b->last_layer = il;
    b->st.acquires++;
    ds4_expert_io_reap(b->io, false); /* finished prefetches become hits */
    if (b->failed) goto failed;

    /* Pin what is there (ready or on its way) before choosing victims. */
    for (uint32_t i = 0; i < n; i++) {
        int32_t si = bk->where[ids[i]];
        if (si < 0) continue;
        slot *s = &bk->slots[si];
        if (s->pin == stamp) continue; /* duplicate id */
        s->pin = stamp;
        if (s->prefetched) {
            b->st.prefetch_used++;
            b->st.prefetch_late += s->state == SLOT_LOADING;
        } else if (s->state == SLOT_READY) {
            b->st.hits++;
        } else {
            b->st.misses++;
        }
        s->prefetched = false;
    }
    double t0 = ds4_now_s();
    for (uint32_t i = 0; i < n; i++) {
        if (bk->where[ids[i]] >= 0) continue;
        int v;
        while ((v = pick_victim(bk, b->n_slots, stamp, 0, true)) >= 0 && bk->slots[v].state == SLOT_LOADING)
            ds4_expert_io_reap(b->io, true); /* only prefetches in flight are left: let one land */
        if (b->failed) goto failed;
        if (v < 0) return ds4_fail(err, "expert source: no free slot in layer %u (bug)", il);
        slot *s = &bk->slots[v];
        evict(b, bk, s);
        s->pin = stamp;
        b->st.misses++;
        if (load_slot(b, il, (uint32_t)v, ids[i], err)) return -1;
    }
    ds4_expert_io_flush(b->io);
    b->st.stall_s += ds4_now_s() - t0; /* waiting for a slot to free up */
    if (b->failed) goto failed;
    /* Views point at the slots now; their bytes may still be arriving. */
    for (uint32_t i = 0; i < n; i++) {
        int32_t si = bk->where[ids[i]];
        if (si < 0) return ds4_fail(err, "expert source: layer %u expert %u has no slot (bug)", il, ids[i]);
        slot *s = &bk->slots[si];
        s->age = ++b->clock;
        ds4_sidecar_record_views(&sc->layers[il], bk->mem + (uint64_t)si * bk->slot_bytes, &views[i]);
        b->last_ids[i] = ids[i];
    }
    b->last_n = n;
    return 0;
failed:
    *err = b->err;
    return -1;
}

static int slot_wait(ds4_expert_source *src, uint32_t k, ds4_error *err) {
    slot_source *b = (slot_source *)src;
    if (k >= b->last_n) return ds4_fail(err, "expert source: wait for expert %u of a %u-expert acquire", k, b->last_n);
    bank *bk = &b->banks[b->last_layer];
    double t0 = ds4_now_s();
    int32_t si;
    /* A failed read empties its slot (where = -1) and sets failed. */
    while (!b->failed && (si = bk->where[b->last_ids[k]]) >= 0 && bk->slots[si].state == SLOT_LOADING)
        ds4_expert_io_reap(b->io, true);
    b->st.stall_s += ds4_now_s() - t0;
    if (b->failed) {
        *err = b->err;
        return -1;
    }
    si = bk->where[b->last_ids[k]];
    if (si < 0 || bk->slots[si].state != SLOT_READY)
        return ds4_fail(err, "expert source: layer %u expert %u did not load (bug)", b->last_layer, b->last_ids[k]);
    return 0;
}

static bool slot_ready(ds4_expert_source *src, uint32_t k) {
    slot_source *b = (slot_source *)src;
    if (k >= b->last_n) return true; /* wait reports the error */
    ds4_expert_io_reap(b->io, false);
    const bank *bk = &b->banks[b->last_layer];
    int32_t si = bk->where[b->last_ids[k]];
    return b->failed || si < 0 || bk->slots[si].state != SLOT_LOADING;
}

static int slot_acquire(ds4_expert_source *src, uint32_t il, const uint32_t *ids, uint32_t n, ds4_expert_view *views,
                        ds4_error *err) {
    if (slot_acquire_start(src, il, ids, n, views, err)) return -1;
    for (uint32_t k = 0; k < n; k++)
        if (slot_wait(src, k, err)) return -1;
    return 0;
}

static void slot_prefetch(ds4_expert_source *src, uint32_t il, const uint32_t *ids, uint32_t n) {
    slot_source *b = (slot_source *)src;
    if (il >= b->sc->geom.n_layer || b->failed) return;
    bank *bk = &b->banks[il];
    ds4_expert_io_reap(b->io, false);
    uint64_t hint = ++b->hint_stamp;
    /* Views of the latest acquire stay valid: its pins are off limits. */
    uint64_t pin = il == b->last_layer ? b->stamp : 0;
    uint32_t budget = b->n_slots;
    ds4_error err;
    /* First mark every hinted expert already there, so that placing an
     * earlier one cannot evict a later one of the same hint. */
    for (uint32_t i = 0; i < n; i++) {
        if (ids[i] >= b->sc->geom.n_expert) continue;
        int32_t si = bk->where[ids[i]];
        if (si < 0) continue;
        bk->slots[si].hint = hint;
        bk->slots[si].age = ++b->clock;
    }
    for (uint32_t i = 0; i < n && budget; i++) {
        if (ids[i] >= b->sc->geom.n_expert || bk->where[ids[i]] >= 0) continue;
        int v = pick_victim(bk, b->n_slots, pin, hint, false);
        if (v < 0) break;
        slot *s = &bk->slots[v];
        evict(b, bk, s);
        s->hint = hint;
        s->prefetched = true;
        s->age = ++b->clock;
        b->st.prefetch_issued++;
        budget--;
        if (load_slot(b, il, (uint32_t)v, ids[i], &err)) break; /* malformed request: only a hint, drop it */
    }
    ds4_expert_io_flush(b->io);
}

static void slot_held_elsewhere(ds4_expert_source *src, uint32_t il, uint32_t e, bool held) {
    slot_source *b = (slot_source *)src;
    if (il < b->sc->geom.n_layer && e < b->sc->geom.n_expert) b->banks[il].elsewhere[e] = held;
}

/* The expert comes back from the cache in front: it takes a slot like a
 * miss would (evicting first what that cache holds), marked as loading
 * until adopt_done; it counts as just used. */
static int slot_adopt_start(ds4_expert_source *src, uint32_t il, uint32_t e, ds4_expert_view *view) {
    slot_source *b = (slot_source *)src;
    if (il >= b->sc->geom.n_layer || e >= b->sc->geom.n_expert || b->failed) return 0;
    bank *bk = &b->banks[il];
    if (bk->where[e] >= 0) return 0;
    /* the latest acquire's views stay valid: its pins are off limits */
    int v = pick_victim(bk, b->n_slots, il == b->last_layer ? b->stamp : 0, 0, false);
    if (v < 0) return 0;
    slot *s = &bk->slots[v];
    evict(b, bk, s);
    s->expert = (int32_t)e;
    s->state = SLOT_LOADING;
    s->pending = 0;
    s->age = ++b->clock;
    bk->where[e] = v;
    ds4_sidecar_record_views(&b->sc->layers[il], bk->mem + (uint64_t)v * bk->slot_bytes, view);
    return 1;
}

static void slot_adopt_done(ds4_expert_source *src, uint32_t il, uint32_t e, bool ok) {
    slot_source *b = (slot_source *)src;
    if (il >= b->sc->geom.n_layer || e >= b->sc->geom.n_expert) return;
    bank *bk = &b->banks[il];
    int32_t si = bk->where[e];
    if (si < 0 || bk->slots[si].state != SLOT_LOADING || bk->slots[si].pending) return;
    if (ok) {
        bk->slots[si].state = SLOT_READY;
        b->st.returned++;
    } else {
        evict(b, bk, &bk->slots[si]);
    }
}

static bool slot_reading(const ds4_expert_source *s) {
    return ds4_expert_io_inflight(((const slot_source *)s)->io) > 0;
}

static uint32_t slot_capacity(const ds4_expert_source *s) { return ((const slot_source *)s)->n_slots; }

static void slot_stats(const ds4_expert_source *s, ds4_expert_stats *out) {
    const slot_source *b = (const slot_source *)s;
    ds4_io_stats io;
    ds4_expert_io_get_stats(b->io, &io);
    *out = b->st;
    out->reads = io.requests;
    out->bytes_read = io.bytes;
    out->retries = io.retries;
    out->direct = io.direct;
    out->buffered = io.buffered;
    out->io_busy_s = io.busy_s;
}

static const char *slot_describe(const ds4_expert_source *s) { return ((const slot_source *)s)->describe; }

static void slot_free(ds4_expert_source *s) {
    slot_source *b = (slot_source *)s;
    ds4_expert_io_close(b->io); /* drains reads before their buffers go */
    if (b->banks)
        for (uint32_t il = 0; il < b->sc->geom.n_layer; il++) {
            ds4_bank_free(b->banks[il].mem, b->banks[il].slot_bytes * b->n_slots);
            free(b->banks[il].slots);
            free(b->banks[il].where);
            free(b->banks[il].elsewhere);
        }
    free(b->banks);
    free(b->last_ids);
    free(b);
}

/* A layer's slots a region */
static const void *slot_region(const ds4_expert_source *s, uint32_t i, uint64_t *bytes) {
    const slot_source *b = (const slot_source *)s;
    if (i >= b->sc->geom.n_layer) return NULL;
    *bytes = b->banks[i].slot_bytes * b->n_slots;
    return b->banks[i].mem;
}

static const ds4_expert_source_ops k_slot_ops = {slot_acquire, slot_prefetch,      slot_capacity, slot_free,   slot_stats,
                                                 slot_describe, slot_acquire_start, slot_wait,     slot_reading,
                                                 slot_ready,    slot_region,        slot_held_elsewhere,
                                                 slot_adopt_start, slot_adopt_done};
/* The same without overlap: no hints (callers then skip computing them)
 * and every acquire waits for all its reads before compute starts. */
static const ds4_expert_source_ops k_slot_ops_noprefetch = {slot_acquire, NULL, slot_capacity, slot_free, slot_stats,
                                                            slot_describe, NULL, NULL, slot_reading, NULL,
                                                            slot_region, slot_held_elsewhere, slot_adopt_start,
                                                            slot_adopt_done};

ds4_expert_source *ds4_experts_slotbank_new(const ds4_sidecar *sc, const ds4_sidecar_source_opts *o, ds4_error *err) {
    uint32_t NL = sc->geom.n_layer, X = sc->geom.n_expert;
    if (o->slots == 0 || o->slots > X) {
        ds4_fail(err, "slot bank of %u slots: must be 1..%u", o->slots, X);
        return NULL;
    }
    slot_source *b = calloc(1, sizeof *b);
    if (!b) {
        ds4_fail(err, "out of memory creating the slot bank");
        return NULL;
    }
    b->base.ops = o->prefetch ? &k_slot_ops : &k_slot_ops_noprefetch;
    b->sc = sc;
    b->n_slots = o->slots;
    b->prefetch = o->prefetch;
    b->last_layer = UINT32_MAX;
    b->banks = calloc(NL, sizeof *b->banks);
    b->last_ids = calloc(o->slots, sizeof *b->last_ids);
    if (!b->banks || !b->last_ids) goto oom;
    for (uint32_t il = 0; il < NL; il++) {
        bank *bk = &b->banks[il];
        /* Whole 4 KiB blocks per slot: an O_DIRECT read of a record may
         * round its length up, and every slot starts aligned. */
        bk->slot_bytes = (sc->layers[il].record_bytes + DS4_IO_ALIGN - 1) / DS4_IO_ALIGN * DS4_IO_ALIGN;
        bk->mem = ds4_bank_alloc(bk->slot_bytes * o->slots);
        bk->slots = calloc(o->slots, sizeof *bk->slots);
        bk->where = malloc(X * sizeof *bk->where);
        bk->elsewhere = calloc(X, 1);
        if (!bk->mem || !bk->slots || !bk->where || !bk->elsewhere) goto oom;
        for (uint32_t i = 0; i < o->slots; i++) bk->slots[i].expert = -1;
        for (uint32_t e = 0; e < X; e++) bk->where[e] = -1;
    }
    if (!(b->io = ds4_sidecar_open_io(sc, o, on_read, b, err))) goto fail;
    char how[128];
    ds4_sidecar_describe_io(sc, b->io, o->direct, how, sizeof how);
    snprintf(b->describe, sizeof b->describe, "slot bank (%u slots per layer, prefetch %s), reads by %s", o->slots,
             o->prefetch ? "on" : "off", how);
    return &b->base;
oom:
    ds4_fail(err, "out of memory creating a slot bank of %u slots x %u layers", o->slots, NL);
fail:
    slot_free(&b->base);
    return NULL;
}
