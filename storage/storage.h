/* The state machine: an in-memory SQLite database holding accounts,
 * namespaces, sessions and properties, changed only by applying Raft
 * entries (see command.h) and read by the API's queries.
 *
 * storage knows SQLite and the command format, nothing of HTTP or Raft.
 * Apply is deterministic: time comes from the entry's leader stamp (made
 * monotonic: an entry older than the last one applied uses the last time),
 * never from this machine's clock, so the same entries give the same state on
 * every replica. Queries take the serving node's clock (now_ms) only to hide
 * properties whose expiry has passed but which no purge has removed yet.
 *
 * Schema (WITHOUT ROWID and keyed by their natural keys, except sessions):
 *   accounts(acc, key_hash)
 *   namespaces(acc, ns, created_ms, ttl)           ttl NULL = none
 *   sessions(sk, acc, ns, sid, created_ms, ttl, version, doc_count,
 *            doc_bytes)                            sk: integer key (rowid),
 *                                                  unique (acc, ns, sid);
 *                                                  version = index of the
 *                                                  session's last change
 *   properties(sk, name, value, expires_ms)       value is JSON text
 *   requests(acc, rid, at_ms, status, idx)         exactly-once window
 *   nodes(id, http_addr, region)                   cluster directory
 *   meta(k, v)                                     applied index, last time,
 *                                                  purge count: written when
 *                                                  an image, digest or dump
 *                                                  reads the database, kept
 *                                                  in memory in between
 *
 * Every function returns 0 or a STORAGE_E* code; none prints. All JSON
 * appended to an output buffer is complete and valid. */
#ifndef CTXD_STORAGE_H
#define CTXD_STORAGE_H

#include <stddef.h>
#include <stdint.h>

#include "../lib/buf.h"
#include "command.h"

#define STORAGE_DOC_MAX 800000u                /* bytes per session document */
#define STORAGE_DEDUP_WINDOW_MS (15u * 60 * 1000) /* X-REQUEST-ID retention */
#define STORAGE_DEFAULT_SID "__default__"

/* Results and errors. The api maps each to one HTTP status. */
#define STORAGE_ERRORS(X)                                            \
    X(STORAGE_OK, 0, "ok")                                           \
    X(STORAGE_ENOTFOUND, 1, "not found")                             \
    X(STORAGE_EPRECONDITION, 2, "precondition failed")               \
    X(STORAGE_ETOOLARGE, 3, "document too large")                    \
    X(STORAGE_ECORRUPT, 4, "malformed command or entry")             \
    X(STORAGE_ENOMEM, 5, "out of memory")                            \
    X(STORAGE_EINTERNAL, 6, "database error")                       \
    X(STORAGE_EBUSY, 7, "busy: another backup or digest is in progress")

enum storage_status {
#define STORAGE_ENUM(name, code, text) name = code,
    STORAGE_ERRORS(STORAGE_ENUM)
#undef STORAGE_ENUM
};

const char *storage_strerror(int status);

/* Outcome of one command of an entry. */
struct storage_result
{
    int status;     /* enum storage_status */
    uint64_t index; /* index at which the command took effect: the entry's
                       own, or for a replayed X-REQUEST-ID the original one */
};

struct storage; /* opaque */

/* Open an empty in-memory database with the schema. */
int storage_open(struct storage **out);
void storage_close(struct storage *s);

/* Apply the entry at Raft index `index`. On success *results is a malloc'd
 * array of *n_results outcomes, one per command in entry order (the caller
 * frees it). A command that fails (bad record, If-Match, too large, ...)
 * changes nothing and reports its status; the others still apply. Returns
 * STORAGE_ECORRUPT (and applies nothing) when the entry header is bad,
 * STORAGE_ENOMEM / STORAGE_EINTERNAL on resource failure. */
int storage_apply(struct storage *s, uint64_t index, const void *entry,
                  size_t len, struct storage_result **results,
                  uint32_t *n_results);

/* Index of the last entry applied (0 when none), and its (monotonic) time. */
uint64_t storage_applied_index(const struct storage *s);
uint64_t storage_last_time_ms(const struct storage *s);

/* --- Queries --------------------------------------------------------- */

/* 1 when acc has a key whose SHA-256 is hash (compared in constant time),
 * 0 otherwise (also when the account has no key). */
int storage_key_verify(struct storage *s, const char *acc, size_t acc_len,
                       const uint8_t hash[32]);

/* A counter that changes whenever an account key may have changed (a
 * SET_KEY applied, a restore): callers caching key checks drop their cache
 * when it moves. */
uint64_t storage_keys_generation(const struct storage *s);

/* 1 when the namespace exists, 0 when not. */
int storage_ns_exists(struct storage *s, const char *acc, size_t acc_len,
                      const char *ns, size_t ns_len);

/* Row 2: append [{"name":..,"createdAt":..,"ttlSecond":..?},..] sorted by
 * name ("[]" for an unknown account). */
int storage_ns_list(struct storage *s, const char *acc, size_t acc_len,
                    struct buf *out);

/* Row 6: append the session's live properties as one JSON object; when
 * names is non-NULL only those of the n_names names that exist. *version is
 * the session's version (0 when the session does not exist). ENOTFOUND when
 * the namespace does not exist; "{}" for an absent session. */
int storage_props_get(struct storage *s, const struct cmd *where,
                      const struct cmd_bytes *names, size_t n_names,
                      uint64_t now_ms, struct buf *out, uint64_t *version);

/* Row 7: append the value text of one live property. ENOTFOUND when the
 * namespace or the property does not exist (or has expired). */
int storage_prop_get(struct storage *s, const struct cmd *where,
                     uint64_t now_ms, struct buf *out);

/* How many storage_prop_get calls there were, and in *cached how many of
 * them the read slots answered without SQLite (see struct read_slot). */
uint64_t storage_prop_reads(const struct storage *s, uint64_t *cached);

/* Row 10: append ["sid",..] of the sessions with live properties, sorted,
 * page `page` of `per_page`. ENOTFOUND for an unknown namespace. */
int storage_session_ids(struct storage *s, const struct cmd *where,
                        uint64_t page, uint64_t per_page, uint64_t now_ms,
                        struct buf *out);

/* Row 11: append [{"sessionId":..,"property":{..}},..], same paging. */
int storage_session_props(struct storage *s, const struct cmd *where,
                          uint64_t page, uint64_t per_page, uint64_t now_ms,
                          struct buf *out);

/* Row 13: append [{"sessionId":..,"createdAt":..,"ttlSecond":..},..] of the
 * sessions whose TTL is set, sorted. ENOTFOUND for an unknown namespace. */
int storage_session_ttls(struct storage *s, const struct cmd *where,
                         struct buf *out);

/* Earliest expiry among stored properties: 0 and *t_ms, or ENOTFOUND when
 * nothing expires. The leader proposes a PURGE once this has passed. */
int storage_next_expiry(struct storage *s, uint64_t *t_ms);

/* Cluster directory (NODE_INFO): append the HTTP address and region of a
 * node. ENOTFOUND when unknown. */
int storage_node_lookup(struct storage *s, uint64_t id, struct buf *http_addr,
                        struct buf *region);

/* Row counts after the last applied entry, for metrics: kept as rows are
 * inserted and deleted, so taking them costs nothing (see counts_setup in
 * storage.c). */
struct storage_counts
{
    uint64_t accounts, namespaces, sessions, properties, purged;
};
void storage_counts(struct storage *s, struct storage_counts *c);
/* The same by scanning every table (COUNT(*)), for tests and restore. */
int storage_recount(struct storage *s, struct storage_counts *c);

/* Bytes of the database: pages in use times the page size (0 when SQLite
 * cannot say). For metrics. */
uint64_t storage_db_bytes(struct storage *s);

/* --- Snapshots and comparison --------------------------------------- */

/* Serialize the whole database (SQLite's file format) into a malloc'd
 * buffer. */
int storage_snapshot(struct storage *s, void **data, size_t *len);

/* A snapshot image taken without stopping the caller (the event loop):
 * storage_image_fork() forks a child process, which shares the database
 * pages copy-on-write, serializes them as they are at that instant and
 * writes them to a pipe; storage_image_read(), on any thread, reads the
 * image and reaps the child. The caller may keep applying entries in
 * between: the child's copy does not change. Costs a fork (page tables,
 * a few ms at 1 M properties) on the caller's thread.
 *
 *   storage_image_fork ──▶ storage_image_read ──▶ (done)
 *          └────────────▶ storage_image_discard (instead of read)
 *
 * When fork() fails, storage_image_fork falls back to storage_snapshot()
 * in the caller and storage_image_read just hands that buffer over. */
struct storage_image
{
    int pid;       /* child serializing, or 0 */
    int fd;        /* read end of its pipe, or -1 */
    void *data;    /* image taken synchronously (fallback), malloc'd */
    size_t len;    /* bytes at data */
};
int storage_image_fork(struct storage *s, struct storage_image *img);
/* The image (malloc'd, the caller frees it); blocks until the child is done.
 * Returns 0, ENOMEM, or EINTERNAL (child failed or sent a bad length). The
 * image is finished either way. */
int storage_image_read(struct storage_image *img, void **data, size_t *len);
/* End an image that will not be read: kill and reap the child. Idempotent
 * on a finished image (one zeroed by fork or read). */
void storage_image_discard(struct storage_image *img);

/* The same for storage_digest(): a forked child hashes the state as it is
 * at the fork and sends the 32 bytes, which storage_image_read() returns
 * (len 32) on any thread, so that hashing a large state never holds the
 * caller's loop (2.5 s at 1,000,000 properties on two cores). The applied
 * index the digest belongs to is storage_applied_index() at the fork. When
 * fork() fails the digest is computed in the caller. One digest at a time:
 * EBUSY until the caller, on its own thread, calls storage_digest_release()
 * after reading or discarding the previous one. */
int storage_digest_fork(struct storage *s, struct storage_image *img);
void storage_digest_release(struct storage *s);

/* Replace the whole state with a serialized database. The bytes are
 * validated (SQLite header, schema, integrity); on failure the old state is
 * kept and ECORRUPT returned. Does not take ownership of data. */
int storage_restore(struct storage *s, const void *data, size_t len);

/* Online backup: the same forked image as a snapshot (storage_image_fork),
 * read with storage_image_read() on any thread; the image is the state at
 * storage_applied_index() when the fork was made, whatever the caller
 * applies or restores afterwards. One backup at a time: EBUSY until the
 * caller, on its own thread, calls storage_backup_release() after reading
 * or discarding the previous one. */
int storage_backup_fork(struct storage *s, struct storage_image *img);
void storage_backup_release(struct storage *s);

/* SHA-256 over the logical content (every row of every table in key
 * order), independent of page layout. */
int storage_digest(struct storage *s, uint8_t out[32]);

/* Check the data kept alongside the rows: every session's document count
 * and bytes equal its property rows, and no property row lacks its
 * session. 0 when they hold, ECORRUPT when not (for tests and fuzzing;
 * reads every row). */
int storage_check(struct storage *s);

/* Append a human-readable dump of every row in key order (for tests). */
int storage_dump(struct storage *s, struct buf *out);

/* Format ms since the epoch as 2021-02-26T02:46:38.220Z into out[25]. */
void storage_format_time(uint64_t ms, char out[25]);

#endif
