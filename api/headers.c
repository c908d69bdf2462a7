/* Header accumulation shared by the HTTP server and client; see headers.h. */
#include "headers.h"

#include <stdlib.h>
#include <string.h>

/* Buffers larger than this are freed between messages rather than kept. */
#define HEADERS_KEEP_BYTES 4096

/* RFC 9110 token characters. */
static int is_tchar(unsigned char ch)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
        (ch >= '0' && ch <= '9')) {
        return 1;
    }
    return ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

int http_headers_add(struct http_header_list *l, const char *name,
                     size_t name_len, const char *value, size_t value_len)
{
    struct http_header_at *at;
    char *p;
    size_t i;

    /* http-parser lets some bytes through in names (a space before the
     * colon): refuse them, a proxy might read the header differently. */
    if (name_len == 0) {
        return -1;
    }
    for (i = 0; i < name_len; i++) {
        if (!is_tchar((unsigned char)name[i])) {
            return -1;
        }
    }
    if (value_len > 0 && memchr(value, '\0', value_len) != NULL) {
        return -1;
    }
    while (value_len > 0 && (value[0] == ' ' || value[0] == '\t')) {
        value++;
        value_len--;
    }
    while (value_len > 0 &&
           (value[value_len - 1] == ' ' || value[value_len - 1] == '\t')) {
        value_len--;
    }
    if (l->n == l->cap) {
        unsigned cap = l->cap == 0 ? 16 : l->cap * 2;
        struct http_header_at *grown = realloc(l->at, cap * sizeof *grown);

        if (grown == NULL) {
            return -1;
        }
        l->at = grown;
        l->cap = cap;
    }
    if (value_len > SIZE_MAX - name_len - 2 ||
        buf_reserve(&l->text, name_len + value_len + 2) != 0) {
        return -1;
    }
    at = &l->at[l->n++];
    at->name = l->text.len;
    at->value = l->text.len + name_len + 1;
    at->value_len = value_len;
    p = l->text.base + l->text.len;
    for (i = 0; i < name_len; i++) {
        char c = name[i];
        p[i] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
    }
    p[name_len] = '\0';
    if (value_len > 0) {
        memcpy(p + name_len + 1, value, value_len);
    }
    p[name_len + 1 + value_len] = '\0';
    l->text.len += name_len + value_len + 2;
    return 0;
}

static int headers_commit(struct http_header_list *l)
{
    int rv = http_headers_add(l, l->name.base != NULL ? l->name.base : "",
                              l->name.len,
                              l->value.base != NULL ? l->value.base : "",
                              l->value.len);

    buf_reset(&l->name);
    buf_reset(&l->value);
    l->in_value = 0;
    return rv;
}

int http_headers_field(struct http_header_list *l, const char *at, size_t len)
{
    if (l->in_value && headers_commit(l) != 0) {
        return -1;
    }
    return buf_append(&l->name, at, len);
}

int http_headers_value(struct http_header_list *l, const char *at, size_t len)
{
    l->in_value = 1;
    return buf_append(&l->value, at, len);
}

int http_headers_end(struct http_header_list *l)
{
    struct http_header *items;
    char *text;
    unsigned i;

    if ((l->in_value || l->name.len > 0) && headers_commit(l) != 0) {
        return -1;
    }
    if (l->items != NULL || l->n == 0) {
        l->n = 0; /* trailers after the block: dropped */
        buf_reset(&l->text);
        return 0;
    }
    items = malloc(l->n * sizeof *items + l->text.len);
    if (items == NULL) {
        return -1;
    }
    text = (char *)(items + l->n);
    memcpy(text, l->text.base, l->text.len);
    for (i = 0; i < l->n; i++) {
        items[i].name = text + l->at[i].name;
        items[i].value = text + l->at[i].value;
        items[i].value_len = l->at[i].value_len;
    }
    l->items = items;
    l->n_items = l->n;
    l->n = 0;
    buf_reset(&l->text);
    return 0;
}

struct http_header *http_headers_take(struct http_header_list *l, unsigned *n)
{
    struct http_header *items = l->items;

    *n = l->n_items;
    l->items = NULL;
    l->n_items = 0;
    return items;
}

void http_headers_free(struct http_header *h)
{
    free(h); /* the text lives in the same block */
}

static void buf_keep_small(struct buf *b)
{
    if (b->cap > HEADERS_KEEP_BYTES) {
        buf_free(b);
    } else {
        buf_reset(b);
    }
}

void http_headers_clear(struct http_header_list *l)
{
    buf_keep_small(&l->name);
    buf_keep_small(&l->value);
    buf_keep_small(&l->text);
    http_headers_free(l->items);
    l->items = NULL;
    l->n_items = 0;
    l->n = 0;
    l->in_value = 0;
}

void http_headers_reset(struct http_header_list *l)
{
    buf_free(&l->name);
    buf_free(&l->value);
    buf_free(&l->text);
    free(l->at);
    http_headers_free(l->items);
    memset(l, 0, sizeof *l);
}
