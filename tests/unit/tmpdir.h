/* Test helper shared by the unit tests that need a directory of their own:
 * create /tmp/ctxd-<name>-?????? with mkdtemp and put its path in buf
 * (cap bytes). Returns buf, or NULL when the name does not fit or mkdtemp
 * failed. */
#ifndef CTXD_TEST_TMPDIR_H
#define CTXD_TEST_TMPDIR_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TEST_TMPDIR_RANDOM 6 /* characters mkdtemp replaces */

static inline char *test_tmpdir(char *buf, size_t cap, const char *name)
{
    int n = snprintf(buf, cap, "/tmp/ctxd-%s-", name);

    if (n < 0 || (size_t)n + TEST_TMPDIR_RANDOM >= cap) {
        return NULL;
    }
    /* mkdtemp's template: the last six characters, all 'X'. */
    memset(buf + n, 'X', TEST_TMPDIR_RANDOM);
    buf[n + TEST_TMPDIR_RANDOM] = '\0';
    return mkdtemp(buf);
}

#endif
