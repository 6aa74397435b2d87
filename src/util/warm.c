/* Bringing a mapped file into the page cache (see warm.h). */
#include "util/warm.h"

#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* Read ahead this far beyond the page being touched: large enough that the
 * disk always has work queued, small enough not to evict what was read. */
#define WARM_WINDOW ((size_t)256 << 20)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

double ds4_warm_mapping(const void *map, size_t size, const char *what, bool progress) {
    double t0 = now_s();
    long ps = sysconf(_SC_PAGESIZE);
    size_t page = ps > 0 ? (size_t)ps : 4096;
    const volatile uint8_t *p = (const volatile uint8_t *)map;
    uintptr_t base = (uintptr_t)map & ~(uintptr_t)(page - 1);
    uint8_t sink = 0;
    size_t next_gb = (size_t)1 << 30;
    for (size_t w = 0; w < size; w += WARM_WINDOW) {
        /* the window after this one is read while this one is touched */
        size_t ahead = w + WARM_WINDOW;
        if (ahead < size) {
            size_t len = size - ahead < WARM_WINDOW ? size - ahead : WARM_WINDOW;
            uintptr_t a = ((uintptr_t)map + ahead) & ~(uintptr_t)(page - 1);
            madvise((void *)a, len + ((uintptr_t)map + ahead - a), MADV_WILLNEED);
        } else if (w == 0) {
            madvise((void *)base, size + ((uintptr_t)map - base), MADV_WILLNEED);
        }
        size_t end = w + WARM_WINDOW < size ? w + WARM_WINDOW : size;
        for (size_t i = w; i < end; i += page) sink ^= p[i];
        if (progress && end >= next_gb) {
            fprintf(stderr, "\rds4: reading %s into the page cache: %.1f of %.1f GB", what, end / 1e9, size / 1e9);
            next_gb = end + ((size_t)1 << 30);
        }
    }
    if (progress) fprintf(stderr, "\rds4: read %s into the page cache: %.1f GB in %.1f s\n", what, size / 1e9, now_s() - t0);
    (void)sink;
    return now_s() - t0;
}
