/* Expert sources over a sidecar package: the slot bank against a reference
 * LRU model (hits, misses, the bytes behind every view; experts that a
 * cache in front holds are evicted first, experts it hands back are hits
 * without a read), prefetch hints that
 * must not evict the latest acquire's experts, bad requests, injected read
 * failures (permanent: an error naming the file; transient: retried),
 * acquire_start/wait (experts readable one by one, in any order), and the
 * resident source, for expert-major and family-major packages; every view
 * lies inside the host regions the source names. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "experts/experts.h"
#include "formats/sidecar.h"
#include "harness.h"

#define NL 2
#define NX 6
#define E 8
#define F 4
static const ds4_sidecar_geom G = {NL, NX, E, F};
static const char *fam_name[3] = {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"};

/* Value i of family f of expert e in layer l: distinct and exact in f32. */
static float value(int l, int e, int f, int i) { return (float)(l * 100000 + e * 1000 + f * 100 + i); }

/* Writes a package: expert-major with 4 KiB records, or family-major runs. */
static const char *make_package(const char *dir, bool family_major) {
    const int fb = 32 * 4; /* 32 floats per family */
    char m[8192];
    int n = snprintf(m, sizeof m, "{\"entries\": [");
    for (int l = 0; l < NL; l++) {
        int fd = open(test_path("%s/l%d.bin", dir, l), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        CHECK(fd >= 0);
        for (int e = 0; e < NX; e++)
            for (int f = 0; f < 3; f++) {
                float v[32];
                for (int i = 0; i < 32; i++) v[i] = value(l, e, f, i);
                off_t at = family_major ? (off_t)f * NX * fb + (off_t)e * fb : (off_t)e * 4096 + (off_t)f * fb;
                CHECK(pwrite(fd, v, sizeof v, at) == (ssize_t)sizeof v);
            }
        if (!family_major) CHECK(ftruncate(fd, NX * 4096) == 0);
        close(fd);
        for (int f = 0; f < 3; f++)
            n += snprintf(m + n, sizeof m - (size_t)n,
                          "%s{\"layer\": %d, \"tensor_family\": \"%s\", \"quant_type\": \"F32\", \"shape\": [%d, %d, %d], "
                          "\"repacked_file\": \"l%d.bin\", \"repacked_offset\": %d, \"bytes_per_expert\": %d, %s}",
                          l || f ? ", " : "", l, fam_name[f], f == 2 ? F : E, f == 2 ? E : F, NX, l,
                          family_major ? f * NX * fb : f * fb, fb,
                          family_major ? "\"expert_major\": false" : "\"expert_stride\": 4096, \"expert_major\": true");
    }
    snprintf(m + n, sizeof m - (size_t)n, "]}");
    const char *path = test_path("%s/manifest.json", dir);
    FILE *fp = fopen(path, "w");
    CHECK(fp != NULL);
    if (fp) {
        fputs(m, fp);
        fclose(fp);
    }
    return path;
}

static int check_view(const ds4_expert_view *v, int l, int e) {
    const ds4_tensor *t[3] = {&v->gate, &v->up, &v->down};
    int bad = 0;
    for (int f = 0; f < 3; f++) {
        const float *d = (const float *)t[f]->data;
        bad += t[f]->ne[0] != (uint64_t)(f == 2 ? F : E) || t[f]->ne[1] != (uint64_t)(f == 2 ? E : F) ||
               t[f]->row_bytes != (uint64_t)(f == 2 ? F : E) * 4;
        for (int i = 0; i < 32; i++) bad += d[i] != value(l, e, f, i);
    }
    return bad;
}

/* Whether the bytes behind each matrix of v lie inside one of the
 * source's host regions (a GPU backend pins exactly those for DMA), and
 * the regions are one a layer. */
static int outside_regions(const ds4_expert_source *s, const ds4_expert_view *v) {
    const ds4_tensor *t[3] = {&v->gate, &v->up, &v->down};
    uint32_t n = 0;
    uint64_t bytes;
    while (ds4_experts_region(s, n, &bytes)) n++;
    int bad = n != NL;
    for (int f = 0; f < 3; f++) {
        const uint8_t *a = t[f]->data, *b = a + t[f]->row_bytes * t[f]->ne[1];
        bool in = false;
        for (uint32_t i = 0; i < n && !in; i++) {
            const uint8_t *r = ds4_experts_region(s, i, &bytes);
            in = a >= r && b <= r + bytes;
        }
        bad += !in;
    }
    return bad;
}

/* Reference LRU: per layer the experts held and their last use, and which
 * experts a cache in front holds (those are given up first). */
typedef struct lru {
    int held[NL][NX]; /* age, 0 = absent */
    bool elsewhere[NL][NX];
    int clock;
} lru;

static void lru_acquire(lru *r, int l, const uint32_t *ids, int n, int slots, uint64_t *hits, uint64_t *misses) {
    int count = 0;
    for (int e = 0; e < NX; e++) count += r->held[l][e] != 0;
    for (int i = 0; i < n; i++)
        if (r->held[l][ids[i]]) (*hits)++;
    for (int i = 0; i < n; i++) {
        if (r->held[l][ids[i]]) continue;
        (*misses)++;
        if (count == slots) { /* evict the least recent expert not asked for, held elsewhere if any is */
            int victim = -1;
            for (int pass = 0; pass < 2 && victim < 0; pass++)
                for (int e = 0; e < NX; e++) {
                    bool asked = false;
                    for (int j = 0; j < n; j++) asked |= ids[j] == (uint32_t)e;
                    if (pass == 0 && !r->elsewhere[l][e]) continue;
                    if (r->held[l][e] && !asked && (victim < 0 || r->held[l][e] < r->held[l][victim])) victim = e;
                }
            r->held[l][victim] = 0;
            count--;
        }
        r->held[l][ids[i]] = -1; /* present, aged below */
        count++;
    }
    for (int i = 0; i < n; i++) r->held[l][ids[i]] = ++r->clock;
}

/* shadow: experts are marked and unmarked as held by a cache in front. */
static void test_lru(const ds4_sidecar *sc, const char *what, bool direct, bool shadow) {
    for (uint32_t slots = 2; slots <= NX; slots += 2) {
        ds4_error err = {{0}};
        ds4_sidecar_source_opts o = {.slots = slots, .direct = direct, .prefetch = false};
        ds4_expert_source *s = ds4_experts_slotbank_new(sc, &o, &err);
        CHECKF(s != NULL, "%s: %s", what, err.msg);
        if (!s) continue;
        CHECK(ds4_experts_capacity(s) == slots);
        CHECK(!ds4_experts_can_prefetch(s));
        lru ref = {0};
        uint64_t hits = 0, misses = 0;
        uint64_t seed = 12345 + slots;
        int bad = 0;
        for (int step = 0; step < 400; step++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            if (shadow && ((seed >> 10) & 3) != 0) { /* a GPU bank took or dropped an expert */
                int hl = (int)((seed >> 13) % NL), he = (int)((seed >> 17) % NX);
                bool held = (seed >> 23) & 1;
                ref.elsewhere[hl][he] = held;
                ds4_experts_held_elsewhere(s, (uint32_t)hl, (uint32_t)he, held);
                seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            }
            int l = (int)(seed >> 60) % NL;
            int n = 1 + (int)((seed >> 40) % slots);
            uint32_t ids[NX];
            int k = 0;
            while (k < n) { /* distinct experts, skewed to low ids like a real router */
                seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                uint32_t e = (uint32_t)((seed >> 33) % NX);
                if ((seed >> 20) & 1) e = e / 2;
                bool dup = false;
                for (int j = 0; j < k; j++) dup |= ids[j] == e;
                if (!dup) ids[k++] = e;
            }
            ds4_expert_view v[NX];
            if (ds4_experts_acquire(s, (uint32_t)l, ids, (uint32_t)n, v, &err)) {
                CHECKF(0, "%s: acquire failed: %s", what, err.msg);
                break;
            }
            for (int i = 0; i < n; i++) bad += check_view(&v[i], l, (int)ids[i]) + outside_regions(s, &v[i]);
            lru_acquire(&ref, l, ids, n, (int)slots, &hits, &misses);
        }
        ds4_expert_stats st;
        ds4_experts_get_stats(s, &st);
        CHECKF(bad == 0, "%s, %u slots: %d wrong values behind views", what, slots, bad);
        CHECKF(st.hits == hits && st.misses == misses, "%s, %u slots: hits %llu misses %llu, LRU model says %llu %llu", what,
               slots, (unsigned long long)st.hits, (unsigned long long)st.misses, (unsigned long long)hits,
               (unsigned long long)misses);
        CHECK(st.acquires == 400 && st.prefetch_issued == 0);
        CHECK(st.reads == misses * (sc->layers[0].family_major ? 3 : 1));
        ds4_experts_free(s);
    }
}

/* A slot bank over sc, or NULL (a failed check) when it cannot be made. */
static ds4_expert_source *open_bank(const ds4_sidecar *sc, uint32_t slots, bool direct, bool prefetch) {
    ds4_error err = {{0}};
    ds4_sidecar_source_opts o = {.slots = slots, .direct = direct, .prefetch = prefetch};
    ds4_expert_source *s = ds4_experts_slotbank_new(sc, &o, &err);
    CHECKF(s != NULL, "slot bank of %u: %s", slots, err.msg);
    return s;
}

/* Writes expert e of layer l's values where a view says (what a GPU's bank
 * copies back when it hands the expert over). */
static void fill_view(const ds4_expert_view *v, int l, int e) {
    const ds4_tensor *t[3] = {&v->gate, &v->up, &v->down};
    for (int f = 0; f < 3; f++)
        for (int i = 0; i < 32; i++) ((float *)(uintptr_t)t[f]->data)[i] = value(l, e, f, i);
}

/* A GPU's bank holds experts 0 and 1 (held_elsewhere): a miss evicts one of
 * them, not expert 2; the evicted expert handed back (adopt) is then a hit
 * with its bytes and no read; an adoption that failed leaves nothing. */
static void test_adopt(const ds4_sidecar *sc) {
    ds4_error err = {{0}};
    ds4_expert_source *s = open_bank(sc, 3, false, false);
    if (!s) return;
    ds4_expert_view v[3], a;
    ds4_expert_stats st;
    const uint32_t first[3] = {0, 1, 2}, three = 3, zero = 0, two = 2, one = 1;
    CHECK(ds4_experts_acquire(s, 0, first, 3, v, &err) == 0);
    ds4_experts_held_elsewhere(s, 0, 0, true);
    ds4_experts_held_elsewhere(s, 0, 1, true);
    CHECK(ds4_experts_acquire(s, 0, &three, 1, v, &err) == 0 && check_view(&v[0], 0, 3) == 0);
    CHECK(ds4_experts_acquire(s, 0, &two, 1, v, &err) == 0); /* still there */
    ds4_experts_get_stats(s, &st);
    CHECKF(st.hits == 1 && st.misses == 4, "held elsewhere: hits %llu misses %llu, want 1 and 4",
           (unsigned long long)st.hits, (unsigned long long)st.misses);
    /* expert 0 (the older of the two held) went; the GPU now evicts it too */
    ds4_experts_held_elsewhere(s, 0, 0, false);
    CHECK(ds4_experts_adopt_start(s, 0, 1, &a) == 0); /* still in the bank: nothing to copy */
    CHECK(ds4_experts_adopt_start(s, 0, 0, &a) == 1);
    CHECK(outside_regions(s, &a) == 0);
    fill_view(&a, 0, 0);
    ds4_experts_adopt_done(s, 0, 0, true);
    uint64_t reads = st.reads;
    CHECK(ds4_experts_acquire(s, 0, &zero, 1, v, &err) == 0 && check_view(&v[0], 0, 0) == 0);
    ds4_experts_get_stats(s, &st);
    CHECKF(st.hits == 2 && st.reads == reads && st.returned == 1, "adopted: hits %llu reads %llu returned %llu",
           (unsigned long long)st.hits, (unsigned long long)st.reads, (unsigned long long)st.returned);
    /* expert 1 was the victim of the adoption (held elsewhere); a failed
     * adoption of it leaves no slot claiming it: the next acquire reads it */
    CHECK(ds4_experts_adopt_start(s, 0, 1, &a) == 1);
    ds4_experts_adopt_done(s, 0, 1, false);
    CHECK(ds4_experts_acquire(s, 0, &one, 1, v, &err) == 0 && check_view(&v[0], 0, 1) == 0);
    ds4_experts_get_stats(s, &st);
    CHECKF(st.reads > reads && st.returned == 1, "failed adoption: reads %llu (were %llu), returned %llu",
           (unsigned long long)st.reads, (unsigned long long)reads, (unsigned long long)st.returned);
    ds4_experts_free(s);
}

static void test_prefetch(const ds4_sidecar *sc) {
    ds4_error err = {{0}};
    ds4_expert_source *s = open_bank(sc, 3, true, true);
    if (!s) return;
    CHECK(ds4_experts_can_prefetch(s));
    ds4_expert_view v[3];
    uint32_t a[2] = {0, 1}, hint[3] = {2, 3, 4};
    CHECK(ds4_experts_acquire(s, 0, a, 2, v, &err) == 0);
    /* Only the third slot is free: the views of experts 0 and 1 survive. */
    ds4_experts_prefetch(s, 0, hint, 3);
    usleep(20000);
    CHECK(check_view(&v[0], 0, 0) == 0 && check_view(&v[1], 0, 1) == 0);
    ds4_expert_stats st;
    ds4_experts_get_stats(s, &st);
    CHECKF(st.prefetch_issued == 1, "prefetch issued %llu, only one slot was free", (unsigned long long)st.prefetch_issued);
    /* Another layer's hint may use all of that layer's slots. */
    ds4_experts_prefetch(s, 1, hint, 3);
    uint32_t b[1] = {2};
    CHECK(ds4_experts_acquire(s, 0, b, 1, v, &err) == 0 && check_view(&v[0], 0, 2) == 0);
    uint32_t c[3] = {4, 3, 2};
    CHECK(ds4_experts_acquire(s, 1, c, 3, v, &err) == 0);
    for (int i = 0; i < 3; i++) CHECK(check_view(&v[i], 1, (int)c[i]) == 0);
    ds4_experts_get_stats(s, &st);
    CHECKF(st.prefetch_issued == 4 && st.prefetch_used == 4 && st.misses == 2 && st.hits == 0,
           "issued %llu used %llu misses %llu hits %llu", (unsigned long long)st.prefetch_issued,
           (unsigned long long)st.prefetch_used, (unsigned long long)st.misses, (unsigned long long)st.hits);
    /* A hint for the layer just acquired, with every slot pinned by it,
     * issues nothing; a bad id or layer in a hint is ignored. */
    uint32_t d[2] = {5, 99};
    ds4_experts_prefetch(s, 1, d, 2);
    ds4_experts_prefetch(s, 7, d, 1);
    ds4_experts_get_stats(s, &st);
    CHECK(st.prefetch_issued == 4);
    for (int i = 0; i < 3; i++) CHECK(check_view(&v[i], 1, (int)c[i]) == 0);

    /* A hint never evicts an expert it names itself, even one named after
     * an expert it has to place: layer 0 holds 2 (used last) and 0 and 1
     * (older); a hint {3, 0} replaces 1, the least recent it does not name. */
    uint32_t e0[1] = {0}, e01[2] = {0, 1}, e2[1] = {2};
    CHECK(ds4_experts_acquire(s, 0, e01, 2, v, &err) == 0);
    CHECK(ds4_experts_acquire(s, 0, e2, 1, v, &err) == 0);
    CHECK(ds4_experts_acquire(s, 1, e2, 1, v, &err) == 0); /* layer 0's pins no longer apply */
    uint32_t h30[2] = {3, 0};
    ds4_experts_prefetch(s, 0, h30, 2);
    ds4_experts_get_stats(s, &st);
    uint64_t hits0 = st.hits, issued0 = st.prefetch_issued;
    CHECK(ds4_experts_acquire(s, 0, e0, 1, v, &err) == 0 && check_view(&v[0], 0, 0) == 0);
    ds4_experts_get_stats(s, &st);
    CHECKF(st.hits == hits0 + 1 && st.prefetch_issued == issued0, "hits %llu -> %llu, issued %llu -> %llu",
           (unsigned long long)hits0, (unsigned long long)st.hits, (unsigned long long)issued0,
           (unsigned long long)st.prefetch_issued);

    /* Bad requests are errors, not crashes. */
    uint32_t four[4] = {0, 1, 2, 3}, big[1] = {NX};
    CHECK(ds4_experts_acquire(s, 0, four, 4, v, &err) == -1 && strstr(err.msg, "3-slot bank"));
    CHECK(ds4_experts_acquire(s, 0, big, 1, v, &err) == -1 && strstr(err.msg, "out of range"));
    CHECK(ds4_experts_acquire(s, NL, a, 1, v, &err) == -1 && strstr(err.msg, "layer"));
    ds4_experts_free(s);
}

static void test_faults(const ds4_sidecar *sc) {
    ds4_error err = {{0}};
    ds4_sidecar_source_opts o = {.slots = 2, .direct = true, .prefetch = true};
    ds4_expert_view v[2];
    uint32_t e0[1] = {0}, e1[1] = {1};
    setenv("DS4_FAULT_READ_FAIL", "2", 1);
    ds4_expert_source *s = ds4_experts_slotbank_new(sc, &o, &err);
    unsetenv("DS4_FAULT_READ_FAIL");
    CHECKF(s != NULL, "%s", err.msg);
    if (s) {
        CHECK(ds4_experts_acquire(s, 1, e0, 1, v, &err) == 0 && check_view(&v[0], 1, 0) == 0);
        CHECK(ds4_experts_acquire(s, 1, e1, 1, v, &err) == -1);
        CHECKF(strstr(err.msg, "l1.bin") && strstr(err.msg, "failed after 4 attempts"), "%s", err.msg);
        /* The failure is sticky: nothing more is computed from this source. */
        CHECK(ds4_experts_acquire(s, 1, e0, 1, v, &err) == -1 && strstr(err.msg, "l1.bin"));
        ds4_expert_stats st;
        ds4_experts_get_stats(s, &st);
        CHECK(st.retries == 3);
        ds4_experts_free(s);
    }
    /* A failing prefetch read stops the acquires after it is seen. */
    setenv("DS4_FAULT_READ_FAIL", "1", 1);
    s = ds4_experts_slotbank_new(sc, &o, &err);
    unsetenv("DS4_FAULT_READ_FAIL");
    if (s) {
        ds4_experts_prefetch(s, 0, e1, 1);
        /* Its retries advance whenever the source reaps completions; the
         * acquires before the last attempt fails still return good data. */
        int ok = 0, rc = 0;
        for (int i = 0; i < 20 && rc == 0; i++) {
            usleep(10000);
            uint32_t id[1] = {(uint32_t)i % NX};
            rc = ds4_experts_acquire(s, 1, id, 1, v, &err);
            if (rc == 0) ok += check_view(&v[0], 1, (int)id[0]) == 0;
            else ok++;
            CHECK(ok == i + 1);
        }
        CHECKF(rc == -1 && strstr(err.msg, "l0.bin") && strstr(err.msg, "failed after"), "%s", rc ? err.msg : "no error");
        ds4_experts_free(s);
    }
    setenv("DS4_FAULT_READ_FAIL_ONCE", "1", 1);
    setenv("DS4_FAULT_READ_SHORT", "2", 1);
    s = ds4_experts_slotbank_new(sc, &o, &err);
    unsetenv("DS4_FAULT_READ_FAIL_ONCE");
    unsetenv("DS4_FAULT_READ_SHORT");
    if (s) {
        CHECK(ds4_experts_acquire(s, 0, e0, 1, v, &err) == 0 && check_view(&v[0], 0, 0) == 0);
        CHECK(ds4_experts_acquire(s, 0, e1, 1, v, &err) == 0 && check_view(&v[0], 0, 1) == 0);
        ds4_expert_stats st;
        ds4_experts_get_stats(s, &st);
        CHECKF(st.retries == 1, "retries %llu", (unsigned long long)st.retries);
        ds4_experts_free(s);
    }
    setenv("DS4_FAULT_READ_FAIL", "1", 1);
    s = ds4_experts_resident_new(sc, &o, &err);
    unsetenv("DS4_FAULT_READ_FAIL");
    CHECK(s == NULL && strstr(err.msg, "failed after"));
    ds4_experts_free(s);
}

static void test_overlap(const ds4_sidecar *sc, const char *what) {
    ds4_error err = {{0}};
    ds4_sidecar_source_opts o = {.slots = 3, .direct = true, .prefetch = true};
    ds4_expert_source *s = ds4_experts_slotbank_new(sc, &o, &err);
    CHECKF(s != NULL, "%s: %s", what, err.msg);
    if (!s) return;
    ds4_expert_view v[3];
    uint32_t ids[3] = {4, 1, 3};
    for (int round = 0; round < 2; round++) { /* misses, then hits */
        CHECK(ds4_experts_acquire_start(s, 1, ids, 3, v, &err) == 0);
        for (int k = 2; k >= 0; k--) { /* any order */
            CHECK(ds4_experts_wait(s, (uint32_t)k, &err) == 0);
            CHECKF(check_view(&v[k], 1, (int)ids[k]) == 0, "%s: expert %u after its wait", what, ids[k]);
        }
        CHECK(!ds4_experts_reading(s));
    }
    CHECK(ds4_experts_wait(s, 3, &err) == -1 && strstr(err.msg, "3-expert acquire"));
    /* ready() turns true for each expert once its read is in, without waiting. */
    uint32_t other[3] = {0, 2, 5};
    CHECK(ds4_experts_acquire_start(s, 1, other, 3, v, &err) == 0);
    int spins = 0;
    for (int k = 0; k < 3; k++)
        while (!ds4_experts_ready(s, (uint32_t)k) && spins < 100000) {
            usleep(100);
            spins++;
        }
    CHECK(spins < 100000 && !ds4_experts_reading(s));
    for (int k = 0; k < 3; k++) CHECK(check_view(&v[k], 1, (int)other[k]) == 0 && ds4_experts_wait(s, (uint32_t)k, &err) == 0);
    CHECK(ds4_experts_ready(s, 3)); /* out of range: wait reports it */
    ds4_expert_stats st;
    ds4_experts_get_stats(s, &st);
    CHECK(st.misses == 6 && st.hits == 3);
    ds4_experts_free(s);

    /* A read that fails for good fails the waits (naming the file). */
    setenv("DS4_FAULT_READ_FAIL", sc->layers[0].family_major ? "4" : "2", 1);
    s = ds4_experts_slotbank_new(sc, &o, &err);
    unsetenv("DS4_FAULT_READ_FAIL");
    if (s) {
        uint32_t two[2] = {0, 5};
        CHECK(ds4_experts_acquire_start(s, 0, two, 2, v, &err) == 0);
        int r0 = ds4_experts_wait(s, 0, &err), r1 = ds4_experts_wait(s, 1, &err);
        CHECKF(r1 == -1 && strstr(err.msg, "l0.bin"), "%s: %d %d %s", what, r0, r1, err.msg);
        ds4_experts_free(s);
    }
    /* Without overlap, acquire_start waits for everything and wait is a no-op. */
    o.prefetch = false;
    s = ds4_experts_slotbank_new(sc, &o, &err);
    if (s) {
        CHECK(ds4_experts_acquire_start(s, 0, ids, 3, v, &err) == 0);
        CHECK(!ds4_experts_reading(s));
        for (int k = 0; k < 3; k++) CHECK(check_view(&v[k], 0, (int)ids[k]) == 0 && ds4_experts_wait(s, 0, &err) == 0);
        ds4_experts_free(s);
    }
}

static void test_resident(const ds4_sidecar *sc, const char *what) {
    ds4_error err = {{0}};
    for (int direct = 0; direct < 2; direct++) {
        ds4_sidecar_source_opts o = {.direct = direct != 0};
        ds4_expert_source *s = ds4_experts_resident_new(sc, &o, &err);
        CHECKF(s != NULL, "%s: %s", what, err.msg);
        if (!s) continue;
        CHECK(ds4_experts_capacity(s) == NX);
        uint32_t all[NX] = {5, 4, 3, 2, 1, 0};
        ds4_expert_view v[NX];
        for (int l = 0; l < NL; l++) {
            CHECK(ds4_experts_acquire(s, (uint32_t)l, all, NX, v, &err) == 0);
            for (int i = 0; i < NX; i++)
                CHECKF(check_view(&v[i], l, (int)all[i]) == 0 && outside_regions(s, &v[i]) == 0, "%s: layer %d expert %u",
                       what, l, all[i]);
        }
        CHECK(strstr(ds4_experts_describe(s), "resident") != NULL);
        ds4_experts_free(s);
    }
}

int main(void) {
    for (int fm = 0; fm < 2; fm++) {
        const char *dir = test_path("%s/%s", test_tmp_dir(), fm ? "family" : "expert");
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
        CHECK(system(cmd) == 0);
        const char *manifest = make_package(dir, fm != 0);
        ds4_error err = {{0}};
        ds4_sidecar *sc = ds4_sidecar_open(manifest, &G, &err);
        CHECKF(sc != NULL, "%s", err.msg);
        if (!sc) continue;
        CHECK(sc->layers[0].family_major == (fm != 0));
        const char *what = fm ? "family-major" : "expert-major";
        test_lru(sc, what, true, false);
        test_lru(sc, what, false, false);
        test_lru(sc, what, true, true);
        test_resident(sc, what);
        test_overlap(sc, what);
        test_adopt(sc);
        if (!fm) {
            test_prefetch(sc);
            test_faults(sc);
        }
        ds4_sidecar_free(sc);
    }
    return test_finish();
}
