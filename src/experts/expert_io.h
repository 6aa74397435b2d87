/* Reads of expert records from the layer files of a sidecar package.
 *
 * Requests are queued on an io_uring so that all the misses of one acquire
 * (and any prefetches) are in flight together; the SSD serves them in
 * parallel. Reads use O_DIRECT when the file offset, the length and the
 * destination are 4 KiB aligned (the page cache is bypassed and does not
 * fight the slot bank for RAM), buffered reads otherwise, and buffered
 * reads for everything when O_DIRECT is not wanted or not supported.
 *
 * A read that fails is retried (EINTR/EAGAIN freely, other errors up to
 * DS4_IO_MAX_ATTEMPTS times); a short read continues from where it stopped;
 * end of file before the needed bytes is an error. A request that cannot
 * be completed is reported through the completion callback with a message
 * naming the file and the offset: never a partly filled buffer presented
 * as data. Without io_uring (blocked by a sandbox) requests are served by
 * pread at submission, with the same retry rules.
 *
 * Fault injection for tests, read from the environment when the reader is
 * created (request numbers count submitted requests from 1):
 *   DS4_FAULT_READ_FAIL=N       request N fails on every attempt (EIO)
 *   DS4_FAULT_READ_FAIL_ONCE=N  request N fails once, its retry succeeds
 *   DS4_FAULT_READ_SHORT=N      request N's first attempt asks for half
 *                               the bytes, exercising the short-read path */
#ifndef DS4_EXPERTS_EXPERT_IO_H
#define DS4_EXPERTS_EXPERT_IO_H

#include <stdbool.h>
#include <stdint.h>

#include "util/error.h"

#define DS4_IO_ALIGN 4096u
#define DS4_IO_MAX_ATTEMPTS 4

typedef struct ds4_expert_io ds4_expert_io;

/* Called once per request when it completes (err NULL) or has failed for
 * good (err set). Runs inside submit/reap calls. */
typedef void (*ds4_io_done_fn)(void *ctx, uint64_t tag, const ds4_error *err);

typedef struct ds4_io_req {
    uint32_t file;    /* index into the reader's files */
    uint64_t off;     /* file offset */
    uint64_t len;     /* bytes needed */
    uint8_t *buf;     /* destination */
    uint64_t buf_cap; /* bytes the destination may take: an O_DIRECT read
                         rounds len up to DS4_IO_ALIGN within this */
    uint64_t tag;     /* returned to the callback */
} ds4_io_req;

typedef struct ds4_io_stats {
    uint64_t requests, bytes, direct, buffered, retries, failures;
    /* Wall time with at least one request in flight: from a submission
     * that found the reader idle to the moment its last outstanding read
     * completed (stamped when the kernel posted it, not when the caller
     * got round to reaping it; see ds4_expert_io_stamps_completions).
     * bytes / busy_s is the rate the disk delivered while it was asked. */
    double busy_s;
} ds4_io_stats;

/* Opens every file for reading (and with O_DIRECT when `direct`); `depth`
 * is the most requests in flight. */
ds4_expert_io *ds4_expert_io_open(const char *const *paths, uint32_t n_files, bool direct, uint32_t depth,
                                  ds4_io_done_fn done, void *ctx, ds4_error *err);
void ds4_expert_io_close(ds4_expert_io *io); /* waits for reads in flight */

/* Queues a request (waiting for room when the queue is full). Returns -1
 * only for a request that is malformed; read failures go to the callback. */
int ds4_expert_io_submit(ds4_expert_io *io, const ds4_io_req *r, ds4_error *err);
/* Hands queued requests to the kernel. */
void ds4_expert_io_flush(ds4_expert_io *io);
/* Processes completions: waits for at least one when `wait` and requests
 * are in flight. Returns the number of requests still in flight. */
uint32_t ds4_expert_io_reap(ds4_expert_io *io, bool wait);
uint32_t ds4_expert_io_inflight(const ds4_expert_io *io);

/* Whether reads of file i may use O_DIRECT, and how reads are served
 * ("io_uring" or "pread"). */
bool ds4_expert_io_direct(const ds4_expert_io *io, uint32_t file);
const char *ds4_expert_io_engine(const ds4_expert_io *io);
/* Whether completions are timed when they arrive (a watcher thread on the
 * io_uring); otherwise busy time ends when they are reaped. */
bool ds4_expert_io_stamps_completions(const ds4_expert_io *io);
void ds4_expert_io_get_stats(const ds4_expert_io *io, ds4_io_stats *out);

#endif
