#include "formats/sidecar.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "formats/ggml_types.h"
#include "formats/gguf.h"
#include "util/fileio.h"

const char *const ds4_sidecar_family_name[DS4_FAM_COUNT] = {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"};

bool ds4_is_routed_tensor(const char *name) {
    return strstr(name, ".ffn_gate_exps.") || strstr(name, ".ffn_up_exps.") || strstr(name, ".ffn_down_exps.");
}

/* A manifest is a few hundred KB at Flash size; anything far larger is not
 * a manifest and is refused before it is read into memory. */
#define MAX_MANIFEST_BYTES (64u << 20)
/* JSON numbers arrive as doubles: integers are exact up to 2^53. */
#define MAX_JSON_INT 9007199254740992.0

static char *join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

/* The directory part of path ("." or "/" where there is none), malloc'd. */
static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

static bool is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

int ds4_sidecar_locate(const char *dir, char **manifest_path, char **dense_path, ds4_error *err) {
    *manifest_path = *dense_path = NULL;
    if (!is_dir(dir)) return 0;
    static const char *const manifests[] = {DS4_SIDECAR_MANIFEST, "sidecar/" DS4_SIDECAR_MANIFEST};
    static const char *const denses[] = {DS4_SIDECAR_DENSE, "model-dense.gguf"};
    for (size_t i = 0; i < 2 && !*manifest_path; i++) {
        char *p = join(dir, manifests[i]);
        if (p && is_file(p)) *manifest_path = p;
        else free(p);
    }
    for (size_t i = 0; i < 2 && !*dense_path; i++) {
        char *p = join(dir, denses[i]);
        if (p && is_file(p)) *dense_path = p;
        else free(p);
    }
    if (*manifest_path && *dense_path) return 1;
    if (!*manifest_path)
        ds4_fail(err, "%s: a directory but not a sidecar package: no %s (nor sidecar/%s)", dir, DS4_SIDECAR_MANIFEST,
                 DS4_SIDECAR_MANIFEST);
    else
        ds4_fail(err, "%s: sidecar package without its dense model: missing %s/%s", dir, dir, DS4_SIDECAR_DENSE);
    free(*manifest_path);
    free(*dense_path);
    *manifest_path = *dense_path = NULL;
    return -1;
}

void ds4_sidecar_free(ds4_sidecar *sc) {
    if (!sc) return;
    if (sc->layers)
        for (uint32_t i = 0; i < sc->geom.n_layer; i++) {
            free(sc->layers[i].file);
            free(sc->layers[i].path);
        }
    free(sc->layers);
    for (uint32_t i = 0; i < sc->n_files; i++) free(sc->files[i].path);
    free(sc->files);
    free(sc->dir);
    free(sc->manifest);
    free(sc);
}

/* ---------------------------------------------------------------------- */
/* Reading. */

typedef struct parser {
    const char *path; /* the manifest, for messages */
    ds4_error *err;
    char where[160];  /* "entries[7] (layer 2)": the entry being read */
} parser;

static int pfail(parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int pfail(parser *p, const char *fmt, ...) {
    char msg[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (p->where[0]) return ds4_fail(p->err, "%s: %s: %s", p->path, p->where, msg);
    return ds4_fail(p->err, "%s: %s", p->path, msg);
}

static int read_all(const char *path, char **out, ds4_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ds4_fail(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return ds4_fail(err, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > MAX_MANIFEST_BYTES) {
        close(fd);
        return ds4_fail(err, "%s: %lld bytes is too large for a manifest", path, (long long)st.st_size);
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        close(fd);
        return ds4_fail(err, "%s: out of memory", path);
    }
    size_t n = 0;
    while (n < (size_t)st.st_size) {
        ssize_t got = read(fd, buf + n, (size_t)st.st_size - n);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            int e = got < 0 ? errno : EIO;
            free(buf);
            close(fd);
            return ds4_fail(err, "%s: read error: %s", path, strerror(e));
        }
        n += (size_t)got;
    }
    close(fd);
    buf[n] = 0;
    *out = buf;
    return 0;
}

/* Integer field: absent -> *present = false (an error when required). */
static int get_u64(parser *p, const cJSON *obj, const char *key, bool required, uint64_t *out, bool *present) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (present) *present = false;
    if (!v || cJSON_IsNull(v)) {
        if (required) return pfail(p, "missing field '%s'", key);
        return 0;
    }
    if (!cJSON_IsNumber(v)) return pfail(p, "field '%s' is not a number", key);
    double d = v->valuedouble;
    if (!(d >= 0) || d > MAX_JSON_INT || d != (double)(uint64_t)d)
        return pfail(p, "field '%s' = %g is not a non-negative integer", key, d);
    *out = (uint64_t)d;
    if (present) *present = true;
    return 0;
}

static int get_str(parser *p, const cJSON *obj, const char *key, bool required, const char **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v)) return required ? pfail(p, "missing field '%s'", key) : 0;
    if (!cJSON_IsString(v) || !v->valuestring) return pfail(p, "field '%s' is not a string", key);
    *out = v->valuestring;
    return 0;
}

/* Package paths must stay inside the package: the manifest decides which
 * files the engine opens, so an absolute path or ".." is refused. */
static int check_rel_path(parser *p, const char *key, const char *s) {
    if (!*s) return pfail(p, "field '%s' is empty", key);
    if (s[0] == '/') return pfail(p, "field '%s' = \"%s\" must be relative to the package", key, s);
    for (const char *c = s; *c;) {
        const char *end = strchr(c, '/');
        size_t len = end ? (size_t)(end - c) : strlen(c);
        if (len == 2 && c[0] == '.' && c[1] == '.')
            return pfail(p, "field '%s' = \"%s\" leaves the package directory", key, s);
        c += len;
        while (*c == '/') c++;
    }
    return 0;
}

/* quant_type: a ggml type name in any case ("IQ2_XXS", "F32", "mxfp4"). */
static int parse_quant(parser *p, const char *s, uint32_t *type) {
    if (!strcasecmp(s, "MXFP4_NATIVE"))
        return pfail(p, "quant_type MXFP4_NATIVE (plane-split MXFP4 of Apple's native path) is not supported by this engine");
    for (uint32_t t = 0; t < GGML_TYPE_COUNT_MAX; t++) {
        const ggml_type_info *ti = ggml_type_get(t);
        if (ti && !strcasecmp(ti->name, s)) {
            *type = t;
            return 0;
        }
    }
    return pfail(p, "unknown quant_type \"%s\"", s);
}

static int family_id(const char *s) {
    for (int f = 0; f < DS4_FAM_COUNT; f++)
        if (!strcmp(s, ds4_sidecar_family_name[f])) return f;
    return -1;
}

static bool add_ok(uint64_t a, uint64_t b, uint64_t *out) {
    if (a > UINT64_MAX - b) return false;
    *out = a + b;
    return true;
}

static bool mul_ok(uint64_t a, uint64_t b, uint64_t *out) {
    if (a && b > UINT64_MAX / a) return false;
    *out = a * b;
    return true;
}

/* Per-entry facts gathered before a layer can be checked as a whole. */
typedef struct entry_seen {
    bool present;
    bool family_major;
    bool has_stride;
    uint64_t stride, exact;
    int index; /* position in "entries", for messages */
} entry_seen;

/* A family's [in, out, n_expert] against the model's widths and count. */
static int check_shape(parser *p, const ds4_sidecar_family *fam, int f, const ds4_sidecar_geom *g) {
    uint64_t want[3] = {g->n_embd, g->n_ff_exp, g->n_expert};
    if (f == DS4_FAM_DOWN) want[0] = g->n_ff_exp, want[1] = g->n_embd;
    if (fam->shape[0] != want[0] || fam->shape[1] != want[1] || fam->shape[2] != want[2])
        return pfail(p, "shape [%llu, %llu, %llu] does not match the model's [%llu, %llu, %llu]",
                     (unsigned long long)fam->shape[0], (unsigned long long)fam->shape[1],
                     (unsigned long long)fam->shape[2], (unsigned long long)want[0], (unsigned long long)want[1],
                     (unsigned long long)want[2]);
    return 0;
}

static int parse_entry(parser *p, const cJSON *e, int idx, ds4_sidecar *sc, entry_seen *seen /* [n_layer][3] */) {
    const ds4_sidecar_geom *g = &sc->geom;
    snprintf(p->where, sizeof p->where, "entries[%d]", idx);
    if (!cJSON_IsObject(e)) return pfail(p, "not an object");
    uint64_t layer;
    const char *family, *quant, *file;
    if (get_u64(p, e, "layer", true, &layer, NULL)) return -1;
    if (get_str(p, e, "tensor_family", true, &family)) return -1;
    snprintf(p->where, sizeof p->where, "entries[%d] (layer %llu %s)", idx, (unsigned long long)layer, family);
    int f = family_id(family);
    if (f < 0) return pfail(p, "tensor_family \"%s\" is not a routed expert family (%s, %s, %s)", family,
                            ds4_sidecar_family_name[0], ds4_sidecar_family_name[1], ds4_sidecar_family_name[2]);
    if (layer >= g->n_layer) return pfail(p, "layer %llu is outside the model's %u layers", (unsigned long long)layer, g->n_layer);
    entry_seen *s = &seen[layer * DS4_FAM_COUNT + (uint64_t)f];
    if (s->present) return pfail(p, "duplicate entry (also entries[%d])", s->index);
    if (get_str(p, e, "quant_type", true, &quant)) return -1;
    ds4_sidecar_family *fam = &sc->layers[layer].fam[f];
    if (parse_quant(p, quant, &fam->type)) return -1;

    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    if (!shape) return pfail(p, "missing field 'shape'");
    if (!cJSON_IsArray(shape) || cJSON_GetArraySize(shape) != 3) return pfail(p, "field 'shape' is not an array of 3 integers");
    for (int d = 0; d < 3; d++) {
        const cJSON *v = cJSON_GetArrayItem(shape, d);
        if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0) || v->valuedouble > MAX_JSON_INT ||
            v->valuedouble != (double)(uint64_t)v->valuedouble)
            return pfail(p, "field 'shape' is not an array of 3 integers");
        fam->shape[d] = (uint64_t)v->valuedouble;
    }
    if (check_shape(p, fam, f, g)) return -1;

    if (get_str(p, e, "repacked_file", true, &file)) return -1;
    if (check_rel_path(p, "repacked_file", file)) return -1;
    ds4_sidecar_layer *L = &sc->layers[layer];
    if (!L->file) {
        if (!(L->file = strdup(file))) return pfail(p, "out of memory");
    } else if (strcmp(L->file, file)) {
        return pfail(p, "repacked_file \"%s\" differs from the layer's other families (\"%s\")", file, L->file);
    }
    if (get_u64(p, e, "repacked_offset", true, &fam->offset, NULL)) return -1;
    if (get_u64(p, e, "bytes_per_expert", true, &fam->bytes, NULL)) return -1;
    if (fam->bytes == 0) return pfail(p, "bytes_per_expert is 0");
    bool has_major = false, has_exact = false;
    if (get_u64(p, e, "expert_stride", false, &s->stride, &s->has_stride)) return -1;
    if (get_u64(p, e, "exact_byte_length", false, &s->exact, &has_exact)) return -1;
    const cJSON *major = cJSON_GetObjectItemCaseSensitive(e, "expert_major");
    if (major && !cJSON_IsNull(major)) {
        if (!cJSON_IsBool(major)) return pfail(p, "field 'expert_major' is not a boolean");
        has_major = true;
    }
    /* ds4-ssd's rule: an explicit expert_major wins; without it, an entry
     * whose exact_byte_length exceeds one expert is a whole-family run. */
    s->family_major = has_major ? !cJSON_IsTrue(major) : (has_exact && s->exact > fam->bytes);
    if (!has_exact) s->exact = 0;
    const char *layout;
    if (get_str(p, e, "storage_layout", false, &layout)) return -1;
    if (layout) return pfail(p, "storage_layout \"%s\" is not supported (plain ggml blocks only)", layout);

    if (!ggml_row_ok(fam->type, fam->shape[0]))
        return pfail(p, "rows of %llu values do not fill whole %s blocks", (unsigned long long)fam->shape[0],
                     ggml_type_name(fam->type));
    uint64_t want_bytes;
    if (!ggml_nbytes(fam->type, fam->shape[0], &fam->row_bytes) || !mul_ok(fam->shape[1], fam->row_bytes, &want_bytes))
        return pfail(p, "size overflow");
    if (fam->bytes != want_bytes)
        return pfail(p, "bytes_per_expert %llu is not %llu rows x %llu bytes = %llu", (unsigned long long)fam->bytes,
                     (unsigned long long)fam->shape[1], (unsigned long long)fam->row_bytes, (unsigned long long)want_bytes);
    s->present = true;
    s->index = idx;
    return 0;
}

/* Checks a complete layer and lays out its in-memory record. */
static int finish_layer(parser *p, ds4_sidecar *sc, uint32_t il, const entry_seen *seen) {
    ds4_sidecar_layer *L = &sc->layers[il];
    uint64_t X = sc->geom.n_expert;
    snprintf(p->where, sizeof p->where, "layer %u", il);
    for (int f = 0; f < DS4_FAM_COUNT; f++)
        if (!seen[f].present) return pfail(p, "no entry for family %s", ds4_sidecar_family_name[f]);
    if (L->fam[DS4_FAM_GATE].type != L->fam[DS4_FAM_UP].type)
        return pfail(p, "ffn_gate_exps (%s) and ffn_up_exps (%s) must have the same quant_type",
                     ggml_type_name(L->fam[DS4_FAM_GATE].type), ggml_type_name(L->fam[DS4_FAM_UP].type));
    L->family_major = seen[0].family_major;
    for (int f = 1; f < DS4_FAM_COUNT; f++)
        if (seen[f].family_major != L->family_major)
            return pfail(p, "mixes expert-major and family-major entries");
    if (!(L->path = join(sc->dir, L->file))) return pfail(p, "out of memory");
    struct stat st;
    if (stat(L->path, &st) != 0) return pfail(p, "%s: %s", L->path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return pfail(p, "%s: not a regular file", L->path);
    L->file_bytes = (uint64_t)st.st_size;

    if (L->family_major) {
        /* Records are synthesized in memory: the families back to back. */
        uint64_t mem = 0;
        for (int f = 0; f < DS4_FAM_COUNT; f++) {
            ds4_sidecar_family *fam = &L->fam[f];
            uint64_t run, end;
            if (!mul_ok(fam->bytes, X, &run) || !add_ok(fam->offset, run, &end)) return pfail(p, "size overflow");
            if (seen[f].exact && seen[f].exact != run)
                return pfail(p, "%s: exact_byte_length %llu is not %llu experts x %llu bytes", ds4_sidecar_family_name[f],
                             (unsigned long long)seen[f].exact, (unsigned long long)X, (unsigned long long)fam->bytes);
            if (end > L->file_bytes)
                return pfail(p, "%s: truncated: %s needs %llu bytes, the file has %llu", L->path,
                             ds4_sidecar_family_name[f], (unsigned long long)end, (unsigned long long)L->file_bytes);
            for (int o = 0; o < f; o++) {
                uint64_t oend = L->fam[o].offset + L->fam[o].bytes * X;
                if (fam->offset < oend && L->fam[o].offset < end)
                    return pfail(p, "family runs %s and %s overlap", ds4_sidecar_family_name[o], ds4_sidecar_family_name[f]);
            }
            fam->mem_off = mem;
            mem += fam->bytes;
        }
        L->record_bytes = mem;
        L->stride = 0;
    } else {
        uint64_t rec_end = 0;
        for (int f = 0; f < DS4_FAM_COUNT; f++) {
            ds4_sidecar_family *fam = &L->fam[f];
            uint64_t end;
            if (!add_ok(fam->offset, fam->bytes, &end)) return pfail(p, "size overflow");
            if (end > rec_end) rec_end = end;
            for (int o = 0; o < f; o++)
                if (fam->offset < L->fam[o].offset + L->fam[o].bytes && L->fam[o].offset < end)
                    return pfail(p, "families %s and %s overlap inside a record", ds4_sidecar_family_name[o],
                                 ds4_sidecar_family_name[f]);
            fam->mem_off = fam->offset;
        }
        uint64_t stride = 0;
        for (int f = 0; f < DS4_FAM_COUNT; f++) {
            if (!seen[f].has_stride) continue;
            if (stride && seen[f].stride != stride)
                return pfail(p, "expert_stride differs between families (%llu vs %llu)", (unsigned long long)stride,
                             (unsigned long long)seen[f].stride);
            stride = seen[f].stride;
        }
        if (!stride) stride = rec_end; /* absent: records packed back to back */
        if (stride < rec_end)
            return pfail(p, "expert_stride %llu is smaller than a record (%llu bytes)", (unsigned long long)stride,
                         (unsigned long long)rec_end);
        uint64_t need;
        if (!mul_ok(X - 1, stride, &need) || !add_ok(need, rec_end, &need)) return pfail(p, "size overflow");
        if (L->file_bytes < need)
            return pfail(p, "%s: truncated: %llu experts of %llu-byte records need %llu bytes, the file has %llu", L->path,
                         (unsigned long long)X, (unsigned long long)stride, (unsigned long long)need,
                         (unsigned long long)L->file_bytes);
        L->stride = stride;
        L->record_bytes = rec_end;
    }
    uint64_t layer_bytes;
    if (!mul_ok(L->record_bytes, X, &layer_bytes) || !add_ok(sc->expert_bytes, layer_bytes, &sc->expert_bytes))
        return pfail(p, "size overflow");
    if (L->record_bytes > sc->max_record) sc->max_record = L->record_bytes;
    return 0;
}

static int parse_files(parser *p, const cJSON *files, ds4_sidecar *sc) {
    if (!files || cJSON_IsNull(files)) return 0;
    if (!cJSON_IsArray(files)) return pfail(p, "field 'files' is not an array");
    int n = cJSON_GetArraySize(files);
    sc->files = calloc((size_t)n + 1, sizeof *sc->files);
    if (!sc->files) return pfail(p, "out of memory");
    for (int i = 0; i < n; i++) {
        const cJSON *o = cJSON_GetArrayItem(files, i);
        snprintf(p->where, sizeof p->where, "files[%d]", i);
        if (!cJSON_IsObject(o)) return pfail(p, "not an object");
        ds4_sidecar_file *f = &sc->files[sc->n_files];
        const char *path, *sha;
        if (get_str(p, o, "path", true, &path) || check_rel_path(p, "path", path)) return -1;
        if (get_u64(p, o, "bytes", true, &f->bytes, NULL)) return -1;
        if (get_str(p, o, "sha256", true, &sha)) return -1;
        if (strlen(sha) != 64 || strspn(sha, "0123456789abcdefABCDEF") != 64)
            return pfail(p, "sha256 \"%s\" is not 64 hex digits", sha);
        for (int k = 0; k < 64; k++) f->sha256[k] = (char)(sha[k] >= 'A' && sha[k] <= 'F' ? sha[k] - 'A' + 'a' : sha[k]);
        f->sha256[64] = 0;
        if (!(f->path = strdup(path))) return pfail(p, "out of memory");
        sc->n_files++;
    }
    return 0;
}

/* The optional "model" block, when it states counts, must agree with the
 * dense GGUF: a package exported from another model is refused here with
 * both numbers instead of failing later on shapes. */
static int check_model_block(parser *p, const cJSON *root, const ds4_sidecar_geom *g) {
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!m || !cJSON_IsObject(m)) return 0;
    p->where[0] = 0;
    uint64_t v;
    bool has;
    if (get_u64(p, m, "expert_count", false, &v, &has)) return -1;
    if (has && v != g->n_expert)
        return pfail(p, "model.expert_count %llu disagrees with the dense model's %u experts", (unsigned long long)v, g->n_expert);
    if (get_u64(p, m, "layer_count", false, &v, &has)) return -1;
    if (has && v != g->n_layer)
        return pfail(p, "model.layer_count %llu disagrees with the dense model's %u layers", (unsigned long long)v, g->n_layer);
    return 0;
}

ds4_sidecar *ds4_sidecar_open(const char *manifest_path, const ds4_sidecar_geom *geom, ds4_error *err) {
    parser p = {.path = manifest_path, .err = err};
    char *text = NULL;
    cJSON *root = NULL;
    entry_seen *seen = NULL;
    ds4_sidecar *sc = calloc(1, sizeof *sc);
    if (!sc) {
        ds4_fail(err, "%s: out of memory", manifest_path);
        return NULL;
    }
    sc->geom = *geom;
    if (geom->n_layer == 0 || geom->n_expert == 0) {
        pfail(&p, "the model has no routed experts to stream");
        goto fail;
    }
    if (!(sc->manifest = strdup(manifest_path))) goto oom;
    /* Layer files are named relative to the manifest's directory. */
    if (!(sc->dir = dir_of(manifest_path))) goto oom;
    sc->layers = calloc(geom->n_layer, sizeof *sc->layers);
    seen = calloc((size_t)geom->n_layer * DS4_FAM_COUNT, sizeof *seen);
    if (!sc->layers || !seen) goto oom;
    if (read_all(manifest_path, &text, err)) goto fail;
    root = cJSON_Parse(text);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        pfail(&p, "not valid JSON (near byte %lld)", at && at >= text ? (long long)(at - text) : -1LL);
        goto fail;
    }
    if (!cJSON_IsObject(root)) {
        pfail(&p, "the top level is not a JSON object");
        goto fail;
    }
    if (check_model_block(&p, root, geom)) goto fail;
    const cJSON *entries = cJSON_GetObjectItemCaseSensitive(root, "entries");
    if (!entries || !cJSON_IsArray(entries)) {
        pfail(&p, "missing the 'entries' array");
        goto fail;
    }
    int n = cJSON_GetArraySize(entries);
    uint64_t want = (uint64_t)geom->n_layer * DS4_FAM_COUNT;
    for (int i = 0; i < n; i++)
        if (parse_entry(&p, cJSON_GetArrayItem(entries, i), i, sc, seen)) goto fail;
    p.where[0] = 0;
    if ((uint64_t)n != want) {
        pfail(&p, "%d entries, expected %llu (%u layers x 3 families)", n, (unsigned long long)want, geom->n_layer);
        goto fail;
    }
    for (uint32_t il = 0; il < geom->n_layer; il++)
        if (finish_layer(&p, sc, il, seen + (size_t)il * DS4_FAM_COUNT)) goto fail;
    if (parse_files(&p, cJSON_GetObjectItemCaseSensitive(root, "files"), sc)) goto fail;
    cJSON_Delete(root);
    free(text);
    free(seen);
    return sc;
oom:
    ds4_fail(err, "%s: out of memory", manifest_path);
fail:
    cJSON_Delete(root);
    free(text);
    free(seen);
    ds4_sidecar_free(sc);
    return NULL;
}

uint32_t ds4_sidecar_expert_reads(const ds4_sidecar *sc, uint32_t il, uint32_t e, ds4_sidecar_read out[DS4_FAM_COUNT]) {
    const ds4_sidecar_layer *L = &sc->layers[il];
    if (!L->family_major) {
        out[0] = (ds4_sidecar_read){(uint64_t)e * L->stride, L->record_bytes, 0};
        return 1;
    }
    for (int f = 0; f < DS4_FAM_COUNT; f++) {
        const ds4_sidecar_family *fam = &L->fam[f];
        out[f] = (ds4_sidecar_read){fam->offset + (uint64_t)e * fam->bytes - fam->lead, fam->bytes + fam->lead,
                                    fam->mem_off - fam->lead};
    }
    return DS4_FAM_COUNT;
}

/* GGUF tensors start 32-byte aligned, so an expert's part of a run seldom
 * starts on a 4 KiB block, which O_DIRECT needs (offset and buffer). Where
 * every expert of a run has the same offset within its block (bytes per
 * expert a multiple of the block), its part is read from the block start
 * before it, into a record whose parts each start that many bytes into a
 * block of their own. */
#define GGUF_IO_BLOCK 4096u
static void align_runs(ds4_sidecar *sc, ds4_sidecar_layer *L) {
    uint64_t at = 0;
    for (int f = 0; f < DS4_FAM_COUNT; f++) {
        ds4_sidecar_family *fam = &L->fam[f];
        fam->lead = fam->bytes % GGUF_IO_BLOCK == 0 ? fam->offset % GGUF_IO_BLOCK : 0;
        fam->mem_off = at + fam->lead;
        at = (fam->mem_off + fam->bytes + GGUF_IO_BLOCK - 1) / GGUF_IO_BLOCK * GGUF_IO_BLOCK;
    }
    L->record_bytes = at;
    if (at > sc->max_record) sc->max_record = at;
}

/* A plain GGUF seen as a package: each layer's three routed tensors are
 * family-major runs of its one file (expert e of a family at the tensor's
 * offset + e x bytes per expert), so the package sources read experts
 * straight out of the model file. */
ds4_sidecar *ds4_sidecar_from_gguf(const gguf_file *f, const ds4_sidecar_geom *geom, ds4_error *err) {
    parser p = {.path = f->path, .err = err};
    entry_seen seen[DS4_FAM_COUNT];
    ds4_sidecar *sc = calloc(1, sizeof *sc);
    if (!sc) {
        ds4_fail(err, "%s: out of memory", f->path);
        return NULL;
    }
    sc->geom = *geom;
    sc->in_model_file = true;
    if (geom->n_layer == 0 || geom->n_expert == 0) {
        pfail(&p, "the model has no routed experts to stream");
        goto fail;
    }
    /* layer files are named relative to dir, as in a package */
    const char *slash = strrchr(f->path, '/'), *base = slash ? slash + 1 : f->path;
    sc->manifest = strdup(f->path);
    sc->dir = dir_of(f->path);
    sc->layers = calloc(geom->n_layer, sizeof *sc->layers);
    if (!sc->manifest || !sc->dir || !sc->layers) goto oom;
    for (uint32_t il = 0; il < geom->n_layer; il++) {
        ds4_sidecar_layer *L = &sc->layers[il];
        if (!(L->file = strdup(base))) goto oom;
        memset(seen, 0, sizeof seen);
        for (int fm = 0; fm < DS4_FAM_COUNT; fm++) {
            char name[96];
            snprintf(name, sizeof name, "blk.%u.%s.weight", il, ds4_sidecar_family_name[fm]);
            snprintf(p.where, sizeof p.where, "tensor %s", name);
            const gguf_tensor *t = gguf_find_tensor(f, name);
            if (!t) {
                pfail(&p, "missing (a GGUF streams its experts only when it holds them)");
                goto fail;
            }
            ds4_sidecar_family *fam = &L->fam[fm];
            fam->type = t->type;
            for (int d = 0; d < 3; d++) fam->shape[d] = t->ne[d];
            if (t->n_dims != 3 || check_shape(&p, fam, fm, geom)) {
                if (t->n_dims != 3) pfail(&p, "has %u dimensions, expected 3", t->n_dims);
                goto fail;
            }
            if (!ggml_nbytes(fam->type, fam->shape[0], &fam->row_bytes) ||
                !mul_ok(fam->shape[1], fam->row_bytes, &fam->bytes) || fam->bytes * geom->n_expert != t->nbytes) {
                pfail(&p, "%llu bytes are not %u experts of whole %s rows", (unsigned long long)t->nbytes, geom->n_expert,
                      ggml_type_name(fam->type));
                goto fail;
            }
            fam->offset = f->data_offset + t->offset;
            seen[fm] = (entry_seen){.present = true, .family_major = true, .index = (int)il};
        }
        if (finish_layer(&p, sc, il, seen)) goto fail;
        align_runs(sc, L);
    }
    return sc;
oom:
    ds4_fail(err, "%s: out of memory", f->path);
fail:
    ds4_sidecar_free(sc);
    return NULL;
}

/* ---------------------------------------------------------------------- */
/* Writing. */

static cJSON *num(double v) { return cJSON_CreateNumber(v); }

int ds4_sidecar_write_manifest(const char *path, const ds4_sidecar *sc, const ds4_sidecar_write_info *info,
                               ds4_error *err) {
    cJSON *root = cJSON_CreateObject();
    char *text = NULL;
    char tmp[4096] = "";
    int rc = -1;
    if (!root) goto oom;
    char when[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    /* The fields ds4-ssd's exporter writes, so either tool reads the other's
     * packages; "files" (sizes and SHA-256) is ours and ignorable. */
    cJSON_AddItemToObject(root, "schema_version", num(1));
    cJSON_AddStringToObject(root, "sidecar_kind", "flashmoe_gguf");
    cJSON_AddStringToObject(root, "layout", "layer_major_expert");
    cJSON_AddStringToObject(root, "generated_at", when);
    if (info->generator) cJSON_AddStringToObject(root, "generator", info->generator);
    cJSON_AddBoolToObject(root, "include_shared", 0);
    cJSON *filters = cJSON_AddObjectToObject(root, "filters");
    if (filters) {
        cJSON_AddNullToObject(filters, "layers");
        cJSON_AddNullToObject(filters, "families");
    }
    cJSON *source = cJSON_AddObjectToObject(root, "source");
    cJSON *mf = source ? cJSON_AddArrayToObject(source, "model_files") : NULL;
    if (mf && info->source_path) cJSON_AddItemToArray(mf, cJSON_CreateString(info->source_path));
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    if (model) {
        cJSON_AddStringToObject(model, "arch", info->arch ? info->arch : "deepseek4");
        cJSON_AddItemToObject(model, "expert_count", num(sc->geom.n_expert));
        cJSON_AddItemToObject(model, "expert_used_count", num(info->expert_used));
        cJSON_AddNullToObject(model, "leading_dense_block_count");
        cJSON_AddStringToObject(model, "sidecar_layout", "expert-major");
        cJSON_AddItemToObject(model, "layer_count", num(sc->geom.n_layer));
    }
    cJSON *entries = cJSON_AddArrayToObject(root, "entries");
    if (!entries) goto oom;
    for (uint32_t il = 0; il < sc->geom.n_layer; il++) {
        const ds4_sidecar_layer *L = &sc->layers[il];
        for (int f = 0; f < DS4_FAM_COUNT; f++) {
            const ds4_sidecar_family *fam = &L->fam[f];
            cJSON *e = cJSON_CreateObject();
            if (!e) goto oom;
            cJSON_AddItemToArray(entries, e);
            char tname[96];
            snprintf(tname, sizeof tname, "blk.%u.%s.weight", il, ds4_sidecar_family_name[f]);
            cJSON_AddItemToObject(e, "layer", num(il));
            cJSON_AddStringToObject(e, "tensor_family", ds4_sidecar_family_name[f]);
            cJSON_AddStringToObject(e, "tensor_name", tname);
            cJSON_AddStringToObject(e, "quant_type", ggml_type_name(fam->type));
            cJSON *shape = cJSON_AddArrayToObject(e, "shape");
            for (int d = 0; shape && d < 3; d++) cJSON_AddItemToArray(shape, num((double)fam->shape[d]));
            cJSON_AddStringToObject(e, "repacked_file", L->file);
            cJSON_AddItemToObject(e, "repacked_offset", num((double)fam->offset));
            cJSON_AddItemToObject(e, "bytes_per_expert", num((double)fam->bytes));
            cJSON_AddItemToObject(e, "expert_stride", num((double)L->stride));
            cJSON_AddBoolToObject(e, "expert_major", !L->family_major);
            cJSON_AddItemToObject(e, "exact_byte_length", num((double)fam->bytes * sc->geom.n_expert));
            cJSON_AddItemToObject(e, "expert_count", num(sc->geom.n_expert));
        }
    }
    cJSON *files = cJSON_AddArrayToObject(root, "files");
    if (!files) goto oom;
    for (uint32_t i = 0; i < sc->n_files; i++) {
        cJSON *o = cJSON_CreateObject();
        if (!o) goto oom;
        cJSON_AddItemToArray(files, o);
        cJSON_AddStringToObject(o, "path", sc->files[i].path);
        cJSON_AddItemToObject(o, "bytes", num((double)sc->files[i].bytes));
        cJSON_AddStringToObject(o, "sha256", sc->files[i].sha256);
    }
    if (!(text = cJSON_Print(root))) goto oom;
    if (ds4_atomic_begin(path, tmp, sizeof tmp, err)) goto out;
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        ds4_fail(err, "%s: cannot create: %s", tmp, strerror(errno));
        goto out;
    }
    size_t len = strlen(text);
    int bad = fwrite(text, 1, len, fp) != len || fputc('\n', fp) == EOF || fflush(fp) != 0 || fsync(fileno(fp)) != 0;
    int e = errno;
    if (fclose(fp) != 0 && !bad) bad = 1, e = errno;
    if (bad) {
        ds4_fail(err, "%s: write error: %s", tmp, strerror(e));
        goto out;
    }
    if (ds4_atomic_commit(tmp, path, err)) goto out;
    tmp[0] = 0;
    rc = 0;
    goto out;
oom:
    ds4_fail(err, "%s: out of memory writing the manifest", path);
out:
    if (tmp[0]) ds4_atomic_abort(tmp);
    free(text);
    cJSON_Delete(root);
    return rc;
}
