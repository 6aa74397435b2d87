#include "util/bankmem.h"

#include <errno.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

void *ds4_bank_reserve(size_t bytes) {
    if (!bytes) bytes = 1;
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
#ifdef MADV_HUGEPAGE
    (void)madvise(p, bytes, MADV_HUGEPAGE); /* a hint: fine if refused */
#endif
    return p;
}

int ds4_bank_populate(void *p, size_t bytes) {
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0) page = 4096;
    uintptr_t a = (uintptr_t)p / (uintptr_t)page * (uintptr_t)page;
    size_t n = (size_t)((uintptr_t)p + bytes - a);
#ifdef MADV_POPULATE_WRITE
    if (madvise((void *)a, n, MADV_POPULATE_WRITE) == 0) return 0;
    if (errno == ENOMEM || errno == EFAULT || errno == EHWPOISON) return -1;
#endif
    /* Older kernels: a write to every page that keeps its byte (an atomic
     * or of 0: the rounded-out ends may be another thread's bytes). */
    for (size_t i = 0; i < n; i += (size_t)page) (void)__atomic_fetch_or((uint8_t *)(a + i), (uint8_t)0, __ATOMIC_RELAXED);
    return 0;
}

void *ds4_bank_alloc(size_t bytes) {
    void *p = ds4_bank_reserve(bytes);
    if (p && ds4_bank_populate(p, bytes ? bytes : 1)) {
        /* Not enough memory: say so now rather than meet the OOM killer
         * while touching pages. */
        munmap(p, bytes ? bytes : 1);
        return NULL;
    }
    return p;
}

void ds4_bank_free(void *p, size_t bytes) {
    if (p) munmap(p, bytes ? bytes : 1);
}
