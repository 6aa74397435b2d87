/* Wall-clock seconds for timings and progress lines. */
#ifndef DS4_UTIL_CLOCK_H
#define DS4_UTIL_CLOCK_H

#include <time.h>

/* Monotonic seconds: only differences mean anything. */
static inline double ds4_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

#endif
