/* Fuzz target: the JSON scanner (api/json.c) against jansson.
 *
 * For arbitrary bytes:
 * - json_validate never reads outside the input, and on success the value
 *   span lies inside it and holds only the value (validating the span
 *   alone gives the same type and the whole span);
 * - agreement with jansson (json_loadb with JSON_DECODE_ANY |
 *   JSON_ALLOW_NUL), both ways, at depths both accept: a text one accepts
 *   the other accepts too, except where jansson documents a narrower
 *   range (integers beyond 64 bits, reals that overflow a double, NUL in
 *   an object key), which json.c accepts on purpose (values keep their
 *   exact text, DESIGN.md §1), and raw NUL bytes between tokens, which
 *   jansson skips and RFC 8259 (and json.c) refuse;
 * - for an object, json_object_members lists each member once (EDUP
 *   otherwise), each value re-validates with its type, jansson sees the
 *   same number of members, and every string member decodes with
 *   json_string_decode into valid UTF-8. */
#include <jansson.h>
#include <string.h>

#include "../../api/json.h"
#include "fuzz.h"

#define FUZZ_JSON_DEPTH 32 /* levels: below both parsers' limits */

/* 1 when jansson's error is one of its documented narrower ranges. */
static int jansson_range_error(const json_error_t *err)
{
    return strstr(err->text, "too big") != NULL ||
           strstr(err->text, "overflow") != NULL ||
           strstr(err->text, "NUL byte in object key") != NULL;
}

/* Nesting depth of a validated text (brackets outside strings). */
static unsigned depth_of(const char *p, size_t n)
{
    unsigned depth = 0;
    unsigned max = 0;
    int in_string = 0;
    size_t i;

    for (i = 0; i < n; i++) {
        char ch = p[i];

        if (in_string) {
            if (ch == '\\') {
                i++;
            } else if (ch == '"') {
                in_string = 0;
            }
        } else if (ch == '"') {
            in_string = 1;
        } else if (ch == '[' || ch == '{') {
            depth++;
            max = depth > max ? depth : max;
        } else if ((ch == ']' || ch == '}') && depth > 0) {
            depth--;
        }
    }
    return max;
}

static void check_members(const char *text, size_t len, json_t *jv)
{
    struct json_member *m = NULL;
    size_t n = 0;
    size_t i;
    int rv = json_object_members(text, len, JSON_MAX_DEPTH, &m, &n);

    if (rv == JSON_EDUP) {
        return;
    }
    FUZZ_CHECK(rv == JSON_OK);
    if (jv != NULL) {
        FUZZ_CHECK(json_is_object(jv) && json_object_size(jv) == n);
    }
    for (i = 0; i < n; i++) {
        size_t s = 0;
        size_t e = 0;
        enum json_type t;

        FUZZ_CHECK(m[i].value >= text &&
                   m[i].value + m[i].value_len <= text + len);
        FUZZ_CHECK(json_validate(m[i].value, m[i].value_len, JSON_MAX_DEPTH, &s,
                                 &e, &t) == JSON_OK);
        FUZZ_CHECK(t == m[i].type && s == 0 && e == m[i].value_len);
        FUZZ_CHECK(json_utf8_valid(m[i].name, m[i].name_len));
        if (t == JSON_T_STRING) {
            struct buf out = BUF_INIT;

            FUZZ_CHECK(json_string_decode(m[i].value, m[i].value_len, &out) ==
                       JSON_OK);
            FUZZ_CHECK(
                json_utf8_valid(out.base != NULL ? out.base : "", out.len));
            buf_free(&out);
        }
    }
    json_members_free(m, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    size_t start = 0;
    size_t end = 0;
    enum json_type type;
    json_error_t err;
    json_t *jv;
    int rv = json_validate(text, size, JSON_MAX_DEPTH, &start, &end, &type);
    int shallow;

    jv = json_loadb(text, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
    if (rv == JSON_OK) {
        size_t s2 = 0;
        size_t e2 = 0;
        enum json_type t2;

        FUZZ_CHECK(start <= end && end <= size && start < end);
        FUZZ_CHECK(json_validate(text + start, end - start, JSON_MAX_DEPTH, &s2,
                                 &e2, &t2) == JSON_OK);
        FUZZ_CHECK(t2 == type && s2 == 0 && e2 == end - start);
        shallow = depth_of(text + start, end - start) <= FUZZ_JSON_DEPTH;
        FUZZ_CHECK(jv != NULL || !shallow || jansson_range_error(&err));
        if (type == JSON_T_STRING) {
            struct buf out = BUF_INIT;

            FUZZ_CHECK(json_string_decode(text + start, end - start, &out) ==
                       JSON_OK);
            FUZZ_CHECK(
                json_utf8_valid(out.base != NULL ? out.base : "", out.len));
            buf_free(&out);
        }
        if (type == JSON_T_OBJECT) {
            check_members(text, size, jv);
        }
    } else if (jv != NULL && rv != JSON_EDEPTH &&
               memchr(text, '\0', size) == NULL) {
        /* jansson accepted what json.c refused: only nesting may differ.
         * Raw NUL bytes are left out: jansson skips one between tokens
         * ("[1\0,2]"), which RFC 8259 does not allow and json.c refuses
         * (regressions/json/jansson-skips-raw-nul-between-tokens). */
        FUZZ_CHECK(depth_of(text, size) > FUZZ_JSON_DEPTH);
    }
    json_decref(jv);
    return 0;
}
