#include "harness.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int test_failures = 0;
static char tmp_dir[256];

const char *test_data_dir(void) {
    const char *d = getenv("DS4_TEST_DATA");
    return d && *d ? d : "tests/data";
}

static void remove_tmp(void) {
    if (!tmp_dir[0]) return;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", tmp_dir);
}

const char *test_tmp_dir(void) {
    if (!tmp_dir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(tmp_dir, sizeof tmp_dir, "%s/ds4-test-XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(tmp_dir)) {
            perror("mkdtemp");
            exit(1);
        }
        atexit(remove_tmp);
    }
    return tmp_dir;
}

const char *test_path(const char *fmt, ...) {
    static char bufs[8][1024];
    static int next;
    char *b = bufs[next++ & 7];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, 1024, fmt, ap);
    va_end(ap);
    return b;
}

int test_finish(void) {
    if (test_failures) {
        fprintf(stderr, "%d check(s) failed\n", test_failures);
        return 1;
    }
    return 0;
}

int test_gpu_unavailable(const char *why) {
    const char *req = getenv("DS4_REQUIRE_GPU");
    if (req && *req == '1') {
        fprintf(stderr, "DS4_REQUIRE_GPU=1 but %s\n", why);
        return 1;
    }
    printf("skipped: %s\n", why);
    return 77;
}
