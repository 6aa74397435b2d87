#include "util/bankmem.h"

#include <errno.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

void *ds4_bank_alloc(size_t bytes) {
    if (!bytes) bytes = 1;
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
#ifdef MADV_HUGEPAGE
    (void)madvise(p, bytes, MADV_HUGEPAGE); /* a hint: fine if refused */
#endif
#ifdef MADV_POPULATE_WRITE
    if (madvise(p, bytes, MADV_POPULATE_WRITE) == 0) return p;
    if (errno == ENOMEM || errno == EFAULT || errno == EHWPOISON) {
        /* Not enough memory: say so now rather than meet the OOM killer
         * while touching pages. */
        munmap(p, bytes);
        return NULL;
    }
#endif
    /* Older kernels: touch every page. */
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0) page = 4096;
    for (size_t i = 0; i < bytes; i += (size_t)page) ((volatile uint8_t *)p)[i] = 0;
    return p;
}

void ds4_bank_free(void *p, size_t bytes) {
    if (p) munmap(p, bytes ? bytes : 1);
}
