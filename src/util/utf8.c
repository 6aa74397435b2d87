#include "util/utf8.h"

#include <string.h>

static const char REPLACEMENT[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

int ds4_utf8_seq_len(uint8_t b) {
    if (b < 0x80) return 1;
    if (b >= 0xC2 && b <= 0xDF) return 2;
    if (b >= 0xE0 && b <= 0xEF) return 3;
    if (b >= 0xF0 && b <= 0xF4) return 4;
    return 0; /* continuation bytes, overlong leads C0/C1, F5..FF */
}

/* Whether b may sit at position i (>= 1) of a sequence led by `lead`. The
 * second byte's range is narrowed for E0/ED/F0/F4 so that overlong forms,
 * surrogates and code points above U+10FFFF are rejected as early as
 * possible (that is what makes replacements "maximal subparts"). */
static int cont_ok(uint8_t lead, int i, uint8_t b) {
    uint8_t lo = 0x80, hi = 0xBF;
    if (i == 1) {
        if (lead == 0xE0) lo = 0xA0;
        else if (lead == 0xED) hi = 0x9F;
        else if (lead == 0xF0) lo = 0x90;
        else if (lead == 0xF4) hi = 0x8F;
    }
    return b >= lo && b <= hi;
}

size_t ds4_utf8_feed(ds4_utf8_stream *s, const void *in, size_t n, char *out) {
    const uint8_t *p = in;
    size_t w = 0;
    for (size_t k = 0; k < n; k++) {
        uint8_t b = p[k];
        if (s->n_pend) {
            if (cont_ok(s->pend[0], s->n_pend, b)) {
                s->pend[s->n_pend++] = b;
                if (s->n_pend == ds4_utf8_seq_len(s->pend[0])) {
                    memcpy(out + w, s->pend, s->n_pend);
                    w += s->n_pend;
                    s->n_pend = 0;
                }
                continue;
            }
            /* The pending prefix can no longer complete: one replacement
             * for it, then b starts afresh. */
            memcpy(out + w, REPLACEMENT, 3);
            w += 3;
            s->n_pend = 0;
        }
        int len = ds4_utf8_seq_len(b);
        if (len == 1) {
            out[w++] = (char)b;
        } else if (len == 0) {
            memcpy(out + w, REPLACEMENT, 3);
            w += 3;
        } else {
            s->pend[0] = b;
            s->n_pend = 1;
        }
    }
    return w;
}

size_t ds4_utf8_finish(ds4_utf8_stream *s, char *out) {
    if (!s->n_pend) return 0;
    s->n_pend = 0;
    memcpy(out, REPLACEMENT, 3);
    return 3;
}

int ds4_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp) {
    if (n == 0) return 0;
    int len = ds4_utf8_seq_len(s[0]);
    if (len == 0 || (size_t)len > n) return 0;
    if (len == 1) {
        *cp = s[0];
        return 1;
    }
    uint32_t c = s[0] & (0x7F >> len);
    for (int i = 1; i < len; i++) {
        if (!cont_ok(s[0], i, s[i])) return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    *cp = c;
    return len;
}

int ds4_utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}
