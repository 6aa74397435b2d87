/* A string -> index hash map (open addressing, linear probing).
 *
 * The map does not own its keys: they must stay valid and unchanged while
 * the map is in use. Format readers use it to look up tensors and keys by
 * name in O(1), since real checkpoints have thousands of tensors and lookups
 * happen for every one of them. */
#ifndef DS4_UTIL_STRMAP_H
#define DS4_UTIL_STRMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ds4_strmap_slot {
    const char *key; /* NULL: empty slot */
    uint64_t hash;
    size_t val;
} ds4_strmap_slot;

typedef struct ds4_strmap {
    ds4_strmap_slot *slots;
    size_t cap; /* power of two (0 before the first insert) */
    size_t count;
} ds4_strmap;

#define DS4_STRMAP_INIT {NULL, 0, 0}

/* Inserts key -> val. Returns 1 when inserted, 0 when the key was already
 * present (its value goes to *existing when non-NULL; nothing changes),
 * -1 when out of memory. */
int ds4_strmap_put(ds4_strmap *m, const char *key, size_t val, size_t *existing);
bool ds4_strmap_get(const ds4_strmap *m, const char *key, size_t *val);
void ds4_strmap_free(ds4_strmap *m);

#endif
