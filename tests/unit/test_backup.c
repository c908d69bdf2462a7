/* Unit tests for the online backup of storage/storage.c
 * (storage_backup_fork): the image is the state at the fork (same digest
 * once restored) whatever is applied or restored afterwards, one backup at
 * a time until released, and a closed source leaves the image whole. */
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

/* Read a forked backup's image; the caller frees *data. */
static void read_backup(struct storage_image *img, void **data, size_t *len)
{
    assert_int_equal(storage_image_read(img, data, len), 0);
    assert_non_null(*data);
    assert_int_equal(img->pid, 0);
    assert_int_equal(img->fd, -1);
}

static void a_backup_is_the_state_at_the_fork_whatever_comes_after(
    void **state)
{
    struct storage *s;
    struct storage_image img;
    uint8_t want[32];
    uint8_t got[32];
    void *data;
    size_t len;
    void *other;
    size_t other_len;
    uint64_t last;

    (void)state;
    assert_int_equal(storage_open(&s), 0);
    last = fill(s);
    assert_int_equal(storage_digest(s, want), 0);
    assert_int_equal(storage_backup_fork(s, &img), 0);
    /* Applies, and a restore of another state, after the fork. */
    put(s, last + 1, "late", "p", "1");
    assert_int_equal(storage_snapshot(s, &other, &other_len), 0);
    assert_int_equal(storage_restore(s, other, other_len), 0);
    put(s, last + 2, "later", "p", "2");
    read_backup(&img, &data, &len);
    storage_backup_release(s);
    digest_of_image(data, len, got);
    assert_memory_equal(got, want, sizeof want);
    free(data);
    free(other);
    storage_close(s);
}

static void only_one_backup_runs_at_a_time(void **state)
{
    struct storage *s;
    struct storage_image img;
    struct storage_image img2;
    void *data;
    size_t len;

    (void)state;
    assert_int_equal(storage_open(&s), 0);
    put(s, 1, "s", "p", "1");
    assert_int_equal(storage_backup_fork(s, &img), 0);
    assert_int_equal(storage_backup_fork(s, &img2), STORAGE_EBUSY);
    assert_int_equal(img2.pid, 0);
    assert_int_equal(img2.fd, -1);
    /* A digest has a slot of its own. */
    assert_int_equal(storage_digest_fork(s, &img2), 0);
    storage_image_discard(&img2);
    storage_digest_release(s);
    read_backup(&img, &data, &len);
    free(data);
    /* Still busy until released, even when read. */
    assert_int_equal(storage_backup_fork(s, &img2), STORAGE_EBUSY);
    storage_backup_release(s);
    assert_int_equal(storage_backup_fork(s, &img2), 0);
    storage_image_discard(&img2);
    storage_backup_release(s);
    storage_close(s);
}

static void a_closed_source_leaves_the_backup_whole(void **state)
{
    struct storage *s;
    struct storage_image img;
    uint8_t want[32];
    uint8_t got[32];
    void *data;
    size_t len;

    (void)state;
    assert_int_equal(storage_open(&s), 0);
    fill(s);
    assert_int_equal(storage_digest(s, want), 0);
    assert_int_equal(storage_backup_fork(s, &img), 0);
    storage_close(s);
    read_backup(&img, &data, &len);
    digest_of_image(data, len, got);
    assert_memory_equal(got, want, sizeof want);
    free(data);
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
            a_backup_is_the_state_at_the_fork_whatever_comes_after),
        cmocka_unit_test(only_one_backup_runs_at_a_time),
        cmocka_unit_test(a_closed_source_leaves_the_backup_whole),
        cmocka_unit_test(the_database_size_counts_its_pages),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
