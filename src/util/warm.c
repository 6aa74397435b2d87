/* Bringing a mapped file into the page cache (see warm.h). */
#include "util/warm.h"
#include "util/clock.h"

#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* Read ahead this far beyond the page being touched: large enough that the
 * disk always has work queued, small enough not to evict what was read. */
#define WARM_WINDOW ((size_t)256 << 20)

/* Asks the kernel to read window [off, off + WARM_WINDOW) of the mapping. */
static void will_need(const uint8_t *map, size_t size, size_t off, size_t page) {
    if (off >= size) return;
    size_t len = size - off < WARM_WINDOW ? size - off : WARM_WINDOW;
    uintptr_t start = (uintptr_t)(map + off), a = start & ~(uintptr_t)(page - 1); /* madvise wants whole pages */
    madvise((void *)a, len + (start - a), MADV_WILLNEED);
}

double ds4_warm_spans(const void *map, size_t size, const ds4_span *spans, size_t n, const char *what, bool progress) {
    double t0 = ds4_now_s();
    long ps = sysconf(_SC_PAGESIZE);
    size_t page = ps > 0 ? (size_t)ps : 4096;
    const volatile uint8_t *p = (const volatile uint8_t *)map;
    uint8_t sink = 0;
    size_t total = 0, done = 0, next_gb = (size_t)1 << 30;
    for (size_t k = 0; k < n; k++) total += spans[k].len;
    for (size_t k = 0; k < n; k++) {
        size_t s0 = spans[k].off, s1 = spans[k].off + spans[k].len < size ? spans[k].off + spans[k].len : size;
        if (s0 >= s1) continue;
        will_need(map, s1, s0, page);
        for (size_t w = s0; w < s1; w += WARM_WINDOW) {
            will_need(map, s1, w + WARM_WINDOW, page); /* read while this window is touched */
            size_t end = w + WARM_WINDOW < s1 ? w + WARM_WINDOW : s1;
            for (size_t i = w; i < end; i += page) sink ^= p[i];
            done += end - w;
            if (progress && done >= next_gb) {
                fprintf(stderr, "\rds4: reading %s into the page cache: %.1f of %.1f GB", what, done / 1e9, total / 1e9);
                next_gb = done + ((size_t)1 << 30);
            }
        }
    }
    (void)sink;
    double t = ds4_now_s() - t0;
    if (progress) fputc('\n', stderr); /* the caller says how long it took */
    return t;
}

double ds4_warm_mapping(const void *map, size_t size, const char *what, bool progress) {
    ds4_span all = {0, size};
    return ds4_warm_spans(map, size, &all, 1, what, progress);
}
