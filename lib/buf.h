/* Growable byte buffer, the one allocation seam for building bodies,
 * commands and responses.
 *
 * Invariant: base[len] is always a NUL byte once anything was reserved, so a
 * buffer holding text can be passed as a C string. cap counts that byte. */
#ifndef CTXD_BUF_H
#define CTXD_BUF_H

#include <stddef.h>
#include <stdint.h>

struct buf
{
    char *base; /* owned; NULL until the first append */
    size_t len; /* bytes used, excluding the trailing NUL */
    size_t cap; /* bytes allocated */
};

#define BUF_INIT {NULL, 0, 0}

/* buf_reserve when the room is not there yet. */
int buf_grow(struct buf *b, size_t n);

/* Make room for n more bytes. Returns 0 or -1 when out of memory (the buffer
 * is unchanged then). Inline: a response is built of some forty appends,
 * nearly all of which find the room there. */
static inline int buf_reserve(struct buf *b, size_t n)
{
    if (b->cap > b->len && n < b->cap - b->len) {
        return 0; /* len + n + 1 <= cap */
    }
    return buf_grow(b, n);
}

/* Append bytes; each returns 0 or -1 on out of memory (buffer unchanged). */
int buf_append(struct buf *b, const void *p, size_t n);
int buf_append_str(struct buf *b, const char *s);
int buf_append_char(struct buf *b, char c);
int buf_printf(struct buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Append v in decimal (no printf on the request path). */
int buf_append_u64(struct buf *b, uint64_t v);
int buf_put_u8(struct buf *b, uint8_t v);
int buf_put_u32(struct buf *b, uint32_t v); /* little endian */
int buf_put_u64(struct buf *b, uint64_t v); /* little endian */

/* Append s as the body of a JSON string (quotes included), escaping '"', '\\'
 * and control characters. s must be valid UTF-8 (it is copied verbatim
 * otherwise). */
int buf_append_json_string(struct buf *b, const char *s, size_t n);

/* Forget the contents, keep the allocation. */
void buf_reset(struct buf *b);

/* Free the allocation; the buffer is BUF_INIT afterwards. */
void buf_free(struct buf *b);

/* Hand the allocation to the caller (who frees it with free()); the buffer
 * is BUF_INIT afterwards. */
char *buf_steal(struct buf *b, size_t *len);

#endif
