/* Whole small files read into memory (prompts, token lists, JSON configs). */
#ifndef DS4_UTIL_TEXTFILE_H
#define DS4_UTIL_TEXTFILE_H

#include <stddef.h>

#include "util/error.h"

/* The bound for prompts, texts and token lists that users hand the tools:
 * far above any real one, so that only a mistaken path hits it. */
#define DS4_TEXT_FILE_MAX ((size_t)1 << 30)

/* The file's bytes with a terminating NUL (also when it holds NULs of its
 * own: *len, when non-NULL, gets the true length). Fails, naming the path
 * and the reason, when it cannot be opened or read or exceeds max bytes.
 * Works on pipes and other files without a size. Caller frees. */
char *ds4_read_text_file(const char *path, size_t max, size_t *len, ds4_error *err);

#endif
