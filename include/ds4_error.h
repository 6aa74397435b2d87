/* The error value shared by the engine API and its internals. */
#ifndef DS4_ERROR_H
#define DS4_ERROR_H

typedef struct ds4_error {
    char msg[1024];
} ds4_error;

/* Formats the message into err (when non-NULL) and returns -1 so callers can
 * write `return ds4_fail(err, "...")`. */
int ds4_fail(ds4_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prepends "prefix: " to an existing message (adds context while unwinding). */
int ds4_fail_prefix(ds4_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
