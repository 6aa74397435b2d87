/* Pre-tokenizer splits: DeepSeek's regex set on inputs whose pieces pin the
 * behaviour down, the Oniguruma-vs-PCRE2 differences that the translation
 * covers (\s is Unicode White_Space, \h is a hex digit), literal and
 * empty-matching stages, and invalid UTF-8. */
#include <stdlib.h>
#include <string.h>

#include "../harness.h"
#include "model/pretok.h"

typedef struct pieces {
    char buf[1024];
    size_t n;
} pieces;

/* Joins the pieces as "a|b|c". */
static int collect(void *ctx, const char *s, size_t len, ds4_error *err) {
    (void)err;
    pieces *p = ctx;
    if (p->n) p->buf[p->n++] = '|';
    memcpy(p->buf + p->n, s, len);
    p->n += len;
    p->buf[p->n] = 0;
    return 0;
}

static int count_pieces(void *ctx, const char *s, size_t len, ds4_error *err) {
    (void)s, (void)len, (void)err;
    ++*(size_t *)ctx;
    return 0;
}

static void check(const ds4_pretok *pt, const char *text, size_t len, const char *want) {
    pieces p = {{0}, 0};
    ds4_error err;
    int rc = ds4_pretok_run(pt, text, len, collect, &p, &err);
    CHECKF(rc == 0, "%s", err.msg);
    CHECKF(!strcmp(p.buf, want), "\"%s\": got \"%s\", want \"%s\"", text, p.buf, want);
}

static ds4_pretok *make(const char *const *pats, int n, int literal) {
    ds4_error err;
    ds4_pretok *p = ds4_pretok_new(&err);
    for (int i = 0; i < n; i++) CHECKF(ds4_pretok_add(p, pats[i], strlen(pats[i]), literal, &err) == 0, "%s", err.msg);
    return p;
}

#define CHK(pt, text, want) check(pt, text, sizeof text - 1, want)

int main(void) {
    ds4_pretok *ds = make(DS4_PRETOK_DEEPSEEK, 3, 0);
    CHK(ds, "Hello, world!", "Hello|,| world|!");
    CHK(ds, "1234567890", "123|456|789|0");
    CHK(ds, "Mixed中文English日本語123", "Mixed|中文|English|日本語|123");
    CHK(ds, "def f(x):\n    return", "def| f|(x|):\n|   | return");
    CHK(ds, "a  \n\n b", "a|  \n\n| b");
    CHK(ds, ">;\n", ">;\n");
    /* U+0085 (NEL) is White_Space, so it joins the newline run; U+180E is
     * not (PCRE2's own \s would take it). */
    CHK(ds, "a\xC2\x85\n", "a|\xC2\x85\n");
    CHK(ds, "a\xE1\xA0\x8E\n", "a|\xE1\xA0\x8E|\n");
    /* Invalid UTF-8 never matches: it stays a gap piece of its own. */
    CHK(ds, "ab\xFF" "cd", "ab|\xFF|cd");
    CHK(ds, "", "");
    ds4_pretok_free(ds);

    const char *hex[] = {"\\h+"};
    ds4_pretok *h = make(hex, 1, 0);
    CHK(h, "xyz0fF9 ", "xyz|0fF9| ");
    ds4_pretok_free(h);

    const char *lit[] = {"::"};
    ds4_pretok *l = make(lit, 1, 1);
    CHK(l, "a::b:::", "a|::|b|::|:");
    ds4_pretok_free(l);

    const char *empty[] = {"x*"};
    ds4_pretok *e = make(empty, 1, 0);
    CHK(e, "abxxc", "ab|xx|c");
    ds4_pretok_free(e);

    ds4_pretok *none = make(NULL, 0, 0);
    CHK(none, "as is", "as is");
    ds4_pretok_free(none);

    /* A group repeated a million times outgrows PCRE2's default JIT stack:
     * the run must retry with a bigger one, not fail. */
    const char *deep[] = {"(a|b)+"};
    ds4_pretok *d = make(deep, 1, 0);
    size_t n = 1 << 20, count = 0;
    char *big = malloc(n);
    for (size_t i = 0; i < n; i++) big[i] = "ab"[i & 1];
    ds4_error err;
    CHECKF(ds4_pretok_run(d, big, n, count_pieces, &count, &err) == 0, "%s", err.msg);
    CHECK(count == 1);
    free(big);
    ds4_pretok_free(d);

    ds4_pretok *bad = ds4_pretok_new(&err);
    CHECK(ds4_pretok_add(bad, "(", 1, 0, &err) == -1);
    CHECK(strstr(err.msg, "regex") != NULL);
    ds4_pretok_free(bad);
    return test_finish();
}
