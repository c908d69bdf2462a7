/* Command and entry codec: the binary format described in command.h.
 *
 * Encoding appends to a struct buf and, on any failure, truncates the buffer
 * back to its length on entry, so a caller never sees half a record.
 *
 * Decoding is zero-copy: struct cmd spans point into the caller's buffer.
 * Invariants the decoder keeps:
 *   - every read first compares the wanted length with the bytes remaining
 *     (`n > left`, never `p + n > end`, so a huge length cannot wrap);
 *   - a field longer than CMD_MAX_FIELD_LEN is corrupt;
 *   - a record must be consumed exactly: trailing bytes are corrupt;
 *   - a PATCH's pairs region holds exactly n_props well-formed pairs, which
 *     is why cmd_props_next cannot fail on a decoded command;
 *   - fields an op does not take stay empty/zero.
 * An entry is framed by its declared count: after the last declared record
 * there must be no bytes left, and a record length may not run past the end. */
#include "command.h"

#include <string.h>

/* A bounds-checked cursor over bytes we do not trust. */
struct reader
{
    const uint8_t *p; /* next unread byte */
    size_t left;      /* bytes remaining after p */
};

static int rd_u8(struct reader *r, uint8_t *v)
{
    if (r->left < 1) {
        return -1;
    }
    *v = r->p[0];
    r->p += 1;
    r->left -= 1;
    return 0;
}

static uint64_t le_get(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    unsigned i;

    for (i = 0; i < n; i++) {
        v |= (uint64_t)p[i] << (8 * i);
    }
    return v;
}

static int rd_u32(struct reader *r, uint32_t *v)
{
    if (r->left < 4) {
        return -1;
    }
    *v = (uint32_t)le_get(r->p, 4);
    r->p += 4;
    r->left -= 4;
    return 0;
}

static int rd_u64(struct reader *r, uint64_t *v)
{
    if (r->left < 8) {
        return -1;
    }
    *v = le_get(r->p, 8);
    r->p += 8;
    r->left -= 8;
    return 0;
}

static int rd_field(struct reader *r, struct cmd_bytes *f)
{
    uint32_t len;

    if (rd_u32(r, &len) != 0 || len > CMD_MAX_FIELD_LEN || len > r->left) {
        return -1;
    }
    f->base = len > 0 ? (const char *)r->p : NULL;
    f->len = len;
    r->p += len;
    r->left -= len;
    return 0;
}

/* Check that p[0..len) holds exactly n (name, value) pairs. */
static int props_check(const void *p, size_t len, uint32_t n)
{
    struct reader r = {p, len};
    struct cmd_bytes name;
    struct cmd_bytes value;
    uint32_t i;

    /* Each pair takes at least 8 bytes: refuse an absurd count at once. */
    if (n > len / 8) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        if (rd_field(&r, &name) != 0 || rd_field(&r, &value) != 0) {
            return -1;
        }
    }
    return r.left == 0 ? 0 : -1;
}

static int put_field(struct buf *out, const char *p, size_t len)
{
    if (len > CMD_MAX_FIELD_LEN) {
        return -1;
    }
    if (buf_put_u32(out, (uint32_t)len) != 0) {
        return -1;
    }
    return buf_append(out, p, len);
}

static int put_bytes(struct buf *out, struct cmd_bytes f)
{
    return put_field(out, f.base, f.len);
}

int cmd_props_add(struct buf *pairs, const char *name, size_t name_len,
                  const char *value, size_t value_len)
{
    size_t mark = pairs->len;

    if (put_field(pairs, name, name_len) != 0 ||
        put_field(pairs, value, value_len) != 0) {
        pairs->len = mark;
        if (pairs->base != NULL) {
            pairs->base[mark] = '\0';
        }
        return -1;
    }
    return 0;
}

static int encode_fields(const struct cmd *c, struct buf *out)
{
    switch (c->op) {
        case CMD_SET_KEY:
            if (c->key_hash.len != 32) {
                return -1;
            }
            return put_bytes(out, c->acc) || put_bytes(out, c->key_hash);
        case CMD_NS_PUT:
        case CMD_NS_DELETE:
            return put_bytes(out, c->acc) || put_bytes(out, c->ns);
        case CMD_PATCH:
            if (props_check(c->props.base, c->props.len, c->n_props) != 0) {
                return -1;
            }
            return put_bytes(out, c->acc) || put_bytes(out, c->ns) ||
                   put_bytes(out, c->sid) || buf_put_u32(out, c->n_props) ||
                   buf_append(out, c->props.base, c->props.len);
        case CMD_PROP_PUT:
            return put_bytes(out, c->acc) || put_bytes(out, c->ns) ||
                   put_bytes(out, c->sid) || put_bytes(out, c->name) ||
                   put_bytes(out, c->value);
        case CMD_PROP_DELETE:
            return put_bytes(out, c->acc) || put_bytes(out, c->ns) ||
                   put_bytes(out, c->sid) || put_bytes(out, c->name);
        case CMD_SESSION_CLEAR:
        case CMD_SESSION_TTL:
            return put_bytes(out, c->acc) || put_bytes(out, c->ns) ||
                   put_bytes(out, c->sid);
        case CMD_PURGE:
            return 0;
        case CMD_NODE_INFO:
            return buf_put_u64(out, c->node_id) ||
                   put_bytes(out, c->http_addr) || put_bytes(out, c->region);
        default:
            return -1;
    }
}

int cmd_encode(const struct cmd *cmd, struct buf *out)
{
    size_t mark = out->len;

    if (buf_put_u8(out, cmd->op) != 0 ||
        buf_put_u8(out, cmd->has_if_match ? CMD_FLAG_IF_MATCH : 0) != 0 ||
        buf_put_u64(out, cmd->if_match) != 0 ||
        buf_put_u64(out, (uint64_t)cmd->ttl) != 0 ||
        put_bytes(out, cmd->request_id) != 0 ||
        encode_fields(cmd, out) != 0) {
        out->len = mark;
        if (out->base != NULL) {
            out->base[mark] = '\0';
        }
        return -1;
    }
    return 0;
}

static int decode_fields(struct reader *r, struct cmd *c)
{
    switch (c->op) {
        case CMD_SET_KEY:
            if (rd_field(r, &c->acc) != 0 || rd_field(r, &c->key_hash) != 0) {
                return -1;
            }
            return c->key_hash.len == 32 ? 0 : -1;
        case CMD_NS_PUT:
        case CMD_NS_DELETE:
            return rd_field(r, &c->acc) || rd_field(r, &c->ns);
        case CMD_PATCH:
            if (rd_field(r, &c->acc) != 0 || rd_field(r, &c->ns) != 0 ||
                rd_field(r, &c->sid) != 0 || rd_u32(r, &c->n_props) != 0) {
                return -1;
            }
            /* The pairs are the rest of the record. */
            if (props_check(r->p, r->left, c->n_props) != 0) {
                return -1;
            }
            c->props.base = r->left > 0 ? (const char *)r->p : NULL;
            c->props.len = (uint32_t)r->left;
            r->p += r->left;
            r->left = 0;
            return 0;
        case CMD_PROP_PUT:
            return rd_field(r, &c->acc) || rd_field(r, &c->ns) ||
                   rd_field(r, &c->sid) || rd_field(r, &c->name) ||
                   rd_field(r, &c->value);
        case CMD_PROP_DELETE:
            return rd_field(r, &c->acc) || rd_field(r, &c->ns) ||
                   rd_field(r, &c->sid) || rd_field(r, &c->name);
        case CMD_SESSION_CLEAR:
        case CMD_SESSION_TTL:
            return rd_field(r, &c->acc) || rd_field(r, &c->ns) ||
                   rd_field(r, &c->sid);
        case CMD_PURGE:
            return 0;
        case CMD_NODE_INFO:
            return rd_u64(r, &c->node_id) || rd_field(r, &c->http_addr) ||
                   rd_field(r, &c->region);
        default:
            return -1;
    }
}

int cmd_decode(const void *p, size_t len, struct cmd *cmd)
{
    struct reader r = {p, len};
    uint8_t flags;
    uint64_t ttl;

    memset(cmd, 0, sizeof *cmd);
    if (p == NULL && len > 0) {
        return -1;
    }
    if (rd_u8(&r, &cmd->op) != 0 || rd_u8(&r, &flags) != 0 ||
        (flags & ~CMD_FLAG_IF_MATCH) != 0 ||
        rd_u64(&r, &cmd->if_match) != 0 || rd_u64(&r, &ttl) != 0 ||
        rd_field(&r, &cmd->request_id) != 0) {
        goto err;
    }
    cmd->ttl = (int64_t)ttl;
    cmd->has_if_match = (flags & CMD_FLAG_IF_MATCH) != 0;
    if (!cmd->has_if_match && cmd->if_match != 0) {
        goto err; /* not canonical: a version without the flag */
    }
    if (decode_fields(&r, cmd) != 0 || r.left != 0) {
        goto err;
    }
    return 0;

err:
    memset(cmd, 0, sizeof *cmd);
    return -1;
}

int cmd_props_next(const struct cmd *cmd, size_t *pos, struct cmd_bytes *name,
                   struct cmd_bytes *value)
{
    struct reader r;

    if (*pos >= cmd->props.len) {
        return 0;
    }
    r.p = (const uint8_t *)cmd->props.base + *pos;
    r.left = cmd->props.len - *pos;
    if (rd_field(&r, name) != 0 || rd_field(&r, value) != 0) {
        /* Not a decoded command: stop rather than read out of bounds. */
        *pos = cmd->props.len;
        return 0;
    }
    *pos = cmd->props.len - r.left;
    return 1;
}

int cmd_entry_begin(struct buf *entry, uint64_t time_ms)
{
    size_t mark = entry->len;

    if (buf_put_u8(entry, CMD_ENTRY_MAGIC) != 0 ||
        buf_put_u8(entry, CMD_ENTRY_VERSION) != 0 ||
        buf_put_u8(entry, 0) != 0 || buf_put_u8(entry, 0) != 0 ||
        buf_put_u64(entry, time_ms) != 0 || buf_put_u32(entry, 0) != 0) {
        entry->len = mark;
        if (entry->base != NULL) {
            entry->base[mark] = '\0';
        }
        return -1;
    }
    return 0;
}

/* The count lives right after the 12 bytes of magic, version, reserved and
 * time. */
#define ENTRY_COUNT_OFF 12

int cmd_entry_add(struct buf *entry, const void *cmd, size_t len)
{
    size_t mark = entry->len;
    uint32_t count;
    unsigned i;

    if (entry->len < CMD_ENTRY_HEADER_LEN || len > UINT32_MAX) {
        return -1;
    }
    count = cmd_entry_count(entry);
    if (count == UINT32_MAX) {
        return -1;
    }
    if (buf_put_u32(entry, (uint32_t)len) != 0 ||
        buf_append(entry, cmd, len) != 0) {
        entry->len = mark;
        entry->base[mark] = '\0';
        return -1;
    }
    count++;
    for (i = 0; i < 4; i++) {
        entry->base[ENTRY_COUNT_OFF + i] = (char)(uint8_t)(count >> (8 * i));
    }
    return 0;
}

uint32_t cmd_entry_count(const struct buf *entry)
{
    if (entry->base == NULL || entry->len < CMD_ENTRY_HEADER_LEN) {
        return 0;
    }
    return (uint32_t)le_get((const uint8_t *)entry->base + ENTRY_COUNT_OFF, 4);
}

int cmd_entry_open(const void *p, size_t len, struct cmd_entry *e)
{
    const uint8_t *b = p;

    memset(e, 0, sizeof *e);
    if (p == NULL || len < CMD_ENTRY_HEADER_LEN || b[0] != CMD_ENTRY_MAGIC ||
        b[1] != CMD_ENTRY_VERSION || b[2] != 0 || b[3] != 0) {
        return -1;
    }
    e->time_ms = le_get(b + 4, 8);
    e->count = (uint32_t)le_get(b + ENTRY_COUNT_OFF, 4);
    e->seen = 0;
    e->p = (const char *)b + CMD_ENTRY_HEADER_LEN;
    e->end = (const char *)b + len;
    return 0;
}

int cmd_entry_next(struct cmd_entry *e, const char **rec, size_t *rec_len)
{
    size_t left = (size_t)(e->end - e->p);
    uint32_t len;

    if (e->seen == e->count) {
        /* All declared records read: anything left over is corrupt. */
        return left == 0 ? 0 : -1;
    }
    if (left < 4) {
        return -1;
    }
    len = (uint32_t)le_get((const uint8_t *)e->p, 4);
    if (len > left - 4) {
        return -1;
    }
    *rec = e->p + 4;
    *rec_len = len;
    e->p += 4 + (size_t)len;
    e->seen++;
    return 1;
}
