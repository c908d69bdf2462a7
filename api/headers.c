/* Header accumulation shared by the HTTP server and client; see headers.h. */
#include "headers.h"

#include <stdlib.h>
#include <string.h>

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
    struct http_header *h;
    char *block;
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
        struct http_header *grown = realloc(l->items, cap * sizeof *grown);

        if (grown == NULL) {
            return -1;
        }
        l->items = grown;
        l->cap = cap;
    }
    block = malloc(name_len + value_len + 2);
    if (block == NULL) {
        return -1;
    }
    for (i = 0; i < name_len; i++) {
        char c = name[i];
        block[i] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
    }
    block[name_len] = '\0';
    if (value_len > 0) {
        memcpy(block + name_len + 1, value, value_len);
    }
    block[name_len + 1 + value_len] = '\0';
    h = &l->items[l->n++];
    h->name = block;
    h->value = block + name_len + 1;
    h->value_len = value_len;
    return 0;
}

/* Complete the header held in name/value. */
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
    if (l->in_value || l->name.len > 0) {
        return headers_commit(l);
    }
    return 0;
}

struct http_header *http_headers_take(struct http_header_list *l, unsigned *n)
{
    struct http_header *items = l->items;

    *n = l->n;
    l->items = NULL;
    l->n = 0;
    l->cap = 0;
    return items;
}

void http_headers_free(struct http_header *h, unsigned n)
{
    unsigned i;

    for (i = 0; i < n; i++) {
        free(h[i].name); /* the value lives in the same block */
    }
    free(h);
}

void http_headers_reset(struct http_header_list *l)
{
    buf_free(&l->name);
    buf_free(&l->value);
    http_headers_free(l->items, l->n);
    l->items = NULL;
    l->n = 0;
    l->cap = 0;
    l->in_value = 0;
}
