/* Whole small files read into memory (see textfile.h). */
#include "util/textfile.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *ds4_read_text_file(const char *path, size_t max, size_t *len, ds4_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        ds4_fail(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    /* grown as it is read: no size needed up front (pipes, /proc) */
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    for (size_t got; buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0;) {
        n += got;
        if (n > max) break;
        if (n + 1 == cap) {
            char *g = realloc(buf, cap *= 2);
            if (!g) free(buf);
            buf = g;
        }
    }
    int bad = ferror(f), e = errno;
    fclose(f);
    if (!buf || bad || n > max) {
        if (!buf) ds4_fail(err, "%s: out of memory reading it", path);
        else if (bad) ds4_fail(err, "%s: cannot read: %s", path, strerror(e));
        else ds4_fail(err, "%s: larger than %zu bytes", path, max);
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}
