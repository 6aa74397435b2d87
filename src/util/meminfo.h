/* How much host memory the kernel says is free for new allocations. */
#ifndef DS4_UTIL_MEMINFO_H
#define DS4_UTIL_MEMINFO_H

#include <stdint.h>

/* Linux's MemAvailable (memory available without swapping, page cache it
 * may reclaim included); 0 when it cannot be read. DS4_MEM_AVAILABLE=SIZE
 * (e.g. 16G) pretends another amount, to see how the memory-based choices
 * (slot bank sizes, streaming) come out on a smaller machine. */
uint64_t ds4_mem_available(void);

#endif
