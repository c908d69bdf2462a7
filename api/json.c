/* JSON scanner: validates RFC 8259 text in one pass and locates values
 * without re-serializing them.
 *
 * Grammar (RFC 8259) as checked here:
 *
 *   text    = ws value ws
 *   ws      = *( %x20 / %x09 / %x0A / %x0D )
 *   value   = object / array / string / number / "true" / "false" / "null"
 *   number  = [ "-" ] ( "0" / [1-9] *DIGIT ) [ "." 1*DIGIT ]
 *             [ ( "e" / "E" ) [ "+" / "-" ] 1*DIGIT ]
 *   string  = '"' *( unescaped / "\" ( '"' / "\" / "/" / "b" / "f" / "n" /
 *             "r" / "t" / "u" 4HEXDIG ) ) '"'
 *
 * Strings hold strict UTF-8 (see utf8_seq); a \u escape of a high surrogate
 * (D800..DBFF) must be followed at once by a \u escape of a low surrogate
 * (DC00..DFFF), and a low surrogate never stands alone.
 *
 * The validator is iterative: containers are kept on a bit stack (1 = object,
 * 0 = array) of at most JSON_STACK_BITS levels, so it never recurses and
 * never allocates. Depth 1 is a top-level array or object; a top-level
 * scalar has depth 0.
 *
 * Invariants: no byte at or past text[len] is ever read; every error is
 * reported as the first one found, except that an input which is not valid
 * UTF-8 anywhere reports JSON_EUTF8 in preference to a syntax or depth
 * error, so the API can say why the body was refused. */
#include "json.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../lib/crypto.h"

/* Deepest nesting the bit stack can track; a larger max_depth is clamped. */
#define JSON_STACK_BITS 4096

/* Scanner state over one input. */
struct scanner
{
    const unsigned char *p; /* input, not owned */
    size_t len;             /* input length in bytes */
    size_t pos;             /* next byte to read, always <= len */
};

const char *json_strerror(int status)
{
    switch (status) {
#define JSON_TEXT(name, code, text) \
    case code:                      \
        return text;
        JSON_ERRORS(JSON_TEXT)
#undef JSON_TEXT
        default:
            return "unknown JSON error";
    }
}

/* Length of the valid UTF-8 sequence at p[0..n), or 0 when it is not one:
 * truncated, overlong, a UTF-16 surrogate, or above U+10FFFF. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    unsigned char c = p[0];
    unsigned char lo = 0x80; /* bounds of the second byte */
    unsigned char hi = 0xBF;
    size_t need;
    size_t i;

    if (c < 0x80) {
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) {
            lo = 0xA0; /* below is overlong */
        } else if (c == 0xED) {
            hi = 0x9F; /* above is a surrogate */
        }
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) {
            lo = 0x90; /* below is overlong */
        } else if (c == 0xF4) {
            hi = 0x8F; /* above is past U+10FFFF */
        }
    } else {
        return 0;
    }
    if (n < need) {
        return 0;
    }
    if (p[1] < lo || p[1] > hi) {
        return 0;
    }
    for (i = 2; i < need; i++) {
        if (p[i] < 0x80 || p[i] > 0xBF) {
            return 0;
        }
    }
    return need;
}

int json_utf8_valid(const char *p, size_t n)
{
    const unsigned char *u = (const unsigned char *)p;
    size_t i = 0;

    while (i < n) {
        size_t k;

        if (u[i] < 0x80) {
            i++;
            continue;
        }
        k = utf8_seq(u + i, n - i);
        if (k == 0) {
            return 0;
        }
        i += k;
    }
    return 1;
}

static void skip_ws(struct scanner *s)
{
    while (s->pos < s->len) {
        unsigned char c = s->p[s->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            break;
        }
        s->pos++;
    }
}

/* Read "\uHHHH" (four hex digits) at s->pos (the backslash); advance past it. */
static int read_u_escape(struct scanner *s, unsigned *cp)
{
    unsigned v = 0;
    size_t i;

    if (s->len - s->pos < 6 || s->p[s->pos] != '\\' ||
        s->p[s->pos + 1] != 'u') {
        return JSON_ESYNTAX;
    }
    for (i = 2; i < 6; i++) {
        int h = hex_digit((char)s->p[s->pos + i]);
        if (h < 0) {
            return JSON_ESYNTAX;
        }
        v = (v << 4) | (unsigned)h;
    }
    s->pos += 6;
    *cp = v;
    return JSON_OK;
}

static int append_code_point(struct buf *out, unsigned cp)
{
    char b[4];
    size_t n;

    if (cp < 0x80) {
        b[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (char)(0xC0 | (cp >> 6));
        b[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (char)(0xE0 | (cp >> 12));
        b[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        b[0] = (char)(0xF0 | (cp >> 18));
        b[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        b[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        b[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    return buf_append(out, b, n) == 0 ? JSON_OK : JSON_ENOMEM;
}

/* Scan the string literal at s->pos (the opening quote) and leave s->pos
 * after the closing quote. When out is not NULL, append the decoded text. */
static int scan_string(struct scanner *s, struct buf *out)
{
    size_t run; /* start of the pending run of bytes copied verbatim */

    if (s->pos >= s->len || s->p[s->pos] != '"') {
        return JSON_ESYNTAX;
    }
    s->pos++;
    run = s->pos;
    for (;;) {
        unsigned char c;

        if (s->pos >= s->len) {
            return JSON_ESYNTAX;
        }
        c = s->p[s->pos];
        if (c == '"' || c == '\\') {
            if (out != NULL &&
                buf_append(out, s->p + run, s->pos - run) != 0) {
                return JSON_ENOMEM;
            }
        }
        if (c == '"') {
            s->pos++;
            return JSON_OK;
        }
        if (c < 0x20) {
            return JSON_ESYNTAX;
        }
        if (c >= 0x80) {
            size_t k = utf8_seq(s->p + s->pos, s->len - s->pos);
            if (k == 0) {
                return JSON_EUTF8;
            }
            s->pos += k;
            continue;
        }
        if (c != '\\') {
            s->pos++;
            continue;
        }
        /* An escape. */
        if (s->len - s->pos < 2) {
            return JSON_ESYNTAX;
        }
        {
            unsigned char e = s->p[s->pos + 1];
            char d;
            unsigned cp;
            int rv;

            switch (e) {
                case '"': d = '"'; break;
                case '\\': d = '\\'; break;
                case '/': d = '/'; break;
                case 'b': d = '\b'; break;
                case 'f': d = '\f'; break;
                case 'n': d = '\n'; break;
                case 'r': d = '\r'; break;
                case 't': d = '\t'; break;
                case 'u': d = 0; break;
                default: return JSON_ESYNTAX;
            }
            if (e != 'u') {
                s->pos += 2;
                if (out != NULL && buf_append_char(out, d) != 0) {
                    return JSON_ENOMEM;
                }
                run = s->pos;
                continue;
            }
            rv = read_u_escape(s, &cp);
            if (rv != JSON_OK) {
                return rv;
            }
            if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return JSON_ESYNTAX; /* lone low surrogate */
            }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned low;

                rv = read_u_escape(s, &low);
                if (rv != JSON_OK || low < 0xDC00 || low > 0xDFFF) {
                    return JSON_ESYNTAX; /* unpaired high surrogate */
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            }
            if (out != NULL) {
                rv = append_code_point(out, cp);
                if (rv != JSON_OK) {
                    return rv;
                }
            }
            run = s->pos;
        }
    }
}

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* Scan a number at s->pos per the RFC 8259 grammar. What follows it is
 * checked by the caller (a digit after "0" is then trailing garbage). */
static int scan_number(struct scanner *s)
{
    if (s->pos < s->len && s->p[s->pos] == '-') {
        s->pos++;
    }
    if (s->pos >= s->len || !is_digit(s->p[s->pos])) {
        return JSON_ESYNTAX;
    }
    if (s->p[s->pos] == '0') {
        s->pos++;
    } else {
        while (s->pos < s->len && is_digit(s->p[s->pos])) {
            s->pos++;
        }
    }
    if (s->pos < s->len && s->p[s->pos] == '.') {
        s->pos++;
        if (s->pos >= s->len || !is_digit(s->p[s->pos])) {
            return JSON_ESYNTAX;
        }
        while (s->pos < s->len && is_digit(s->p[s->pos])) {
            s->pos++;
        }
    }
    if (s->pos < s->len && (s->p[s->pos] == 'e' || s->p[s->pos] == 'E')) {
        s->pos++;
        if (s->pos < s->len &&
            (s->p[s->pos] == '+' || s->p[s->pos] == '-')) {
            s->pos++;
        }
        if (s->pos >= s->len || !is_digit(s->p[s->pos])) {
            return JSON_ESYNTAX;
        }
        while (s->pos < s->len && is_digit(s->p[s->pos])) {
            s->pos++;
        }
    }
    return JSON_OK;
}

static int scan_literal(struct scanner *s, const char *lit)
{
    size_t n = strlen(lit);

    if (s->len - s->pos < n || memcmp(s->p + s->pos, lit, n) != 0) {
        return JSON_ESYNTAX;
    }
    s->pos += n;
    return JSON_OK;
}

/* Scan a scalar at s->pos and report its type. */
static int scan_scalar(struct scanner *s, enum json_type *type)
{
    unsigned char c = s->p[s->pos];

    switch (c) {
        case '"':
            *type = JSON_T_STRING;
            return scan_string(s, NULL);
        case 't':
            *type = JSON_T_TRUE;
            return scan_literal(s, "true");
        case 'f':
            *type = JSON_T_FALSE;
            return scan_literal(s, "false");
        case 'n':
            *type = JSON_T_NULL;
            return scan_literal(s, "null");
        default:
            *type = JSON_T_NUMBER;
            return scan_number(s);
    }
}

/* Scan `"name" ws ":" ws` of an object member. */
static int scan_member_name(struct scanner *s)
{
    int rv;

    if (s->pos >= s->len || s->p[s->pos] != '"') {
        return JSON_ESYNTAX;
    }
    rv = scan_string(s, NULL);
    if (rv != JSON_OK) {
        return rv;
    }
    skip_ws(s);
    if (s->pos >= s->len || s->p[s->pos] != ':') {
        return JSON_ESYNTAX;
    }
    s->pos++;
    skip_ws(s);
    return JSON_OK;
}

/* Scan one value (with everything nested in it) starting at s->pos, which
 * must not be whitespace. Leaves s->pos just after the value. */
static int scan_value(struct scanner *s, unsigned max_depth,
                      enum json_type *type)
{
    uint64_t stack[JSON_STACK_BITS / 64]; /* bit set: container is object */
    unsigned depth = 0;
    int rv;

    if (max_depth > JSON_STACK_BITS) {
        max_depth = JSON_STACK_BITS;
    }
    if (s->pos >= s->len) {
        return JSON_ESYNTAX;
    }
    switch (s->p[s->pos]) {
        case '{': *type = JSON_T_OBJECT; break;
        case '[': *type = JSON_T_ARRAY; break;
        default: return scan_scalar(s, type);
    }
    for (;;) {
        unsigned char c;

        /* Here a value is expected at s->pos. */
        if (s->pos >= s->len) {
            return JSON_ESYNTAX;
        }
        c = s->p[s->pos];
        if (c == '{' || c == '[') {
            uint64_t bit;

            if (depth >= max_depth) {
                return JSON_EDEPTH;
            }
            bit = (uint64_t)1 << (depth % 64);
            if (c == '{') {
                stack[depth / 64] |= bit;
            } else {
                stack[depth / 64] &= ~bit;
            }
            depth++;
            s->pos++;
            skip_ws(s);
            if (s->pos < s->len && s->p[s->pos] == (c == '{' ? '}' : ']')) {
                s->pos++;
                depth--;
                goto after_value;
            }
            if (c == '{') {
                rv = scan_member_name(s);
                if (rv != JSON_OK) {
                    return rv;
                }
            }
            continue;
        } else {
            enum json_type t;

            rv = scan_scalar(s, &t);
            if (rv != JSON_OK) {
                return rv;
            }
        }
    after_value:
        for (;;) {
            int in_object;

            if (depth == 0) {
                return JSON_OK;
            }
            in_object =
                (stack[(depth - 1) / 64] >> ((depth - 1) % 64)) & 1;
            skip_ws(s);
            if (s->pos >= s->len) {
                return JSON_ESYNTAX;
            }
            c = s->p[s->pos];
            if (c == ',') {
                s->pos++;
                skip_ws(s);
                if (in_object) {
                    rv = scan_member_name(s);
                    if (rv != JSON_OK) {
                        return rv;
                    }
                }
                break; /* expect the next value */
            }
            if (c == (in_object ? '}' : ']')) {
                s->pos++;
                depth--;
                continue;
            }
            return JSON_ESYNTAX;
        }
    }
}

int json_validate(const char *text, size_t len, unsigned max_depth,
                  size_t *start, size_t *end, enum json_type *type)
{
    struct scanner s = {(const unsigned char *)text, len, 0};
    enum json_type t = JSON_T_NULL;
    size_t value_start;
    int rv;

    skip_ws(&s);
    value_start = s.pos;
    rv = scan_value(&s, max_depth, &t);
    if (rv == JSON_OK) {
        size_t value_end = s.pos;

        skip_ws(&s);
        if (s.pos != s.len) {
            rv = JSON_ESYNTAX;
        } else {
            if (start != NULL) {
                *start = value_start;
            }
            if (end != NULL) {
                *end = value_end;
            }
            if (type != NULL) {
                *type = t;
            }
            return JSON_OK;
        }
    }
    if ((rv == JSON_ESYNTAX || rv == JSON_EDEPTH) &&
        !json_utf8_valid(text, len)) {
        rv = JSON_EUTF8;
    }
    return rv;
}

int json_string_decode(const char *text, size_t len, struct buf *out)
{
    struct scanner s = {(const unsigned char *)text, len, 0};
    size_t before = out->len;
    int rv;

    if (buf_reserve(out, 0) != 0) {
        return JSON_ENOMEM;
    }
    rv = scan_string(&s, out);
    if (rv == JSON_OK && s.pos != len) {
        rv = JSON_ESYNTAX;
    }
    if (rv != JSON_OK) {
        /* Leave the buffer as it was. */
        out->len = before;
        out->base[before] = '\0';
    }
    return rv;
}

void json_members_free(struct json_member *members, size_t n)
{
    size_t i;

    if (members == NULL) {
        return;
    }
    for (i = 0; i < n; i++) {
        free(members[i].name);
    }
    free(members);
}

static int member_name_cmp(const void *a, const void *b)
{
    const struct json_member *x = *(const struct json_member *const *)a;
    const struct json_member *y = *(const struct json_member *const *)b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, n);

    if (c != 0) {
        return c;
    }
    return x->name_len < y->name_len ? -1 : x->name_len > y->name_len;
}

/* Detect two members with the same decoded name in O(n log n). */
static int check_duplicates(struct json_member *m, size_t n)
{
    struct json_member **order;
    size_t i;
    int rv = JSON_OK;

    if (n < 2) {
        return JSON_OK;
    }
    order = malloc(n * sizeof *order);
    if (order == NULL) {
        return JSON_ENOMEM;
    }
    for (i = 0; i < n; i++) {
        order[i] = &m[i];
    }
    qsort(order, n, sizeof *order, member_name_cmp);
    for (i = 1; i < n; i++) {
        if (member_name_cmp(&order[i - 1], &order[i]) == 0) {
            rv = JSON_EDUP;
            break;
        }
    }
    free(order);
    return rv;
}

int json_object_members(const char *text, size_t len, unsigned max_depth,
                        struct json_member **members, size_t *n)
{
    struct scanner s = {(const unsigned char *)text, len, 0};
    struct json_member *m = NULL;
    size_t count = 0;
    size_t cap = 0;
    size_t start;
    size_t end;
    enum json_type type;
    int rv;

    *members = NULL;
    *n = 0;
    rv = json_validate(text, len, max_depth, &start, &end, &type);
    if (rv != JSON_OK) {
        return rv;
    }
    if (type != JSON_T_OBJECT) {
        return JSON_ETYPE;
    }
    /* The text is valid: walk the top-level members again, scanning each
     * value with the same scanner to find its end. */
    s.len = end;
    s.pos = start + 1;
    skip_ws(&s);
    if (s.p[s.pos] == '}') {
        goto done;
    }
    for (;;) {
        struct buf name = BUF_INIT;
        struct json_member *cur;
        size_t value_start;

        if (count == cap) {
            size_t ncap = cap == 0 ? 8 : cap * 2;
            struct json_member *p = realloc(m, ncap * sizeof *m);

            if (p == NULL) {
                rv = JSON_ENOMEM;
                goto err_after_members;
            }
            m = p;
            cap = ncap;
        }
        if (buf_reserve(&name, 0) != 0) {
            rv = JSON_ENOMEM;
            goto err_after_members;
        }
        rv = scan_string(&s, &name);
        if (rv != JSON_OK) {
            buf_free(&name);
            goto err_after_members;
        }
        cur = &m[count];
        cur->name_len = name.len;
        cur->name = buf_steal(&name, NULL);
        count++;
        skip_ws(&s);
        s.pos++; /* ':' */
        skip_ws(&s);
        value_start = s.pos;
        rv = scan_value(&s, max_depth, &cur->type);
        if (rv != JSON_OK) {
            goto err_after_members;
        }
        cur->value = text + value_start;
        cur->value_len = s.pos - value_start;
        skip_ws(&s);
        if (s.p[s.pos] == '}') {
            break;
        }
        s.pos++; /* ',' */
        skip_ws(&s);
    }
done:
    rv = check_duplicates(m, count);
    if (rv != JSON_OK) {
        goto err_after_members;
    }
    *members = m;
    *n = count;
    return JSON_OK;

err_after_members:
    json_members_free(m, count);
    return rv;
}
