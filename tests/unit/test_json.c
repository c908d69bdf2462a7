/* Unit tests for api/json.c: validation tables for every error class, exact
 * value spans, depth bounds, duplicate names, string decoding, UTF-8 edge
 * cases, and prefixes of valid documents scanned from the end of an exactly
 * sized heap buffer so that AddressSanitizer catches any over-read. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../api/json.h"

/* One table row: a document and the status json_validate must return. */
struct json_case
{
    const char *text; /* NUL-terminated document */
    int status;       /* expected json_validate result */
};

/* Validate a copy of text[0..len) placed in a heap block of exactly len
 * bytes, so reading past the end is caught. */
static int validate_exact(const char *text, size_t len, size_t *start,
                          size_t *end, enum json_type *type)
{
    char *copy = malloc(len > 0 ? len : 1);
    char *p;
    int rv;

    assert_non_null(copy);
    p = len > 0 ? copy : copy + 1;
    memcpy(copy, text, len);
    rv = json_validate(p, len, JSON_MAX_DEPTH, start, end, type);
    free(copy);
    return rv;
}

static void run_table(const struct json_case *cases, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        int rv = validate_exact(cases[i].text, strlen(cases[i].text), NULL,
                                NULL, NULL);
        if (rv != cases[i].status) {
            fail_msg("case %zu \"%s\": got %d, want %d", i, cases[i].text,
                     rv, cases[i].status);
        }
    }
}

/******************************************************************************
 * json_validate
 *****************************************************************************/

static void valid_documents_are_accepted(void **state)
{
    static const struct json_case cases[] = {
        {"0", JSON_OK},
        {"-0", JSON_OK},
        {"1.1", JSON_OK},
        {"-12.5e+10", JSON_OK},
        {"1E5", JSON_OK},
        {"1e-5", JSON_OK},
        {"12345678901234567890", JSON_OK},
        {"true", JSON_OK},
        {"false", JSON_OK},
        {"null", JSON_OK},
        {"\"\"", JSON_OK},
        {"\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\"", JSON_OK},
        {"\"\\u00e9\\uD83D\\uDE00\"", JSON_OK},
        {"\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"", JSON_OK},
        {"[]", JSON_OK},
        {"{}", JSON_OK},
        {" \t\r\n[ 1 , \"x\" , { \"a\" : [ ] } ] \n", JSON_OK},
        {"{\"a\":1,\"b\":{\"c\":[true,false,null]}}", JSON_OK},
        {"[[],[[]],{}]", JSON_OK},
    };
    (void)state;
    run_table(cases, sizeof cases / sizeof cases[0]);
}

static void syntax_errors_are_rejected_as_esyntax(void **state)
{
    static const struct json_case cases[] = {
        {"", JSON_ESYNTAX},
        {"   ", JSON_ESYNTAX},
        {"01", JSON_ESYNTAX},
        {"-01", JSON_ESYNTAX},
        {"+1", JSON_ESYNTAX},
        {"1.", JSON_ESYNTAX},
        {".5", JSON_ESYNTAX},
        {"1e", JSON_ESYNTAX},
        {"1e+", JSON_ESYNTAX},
        {"-", JSON_ESYNTAX},
        {"NaN", JSON_ESYNTAX},
        {"Infinity", JSON_ESYNTAX},
        {"-Infinity", JSON_ESYNTAX},
        {"tru", JSON_ESYNTAX},
        {"True", JSON_ESYNTAX},
        {"nul", JSON_ESYNTAX},
        {"1 2", JSON_ESYNTAX},
        {"{} x", JSON_ESYNTAX},
        {"[1,]", JSON_ESYNTAX},
        {"[,1]", JSON_ESYNTAX},
        {"[1 2]", JSON_ESYNTAX},
        {"{\"a\"}", JSON_ESYNTAX},
        {"{\"a\":}", JSON_ESYNTAX},
        {"{\"a\":1,}", JSON_ESYNTAX},
        {"{a:1}", JSON_ESYNTAX},
        {"{1:1}", JSON_ESYNTAX},
        {"[}", JSON_ESYNTAX},
        {"{]", JSON_ESYNTAX},
        {"[", JSON_ESYNTAX},
        {"\"abc", JSON_ESYNTAX},
        {"\"a\tb\"", JSON_ESYNTAX},
        {"\"a\nb\"", JSON_ESYNTAX},
        {"\"\\x\"", JSON_ESYNTAX},
        {"\"\\u12\"", JSON_ESYNTAX},
        {"\"\\u12G4\"", JSON_ESYNTAX},
        {"\"\\uD83D\"", JSON_ESYNTAX},
        {"\"\\uD83Dx\"", JSON_ESYNTAX},
        {"\"\\uD83D\\u0041\"", JSON_ESYNTAX},
        {"\"\\uDE00\"", JSON_ESYNTAX},
        {"'a'", JSON_ESYNTAX},
        {"\f1", JSON_ESYNTAX},
        {"\v1", JSON_ESYNTAX},
    };
    (void)state;
    run_table(cases, sizeof cases / sizeof cases[0]);
}

static void invalid_utf8_is_rejected_as_eutf8(void **state)
{
    static const struct json_case cases[] = {
        {"\"\x80\"", JSON_EUTF8},                 /* lone continuation */
        {"\"\xc0\xaf\"", JSON_EUTF8},             /* overlong '/' */
        {"\"\xc1\xbf\"", JSON_EUTF8},             /* overlong */
        {"\"\xe0\x80\xaf\"", JSON_EUTF8},         /* overlong 3 bytes */
        {"\"\xf0\x80\x80\xaf\"", JSON_EUTF8},     /* overlong 4 bytes */
        {"\"\xed\xa0\x80\"", JSON_EUTF8},         /* U+D800 in UTF-8 */
        {"\"\xed\xbf\xbf\"", JSON_EUTF8},         /* U+DFFF in UTF-8 */
        {"\"\xf4\x90\x80\x80\"", JSON_EUTF8},     /* U+110000 */
        {"\"\xf5\x80\x80\x80\"", JSON_EUTF8},     /* invalid lead */
        {"\"\xff\"", JSON_EUTF8},
        {"\"\xc3\"", JSON_EUTF8},                 /* truncated */
        {"\"\xe2\x82\"", JSON_EUTF8},             /* truncated */
        {"\"\xe2\x82", JSON_EUTF8},               /* truncated at end */
        {"[1, \xff]", JSON_EUTF8},                /* outside a string */
        {"{\"a\":1} \xc3", JSON_EUTF8},           /* trailing */
    };
    (void)state;
    run_table(cases, sizeof cases / sizeof cases[0]);
}

static void utf8_boundaries_are_accepted(void **state)
{
    static const struct json_case cases[] = {
        {"\"\xc2\x80\"", JSON_OK},             /* U+0080 */
        {"\"\xdf\xbf\"", JSON_OK},             /* U+07FF */
        {"\"\xe0\xa0\x80\"", JSON_OK},         /* U+0800 */
        {"\"\xed\x9f\xbf\"", JSON_OK},         /* U+D7FF */
        {"\"\xee\x80\x80\"", JSON_OK},         /* U+E000 */
        {"\"\xef\xbf\xbf\"", JSON_OK},         /* U+FFFF */
        {"\"\xf0\x90\x80\x80\"", JSON_OK},     /* U+10000 */
        {"\"\xf4\x8f\xbf\xbf\"", JSON_OK},     /* U+10FFFF */
    };
    (void)state;
    run_table(cases, sizeof cases / sizeof cases[0]);
}

static void the_value_span_is_returned_byte_for_byte(void **state)
{
    static const struct
    {
        const char *text;     /* document */
        const char *value;    /* expected exact span */
        enum json_type type;  /* expected type */
    } cases[] = {
        {"1.1", "1.1", JSON_T_NUMBER},
        {" 12345678901234567890 ", "12345678901234567890", JSON_T_NUMBER},
        {"\"\\u00e9\"", "\"\\u00e9\"", JSON_T_STRING},
        {"\n{ \"a\" : [ 1 ,2 ] }\t", "{ \"a\" : [ 1 ,2 ] }", JSON_T_OBJECT},
        {"[ ]", "[ ]", JSON_T_ARRAY},
        {" true", "true", JSON_T_TRUE},
        {"false ", "false", JSON_T_FALSE},
        {"null", "null", JSON_T_NULL},
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t start = 99;
        size_t end = 99;
        enum json_type type = JSON_T_NULL;
        size_t len = strlen(cases[i].text);

        assert_int_equal(validate_exact(cases[i].text, len, &start, &end,
                                        &type),
                         JSON_OK);
        assert_int_equal(end - start, strlen(cases[i].value));
        assert_memory_equal(cases[i].text + start, cases[i].value,
                            end - start);
        assert_int_equal(type, cases[i].type);
    }
}

/* "[[[...]]]" with n arrays. */
static char *nested_arrays(size_t n)
{
    char *s = malloc(2 * n + 1);
    size_t i;

    assert_non_null(s);
    for (i = 0; i < n; i++) {
        s[i] = '[';
        s[2 * n - 1 - i] = ']';
    }
    s[2 * n] = '\0';
    return s;
}

static void sixty_four_nested_arrays_are_accepted(void **state)
{
    char *s = nested_arrays(64);

    (void)state;
    assert_int_equal(validate_exact(s, strlen(s), NULL, NULL, NULL), JSON_OK);
    free(s);
}

static void sixty_five_nested_arrays_are_rejected_as_edepth(void **state)
{
    char *s = nested_arrays(65);

    (void)state;
    assert_int_equal(validate_exact(s, strlen(s), NULL, NULL, NULL),
                     JSON_EDEPTH);
    free(s);
}

static void depth_counts_objects_and_arrays_alike(void **state)
{
    (void)state;
    assert_int_equal(json_validate("1", 1, 0, NULL, NULL, NULL), JSON_OK);
    assert_int_equal(json_validate("[]", 2, 0, NULL, NULL, NULL),
                     JSON_EDEPTH);
    assert_int_equal(json_validate("{\"a\":[]}", 8, 1, NULL, NULL, NULL),
                     JSON_EDEPTH);
    assert_int_equal(json_validate("{\"a\":[]}", 8, 2, NULL, NULL, NULL),
                     JSON_OK);
}

static void a_huge_depth_limit_is_safe(void **state)
{
    char *s = nested_arrays(10000);

    (void)state;
    assert_int_equal(json_validate(s, strlen(s), 100000, NULL, NULL, NULL),
                     JSON_EDEPTH);
    free(s);
}

/* Every prefix of a valid document is either rejected or, when it is a
 * valid document itself, accepted; neither reads past its length. */
static void every_prefix_is_scanned_within_its_length(void **state)
{
    static const char *docs[] = {
        "{\"a\": [1, 2.5e-3, \"x\\u00e9\\uD83D\\uDE00\", true, false, "
        "null, {\"b\": {}}], \"\xc3\xa9\": \"\xf0\x9f\x98\x80\"}",
        "123",
        "-0.5E+12",
        "\"abc\\n\"",
    };
    size_t d;

    (void)state;
    for (d = 0; d < sizeof docs / sizeof docs[0]; d++) {
        size_t len = strlen(docs[d]);
        size_t n;

        for (n = 0; n <= len; n++) {
            int rv = validate_exact(docs[d], n, NULL, NULL, NULL);
            int want_ok;

            if (n == len) {
                assert_int_equal(rv, JSON_OK);
                continue;
            }
            /* The only valid proper prefixes are numbers cut between
             * digits. */
            want_ok = d == 1 && n > 0;
            want_ok = want_ok || (d == 2 && (n == 1 + 1 || n == 4 ||
                                             n == 8 - 1));
            if (want_ok) {
                assert_int_equal(rv, JSON_OK);
            } else {
                assert_int_not_equal(rv, JSON_OK);
            }
        }
    }
}

static void json_strerror_names_every_status(void **state)
{
    (void)state;
    assert_string_equal(json_strerror(JSON_OK), "ok");
    assert_string_equal(json_strerror(JSON_ESYNTAX), "malformed JSON");
    assert_string_equal(json_strerror(JSON_EDEPTH), "JSON nested too deeply");
    assert_string_equal(json_strerror(JSON_EUTF8), "invalid UTF-8 in JSON");
    assert_string_equal(json_strerror(JSON_EDUP), "duplicate member name");
    assert_string_equal(json_strerror(JSON_ETYPE), "wrong JSON type");
    assert_string_equal(json_strerror(JSON_ENOMEM), "out of memory");
    assert_string_equal(json_strerror(77), "unknown JSON error");
}

/******************************************************************************
 * json_object_members
 *****************************************************************************/

static void members_are_listed_in_order_with_exact_values(void **state)
{
    const char *text =
        " { \"a\" : 1.1 , \"b\\u0063\":{ \"x\" : [ 1 , 2 ] },\"n\":null,"
        "\"s\":\"\\u00e9\" } ";
    struct json_member *m = NULL;
    size_t n = 0;

    (void)state;
    assert_int_equal(json_object_members(text, strlen(text), JSON_MAX_DEPTH,
                                         &m, &n),
                     JSON_OK);
    assert_int_equal(n, 4);
    assert_string_equal(m[0].name, "a");
    assert_int_equal(m[0].value_len, 3);
    assert_memory_equal(m[0].value, "1.1", 3);
    assert_int_equal(m[0].type, JSON_T_NUMBER);
    assert_string_equal(m[1].name, "bc");
    assert_int_equal(m[1].name_len, 2);
    assert_int_equal(m[1].value_len, strlen("{ \"x\" : [ 1 , 2 ] }"));
    assert_memory_equal(m[1].value, "{ \"x\" : [ 1 , 2 ] }", m[1].value_len);
    assert_int_equal(m[1].type, JSON_T_OBJECT);
    assert_int_equal(m[2].type, JSON_T_NULL);
    assert_int_equal(m[3].value_len, 8);
    assert_memory_equal(m[3].value, "\"\\u00e9\"", 8);
    assert_int_equal(m[3].type, JSON_T_STRING);
    json_members_free(m, n);
}

static void an_empty_object_has_no_members(void **state)
{
    struct json_member *m = NULL;
    size_t n = 7;

    (void)state;
    assert_int_equal(json_object_members("{ }", 3, JSON_MAX_DEPTH, &m, &n),
                     JSON_OK);
    assert_int_equal(n, 0);
    json_members_free(m, n);
}

static void a_non_object_is_rejected_as_etype(void **state)
{
    struct json_member *m = NULL;
    size_t n = 0;

    (void)state;
    assert_int_equal(json_object_members("[1]", 3, JSON_MAX_DEPTH, &m, &n),
                     JSON_ETYPE);
    assert_null(m);
    assert_int_equal(json_object_members("\"s\"", 3, JSON_MAX_DEPTH, &m, &n),
                     JSON_ETYPE);
    assert_int_equal(json_object_members("{", 1, JSON_MAX_DEPTH, &m, &n),
                     JSON_ESYNTAX);
}

static void duplicate_names_are_rejected_as_edup(void **state)
{
    static const char *dups[] = {
        "{\"a\":1,\"a\":2}",
        "{\"a\":1,\"b\":2,\"a\":3}",
        "{\"a\":1,\"\\u0061\":2}",
        "{\"\\u00e9\":1,\"\xc3\xa9\":2}",
        "{\"a\\u0000\":1,\"a\\u0000\":2}",
    };
    static const char *distinct[] = {
        "{\"a\":1,\"A\":2}",
        "{\"a\":1,\"a\\u0000\":2}",
        "{\"x\":{\"a\":1},\"y\":{\"a\":1}}",
    };
    struct json_member *m = NULL;
    size_t n = 0;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof dups / sizeof dups[0]; i++) {
        assert_int_equal(json_object_members(dups[i], strlen(dups[i]),
                                             JSON_MAX_DEPTH, &m, &n),
                         JSON_EDUP);
        assert_null(m);
    }
    for (i = 0; i < sizeof distinct / sizeof distinct[0]; i++) {
        assert_int_equal(json_object_members(distinct[i],
                                             strlen(distinct[i]),
                                             JSON_MAX_DEPTH, &m, &n),
                         JSON_OK);
        json_members_free(m, n);
    }
}

static void thousands_of_members_are_checked_for_duplicates(void **state)
{
    struct buf b = BUF_INIT;
    struct json_member *m = NULL;
    size_t n = 0;
    int i;

    (void)state;
    assert_int_equal(buf_append_char(&b, '{'), 0);
    for (i = 0; i < 20000; i++) {
        assert_int_equal(buf_printf(&b, "%s\"k%d\":%d", i ? "," : "", i, i),
                         0);
    }
    assert_int_equal(buf_append_char(&b, '}'), 0);
    assert_int_equal(json_object_members(b.base, b.len, JSON_MAX_DEPTH, &m,
                                         &n),
                     JSON_OK);
    assert_int_equal(n, 20000);
    assert_string_equal(m[19999].name, "k19999");
    json_members_free(m, n);
    /* The same with one duplicate at the very end. */
    b.len--;
    assert_int_equal(buf_append_str(&b, ",\"k7\":0}"), 0);
    assert_int_equal(json_object_members(b.base, b.len, JSON_MAX_DEPTH, &m,
                                         &n),
                     JSON_EDUP);
    buf_free(&b);
}

static void member_values_are_never_read_past_the_length(void **state)
{
    const char *text = "{\"a\":123}";
    size_t len = strlen(text);
    char *copy = malloc(len);
    struct json_member *m = NULL;
    size_t n = 0;

    (void)state;
    assert_non_null(copy);
    memcpy(copy, text, len);
    assert_int_equal(json_object_members(copy, len, JSON_MAX_DEPTH, &m, &n),
                     JSON_OK);
    assert_int_equal(m[0].value_len, 3);
    json_members_free(m, n);
    assert_int_equal(json_object_members(copy, len - 1, JSON_MAX_DEPTH, &m,
                                         &n),
                     JSON_ESYNTAX);
    free(copy);
}

/******************************************************************************
 * json_string_decode
 *****************************************************************************/

static void escapes_are_decoded(void **state)
{
    const char *text = "\"a\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\u20ac"
                       "\\uD83D\\uDE00z\"";
    const char *want = "a\"\\/\b\f\n\r\t\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80z";
    struct buf out = BUF_INIT;

    (void)state;
    assert_int_equal(json_string_decode(text, strlen(text), &out), JSON_OK);
    assert_int_equal(out.len, strlen(want));
    assert_memory_equal(out.base, want, out.len);
    buf_free(&out);
}

static void an_escaped_nul_is_kept_as_a_nul_byte(void **state)
{
    const char *text = "\"a\\u0000b\"";
    struct buf out = BUF_INIT;

    (void)state;
    assert_int_equal(json_string_decode(text, strlen(text), &out), JSON_OK);
    assert_int_equal(out.len, 3);
    assert_memory_equal(out.base, "a\0b", 3);
    buf_free(&out);
}

static void an_empty_string_decodes_to_an_empty_c_string(void **state)
{
    struct buf out = BUF_INIT;

    (void)state;
    assert_int_equal(json_string_decode("\"\"", 2, &out), JSON_OK);
    assert_int_equal(out.len, 0);
    assert_non_null(out.base);
    assert_string_equal(out.base, "");
    buf_free(&out);
}

static void a_malformed_literal_leaves_the_buffer_unchanged(void **state)
{
    struct buf out = BUF_INIT;

    (void)state;
    assert_int_equal(buf_append_str(&out, "keep"), 0);
    assert_int_equal(json_string_decode("\"ab\\q\"", 6, &out), JSON_ESYNTAX);
    assert_int_equal(json_string_decode("\"ab\"x", 5, &out), JSON_ESYNTAX);
    assert_int_equal(json_string_decode("\"ab", 3, &out), JSON_ESYNTAX);
    assert_int_equal(json_string_decode("ab", 2, &out), JSON_ESYNTAX);
    assert_string_equal(out.base, "keep");
    buf_free(&out);
}

/******************************************************************************
 * json_utf8_valid
 *****************************************************************************/

static void utf8_valid_follows_the_scanner_rules(void **state)
{
    (void)state;
    assert_int_equal(json_utf8_valid("", 0), 1);
    assert_int_equal(json_utf8_valid("abc\0def", 7), 1);
    assert_int_equal(json_utf8_valid("\xc3\xa9", 2), 1);
    assert_int_equal(json_utf8_valid("\xf4\x8f\xbf\xbf", 4), 1);
    assert_int_equal(json_utf8_valid("\xc3\xa9", 1), 0);
    assert_int_equal(json_utf8_valid("\xc0\x80", 2), 0);
    assert_int_equal(json_utf8_valid("\xed\xa0\x80", 3), 0);
    assert_int_equal(json_utf8_valid("\xf4\x90\x80\x80", 4), 0);
    assert_int_equal(json_utf8_valid("\xe2\x28\xa1", 3), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(valid_documents_are_accepted),
        cmocka_unit_test(syntax_errors_are_rejected_as_esyntax),
        cmocka_unit_test(invalid_utf8_is_rejected_as_eutf8),
        cmocka_unit_test(utf8_boundaries_are_accepted),
        cmocka_unit_test(the_value_span_is_returned_byte_for_byte),
        cmocka_unit_test(sixty_four_nested_arrays_are_accepted),
        cmocka_unit_test(sixty_five_nested_arrays_are_rejected_as_edepth),
        cmocka_unit_test(depth_counts_objects_and_arrays_alike),
        cmocka_unit_test(a_huge_depth_limit_is_safe),
        cmocka_unit_test(every_prefix_is_scanned_within_its_length),
        cmocka_unit_test(json_strerror_names_every_status),
        cmocka_unit_test(members_are_listed_in_order_with_exact_values),
        cmocka_unit_test(an_empty_object_has_no_members),
        cmocka_unit_test(a_non_object_is_rejected_as_etype),
        cmocka_unit_test(duplicate_names_are_rejected_as_edup),
        cmocka_unit_test(thousands_of_members_are_checked_for_duplicates),
        cmocka_unit_test(member_values_are_never_read_past_the_length),
        cmocka_unit_test(escapes_are_decoded),
        cmocka_unit_test(an_escaped_nul_is_kept_as_a_nul_byte),
        cmocka_unit_test(an_empty_string_decodes_to_an_empty_c_string),
        cmocka_unit_test(a_malformed_literal_leaves_the_buffer_unchanged),
        cmocka_unit_test(utf8_valid_follows_the_scanner_rules),
    };
    return cmocka_run_group_tests(tests, 0, 0);
}
