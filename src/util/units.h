/* Byte sizes as users type them on command lines. */
#ifndef DS4_UTIL_UNITS_H
#define DS4_UTIL_UNITS_H

#include <stdint.h>

/* "12G", "512M", "1.5GB", "64KiB", "4096" (bytes); the units are binary
 * (K = 1024). Returns 0, or -1 for anything else, zero or negative sizes,
 * and sizes past 2^64. */
int ds4_parse_size(const char *s, uint64_t *out);

#endif
