/* Bringing a mapped file into the page cache before it is needed. */
#ifndef DS4_UTIL_WARM_H
#define DS4_UTIL_WARM_H

#include <stdbool.h>
#include <stddef.h>

/* Reads every page of map[0, size) once (asking the kernel to read ahead
 * a window at a time), so that the first prefill does not wait on the disk
 * page by page. With progress, a line on stderr counts the gigabytes (and
 * ends with a newline). Returns the seconds it took. */
double ds4_warm_mapping(const void *map, size_t size, const char *what, bool progress);

/* The same for spans [off, off + len) of the mapping only (clipped to
 * size), in the order given; progress counts their bytes. */
typedef struct ds4_span {
    size_t off, len;
} ds4_span;
double ds4_warm_spans(const void *map, size_t size, const ds4_span *spans, size_t n, const char *what, bool progress);

#endif
