/* ds4-sidecar verify / info.
 *
 * verify opens the package the way the engine does (manifest validated
 * against the dense GGUF's geometry, layer file sizes), binds the dense
 * GGUF's tensors, checks every file's size and SHA-256 against the
 * manifest's "files", and with the source GGUF compares every expert
 * record, every dense tensor and every metadata entry byte for byte. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/ggml_types.h"
#include "sidecar_tool.h"
#include "util/sha256.h"

#define MAX_REPORTS 10

typedef struct report {
    int problems;
} report;

static void problem(report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(report *r, const char *fmt, ...) {
    if (r->problems++ >= MAX_REPORTS * 10) return;
    va_list ap;
    va_start(ap, fmt);
    fputs("FAIL ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
}

static char *join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static void check_checksums(const ds4_sidecar *sc, report *r) {
    if (!sc->n_files) {
        printf("note: %s lists no file checksums (a package from another exporter): sizes checked only\n", sc->manifest);
        return;
    }
    for (uint32_t i = 0; i < sc->n_files; i++) {
        const ds4_sidecar_file *f = &sc->files[i];
        char *path = join(sc->dir, f->path);
        if (!path) {
            problem(r, "out of memory");
            return;
        }
        struct stat st;
        char hex[DS4_SHA256_HEX];
        uint64_t bytes;
        ds4_error err;
        if (stat(path, &st) != 0) {
            problem(r, "%s: %s", path, strerror(errno));
        } else if ((uint64_t)st.st_size != f->bytes) {
            problem(r, "%s: %lld bytes, the manifest says %" PRIu64, path, (long long)st.st_size, f->bytes);
        } else if (ds4_sha256_file(path, hex, &bytes, &err)) {
            problem(r, "%s", err.msg);
        } else if (strcmp(hex, f->sha256)) {
            problem(r, "%s: SHA-256 %s, the manifest says %s", path, hex, f->sha256);
        } else {
            printf("ok   %s: %" PRIu64 " bytes, SHA-256 matches\n", path, bytes);
        }
        free(path);
    }
    /* Every layer file should be covered. */
    for (uint32_t il = 0; il < sc->geom.n_layer; il++) {
        bool listed = false;
        for (uint32_t i = 0; i < sc->n_files && !listed; i++) listed = !strcmp(sc->files[i].path, sc->layers[il].file);
        if (!listed) printf("note: %s has no checksum in the manifest\n", sc->layers[il].path);
    }
}

/* Reads expert e of layer il into rec (record layout of sidecar.h). */
static int read_record(int fd, const ds4_sidecar *sc, uint32_t il, uint32_t e, uint8_t *rec, ds4_error *err) {
    ds4_sidecar_read rd[DS4_FAM_COUNT];
    uint32_t n = ds4_sidecar_expert_reads(sc, il, e, rd);
    for (uint32_t i = 0; i < n; i++)
        for (uint64_t done = 0; done < rd[i].len;) {
            ssize_t got = pread(fd, rec + rd[i].mem_off + done, rd[i].len - done, (off_t)(rd[i].file_off + done));
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0)
                return ds4_fail(err, "%s: read at offset %" PRIu64 ": %s", sc->layers[il].path, rd[i].file_off + done,
                                got < 0 ? strerror(errno) : "unexpected end of file");
            done += (uint64_t)got;
        }
    return 0;
}

static bool kv_equal(const gguf_kv *a, const gguf_kv *b) {
    if (a->type != b->type) return false;
    switch (a->type) {
    case GGUF_VT_STRING:
        return a->v.str.len == b->v.str.len && !memcmp(a->v.str.ptr, b->v.str.ptr, a->v.str.len);
    case GGUF_VT_ARRAY:
        if (a->arr_type != b->arr_type || a->arr_count != b->arr_count) return false;
        if (a->arr_type == GGUF_VT_STRING) {
            for (uint64_t i = 0; i < a->arr_count; i++)
                if (a->arr_strs[i].len != b->arr_strs[i].len ||
                    memcmp(a->arr_strs[i].ptr, b->arr_strs[i].ptr, a->arr_strs[i].len))
                    return false;
            return true;
        }
        return !memcmp(a->arr_data, b->arr_data, a->arr_count * gguf_value_type_size(a->arr_type));
    case GGUF_VT_F32:
    case GGUF_VT_F64:
        return !memcmp(&a->v.f64, &b->v.f64, sizeof a->v.f64);
    default:
        return a->v.u64 == b->v.u64;
    }
}

static void compare_source(const package *p, const char *model, report *r) {
    ds4_error err;
    gguf_file *src = gguf_open(model, &err);
    ds4_hparams hp;
    ds4_weights w = {0};
    uint8_t *rec = NULL;
    if (!src) {
        problem(r, "%s", err.msg);
        return;
    }
    const ds4_sidecar *sc = p->sc;
    if (ds4_hparams_load(&hp, src, &err) || bind_for_copy(&w, &hp, src, 0, &err)) {
        problem(r, "%s", err.msg);
        goto out;
    }
    if (hp.n_layer != sc->geom.n_layer || hp.n_expert != sc->geom.n_expert || hp.n_embd != sc->geom.n_embd ||
        hp.n_ff_exp != sc->geom.n_ff_exp) {
        problem(r, "%s: geometry (%u layers, %u experts, %u wide, ff %u) differs from the package's", model, hp.n_layer,
                hp.n_expert, hp.n_embd, hp.n_ff_exp);
        goto out;
    }
    rec = aligned_alloc(4096, (sc->max_record + 4095) / 4096 * 4096);
    if (!rec) {
        problem(r, "out of memory");
        goto out;
    }
    uint64_t experts_ok = 0;
    for (uint32_t il = 0; il < sc->geom.n_layer; il++) {
        const ds4_sidecar_layer *L = &sc->layers[il];
        const ds4_tensor *t[DS4_FAM_COUNT] = {&w.layers[il].gate_exps, &w.layers[il].up_exps, &w.layers[il].down_exps};
        bool same = true;
        for (int f = 0; f < DS4_FAM_COUNT; f++)
            if (t[f]->type != L->fam[f].type || t[f]->ne[0] != L->fam[f].shape[0] || t[f]->ne[1] != L->fam[f].shape[1]) {
                problem(r, "%s: layer %u %s is %s [%" PRIu64 ", %" PRIu64 "] in the source, %s [%" PRIu64 ", %" PRIu64
                        "] in the package", sc->manifest, il, ds4_sidecar_family_name[f], ggml_type_name(t[f]->type),
                        t[f]->ne[0], t[f]->ne[1], ggml_type_name(L->fam[f].type), L->fam[f].shape[0], L->fam[f].shape[1]);
                same = false;
            }
        if (!same) continue;
        int fd = open(L->path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            problem(r, "%s: cannot open: %s", L->path, strerror(errno));
            continue;
        }
        for (uint32_t e = 0; e < sc->geom.n_expert; e++) {
            if (read_record(fd, sc, il, e, rec, &err)) {
                problem(r, "%s", err.msg);
                break;
            }
            bool ok = true;
            for (int f = 0; f < DS4_FAM_COUNT; f++)
                if (memcmp(rec + L->fam[f].mem_off, t[f]->data + (uint64_t)e * L->fam[f].bytes, L->fam[f].bytes)) {
                    problem(r, "%s: layer %u expert %u %s differs from %s", L->path, il, e, ds4_sidecar_family_name[f],
                            model);
                    ok = false;
                }
            experts_ok += ok;
        }
        close(fd);
    }
    printf("%s %" PRIu64 " of %" PRIu64 " expert records equal the source\n",
           experts_ok == (uint64_t)sc->geom.n_layer * sc->geom.n_expert ? "ok  " : "FAIL", experts_ok,
           (uint64_t)sc->geom.n_layer * sc->geom.n_expert);

    const gguf_file *d = p->dense;
    uint64_t n_dense = 0, tensors_ok = 0;
    for (uint64_t i = 0; i < src->n_tensors; i++) {
        const gguf_tensor *a = &src->tensors[i];
        if (ds4_is_routed_tensor(a->name)) continue;
        n_dense++;
        const gguf_tensor *b = gguf_find_tensor(d, a->name);
        if (!b) problem(r, "%s: tensor '%s' of the source is missing", p->dense_path, a->name);
        else if (a->type != b->type || a->n_dims != b->n_dims || memcmp(a->ne, b->ne, sizeof a->ne))
            problem(r, "%s: tensor '%s' has another type or shape than in the source", p->dense_path, a->name);
        else if (memcmp(a->data, b->data, a->nbytes))
            problem(r, "%s: tensor '%s' differs from the source", p->dense_path, a->name);
        else tensors_ok++;
    }
    if (d->n_tensors != n_dense)
        problem(r, "%s: %" PRIu64 " tensors, the source has %" PRIu64 " besides the routed experts", p->dense_path,
                d->n_tensors, n_dense);
    printf("%s %" PRIu64 " of %" PRIu64 " dense tensors equal the source\n", tensors_ok == n_dense ? "ok  " : "FAIL",
           tensors_ok, n_dense);
    uint64_t kv_ok = 0;
    for (uint64_t i = 0; i < src->n_kv; i++) {
        const gguf_kv *b = gguf_find_kv(d, src->kv[i].key);
        if (!b) problem(r, "%s: metadata key '%s' of the source is missing", p->dense_path, src->kv[i].key);
        else if (!kv_equal(&src->kv[i], b)) problem(r, "%s: metadata key '%s' differs from the source", p->dense_path, b->key);
        else kv_ok++;
    }
    if (d->n_kv != src->n_kv)
        problem(r, "%s: %" PRIu64 " metadata keys, the source has %" PRIu64, p->dense_path, d->n_kv, src->n_kv);
    printf("%s %" PRIu64 " of %" PRIu64 " metadata entries equal the source\n", kv_ok == src->n_kv ? "ok  " : "FAIL", kv_ok,
           src->n_kv);
out:
    free(rec);
    ds4_weights_free(&w);
    gguf_close(src);
}

int cmd_verify(int argc, char **argv) {
    if (argc < 1 || argc > 2 || argv[0][0] == '-') {
        fprintf(stderr, "usage: ds4-sidecar verify DIR [MODEL.gguf]\n");
        return 2;
    }
    package p;
    ds4_error err;
    if (package_open(argv[0], false, &p, &err)) {
        fprintf(stderr, "ds4-sidecar: %s\n", err.msg);
        printf("verify: FAILED\n");
        package_close(&p);
        return 1;
    }
    report r = {0};
    printf("ok   %s: %u layers x 3 families valid for the dense model, layer files large enough\n", p.manifest_path,
           p.sc->geom.n_layer);
    ds4_weights w = {0};
    if (bind_for_copy(&w, &p.hp, p.dense, DS4_BIND_NO_ROUTED_EXPERTS, &err)) problem(&r, "%s", err.msg);
    else printf("ok   %s: every dense tensor present with the right shape\n", p.dense_path);
    ds4_weights_free(&w);
    check_checksums(p.sc, &r);
    if (argc == 2) compare_source(&p, argv[1], &r);
    package_close(&p);
    if (r.problems) {
        printf("verify: FAILED (%d problem%s)\n", r.problems, r.problems == 1 ? "" : "s");
        return 1;
    }
    printf("verify: OK\n");
    return 0;
}

int cmd_info(int argc, char **argv) {
    if (argc != 1 || argv[0][0] == '-') {
        fprintf(stderr, "usage: ds4-sidecar info DIR|MODEL.gguf\n");
        return 2;
    }
    package p;
    ds4_error err;
    if (package_open(argv[0], true, &p, &err)) {
        fprintf(stderr, "ds4-sidecar: %s\n", err.msg);
        package_close(&p);
        return 1;
    }
    const ds4_sidecar *sc = p.sc;
    const ds4_hparams *hp = &p.hp;
    uint64_t dense_bytes = 0;
    for (uint64_t i = 0; i < p.dense->n_tensors; i++) dense_bytes += p.dense->tensors[i].nbytes;
    uint32_t family_major = 0;
    for (uint32_t il = 0; il < sc->geom.n_layer; il++) family_major += sc->layers[il].family_major;
    if (sc->in_model_file) {
        printf("gguf       %s (experts streamed from it: ds4 --ssd-streaming)\n", argv[0]);
        dense_bytes = 0;
        for (uint64_t i = 0; i < p.dense->n_tensors; i++)
            if (!ds4_is_routed_tensor(p.dense->tensors[i].name)) dense_bytes += p.dense->tensors[i].nbytes;
        printf("dense      %.1f MB in the same file\n", dense_bytes / 1e6);
    } else {
        printf("package    %s\n", argv[0]);
        printf("manifest   %s\n", p.manifest_path);
        printf("dense      %s (%" PRIu64 " tensors, %.1f MB)\n", p.dense_path, p.dense->n_tensors, dense_bytes / 1e6);
    }
    printf("model      %u layers (%u hash-routed), %u wide, %u experts (%u per token), expert width %u, vocab %u\n",
           hp->n_layer, hp->n_hash_layers, hp->n_embd, hp->n_expert, hp->n_expert_used, hp->n_ff_exp, hp->n_vocab);
    printf("layout     %s\n", sc->in_model_file                 ? "the GGUF's tensors: a run per family, three reads an expert"
                              : family_major == 0                 ? "expert-major"
                              : family_major == sc->geom.n_layer ? "family-major (legacy)"
                                                                 : "mixed expert-/family-major");
    if (sc->in_model_file)
        printf("experts    %.1f MB, largest record %" PRIu64 " bytes in memory\n", sc->expert_bytes / 1e6, sc->max_record);
    else
        printf("experts    %.1f MB in %u layer files, largest record %" PRIu64 " bytes\n", sc->expert_bytes / 1e6,
               sc->geom.n_layer, sc->max_record);
    for (uint32_t il = 0; il < sc->geom.n_layer; il++) {
        const ds4_sidecar_layer *L = &sc->layers[il];
        printf("  layer %3u  %-16s gate %s up %s down %s  record %" PRIu64 " stride %" PRIu64 "  file %" PRIu64 " bytes\n",
               il, L->file, ggml_type_name(L->fam[0].type), ggml_type_name(L->fam[1].type), ggml_type_name(L->fam[2].type),
               L->record_bytes, L->stride, L->file_bytes);
    }
    if (sc->n_files) printf("checksums  SHA-256 for %u files (ds4-sidecar verify checks them)\n", sc->n_files);
    else if (!sc->in_model_file) printf("checksums  none in the manifest\n");
    package_close(&p);
    return 0;
}
