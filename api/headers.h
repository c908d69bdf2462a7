/* The headers of one HTTP message, accumulated from http-parser's
 * callbacks: shared by the server (http.c) and the client (client.c).
 *
 * http-parser may deliver a name or a value in several pieces; a name
 * after a value ends the previous header. A completed header is checked
 * (a non-empty name of token characters, RFC 9110 §5.6.2, and no NUL in the
 * value), its name lower-cased and its value trimmed of blanks, and stored
 * appended to one text buffer as "name\0value\0". The pieces go straight
 * into that buffer (the pending header is its tail), so each byte is
 * copied once on the way in; the name is checked and lower-cased in
 * place, and a value's leading blanks are skipped by offset, when the
 * header completes. http_headers_end puts the message's headers in ONE
 * allocation: the http_header array followed by the text, which the
 * pointers point into. The text buffer and the offsets array are kept from
 * one message to the next (see http_headers_clear), so a message costs one
 * allocation for its headers, not one per header. */
#ifndef CTXD_HEADERS_H
#define CTXD_HEADERS_H

#include <stddef.h>

#include "../lib/buf.h"
#include "http.h"

/* Where one completed header lies in http_header_list.text. */
struct http_header_at
{
    size_t name;      /* offset of the lower-cased name */
    size_t value;     /* offset of the trimmed value */
    size_t value_len; /* its bytes */
};

struct http_header_list
{
    struct buf text;            /* completed headers, "name\0value\0" each,
                                   then the pending header's pieces */
    int pending;                /* a header is being received: it starts
                                   at text offset pend */
    int in_value;               /* the last piece received was a value,
                                   which starts at text offset pend_value */
    size_t pend;                /* see pending */
    size_t pend_value;          /* see in_value */
    struct http_header_at *at;  /* where each completed header is in text */
    unsigned n;                 /* completed headers */
    unsigned cap;               /* entries of at */
    struct http_header *items;  /* the block http_headers_end built (owned),
                                   or NULL */
    unsigned n_items;           /* entries of items */
};

/* A piece of a name / of a value. Return 0, or -1 when a completed header
 * is invalid or memory runs out. */
int http_headers_field(struct http_header_list *l, const char *at, size_t len);
int http_headers_value(struct http_header_list *l, const char *at, size_t len);

/* The headers are over: complete the pending one, if any, and build the
 * block that items points to (NULL when there are no headers). 0, or -1
 * when a header is invalid or memory runs out. Headers that come after
 * (chunked trailers) are checked and dropped. */
int http_headers_end(struct http_header_list *l);

/* Append a whole header (same checks and normalisation). 0 or -1. */
int http_headers_add(struct http_header_list *l, const char *name,
                     size_t name_len, const char *value, size_t value_len);

/* Hand the block built by http_headers_end over (free it with
 * http_headers_free); the list keeps nothing of it. */
struct http_header *http_headers_take(struct http_header_list *l, unsigned *n);

/* Ready for the next message: forget its headers, keep the buffers they
 * gathered in unless they grew large. */
void http_headers_clear(struct http_header_list *l);

/* Forget everything, freeing what is held. */
void http_headers_reset(struct http_header_list *l);

/* Free a block from http_headers_take (NULL is fine). */
void http_headers_free(struct http_header *h);

#endif
