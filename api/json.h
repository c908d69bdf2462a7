/* A JSON scanner that validates and locates values without re-serializing
 * them, so stored values keep their exact text ("1.1" stays "1.1",
 * 12345678901234567890 stays itself). RFC 8259 grammar, strict UTF-8 (no
 * overlongs, no surrogates encoded in UTF-8, no code points above
 * U+10FFFF), escapes checked (a \u high surrogate must be followed by a low
 * one), nesting bounded.
 *
 * The scanner never allocates except in json_object_members (the member
 * array) and json_string_decode (the decoded text). */
#ifndef CTXD_JSON_H
#define CTXD_JSON_H

#include <stddef.h>

#include "../lib/buf.h"

#define JSON_MAX_DEPTH 64 /* nesting levels accepted, counting the outer one */

#define JSON_ERRORS(X)                                   \
    X(JSON_OK, 0, "ok")                                  \
    X(JSON_ESYNTAX, 1, "malformed JSON")                 \
    X(JSON_EDEPTH, 2, "JSON nested too deeply")          \
    X(JSON_EUTF8, 3, "invalid UTF-8 in JSON")            \
    X(JSON_EDUP, 4, "duplicate member name")             \
    X(JSON_ETYPE, 5, "wrong JSON type")                  \
    X(JSON_ENOMEM, 6, "out of memory")

enum json_status {
#define JSON_ENUM(name, code, text) name = code,
    JSON_ERRORS(JSON_ENUM)
#undef JSON_ENUM
};

const char *json_strerror(int status);

enum json_type {
    JSON_T_NULL,
    JSON_T_FALSE,
    JSON_T_TRUE,
    JSON_T_NUMBER,
    JSON_T_STRING,
    JSON_T_ARRAY,
    JSON_T_OBJECT,
};

/* Validate that text[0..len) is exactly one JSON value, optionally
 * surrounded by whitespace, nested at most max_depth levels. On success
 * *start and *end delimit the value without the surrounding whitespace and
 * *type is its type. */
int json_validate(const char *text, size_t len, unsigned max_depth,
                  size_t *start, size_t *end, enum json_type *type);

/* One top-level member of an object. */
struct json_member
{
    char *name;        /* decoded, NUL-terminated, malloc'd */
    size_t name_len;   /* may be less than strlen if name has \u0000 */
    const char *value; /* exact text inside the input, not copied */
    size_t value_len;
    enum json_type type;
};

/* Validate text as an object and list its top-level members in order.
 * ETYPE when it is valid JSON but not an object; EDUP when two members have
 * the same decoded name. On success *members (free with
 * json_members_free) has *n entries. */
int json_object_members(const char *text, size_t len, unsigned max_depth,
                        struct json_member **members, size_t *n);
void json_members_free(struct json_member *members, size_t n);

/* Decode the JSON string literal at text[0..len) (quotes included,
 * already validated) into out as UTF-8. */
int json_string_decode(const char *text, size_t len, struct buf *out);

/* 1 when p[0..n) is valid UTF-8 (same rules as the scanner). */
int json_utf8_valid(const char *p, size_t n);

#endif
