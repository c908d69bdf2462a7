/* SQLite's heap (storage/sqlmem.h): blocks through SQLite's own API once
 * the methods are installed. Under AddressSanitizer they are not installed
 * (SQLite's blocks come from ASan's malloc) and the pooling tests skip. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "../../storage/sqlmem.h"

static int installed;

static int group_setup(void **state)
{
    (void)state;
    installed = sqlmem_install(); /* before anything initializes SQLite */
    return sqlite3_initialize() == SQLITE_OK ? 0 : -1;
}

static void the_methods_are_installed_unless_sanitized(void **state)
{
    (void)state;
#if defined(__SANITIZE_ADDRESS__)
    assert_int_equal(installed, 0);
#else
    assert_int_equal(installed, 1);
    /* Asking again after SQLite initialized keeps the answer. */
    assert_int_equal(sqlmem_install(), 1);
#endif
}

/* Every request gets at least its bytes, 8-byte aligned, writable end to
 * end, and sqlite3_msize agrees with the size class. */
static void blocks_hold_their_request_and_report_their_class(void **state)
{
    int n;

    (void)state;
    for (n = 1; n <= (int)SQLMEM_POOL_MAX + 300; n += 37) {
        unsigned char *p = sqlite3_malloc(n);
        sqlite3_uint64 have;

        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 8, 0);
        have = sqlite3_msize(p);
        assert_true(have >= (sqlite3_uint64)n);
        if (installed) {
            if ((unsigned)n <= SQLMEM_POOL_MAX) {
                assert_int_equal((have + 8) % SQLMEM_CLASS, 0);
                assert_true(have - (unsigned)n < SQLMEM_CLASS);
            } else {
                assert_int_equal(have, (sqlite3_uint64)n);
            }
        }
        memset(p, 0xa5, (size_t)have);
        sqlite3_free(p);
    }
}

static void a_freed_block_is_handed_out_again_for_its_class(void **state)
{
    void *a;
    void *b;
    void *big;
    size_t before;

    (void)state;
    if (!installed) {
        skip();
    }
    a = sqlite3_malloc(1000);
    assert_non_null(a);
    before = sqlmem_pooled();
    sqlite3_free(a);
    assert_int_equal(sqlmem_pooled(), before + 1024); /* 1000 + 8 → 1024 */
    b = sqlite3_malloc(990); /* the same class */
    assert_ptr_equal(b, a);
    assert_int_equal(sqlmem_pooled(), before);
    sqlite3_free(b);

    /* Above the largest class a block goes back to malloc. */
    before = sqlmem_pooled();
    big = sqlite3_malloc((int)SQLMEM_POOL_MAX + 1);
    assert_non_null(big);
    sqlite3_free(big);
    assert_int_equal(sqlmem_pooled(), before);
}

static void fill(unsigned char *p, size_t n, unsigned seed)
{
    size_t i;

    for (i = 0; i < n; i++) {
        p[i] = (unsigned char)(i * 31u + seed);
    }
}

static void same(const unsigned char *p, size_t n, unsigned seed)
{
    size_t i;

    for (i = 0; i < n; i++) {
        assert_int_equal(p[i], (unsigned char)(i * 31u + seed));
    }
}

/* Growing and shrinking within a class, across classes, from a class to a
 * malloc'd block and back, and between malloc'd blocks keep the bytes. */
static void realloc_keeps_the_bytes_on_every_path(void **state)
{
    static const int steps[] = {10,   40,   56,   57,   500,  4000,
                                5000, 9000, 6000, 4500, 100,  8};
    unsigned char *p = sqlite3_malloc(steps[0]);
    size_t i;

    (void)state;
    assert_non_null(p);
    fill(p, (size_t)steps[0], 7);
    for (i = 1; i < sizeof steps / sizeof steps[0]; i++) {
        int keep = steps[i] < steps[i - 1] ? steps[i] : steps[i - 1];

        p = sqlite3_realloc(p, steps[i]);
        assert_non_null(p);
        assert_true(sqlite3_msize(p) >= (sqlite3_uint64)steps[i]);
        same(p, (size_t)keep, 7);
        fill(p, (size_t)steps[i], 7);
    }
    sqlite3_free(p);
}

/* A database works on top: the storage tests run on these methods too;
 * this one checks that a large transaction's memory comes back to the
 * lists and is used again by the next. */
static void a_database_reuses_what_it_freed(void **state)
{
    sqlite3 *db;
    size_t after_first;
    int i;

    (void)state;
    if (!installed) {
        skip();
    }
    for (i = 0; i < 2; i++) {
        assert_int_equal(sqlite3_open(":memory:", &db), SQLITE_OK);
        assert_int_equal(
            sqlite3_exec(db,
                         "CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB);"
                         "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL"
                         " SELECT i + 1 FROM n WHERE i < 2000)"
                         " INSERT INTO t SELECT i, randomblob(100) FROM n;",
                         NULL, NULL, NULL),
            SQLITE_OK);
        assert_int_equal(sqlite3_close(db), SQLITE_OK);
        if (i == 0) {
            after_first = sqlmem_pooled();
            assert_true(after_first > 0);
        }
    }
    /* The second database was built from the first one's blocks: the
     * lists did not grow by another database. */
    assert_true(sqlmem_pooled() <= after_first + after_first / 4);
}

/* sqlmem_fail_at(n) fails the n-th allocation from now, once, whether the
 * block would come from a free list or from malloc; 0 disarms it. Under
 * ASan it cannot arm and nothing fails. */
static void an_armed_failure_fails_the_nth_allocation_once(void **state)
{
    void *p[4];
    void *q;
    int i;

    (void)state;
    if (!installed) {
        assert_int_equal(sqlmem_fail_at(2), 0);
        q = sqlite3_malloc(64);
        assert_non_null(q);
        sqlite3_free(q);
        return;
    }
    q = sqlite3_malloc(100);
    assert_non_null(q);
    sqlite3_free(q); /* its class now has a free block */
    assert_int_equal(sqlmem_fail_at(3), 1);
    for (i = 0; i < 4; i++) {
        p[i] = sqlite3_malloc(100);
    }
    assert_non_null(p[0]);
    assert_non_null(p[1]);
    assert_null(p[2]);
    assert_non_null(p[3]);
    /* realloc allocates through the same path. */
    assert_int_equal(sqlmem_fail_at(1), 1);
    assert_null(sqlite3_realloc(p[0], 3000));
    q = sqlite3_realloc(p[0], 3000); /* the failed one left p[0] alone */
    assert_non_null(q);
    assert_int_equal(sqlmem_fail_at(1), 1);
    assert_int_equal(sqlmem_fail_at(0), 1);
    p[2] = sqlite3_malloc(100);
    assert_non_null(p[2]);
    sqlite3_free(q);
    for (i = 1; i < 4; i++) {
        sqlite3_free(p[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(the_methods_are_installed_unless_sanitized),
        cmocka_unit_test(blocks_hold_their_request_and_report_their_class),
        cmocka_unit_test(a_freed_block_is_handed_out_again_for_its_class),
        cmocka_unit_test(realloc_keeps_the_bytes_on_every_path),
        cmocka_unit_test(a_database_reuses_what_it_freed),
        cmocka_unit_test(an_armed_failure_fails_the_nth_allocation_once),
    };

    return cmocka_run_group_tests(tests, group_setup, NULL);
}
