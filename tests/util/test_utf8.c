/* UTF-8 sanitising: replacement of maximal invalid subparts (the rule HF's
 * decode inherits from Rust's from_utf8_lossy), and the same output however
 * the input is cut into pieces. */
#include <string.h>

#include "../harness.h"
#include "util/utf8.h"

#define R "\xEF\xBF\xBD" /* U+FFFD */

static void one_shot(const char *in, size_t n, char *out, size_t *len) {
    ds4_utf8_stream s = {0};
    *len = ds4_utf8_feed(&s, in, n, out);
    *len += ds4_utf8_finish(&s, out + *len);
}

static void check(const char *in, size_t n, const char *want) {
    char out[256];
    size_t len;
    one_shot(in, n, out, &len);
    CHECKF(len == strlen(want) && !memcmp(out, want, len), "input of %zu bytes: got \"%.*s\"", n, (int)len, out);
    /* Every split into two pieces gives the same text, and no piece ends in
     * the middle of a character. */
    for (size_t cut = 0; cut <= n; cut++) {
        ds4_utf8_stream s = {0};
        char a[256];
        size_t w = ds4_utf8_feed(&s, in, cut, a);
        for (size_t i = 0; i < w;) {
            uint32_t cp;
            int l = ds4_utf8_decode((const uint8_t *)a + i, w - i, &cp);
            CHECKF(l > 0, "first piece of a cut at %zu is not whole UTF-8", cut);
            if (!l) break;
            i += (size_t)l;
        }
        w += ds4_utf8_feed(&s, in + cut, n - cut, a + w);
        w += ds4_utf8_finish(&s, a + w);
        CHECKF(w == len && !memcmp(a, out, len), "cut at %zu changes the text", cut);
    }
}

int main(void) {
    check("plain", 5, "plain");
    check("\xC3\xA9\xE4\xBD\xA0\xF0\x9F\x98\x80", 9, "\xC3\xA9\xE4\xBD\xA0\xF0\x9F\x98\x80");
    check("a\xFF" "b", 3, "a" R "b");                     /* never valid */
    check("\xF0\x9F\x98" "A", 4, R "A");                  /* truncated 4-byte: one U+FFFD */
    check("\xF0\x9F\x98", 3, R);                          /* truncated at the end */
    check("\xE0\x80\x80", 3, R R R);                      /* overlong: E0 needs A0..BF */
    check("\xED\xA0\x80", 3, R R R);                      /* surrogate */
    check("\xF4\x90\x80\x80", 4, R R R R);                /* above U+10FFFF */
    check("\xC0\xAF", 2, R R);                            /* overlong lead */
    check("\xE4\xBD" "\xE4\xBD\xA0", 5, R "\xE4\xBD\xA0"); /* cut short by a new lead */
    check("\x80\x80", 2, R R);
    check("", 0, "");

    uint32_t cp;
    CHECK(ds4_utf8_decode((const uint8_t *)"\xE4\xBD\xA0", 3, &cp) == 3 && cp == 0x4F60);
    CHECK(ds4_utf8_decode((const uint8_t *)"\xE4\xBD", 2, &cp) == 0);
    char e[4];
    CHECK(ds4_utf8_encode(0x1F600, e) == 4 && !memcmp(e, "\xF0\x9F\x98\x80", 4));
    CHECK(ds4_utf8_encode(0x100, e) == 2 && !memcmp(e, "\xC4\x80", 2));
    return test_finish();
}
