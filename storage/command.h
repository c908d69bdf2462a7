/* Commands: the binary records that travel through the Raft log.
 *
 * One Raft entry carries a batch of commands proposed in the same loop turn
 * by the leader, stamped with the leader's wall clock:
 *
 *   entry   := magic:u8 'C' | version:u8 (1) | reserved:u16 (0)
 *              | time_ms:u64 | count:u32 | count × (len:u32 | command[len])
 *   command := op:u8 | flags:u8 | if_match:u64 | ttl:i64
 *              | request_id:field | op-specific fields
 *   field   := len:u32 | bytes[len]
 *
 * All integers are little endian. Op-specific fields, in order:
 *
 *   SET_KEY        acc, key_hash (exactly 32 bytes: SHA-256 of the API key)
 *   NS_PUT         acc, ns               (ttl: seconds, or -1 = leave as is)
 *   NS_DELETE      acc, ns
 *   PATCH          acc, ns, sid, count:u32, count × (name, value)
 *   PROP_PUT       acc, ns, sid, name, value
 *   PROP_DELETE    acc, ns, sid, name
 *   SESSION_CLEAR  acc, ns, sid
 *   SESSION_TTL    acc, ns, sid          (ttl: seconds >= 0)
 *   PURGE          (none; deletes what expired at or before the entry time)
 *   NODE_INFO      node_id:u64, http_addr, region
 *
 * flags: bit 0 (CMD_FLAG_IF_MATCH) set when the write is conditional on the
 * session version being if_match (0 = the session must not exist); other
 * bits must be 0. if_match is 0 when the flag is clear. ttl is -1 when the op takes none. request_id is
 * empty when the client sent no X-REQUEST-ID.
 *
 * Decoding never trusts a length: every field is bounds-checked against the
 * record, trailing bytes are an error, and decoded fields point into the
 * caller's buffer (no copies). Values are JSON text validated by the API
 * before encoding; the decoder treats them as opaque bytes. */
#ifndef CTXD_COMMAND_H
#define CTXD_COMMAND_H

#include <stddef.h>
#include <stdint.h>

#include "../lib/buf.h"

#define CMD_ENTRY_MAGIC 'C'
#define CMD_ENTRY_VERSION 1
#define CMD_ENTRY_HEADER_LEN 16 /* magic, version, reserved, time_ms */
#define CMD_FLAG_IF_MATCH 0x01 /* flags bit: if_match is meaningful */
#define CMD_MAX_FIELD_LEN (16u * 1024 * 1024) /* bytes; larger is corrupt */

enum cmd_op {
    CMD_SET_KEY = 1,
    CMD_NS_PUT = 2,
    CMD_NS_DELETE = 3,
    CMD_PATCH = 4,
    CMD_PROP_PUT = 5,
    CMD_PROP_DELETE = 6,
    CMD_SESSION_CLEAR = 7,
    CMD_SESSION_TTL = 8,
    CMD_PURGE = 9,
    CMD_NODE_INFO = 10,
};

/* A span of bytes inside someone else's buffer. */
struct cmd_bytes
{
    const char *base; /* not owned; may be NULL when len is 0 */
    uint32_t len;
};

/* A decoded (or to-be-encoded) command. Every pointer refers to memory the
 * caller owns. */
struct cmd
{
    uint8_t op;                  /* enum cmd_op */
    uint8_t has_if_match;        /* 1: conditional on if_match */
    uint64_t if_match;           /* required session version (0: absent) */
    int64_t ttl;                 /* seconds; -1: none */
    struct cmd_bytes request_id; /* empty: none */
    struct cmd_bytes acc;        /* account id */
    struct cmd_bytes ns;         /* namespace */
    struct cmd_bytes sid;        /* session id ("__default__" for the ns) */
    struct cmd_bytes name;       /* PROP_PUT, PROP_DELETE */
    struct cmd_bytes value;      /* PROP_PUT: JSON text */
    struct cmd_bytes key_hash;   /* SET_KEY: 32 bytes */
    uint32_t n_props;            /* PATCH: number of (name, value) pairs */
    struct cmd_bytes props;      /* PATCH: the encoded pairs, see cmd_props_next */
    uint64_t node_id;            /* NODE_INFO */
    struct cmd_bytes http_addr;  /* NODE_INFO */
    struct cmd_bytes region;     /* NODE_INFO */
};

/* Encoding a PATCH: fill cmd with n_props and set props to the pairs already
 * encoded with cmd_props_add into a separate buffer. */
int cmd_props_add(struct buf *pairs, const char *name, size_t name_len,
                  const char *value, size_t value_len);

/* Append the encoding of cmd to out. Returns 0, or -1 on out of memory or a
 * field longer than CMD_MAX_FIELD_LEN (out is then truncated back to where
 * it was). */
int cmd_encode(const struct cmd *cmd, struct buf *out);

/* Decode one command from p[0..len). Returns 0, or -1 when the record is
 * malformed (unknown op, truncated, trailing bytes, bad key hash length,
 * PATCH pairs that do not parse). */
int cmd_decode(const void *p, size_t len, struct cmd *cmd);

/* Iterate the pairs of a decoded PATCH: *pos starts at 0; returns 1 and
 * fills name/value for each pair, 0 at the end. The pairs were checked by
 * cmd_decode, so this cannot fail on a decoded command. */
int cmd_props_next(const struct cmd *cmd, size_t *pos, struct cmd_bytes *name,
                   struct cmd_bytes *value);

/* Building an entry: begin writes the header with count 0, add appends one
 * encoded command and bumps the count. */
int cmd_entry_begin(struct buf *entry, uint64_t time_ms);
int cmd_entry_add(struct buf *entry, const void *cmd, size_t len);
uint32_t cmd_entry_count(const struct buf *entry);

/* Reading an entry. */
struct cmd_entry
{
    uint64_t time_ms; /* the leader's stamp */
    uint32_t count;   /* commands in the entry */
    uint32_t seen;    /* records returned by cmd_entry_next so far */
    const char *p;    /* next command record */
    const char *end;  /* end of the entry */
};

/* Check the header; returns 0 or -1 (bad magic, version, truncated). */
int cmd_entry_open(const void *p, size_t len, struct cmd_entry *e);

/* Next command record: returns 1 with rec/rec_len set, 0 at the end, -1 when
 * a length runs past the entry or the count does not match. */
int cmd_entry_next(struct cmd_entry *e, const char **rec, size_t *rec_len);

#endif
