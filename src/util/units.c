/* Byte sizes as users type them on command lines (see units.h). */
#include "util/units.h"

#include <errno.h>
#include <stdlib.h>

int ds4_parse_size(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end), mul = 1;
    if (end != s) {
        switch (*end) {
        case 'k': case 'K': mul = 1024.0; end++; break;
        case 'm': case 'M': mul = 1024.0 * 1024; end++; break;
        case 'g': case 'G': mul = 1024.0 * 1024 * 1024; end++; break;
        case 't': case 'T': mul = 1024.0 * 1024 * 1024 * 1024; end++; break;
        default: break;
        }
        if (mul > 1 && (*end == 'b' || *end == 'B')) end++;
        else if (mul > 1 && *end == 'i' && (end[1] == 'B' || end[1] == 'b')) end += 2;
    }
    if (end == s || *end || errno || !(v > 0) || v * mul >= 1.8e19) return -1;
    *out = (uint64_t)(v * mul);
    return 0;
}
