/* Log segments written with zeros instead of left "unwritten".
 *
 * libraft 0.15 (raft_uv) prepares each log segment ahead of use, in its
 * threadpool, with posix_fallocate on a new file opened O_DSYNC, then
 * appends entries to it with direct I/O (io_submit, RWF_NOWAIT). On ext4
 * (and xfs) fallocated blocks are "unwritten" extents: the first write into
 * each block must convert its extent, a journal commit on every O_DSYNC
 * append. And RWF_NOWAIT refuses that write with EAGAIN, so libraft submits
 * it a second time from a worker thread, a loop turn later. Measured in
 * docs/performance.md: that path held every append of the leader (twelfth
 * run), and when the disk is slow each conversion costs a journal write
 * and a flush (thirteenth run). Writes to blocks already written are plain
 * overwrites.
 *
 * libraft has no setting for this, and it is its only caller of
 * posix_fallocate in the process (SQLite is in memory; libuv and ctxd
 * itself never call it). So the ctxd executable defines posix_fallocate:
 * the dynamic linker binds libraft's reference to the executable's
 * definition before libc's (ELF symbol interposition). It is a conforming
 * posix_fallocate: after it returns 0 the range is allocated and a later
 * write into it cannot fail for want of space; it never changes a byte the
 * file already holds. It only allocates differently: the part beyond the
 * end of the file is written with zeros (through the caller's descriptor,
 * so O_DSYNC makes them durable), the part within it is passed to
 * fallocate(2). A segment of 8 MiB takes 12-25 ms of a worker thread
 * here, once per 8 MiB of log.
 *
 * The zeros are written only while the disk takes them at PREALLOC_MIN_RATE
 * or faster; what is left of the range then goes to fallocate(2), as libc
 * would do. A disk whose write bandwidth is low (a throttled volume) takes
 * seconds for 8 MiB of zeros, and meanwhile the log's own appends queue
 * behind them: a 3-node cluster on a disk throttled to 4 MB/s, with every
 * segment written whole, answered writes with a p99 of about 1 s against
 * 81 ms with libc's posix_fallocate (docs/performance.md). With the rate
 * check, that disk takes one chunk of zeros per segment and the p99 was
 * 85 ms; a disk limited in operations per second, not bytes, still gets
 * whole segments of zeros.
 *
 * Linked into the ctxd executable and the unit tests as an object file
 * (an archive member would never be pulled in: nothing in the executable
 * refers to it), with default visibility, which the build otherwise hides.
 * tests/unit/test_prealloc.c checks the function; tests/e2e/test_node.py
 * checks that a running node's segments are written, not unwritten. */
#define _GNU_SOURCE /* fallocate */
/* The symbol libraft binds is posix_fallocate: with 64-bit file offsets
 * requested, fcntl.h would rename this definition posix_fallocate64. */
#undef _FILE_OFFSET_BITS
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "prealloc.h"

_Static_assert(sizeof(off_t) == 8, "libraft's posix_fallocate takes 64-bit offsets");

#define ZERO_CHUNK (256 * 1024)

/* Never written: pages of .bss, read as zeros. */
static char zeros[ZERO_CHUNK];

/* One write of zeros at *from, of up to a chunk; advances *from. 0, or -1
 * with errno set. */
static int write_chunk(int fd, off_t *from, off_t to)
{
    size_t n = (uintmax_t)(to - *from) < ZERO_CHUNK ? (size_t)(to - *from)
                                                    : ZERO_CHUNK;
    ssize_t w;

    do {
        w = pwrite(fd, zeros, n, *from);
    } while (w < 0 && errno == EINTR);
    if (w == 0) {
        errno = EIO;
    }
    if (w <= 0) {
        return -1;
    }
    *from += w;
    return 0;
}

/* The slowest the zeros may go on, in bytes per second. */
static uint64_t min_rate = PREALLOC_MIN_RATE;

void prealloc_min_rate_set(uint64_t bytes_per_s)
{
    min_rate = bytes_per_s;
}

static int64_t now_ns(void)
{
    struct timespec t;

    if (clock_gettime(CLOCK_MONOTONIC, &t) != 0) {
        return INT64_MAX; /* cannot tell: as if the disk were slow */
    }
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Write zeros over [*from, to), which lies beyond the end of the file, in
 * chunks, for as long as they go at least at rate bytes per second (the
 * next chunk is written while the time since the start is less than the
 * bytes written so far and that chunk would take at the rate); rate 0 means
 * no limit. *from is where they stopped. */
static int write_zeros(int fd, off_t *from, off_t to, uint64_t rate)
{
    const off_t first = *from;
    int64_t start = rate > 0 ? now_ns() : 0;

    while (*from < to) {
        if (rate > 0) {
            int64_t t = now_ns();
            double allowed = ((double)(*from - first) + ZERO_CHUNK) * 1e9 /
                             (double)rate;

            if (t == INT64_MAX || start == INT64_MAX ||
                (double)(t - start) >= allowed) {
                return 0;
            }
        }
        if (write_chunk(fd, from, to) != 0) {
            return errno;
        }
    }
    return 0;
}

static int fill(int fd, off_t offset, off_t len)
{
    struct stat st;
    off_t end;
    off_t inside_end;
    off_t from;
    int flags;
    int rv;

    if (offset < 0 || len <= 0) {
        return EINVAL;
    }
    if (offset > INT64_MAX - len) {
        return EFBIG;
    }
    end = offset + len;
    if (fstat(fd, &st) != 0) {
        return errno;
    }
    if (S_ISFIFO(st.st_mode)) {
        return ESPIPE;
    }
    if (!S_ISREG(st.st_mode)) {
        return ENODEV;
    }
    flags = fcntl(fd, F_GETFL);
    if (flags < 0) {
        return errno;
    }
    /* Within the file (all of it for a descriptor in append mode, whose
     * writes ignore their offset): allocate, keeping what it holds. */
    inside_end = (end < st.st_size || (flags & O_APPEND)) ? end : st.st_size;
    if (offset < inside_end &&
        fallocate(fd, 0, offset, inside_end - offset) != 0) {
        return errno;
    }
    if (end <= inside_end) {
        return 0;
    }
    /* Beyond it: zeros while the disk takes them fast enough, then
     * fallocate(2). A gap between the end and offset stays a hole, as it
     * would with fallocate(2). On failure the file gets its old size
     * back. */
    from = offset > st.st_size ? offset : st.st_size;
    rv = write_zeros(fd, &from, end, min_rate);
    if (rv == 0 && from < end && fallocate(fd, 0, from, end - from) != 0) {
        /* A file system without fallocate(2) gets zeros, as libc does. */
        rv = errno == EOPNOTSUPP ? write_zeros(fd, &from, end, 0) : errno;
    }
    if (rv != 0) {
        while (ftruncate(fd, st.st_size) != 0 && errno == EINTR) {
        }
    }
    return rv;
}

/* Returns 0 or an error number, leaving errno as it was, as posix_fallocate
 * does. */
__attribute__((visibility("default"))) int posix_fallocate(int fd,
                                                           off_t offset,
                                                           off_t len)
{
    int saved = errno;
    int rv = fill(fd, offset, len);

    errno = saved;
    return rv;
}
