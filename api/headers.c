/* Header accumulation shared by the HTTP server and client; see headers.h. */
#include "headers.h"

#include <stdlib.h>
#include <string.h>

/* Buffers larger than this are freed between messages rather than kept. */
#define HEADERS_KEEP_BYTES 4096

/* RFC 9110 token characters: letters, digits and !#$%&'*+-.^_`|~ */
static const unsigned char tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1,
    ['*'] = 1, ['+'] = 1, ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1,
    ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1,
    ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1,
    ['G'] = 1, ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1,
    ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1,
    ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1,
    ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1,
    ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1,
    ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
};

/* Shorten the text to len bytes, keeping buf's trailing NUL. */
static void text_cut(struct http_header_list *l, size_t len)
{
    if (l->text.base != NULL) {
        l->text.len = len;
        l->text.base[len] = '\0';
    }
}

/* Drop the pending header. */
static void headers_drop(struct http_header_list *l)
{
    text_cut(l, l->pend);
    l->pending = 0;
    l->in_value = 0;
}

/* Start the pending header at the end of the text. */
static void headers_begin(struct http_header_list *l)
{
    l->pending = 1;
    l->in_value = 0;
    l->pend = l->text.len;
}

/* End the pending header's name with its NUL, unless its value has
 * begun; the value starts after it. */
static int headers_name_done(struct http_header_list *l)
{
    if (l->in_value) {
        return 0;
    }
    if (buf_append_char(&l->text, '\0') != 0) {
        return -1;
    }
    l->in_value = 1;
    l->pend_value = l->text.len;
    return 0;
}

/* The pending header is complete: check it, lower-case its name and trim
 * its value in place, and record where both are. On error the list is
 * left as it was before the header began. */
static int headers_commit(struct http_header_list *l)
{
    struct http_header_at *at;
    char *name;
    char *value;
    size_t name_len;
    size_t value_len;
    size_t lead = 0;
    size_t i;

    if (headers_name_done(l) != 0) {
        goto fail;
    }
    name = l->text.base + l->pend;
    name_len = l->pend_value - 1 - l->pend;
    value = l->text.base + l->pend_value;
    value_len = l->text.len - l->pend_value;
    /* http-parser lets some bytes through in names (a space before the
     * colon): refuse them, a proxy might read the header differently. */
    if (name_len == 0) {
        goto fail;
    }
    for (i = 0; i < name_len; i++) {
        unsigned char ch = (unsigned char)name[i];

        if (!tchar[ch]) {
            goto fail;
        }
        if (ch >= 'A' && ch <= 'Z') {
            name[i] = (char)(ch - 'A' + 'a');
        }
    }
    if (value_len > 0 && memchr(value, '\0', value_len) != NULL) {
        goto fail;
    }
    while (lead < value_len && (value[lead] == ' ' || value[lead] == '\t')) {
        lead++;
    }
    while (value_len > lead &&
           (value[value_len - 1] == ' ' || value[value_len - 1] == '\t')) {
        value_len--;
    }
    if (l->n == l->cap) {
        unsigned cap = l->cap == 0 ? 16 : l->cap * 2;
        struct http_header_at *grown = realloc(l->at, cap * sizeof *grown);

        if (grown == NULL) {
            goto fail;
        }
        l->at = grown;
        l->cap = cap;
    }
    /* Drop the trailing blanks; the NUL goes where they began. */
    text_cut(l, l->pend_value + value_len);
    if (buf_append_char(&l->text, '\0') != 0) {
        goto fail;
    }
    at = &l->at[l->n++];
    at->name = l->pend;
    at->value = l->pend_value + lead;
    at->value_len = value_len - lead;
    l->pending = 0;
    l->in_value = 0;
    return 0;

fail:
    headers_drop(l);
    return -1;
}

int http_headers_add(struct http_header_list *l, const char *name,
                     size_t name_len, const char *value, size_t value_len)
{
    if (l->pending) {
        return -1; /* a header is being received piece by piece */
    }
    headers_begin(l);
    if (buf_append(&l->text, name, name_len) != 0 ||
        headers_name_done(l) != 0 ||
        buf_append(&l->text, value, value_len) != 0) {
        headers_drop(l);
        return -1;
    }
    return headers_commit(l);
}

int http_headers_field(struct http_header_list *l, const char *at, size_t len)
{
    if (l->in_value && headers_commit(l) != 0) {
        return -1;
    }
    if (!l->pending) {
        headers_begin(l);
    }
    return buf_append(&l->text, at, len);
}

int http_headers_value(struct http_header_list *l, const char *at, size_t len)
{
    if (!l->pending) {
        headers_begin(l); /* a value with no name: refused at commit */
    }
    if (headers_name_done(l) != 0) {
        return -1;
    }
    return buf_append(&l->text, at, len);
}

int http_headers_end(struct http_header_list *l)
{
    struct http_header *items;
    char *text;
    unsigned i;

    if (l->pending && headers_commit(l) != 0) {
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
    buf_keep_small(&l->text);
    http_headers_free(l->items);
    l->items = NULL;
    l->n_items = 0;
    l->n = 0;
    l->pending = 0;
    l->in_value = 0;
}

void http_headers_reset(struct http_header_list *l)
{
    buf_free(&l->text);
    free(l->at);
    http_headers_free(l->items);
    memset(l, 0, sizeof *l);
}
