/* consensus/prealloc.c: the executable's posix_fallocate, which libraft
 * uses to prepare its log segments. This test binary links it as ctxd
 * does, so the calls below reach it and not libc's. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "../../consensus/prealloc.h"
#include "tmpdir.h"

static char dir[64];
static char path[sizeof dir + 16];
static int fd = -1;

static int setup(void **state)
{
    (void)state;
    if (test_tmpdir(dir, sizeof dir, "prealloc") == NULL) {
        return -1;
    }
    snprintf(path, sizeof path, "%s/f", dir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(path);
    return rmdir(dir);
}

static int open_new(int flags)
{
    (void)unlink(path);
    fd = open(path, O_RDWR | O_CREAT | O_EXCL | flags, 0600);
    assert_true(fd >= 0);
    return fd;
}

static void close_file(void)
{
    assert_int_equal(close(fd), 0);
    fd = -1;
}

static off_t size_of(int f)
{
    struct stat st;

    assert_int_equal(fstat(f, &st), 0);
    return st.st_size;
}

/* Bytes [from, to) of f all equal c. */
static void assert_bytes(int f, off_t from, off_t to, char c)
{
    static char b[65536];

    while (from < to) {
        size_t n = (size_t)(to - from) < sizeof b ? (size_t)(to - from)
                                                  : sizeof b;
        ssize_t r = pread(f, b, n, from);
        size_t i;

        assert_true(r > 0);
        for (i = 0; i < (size_t)r; i++) {
            assert_int_equal(b[i], c);
        }
        from += r;
    }
}

/* The file's extents: how many are "unwritten" (allocated, not yet
 * written, so the first write into them converts them) and how many bytes
 * they map in all; -1 when the file system cannot tell (FIEMAP). */
static int extents(int f, int *unwritten, uint64_t *mapped)
{
    enum { N = 256 };
    struct fiemap *m = calloc(1, sizeof *m + N * sizeof m->fm_extents[0]);
    uint32_t i;

    assert_non_null(m);
    m->fm_length = FIEMAP_MAX_OFFSET;
    m->fm_flags = FIEMAP_FLAG_SYNC;
    m->fm_extent_count = N;
    if (ioctl(f, FS_IOC_FIEMAP, m) != 0) {
        free(m);
        return -1;
    }
    *unwritten = 0;
    *mapped = 0;
    for (i = 0; i < m->fm_mapped_extents; i++) {
        *unwritten += (m->fm_extents[i].fe_flags & FIEMAP_EXTENT_UNWRITTEN) != 0;
        *mapped += m->fm_extents[i].fe_length;
    }
    free(m);
    return 0;
}

static void a_new_file_is_written_with_zeros_not_left_unwritten(void **state)
{
    const off_t len = 3 * 1024 * 1024 + 123; /* more than one chunk */
    int unwritten;
    uint64_t mapped;

    (void)state;
    prealloc_min_rate_set(0); /* however slow this disk is */
    open_new(O_DSYNC); /* as libraft opens a segment */
    errno = 4242;
    assert_int_equal(posix_fallocate(fd, 0, len), 0);
    assert_int_equal(errno, 4242); /* errno is left alone */
    assert_int_equal(size_of(fd), len);
    assert_bytes(fd, 0, len, 0);
    if (extents(fd, &unwritten, &mapped) == 0) {
        assert_int_equal(unwritten, 0);
        assert_true(mapped >= (uint64_t)len);
    } else {
        print_message("FIEMAP unsupported here: extents not checked\n");
    }
    close_file();
    prealloc_min_rate_set(PREALLOC_MIN_RATE);
}

/* When the zeros go slower than the rate, the rest of the range is
 * allocated by fallocate(2) (unwritten extents), as libc's posix_fallocate
 * would. */
static void a_slow_disk_leaves_the_rest_to_fallocate(void **state)
{
    const off_t len = 3 * 1024 * 1024 + 123;
    int unwritten;
    uint64_t mapped;

    (void)state;
    prealloc_min_rate_set(UINT64_MAX); /* no disk is that fast */
    open_new(O_DSYNC);
    assert_int_equal(pwrite(fd, "abc", 3, 0), 3);
    errno = 4242;
    assert_int_equal(posix_fallocate(fd, 0, len), 0);
    assert_int_equal(errno, 4242);
    prealloc_min_rate_set(PREALLOC_MIN_RATE);
    assert_int_equal(size_of(fd), len);
    assert_bytes(fd, 0, 1, 'a');
    assert_bytes(fd, 3, len, 0);
    if (extents(fd, &unwritten, &mapped) == 0) {
        assert_true(unwritten > 0);
        assert_true(mapped >= (uint64_t)len);
    } else {
        print_message("FIEMAP unsupported here: extents not checked\n");
    }
    close_file();
}

static void bytes_the_file_holds_are_kept(void **state)
{
    (void)state;
    open_new(0);
    assert_int_equal(pwrite(fd, "hello", 5, 0), 5);
    assert_int_equal(posix_fallocate(fd, 0, 8192), 0);
    assert_int_equal(size_of(fd), 8192);
    assert_bytes(fd, 0, 1, 'h');
    assert_bytes(fd, 5, 8192, 0);

    /* A range inside the file changes neither its size nor its bytes. */
    assert_int_equal(pwrite(fd, "x", 1, 8191), 1);
    assert_int_equal(posix_fallocate(fd, 100, 200), 0);
    assert_int_equal(size_of(fd), 8192);
    assert_bytes(fd, 8191, 8192, 'x');
    close_file();
}

static void a_range_past_the_end_leaves_the_gap_a_hole(void **state)
{
    struct stat st;

    (void)state;
    open_new(0);
    assert_int_equal(posix_fallocate(fd, 1024 * 1024, 4096), 0);
    assert_int_equal(size_of(fd), 1024 * 1024 + 4096);
    assert_bytes(fd, 0, 1024 * 1024 + 4096, 0);
    assert_int_equal(fstat(fd, &st), 0);
    assert_true(st.st_blocks * 512 < 1024 * 1024); /* the gap is not written */
    close_file();
}

static void an_append_mode_descriptor_keeps_its_bytes(void **state)
{
    (void)state;
    open_new(O_APPEND);
    assert_int_equal(write(fd, "abc", 3), 3);
    assert_int_equal(posix_fallocate(fd, 0, 8192), 0);
    assert_int_equal(size_of(fd), 8192);
    assert_bytes(fd, 0, 1, 'a');
    assert_bytes(fd, 3, 8192, 0);
    close_file();
}

static void bad_arguments_and_descriptors_are_refused(void **state)
{
    int p[2];
    int ro;

    (void)state;
    open_new(0);
    errno = 4242;
    assert_int_equal(posix_fallocate(fd, 0, 0), EINVAL);
    assert_int_equal(posix_fallocate(fd, -1, 10), EINVAL);
    assert_int_equal(posix_fallocate(fd, INT64_MAX, 10), EFBIG);
    assert_int_equal(posix_fallocate(-1, 0, 10), EBADF);
    assert_int_equal(errno, 4242);
    close_file();

    ro = open(path, O_RDONLY);
    assert_true(ro >= 0);
    assert_int_equal(posix_fallocate(ro, 0, 4096), EBADF);
    assert_int_equal(size_of(ro), 0);
    assert_int_equal(close(ro), 0);

    assert_int_equal(pipe(p), 0);
    assert_int_equal(posix_fallocate(p[1], 0, 10), ESPIPE);
    close(p[0]);
    close(p[1]);
}

/* A write that fails part way (here the file size limit, as a full disk
 * would) returns its error and gives the file its old size back. */
static void a_failed_fill_gives_the_file_its_old_size_back(void **state)
{
    struct rlimit old;
    struct rlimit lim;
    void (*old_handler)(int);

    (void)state;
    open_new(0);
    assert_int_equal(pwrite(fd, "abc", 3, 0), 3);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 2 * 1024 * 1024;
    old_handler = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);

    assert_int_equal(posix_fallocate(fd, 0, 3 * 1024 * 1024), EFBIG);

    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, old_handler);
    assert_int_equal(size_of(fd), 3);
    assert_bytes(fd, 0, 1, 'a');
    close_file();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_new_file_is_written_with_zeros_not_left_unwritten),
        cmocka_unit_test(a_slow_disk_leaves_the_rest_to_fallocate),
        cmocka_unit_test(bytes_the_file_holds_are_kept),
        cmocka_unit_test(a_range_past_the_end_leaves_the_gap_a_hole),
        cmocka_unit_test(an_append_mode_descriptor_keeps_its_bytes),
        cmocka_unit_test(bad_arguments_and_descriptors_are_refused),
        cmocka_unit_test(a_failed_fill_gives_the_file_its_old_size_back),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
