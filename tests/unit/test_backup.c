/* Unit tests for the online backup of storage/storage.c
 * (storage_backup_*): a backup taken in small steps while entries are
 * applied between the steps equals the state at the index current when it
 * completes (same digest once restored), one backup at a time, and a
 * restore of the source ends a backup in progress. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../storage/storage.h"

#define T0 1614307598220ull /* 2021-02-26T02:46:38.220Z */

static struct cmd_bytes B(const char *s)
{
    struct cmd_bytes b = {s, (uint32_t)strlen(s)};

    return b;
}

/* Apply one PROP_PUT acme/ns/sid name=value as the entry at index. */
static void put(struct storage *s, uint64_t index, const char *sid,
                const char *name, const char *value)
{
    struct buf e = BUF_INIT;
    struct buf r = BUF_INIT;
    struct storage_result *res = NULL;
    uint32_t n = 0;
    struct cmd c;

    memset(&c, 0, sizeof c);
    c.op = CMD_PROP_PUT;
    c.ttl = -1;
    c.acc = B("acme");
    c.ns = B("ns");
    c.sid = B(sid);
    c.name = B(name);
    c.value = B(value);
    assert_int_equal(cmd_entry_begin(&e, T0 + index), 0);
    assert_int_equal(cmd_encode(&c, &r), 0);
    assert_int_equal(cmd_entry_add(&e, r.base, r.len), 0);
    assert_int_equal(storage_apply(s, index, e.base, e.len, &res, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(res[0].status, STORAGE_OK);
    free(res);
    buf_free(&r);
    buf_free(&e);
}

/* Fill s with enough rows for many pages; returns the last index. */
static uint64_t fill(struct storage *s)
{
    char sid[32];
    char value[1100];
    uint64_t i;

    memset(value, 'x', sizeof value);
    value[0] = '"';
    value[sizeof value - 2] = '"';
    value[sizeof value - 1] = '\0';
    for (i = 1; i <= 400; i++) {
        snprintf(sid, sizeof sid, "s%llu", (unsigned long long)i);
        put(s, i, sid, "p", value);
    }
    return 400;
}

static void digest_of_image(const void *data, size_t len, uint8_t d[32])
{
    struct storage *r;

    assert_int_equal(storage_open(&r), 0);
    assert_int_equal(storage_restore(r, data, len), 0);
    assert_int_equal(storage_digest(r, d), 0);
    storage_close(r);
}

/******************************************************************************
 * storage_backup_step
 *****************************************************************************/

static void a_backup_with_applies_between_steps_equals_the_state_at_the_end(
    void **state)
{
    struct storage *s;
    struct storage_backup *b;
    const void *data;
    size_t len;
    uint64_t index;
    uint64_t next;
    uint8_t want[32];
    uint8_t got[32];
    int done = 0;
    int steps = 0;

    (void)state;
    assert_int_equal(storage_open(&s), 0);
    next = fill(s) + 1;
    assert_int_equal(storage_backup_start(s, &b), 0);
    assert_int_equal(storage_backup_image(b, &data, &len, &index),
                     STORAGE_EBUSY);
    while (!done) {
        assert_int_equal(storage_backup_step(b, 8, &done), 0);
        if (!done) {
            char sid[32];

            /* Applies between the steps: new rows and changed ones. */
            snprintf(sid, sizeof sid, "s%d", steps % 50 + 1);
            put(s, next++, sid, "q", "1");
        }
        steps++;
    }
    assert_true(steps >= 2);
    assert_int_equal(storage_backup_image(b, &data, &len, &index), 0);
    assert_int_equal(index, storage_applied_index(s));
    assert_int_equal(storage_digest(s, want), 0);
    digest_of_image(data, len, got);
    assert_memory_equal(got, want, sizeof want);
    /* The image outlives the source. */
    storage_close(s);
    digest_of_image(data, len, got);
    assert_memory_equal(got, want, sizeof want);
    storage_backup_free(b);
}

static void a_backup_without_writes_completes_in_small_steps(void **state)
{
    struct storage *s;
    struct storage_backup *b;
    const void *data;
    size_t len;
    uint64_t index;
    uint8_t want[32];
    uint8_t got[32];
    int done = 0;
    int steps = 0;

    (void)state;
    assert_int_equal(storage_open(&s), 0);
    fill(s);
    assert_int_equal(storage_backup_start(s, &b), 0);
    while (!done) {
        assert_int_equal(storage_backup_step(b, 8, &done), 0);
        steps++;
    }
    assert_true(steps > 20); /* 400 rows of 1 KB: well over 160 pages */
    assert_int_equal(storage_backup_image(b, &data, &len, &index), 0);
    assert_int_equal(index, 400);
    assert_int_equal(storage_digest(s, want), 0);
    digest_of_image(data, len, got);
    assert_memory_equal(got, want, sizeof want);
    storage_backup_free(b);
    storage_close(s);
}

static void only_one_backup_runs_at_a_time(void **state)
{
    struct storage *s;
    struct storage_backup *b;
    struct storage_backup *b2;
    int done = 0;

    (void)state;
    assert_int_equal(storage_open(&s), 0);
    put(s, 1, "s", "p", "1");
    assert_int_equal(storage_backup_start(s, &b), 0);
    assert_int_equal(storage_backup_start(s, &b2), STORAGE_EBUSY);
    assert_null(b2);
    while (!done) {
        assert_int_equal(storage_backup_step(b, 100, &done), 0);
    }
    storage_backup_free(b);
    assert_int_equal(storage_backup_start(s, &b2), 0);
    storage_backup_free(b2);
    storage_close(s);
}

static void a_restore_of_the_source_ends_a_backup_in_progress(void **state)
{
    struct storage *s;
    struct storage_backup *b;
    void *image;
    size_t len;
    int done = 0;

    (void)state;
    assert_int_equal(storage_open(&s), 0);
    fill(s);
    assert_int_equal(storage_snapshot(s, &image, &len), 0);
    assert_int_equal(storage_backup_start(s, &b), 0);
    assert_int_equal(storage_backup_step(b, 4, &done), 0);
    assert_int_equal(done, 0);
    assert_int_equal(storage_restore(s, image, len), 0);
    assert_int_equal(storage_backup_step(b, 4, &done), STORAGE_EINTERNAL);
    assert_int_equal(done, 0);
    storage_backup_free(b);
    /* A new backup of the restored state works. */
    assert_int_equal(storage_backup_start(s, &b), 0);
    while (!done) {
        assert_int_equal(storage_backup_step(b, 1000, &done), 0);
    }
    storage_backup_free(b);
    free(image);
    storage_close(s);
}

static void closing_the_source_ends_a_backup_in_progress(void **state)
{
    struct storage *s;
    struct storage_backup *b;
    int done = 0;

    (void)state;
    assert_int_equal(storage_open(&s), 0);
    fill(s);
    assert_int_equal(storage_backup_start(s, &b), 0);
    assert_int_equal(storage_backup_step(b, 2, &done), 0);
    storage_close(s);
    assert_int_equal(storage_backup_step(b, 2, &done), STORAGE_EINTERNAL);
    storage_backup_free(b);
}

static void the_database_size_counts_its_pages(void **state)
{
    struct storage *s;
    uint64_t empty;

    (void)state;
    assert_int_equal(storage_open(&s), 0);
    empty = storage_db_bytes(s);
    assert_true(empty > 0);
    assert_true(empty % 512 == 0);
    fill(s);
    assert_true(storage_db_bytes(s) > empty + 400 * 1000);
    storage_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(
            a_backup_with_applies_between_steps_equals_the_state_at_the_end),
        cmocka_unit_test(a_backup_without_writes_completes_in_small_steps),
        cmocka_unit_test(only_one_backup_runs_at_a_time),
        cmocka_unit_test(a_restore_of_the_source_ends_a_backup_in_progress),
        cmocka_unit_test(closing_the_source_ends_a_backup_in_progress),
        cmocka_unit_test(the_database_size_counts_its_pages),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
