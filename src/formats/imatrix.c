#include "formats/imatrix.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/ggml_types.h"
#include "formats/gguf.h"
#include "util/strmap.h"

typedef struct entry {
    char *name;
    float *values; /* importance, matrix after matrix */
    uint64_t n;
} entry;

struct ds4_imatrix {
    char *path;
    entry *e;
    size_t n, cap;
    ds4_strmap index;
    int chunks;
    char *dataset;
};

static int add_entry(ds4_imatrix *im, char *name, float *values, uint64_t n, ds4_error *err) {
    if (im->n == im->cap) {
        size_t cap = im->cap ? 2 * im->cap : 64;
        entry *e = realloc(im->e, cap * sizeof *e);
        if (!e) goto oom;
        im->e = e;
        im->cap = cap;
    }
    /* The map points at the names, which stay put when the array moves. */
    int rc = ds4_strmap_put(&im->index, name, im->n, NULL);
    if (rc < 0) goto oom;
    if (rc == 0) {
        ds4_fail(err, "%s: tensor '%s' appears twice", im->path, name);
        free(name);
        free(values);
        return -1;
    }
    im->e[im->n++] = (entry){name, values, n};
    return 0;
oom:
    free(name);
    free(values);
    return ds4_fail(err, "%s: out of memory", im->path);
}

/* ---- legacy .dat ---- */

typedef struct reader {
    const uint8_t *p;
    size_t n, at;
} reader;

static int rd(reader *r, void *dst, size_t n) {
    if (r->n - r->at < n) return -1;
    memcpy(dst, r->p + r->at, n);
    r->at += n;
    return 0;
}

static int load_legacy(ds4_imatrix *im, const uint8_t *buf, size_t len, ds4_error *err) {
    reader r = {buf, len, 0};
    int32_t n_entries;
    if (rd(&r, &n_entries, 4) || n_entries < 0)
        return ds4_fail(err, "%s: not an imatrix file (bad entry count)", im->path);
    for (int32_t i = 0; i < n_entries; i++) {
        int32_t name_len, ncall, nval;
        if (rd(&r, &name_len, 4) || name_len <= 0 || name_len > 4096 || r.n - r.at < (size_t)name_len)
            return ds4_fail(err, "%s: entry %d: bad name length", im->path, i);
        char *name = strndup((const char *)r.p + r.at, (size_t)name_len);
        r.at += (size_t)name_len;
        if (!name) return ds4_fail(err, "%s: out of memory", im->path);
        if (rd(&r, &ncall, 4) || rd(&r, &nval, 4) || nval <= 0 || (r.n - r.at) / 4 < (size_t)nval) {
            ds4_fail(err, "%s: entry '%s': truncated or bad value count", im->path, name);
            free(name);
            return -1;
        }
        float *v = malloc((size_t)nval * sizeof *v);
        if (!v) {
            free(name);
            return ds4_fail(err, "%s: out of memory", im->path);
        }
        rd(&r, v, (size_t)nval * 4);
        float div = ncall > 0 ? (float)ncall : 1.0f;
        for (int32_t k = 0; k < nval; k++) v[k] /= div;
        if (add_entry(im, name, v, (uint64_t)nval, err)) return -1;
    }
    /* Trailer (newer writers): chunk count and dataset name. */
    int32_t chunks, dlen;
    if (rd(&r, &chunks, 4) == 0) {
        im->chunks = chunks;
        if (rd(&r, &dlen, 4) == 0 && dlen > 0 && r.n - r.at >= (size_t)dlen)
            im->dataset = strndup((const char *)r.p + r.at, (size_t)dlen);
    }
    return 0;
}

/* ---- GGUF ---- */

static int load_gguf(ds4_imatrix *im, ds4_error *err) {
    gguf_file *f = gguf_open(im->path, err);
    if (!f) return -1;
    int rc = -1;
    static const char sums_sfx[] = ".in_sum2", counts_sfx[] = ".counts";
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *s = &f->tensors[i];
        size_t nl = strlen(s->name);
        if (nl <= sizeof sums_sfx - 1 || strcmp(s->name + nl - (sizeof sums_sfx - 1), sums_sfx)) continue;
        char *name = strndup(s->name, nl - (sizeof sums_sfx - 1));
        char cname[512];
        snprintf(cname, sizeof cname, "%s%s", name ? name : "", counts_sfx);
        const gguf_tensor *c = gguf_find_tensor(f, cname);
        uint64_t ne0 = s->ne[0], n_mat = s->n_elems / (ne0 ? ne0 : 1);
        if (!name || !c || s->type != GGML_TYPE_F32 || c->type != GGML_TYPE_F32 || c->n_elems != n_mat || !ne0) {
            ds4_fail(err, "%s: '%s' needs an F32 companion '%s' with one count per matrix", im->path, s->name, cname);
            free(name);
            goto out;
        }
        float *v = malloc(s->n_elems * sizeof *v);
        if (!v) {
            free(name);
            ds4_fail(err, "%s: out of memory", im->path);
            goto out;
        }
        const float *sum = s->data, *cnt = c->data;
        for (uint64_t m = 0; m < n_mat; m++)
            for (uint64_t k = 0; k < ne0; k++) v[m * ne0 + k] = cnt[m] > 0 ? sum[m * ne0 + k] / cnt[m] : 0.0f;
        if (add_entry(im, name, v, s->n_elems, err)) goto out;
    }
    const gguf_kv *kv = gguf_find_kv(f, "imatrix.chunk_count");
    uint32_t chunks;
    if (kv && gguf_get_u32(f, "imatrix.chunk_count", &chunks, NULL) == 0) im->chunks = (int)chunks;
    kv = gguf_find_kv(f, "imatrix.datasets");
    if (kv && kv->type == GGUF_VT_ARRAY && kv->arr_type == GGUF_VT_STRING && kv->arr_count) {
        gguf_str d = gguf_arr_str(kv, 0);
        im->dataset = strndup(d.ptr, d.len);
    }
    rc = 0;
out:
    gguf_close(f);
    return rc;
}

ds4_imatrix *ds4_imatrix_load(const char *path, ds4_error *err) {
    ds4_imatrix *im = calloc(1, sizeof *im);
    if (!im || !(im->path = strdup(path))) {
        free(im);
        ds4_fail(err, "out of memory");
        return NULL;
    }
    im->chunks = -1;
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        ds4_fail(err, "%s: cannot open: %s", path, strerror(errno));
        ds4_imatrix_free(im);
        return NULL;
    }
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = -1;
    char magic[4] = {0};
    size_t got = fread(magic, 1, 4, fp);
    if (got == 4 && !memcmp(magic, "GGUF", 4)) {
        fclose(fp);
        rc = load_gguf(im, err);
    } else {
        /* Legacy files are small (tens of MB at most): read at once. */
        long n = fseek(fp, 0, SEEK_END) == 0 ? ftell(fp) : -1;
        if (n >= 0 && (buf = malloc((size_t)n + 1)) && fseek(fp, 0, SEEK_SET) == 0 &&
            fread(buf, 1, (size_t)n, fp) == (size_t)n)
            len = (size_t)n;
        else
            ds4_fail(err, "%s: cannot read", path);
        fclose(fp);
        if (len) rc = load_legacy(im, buf, len, err);
        else if (n == 0) ds4_fail(err, "%s: empty file", path);
        free(buf);
    }
    if (rc) {
        ds4_imatrix_free(im);
        return NULL;
    }
    return im;
}

void ds4_imatrix_free(ds4_imatrix *im) {
    if (!im) return;
    for (size_t i = 0; i < im->n; i++) {
        free(im->e[i].name);
        free(im->e[i].values);
    }
    free(im->e);
    ds4_strmap_free(&im->index);
    free(im->dataset);
    free(im->path);
    free(im);
}

int ds4_imatrix_get(const ds4_imatrix *im, const char *name, uint64_t ne0, uint64_t n_mat, uint64_t mat,
                    const float **out, ds4_error *err) {
    *out = NULL;
    size_t i;
    if (!ds4_strmap_get(&im->index, name, &i)) return 0;
    const entry *e = &im->e[i];
    if (e->n != ne0 * n_mat)
        return ds4_fail(err, "%s: entry '%s' has %llu values, expected %llu x %llu for the tensor", im->path, name,
                        (unsigned long long)e->n, (unsigned long long)n_mat, (unsigned long long)ne0);
    const float *v = e->values + mat * ne0;
    for (uint64_t k = 0; k < ne0; k++)
        if (v[k] != 0) {
            *out = v;
            return 0;
        }
    return 0; /* never observed: no importance */
}

size_t ds4_imatrix_entries(const ds4_imatrix *im) { return im->n; }
int ds4_imatrix_chunks(const ds4_imatrix *im) { return im->chunks; }
const char *ds4_imatrix_dataset(const ds4_imatrix *im) { return im->dataset ? im->dataset : ""; }
const char *ds4_imatrix_path(const ds4_imatrix *im) { return im->path; }
