#include <stdlib.h>

#include "compute/layers.h"

/* Buffers handed out earlier in a sub-layer stay valid: the arena only grows
 * between sub-layers (callers size it with a first pass that fails softly).
 * To keep that simple, growth allocates a fresh block and the old block is
 * kept alive until the arena is reset by the caller. */
float *ds4_arena_get(ds4_arena *a, size_t n) {
    n = (n + 15) & ~(size_t)15; /* 64-byte alignment for every buffer */
    if (a->used + n > a->cap) return NULL;
    float *p = a->buf + a->used;
    a->used += n;
    return p;
}
