/* MemAvailable (see meminfo.h). */
#include "util/meminfo.h"
#include "util/units.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

uint64_t ds4_mem_available(void) {
    const char *pretend = getenv("DS4_MEM_AVAILABLE");
    uint64_t v;
    if (pretend && *pretend) {
        if (ds4_parse_size(pretend, &v) == 0) return v;
        static bool said = false;
        if (!said) fprintf(stderr, "ds4: DS4_MEM_AVAILABLE='%s' is not a size such as 16G; using MemAvailable\n", pretend);
        said = true;
    }
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        unsigned long long kb;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
                fclose(f);
                return (uint64_t)kb * 1024;
            }
        fclose(f);
    }
    long pages = sysconf(_SC_AVPHYS_PAGES), size = sysconf(_SC_PAGESIZE);
    return pages > 0 && size > 0 ? (uint64_t)pages * (uint64_t)size : 0;
}
