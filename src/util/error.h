/* Error reporting: functions return 0 on success, -1 on failure and fill a
 * ds4_error with a message that names the file, tensor or field at fault.
 * Only tools decide to print and exit. */
#ifndef DS4_UTIL_ERROR_H
#define DS4_UTIL_ERROR_H

#include <stddef.h>

#include "ds4_error.h"

/* Formats the message into err (when non-NULL) and returns -1 so callers can
 * write `return ds4_fail(err, "...")`. */
int ds4_fail(ds4_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prepends "prefix: " to an existing message (adds context while unwinding). */
int ds4_fail_prefix(ds4_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
