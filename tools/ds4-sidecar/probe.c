/* ds4-sidecar probe: the disk's own random-read bandwidth for whole expert
 * records of a package, read exactly as the slot bank reads a miss (same
 * reader, O_DIRECT, record-sized requests at record offsets), at several
 * queue depths. Next to decode numbers it tells how close the engine gets
 * to what the SSD can deliver.
 *
 * Two shapes of load: a steady queue (a new read as soon as one finishes:
 * what the disk can do with N requests always outstanding), and bursts
 * (--burst: N reads at once, wait for all of them, again: what a decode
 * step that misses N experts of a layer and waits for them sees, tail of
 * the slowest read included).
 *
 * --experts N draws from experts 0..N-1 of each layer only: a working set
 * as small as the one a decode keeps coming back to, for disks whose reads
 * are served from a cache below the file system (a virtual disk cached by
 * its host) and so get faster the smaller the set. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "experts/expert_io.h"
#include "util/bankmem.h"
#include "sidecar_tool.h"
#include "util/clock.h"

typedef struct probe_ctx {
    bool *busy;
    double *issued;
    double lat_sum;
    uint64_t done;
    int failed;
    ds4_error err;
} probe_ctx;

static void on_done(void *ctx, uint64_t tag, const ds4_error *err) {
    probe_ctx *c = ctx;
    c->busy[tag] = false;
    c->lat_sum += ds4_now_s() - c->issued[tag];
    c->done++;
    if (err && !c->failed) {
        c->failed = 1;
        c->err = *err;
    }
}

static uint64_t xorshift(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static int probe_qd(const ds4_sidecar *sc, uint32_t qd, double seconds, bool direct, bool burst, uint32_t experts) {
    uint64_t slot = (sc->max_record + DS4_IO_ALIGN - 1) / DS4_IO_ALIGN * DS4_IO_ALIGN;
    probe_ctx c = {0};
    c.busy = calloc(qd, sizeof *c.busy);
    c.issued = calloc(qd, sizeof *c.issued);
    /* Buffers made like the slot bank's (huge pages, populated): an
     * O_DIRECT read is split into a request per run of contiguous memory
     * the device takes at once, so 4 KiB pages would make many more, smaller
     * requests than decode issues, and slower ones. */
    uint8_t *mem = ds4_bank_alloc(slot * qd);
    const char **paths = malloc(sc->geom.n_layer * sizeof *paths);
    ds4_error err;
    ds4_expert_io *io = NULL;
    int rc = 1;
    if (!c.busy || !c.issued || !mem || !paths) {
        fprintf(stderr, "ds4-sidecar probe: out of memory\n");
        goto out;
    }
    for (uint32_t il = 0; il < sc->geom.n_layer; il++) paths[il] = sc->layers[il].path;
    if (!(io = ds4_expert_io_open(paths, sc->geom.n_layer, direct, qd, on_done, &c, &err))) {
        fprintf(stderr, "ds4-sidecar probe: %s\n", err.msg);
        goto out;
    }
    uint64_t seed = 0x9E3779B97F4A7C15ull ^ (uint64_t)qd;
    double t0 = ds4_now_s(), end = t0 + seconds;
    while (ds4_now_s() < end && !c.failed) {
        for (uint32_t b = 0; b < qd; b++) {
            if (c.busy[b]) continue;
            uint32_t il = (uint32_t)(xorshift(&seed) % sc->geom.n_layer);
            uint32_t e = (uint32_t)(xorshift(&seed) % experts);
            ds4_sidecar_read rd[DS4_FAM_COUNT];
            uint32_t n = ds4_sidecar_expert_reads(sc, il, e, rd);
            c.busy[b] = true;
            c.issued[b] = ds4_now_s();
            /* A family-major layer's record is three reads; the probe times
             * the first (the largest share) to keep one request per buffer. */
            (void)n;
            ds4_io_req q = {il, rd[0].file_off, rd[0].len, mem + (uint64_t)b * slot, slot, b};
            if (ds4_expert_io_submit(io, &q, &err)) {
                fprintf(stderr, "ds4-sidecar probe: %s\n", err.msg);
                goto out;
            }
        }
        ds4_expert_io_flush(io);
        ds4_expert_io_reap(io, true);
        if (burst)
            while (ds4_expert_io_reap(io, true)) {
            }
    }
    while (ds4_expert_io_reap(io, true)) {
    }
    double dt = ds4_now_s() - t0;
    if (c.failed) {
        fprintf(stderr, "ds4-sidecar probe: %s\n", c.err.msg);
        goto out;
    }
    ds4_io_stats st;
    ds4_expert_io_get_stats(io, &st);
    printf("probe %-5s %-3u %7" PRIu64 " reads of %7" PRIu64 " B in %5.2f s: %8.1f MB/s %8.0f reads/s, mean latency %7.3f ms "
           "(%s)\n",
           burst ? "burst" : "qd", qd, c.done, c.done ? st.bytes / c.done : 0, dt, st.bytes / 1e6 / dt, c.done / dt, c.done ? c.lat_sum / c.done * 1e3 : 0.0,
           st.direct && !st.buffered ? "O_DIRECT" : st.direct ? "partly O_DIRECT" : "buffered");
    fflush(stdout);
    rc = 0;
out:
    ds4_expert_io_close(io);
    free(paths);
    ds4_bank_free(mem, slot * qd);
    free(c.busy);
    free(c.issued);
    return rc;
}

int cmd_probe(int argc, char **argv) {
    const char *dir = NULL, *qds = "1,4,16,64";
    double seconds = 2;
    bool direct = true, burst = false;
    unsigned long experts = 0; /* 0: all */
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--seconds") && i + 1 < argc) {
            char *end;
            seconds = strtod(argv[++i], &end);
            if (*end || !(seconds > 0) || seconds > 3600) {
                fprintf(stderr, "ds4-sidecar probe: --seconds expects a positive number, got '%s'\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(argv[i], "--qd") && i + 1 < argc) {
            qds = argv[++i];
        } else if (!strcmp(argv[i], "--buffered")) {
            direct = false;
        } else if (!strcmp(argv[i], "--burst")) {
            burst = true;
        } else if (!strcmp(argv[i], "--experts") && i + 1 < argc) {
            char *end;
            errno = 0;
            experts = strtoul(argv[++i], &end, 10);
            if (*end || errno || experts < 1 || experts > 1u << 20) {
                fprintf(stderr, "ds4-sidecar probe: --experts expects a positive number, got '%s'\n", argv[i]);
                return 2;
            }
        } else if (argv[i][0] == '-' || dir) {
            fprintf(stderr, "usage: ds4-sidecar probe DIR [--seconds S] [--qd N[,N...]] [--buffered] [--burst] [--experts N]\n");
            return 2;
        } else {
            dir = argv[i];
        }
    }
    if (!dir) {
        fprintf(stderr, "usage: ds4-sidecar probe DIR [--seconds S] [--qd N[,N...]] [--buffered] [--burst] [--experts N]\n");
        return 2;
    }
    package p;
    ds4_error err;
    if (package_open(dir, true, &p, &err)) {
        fprintf(stderr, "ds4-sidecar: %s\n", err.msg);
        package_close(&p);
        return 1;
    }
    int rc = 0;
    uint32_t X = p.sc->geom.n_expert;
    uint32_t n_exp = experts && experts < X ? (uint32_t)experts : X;
    for (const char *s = qds; *s && !rc;) {
        char *end;
        errno = 0;
        unsigned long qd = strtoul(s, &end, 10);
        if (end == s || errno || qd < 1 || qd > 4096 || (*end && *end != ',')) {
            fprintf(stderr, "ds4-sidecar probe: --qd expects numbers 1..4096 separated by commas, got '%s'\n", qds);
            rc = 2;
            break;
        }
        rc = probe_qd(p.sc, (uint32_t)qd, seconds, direct, burst, n_exp);
        s = *end ? end + 1 : end;
    }
    package_close(&p);
    return rc;
}
