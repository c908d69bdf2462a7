#include "buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int buf_grow(struct buf *b, size_t n)
{
    size_t need;
    size_t cap;
    char *p;

    if (n > SIZE_MAX - b->len - 1) {
        return -1;
    }
    need = b->len + n + 1;
    if (need <= b->cap) {
        return 0;
    }
    cap = b->cap != 0 ? b->cap : 64;
    while (cap < need) {
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    }
    p = realloc(b->base, cap);
    if (p == NULL) {
        return -1;
    }
    b->base = p;
    b->cap = cap;
    b->base[b->len] = '\0';
    return 0;
}

int buf_append(struct buf *b, const void *p, size_t n)
{
    if (buf_reserve(b, n) != 0) {
        return -1;
    }
    if (n > 0) {
        memcpy(b->base + b->len, p, n);
    }
    b->len += n;
    b->base[b->len] = '\0';
    return 0;
}

int buf_append_str(struct buf *b, const char *s)
{
    return buf_append(b, s, strlen(s));
}

int buf_append_char(struct buf *b, char c)
{
    return buf_append(b, &c, 1);
}

int buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || buf_reserve(b, (size_t)n) != 0) {
        return -1;
    }
    va_start(ap, fmt);
    vsnprintf(b->base + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

int buf_append_u64(struct buf *b, uint64_t v)
{
    char digits[20];
    size_t n = 0;

    do {
        digits[sizeof digits - 1 - n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    return buf_append(b, digits + sizeof digits - n, n);
}

int buf_put_u8(struct buf *b, uint8_t v)
{
    return buf_append(b, &v, 1);
}

int buf_put_u32(struct buf *b, uint32_t v)
{
    uint8_t p[4];
    unsigned i;

    for (i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
    return buf_append(b, p, sizeof p);
}

int buf_put_u64(struct buf *b, uint64_t v)
{
    uint8_t p[8];
    unsigned i;

    for (i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
    return buf_append(b, p, sizeof p);
}

int buf_append_json_string(struct buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t i;
    size_t run = 0; /* start of the pending run of bytes that need no escape */

    if (buf_reserve(b, n + 2) != 0 || buf_append_char(b, '"') != 0) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[6];
        size_t esc_len = 2;

        if (c >= 0x20 && c != '"' && c != '\\') {
            continue;
        }
        if (buf_append(b, s + run, i - run) != 0) {
            return -1;
        }
        run = i + 1;
        esc[0] = '\\';
        switch (c) {
            case '"': esc[1] = '"'; break;
            case '\\': esc[1] = '\\'; break;
            case '\n': esc[1] = 'n'; break;
            case '\r': esc[1] = 'r'; break;
            case '\t': esc[1] = 't'; break;
            case '\b': esc[1] = 'b'; break;
            case '\f': esc[1] = 'f'; break;
            default:
                esc[1] = 'u';
                esc[2] = '0';
                esc[3] = '0';
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 0xf];
                esc_len = 6;
                break;
        }
        if (buf_append(b, esc, esc_len) != 0) {
            return -1;
        }
    }
    if (buf_append(b, s + run, n - run) != 0) {
        return -1;
    }
    return buf_append_char(b, '"');
}

void buf_reset(struct buf *b)
{
    b->len = 0;
    if (b->base != NULL) {
        b->base[0] = '\0';
    }
}

void buf_free(struct buf *b)
{
    free(b->base);
    b->base = NULL;
    b->len = 0;
    b->cap = 0;
}

char *buf_steal(struct buf *b, size_t *len)
{
    char *p = b->base;

    if (len != NULL) {
        *len = b->len;
    }
    b->base = NULL;
    b->len = 0;
    b->cap = 0;
    return p;
}
