#include "util/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int ds4_atomic_begin(const char *final_path, char *tmp_path, size_t cap, ds4_error *err) {
    if (!final_path || !*final_path) return ds4_fail(err, "atomic write: empty output path");
    int n = snprintf(tmp_path, cap, "%s.tmp.%ld", final_path, (long)getpid());
    if (n < 0 || (size_t)n >= cap)
        return ds4_fail(err, "%s: temporary file name is too long", final_path);
    return 0;
}

/* fsync on the directory makes the new directory entry durable; failures are
 * not fatal (some file systems refuse to sync directories). */
static void sync_parent_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    char dir[4096];
    if (!slash) {
        strcpy(dir, ".");
    } else {
        size_t len = slash == path ? 1 : (size_t)(slash - path);
        if (len >= sizeof dir) return;
        memcpy(dir, path, len);
        dir[len] = 0;
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return;
    (void)fsync(fd);
    close(fd);
}

int ds4_atomic_commit(const char *tmp_path, const char *final_path, ds4_error *err) {
    if (rename(tmp_path, final_path) != 0)
        return ds4_fail(err, "%s: cannot rename %s into place: %s", final_path, tmp_path, strerror(errno));
    sync_parent_dir(final_path);
    return 0;
}

void ds4_atomic_abort(const char *tmp_path) {
    if (tmp_path && *tmp_path) (void)unlink(tmp_path);
}
