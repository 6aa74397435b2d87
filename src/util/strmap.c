#include "util/strmap.h"

#include <stdlib.h>
#include <string.h>

/* FNV-1a, 64-bit: simple and good enough for tensor names, which share long
 * prefixes ("blk.N.") and differ in a few characters. */
static uint64_t hash_str(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return h;
}

/* Returns the slot holding key, or the empty slot where it would go. */
static ds4_strmap_slot *probe(ds4_strmap_slot *slots, size_t cap, const char *key, uint64_t h) {
    size_t mask = cap - 1;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        ds4_strmap_slot *s = &slots[i];
        if (!s->key || (s->hash == h && strcmp(s->key, key) == 0)) return s;
    }
}

static int grow(ds4_strmap *m) {
    size_t cap = m->cap ? m->cap * 2 : 16;
    if (cap < m->cap || cap > SIZE_MAX / sizeof(ds4_strmap_slot)) return -1;
    ds4_strmap_slot *slots = calloc(cap, sizeof *slots);
    if (!slots) return -1;
    for (size_t i = 0; i < m->cap; i++) {
        ds4_strmap_slot *s = &m->slots[i];
        if (s->key) *probe(slots, cap, s->key, s->hash) = *s;
    }
    free(m->slots);
    m->slots = slots;
    m->cap = cap;
    return 0;
}

int ds4_strmap_put(ds4_strmap *m, const char *key, size_t val, size_t *existing) {
    /* Keep the load at or below 1/2 so probe sequences stay short. */
    if ((m->count + 1) * 2 > m->cap && grow(m) != 0) return -1;
    uint64_t h = hash_str(key);
    ds4_strmap_slot *s = probe(m->slots, m->cap, key, h);
    if (s->key) {
        if (existing) *existing = s->val;
        return 0;
    }
    s->key = key;
    s->hash = h;
    s->val = val;
    m->count++;
    return 1;
}

bool ds4_strmap_get(const ds4_strmap *m, const char *key, size_t *val) {
    if (!m->cap) return false;
    const ds4_strmap_slot *s = probe(m->slots, m->cap, key, hash_str(key));
    if (!s->key) return false;
    if (val) *val = s->val;
    return true;
}

void ds4_strmap_free(ds4_strmap *m) {
    free(m->slots);
    m->slots = NULL;
    m->cap = m->count = 0;
}
