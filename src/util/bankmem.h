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
void ds4_bank_free(void *p, size_t bytes); /* safe on NULL */

#endif
