#include "experts/expert_io.h"
#include "util/clock.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

/* One read syscall never asks for more than this (Linux caps a read near
 * 2 GiB; a request larger than this continues like a short read). */
#define MAX_READ (1u << 30)
/* EINTR / EAGAIN are not failures; this only bounds a pathological loop. */
#define MAX_SOFT_RETRIES 1000

typedef struct io_file {
    const char *path; /* borrowed from the caller, who outlives the reader */
    int fd, fd_direct;
} io_file;

typedef struct op {
    ds4_io_req r;
    uint64_t done;     /* bytes in place so far */
    uint64_t cur_len;  /* length of the attempt in flight */
    bool cur_direct;
    bool in_use;
    int hard_fails, soft_fails;
    bool fault_fail, fault_once, fault_short;
} op;

struct ds4_expert_io {
    io_file *files;
    uint32_t n_files;
    bool have_ring;
    struct io_uring ring;
    char engine[96];
    op *ops;
    uint32_t depth, inflight, queued;
    ds4_io_done_fn done;
    void *ctx;
    uint64_t n_requests;
    uint64_t fault_fail, fault_once, fault_short;
    ds4_io_stats stats;
    double busy_since;
    /* Completion times. The caller reaps only between compute steps, so a
     * read that lands during a matrix product would be seen milliseconds
     * late and the busy time (hence the read rate) would include compute.
     * A watcher thread wakes on the ring's eventfd and stamps each new
     * completion queue entry with the time it appeared; reaping uses that
     * stamp. Without the thread (eventfd or thread refused) the stamp is the
     * reap time. */
    int efd;
    bool have_watcher;
    pthread_t watcher;
    double *cq_time;           /* by completion queue index & cq_mask */
    unsigned cq_mask;
    _Atomic unsigned stamped;  /* entries below this index carry a stamp */
    atomic_bool stop;
};

static uint64_t env_u64(const char *name) {
    const char *v = getenv(name);
    return v && *v ? strtoull(v, NULL, 10) : 0;
}

static uint64_t round_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

static void *watch_completions(void *arg) {
    ds4_expert_io *io = arg;
    unsigned seen = atomic_load_explicit(&io->stamped, memory_order_relaxed);
    for (;;) {
        uint64_t v;
        if (read(io->efd, &v, sizeof v) < 0 && errno != EINTR && errno != EAGAIN) break;
        if (atomic_load_explicit(&io->stop, memory_order_acquire)) break;
        double t = ds4_now_s();
        unsigned tail = __atomic_load_n(io->ring.cq.ktail, __ATOMIC_ACQUIRE);
        /* The kernel never posts more entries than the queue holds beyond
         * the consumer's head, and a stamp is only overwritten a whole
         * queue later: by then its entry has been consumed. */
        for (; seen != tail; seen++) io->cq_time[seen & io->cq_mask] = t;
        atomic_store_explicit(&io->stamped, seen, memory_order_release);
    }
    return NULL;
}

/* Starts the watcher; on any refusal completions are stamped when reaped. */
static void start_watcher(ds4_expert_io *io) {
    io->efd = eventfd(0, EFD_CLOEXEC);
    if (io->efd < 0) return;
    io->cq_mask = *io->ring.cq.kring_mask;
    io->cq_time = calloc((size_t)io->cq_mask + 1, sizeof *io->cq_time);
    atomic_store(&io->stamped, __atomic_load_n(io->ring.cq.ktail, __ATOMIC_ACQUIRE));
    if (io->cq_time && io_uring_register_eventfd(&io->ring, io->efd) == 0) {
        if (pthread_create(&io->watcher, NULL, watch_completions, io) == 0) {
            io->have_watcher = true;
            return;
        }
        io_uring_unregister_eventfd(&io->ring);
    }
    free(io->cq_time);
    io->cq_time = NULL;
    close(io->efd);
    io->efd = -1;
}

static void stop_watcher(ds4_expert_io *io) {
    if (!io->have_watcher) return;
    atomic_store_explicit(&io->stop, true, memory_order_release);
    uint64_t one = 1;
    while (write(io->efd, &one, sizeof one) < 0 && errno == EINTR) {
    }
    pthread_join(io->watcher, NULL);
    io_uring_unregister_eventfd(&io->ring);
    io->have_watcher = false;
}

/* When the completion queue entry at the head appeared. */
static double head_stamp(ds4_expert_io *io) {
    if (!io->have_watcher) return ds4_now_s();
    unsigned head = *io->ring.cq.khead;
    unsigned upto = atomic_load_explicit(&io->stamped, memory_order_acquire);
    /* Not stamped yet: the watcher has not woken since it was posted,
     * which can only make it very recent. */
    if ((int)(upto - head) <= 0) return ds4_now_s();
    return io->cq_time[head & io->cq_mask];
}

ds4_expert_io *ds4_expert_io_open(const char *const *paths, uint32_t n_files, bool direct, uint32_t depth,
                                  ds4_io_done_fn done, void *ctx, ds4_error *err) {
    ds4_expert_io *io = calloc(1, sizeof *io);
    if (!io) {
        ds4_fail(err, "out of memory creating the expert reader");
        return NULL;
    }
    if (depth == 0) depth = 1;
    io->depth = depth;
    io->done = done;
    io->ctx = ctx;
    io->efd = -1;
    io->files = calloc(n_files ? n_files : 1, sizeof *io->files);
    io->ops = calloc(depth, sizeof *io->ops);
    if (!io->files || !io->ops) {
        free(io->files);
        free(io->ops);
        free(io);
        ds4_fail(err, "out of memory creating the expert reader");
        return NULL;
    }
    for (uint32_t i = 0; i < n_files; i++) io->files[i] = (io_file){paths[i], -1, -1};
    io->n_files = n_files;
    for (uint32_t i = 0; i < n_files; i++) {
        io_file *f = &io->files[i];
        f->fd = open(f->path, O_RDONLY | O_CLOEXEC);
        if (f->fd < 0) {
            ds4_fail(err, "%s: cannot open: %s", f->path, strerror(errno));
            ds4_expert_io_close(io);
            return NULL;
        }
        /* Expert reads jump around the file: readahead would only fetch
         * bytes of experts nobody asked for. */
        (void)posix_fadvise(f->fd, 0, 0, POSIX_FADV_RANDOM);
        if (direct) f->fd_direct = open(f->path, O_RDONLY | O_CLOEXEC | O_DIRECT); /* -1: not supported here */
    }
    int rc = io_uring_queue_init(depth, &io->ring, 0);
    io->have_ring = rc == 0;
    if (io->have_ring) start_watcher(io);
    if (io->have_ring) snprintf(io->engine, sizeof io->engine, "io_uring (queue depth %u)", depth);
    else snprintf(io->engine, sizeof io->engine, "pread (io_uring unavailable: %s)", strerror(-rc));
    io->fault_fail = env_u64("DS4_FAULT_READ_FAIL");
    io->fault_once = env_u64("DS4_FAULT_READ_FAIL_ONCE");
    io->fault_short = env_u64("DS4_FAULT_READ_SHORT");
    return io;
}

bool ds4_expert_io_direct(const ds4_expert_io *io, uint32_t file) {
    return file < io->n_files && io->files[file].fd_direct >= 0;
}

const char *ds4_expert_io_engine(const ds4_expert_io *io) { return io->engine; }

bool ds4_expert_io_stamps_completions(const ds4_expert_io *io) { return io->have_watcher; }

uint32_t ds4_expert_io_inflight(const ds4_expert_io *io) { return io->inflight; }

void ds4_expert_io_get_stats(const ds4_expert_io *io, ds4_io_stats *out) {
    *out = io->stats;
    if (io->inflight) out->busy_s += ds4_now_s() - io->busy_since;
}

/* Prepares the next attempt of o: where it reads, how much, and whether
 * the alignment allows O_DIRECT for it. */
static void plan_attempt(ds4_expert_io *io, op *o, int *fd, uint8_t **dst, uint64_t *off) {
    io_file *f = &io->files[o->r.file];
    uint64_t remaining = o->r.len - o->done;
    *off = o->r.off + o->done;
    *dst = o->r.buf + o->done;
    uint64_t direct_len = round_up(remaining, DS4_IO_ALIGN);
    bool direct = f->fd_direct >= 0 && *off % DS4_IO_ALIGN == 0 && (uintptr_t)*dst % DS4_IO_ALIGN == 0 &&
                  direct_len <= o->r.buf_cap - o->done;
    uint64_t len = direct ? direct_len : remaining;
    if (o->fault_short && o->done == 0 && o->hard_fails == 0 && o->soft_fails == 0) {
        /* Test hook: ask for about half, so the read really comes back
         * short and the continuation path runs. */
        uint64_t half = direct ? len / 2 / DS4_IO_ALIGN * DS4_IO_ALIGN : len / 2;
        if (half) len = half;
    }
    if (len > MAX_READ) len = MAX_READ;
    o->cur_len = len;
    o->cur_direct = direct;
    *fd = direct ? f->fd_direct : f->fd;
}

enum { ATTEMPT_AGAIN, ATTEMPT_DONE, ATTEMPT_FAILED };

/* Judges one attempt's result; fills err on failure. */
static int judge(ds4_expert_io *io, op *o, long long res, ds4_error *err) {
    io_file *f = &io->files[o->r.file];
    bool first_attempt = o->hard_fails == 0 && o->soft_fails == 0 && o->done == 0;
    if (o->fault_fail || (o->fault_once && first_attempt)) res = -EIO;
    if (res == -EINTR || res == -EAGAIN) {
        if (++o->soft_fails < MAX_SOFT_RETRIES) return ATTEMPT_AGAIN;
    }
    if (res == -EINVAL && o->cur_direct) {
        /* The file system refused this O_DIRECT read: buffered from now on. */
        close(f->fd_direct);
        f->fd_direct = -1;
        io->stats.retries++;
        return ATTEMPT_AGAIN;
    }
    uint64_t at = o->r.off + o->done;
    if (res < 0) {
        if (++o->hard_fails < DS4_IO_MAX_ATTEMPTS) {
            io->stats.retries++;
            return ATTEMPT_AGAIN;
        }
        ds4_fail(err, "%s: read of %llu bytes at offset %llu failed after %d attempts: %s", f->path,
                 (unsigned long long)(o->r.len - o->done), (unsigned long long)at, o->hard_fails, strerror((int)-res));
        return ATTEMPT_FAILED;
    }
    if (res == 0) {
        ds4_fail(err, "%s: unexpected end of file at offset %llu (%llu more bytes needed): the file was truncated", f->path,
                 (unsigned long long)at, (unsigned long long)(o->r.len - o->done));
        return ATTEMPT_FAILED;
    }
    if (o->cur_direct) io->stats.direct++;
    else io->stats.buffered++;
    o->done += (uint64_t)res;
    if (o->done >= o->r.len) return ATTEMPT_DONE;
    /* A short read: continue from where it stopped. */
    return ATTEMPT_AGAIN;
}

/* `at`: when the request's last read completed. */
static void finish(ds4_expert_io *io, op *o, const ds4_error *err, double at) {
    ds4_io_req r = o->r;
    o->in_use = false;
    io->inflight--;
    if (io->inflight == 0 && at > io->busy_since) io->stats.busy_s += at - io->busy_since;
    if (err) io->stats.failures++;
    else io->stats.bytes += r.len;
    io->done(io->ctx, r.tag, err);
}

/* Issues the next attempt of o on the ring. */
static void push(ds4_expert_io *io, op *o) {
    int fd;
    uint8_t *dst;
    uint64_t off;
    plan_attempt(io, o, &fd, &dst, &off);
    struct io_uring_sqe *sqe = io_uring_get_sqe(&io->ring);
    if (!sqe) { /* cannot happen: one SQE per op and depth ops */
        io_uring_submit(&io->ring);
        io->queued = 0;
        sqe = io_uring_get_sqe(&io->ring);
    }
    io_uring_prep_read(sqe, fd, dst, (unsigned)o->cur_len, off);
    io_uring_sqe_set_data64(sqe, (uint64_t)(o - io->ops));
    io->queued++;
}

/* Without a ring: the whole request now, with the same rules. */
static void run_sync(ds4_expert_io *io, op *o) {
    ds4_error e;
    for (;;) {
        int fd;
        uint8_t *dst;
        uint64_t off;
        plan_attempt(io, o, &fd, &dst, &off);
        ssize_t got = pread(fd, dst, (size_t)o->cur_len, (off_t)off);
        int v = judge(io, o, got < 0 ? -(long long)errno : (long long)got, &e);
        if (v == ATTEMPT_DONE) return finish(io, o, NULL, ds4_now_s());
        if (v == ATTEMPT_FAILED) return finish(io, o, &e, ds4_now_s());
    }
}

static void drain(ds4_expert_io *io, bool wait);

int ds4_expert_io_submit(ds4_expert_io *io, const ds4_io_req *r, ds4_error *err) {
    if (r->file >= io->n_files) return ds4_fail(err, "expert reader: file index %u out of range", r->file);
    if (r->len == 0 || r->buf_cap < r->len) return ds4_fail(err, "%s: bad read request", io->files[r->file].path);
    /* Completions that already arrived are taken first (no system call):
     * were they left queued, the busy time would run on through the idle
     * gap before this request. */
    if (io->inflight && io->have_ring) drain(io, false);
    while (io->inflight == io->depth) ds4_expert_io_reap(io, true);
    op *o = NULL;
    for (uint32_t i = 0; i < io->depth && !o; i++)
        if (!io->ops[i].in_use) o = &io->ops[i];
    *o = (op){.r = *r, .in_use = true};
    uint64_t n = ++io->n_requests;
    o->fault_fail = n == io->fault_fail;
    o->fault_once = n == io->fault_once;
    o->fault_short = n == io->fault_short;
    io->stats.requests++;
    if (io->inflight++ == 0) io->busy_since = ds4_now_s();
    if (io->have_ring) push(io, o);
    else run_sync(io, o);
    return 0;
}

void ds4_expert_io_flush(ds4_expert_io *io) {
    if (!io->have_ring || !io->queued) return;
    /* A failed submit leaves the SQEs queued; the next flush or reap
     * tries again, so nothing is lost. */
    if (io_uring_submit(&io->ring) >= 0) io->queued = 0;
}

/* Processes the completions that are there (and waits for one first when
 * `wait`); retries it pushes stay queued for the next flush. */
static void drain(ds4_expert_io *io, bool wait) {
    while (io->inflight) {
        struct io_uring_cqe *cqe = NULL;
        int rc = wait ? io_uring_wait_cqe(&io->ring, &cqe) : io_uring_peek_cqe(&io->ring, &cqe);
        if (rc == -EINTR) continue;
        if (rc < 0 || !cqe) break; /* nothing ready (peek) */
        wait = false;              /* one completion was all we had to wait for */
        op *o = &io->ops[io_uring_cqe_get_data64(cqe)];
        long long res = cqe->res;
        double at = head_stamp(io);
        io_uring_cqe_seen(&io->ring, cqe);
        ds4_error e;
        int v = judge(io, o, res, &e);
        if (v == ATTEMPT_AGAIN) push(io, o);
        else finish(io, o, v == ATTEMPT_DONE ? NULL : &e, at);
    }
}

uint32_t ds4_expert_io_reap(ds4_expert_io *io, bool wait) {
    if (!io->have_ring) return io->inflight;
    ds4_expert_io_flush(io);
    drain(io, wait);
    ds4_expert_io_flush(io);
    return io->inflight;
}

void ds4_expert_io_close(ds4_expert_io *io) {
    if (!io) return;
    /* The kernel may still be writing into buffers the caller is about to
     * free: drain first. */
    while (io->inflight && io->have_ring) ds4_expert_io_reap(io, true);
    stop_watcher(io);
    if (io->have_ring) io_uring_queue_exit(&io->ring);
    if (io->efd >= 0) close(io->efd);
    free(io->cq_time);
    for (uint32_t i = 0; i < io->n_files; i++) {
        if (io->files[i].fd >= 0) close(io->files[i].fd);
        if (io->files[i].fd_direct >= 0) close(io->files[i].fd_direct);
    }
    free(io->files);
    free(io->ops);
    free(io);
}
