/* safetensors reader: every shard is mapped read-only, its JSON header parsed
 * with cJSON and each entry checked (dtype, shape, offsets inside the data
 * section, size consistent with the shape) before any st_tensor points into
 * the mapping. Sharded checkpoints are cross-checked against their index. */
#include "formats/safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cJSON.h>

#include "util/half.h"
#include "util/strmap.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is read as little-endian host values");

/* The reference implementation refuses headers above 100 MB; so do we,
 * which also bounds what a corrupt length can make cJSON chew through. */
#define MAX_HEADER_BYTES 100000000ull
#define MAX_INDEX_BYTES (256ull << 20)
#define INDEX_NAME "model.safetensors.index.json"
/* Largest integer a JSON number (a double in cJSON) holds exactly. */
#define MAX_JSON_INT 9007199254740992.0

typedef struct st_shard {
    char *path;
    const uint8_t *map;
    size_t size;
} st_shard;

struct st_checkpoint {
    st_shard *shards;
    size_t n_shards, shards_cap;
    st_tensor *tensors;
    size_t n_tensors, tensors_cap;
    ds4_strmap index; /* name -> tensors[] index */
};

static const struct {
    const char *name;
    size_t size;
} k_dtypes[] = {
    [ST_F32] = {"F32", 4},     [ST_F16] = {"F16", 2},         [ST_BF16] = {"BF16", 2},
    [ST_F8_E4M3] = {"F8_E4M3", 1}, [ST_F8_E8M0] = {"F8_E8M0", 1}, [ST_U8] = {"U8", 1},
    [ST_I8] = {"I8", 1},       [ST_I32] = {"I32", 4},         [ST_I64] = {"I64", 8},
    [ST_F64] = {"F64", 8},
};
#define N_DTYPES (sizeof k_dtypes / sizeof k_dtypes[0])

const char *st_dtype_name(int dtype) {
    return dtype >= 0 && (size_t)dtype < N_DTYPES ? k_dtypes[dtype].name : "unknown";
}

size_t st_dtype_size(int dtype) { return dtype >= 0 && (size_t)dtype < N_DTYPES ? k_dtypes[dtype].size : 0; }

static int dtype_from_name(const char *s) {
    for (size_t i = 0; i < N_DTYPES; i++)
        if (strcmp(s, k_dtypes[i].name) == 0) return (int)i;
    return -1;
}

static int grow(void **arr, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap * 2 : 16;
    if (n < need) n = need;
    if (n > SIZE_MAX / elem) return -1;
    void *p = realloc(*arr, n * elem);
    if (!p) return -1;
    *arr = p;
    *cap = n;
    return 0;
}

/* ---------------------------------------------------------------------- */
/* One shard. */

static int map_file(st_shard *s, ds4_error *err) {
    int fd = open(s->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ds4_fail(err, "%s: cannot open: %s", s->path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return ds4_fail(err, "%s: not a regular file", s->path);
    }
    if (st.st_size < 8) {
        close(fd);
        return ds4_fail(err, "%s: file too small for a safetensors header length (size %lld)", s->path,
                        (long long)st.st_size);
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        return ds4_fail(err, "%s: file too large to map", s->path);
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return ds4_fail(err, "%s: mmap failed: %s", s->path, strerror(errno));
    s->map = m;
    s->size = (size_t)st.st_size;
    return 0;
}

/* A JSON number that is a non-negative integer exactly representable. */
static bool json_uint(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return false;
    double d = j->valuedouble;
    if (!(d >= 0 && d <= MAX_JSON_INT) || d != floor(d)) return false;
    *out = (uint64_t)d;
    return true;
}

static int parse_entry(st_checkpoint *c, uint32_t shard_i, const cJSON *e, const uint8_t *data, uint64_t data_size,
                       ds4_error *err) {
    const char *path = c->shards[shard_i].path;
    const char *name = e->string;
    if (!cJSON_IsObject(e)) return ds4_fail(err, "%s: tensor '%s': entry is not a JSON object", path, name);

    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    if (!cJSON_IsString(jd)) return ds4_fail(err, "%s: tensor '%s': field 'dtype' missing or not a string", path, name);
    int dtype = dtype_from_name(jd->valuestring);
    if (dtype < 0) return ds4_fail(err, "%s: tensor '%s': unknown dtype '%s'", path, name, jd->valuestring);

    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    if (!cJSON_IsArray(js)) return ds4_fail(err, "%s: tensor '%s': field 'shape' missing or not an array", path, name);
    int nd = cJSON_GetArraySize(js);
    if (nd > ST_MAX_DIMS)
        return ds4_fail(err, "%s: tensor '%s': shape has %d dimensions (at most %d supported)", path, name, nd,
                        ST_MAX_DIMS);
    st_tensor t = {.dtype = dtype, .n_dims = (uint32_t)nd, .shard = shard_i};
    uint64_t elems = 1;
    int d = 0;
    for (const cJSON *x = js->child; x; x = x->next, d++) {
        if (!json_uint(x, &t.shape[d]))
            return ds4_fail(err, "%s: tensor '%s': field 'shape' element %d is not a non-negative integer", path, name, d);
        if (t.shape[d] && elems > UINT64_MAX / t.shape[d])
            return ds4_fail(err, "%s: tensor '%s': field 'shape' element count overflows 64 bits", path, name);
        elems *= t.shape[d];
    }
    t.n_elems = elems;
    size_t esz = st_dtype_size(dtype);
    if (elems > UINT64_MAX / esz)
        return ds4_fail(err, "%s: tensor '%s': byte size of shape overflows 64 bits", path, name);
    t.nbytes = elems * esz;

    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    uint64_t begin, end;
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2 || !json_uint(jo->child, &begin) ||
        !json_uint(jo->child->next, &end))
        return ds4_fail(err, "%s: tensor '%s': field 'data_offsets' is not an array of two non-negative integers", path,
                        name);
    if (begin > end)
        return ds4_fail(err, "%s: tensor '%s': field 'data_offsets' [%" PRIu64 ", %" PRIu64 "] ends before it begins",
                        path, name, begin, end);
    if (end > data_size)
        return ds4_fail(err,
                        "%s: tensor '%s': field 'data_offsets' [%" PRIu64 ", %" PRIu64
                        "] is outside the data section (%" PRIu64 " bytes)",
                        path, name, begin, end, data_size);
    if (end - begin != t.nbytes)
        return ds4_fail(err,
                        "%s: tensor '%s': field 'data_offsets' spans %" PRIu64 " bytes but shape and dtype %s need %" PRIu64,
                        path, name, end - begin, st_dtype_name(dtype), t.nbytes);
    t.data = data + begin;

    if (grow((void **)&c->tensors, &c->tensors_cap, c->n_tensors + 1, sizeof(st_tensor)))
        return ds4_fail(err, "%s: out of memory", path);
    if (!(t.name = strdup(name))) return ds4_fail(err, "%s: out of memory", path);
    size_t prev;
    int r = ds4_strmap_put(&c->index, t.name, c->n_tensors, &prev);
    if (r <= 0) {
        free(t.name);
        if (r < 0) return ds4_fail(err, "%s: out of memory", path);
        return ds4_fail(err, "%s: tensor '%s' is duplicated (also in %s)", path, name,
                        c->shards[c->tensors[prev].shard].path);
    }
    c->tensors[c->n_tensors++] = t;
    return 0;
}

static int parse_shard(st_checkpoint *c, uint32_t shard_i, ds4_error *err) {
    st_shard *s = &c->shards[shard_i];
    if (map_file(s, err)) return -1;
    uint64_t hlen;
    memcpy(&hlen, s->map, 8);
    uint64_t avail = s->size - 8;
    if (hlen > avail)
        return ds4_fail(err, "%s: header length %" PRIu64 " extends past end of file (size %zu)", s->path, hlen, s->size);
    if (hlen > MAX_HEADER_BYTES)
        return ds4_fail(err, "%s: header length %" PRIu64 " exceeds the %llu-byte limit", s->path, hlen,
                        MAX_HEADER_BYTES);
    const char *json = (const char *)s->map + 8;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, (size_t)hlen, &end, 0);
    if (!root) {
        long at = end && end >= json && end <= json + hlen ? (long)(end - json) : -1;
        return ds4_fail(err, "%s: header is not valid JSON (error near header byte %ld)", s->path, at);
    }
    int rc = 0;
    if (!cJSON_IsObject(root)) {
        rc = ds4_fail(err, "%s: header is not a JSON object", s->path);
    } else {
        const uint8_t *data = s->map + 8 + hlen;
        uint64_t data_size = avail - hlen;
        for (const cJSON *e = root->child; e && rc == 0; e = e->next) {
            if (strcmp(e->string, "__metadata__") == 0) continue;
            rc = parse_entry(c, shard_i, e, data, data_size, err);
        }
    }
    cJSON_Delete(root);
    return rc;
}

static int add_shard(st_checkpoint *c, const char *path, ds4_error *err) {
    if (grow((void **)&c->shards, &c->shards_cap, c->n_shards + 1, sizeof(st_shard)))
        return ds4_fail(err, "%s: out of memory", path);
    st_shard *s = &c->shards[c->n_shards];
    memset(s, 0, sizeof *s);
    if (!(s->path = strdup(path))) return ds4_fail(err, "%s: out of memory", path);
    c->n_shards++;
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Index files. */

static char *read_small_file(const char *path, size_t *len, ds4_error *err) {
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        ds4_fail(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (grow((void **)&buf, &cap, n + 65536, 1)) {
            ds4_fail(err, "%s: out of memory", path);
            break;
        }
        size_t k = fread(buf + n, 1, cap - n, fp);
        n += k;
        if (n > MAX_INDEX_BYTES) {
            ds4_fail(err, "%s: larger than %llu bytes: not an index file", path, MAX_INDEX_BYTES);
            break;
        }
        if (k == 0) {
            if (ferror(fp)) {
                ds4_fail(err, "%s: read error", path);
                break;
            }
            fclose(fp);
            *len = n;
            return buf;
        }
    }
    fclose(fp);
    free(buf);
    return NULL;
}

/* Joins the index's directory with a shard name. */
static char *sibling_path(const char *index_path, const char *name) {
    const char *slash = strrchr(index_path, '/');
    size_t dlen = slash ? (size_t)(slash - index_path) + 1 : 0;
    size_t n = dlen + strlen(name) + 1;
    char *p = malloc(n);
    if (!p) return NULL;
    memcpy(p, index_path, dlen);
    strcpy(p + dlen, name);
    return p;
}

static int open_index(st_checkpoint *c, const char *path, ds4_error *err) {
    size_t len;
    char *text = read_small_file(path, &len, err);
    if (!text) return -1;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        long at = end && end >= text && end <= text + len ? (long)(end - text) : -1;
        free(text);
        return ds4_fail(err, "%s: not valid JSON (error near byte %ld)", path, at);
    }
    free(text);

    int rc = 0;
    ds4_strmap shard_of = DS4_STRMAP_INIT; /* shard file name -> shard index */
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        rc = ds4_fail(err, "%s: field 'weight_map' missing or not an object", path);
        goto done;
    }
    /* Pass 1: the distinct shards, in order of first mention. */
    for (const cJSON *e = wm->child; e && rc == 0; e = e->next) {
        if (!cJSON_IsString(e) || !e->valuestring[0]) {
            rc = ds4_fail(err, "%s: field 'weight_map' entry '%s' is not a shard file name", path, e->string);
            break;
        }
        int r = ds4_strmap_put(&shard_of, e->valuestring, c->n_shards, NULL);
        if (r < 0) rc = ds4_fail(err, "%s: out of memory", path);
        if (r != 1) continue;
        char *sp = sibling_path(path, e->valuestring);
        if (!sp) {
            rc = ds4_fail(err, "%s: out of memory", path);
            break;
        }
        rc = add_shard(c, sp, err);
        free(sp);
    }
    for (size_t i = 0; i < c->n_shards && rc == 0; i++) {
        rc = parse_shard(c, (uint32_t)i, err);
        /* A shard that cannot be opened: say which index named it. */
        if (rc && !c->shards[i].map) ds4_fail_prefix(err, "%s (weight_map)", path);
    }
    /* Pass 2: each listed tensor must be in the shard the index names. */
    for (const cJSON *e = wm->child; e && rc == 0; e = e->next) {
        size_t want = 0, ti;
        ds4_strmap_get(&shard_of, e->valuestring, &want);
        if (!ds4_strmap_get(&c->index, e->string, &ti))
            rc = ds4_fail(err, "%s: tensor '%s' is listed in shard %s but that shard does not contain it", path,
                          e->string, c->shards[want].path);
        else if (c->tensors[ti].shard != want)
            rc = ds4_fail(err, "%s: tensor '%s' is listed in shard %s but is in %s", path, e->string,
                          c->shards[want].path, c->shards[c->tensors[ti].shard].path);
    }
done:
    ds4_strmap_free(&shard_of);
    cJSON_Delete(root);
    return rc;
}

/* ---------------------------------------------------------------------- */
/* Opening. */

static bool is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* In a directory: the index if present, else model.safetensors, else the
 * only *.safetensors file. */
static char *pick_in_dir(const char *dir, ds4_error *err) {
    char *p;
    if (asprintf(&p, "%s/%s", dir, INDEX_NAME) < 0) goto oom;
    if (is_file(p)) return p;
    free(p);
    if (asprintf(&p, "%s/model.safetensors", dir) < 0) goto oom;
    if (is_file(p)) return p;
    free(p);
    p = NULL;
    DIR *d = opendir(dir);
    if (!d) {
        ds4_fail(err, "%s: cannot open directory: %s", dir, strerror(errno));
        return NULL;
    }
    int found = 0;
    for (struct dirent *de; (de = readdir(d));) {
        if (!ends_with(de->d_name, ".safetensors")) continue;
        if (++found > 1) break;
        if (asprintf(&p, "%s/%s", dir, de->d_name) < 0) {
            closedir(d);
            goto oom;
        }
    }
    closedir(d);
    if (found == 1) return p;
    free(p);
    ds4_fail(err, "%s: no %s or model.safetensors%s", dir, INDEX_NAME,
             found ? ", and several *.safetensors files (which one?)" : " (no *.safetensors files at all)");
    return NULL;
oom:
    ds4_fail(err, "%s: out of memory", dir);
    return NULL;
}

st_checkpoint *st_open(const char *path, ds4_error *err) {
    st_checkpoint *c = calloc(1, sizeof *c);
    if (!c) {
        ds4_fail(err, "%s: out of memory", path);
        return NULL;
    }
    char *chosen = NULL;
    struct stat st;
    if (stat(path, &st) != 0) {
        ds4_fail(err, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    if (S_ISDIR(st.st_mode)) {
        if (!(chosen = pick_in_dir(path, err))) goto fail;
        path = chosen;
    }
    if (ends_with(path, ".json")) {
        if (open_index(c, path, err)) goto fail;
    } else {
        if (add_shard(c, path, err) || parse_shard(c, 0, err)) goto fail;
    }
    free(chosen);
    return c;
fail:
    free(chosen);
    st_close(c);
    return NULL;
}

void st_close(st_checkpoint *c) {
    if (!c) return;
    for (size_t i = 0; i < c->n_tensors; i++) free(c->tensors[i].name);
    free(c->tensors);
    ds4_strmap_free(&c->index);
    for (size_t i = 0; i < c->n_shards; i++) {
        if (c->shards[i].map) munmap((void *)c->shards[i].map, c->shards[i].size);
        free(c->shards[i].path);
    }
    free(c->shards);
    free(c);
}

size_t st_count(const st_checkpoint *c) { return c ? c->n_tensors : 0; }

const st_tensor *st_at(const st_checkpoint *c, size_t i) { return c && i < c->n_tensors ? &c->tensors[i] : NULL; }

const st_tensor *st_find(const st_checkpoint *c, const char *name) {
    size_t i;
    if (!c || !name || !ds4_strmap_get(&c->index, name, &i)) return NULL;
    return &c->tensors[i];
}

const char *st_shard_path(const st_checkpoint *c, uint32_t shard) {
    return c && shard < c->n_shards ? c->shards[shard].path : NULL;
}

/* ---------------------------------------------------------------------- */
/* Conversions. Tensor data is only byte-aligned (offsets in the header are
 * arbitrary), hence the memcpy loads. */

float st_e4m3_to_f32(uint8_t b) {
    int sign = b >> 7, exp = (b >> 3) & 15, man = b & 7;
    float v;
    if (exp == 15 && man == 7) return NAN;
    if (exp == 0) v = ldexpf((float)man, -9); /* subnormal: man/8 * 2^-6 */
    else v = ldexpf((float)(8 + man), exp - 10); /* (1 + man/8) * 2^(exp-7) */
    return sign ? -v : v;
}

float st_e8m0_to_f32(uint8_t b) { return b == 255 ? NAN : ldexpf(1.0f, (int)b - 127); }

int st_read_f32(const st_tensor *t, float *out, ds4_error *err) {
    const uint8_t *p = t->data;
    uint64_t n = t->n_elems;
    switch (t->dtype) {
    case ST_F32:
        if (n) memcpy(out, p, n * 4);
        return 0;
    case ST_F16:
        for (uint64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = ds4_f16_to_f32(h);
        }
        return 0;
    case ST_BF16:
        for (uint64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = ds4_bf16_to_f32(h);
        }
        return 0;
    case ST_F64:
        for (uint64_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            out[i] = (float)d;
        }
        return 0;
    case ST_F8_E4M3: {
        float lut[256];
        for (int b = 0; b < 256; b++) lut[b] = st_e4m3_to_f32((uint8_t)b);
        for (uint64_t i = 0; i < n; i++) out[i] = lut[p[i]];
        return 0;
    }
    default:
        return ds4_fail(err, "tensor '%s': dtype %s cannot be read as float", t->name ? t->name : "?",
                        st_dtype_name(t->dtype));
    }
}

int st_read_i64(const st_tensor *t, int64_t *out, ds4_error *err) {
    const uint8_t *p = t->data;
    uint64_t n = t->n_elems;
    switch (t->dtype) {
    case ST_I8:
        for (uint64_t i = 0; i < n; i++) out[i] = (int8_t)p[i];
        return 0;
    case ST_U8:
        for (uint64_t i = 0; i < n; i++) out[i] = p[i];
        return 0;
    case ST_I32:
        for (uint64_t i = 0; i < n; i++) {
            int32_t v;
            memcpy(&v, p + 4 * i, 4);
            out[i] = v;
        }
        return 0;
    case ST_I64:
        if (n) memcpy(out, p, n * 8);
        return 0;
    default:
        return ds4_fail(err, "tensor '%s': dtype %s cannot be read as integers", t->name ? t->name : "?",
                        st_dtype_name(t->dtype));
    }
}
