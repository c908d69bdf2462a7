/* Header accumulation (api/headers.h): pieces as http-parser delivers
 * them, checks, normalisation, trailers, reuse between messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "../../api/headers.h"

struct piece
{
    int value; /* 0: a piece of a name, 1: of a value */
    const char *text;
};

/* Feed the pieces, then end the block. Returns what the first failing
 * call returned, or http_headers_end's result. */
static int feed(struct http_header_list *l, const struct piece *p, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        int rv = p[i].value
                     ? http_headers_value(l, p[i].text, strlen(p[i].text))
                     : http_headers_field(l, p[i].text, strlen(p[i].text));
        if (rv != 0) {
            return rv;
        }
    }
    return http_headers_end(l);
}

static void assert_header(const struct http_header_list *l, unsigned i,
                          const char *name, const char *value)
{
    assert_true(i < l->n_items);
    assert_string_equal(l->items[i].name, name);
    assert_string_equal(l->items[i].value, value);
    assert_int_equal(l->items[i].value_len, strlen(value));
}

static void pieces_make_whole_lower_cased_trimmed_headers(void **state)
{
    static const struct piece p[] = {
        {0, "Con"}, {0, "tent-Ty"}, {0, "PE"},
        {1, " \t appl"}, {1, "ication/"}, {1, "json \t "},
        {0, "X-Empty"}, {1, ""},
        {0, "X-Blank"}, {1, "   "},
        {0, "Host"}, {1, "h"},
    };
    struct http_header_list l;

    (void)state;
    memset(&l, 0, sizeof l);
    assert_int_equal(feed(&l, p, sizeof p / sizeof p[0]), 0);
    assert_int_equal(l.n_items, 4);
    assert_header(&l, 0, "content-type", "application/json");
    assert_header(&l, 1, "x-empty", "");
    assert_header(&l, 2, "x-blank", "");
    assert_header(&l, 3, "host", "h");
    http_headers_reset(&l);
}

/* Every header split into one-byte pieces gives what whole pieces give. */
static void one_byte_pieces_give_the_same_headers(void **state)
{
    static const char *const hdrs[][2] = {
        {"Maven-Api-Key", "  0123456789abcdef "},
        {"Content-Type", "application/json"},
        {"X-Request-Id", "r-1"},
        {"Accept", ""},
    };
    struct http_header_list l;
    size_t i;
    size_t k;

    (void)state;
    memset(&l, 0, sizeof l);
    for (i = 0; i < 4; i++) {
        for (k = 0; hdrs[i][0][k] != '\0'; k++) {
            assert_int_equal(http_headers_field(&l, hdrs[i][0] + k, 1), 0);
        }
        for (k = 0; hdrs[i][1][k] != '\0'; k++) {
            assert_int_equal(http_headers_value(&l, hdrs[i][1] + k, 1), 0);
        }
    }
    assert_int_equal(http_headers_end(&l), 0);
    assert_int_equal(l.n_items, 4);
    assert_header(&l, 0, "maven-api-key", "0123456789abcdef");
    assert_header(&l, 1, "content-type", "application/json");
    assert_header(&l, 2, "x-request-id", "r-1");
    assert_header(&l, 3, "accept", "");
    http_headers_reset(&l);
}

static void bad_names_and_values_are_refused(void **state)
{
    static const struct piece space_in_name[] = {{0, "Host "}, {1, "h"}};
    static const struct piece colon_in_name[] = {{0, "a:b"}, {1, "v"}};
    static const struct piece high_byte[] = {{0, "caf\xc3\xa9"}, {1, "v"}};
    static const struct piece no_name[] = {{1, "orphan"}};
    static const struct piece bad_last[] = {
        {0, "Good"}, {1, "1"}, {0, "Bad Name"}, {1, "2"}};
    struct http_header_list l;

    (void)state;
    memset(&l, 0, sizeof l);
    assert_int_equal(feed(&l, space_in_name, 2), -1);
    http_headers_clear(&l);
    assert_int_equal(feed(&l, colon_in_name, 2), -1);
    http_headers_clear(&l);
    assert_int_equal(feed(&l, high_byte, 2), -1);
    http_headers_clear(&l);
    assert_int_equal(feed(&l, no_name, 1), -1);
    http_headers_clear(&l);
    assert_int_equal(feed(&l, bad_last, 4), -1);
    http_headers_clear(&l);
    /* A NUL inside a value. */
    assert_int_equal(http_headers_field(&l, "X", 1), 0);
    assert_int_equal(http_headers_value(&l, "a\0b", 3), 0);
    assert_int_equal(http_headers_end(&l), -1);
    http_headers_clear(&l);
    /* The list is usable again after a refusal. */
    assert_int_equal(http_headers_add(&l, "A", 1, "1", 1), 0);
    assert_int_equal(http_headers_end(&l), 0);
    assert_int_equal(l.n_items, 1);
    assert_header(&l, 0, "a", "1");
    http_headers_reset(&l);
}

static void trailers_are_checked_and_dropped(void **state)
{
    static const struct piece head[] = {{0, "Host"}, {1, "h"}};
    static const struct piece good[] = {{0, "Trailer-A"}, {1, "t"}};
    static const struct piece bad[] = {{0, "Bad Trailer"}, {1, "t"}};
    struct http_header_list l;

    (void)state;
    memset(&l, 0, sizeof l);
    assert_int_equal(feed(&l, head, 2), 0);
    assert_int_equal(feed(&l, good, 2), 0);
    assert_int_equal(l.n_items, 1);
    assert_header(&l, 0, "host", "h");
    assert_int_equal(feed(&l, bad, 2), -1);
    http_headers_reset(&l);
}

static void each_message_keeps_only_its_own_headers(void **state)
{
    static const struct piece first[] = {
        {0, "A"}, {1, "1"}, {0, "B"}, {1, "2"}};
    static const struct piece second[] = {{0, "C"}, {1, "3"}};
    struct http_header_list l;
    struct http_header *taken;
    unsigned n;

    (void)state;
    memset(&l, 0, sizeof l);
    assert_int_equal(feed(&l, first, 4), 0);
    taken = http_headers_take(&l, &n);
    assert_int_equal(n, 2);
    assert_string_equal(taken[1].name, "b");
    http_headers_clear(&l);
    assert_int_equal(feed(&l, second, 2), 0);
    assert_int_equal(l.n_items, 1);
    assert_header(&l, 0, "c", "3");
    /* The block taken before is the caller's and unchanged. */
    assert_string_equal(taken[0].name, "a");
    assert_string_equal(taken[0].value, "1");
    http_headers_free(taken);
    /* No headers at all: no block. */
    http_headers_clear(&l);
    assert_int_equal(http_headers_end(&l), 0);
    assert_null(l.items);
    http_headers_reset(&l);
}

static void a_whole_header_cannot_interrupt_a_pending_one(void **state)
{
    struct http_header_list l;

    (void)state;
    memset(&l, 0, sizeof l);
    assert_int_equal(http_headers_field(&l, "Ho", 2), 0);
    assert_int_equal(http_headers_add(&l, "X", 1, "1", 1), -1);
    assert_int_equal(http_headers_field(&l, "st", 2), 0);
    assert_int_equal(http_headers_value(&l, "h", 1), 0);
    assert_int_equal(http_headers_end(&l), 0);
    assert_int_equal(l.n_items, 1);
    assert_header(&l, 0, "host", "h");
    http_headers_reset(&l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(pieces_make_whole_lower_cased_trimmed_headers),
        cmocka_unit_test(one_byte_pieces_give_the_same_headers),
        cmocka_unit_test(bad_names_and_values_are_refused),
        cmocka_unit_test(trailers_are_checked_and_dropped),
        cmocka_unit_test(each_message_keeps_only_its_own_headers),
        cmocka_unit_test(a_whole_header_cannot_interrupt_a_pending_one),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
