/* Atomic file creation: write to a temporary name beside the final one, then
 * rename over it, so a crash or error never leaves a half-written file under
 * the final name (a converter's output is often many GB and slow to make). */
#ifndef DS4_UTIL_FILEIO_H
#define DS4_UTIL_FILEIO_H

#include <stddef.h>

#include "util/error.h"

/* Builds the temporary name "FINAL.tmp.PID" (same directory as final_path,
 * so the rename cannot cross file systems) into tmp_path. Creates nothing. */
int ds4_atomic_begin(const char *final_path, char *tmp_path, size_t cap, ds4_error *err);
/* Renames tmp over final (and syncs the directory so the rename is durable).
 * The caller must have flushed and synced the file's contents. */
int ds4_atomic_commit(const char *tmp_path, const char *final_path, ds4_error *err);
/* Removes the temporary file; errors are ignored (it may not exist). */
void ds4_atomic_abort(const char *tmp_path);

#endif
