/* Unit tests for storage/command.c: the command and entry codec.
 *
 * Every op round-trips; every prefix of a valid record or entry, a corrupted
 * length, trailing bytes, a count mismatch and an unknown op are rejected.
 * Records are decoded from exact-size heap copies so that ASan catches any
 * read past the end. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../storage/command.h"

#define BYTES(s) ((struct cmd_bytes){(s), (uint32_t)(sizeof(s) - 1)})

static const char hash32[] = "0123456789abcdef0123456789abcdef";

/* Decode from an exact-size heap copy so over-reads are caught by ASan. */
static int decode_copy(const char *p, size_t len, struct cmd *out, char **copy)
{
    *copy = malloc(len > 0 ? len : 1);
    assert_non_null(*copy);
    if (len > 0) {
        memcpy(*copy, p, len);
    }
    return cmd_decode(*copy, len, out);
}

static void assert_bytes_equal(struct cmd_bytes a, struct cmd_bytes b)
{
    assert_int_equal(a.len, b.len);
    if (a.len > 0) {
        assert_memory_equal(a.base, b.base, a.len);
    }
}

static void assert_cmd_equal(const struct cmd *a, const struct cmd *b)
{
    assert_int_equal(a->op, b->op);
    assert_int_equal(a->has_if_match, b->has_if_match);
    assert_int_equal(a->if_match, b->if_match);
    assert_int_equal(a->ttl, b->ttl);
    assert_bytes_equal(a->request_id, b->request_id);
    assert_bytes_equal(a->acc, b->acc);
    assert_bytes_equal(a->ns, b->ns);
    assert_bytes_equal(a->sid, b->sid);
    assert_bytes_equal(a->name, b->name);
    assert_bytes_equal(a->value, b->value);
    assert_bytes_equal(a->key_hash, b->key_hash);
    assert_int_equal(a->n_props, b->n_props);
    assert_bytes_equal(a->props, b->props);
    assert_int_equal(a->node_id, b->node_id);
    assert_bytes_equal(a->http_addr, b->http_addr);
    assert_bytes_equal(a->region, b->region);
}

/* One sample command of each op, with only the fields that op takes. */
static struct buf patch_pairs = BUF_INIT;

static size_t sample_cmds(struct cmd *c)
{
    size_t n = 0;

    buf_reset(&patch_pairs);
    assert_int_equal(cmd_props_add(&patch_pairs, "a", 1, "1", 1), 0);
    assert_int_equal(cmd_props_add(&patch_pairs, "bb", 2, "\"x\"", 3), 0);

    memset(c, 0, 10 * sizeof *c);
    c[n] = (struct cmd){.op = CMD_SET_KEY, .ttl = -1, .acc = BYTES("acc"),
                        .key_hash = BYTES(hash32)};
    n++;
    c[n] = (struct cmd){.op = CMD_NS_PUT, .ttl = 60, .acc = BYTES("acc"),
                        .ns = BYTES("ns"), .request_id = BYTES("r1")};
    n++;
    c[n] = (struct cmd){.op = CMD_NS_DELETE, .ttl = -1, .acc = BYTES("acc"),
                        .ns = BYTES("ns")};
    n++;
    c[n] = (struct cmd){.op = CMD_PATCH, .ttl = -1, .has_if_match = 1, .if_match = 7,
                        .acc = BYTES("acc"), .ns = BYTES("ns"),
                        .sid = BYTES("s1"), .n_props = 2,
                        .props = {patch_pairs.base, (uint32_t)patch_pairs.len}};
    n++;
    c[n] = (struct cmd){.op = CMD_PROP_PUT, .ttl = -1, .acc = BYTES("acc"),
                        .ns = BYTES("ns"), .sid = BYTES("__default__"),
                        .name = BYTES("p"), .value = BYTES("{\"k\":[1,2]}")};
    n++;
    c[n] = (struct cmd){.op = CMD_PROP_DELETE, .ttl = -1,
                        .has_if_match = 1, .if_match = UINT64_MAX, .acc = BYTES("acc"),
                        .ns = BYTES("ns"), .sid = BYTES("s"),
                        .name = BYTES("p")};
    n++;
    c[n] = (struct cmd){.op = CMD_SESSION_CLEAR, .ttl = -1, .acc = BYTES("a"),
                        .ns = BYTES("n"), .sid = BYTES("s")};
    n++;
    c[n] = (struct cmd){.op = CMD_SESSION_TTL, .ttl = 3600, .acc = BYTES("a"),
                        .ns = BYTES("n"), .sid = BYTES("s")};
    n++;
    c[n] = (struct cmd){.op = CMD_PURGE, .ttl = -1};
    n++;
    c[n] = (struct cmd){.op = CMD_NODE_INFO, .ttl = -1, .node_id = 3,
                        .http_addr = BYTES("127.0.0.1:8083"),
                        .region = BYTES("eu")};
    n++;
    return n;
}

static int teardown_pairs(void **state)
{
    (void)state;
    buf_free(&patch_pairs);
    return 0;
}

/* --- cmd_encode / cmd_decode ----------------------------------------- */

static void every_op_round_trips(void **state)
{
    struct cmd c[10];
    size_t n = sample_cmds(c);
    size_t i;

    (void)state;
    for (i = 0; i < n; i++) {
        struct buf b = BUF_INIT;
        struct cmd d;
        char *copy;

        assert_int_equal(cmd_encode(&c[i], &b), 0);
        assert_int_equal(decode_copy(b.base, b.len, &d, &copy), 0);
        /* Compare contents, then make sure spans point into the input. */
        assert_cmd_equal(&c[i], &d);
        if (d.acc.len > 0) {
            assert_true(d.acc.base >= copy && d.acc.base < copy + b.len);
        }
        free(copy);
        buf_free(&b);
    }
}

static void patch_pairs_iterate_in_order(void **state)
{
    struct cmd c[10];
    struct buf b = BUF_INIT;
    struct cmd d;
    struct cmd_bytes name;
    struct cmd_bytes value;
    size_t pos = 0;
    char *copy;

    (void)state;
    sample_cmds(c);
    assert_int_equal(cmd_encode(&c[3], &b), 0);
    assert_int_equal(decode_copy(b.base, b.len, &d, &copy), 0);
    assert_int_equal(cmd_props_next(&d, &pos, &name, &value), 1);
    assert_int_equal(name.len, 1);
    assert_memory_equal(name.base, "a", 1);
    assert_memory_equal(value.base, "1", 1);
    assert_int_equal(cmd_props_next(&d, &pos, &name, &value), 1);
    assert_int_equal(name.len, 2);
    assert_memory_equal(value.base, "\"x\"", 3);
    assert_int_equal(cmd_props_next(&d, &pos, &name, &value), 0);
    free(copy);
    buf_free(&b);
}

static void every_truncation_of_a_command_is_rejected(void **state)
{
    struct cmd c[10];
    size_t n = sample_cmds(c);
    size_t i;
    size_t cut;

    (void)state;
    for (i = 0; i < n; i++) {
        struct buf b = BUF_INIT;

        assert_int_equal(cmd_encode(&c[i], &b), 0);
        for (cut = 0; cut < b.len; cut++) {
            struct cmd d;
            char *copy;

            /* PATCH pairs are the record's tail: a cut at a pair boundary
             * still fails because n_props pairs are required. */
            assert_int_equal(decode_copy(b.base, cut, &d, &copy), -1);
            free(copy);
        }
        buf_free(&b);
    }
}

static void trailing_bytes_after_a_command_are_rejected(void **state)
{
    struct cmd c[10];
    size_t n = sample_cmds(c);
    size_t i;

    (void)state;
    for (i = 0; i < n; i++) {
        struct buf b = BUF_INIT;
        struct cmd d;
        char *copy;

        assert_int_equal(cmd_encode(&c[i], &b), 0);
        assert_int_equal(buf_put_u8(&b, 0), 0);
        assert_int_equal(decode_copy(b.base, b.len, &d, &copy), -1);
        free(copy);
        buf_free(&b);
    }
}

static void a_huge_field_length_is_rejected(void **state)
{
    struct cmd c[10];
    struct buf b = BUF_INIT;
    struct cmd d;
    char *copy;
    size_t off = 1 + 1 + 8 + 8; /* request_id length */
    uint32_t bad[] = {0xffffffffu, CMD_MAX_FIELD_LEN + 1, 0x7fffffffu, 1000};
    size_t i;

    (void)state;
    sample_cmds(c);
    assert_int_equal(cmd_encode(&c[1], &b), 0);
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memcpy(b.base + off, &bad[i], 4); /* tests run little endian */
        assert_int_equal(decode_copy(b.base, b.len, &d, &copy), -1);
        free(copy);
    }
    buf_free(&b);
}

static void an_unknown_op_is_rejected(void **state)
{
    struct cmd c[10];
    struct buf b = BUF_INIT;
    struct cmd d;
    char *copy;
    uint8_t ops[] = {0, 11, 200, 255};
    size_t i;

    (void)state;
    sample_cmds(c);
    assert_int_equal(cmd_encode(&c[8], &b), 0); /* PURGE: no fields */
    for (i = 0; i < sizeof ops; i++) {
        b.base[0] = (char)ops[i];
        assert_int_equal(decode_copy(b.base, b.len, &d, &copy), -1);
        free(copy);
    }
    c[8].op = 42;
    assert_int_equal(cmd_encode(&c[8], &b), -1);
    buf_free(&b);
}

static void unknown_flags_are_rejected(void **state)
{
    struct cmd c[10];
    struct buf b = BUF_INIT;
    struct cmd d;
    char *copy;

    (void)state;
    sample_cmds(c);
    assert_int_equal(cmd_encode(&c[8], &b), 0);
    b.base[1] = 2;
    assert_int_equal(decode_copy(b.base, b.len, &d, &copy), -1);
    free(copy);
    buf_free(&b);
}

static void a_version_without_the_if_match_flag_is_rejected(void **state)
{
    struct cmd c[10];
    struct buf b = BUF_INIT;
    struct cmd d;
    char *copy;

    (void)state;
    sample_cmds(c);
    c[8].has_if_match = 0;
    c[8].if_match = 0;
    assert_int_equal(cmd_encode(&c[8], &b), 0);
    b.base[2] = 5; /* if_match low byte, flag still clear */
    assert_int_equal(decode_copy(b.base, b.len, &d, &copy), -1);
    free(copy);
    buf_free(&b);
}

static void a_key_hash_that_is_not_32_bytes_is_rejected(void **state)
{
    struct buf b = BUF_INIT;
    struct cmd d;
    char *copy;

    (void)state;
    /* Hand-encode SET_KEY with a 31-byte hash. */
    assert_int_equal(buf_put_u8(&b, CMD_SET_KEY), 0);
    assert_int_equal(buf_put_u8(&b, 0), 0);
    assert_int_equal(buf_put_u64(&b, 0), 0);
    assert_int_equal(buf_put_u64(&b, (uint64_t)-1), 0);
    assert_int_equal(buf_put_u32(&b, 0), 0);
    assert_int_equal(buf_put_u32(&b, 1), 0);
    assert_int_equal(buf_append(&b, "a", 1), 0);
    assert_int_equal(buf_put_u32(&b, 31), 0);
    assert_int_equal(buf_append(&b, hash32, 31), 0);
    assert_int_equal(decode_copy(b.base, b.len, &d, &copy), -1);
    free(copy);
    buf_free(&b);
}

static void a_patch_whose_count_disagrees_with_its_pairs_is_rejected(void **state)
{
    struct cmd c[10];
    struct buf b = BUF_INIT;
    struct cmd d;
    char *copy;
    size_t count_off;
    uint32_t counts[] = {0, 1, 3, 0xffffffffu};
    size_t i;

    (void)state;
    sample_cmds(c);
    /* Encoder refuses a count that does not match the pairs. */
    c[3].n_props = 3;
    assert_int_equal(cmd_encode(&c[3], &b), -1);
    assert_int_equal(b.len, 0);
    c[3].n_props = 2;
    assert_int_equal(cmd_encode(&c[3], &b), 0);
    count_off = b.len - c[3].props.len - 4;
    for (i = 0; i < sizeof counts / sizeof counts[0]; i++) {
        memcpy(b.base + count_off, &counts[i], 4);
        assert_int_equal(decode_copy(b.base, b.len, &d, &copy), -1);
        free(copy);
    }
    buf_free(&b);
}

static void a_field_longer_than_the_limit_is_not_encoded(void **state)
{
    struct cmd c = {.op = CMD_NS_PUT, .ttl = -1};
    struct buf b = BUF_INIT;
    static const char big[1];

    (void)state;
    assert_int_equal(buf_append(&b, "xy", 2), 0);
    c.acc.base = big;
    c.acc.len = CMD_MAX_FIELD_LEN + 1;
    assert_int_equal(cmd_encode(&c, &b), -1);
    assert_int_equal(b.len, 2); /* truncated back */
    buf_free(&b);
}

/* --- entries ---------------------------------------------------------- */

static void build_entry(struct buf *e, struct cmd *c, size_t n)
{
    size_t i;

    assert_int_equal(cmd_entry_begin(e, 1614307598220ull), 0);
    for (i = 0; i < n; i++) {
        struct buf r = BUF_INIT;

        assert_int_equal(cmd_encode(&c[i], &r), 0);
        assert_int_equal(cmd_entry_add(e, r.base, r.len), 0);
        buf_free(&r);
    }
    assert_int_equal(cmd_entry_count(e), n);
}

static void an_entry_with_several_commands_round_trips(void **state)
{
    struct cmd c[10];
    size_t n = sample_cmds(c);
    struct buf e = BUF_INIT;
    struct cmd_entry it;
    const char *rec;
    size_t rec_len;
    size_t i = 0;
    char *copy;
    int rc;

    (void)state;
    build_entry(&e, c, n);
    copy = malloc(e.len);
    assert_non_null(copy);
    memcpy(copy, e.base, e.len);
    assert_int_equal(cmd_entry_open(copy, e.len, &it), 0);
    assert_int_equal(it.time_ms, 1614307598220ull);
    assert_int_equal(it.count, n);
    while ((rc = cmd_entry_next(&it, &rec, &rec_len)) == 1) {
        struct cmd d;

        assert_true(i < n);
        assert_int_equal(cmd_decode(rec, rec_len, &d), 0);
        assert_cmd_equal(&c[i], &d);
        i++;
    }
    assert_int_equal(rc, 0);
    assert_int_equal(i, n);
    assert_int_equal(it.count, n); /* iteration leaves count alone */
    free(copy);
    buf_free(&e);
}

static void an_empty_entry_has_no_records(void **state)
{
    struct buf e = BUF_INIT;
    struct cmd_entry it;
    const char *rec;
    size_t rec_len;

    (void)state;
    assert_int_equal(cmd_entry_begin(&e, 5), 0);
    assert_int_equal(e.len, CMD_ENTRY_HEADER_LEN);
    assert_int_equal(cmd_entry_open(e.base, e.len, &it), 0);
    assert_int_equal(cmd_entry_next(&it, &rec, &rec_len), 0);
    buf_free(&e);
}

/* Walk an entry completely; returns the last cmd_entry_next result, or -1
 * when open fails. */
static int walk_entry(const char *p, size_t len)
{
    struct cmd_entry it;
    const char *rec;
    size_t rec_len;
    int rc;

    if (cmd_entry_open(p, len, &it) != 0) {
        return -1;
    }
    while ((rc = cmd_entry_next(&it, &rec, &rec_len)) == 1) {
        assert_true(rec >= p && rec + rec_len <= p + len);
    }
    return rc;
}

static void every_truncation_of_an_entry_is_rejected(void **state)
{
    struct cmd c[10];
    size_t n = sample_cmds(c);
    struct buf e = BUF_INIT;
    size_t cut;

    (void)state;
    build_entry(&e, c, n);
    for (cut = 0; cut < e.len; cut++) {
        char *copy = malloc(cut > 0 ? cut : 1);

        assert_non_null(copy);
        memcpy(copy, e.base, cut);
        assert_int_equal(walk_entry(copy, cut), -1);
        free(copy);
    }
    buf_free(&e);
}

static void trailing_bytes_after_the_last_record_are_rejected(void **state)
{
    struct cmd c[10];
    size_t n = sample_cmds(c);
    struct buf e = BUF_INIT;

    (void)state;
    build_entry(&e, c, n);
    assert_int_equal(buf_put_u8(&e, 0), 0);
    assert_int_equal(walk_entry(e.base, e.len), -1);
    buf_free(&e);
}

static void an_entry_count_mismatch_is_rejected(void **state)
{
    struct cmd c[10];
    size_t n = sample_cmds(c);
    struct buf e = BUF_INIT;
    uint32_t counts[] = {0, 1, 9, 11, 0xffffffffu};
    size_t i;

    (void)state;
    build_entry(&e, c, n);
    for (i = 0; i < sizeof counts / sizeof counts[0]; i++) {
        memcpy(e.base + 12, &counts[i], 4);
        assert_int_equal(walk_entry(e.base, e.len), -1);
    }
    buf_free(&e);
}

static void a_huge_record_length_in_an_entry_is_rejected(void **state)
{
    struct cmd c[10];
    struct buf e = BUF_INIT;
    uint32_t bad = 0xffffffffu;

    (void)state;
    sample_cmds(c);
    build_entry(&e, c, 2);
    memcpy(e.base + CMD_ENTRY_HEADER_LEN, &bad, 4);
    assert_int_equal(walk_entry(e.base, e.len), -1);
    buf_free(&e);
}

static void a_bad_entry_header_is_rejected(void **state)
{
    struct buf e = BUF_INIT;
    struct cmd_entry it;
    size_t i;

    (void)state;
    assert_int_equal(cmd_entry_begin(&e, 5), 0);
    for (i = 0; i < 4; i++) {
        char saved = e.base[i];

        e.base[i] = (char)(saved + 1);
        assert_int_equal(cmd_entry_open(e.base, e.len, &it), -1);
        e.base[i] = saved;
    }
    assert_int_equal(cmd_entry_open(e.base, e.len, &it), 0);
    assert_int_equal(cmd_entry_open(NULL, 0, &it), -1);
    buf_free(&e);
}

static void adding_to_a_buffer_without_a_header_fails(void **state)
{
    struct buf e = BUF_INIT;

    (void)state;
    assert_int_equal(cmd_entry_add(&e, "x", 1), -1);
    assert_int_equal(cmd_entry_count(&e), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_op_round_trips),
        cmocka_unit_test(patch_pairs_iterate_in_order),
        cmocka_unit_test(every_truncation_of_a_command_is_rejected),
        cmocka_unit_test(trailing_bytes_after_a_command_are_rejected),
        cmocka_unit_test(a_huge_field_length_is_rejected),
        cmocka_unit_test(an_unknown_op_is_rejected),
        cmocka_unit_test(unknown_flags_are_rejected),
        cmocka_unit_test(a_version_without_the_if_match_flag_is_rejected),
        cmocka_unit_test(a_key_hash_that_is_not_32_bytes_is_rejected),
        cmocka_unit_test(a_patch_whose_count_disagrees_with_its_pairs_is_rejected),
        cmocka_unit_test(a_field_longer_than_the_limit_is_not_encoded),
        cmocka_unit_test(an_entry_with_several_commands_round_trips),
        cmocka_unit_test(an_empty_entry_has_no_records),
        cmocka_unit_test(every_truncation_of_an_entry_is_rejected),
        cmocka_unit_test(trailing_bytes_after_the_last_record_are_rejected),
        cmocka_unit_test(an_entry_count_mismatch_is_rejected),
        cmocka_unit_test(a_huge_record_length_in_an_entry_is_rejected),
        cmocka_unit_test(a_bad_entry_header_is_rejected),
        cmocka_unit_test(adding_to_a_buffer_without_a_header_fails),
    };

    return cmocka_run_group_tests(tests, NULL, teardown_pairs);
}
