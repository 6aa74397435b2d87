/* Large, long-lived, page-aligned buffers (slot banks, resident experts),
 * backed by transparent huge pages where the kernel allows and faulted in
 * at allocation. Why: an O_DIRECT read into a page never touched first
 * faults and zeroes it inside the read (get_user_pages), so an unpopulated
 * bank pays gigabytes of page clearing during decode instead of at load. */
#ifndef DS4_UTIL_BANKMEM_H
#define DS4_UTIL_BANKMEM_H

#include <stddef.h>

/* NULL when out of memory. The memory is zeroed. */
void *ds4_bank_alloc(size_t bytes);
/* The same mapping without faulting it in: the caller populates it, e.g.
 * from several threads (ds4_bank_populate), then fills it. */
void *ds4_bank_reserve(size_t bytes);
/* Faults in [p, p + bytes) (rounded out to pages) for writing; -1 when
 * there is not enough memory, said at once rather than by the OOM killer
 * later. Threads may populate different ranges at the same time. */
int ds4_bank_populate(void *p, size_t bytes);
void ds4_bank_free(void *p, size_t bytes); /* safe on NULL */

#endif
