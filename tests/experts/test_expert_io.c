/* The expert reader's busy-time accounting: a read that completes while
 * the caller is busy elsewhere must not stretch the busy time to when the
 * caller reaps it, and an idle gap between two reads must not count. The
 * reads come from the page cache (microseconds); the caller then sleeps
 * for tens of milliseconds, which a wrong accounting would include. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "experts/expert_io.h"
#include "harness.h"

static int done_count, fail_count;

static void on_done(void *ctx, uint64_t tag, const ds4_error *err) {
    (void)ctx;
    (void)tag;
    done_count++;
    fail_count += err != NULL;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

int main(void) {
    const char *path = test_path("%s/f.bin", test_tmp_dir());
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    static uint8_t data[1 << 16];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (uint8_t)(i * 7 + 3);
    CHECK(write(fd, data, sizeof data) == (ssize_t)sizeof data);
    close(fd);

    const char *paths[1] = {path};
    ds4_error err = {{0}};
    ds4_expert_io *io = ds4_expert_io_open(paths, 1, false, 4, on_done, NULL, &err);
    CHECKF(io != NULL, "%s", err.msg);
    if (!io) return test_finish();
    if (!ds4_expert_io_stamps_completions(io)) {
        /* pread fallback (reads finish inside submit) or no watcher: the
         * accounting under test is not in use. */
        fprintf(stderr, "completions not stamped here (%s)\n", ds4_expert_io_engine(io));
        ds4_expert_io_close(io);
        return 77;
    }
    uint8_t *buf = aligned_alloc(DS4_IO_ALIGN, 4 * 16384);
    CHECK(buf != NULL);

    /* One read, reaped 100 ms after it completed. */
    ds4_io_req q = {0, 0, 16384, buf, 16384, 0};
    CHECK(ds4_expert_io_submit(io, &q, &err) == 0);
    ds4_expert_io_flush(io);
    sleep_ms(100);
    while (ds4_expert_io_reap(io, true)) {
    }
    ds4_io_stats st;
    ds4_expert_io_get_stats(io, &st);
    CHECK(done_count == 1 && fail_count == 0);
    CHECK(st.requests == 1 && st.bytes == 16384);
    CHECK(memcmp(buf, data, 16384) == 0);
    CHECKF(st.busy_s < 0.05, "busy %.3f s for a page-cache read reaped 100 ms late", st.busy_s);
    double busy1 = st.busy_s;

    /* A read left unreaped, 60 ms of idle, a second read, 60 ms, reap:
     * the idle gap is not busy time. */
    ds4_io_req a = {0, 16384, 16384, buf, 16384, 1}, b = {0, 32768, 16384, buf + 16384, 16384, 2};
    CHECK(ds4_expert_io_submit(io, &a, &err) == 0);
    ds4_expert_io_flush(io);
    sleep_ms(60);
    CHECK(ds4_expert_io_submit(io, &b, &err) == 0);
    ds4_expert_io_flush(io);
    sleep_ms(60);
    while (ds4_expert_io_reap(io, true)) {
    }
    ds4_expert_io_get_stats(io, &st);
    CHECK(done_count == 3 && fail_count == 0);
    CHECK(memcmp(buf, data + 16384, 32768) == 0);
    CHECKF(st.busy_s - busy1 < 0.05, "busy %.3f s for two page-cache reads with 120 ms of waiting around them",
           st.busy_s - busy1);
    CHECK(st.busy_s > 0);
    ds4_expert_io_close(io);
    free(buf);
    return test_finish();
}
