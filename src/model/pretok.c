#include "model/pretok.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/utf8.h"

/* Exactly as they appear in DeepSeek's tokenizer.json (CR and LF are
 * literal characters inside the classes), so a loaded file can be
 * recognised by comparing strings. */
const char *const DS4_PRETOK_DEEPSEEK[3] = {
    "\\p{N}{1,3}",
    /* [一-龥぀-ゟ゠-ヿ]+ : CJK U+4E00-U+9FA5, Hiragana, Katakana */
    "[\xE4\xB8\x80-\xE9\xBE\xA5\xE3\x81\x80-\xE3\x82\x9F\xE3\x82\xA0-\xE3\x83\xBF]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+"
    "|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
    "| ?[\\p{P}\\p{S}]+[\r\n]*"
    "|\\s*[\r\n]+"
    "|\\s+(?!\\S)"
    "|\\s+",
};

const char DS4_PRETOK_GPT2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

#define MAX_STAGES 16

struct ds4_pretok {
    int n;
    pcre2_code *code[MAX_STAGES];
};

ds4_pretok *ds4_pretok_new(ds4_error *err) {
    ds4_pretok *p = calloc(1, sizeof *p);
    if (!p) ds4_fail(err, "out of memory");
    return p;
}

void ds4_pretok_free(ds4_pretok *p) {
    if (!p) return;
    for (int i = 0; i < p->n; i++) pcre2_code_free(p->code[i]);
    free(p);
}

/* Oniguruma's \s (what HF's Rust tokenizers use) is the Unicode White_Space
 * property. PCRE2's UCP \s also takes U+180E (it counts as horizontal
 * space there), so \s is spelled out. Written without brackets so that it
 * can go inside a class as well. */
static const char WHITE_SPACE[] =
    "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
    "\\x{202F}\\x{205F}\\x{3000}";

/* Rewrites the few escapes whose meaning differs between Oniguruma (Ruby
 * syntax) and PCRE2: \s and \S as above, and \h / \H, which are hex digits
 * in Oniguruma but horizontal space in PCRE2. Everything else is copied. */
static char *translate(const char *pat, size_t len, ds4_error *err) {
    /* Only escapes grow, each to at most WHITE_SPACE plus brackets. */
    size_t n_esc = 0, w = 0;
    for (size_t i = 0; i < len; i++)
        if (pat[i] == '\\') n_esc++;
    size_t cap = len + n_esc * (sizeof WHITE_SPACE + 4) + 1;
    char *out = malloc(cap);
    if (!out) {
        ds4_fail(err, "out of memory");
        return NULL;
    }
    int in_class = 0;
    for (size_t i = 0; i < len; i++) {
        char c = pat[i];
        if (c == '\\' && i + 1 < len) {
            char e = pat[++i];
            const char *rep = NULL;
            char tmp[sizeof WHITE_SPACE + 4];
            if (e == 's') {
                snprintf(tmp, sizeof tmp, in_class ? "%s" : "[%s]", WHITE_SPACE);
                rep = tmp;
            } else if (e == 'S' && !in_class) {
                snprintf(tmp, sizeof tmp, "[^%s]", WHITE_SPACE);
                rep = tmp;
            } else if (e == 'h') {
                rep = in_class ? "0-9A-Fa-f" : "[0-9A-Fa-f]";
            } else if (e == 'H') {
                if (in_class) {
                    free(out);
                    ds4_fail(err, "regex: \\H inside a character class is not supported");
                    return NULL;
                }
                rep = "[^0-9A-Fa-f]";
            }
            /* \S inside a class stays PCRE2's: it differs only at U+180E. */
            if (rep) {
                size_t rl = strlen(rep);
                memcpy(out + w, rep, rl);
                w += rl;
            } else {
                out[w++] = '\\';
                out[w++] = e;
            }
            continue;
        }
        out[w++] = c;
        if (!in_class && c == '[') {
            in_class = 1;
            /* "[^]..." and "[]..." take a literal ']' first. */
            if (i + 1 < len && pat[i + 1] == '^') out[w++] = pat[++i];
            if (i + 1 < len && pat[i + 1] == ']') out[w++] = pat[++i];
        } else if (in_class && c == '[' && i + 1 < len && pat[i + 1] == ':') {
            /* POSIX class "[:name:]": copy through its closing "]". */
            const char *end = NULL;
            for (size_t j = i + 2; j + 1 < len; j++)
                if (pat[j] == ':' && pat[j + 1] == ']') {
                    end = pat + j;
                    break;
                }
            if (end) {
                size_t n = (size_t)(end - pat) + 2 - (i + 1);
                memcpy(out + w, pat + i + 1, n);
                w += n;
                i += n;
            }
        } else if (in_class && c == ']') {
            in_class = 0;
        }
    }
    out[w] = 0;
    return out;
}

int ds4_pretok_add(ds4_pretok *p, const char *pattern, size_t len, int literal, ds4_error *err) {
    if (p->n == MAX_STAGES) return ds4_fail(err, "pre-tokenizer: more than %d split stages", MAX_STAGES);
    char *pat = literal ? NULL : translate(pattern, len, err);
    if (!literal && !pat) return -1;
    uint32_t opts = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF;
    opts |= literal ? PCRE2_LITERAL : PCRE2_UCP; /* PCRE2 refuses the pair */
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *code = pcre2_compile((PCRE2_SPTR)(literal ? pattern : pat), literal ? len : PCRE2_ZERO_TERMINATED,
                                     opts, &ec, &eo, NULL);
    free(pat);
    if (!code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return ds4_fail(err, "pre-tokenizer regex \"%.*s\": %s (at offset %zu)", (int)(len > 200 ? 200 : len),
                        pattern, (const char *)msg, (size_t)eo);
    }
    /* JIT is only a speed-up: when it is unavailable the interpreter runs. */
    (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    p->code[p->n++] = code;
    return 0;
}

typedef struct run_ctx {
    const ds4_pretok *p;
    pcre2_match_data *md[MAX_STAGES];
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit;
    ds4_pretok_fn fn;
    void *ctx;
    ds4_error *err;
} run_ctx;

static int split(run_ctx *r, int stage, const char *s, size_t len) {
    if (len == 0) return 0;
    if (stage == r->p->n) return r->fn(r->ctx, s, len, r->err);
    pcre2_code *code = r->p->code[stage];
    pcre2_match_data *md = r->md[stage];
    size_t start = 0, prev = 0;
    while (start < len) {
        int rc = pcre2_match(code, (PCRE2_SPTR)s, len, start, 0, md, r->mctx);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !r->jit) {
            /* The default JIT stack (32 KiB) ran out (a pathological
             * pattern or input): retry with room to grow (reserved,
             * committed lazily). Made on demand because it costs more than
             * tokenizing a short prompt. */
            if (!(r->mctx = pcre2_match_context_create(NULL)) ||
                !(r->jit = pcre2_jit_stack_create(32 * 1024, 64 * 1024 * 1024, NULL)))
                return ds4_fail(r->err, "out of memory");
            pcre2_jit_stack_assign(r->mctx, NULL, r->jit);
            continue;
        }
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return ds4_fail(r->err, "pre-tokenizer stage %d: regex match failed: %s", stage, (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) {
            /* An empty match splits nothing; step over one character
             * (one byte when it is not valid UTF-8) and search again. */
            int l = ds4_utf8_seq_len((uint8_t)s[ms]);
            start = ms + (l > 0 && ms + (size_t)l <= len ? (size_t)l : 1);
            continue;
        }
        int rv;
        if (ms > prev && (rv = split(r, stage + 1, s + prev, ms - prev))) return rv;
        if ((rv = split(r, stage + 1, s + ms, me - ms))) return rv;
        prev = start = me;
    }
    return split(r, stage + 1, s + prev, len - prev);
}

int ds4_pretok_run(const ds4_pretok *p, const char *text, size_t len, ds4_pretok_fn fn, void *ctx,
                   ds4_error *err) {
    run_ctx r = {.p = p, .fn = fn, .ctx = ctx, .err = err};
    int rv = -1;
    for (int i = 0; i < p->n; i++)
        if (!(r.md[i] = pcre2_match_data_create_from_pattern(p->code[i], NULL))) goto oom;
    rv = split(&r, 0, text, len);
    goto done;
oom:
    ds4_fail(err, "out of memory");
done:
    for (int i = 0; i < p->n; i++) pcre2_match_data_free(r.md[i]);
    pcre2_match_context_free(r.mctx);
    pcre2_jit_stack_free(r.jit);
    return rv;
}
