/* The headers of one HTTP message, accumulated from http-parser's
 * callbacks: shared by the server (http.c) and the client (client.c).
 *
 * http-parser may deliver a name or a value in several pieces; a name
 * after a value ends the previous header. A completed header is checked
 * (a non-empty name of token characters, RFC 9110 §5.6.2, and no NUL in the
 * value), its name lower-cased and its value trimmed of blanks, and stored
 * in ONE allocation "name\0value\0" (value points inside it). */
#ifndef CTXD_HEADERS_H
#define CTXD_HEADERS_H

#include <stddef.h>

#include "../lib/buf.h"
#include "http.h"

struct http_header_list
{
    struct buf name;            /* name being received */
    struct buf value;           /* value being received */
    int in_value;               /* the last piece received was a value */
    struct http_header *items;  /* completed headers (owned) */
    unsigned n;                 /* entries used */
    unsigned cap;               /* entries allocated */
};

/* A piece of a name / of a value. Return 0, or -1 when a completed header
 * is invalid or memory runs out. */
int http_headers_field(struct http_header_list *l, const char *at, size_t len);
int http_headers_value(struct http_header_list *l, const char *at, size_t len);

/* The headers are over: complete the pending one, if any. 0 or -1. */
int http_headers_end(struct http_header_list *l);

/* Append a whole header (same checks and normalisation). 0 or -1. */
int http_headers_add(struct http_header_list *l, const char *name,
                     size_t name_len, const char *value, size_t value_len);

/* Hand the completed headers over (free with http_headers_free); the list
 * keeps nothing of them. */
struct http_header *http_headers_take(struct http_header_list *l, unsigned *n);

/* Forget everything, freeing what is held. */
void http_headers_reset(struct http_header_list *l);

void http_headers_free(struct http_header *h, unsigned n);

#endif
