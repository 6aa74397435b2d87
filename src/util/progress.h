/* When a load shows a progress line on stderr. */
#ifndef DS4_UTIL_PROGRESS_H
#define DS4_UTIL_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>
#include <unistd.h>

/* Loads of a few GB and more, on a terminal: smaller ones finish before
 * a line would help, and a log file would fill with carriage returns. */
static inline bool ds4_show_progress(uint64_t bytes) { return bytes >= ((uint64_t)4 << 30) && isatty(2); }

#endif
