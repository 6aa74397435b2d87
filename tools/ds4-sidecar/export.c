/* ds4-sidecar export: one pass over the source GGUF writes
 *   layer_NNN.bin   for e in experts: gate | up | down | zero padding
 *                   (stride rounded up to 4 KiB so every record starts
 *                   block aligned and can be read with O_DIRECT)
 *   dense/model-dense.gguf   all metadata verbatim, every other tensor
 *   manifest.json   ds4-ssd's schema plus "files": size and SHA-256
 * into OUTDIR.tmp.PID, hashing each file as it is written, then renames the
 * directory to OUTDIR. A failure or an interrupt removes the temporary
 * directory, so a directory named OUTDIR is always a complete package. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "formats/ggml_types.h"
#include "sidecar_tool.h"
#include "util/sha256.h"
#include "util/clock.h"

#define RECORD_ALIGN 4096u
#define OUT_BUFFER (8u << 20)

static volatile sig_atomic_t g_interrupted;
static void on_signal(int sig) { g_interrupted = sig; }

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)ftw;
    if (flag == FTW_DP) rmdir(path);
    else unlink(path);
    return 0;
}

/* A file written through a large buffer and hashed on the way. */
typedef struct out_file {
    const char *path;
    int fd;
    uint8_t *buf;
    size_t used;
    uint64_t bytes;
    ds4_sha256 *hash;
} out_file;

static int out_open(out_file *o, const char *path, ds4_error *err) {
    memset(o, 0, sizeof *o);
    o->path = path;
    o->fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (o->fd < 0) return ds4_fail(err, "%s: cannot create: %s", path, strerror(errno));
    o->buf = malloc(OUT_BUFFER);
    o->hash = ds4_sha256_new();
    if (!o->buf || !o->hash) return ds4_fail(err, "%s: out of memory", path);
    return 0;
}

static int out_drain(out_file *o, ds4_error *err) {
    for (size_t done = 0; done < o->used;) {
        ssize_t n = write(o->fd, o->buf + done, o->used - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return ds4_fail(err, "%s: write error: %s", o->path, n < 0 ? strerror(errno) : "no progress");
        done += (size_t)n;
    }
    o->used = 0;
    return 0;
}

static int out_write(out_file *o, const void *data, uint64_t n, ds4_error *err) {
    const uint8_t *p = data;
    ds4_sha256_update(o->hash, data, (size_t)n);
    o->bytes += n;
    while (n) {
        size_t k = OUT_BUFFER - o->used < n ? OUT_BUFFER - o->used : (size_t)n;
        if (p) memcpy(o->buf + o->used, p, k);
        else memset(o->buf + o->used, 0, k);
        o->used += k;
        n -= k;
        if (p) p += k;
        if (o->used == OUT_BUFFER && out_drain(o, err)) return -1;
    }
    return 0;
}

static int out_zeros(out_file *o, uint64_t n, ds4_error *err) {
    static const uint8_t zeros[RECORD_ALIGN];
    while (n) {
        uint64_t k = n < sizeof zeros ? n : sizeof zeros;
        if (out_write(o, zeros, k, err)) return -1;
        n -= k;
    }
    return 0;
}

/* Flushes, syncs and closes; hex receives the digest. */
static int out_close(out_file *o, char hex[DS4_SHA256_HEX], ds4_error *err) {
    int rc = out_drain(o, err);
    if (!rc && fsync(o->fd) != 0) rc = ds4_fail(err, "%s: fsync: %s", o->path, strerror(errno));
    if (close(o->fd) != 0 && !rc) rc = ds4_fail(err, "%s: close: %s", o->path, strerror(errno));
    o->fd = -1;
    free(o->buf);
    o->buf = NULL;
    if (o->hash) ds4_sha256_finish(o->hash, hex);
    o->hash = NULL;
    return rc;
}

static void out_abort(out_file *o) {
    if (o->fd >= 0) close(o->fd);
    free(o->buf);
    ds4_sha256_free(o->hash);
    memset(o, 0, sizeof *o);
    o->fd = -1;
}

static int check_interrupt(ds4_error *err) {
    if (g_interrupted) return ds4_fail(err, "interrupted by signal %d", (int)g_interrupted);
    return 0;
}

static void progress(bool tty, uint64_t done, uint64_t total, double t0, const char *what) {
    double dt = ds4_now_s() - t0;
    fprintf(stderr, "%s[%3d%%] %.1f/%.1f MB  %.1f MB/s  %-32s%s", tty ? "\r" : "",
            total ? (int)(100 * done / total) : 100, done / 1e6, total / 1e6, dt > 0 ? done / 1e6 / dt : 0.0, what,
            tty ? "" : "\n");
}

static int write_layer(const ds4_layer_weights *lw, const ds4_sidecar_layer *L, uint32_t n_expert, const char *path,
                       char hex[DS4_SHA256_HEX], ds4_error *err) {
    out_file o;
    if (out_open(&o, path, err)) {
        out_abort(&o);
        return -1;
    }
    const ds4_tensor *src[DS4_FAM_COUNT] = {&lw->gate_exps, &lw->up_exps, &lw->down_exps};
    uint64_t used = L->record_bytes;
    for (uint32_t e = 0; e < n_expert; e++) {
        for (int f = 0; f < DS4_FAM_COUNT; f++)
            if (out_write(&o, src[f]->data + (uint64_t)e * L->fam[f].bytes, L->fam[f].bytes, err)) goto fail;
        if (out_zeros(&o, L->stride - used, err) || check_interrupt(err)) goto fail;
    }
    return out_close(&o, hex, err);
fail:
    out_abort(&o);
    return -1;
}

/* dense/model-dense.gguf: the source minus the routed experts. */
static int write_dense(const gguf_file *f, const char *path, bool tty, double t0, uint64_t *done, uint64_t total,
                       ds4_error *err) {
    gguf_writer *w = gguf_writer_create(path, f->alignment, err);
    if (!w) return -1;
    for (uint64_t i = 0; i < f->n_kv; i++) gguf_writer_copy_kv(w, &f->kv[i]);
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        if (!ds4_is_routed_tensor(t->name)) gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne);
    }
    if (gguf_writer_begin_data(w, err)) goto fail;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        if (ds4_is_routed_tensor(t->name)) continue;
        if (gguf_writer_write(w, t->data, t->nbytes, err) || check_interrupt(err)) goto fail;
        *done += t->nbytes;
        if (tty) progress(tty, *done, total, t0, "dense");
    }
    if (gguf_writer_finish(w, err)) goto fail;
    gguf_writer_free(w);
    return 0;
fail:
    gguf_writer_free(w);
    return -1;
}

static int set_file(ds4_sidecar_file *f, const char *rel, uint64_t bytes, const char *hex) {
    if (!(f->path = strdup(rel))) return -1;
    f->bytes = bytes;
    memcpy(f->sha256, hex, sizeof f->sha256);
    return 0;
}

int cmd_export(int argc, char **argv) {
    const char *src_path = NULL, *out_dir = NULL;
    for (int i = 0; i < argc; i++) {
        if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "ds4-sidecar export: unknown option '%s'\n", argv[i]);
            return 2;
        }
        if (!src_path) src_path = argv[i];
        else if (!out_dir) out_dir = argv[i];
        else {
            fprintf(stderr, "ds4-sidecar export: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!src_path || !out_dir) {
        fprintf(stderr, "usage: ds4-sidecar export MODEL.gguf OUTDIR\n");
        return 2;
    }
    ds4_error err = {{0}};
    gguf_file *f = NULL;
    ds4_hparams hp;
    ds4_weights w = {0};
    ds4_sidecar sc = {0};
    char tmp[4096] = "", path[4200];
    bool made_tmp = false;
    int rc = 1;
    struct stat st;
    if (stat(out_dir, &st) == 0) {
        ds4_fail(&err, "%s already exists; remove it or choose another output directory", out_dir);
        goto out;
    }
    if (!(f = gguf_open(src_path, &err))) goto out;
    if (ds4_hparams_load(&hp, f, &err)) goto out;
    if (bind_for_copy(&w, &hp, f, 0, &err)) goto out;
    uint32_t NL = hp.n_layer, X = hp.n_expert;

    /* The package as the manifest will describe it. */
    sc.geom = (ds4_sidecar_geom){NL, X, hp.n_embd, hp.n_ff_exp};
    sc.layers = calloc(NL, sizeof *sc.layers);
    sc.files = calloc(NL + 1, sizeof *sc.files);
    if (!sc.layers || !sc.files) {
        ds4_fail(&err, "out of memory");
        goto out;
    }
    uint64_t total = 0, expert_total = 0;
    for (uint32_t il = 0; il < NL; il++) {
        ds4_sidecar_layer *L = &sc.layers[il];
        const ds4_tensor *t[DS4_FAM_COUNT] = {&w.layers[il].gate_exps, &w.layers[il].up_exps, &w.layers[il].down_exps};
        char name[32];
        snprintf(name, sizeof name, "layer_%03u.bin", il);
        if (!(L->file = strdup(name))) {
            ds4_fail(&err, "out of memory");
            goto out;
        }
        uint64_t off = 0;
        for (int fi = 0; fi < DS4_FAM_COUNT; fi++) {
            ds4_sidecar_family *fam = &L->fam[fi];
            fam->type = t[fi]->type;
            for (int d = 0; d < 3; d++) fam->shape[d] = t[fi]->ne[d];
            fam->row_bytes = t[fi]->row_bytes;
            fam->bytes = t[fi]->ne[1] * t[fi]->row_bytes;
            fam->offset = fam->mem_off = off;
            off += fam->bytes;
        }
        L->record_bytes = off;
        L->stride = (off + RECORD_ALIGN - 1) / RECORD_ALIGN * RECORD_ALIGN;
        total += L->stride * X;
    }
    expert_total = total;
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (!ds4_is_routed_tensor(f->tensors[i].name)) total += f->tensors[i].nbytes;

    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", out_dir, (long)getpid());
    if (mkdir(tmp, 0755) != 0) {
        ds4_fail(&err, "%s: cannot create: %s", tmp, strerror(errno));
        tmp[0] = 0;
        goto out;
    }
    made_tmp = true;
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    bool tty = isatty(2);
    double t0 = ds4_now_s();
    uint64_t done = 0;
    fprintf(stderr, "ds4-sidecar: exporting %s: %u layers x %u experts, record %llu bytes (stride %llu), into %s\n",
            src_path, NL, X, (unsigned long long)sc.layers[0].record_bytes, (unsigned long long)sc.layers[0].stride, tmp);
    for (uint32_t il = 0; il < NL; il++) {
        char hex[DS4_SHA256_HEX];
        snprintf(path, sizeof path, "%s/%s", tmp, sc.layers[il].file);
        if (write_layer(&w.layers[il], &sc.layers[il], X, path, hex, &err)) goto out;
        if (set_file(&sc.files[sc.n_files++], sc.layers[il].file, sc.layers[il].stride * X, hex)) {
            ds4_fail(&err, "out of memory");
            goto out;
        }
        done += sc.layers[il].stride * X;
        progress(tty, done, total, t0, sc.layers[il].file);
    }
    snprintf(path, sizeof path, "%s/dense", tmp);
    if (mkdir(path, 0755) != 0) {
        ds4_fail(&err, "%s: cannot create: %s", path, strerror(errno));
        goto out;
    }
    snprintf(path, sizeof path, "%s/%s", tmp, DS4_SIDECAR_DENSE);
    if (write_dense(f, path, tty, t0, &done, total, &err)) goto out;
    progress(tty, done, total, t0, "dense");
    if (tty) fputc('\n', stderr);
    {
        char hex[DS4_SHA256_HEX];
        uint64_t bytes;
        /* The writer produced the header itself: hash the finished file. */
        if (ds4_sha256_file(path, hex, &bytes, &err)) goto out;
        if (set_file(&sc.files[sc.n_files++], DS4_SIDECAR_DENSE, bytes, hex)) {
            ds4_fail(&err, "out of memory");
            goto out;
        }
    }
    char *arch = NULL;
    if (gguf_find_kv(f, "general.architecture")) gguf_get_str(f, "general.architecture", &arch, NULL);
    ds4_sidecar_write_info info = {arch ? arch : DS4_ARCH, src_path, hp.n_expert_used, "ds4-sidecar"};
    snprintf(path, sizeof path, "%s/%s", tmp, DS4_SIDECAR_MANIFEST);
    int mrc = ds4_sidecar_write_manifest(path, &sc, &info, &err);
    free(arch);
    if (mrc || check_interrupt(&err)) goto out;
    int dfd = open(tmp, O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    if (rename(tmp, out_dir) != 0) {
        ds4_fail(&err, "%s: cannot rename %s into place: %s", out_dir, tmp, strerror(errno));
        goto out;
    }
    made_tmp = false;
    {
        /* Make the rename durable too. */
        char parent[4096];
        snprintf(parent, sizeof parent, "%s", out_dir);
        char *slash = strrchr(parent, '/');
        if (slash && slash != parent) *slash = 0;
        else snprintf(parent, sizeof parent, "%s", slash ? "/" : ".");
        int pfd = open(parent, O_RDONLY | O_DIRECTORY);
        if (pfd >= 0) {
            (void)fsync(pfd);
            close(pfd);
        }
    }
    fprintf(stderr, "ds4-sidecar: wrote %s (%u layer files, %.1f MB of experts, dense %.1f MB) in %.1fs\n", out_dir, NL,
            expert_total / 1e6, sc.files[NL].bytes / 1e6, ds4_now_s() - t0);
    rc = 0;
out:
    if (rc) fprintf(stderr, "ds4-sidecar: %s\n", err.msg);
    if (made_tmp) {
        nftw(tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        fprintf(stderr, "ds4-sidecar: removed the incomplete %s\n", tmp);
    }
    if (sc.layers)
        for (uint32_t il = 0; il < sc.geom.n_layer; il++) free(sc.layers[il].file);
    free(sc.layers);
    for (uint32_t i = 0; i < sc.n_files; i++) free(sc.files[i].path);
    free(sc.files);
    ds4_weights_free(&w);
    gguf_close(f);
    return rc;
}
