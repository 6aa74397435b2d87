/* Minimal test harness: CHECK records a failure and continues; the test's
 * main returns test_finish(). Exit 77 marks a skipped test. */
#ifndef DS4_TESTS_HARNESS_H
#define DS4_TESTS_HARNESS_H

#include <stdio.h>

extern int test_failures;

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            test_failures++;                                                     \
        }                                                                        \
    } while (0)

#define CHECKF(cond, ...)                                                        \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                        \
            fputc('\n', stderr);                                                 \
            test_failures++;                                                     \
        }                                                                        \
    } while (0)

/* Absolute path of tests/data (env DS4_TEST_DATA, else relative to cwd). */
const char *test_data_dir(void);
/* A fresh scratch directory for this test process (removed at exit). */
const char *test_tmp_dir(void);
/* snprintf into a static rotating buffer: handy for building paths. */
const char *test_path(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int test_finish(void);
/* A GPU test that cannot run (why: the reason): exit status 77 (skipped),
 * or 1 with DS4_REQUIRE_GPU=1 (make cuda-test), so a GPU run cannot skip
 * silently. */
int test_gpu_unavailable(const char *why);

#endif
