/* Loading a tokenizer from HF tokenizer.json (+ tokenizer_config.json).
 *
 * Only what byte-level BPE tokenizers such as DeepSeek's use is accepted;
 * every other feature is refused by name rather than silently ignored, since
 * ignoring one would produce different ids than the reference. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ds4_tokenizer.h"
#include "model/tokenizer_build.h"

/* Largest token id accepted (keeps a corrupt file from asking for a huge
 * allocation). */
#define MAX_TOKEN_ID (1 << 24)

static char *read_file(const char *path, size_t *len, ds4_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        ds4_fail(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        char *p = cap > SIZE_MAX / 2 ? NULL : realloc(buf, cap * 2);
        if (!p) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = p;
        cap *= 2;
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf) {
        ds4_fail(err, "%s: out of memory", path);
        return NULL;
    }
    if (bad) {
        free(buf);
        ds4_fail(err, "%s: read error", path);
        return NULL;
    }
    *len = n;
    return buf;
}

static cJSON *parse_file(const char *path, ds4_error *err) {
    size_t len;
    char *buf = read_file(path, &len, err);
    if (!buf) return NULL;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, len, &end, false);
    if (!root) {
        size_t at = end && end >= buf && end <= buf + len ? (size_t)(end - buf) : 0;
        ds4_fail(err, "%s: not valid JSON (error near byte %zu)", path, at);
    }
    free(buf);
    return root;
}

/* Whether a JSON value is absent, null, or false / 0 / "". */
static bool is_unset(const cJSON *v) {
    return !v || cJSON_IsNull(v) || cJSON_IsFalse(v) || (cJSON_IsNumber(v) && v->valuedouble == 0) ||
           (cJSON_IsString(v) && v->valuestring[0] == 0);
}

static int get_id(const cJSON *v, int32_t *id) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= 0 && d < MAX_TOKEN_ID) || d != (double)(int32_t)d) return -1;
    *id = (int32_t)d;
    return 0;
}

static bool get_bool(const cJSON *obj, const char *key, bool dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

static const char *type_of(const cJSON *obj) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

/* The normalizer must do nothing: null or (nested) empty Sequences. */
static int check_normalizer(const cJSON *n, const char *path, ds4_error *err) {
    if (!n || cJSON_IsNull(n)) return 0;
    const char *type = type_of(n);
    if (type && !strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
        const cJSON *it;
        cJSON_ArrayForEach(it, list) if (check_normalizer(it, path, err)) return -1;
        return 0;
    }
    return ds4_fail(err, "%s: normalizer of type %s is not supported", path, type ? type : "(none)");
}

/* One pre-tokenizer step; *saw_bytelevel is set by the ByteLevel step,
 * which must come last. `pattern_out` collects the regex strings so the
 * set can be recognised afterwards. */
static int add_pretok_step(ds4_pretok *p, const cJSON *st, const char *path, const char *field, bool *saw_bytelevel,
                           const char **patterns, int *n_patterns, ds4_error *err) {
    const char *type = type_of(st);
    if (*saw_bytelevel) return ds4_fail(err, "%s: %s: steps after ByteLevel are not supported", path, field);
    if (type && !strcmp(type, "Split")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(st, "pattern");
        const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
        const cJSON *lit = cJSON_GetObjectItemCaseSensitive(pat, "String");
        const cJSON *beh = cJSON_GetObjectItemCaseSensitive(st, "behavior");
        if (!cJSON_IsString(re) && !cJSON_IsString(lit))
            return ds4_fail(err, "%s: %s.pattern has neither Regex nor String", path, field);
        if (!cJSON_IsString(beh) || strcmp(beh->valuestring, "Isolated"))
            return ds4_fail(err, "%s: %s.behavior %s is not supported (only Isolated)", path, field,
                            cJSON_IsString(beh) ? beh->valuestring : "(missing)");
        if (get_bool(st, "invert", false)) return ds4_fail(err, "%s: %s.invert=true is not supported", path, field);
        const char *s = cJSON_IsString(re) ? re->valuestring : lit->valuestring;
        if (ds4_pretok_add(p, s, strlen(s), !cJSON_IsString(re), err))
            return ds4_fail_prefix(err, "%s: %s", path, field);
        if (*n_patterns < 8) patterns[*n_patterns] = cJSON_IsString(re) ? s : NULL;
        ++*n_patterns;
        return 0;
    }
    if (type && !strcmp(type, "ByteLevel")) {
        if (get_bool(st, "add_prefix_space", true))
            return ds4_fail(err, "%s: %s.add_prefix_space=true is not supported", path, field);
        /* HF's default for use_regex is true: the GPT-2 regex. */
        if (get_bool(st, "use_regex", true)) {
            if (ds4_pretok_add(p, DS4_PRETOK_GPT2, strlen(DS4_PRETOK_GPT2), 0, err))
                return ds4_fail_prefix(err, "%s: %s", path, field);
            if (*n_patterns < 8) patterns[*n_patterns] = DS4_PRETOK_GPT2;
            ++*n_patterns;
        }
        *saw_bytelevel = true;
        return 0;
    }
    return ds4_fail(err, "%s: %s: pre-tokenizer of type %s is not supported", path, field, type ? type : "(none)");
}

static ds4_pretok *load_pretok(const cJSON *pt, const char *path, const char **pre_name, ds4_error *err) {
    ds4_pretok *p = ds4_pretok_new(err);
    if (!p) return NULL;
    bool saw_bl = false;
    const char *patterns[8];
    int np = 0;
    const char *type = pt ? type_of(pt) : NULL;
    if (type && !strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers");
        int i = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, list) {
            char field[64];
            snprintf(field, sizeof field, "pre_tokenizer.pretokenizers[%d]", i++);
            if (add_pretok_step(p, it, path, field, &saw_bl, patterns, &np, err)) goto fail;
        }
    } else if (pt && !cJSON_IsNull(pt)) {
        if (add_pretok_step(p, pt, path, "pre_tokenizer", &saw_bl, patterns, &np, err)) goto fail;
    }
    if (!saw_bl) {
        ds4_fail(err, "%s: pre_tokenizer has no ByteLevel step (only byte-level BPE is supported)", path);
        goto fail;
    }
    *pre_name = NULL;
    if (np == 3) {
        bool same = true;
        for (int i = 0; i < 3; i++) same = same && patterns[i] && !strcmp(patterns[i], DS4_PRETOK_DEEPSEEK[i]);
        if (same) *pre_name = "joyai-llm";
    } else if (np == 1 && patterns[0] == DS4_PRETOK_GPT2) {
        *pre_name = "gpt2";
    }
    return p;
fail:
    ds4_pretok_free(p);
    return NULL;
}

/* A tokenizer_config.json token entry: a string or {"content": ...}. */
static const char *config_token(const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

ds4_tokenizer *ds4_tokenizer_from_json(const char *path, const char *config_path, ds4_error *err) {
    ds4_error e2;
    if (!err) err = &e2;
    cJSON *root = parse_file(path, err), *cfg = NULL;
    ds4_tokenizer *tok = NULL;
    const char **text = NULL, **left = NULL, **right = NULL;
    size_t *left_len = NULL, *right_len = NULL;
    int32_t *type = NULL;
    uint8_t *normalized = NULL;
    ds4_pretok *pretok = NULL;
    if (!root) return NULL;
    if (config_path && !(cfg = parse_file(config_path, err))) goto done;

    if (!cJSON_IsObject(root)) {
        ds4_fail(err, "%s: top level is not a JSON object", path);
        goto done;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) {
        ds4_fail(err, "%s: model is missing or not an object", path);
        goto done;
    }
    const char *mtype = type_of(model);
    if (mtype && strcmp(mtype, "BPE")) {
        ds4_fail(err, "%s: model.type %s is not supported (only BPE)", path, mtype);
        goto done;
    }
    static const char *const unsupported[] = {"byte_fallback", "continuing_subword_prefix", "end_of_word_suffix",
                                              "dropout"};
    for (size_t i = 0; i < sizeof unsupported / sizeof *unsupported; i++)
        if (!is_unset(cJSON_GetObjectItemCaseSensitive(model, unsupported[i]))) {
            ds4_fail(err, "%s: model.%s is set, which is not supported", path, unsupported[i]);
            goto done;
        }
    if (check_normalizer(cJSON_GetObjectItemCaseSensitive(root, "normalizer"), path, err)) goto done;

    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab)) {
        ds4_fail(err, "%s: model.vocab is missing or not an object", path);
        goto done;
    }
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added)) {
        ds4_fail(err, "%s: added_tokens is not an array", path);
        goto done;
    }

    /* Vocabulary size: one past the largest id anywhere. */
    int32_t max_id = -1, id;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        if (get_id(it, &id)) {
            ds4_fail(err, "%s: model.vocab[\"%.100s\"] is not a valid token id", path, it->string);
            goto done;
        }
        if (id > max_id) max_id = id;
    }
    int idx = 0;
    cJSON_ArrayForEach(it, added) {
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        if (get_id(cJSON_GetObjectItemCaseSensitive(it, "id"), &id) || !cJSON_IsString(content)) {
            ds4_fail(err, "%s: added_tokens[%d] lacks a valid id or content", path, idx);
            goto done;
        }
        if (get_bool(it, "lstrip", false) || get_bool(it, "rstrip", false) || get_bool(it, "single_word", false)) {
            ds4_fail(err, "%s: added_tokens[%d]: lstrip / rstrip / single_word are not supported", path, idx);
            goto done;
        }
        if (id > max_id) max_id = id;
        idx++;
    }
    if (max_id < 0) {
        ds4_fail(err, "%s: model.vocab is empty", path);
        goto done;
    }
    uint32_t n = (uint32_t)max_id + 1;
    text = calloc(n, sizeof *text);
    type = malloc(n * sizeof *type);
    normalized = calloc(n, 1);
    if (!text || !type || !normalized) goto oom;
    for (uint32_t i = 0; i < n; i++) type[i] = DS4_TOKEN_NORMAL;
    cJSON_ArrayForEach(it, vocab) {
        get_id(it, &id);
        if (text[id]) {
            ds4_fail(err, "%s: model.vocab: id %d is given to both \"%.100s\" and \"%.100s\"", path, id, text[id],
                      it->string);
            goto done;
        }
        text[id] = it->string;
    }
    /* An added token keeps its id; its content replaces a vocab entry of
     * the same id (DeepSeek lists BOS/EOS/pad in both, identically). */
    cJSON_ArrayForEach(it, added) {
        get_id(cJSON_GetObjectItemCaseSensitive(it, "id"), &id);
        bool special = get_bool(it, "special", false);
        text[id] = cJSON_GetObjectItemCaseSensitive(it, "content")->valuestring;
        type[id] = special ? DS4_TOKEN_CONTROL : DS4_TOKEN_USER_DEFINED;
        normalized[id] = get_bool(it, "normalized", !special);
    }

    /* Merges: "left right" strings (split on the one space, as HF does) or
     * [left, right] pairs. */
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (merges && !cJSON_IsNull(merges) && !cJSON_IsArray(merges)) {
        ds4_fail(err, "%s: model.merges is not an array", path);
        goto done;
    }
    int nm = cJSON_GetArraySize(merges);
    left = malloc(((size_t)nm + 1) * sizeof *left);
    right = malloc(((size_t)nm + 1) * sizeof *right);
    left_len = malloc(((size_t)nm + 1) * sizeof *left_len);
    right_len = malloc(((size_t)nm + 1) * sizeof *right_len);
    if (!left || !right || !left_len || !right_len) goto oom;
    idx = 0;
    int pos = -1; /* position in the file, for messages */
    cJSON_ArrayForEach(it, merges) {
        pos++;
        if (cJSON_IsString(it)) {
            const char *s = it->valuestring, *sp = strchr(s, ' ');
            /* HF skips a "#version" header line of merges.txt here too. */
            if (!strncmp(s, "#version", 8)) continue;
            if (!sp || strchr(sp + 1, ' ')) {
                ds4_fail(err, "%s: model.merges[%d] \"%.100s\" is not of the form \"left right\"", path, pos, s);
                goto done;
            }
            left[idx] = s;
            left_len[idx] = (size_t)(sp - s);
            right[idx] = sp + 1;
            right_len[idx] = strlen(sp + 1);
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 && cJSON_IsString(it->child) &&
                   cJSON_IsString(it->child->next)) {
            left[idx] = it->child->valuestring;
            right[idx] = it->child->next->valuestring;
            left_len[idx] = strlen(left[idx]);
            right_len[idx] = strlen(right[idx]);
        } else {
            ds4_fail(err, "%s: model.merges[%d] is neither a string nor a pair of strings", path, pos);
            goto done;
        }
        idx++;
    }

    int32_t unk = -1;
    const cJSON *unk_tok = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    if (cJSON_IsString(unk_tok)) {
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(vocab, unk_tok->valuestring);
        if (!u) {
            ds4_fail(err, "%s: model.unk_token \"%.100s\" is not in model.vocab", path, unk_tok->valuestring);
            goto done;
        }
        get_id(u, &unk);
    }

    const char *pre_name = NULL;
    pretok = load_pretok(cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), path, &pre_name, err);
    if (!pretok) goto done;

    tok_build b = {
        .source = path,
        .n_tokens = n,
        .text = text,
        .type = type,
        .normalized = normalized,
        .n_merges = (uint32_t)idx,
        .left = left,
        .right = right,
        .left_len = left_len,
        .right_len = right_len,
        .merge_field = "model.merges",
        .bos = -1,
        .eos = -1,
        .pad = -1,
        .unk = unk,
        .fuse_unk = get_bool(model, "fuse_unk", false),
        .ignore_merges = get_bool(model, "ignore_merges", false),
        .pretok = pretok,
        .pre_name = pre_name,
    };
    pretok = NULL; /* owned by the build from here on */
    tok = tok_build_run(&b, err);
    if (tok && cfg) {
        const char *keys[3] = {"bos_token", "eos_token", "pad_token"};
        int32_t ids[3] = {-1, -1, -1};
        for (int i = 0; i < 3; i++) {
            const char *s = config_token(cfg, keys[i]);
            if (!s) continue;
            if ((ids[i] = ds4_tokenizer_find(tok, s)) < 0) {
                ds4_fail(err, "%s: %s \"%.100s\" is not a token of %s", config_path, keys[i], s, path);
                ds4_tokenizer_free(tok);
                tok = NULL;
                goto done;
            }
        }
        tok_set_special_ids(tok, ids[0], ids[1], ids[2]);
    }
    goto done;
oom:
    ds4_fail(err, "%s: out of memory", path);
done:
    ds4_pretok_free(pretok);
    free(text);
    free(type);
    free(normalized);
    free(left);
    free(right);
    free(left_len);
    free(right_len);
    cJSON_Delete(root);
    cJSON_Delete(cfg);
    return tok;
}
