#include "model/tokenizer_gguf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/tokenizer_build.h"

#define KEY_MODEL "tokenizer.ggml.model"
#define KEY_PRE "tokenizer.ggml.pre"
#define KEY_TOKENS "tokenizer.ggml.tokens"
#define KEY_TYPES "tokenizer.ggml.token_type"
#define KEY_MERGES "tokenizer.ggml.merges"
#define KEY_BOS "tokenizer.ggml.bos_token_id"
#define KEY_EOS "tokenizer.ggml.eos_token_id"
#define KEY_PAD "tokenizer.ggml.padding_token_id"

/* A string array's entries as pointer + length pairs. */
static int str_array(const gguf_file *f, const char *key, const gguf_kv **kv_out, const char ***ptrs, size_t **lens,
                     ds4_error *err) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) return ds4_fail(err, "%s: %s is missing", f->path, key);
    if (kv->type != GGUF_VT_ARRAY || kv->arr_type != GGUF_VT_STRING || !kv->arr_strs)
        return ds4_fail(err, "%s: %s is not an array of strings", f->path, key);
    if (kv->arr_count > (uint64_t)INT32_MAX) return ds4_fail(err, "%s: %s has too many entries", f->path, key);
    size_t n = (size_t)kv->arr_count;
    *ptrs = malloc((n + 1) * sizeof **ptrs);
    *lens = malloc((n + 1) * sizeof **lens);
    if (!*ptrs || !*lens) return ds4_fail(err, "%s: out of memory", f->path);
    for (size_t i = 0; i < n; i++) {
        if (kv->arr_strs[i].len > UINT32_MAX / 2)
            return ds4_fail(err, "%s: %s[%zu] is too long", f->path, key, i);
        (*ptrs)[i] = kv->arr_strs[i].ptr ? kv->arr_strs[i].ptr : "";
        (*lens)[i] = (size_t)kv->arr_strs[i].len;
    }
    *kv_out = kv;
    return 0;
}

static int optional_id(const gguf_file *f, const char *key, int32_t *id, ds4_error *err) {
    *id = -1;
    if (!gguf_find_kv(f, key)) return 0;
    uint32_t v;
    if (gguf_get_u32(f, key, &v, err)) return -1;
    if (v > (uint32_t)INT32_MAX) return ds4_fail(err, "%s: %s = %u is out of range", f->path, key, v);
    *id = (int32_t)v;
    return 0;
}

ds4_tokenizer *ds4_tokenizer_from_gguf(const gguf_file *f, ds4_error *err) {
    ds4_error e2;
    if (!err) err = &e2;
    ds4_tokenizer *tok = NULL;
    char *model = NULL, *pre = NULL;
    const char **tokens = NULL, **merges = NULL;
    size_t *token_lens = NULL, *merge_lens = NULL;
    int32_t *types = NULL;
    const gguf_kv *tkv, *mkv;

    if (gguf_get_str(f, KEY_MODEL, &model, err)) goto done;
    if (strcmp(model, "gpt2")) {
        ds4_fail(err, "%s: %s is \"%s\"; only \"gpt2\" (byte-level BPE) is supported", f->path, KEY_MODEL, model);
        goto done;
    }
    if (gguf_find_kv(f, KEY_PRE) && gguf_get_str(f, KEY_PRE, &pre, err)) goto done;
    if (str_array(f, KEY_TOKENS, &tkv, &tokens, &token_lens, err)) goto done;
    if (str_array(f, KEY_MERGES, &mkv, &merges, &merge_lens, err)) goto done;
    const gguf_kv *ty = gguf_find_kv(f, KEY_TYPES);
    if (ty) {
        if (ty->type != GGUF_VT_ARRAY || ty->arr_count != tkv->arr_count) {
            ds4_fail(err, "%s: %s must be an array with one entry per token (%llu)", f->path, KEY_TYPES,
                     (unsigned long long)tkv->arr_count);
            goto done;
        }
        if (!(types = malloc((tkv->arr_count + 1) * sizeof *types))) {
            ds4_fail(err, "%s: out of memory", f->path);
            goto done;
        }
        for (uint64_t i = 0; i < ty->arr_count; i++) {
            int64_t v;
            if (gguf_arr_get_i64(f, ty, i, &v, err)) goto done;
            if (v < DS4_TOKEN_NORMAL || v > DS4_TOKEN_BYTE) {
                ds4_fail(err, "%s: %s[%llu] = %lld is not a known token type", f->path, KEY_TYPES,
                         (unsigned long long)i, (long long)v);
                goto done;
            }
            types[i] = (int32_t)v;
        }
    }
    ds4_tokenizer_arrays a = {
        .n_tokens = (uint32_t)tkv->arr_count,
        .tokens = tokens,
        .token_lens = token_lens,
        .token_types = types,
        .n_merges = (uint32_t)mkv->arr_count,
        .merges = merges,
        .merge_lens = merge_lens,
        .pre = pre,
    };
    if (optional_id(f, KEY_BOS, &a.bos_id, err) || optional_id(f, KEY_EOS, &a.eos_id, err) ||
        optional_id(f, KEY_PAD, &a.pad_id, err))
        goto done;
    tok = ds4_tokenizer_from_arrays(&a, f->path, err);
done:
    free(model);
    free(pre);
    free(tokens);
    free(token_lens);
    free(merges);
    free(merge_lens);
    free(types);
    return tok;
}

int ds4_tokenizer_write_gguf(gguf_writer *w, const ds4_tokenizer *tok, uint32_t vocab_size, ds4_error *err) {
    uint32_t n = ds4_tokenizer_n_vocab(tok), nm = ds4_tokenizer_n_merges(tok);
    const char *pre = ds4_tokenizer_pre_name(tok);
    if (vocab_size < n)
        return ds4_fail(err, "tokenizer has %u tokens, more than the model's vocabulary size %u", n, vocab_size);
    if (!pre) return ds4_fail(err, "tokenizer uses custom pre-tokenizer regexes, which GGUF cannot name");

    int rc = -1;
    char **owned = calloc((size_t)vocab_size + nm + 1, sizeof *owned); /* strings built here */
    const char **tokens = malloc(((size_t)vocab_size + 1) * sizeof *tokens);
    const char **merges = malloc(((size_t)nm + 1) * sizeof *merges);
    int32_t *types = malloc(((size_t)vocab_size + 1) * sizeof *types);
    size_t n_owned = 0;
    if (!owned || !tokens || !merges || !types) {
        ds4_fail(err, "out of memory");
        goto done;
    }
    for (uint32_t i = 0; i < vocab_size; i++) {
        int type = i < n ? ds4_tokenizer_token_type(tok, (int32_t)i) : DS4_TOKEN_UNUSED;
        const char *text = i < n ? ds4_tokenizer_token_text(tok, (int32_t)i) : "";
        if (type == DS4_TOKEN_UNUSED && !text[0]) {
            /* Padding rows get unique names so the list stays a valid
             * vocabulary (llama.cpp maps text back to ids). */
            char name[32];
            snprintf(name, sizeof name, "[PAD%u]", i);
            if (!(text = owned[n_owned++] = strdup(name))) {
                ds4_fail(err, "out of memory");
                goto done;
            }
        }
        tokens[i] = text;
        types[i] = type;
    }
    for (uint32_t i = 0; i < nm; i++) {
        int32_t l, r;
        ds4_tokenizer_merge(tok, i, &l, &r);
        const char *ls = ds4_tokenizer_token_text(tok, l), *rs = ds4_tokenizer_token_text(tok, r);
        if (strchr(ls, ' ') || strchr(rs, ' ')) {
            ds4_fail(err, "merge %u (\"%s\", \"%s\") has a space in a token: GGUF's \"left right\" form cannot hold it",
                     i, ls, rs);
            goto done;
        }
        size_t len = strlen(ls) + strlen(rs) + 2;
        char *m = owned[n_owned++] = malloc(len);
        if (!m) {
            ds4_fail(err, "out of memory");
            goto done;
        }
        snprintf(m, len, "%s %s", ls, rs);
        merges[i] = m;
    }

    const char *failed = NULL;
    if (gguf_writer_set_str(w, KEY_MODEL, "gpt2")) failed = KEY_MODEL;
    else if (gguf_writer_set_str(w, KEY_PRE, pre)) failed = KEY_PRE;
    else if (gguf_writer_set_arr_str(w, KEY_TOKENS, tokens, vocab_size)) failed = KEY_TOKENS;
    else if (gguf_writer_set_arr(w, KEY_TYPES, GGUF_VT_I32, types, vocab_size)) failed = KEY_TYPES;
    else if (gguf_writer_set_arr_str(w, KEY_MERGES, merges, nm)) failed = KEY_MERGES;
    else if (ds4_tokenizer_bos(tok) >= 0 && gguf_writer_set_u32(w, KEY_BOS, (uint32_t)ds4_tokenizer_bos(tok)))
        failed = KEY_BOS;
    else if (ds4_tokenizer_eos(tok) >= 0 && gguf_writer_set_u32(w, KEY_EOS, (uint32_t)ds4_tokenizer_eos(tok)))
        failed = KEY_EOS;
    else if (ds4_tokenizer_pad(tok) >= 0 && gguf_writer_set_u32(w, KEY_PAD, (uint32_t)ds4_tokenizer_pad(tok)))
        failed = KEY_PAD;
    else if (gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", false))
        failed = "tokenizer.ggml.add_bos_token";
    else if (gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", false))
        failed = "tokenizer.ggml.add_eos_token";
    if (failed) {
        ds4_fail(err, "GGUF writer: could not set %s", failed);
        goto done;
    }
    rc = 0;
done:
    for (size_t i = 0; i < n_owned; i++) free(owned[i]);
    free(owned);
    free(tokens);
    free(merges);
    free(types);
    return rc;
}
