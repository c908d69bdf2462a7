/* SQLite's heap: size-class free lists in front of malloc; see sqlmem.h.
 *
 * Every block starts with an 8-byte header holding its full size (header
 * included); SQLite gets the bytes after it, 8-byte aligned as it requires.
 * A block of class c is (c + 1) * SQLMEM_CLASS bytes; a larger block is
 * exactly its request plus the header, so the two never share a size
 * (classes end at SQLMEM_CLASS * SQLMEM_CLASSES, larger ones start above).
 * A free pooled block keeps its header and stores the list link in its
 * first usable bytes. */
#include "sqlmem.h"

#include <sqlite3.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SANITIZE_ADDRESS__)
#define SQLMEM_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SQLMEM_SANITIZED 1
#endif
#endif

#define SQLMEM_HEADER 8u

struct sqlmem_free
{
    struct sqlmem_free *next;
};

static size_t pooled_bytes;
static unsigned long fail_countdown; /* see sqlmem_fail_at; 0: off */

#if !defined(SQLMEM_SANITIZED)
static struct sqlmem_free *free_lists[SQLMEM_CLASSES];

/* The class of a request of n usable bytes, SQLMEM_CLASSES when too big. */
static unsigned class_of(size_t n)
{
    size_t full = n + SQLMEM_HEADER; /* at least 8: c >= 1 */
    size_t c = (full + SQLMEM_CLASS - 1) / SQLMEM_CLASS;

    return c <= SQLMEM_CLASSES ? (unsigned)(c - 1) : SQLMEM_CLASSES;
}

static uint64_t *header_of(void *p)
{
    return (uint64_t *)((char *)p - SQLMEM_HEADER);
}

static void *sqlmem_malloc(int n)
{
    unsigned c;
    uint64_t *h;
    size_t full;

    if (n < 0) {
        return NULL;
    }
    if (fail_countdown != 0 && --fail_countdown == 0) {
        return NULL;
    }
    c = class_of((size_t)n);
    if (c < SQLMEM_CLASSES && free_lists[c] != NULL) {
        struct sqlmem_free *f = free_lists[c];

        free_lists[c] = f->next;
        pooled_bytes -= (size_t)(c + 1) * SQLMEM_CLASS;
        return f;
    }
    full = c < SQLMEM_CLASSES ? (size_t)(c + 1) * SQLMEM_CLASS
                              : (size_t)n + SQLMEM_HEADER;
    h = malloc(full);
    if (h == NULL) {
        return NULL;
    }
    h[0] = full;
    return (char *)h + SQLMEM_HEADER;
}

static void sqlmem_free(void *p)
{
    uint64_t *h;
    size_t full;

    if (p == NULL) {
        return;
    }
    h = header_of(p);
    full = (size_t)h[0];
    if (full <= (size_t)SQLMEM_CLASS * SQLMEM_CLASSES) {
        unsigned c = (unsigned)(full / SQLMEM_CLASS) - 1;
        struct sqlmem_free *f = p;

        f->next = free_lists[c];
        free_lists[c] = f;
        pooled_bytes += full;
        return;
    }
    free(h);
}

static int sqlmem_size(void *p)
{
    return p == NULL ? 0 : (int)(header_of(p)[0] - SQLMEM_HEADER);
}

static void *sqlmem_realloc(void *p, int n)
{
    size_t have;
    void *q;

    if (p == NULL) {
        return sqlmem_malloc(n);
    }
    if (n < 0) {
        return NULL;
    }
    have = (size_t)sqlmem_size(p);
    if ((size_t)n <= have && class_of((size_t)n) == class_of(have)) {
        return p; /* same block size either way */
    }
    if (class_of(have) == SQLMEM_CLASSES &&
        class_of((size_t)n) == SQLMEM_CLASSES) {
        uint64_t *h = realloc(header_of(p), (size_t)n + SQLMEM_HEADER);

        if (h == NULL) {
            return NULL;
        }
        h[0] = (uint64_t)n + SQLMEM_HEADER;
        return (char *)h + SQLMEM_HEADER;
    }
    q = sqlmem_malloc(n);
    if (q == NULL) {
        return NULL;
    }
    memcpy(q, p, have < (size_t)n ? have : (size_t)n);
    sqlmem_free(p);
    return q;
}

static int sqlmem_roundup(int n)
{
    unsigned c = n < 0 ? SQLMEM_CLASSES : class_of((size_t)n);

    return c < SQLMEM_CLASSES
               ? (int)((c + 1) * SQLMEM_CLASS - SQLMEM_HEADER)
               : n;
}

static int sqlmem_init(void *arg)
{
    (void)arg;
    return SQLITE_OK;
}

static void sqlmem_shutdown(void *arg)
{
    (void)arg;
}

int sqlmem_install(void)
{
    static const sqlite3_mem_methods methods = {
        sqlmem_malloc, sqlmem_free, sqlmem_realloc, sqlmem_size,
        sqlmem_roundup, sqlmem_init, sqlmem_shutdown, NULL};
    static int installed;

    if (!installed) {
        installed = sqlite3_config(SQLITE_CONFIG_MALLOC, &methods) ==
                    SQLITE_OK;
    }
    return installed;
}

int sqlmem_fail_at(unsigned long n)
{
    int on = sqlmem_install();

    fail_countdown = on ? n : 0;
    return on;
}
#else
int sqlmem_install(void)
{
    return 0;
}

int sqlmem_fail_at(unsigned long n)
{
    (void)n;
    fail_countdown = 0;
    return 0;
}
#endif

size_t sqlmem_pooled(void)
{
    return pooled_bytes;
}
