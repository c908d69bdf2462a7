/* The state machine: applies command entries to an in-memory SQLite
 * database and answers the API's queries from it (see storage.h).
 *
 * Invariants:
 *   - Apply is deterministic. The only inputs are the entry bytes, its Raft
 *     index and the state; time is the entry's leader stamp made monotonic
 *     (max with the last applied time, clamped to INT64_MAX), never a clock.
 *   - An entry is one transaction; each command runs inside a SAVEPOINT, so a
 *     command that is refused (If-Match, too large, not found, bad record)
 *     leaves no trace while the others of the entry still apply. A database
 *     failure (out of memory) rolls back the whole entry and is returned:
 *     applying half an entry would let replicas diverge.
 *   - Every key, name and value is stored as a BLOB, so ordering is memcmp
 *     (SQLite's BINARY order) and embedded NUL bytes survive.
 *   - The in-memory copies of the applied index, time and purge counter
 *     change only after COMMIT succeeds; meta holds the same values, so a
 *     restored snapshot carries them.
 *   - Prepared statements are made once at open (and restore) and reset and
 *     unbound after every use; apply does no schema work.
 *
 * Snapshots are the SQLite file image (sqlite3_serialize). Restore loads the
 * image into a new connection, checks the header, PRAGMA integrity_check and
 * the schema, prepares every statement, and only then replaces the old
 * connection, so bad bytes leave the current state untouched. */
#include "storage.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../lib/crypto.h"
#include "sqlmem.h"

/* Schema: see storage.h. A session row has an integer key, sk, and its
 * properties are keyed by (sk, name): a write looks the composite key
 * (acc, ns, sid) up once, in sessions_key, and every other statement of the
 * write finds its row by an integer, which costs about a third fewer
 * instructions than comparing the composite BLOB keys again in each one.
 * sk is the rowid SQLite assigns on insert (the largest plus one), so the
 * same log gives the same sk on every replica. properties_expiry serves
 * PURGE and next_expiry; requests_at serves the dedup window's cleanup. */
#define SCHEMA_SESSIONS                                                       \
    "CREATE TABLE sessions(sk INTEGER PRIMARY KEY, acc BLOB NOT NULL,"        \
    " ns BLOB NOT NULL, sid BLOB NOT NULL, created_ms INTEGER NOT NULL,"      \
    " ttl INTEGER, version INTEGER NOT NULL,"                                 \
    " doc_count INTEGER NOT NULL DEFAULT 0,"                                  \
    " doc_bytes INTEGER NOT NULL DEFAULT 0);"                                 \
    "CREATE UNIQUE INDEX sessions_key ON sessions(acc, ns, sid);"
#define SCHEMA_PROPERTIES                                                     \
    "CREATE TABLE properties(sk INTEGER NOT NULL, name BLOB NOT NULL,"        \
    " value BLOB NOT NULL, expires_ms INTEGER,"                               \
    " PRIMARY KEY(sk, name)) WITHOUT ROWID;"                                  \
    "CREATE INDEX properties_expiry ON properties(expires_ms)"                \
    " WHERE expires_ms IS NOT NULL;"                                          \
    /* A write drops its session's expired rows first: find them without     \
     * scanning the session. */                                               \
    "CREATE INDEX properties_session_expiry"                                  \
    " ON properties(sk, expires_ms) WHERE expires_ms IS NOT NULL;"            \
    /* The session row keeps the number and the bytes (name + value) of its  \
     * property rows, so the document size check reads one row instead of    \
     * summing the session. Writes (the only path that adds or changes a     \
     * row) add their own changes in the statement that bumps the session    \
     * version (op_write); every removal (deletes, clears, purges, expired   \
     * rows) goes through this trigger. A trigger costs about 20,000         \
     * instructions per row, which is why writes do not use one. */          \
    "CREATE TRIGGER properties_del AFTER DELETE ON properties BEGIN"          \
    " UPDATE sessions SET doc_count = doc_count - 1,"                         \
    " doc_bytes = doc_bytes - length(OLD.name) - length(OLD.value)"           \
    " WHERE sk = OLD.sk; END;"

static const char schema_sql[] =
    "CREATE TABLE accounts(acc BLOB NOT NULL PRIMARY KEY,"
    " key_hash BLOB NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE namespaces(acc BLOB NOT NULL, ns BLOB NOT NULL,"
    " created_ms INTEGER NOT NULL, ttl INTEGER,"
    " PRIMARY KEY(acc, ns)) WITHOUT ROWID;"
    SCHEMA_SESSIONS
    SCHEMA_PROPERTIES
    "CREATE TABLE requests(acc BLOB NOT NULL, rid BLOB NOT NULL,"
    " at_ms INTEGER NOT NULL, status INTEGER NOT NULL, idx INTEGER NOT NULL,"
    " PRIMARY KEY(acc, rid)) WITHOUT ROWID;"
    "CREATE INDEX requests_at ON requests(at_ms);"
    "CREATE TABLE nodes(id INTEGER NOT NULL PRIMARY KEY,"
    " http_addr BLOB NOT NULL, region BLOB NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE meta(k TEXT NOT NULL PRIMARY KEY, v INTEGER NOT NULL)"
    " WITHOUT ROWID;";

/* Images taken before sessions had an integer key keep (acc, ns, sid) in
 * every property row. Restore rebuilds both tables in the layout above,
 * numbering the sessions in key order; see storage_restore. */
static const char migrate_sk_sql[] =
    "DROP TRIGGER IF EXISTS properties_del;"
    "DROP INDEX IF EXISTS properties_expiry;"
    "DROP INDEX IF EXISTS properties_session_expiry;"
    "ALTER TABLE sessions RENAME TO sessions_v1;"
    "ALTER TABLE properties RENAME TO properties_v1;"
    SCHEMA_SESSIONS
    SCHEMA_PROPERTIES
    "INSERT INTO sessions(acc, ns, sid, created_ms, ttl, version, doc_count,"
    " doc_bytes) SELECT acc, ns, sid, created_ms, ttl, version, doc_count,"
    " doc_bytes FROM sessions_v1 ORDER BY acc, ns, sid;"
    "INSERT INTO properties(sk, name, value, expires_ms)"
    " SELECT s.sk, p.name, p.value, p.expires_ms FROM properties_v1 p"
    " JOIN sessions s ON s.acc = p.acc AND s.ns = p.ns AND s.sid = p.sid;";

/* Tables in digest/dump order, each with its columns, the rows they come
 * from and their key order. The digest and the dump show a session's
 * properties under (acc, ns, sid), never under sk: sk is a row number, the
 * same on every replica that applied the same log, but an image migrated
 * from the layout before sk (see migrate_sk_sql) numbers its sessions in
 * key order, and two replicas that migrated at different indexes hold the
 * same state under different numbers. */
static const struct
{
    const char *name; /* table name */
    const char *cols; /* every column but sk, in schema order */
    const char *from; /* FROM clause */
    const char *key;  /* ORDER BY: the primary key */
} tables[] = {
    {"accounts", "acc, key_hash", "accounts", "acc"},
    {"namespaces", "acc, ns, created_ms, ttl", "namespaces", "acc, ns"},
    {"sessions", "acc, ns, sid, created_ms, ttl, version", "sessions",
     "acc, ns, sid"},
    {"properties",
     "s.acc AS acc, s.ns AS ns, s.sid AS sid, p.name AS name,"
     " p.value AS value, p.expires_ms AS expires_ms",
     "properties p JOIN sessions s ON s.sk = p.sk",
     "s.acc, s.ns, s.sid, p.name"},
    {"requests", "acc, rid, at_ms, status, idx", "requests", "acc, rid"},
    {"nodes", "id, http_addr, region", "nodes", "id"},
    {"meta", "k, v", "meta", "k"},
};
#define N_TABLES (sizeof tables / sizeof tables[0])

/* Every statement apply and the queries use, prepared once. Parameters:
 * ?1 acc, ?2 ns, ?3 sid, or ?1 sk, unless the SQL says otherwise. */
#define STMTS(X)                                                              \
    X(ST_BEGIN, "BEGIN")                                                      \
    X(ST_COMMIT, "COMMIT")                                                    \
    X(ST_ROLLBACK, "ROLLBACK")                                                \
    X(ST_SAVEPOINT, "SAVEPOINT cmd")                                          \
    X(ST_ROLLBACK_TO, "ROLLBACK TO cmd")                                      \
    X(ST_RELEASE, "RELEASE cmd")                                              \
    X(ST_META_GET, "SELECT v FROM meta WHERE k = ?1")                         \
    X(ST_META_SET, "INSERT INTO meta(k, v) VALUES(?1, ?2)"                    \
                   " ON CONFLICT(k) DO UPDATE SET v = excluded.v")            \
    X(ST_REQ_GET, "SELECT status, idx FROM requests"                          \
                  " WHERE acc = ?1 AND rid = ?2")                             \
    X(ST_REQ_PUT, "INSERT OR REPLACE INTO requests(acc, rid, at_ms, status,"  \
                  " idx) VALUES(?1, ?2, ?3, ?4, ?5)")                         \
    X(ST_REQ_EXPIRE, "DELETE FROM requests WHERE at_ms < ?1")                 \
    X(ST_ACC_PUT, "INSERT INTO accounts(acc, key_hash) VALUES(?1, ?2)"        \
                  " ON CONFLICT(acc) DO UPDATE SET key_hash = excluded.key_hash") \
    X(ST_ACC_GET, "SELECT key_hash FROM accounts WHERE acc = ?1")             \
    X(ST_NS_CREATE, "INSERT OR IGNORE INTO namespaces(acc, ns, created_ms,"   \
                    " ttl) VALUES(?1, ?2, ?3, NULL)")                         \
    X(ST_NS_SET_TTL, "UPDATE namespaces SET ttl = ?3"                         \
                     " WHERE acc = ?1 AND ns = ?2")                           \
    X(ST_NS_DEL, "DELETE FROM namespaces WHERE acc = ?1 AND ns = ?2")         \
    X(ST_NS_DEL_SESSIONS, "DELETE FROM sessions WHERE acc = ?1 AND ns = ?2")  \
    X(ST_NS_DEL_PROPS, "DELETE FROM properties WHERE sk IN"                   \
                       " (SELECT sk FROM sessions WHERE acc = ?1 AND ns = ?2)") \
    X(ST_NS_LIST, "SELECT ns, created_ms, ttl FROM namespaces"                \
                  " WHERE acc = ?1 ORDER BY ns")                              \
    X(ST_VIEW_GET, "SELECT n.ttl, s.sk, s.ttl, s.version,"                    \
                    " s.doc_count, s.doc_bytes FROM namespaces n"             \
                    " LEFT JOIN sessions s ON s.acc = n.acc"                  \
                    " AND s.ns = n.ns AND s.sid = ?3"                         \
                    " WHERE n.acc = ?1 AND n.ns = ?2")                        \
    X(ST_SESS_BY_SK, "SELECT sk, ttl, version, doc_count, doc_bytes,"        \
                     " acc, ns, sid FROM sessions WHERE sk = ?1")             \
    X(ST_SESS_GET, "SELECT sk, ttl, version, doc_count, doc_bytes"           \
                   " FROM sessions WHERE acc = ?1 AND ns = ?2 AND sid = ?3")  \
    X(ST_SESS_NEW, "INSERT INTO sessions(acc, ns, sid, created_ms, ttl,"      \
                   " version) VALUES(?1, ?2, ?3, ?4, NULL, ?5)")              \
    X(ST_SESS_SET_TTL, "INSERT INTO sessions(acc, ns, sid, created_ms, ttl,"  \
                       " version) VALUES(?1, ?2, ?3, ?4, ?6, ?5)"             \
                       " ON CONFLICT(acc, ns, sid) DO UPDATE SET"             \
                       " ttl = excluded.ttl, version = excluded.version")     \
    X(ST_SESS_BUMP, "UPDATE sessions SET version = ?2 WHERE sk = ?1")         \
    X(ST_SESS_TTLS, "SELECT sid, created_ms, ttl FROM sessions"               \
                    " WHERE acc = ?1 AND ns = ?2 AND ttl IS NOT NULL"         \
                    " ORDER BY sid")                                          \
    X(ST_PROP_INSERT, "INSERT INTO properties(sk, name, value, expires_ms)"   \
                      " VALUES(?1, ?2, ?3, ?4)")                              \
    X(ST_PROP_UPDATE, "UPDATE properties SET value = ?3, expires_ms = ?4"     \
                      " WHERE sk = ?1 AND name = ?2")                         \
    X(ST_PROP_SET_VALUE, "UPDATE properties SET value = ?3"                   \
                         " WHERE sk = ?1 AND name = ?2")                      \
    X(ST_SESS_WRITTEN, "UPDATE sessions SET version = ?2,"                    \
                       " doc_count = doc_count + ?3,"                         \
                       " doc_bytes = doc_bytes + ?4 WHERE sk = ?1")           \
    X(ST_PROP_DEL, "DELETE FROM properties WHERE sk = ?1 AND name = ?2")      \
    X(ST_PROP_DEL_EXPIRED, "DELETE FROM properties WHERE sk = ?1"             \
                           " AND expires_ms IS NOT NULL"                      \
                           " AND expires_ms <= ?2")                           \
    X(ST_PROP_CLEAR, "DELETE FROM properties WHERE sk = ?1")                  \
    X(ST_DOC_SIZE, "SELECT doc_count, doc_bytes FROM sessions WHERE sk = ?1") \
    X(ST_PROPS_GET, "SELECT name, value FROM properties WHERE sk = ?1"        \
                    " AND (expires_ms IS NULL OR expires_ms > ?2)"            \
                    " ORDER BY name")                                         \
    X(ST_PROP_GET, "SELECT p.value, p.expires_ms, s.sk FROM sessions s"       \
                   " JOIN properties p ON p.sk = s.sk"                        \
                   " WHERE s.acc = ?1 AND s.ns = ?2 AND s.sid = ?3"           \
                   " AND p.name = ?4"                                         \
                   " AND (p.expires_ms IS NULL OR p.expires_ms > ?5)")        \
    X(ST_PROP_GET_BY_SK, "SELECT s.acc, s.ns, s.sid, p.value, p.expires_ms"   \
                         " FROM sessions s"                                   \
                         " LEFT JOIN properties p ON p.sk = s.sk"             \
                         " AND p.name = ?2"                                   \
                         " AND (p.expires_ms IS NULL OR p.expires_ms > ?3)"   \
                         " WHERE s.sk = ?1")                                  \
    X(ST_SESSION_IDS, "SELECT s.sk, s.sid FROM sessions s"                    \
                      " WHERE s.acc = ?1 AND s.ns = ?2 AND EXISTS"            \
                      " (SELECT 1 FROM properties p WHERE p.sk = s.sk"        \
                      " AND (p.expires_ms IS NULL OR p.expires_ms > ?3))"     \
                      " ORDER BY s.sid LIMIT ?4 OFFSET ?5")                   \
    X(ST_PURGE, "DELETE FROM properties"                                      \
                " WHERE expires_ms IS NOT NULL AND expires_ms <= ?1")         \
    X(ST_NEXT_EXPIRY, "SELECT expires_ms FROM properties"                     \
                      " WHERE expires_ms IS NOT NULL"                         \
                      " ORDER BY expires_ms LIMIT 1")                         \
    X(ST_NODE_PUT, "INSERT INTO nodes(id, http_addr, region)"                 \
                   " VALUES(?1, ?2, ?3) ON CONFLICT(id) DO UPDATE SET"        \
                   " http_addr = excluded.http_addr,"                         \
                   " region = excluded.region")                               \
    X(ST_NODE_GET, "SELECT http_addr, region FROM nodes WHERE id = ?1")       \
    X(ST_COUNT_ACCOUNTS, "SELECT count(*) FROM accounts")                     \
    X(ST_COUNT_NAMESPACES, "SELECT count(*) FROM namespaces")                 \
    X(ST_COUNT_SESSIONS, "SELECT count(*) FROM sessions")                     \
    X(ST_COUNT_PROPERTIES, "SELECT count(*) FROM properties")

enum stmt_id {
#define STMT_ENUM(id, sql) id,
    STMTS(STMT_ENUM)
#undef STMT_ENUM
    ST_COUNT
};

static const char *const stmt_sql[ST_COUNT] = {
#define STMT_SQL(id, sql) sql,
    STMTS(STMT_SQL)
#undef STMT_SQL
};

/* meta keys */
#define META_APPLIED "applied_index"
#define META_TIME "last_time_ms"
#define META_PURGED "purged"

/* Namespaces that exist, with their TTL, so that a write or a read looks
 * up its session alone instead of joining the namespace row each time.
 * Direct-mapped by a hash of (acc, ns); pairs longer than NS_CACHE_KEY
 * bytes are not kept. A slot is valid while its generation is the
 * storage's: anything that may change a namespace row (create, TTL,
 * delete, a rollback that may undo one, a restore) bumps the generation,
 * which empties the cache at once. Namespaces change rarely; every write
 * and read looks one up. */
#define NS_CACHE_SLOTS 64
#define NS_CACHE_KEY 120

struct ns_slot
{
    uint64_t gen;      /* valid while = storage's ns_gen */
    int64_t ttl;       /* the namespace TTL in seconds, 0 when none */
    uint32_t acc_len;  /* key = acc bytes then ns bytes */
    uint32_t ns_len;
    unsigned char key[NS_CACHE_KEY];
};

/* Where sessions were last found: a slot per hash of (acc, ns, sid) holds
 * that hash and the session's sk, so that the next lookup reads the row by
 * its integer key instead of searching sessions_key, whose entries compare
 * three BLOBs each (about half of a lookup's instructions). A slot is only
 * a hint: the row read by sk must carry the same (acc, ns, sid), or the
 * lookup searches the index as before. So no change to the sessions (a
 * delete, a rollback, an sk reused after the largest was deleted, a
 * restore) can make it answer wrong, and nothing needs to empty it. */
#define SK_CACHE_SLOTS 65536u /* 1 MiB */

struct sk_slot
{
    uint64_t hash; /* of (acc, ns, sid), see sk_slot_of */
    int64_t sk;    /* 0: empty (rowids start at 1) */
};

/* The session rows that writes found, so that the next write to a session
 * skips its lookup (a quarter of an applied write's instructions). Unlike
 * a hint, a slot is trusted: it answers an If-Match, a document limit and
 * an expiry, so a stale one would make this node decide otherwise than
 * its peers. So a slot holds its whole key (acc, ns and sid, when they fit
 * in ROW_CACHE_KEY bytes), op_write updates it with exactly what its own
 * statements change, and a slot is valid while its generation is the
 * storage's: every other command, every rollback and a restore bump the
 * generation (row_cache_clear), which empties the cache at once; expired
 * properties deleted by a write (a trigger changes the session's counts)
 * empty that slot. A slot is used only while the namespace slot of its
 * session holds too, and a failed entry and a restore empty those as well,
 * so those two paths are guarded twice. Direct-mapped by the same hash as
 * the hints. test_storage: the_row_and_read_slots_never_change_an_outcome
 * applies random entries to a storage that keeps its slots and to one that
 * starts every entry without, and compares every result and the state. */
#define ROW_CACHE_SLOTS 32768u
#define ROW_CACHE_KEY 96

struct row_slot
{
    uint64_t gen; /* valid while = storage's row_gen; 0: empty */
    int64_t sk;
    int64_t ttl; /* the session's TTL in seconds, 0 when none */
    uint64_t version;
    uint64_t doc_count;
    uint64_t doc_bytes;
    uint8_t acc_len; /* key = acc bytes, ns bytes, then sid bytes */
    uint8_t ns_len;
    uint8_t sid_len;
    unsigned char key[ROW_CACHE_KEY];
};

/* The properties that reads found, so that the next read of one answers
 * without SQLite (which was 32 % of a property GET's instructions and, with
 * its cache misses, 13 % of a follower's CPU under stale reads). A slot is
 * trusted like a row slot: it holds its whole key (acc, ns, sid and name)
 * with the value and expiry that SQLite returned, and is valid while its
 * generation is the storage's read_gen. Whatever changes a property row
 * keeps it true: op_write empties the slot of each property it writes, and
 * a write that deletes its session's expired rows, every other command,
 * every rollback and a restore bump read_gen (with row_gen), which empties
 * them all. The expiry is checked on every hit against the read's time, as
 * the SELECT does. Only key and value of at most READ_SLOT_BYTES are kept,
 * and at most READ_CACHE_BYTES in all; a slot that cannot be filled is
 * simply left empty. test_storage:
 * the_row_and_read_slots_never_change_an_outcome reads every property
 * after each of 1,000 random entries from a storage that keeps its slots
 * and from one that starts every entry without. */
#define READ_CACHE_SLOTS 65536u /* 32,768 sets of two */
#define READ_SLOT_BYTES 4096u
#define READ_CACHE_BYTES (16u << 20)

struct read_slot
{
    uint64_t gen;        /* valid while = storage's read_gen; 0: empty */
    uint64_t hash;       /* of (acc, ns, sid, name), see read_hash */
    int64_t expires;     /* the property's expires_ms; 0: none */
    unsigned char *data; /* owned: acc, ns, sid, name, then the value */
    uint32_t cap;        /* bytes allocated at data */
    uint32_t next;       /* 1 + index of the slot allocated before this
                            one, 0: none (see read_cache_free) */
    uint32_t value_len;
    uint16_t acc_len;
    uint16_t ns_len;
    uint16_t sid_len;
    uint16_t name_len;
};

/* Free the slots' allocations, walking the list of the slots that have
 * one from last (1 + its index) instead of every slot: the array is
 * touched only where reads filled it. */
static void read_cache_free(struct read_slot *cache, uint32_t last)
{
    while (last != 0) {
        struct read_slot *r = &cache[last - 1];

        last = r->next;
        free(r->data);
    }
    free(cache);
}

struct storage
{
    sqlite3 *db;                    /* owned; private in-memory database */
    sqlite3_stmt *st[ST_COUNT];     /* owned; prepared once, see STMTS */
    uint64_t applied_index;         /* last entry applied; meta */
    uint64_t last_time_ms;          /* its monotonic time; meta */
    uint64_t purged;                /* properties removed by PURGE; meta */
    int meta_stale;                 /* the three above are newer than
                                       their rows in meta: see meta_sync */
    uint64_t keys_generation;       /* bumped whenever an account key may
                                       have changed (SET_KEY, restore) */
    int backup_busy;                /* a backup child is not yet released
                                       (storage_backup_fork) */
    int digest_busy;                /* a digest child is not yet released
                                       (storage_digest_fork) */
    int64_t expiry_floor;           /* no property expires before this:
                                       a lower bound of every expires_ms
                                       (INT64_MAX: none expire), see
                                       op_write */
    uint64_t ns_gen;                /* see struct ns_slot; never 0 */
    struct sk_slot *sk_cache;       /* owned; SK_CACHE_SLOTS slots */
    uint64_t row_gen;               /* see struct row_slot; never 0 */
    struct row_slot *row_cache;     /* owned; ROW_CACHE_SLOTS slots */
    uint64_t read_gen;              /* see struct read_slot; never 0 */
    size_t read_bytes;              /* allocated by the read slots */
    struct read_slot *read_cache;   /* owned; READ_CACHE_SLOTS slots */
    uint32_t read_last;             /* 1 + index of the slot allocated
                                       last, 0: none (read_cache_free) */
    uint64_t prop_reads;            /* storage_prop_get calls */
    uint64_t prop_reads_cached;     /* of those, answered by a read slot */
    uint32_t read_credit;           /* slots a miss may take from another
                                       property, see read_slot_victim */
    struct storage_counts live;     /* rows now, inside an entry too (the
                                       count triggers and op_write keep it;
                                       purged unused) */
    struct storage_counts committed; /* rows after the last COMMIT: what
                                       storage_counts answers */
    struct ns_slot ns_cache[NS_CACHE_SLOTS];
};

/* What one apply needs besides the storage. */
struct apply_ctx
{
    uint64_t index;  /* Raft index of the entry */
    int64_t time;    /* monotonic entry time, ms */
    uint64_t purged; /* purge counter including this entry so far */
    int purge_ran;   /* a PURGE command ran in this entry */
    int savepoint;   /* the command being applied opened SAVEPOINT cmd */
    struct storage_counts at_savepoint; /* s->live when it was opened */
};

const char *storage_strerror(int status)
{
    switch (status) {
#define STORAGE_TEXT(name, code, text) \
    case code:                         \
        return text;
        STORAGE_ERRORS(STORAGE_TEXT)
#undef STORAGE_TEXT
        default:
            return "unknown error";
    }
}

/* --- SQLite helpers ------------------------------------------------- */

static int map_rc(int rc)
{
    return rc == SQLITE_NOMEM ? STORAGE_ENOMEM : STORAGE_EINTERNAL;
}

/* A fatal status aborts the whole apply; the others are a command's
 * outcome. */
static int is_fatal(int status)
{
    return status == STORAGE_ENOMEM || status == STORAGE_EINTERNAL;
}

static int bind_b(sqlite3_stmt *st, int i, const char *p, size_t len)
{
    /* A NULL pointer would bind SQL NULL; an empty key is a 0-byte blob. */
    return sqlite3_bind_blob(st, i, p != NULL ? p : "", (int)len,
                             SQLITE_STATIC);
}

static int bind_f(sqlite3_stmt *st, int i, struct cmd_bytes f)
{
    return bind_b(st, i, f.base, f.len);
}

static struct cmd_bytes sid_of(const struct cmd *c)
{
    struct cmd_bytes d = {STORAGE_DEFAULT_SID,
                          (uint32_t)(sizeof STORAGE_DEFAULT_SID - 1)};

    return c->sid.len > 0 ? c->sid : d;
}

/* Bind ?1 acc, ?2 ns and, when with_sid, ?3 sid. */
static int bind_where(sqlite3_stmt *st, const struct cmd *c, int with_sid)
{
    int rc = bind_f(st, 1, c->acc);

    if (rc == SQLITE_OK) {
        rc = bind_f(st, 2, c->ns);
    }
    if (rc == SQLITE_OK && with_sid) {
        rc = bind_f(st, 3, sid_of(c));
    }
    return rc;
}

static void finish(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* Step a statement that returns no rows (or whose rows are ignored) and
 * reset it. bind_rc is the result of binding, so callers can chain. */
static int run(sqlite3_stmt *st, int bind_rc)
{
    int rc = bind_rc;

    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
    }
    finish(st);
    if (rc == SQLITE_DONE || rc == SQLITE_ROW) {
        return 0;
    }
    return map_rc(rc);
}

static int exec_sql(sqlite3 *db, const char *sql)
{
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);

    return rc == SQLITE_OK ? 0 : map_rc(rc);
}

static int64_t u2i(uint64_t v)
{
    return v > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v;
}

static uint64_t col_u64(sqlite3_stmt *st, int i)
{
    sqlite3_int64 v = sqlite3_column_int64(st, i);

    return v < 0 ? 0 : (uint64_t)v;
}

static void truncate_buf(struct buf *b, size_t mark)
{
    if (b->len > mark) {
        b->len = mark;
        b->base[mark] = '\0';
    }
}

static void stmts_finalize(sqlite3_stmt **st)
{
    size_t i;

    for (i = 0; i < ST_COUNT; i++) {
        sqlite3_finalize(st[i]);
        st[i] = NULL;
    }
}

static int stmts_prepare(sqlite3 *db, sqlite3_stmt **st)
{
    size_t i;
    int rc;

    for (i = 0; i < ST_COUNT; i++) {
        rc = sqlite3_prepare_v3(db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
                                &st[i], NULL);
        if (rc != SQLITE_OK) {
            st[i] = NULL;
            stmts_finalize(st);
            return map_rc(rc);
        }
    }
    return 0;
}

static int db_configure(sqlite3 *db)
{
    /* journal_mode=OFF would make ROLLBACK TO undefined: keep the journal
     * in memory. Nothing is ever synced: the Raft log is the durable truth. */
    return exec_sql(db, "PRAGMA journal_mode=MEMORY; PRAGMA synchronous=OFF;");
}

/* ctxd touches SQLite from one thread only: no mutexes, no global memory
 * statistics (a mutex-protected counter on every malloc), and a heap of
 * free lists without locks (sqlmem.h). This must run before SQLite
 * initializes; once it has, sqlite3_config refuses with SQLITE_MISUSE and
 * the defaults (serialized, malloc) stay, which is slower but correct, so
 * the results are deliberately not checked. */
static void db_global_config(void)
{
    static int done;

    if (!done) {
        done = 1;
        (void)sqlite3_config(SQLITE_CONFIG_SINGLETHREAD);
        (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
        (void)sqlmem_install();
    }
}

static int db_open(sqlite3 **out)
{
    int rc;

    db_global_config();
    rc = sqlite3_open_v2(":memory:", out,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                             SQLITE_OPEN_NOMUTEX,
                         NULL);

    if (rc != SQLITE_OK) {
        sqlite3_close(*out);
        *out = NULL;
        return map_rc(rc);
    }
    return 0;
}

static int meta_get(struct storage *s, const char *k, uint64_t *v)
{
    sqlite3_stmt *st = s->st[ST_META_GET];
    int rc = sqlite3_bind_text(st, 1, k, -1, SQLITE_STATIC);

    *v = 0;
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
    }
    if (rc == SQLITE_ROW) {
        *v = col_u64(st, 0);
        rc = SQLITE_DONE;
    }
    finish(st);
    return rc == SQLITE_DONE ? 0 : map_rc(rc);
}

static int meta_set(struct storage *s, const char *k, uint64_t v)
{
    sqlite3_stmt *st = s->st[ST_META_SET];
    int rc = sqlite3_bind_text(st, 1, k, -1, SQLITE_STATIC);

    if (rc == SQLITE_OK) {
        rc = sqlite3_bind_int64(st, 2, u2i(v));
    }
    return run(st, rc);
}

/* The applied index, its time and the purge counter live in struct storage
 * and reach the meta table only when something reads the database whole:
 * an image (snapshot, backup), the digest, the dump. Writing them in every
 * applied entry cost two upserts per entry (about 10,000 instructions, as
 * much as a third of a one-write entry). The rows are those apply used to
 * write: the index and the time once an entry has been applied, the purge
 * counter once a purge removed something. */
static int meta_sync(struct storage *s)
{
    int rc = 0;

    if (!s->meta_stale) {
        return 0;
    }
    if (s->applied_index > 0) {
        rc = meta_set(s, META_APPLIED, s->applied_index);
        if (rc == 0) {
            rc = meta_set(s, META_TIME, s->last_time_ms);
        }
    }
    if (rc == 0 && s->purged > 0) {
        rc = meta_set(s, META_PURGED, s->purged);
    }
    if (rc == 0) {
        s->meta_stale = 0;
    }
    return rc;
}

/* Load the in-memory copies from meta. */
static int meta_load(struct storage *s)
{
    int rc = meta_get(s, META_APPLIED, &s->applied_index);

    if (rc == 0) {
        rc = meta_get(s, META_TIME, &s->last_time_ms);
    }
    if (rc == 0) {
        rc = meta_get(s, META_PURGED, &s->purged);
    }
    return rc;
}

/* Row counts without scanning (storage_counts): a /metrics scrape used to
 * COUNT(*) whole tables, and after every snapshot fork the first touch of
 * each page faults (copy-on-write), so at 1,000,000 properties one count
 * held the loop 300-780 ms. Now s->live follows every insert and delete:
 * TEMP triggers (on this connection only, never in an image or a digest)
 * call ctxd_count for accounts, namespaces and sessions and for deleted
 * properties; op_write adds the properties it inserts (a trigger per
 * inserted row would cost every write). Savepoints and rollbacks restore
 * s->live; COMMIT copies it to s->committed; restore recounts. */
#define COUNT_TRIGGERS                                                        \
    "CREATE TEMP TRIGGER count_acc_ins AFTER INSERT ON main.accounts"         \
    " BEGIN SELECT ctxd_count(0, 1); END;"                                    \
    "CREATE TEMP TRIGGER count_acc_del AFTER DELETE ON main.accounts"         \
    " BEGIN SELECT ctxd_count(0, -1); END;"                                   \
    "CREATE TEMP TRIGGER count_ns_ins AFTER INSERT ON main.namespaces"        \
    " BEGIN SELECT ctxd_count(1, 1); END;"                                    \
    "CREATE TEMP TRIGGER count_ns_del AFTER DELETE ON main.namespaces"        \
    " BEGIN SELECT ctxd_count(1, -1); END;"                                   \
    "CREATE TEMP TRIGGER count_sess_ins AFTER INSERT ON main.sessions"        \
    " BEGIN SELECT ctxd_count(2, 1); END;"                                    \
    "CREATE TEMP TRIGGER count_sess_del AFTER DELETE ON main.sessions"        \
    " BEGIN SELECT ctxd_count(2, -1); END;"                                   \
    "CREATE TEMP TRIGGER count_props_del AFTER DELETE ON main.properties"     \
    " BEGIN SELECT ctxd_count(3, -1); END;"

static void count_fn(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    struct storage *s = sqlite3_user_data(ctx);
    uint64_t *field;
    int64_t delta;

    if (argc != 2) {
        sqlite3_result_error(ctx, "ctxd_count: two arguments", -1);
        return;
    }
    switch (sqlite3_value_int(argv[0])) {
        case 0: field = &s->live.accounts; break;
        case 1: field = &s->live.namespaces; break;
        case 2: field = &s->live.sessions; break;
        case 3: field = &s->live.properties; break;
        default:
            sqlite3_result_error(ctx, "ctxd_count: unknown table", -1);
            return;
    }
    delta = sqlite3_value_int64(argv[1]);
    *field = (uint64_t)((int64_t)*field + delta);
    sqlite3_result_null(ctx);
}

/* On db, counting into owner->live (owner: the storage db will belong to,
 * also while restore still builds it aside). */
static int counts_setup(sqlite3 *db, struct storage *owner)
{
    int rc = sqlite3_create_function_v2(db, "ctxd_count", 2, SQLITE_UTF8,
                                        owner, count_fn, NULL, NULL, NULL);

    if (rc != SQLITE_OK) {
        return rc == SQLITE_NOMEM ? STORAGE_ENOMEM : STORAGE_EINTERNAL;
    }
    return exec_sql(db, COUNT_TRIGGERS);
}

/* --- Lifecycle ------------------------------------------------------ */

int storage_open(struct storage **out)
{
    struct storage *s;
    int rc;

    *out = NULL;
    s = calloc(1, sizeof *s);
    if (s == NULL) {
        return STORAGE_ENOMEM;
    }
    s->keys_generation = 1;
    s->expiry_floor = INT64_MAX; /* empty: nothing expires */
    s->ns_gen = 1;
    s->row_gen = 1;
    s->read_gen = 1;
    s->sk_cache = calloc(SK_CACHE_SLOTS, sizeof *s->sk_cache);
    s->row_cache = calloc(ROW_CACHE_SLOTS, sizeof *s->row_cache);
    s->read_cache = calloc(READ_CACHE_SLOTS, sizeof *s->read_cache);
    if (s->sk_cache == NULL || s->row_cache == NULL ||
        s->read_cache == NULL) {
        rc = STORAGE_ENOMEM;
        goto err_after_alloc;
    }
    rc = db_open(&s->db);
    if (rc != 0) {
        goto err_after_alloc;
    }
    rc = db_configure(s->db);
    if (rc == 0) {
        rc = exec_sql(s->db, schema_sql);
    }
    if (rc == 0) {
        rc = counts_setup(s->db, s);
    }
    if (rc == 0) {
        rc = stmts_prepare(s->db, s->st);
    }
    if (rc != 0) {
        goto err_after_db_open;
    }
    *out = s;
    return 0;

err_after_db_open:
    sqlite3_close(s->db);
err_after_alloc:
    free(s->read_cache);
    free(s->row_cache);
    free(s->sk_cache);
    free(s);
    return rc;
}


void storage_close(struct storage *s)
{
    if (s == NULL) {
        return;
    }
    stmts_finalize(s->st);
    sqlite3_close(s->db);
    read_cache_free(s->read_cache, s->read_last);
    free(s->row_cache);
    free(s->sk_cache);
    free(s);
}

uint64_t storage_prop_reads(const struct storage *s, uint64_t *cached)
{
    *cached = s->prop_reads_cached;
    return s->prop_reads;
}

uint64_t storage_applied_index(const struct storage *s)
{
    return s->applied_index;
}

uint64_t storage_last_time_ms(const struct storage *s)
{
    return s->last_time_ms;
}

/* --- Apply: lookups --------------------------------------------------- */

/* Set the expiry floor to the earliest expires_ms stored (INT64_MAX when
 * none; INT64_MIN, "anything may have expired", when the query fails). */
static void expiry_floor_refresh(struct storage *s)
{
    uint64_t t = 0;
    int rc = storage_next_expiry(s, &t);

    if (rc == STORAGE_ENOTFOUND) {
        s->expiry_floor = INT64_MAX;
    } else if (rc != 0 || t > (uint64_t)INT64_MAX) {
        s->expiry_floor = INT64_MIN;
    } else {
        s->expiry_floor = (int64_t)t;
    }
}

/* expires_ms for a write at `time` with a TTL of `ttl` seconds (> 0),
 * saturating instead of overflowing. */
static int64_t expiry_of(int64_t time, int64_t ttl)
{
    if (ttl > (INT64_MAX - time) / 1000) {
        return INT64_MAX;
    }
    return time + ttl * 1000;
}

/* --- Apply: ops ------------------------------------------------------- */

static int op_set_key(struct storage *s, const struct cmd *c)
{
    sqlite3_stmt *st = s->st[ST_ACC_PUT];
    int rc = bind_f(st, 1, c->acc);

    s->keys_generation++; /* even if rolled back: a spurious bump is safe */
    if (rc == SQLITE_OK) {
        rc = bind_f(st, 2, c->key_hash);
    }
    return run(st, rc);
}

/* FNV-1a over f's bytes, then its length, continuing from h: the hash of
 * the cache slots (ns_slot_of, sk_slot_of). */
#define FNV64_BASIS 14695981039346656037u

static uint64_t fnv64(uint64_t h, struct cmd_bytes f)
{
    uint32_t i;

    for (i = 0; i < f.len; i++) {
        h = (h ^ (unsigned char)f.base[i]) * 1099511628211u;
    }
    return (h ^ f.len) * 1099511628211u; /* ("ab", "c") is not ("a", "bc") */
}

/* The slot of (acc, ns), or NULL when the pair is too long to keep. */
static struct ns_slot *ns_slot_of(struct storage *s, const struct cmd *c)
{
    if ((size_t)c->acc.len + c->ns.len > NS_CACHE_KEY) {
        return NULL;
    }
    return &s->ns_cache[fnv64(fnv64(FNV64_BASIS, c->acc), c->ns) %
                        NS_CACHE_SLOTS];
}

static int ns_slot_holds(const struct storage *s, const struct ns_slot *e,
                         const struct cmd *c)
{
    return e->gen == s->ns_gen && e->acc_len == c->acc.len &&
           e->ns_len == c->ns.len &&
           memcmp(e->key, c->acc.base, c->acc.len) == 0 &&
           memcmp(e->key + c->acc.len, c->ns.base, c->ns.len) == 0;
}

static void ns_slot_fill(struct storage *s, struct ns_slot *e,
                         const struct cmd *c, int64_t ttl)
{
    e->gen = s->ns_gen;
    e->ttl = ttl;
    e->acc_len = c->acc.len;
    e->ns_len = c->ns.len;
    memcpy(e->key, c->acc.base, c->acc.len);
    memcpy(e->key + c->acc.len, c->ns.base, c->ns.len);
}

/* Before anything that may change a namespace row. */
static void ns_cache_clear(struct storage *s)
{
    s->ns_gen++;
}

static int ns_create(struct storage *s, const struct apply_ctx *a,
                     const struct cmd *c)
{
    sqlite3_stmt *st = s->st[ST_NS_CREATE];
    int rc = bind_where(st, c, 0);

    /* The cache keeps only namespaces that exist: creating one (or
     * finding it there already) leaves every slot true. */
    if (rc == SQLITE_OK) {
        rc = sqlite3_bind_int64(st, 3, a->time);
    }
    return run(st, rc);
}

static int op_ns_put(struct storage *s, const struct apply_ctx *a,
                     const struct cmd *c)
{
    sqlite3_stmt *st = s->st[ST_NS_SET_TTL];
    int rc = ns_create(s, a, c);

    if (rc != 0 || c->ttl < 0) {
        return rc; /* ttl -1: leave an existing TTL as is */
    }
    ns_cache_clear(s);
    rc = bind_where(st, c, 0);
    if (rc == SQLITE_OK) {
        rc = c->ttl == 0 ? sqlite3_bind_null(st, 3)
                         : sqlite3_bind_int64(st, 3, c->ttl);
    }
    return run(st, rc);
}

static int op_ns_delete(struct storage *s, const struct cmd *c)
{
    static const enum stmt_id ids[] = {ST_NS_DEL_PROPS, ST_NS_DEL_SESSIONS,
                                       ST_NS_DEL};
    size_t i;
    int rc;

    ns_cache_clear(s);
    for (i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        sqlite3_stmt *st = s->st[ids[i]];

        rc = run(st, bind_where(st, c, 0));
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

/* The hash of a session's key that places it in the hint and row slots. */
static uint64_t session_hash(const struct cmd *c)
{
    return fnv64(fnv64(fnv64(FNV64_BASIS, c->acc), c->ns), sid_of(c));
}

static struct sk_slot *sk_slot_of(struct storage *s, const struct cmd *c,
                                  uint64_t *hash)
{
    *hash = session_hash(c);
    return &s->sk_cache[*hash % SK_CACHE_SLOTS];
}

/* Insert the row of a session that has none yet; *sk is its key. */
static int sess_new(struct storage *s, const struct apply_ctx *a,
                    const struct cmd *c, int64_t *sk)
{
    sqlite3_stmt *st = s->st[ST_SESS_NEW];
    int rc = bind_where(st, c, 1);

    if (rc == SQLITE_OK) {
        rc = sqlite3_bind_int64(st, 4, a->time);
    }
    if (rc == SQLITE_OK) {
        rc = sqlite3_bind_int64(st, 5, u2i(a->index));
    }
    rc = run(st, rc);
    *sk = rc == 0 ? sqlite3_last_insert_rowid(s->db) : 0;
    if (rc == 0) {
        uint64_t hash;
        struct sk_slot *k = sk_slot_of(s, c, &hash);

        k->hash = hash;
        k->sk = *sk;
    }
    return rc;
}

static int sess_bump(struct storage *s, const struct apply_ctx *a,
                     int64_t sk)
{
    sqlite3_stmt *st = s->st[ST_SESS_BUMP];
    int rc = sqlite3_bind_int64(st, 1, sk);

    if (rc == SQLITE_OK) {
        rc = sqlite3_bind_int64(st, 2, u2i(a->index));
    }
    return run(st, rc);
}

/* The property UPDATE of prop_put reports the row it replaces through
 * SQLite's pre-update hook, registered only while that statement steps:
 * the old value's length, and whether the row had an expiry. */
#define PROP_COL_VALUE 2   /* properties.value, in SCHEMA_PROPERTIES order */
#define PROP_COL_EXPIRES 3 /* properties.expires_ms */

struct prop_old
{
    int64_t len;     /* old value's bytes; -1: no row was updated */
    int had_expiry;  /* the old row's expires_ms was not NULL */
};

static void prop_old_row(void *arg, sqlite3 *db, int op, const char *zdb,
                         const char *table, sqlite3_int64 k1,
                         sqlite3_int64 k2)
{
    struct prop_old *old = arg;
    sqlite3_value *v;

    (void)zdb;
    (void)table;
    (void)k1;
    (void)k2;
    if (op != SQLITE_UPDATE) {
        return;
    }
    if (sqlite3_preupdate_old(db, PROP_COL_VALUE, &v) == SQLITE_OK) {
        old->len = sqlite3_value_bytes(v);
    }
    /* Unknown (out of memory) counts as an expiry: clearing one that was
     * not there changes nothing, keeping one would differ between nodes. */
    old->had_expiry =
        sqlite3_preupdate_old(db, PROP_COL_EXPIRES, &v) != SQLITE_OK ||
        sqlite3_value_type(v) != SQLITE_NULL;
}

static int prop_bind(sqlite3_stmt *st, int64_t sk, struct cmd_bytes name,
                     struct cmd_bytes value, int64_t expires)
{
    int rc = sqlite3_bind_int64(st, 1, sk);

    if (rc == SQLITE_OK) {
        rc = bind_f(st, 2, name);
    }
    if (rc == SQLITE_OK) {
        rc = bind_f(st, 3, value);
    }
    /* ST_PROP_SET_VALUE has no ?4: it leaves the expiry alone. */
    if (rc == SQLITE_OK && sqlite3_bind_parameter_count(st) == 4) {
        rc = expires == 0 ? sqlite3_bind_null(st, 4)
                          : sqlite3_bind_int64(st, 4, expires);
    }
    return rc;
}

/* Insert or replace one property, adding what it changes in the session
 * document to doc[0] (rows) and doc[1] (name and value bytes): an UPDATE
 * that learns the old row from the pre-update hook, so an overwrite seeks
 * its row once (a SELECT of the length first cost a second seek, 7 % of an
 * applied write); when it updated nothing the property is new, and a plain
 * INSERT adds it. No upsert (11,622 instructions against 11,050 for the
 * UPDATE, measured alone), no trigger.
 *
 * A write without an expiry sets the value only: an UPDATE naming
 * expires_ms makes SQLite maintain both partial indexes on it, 2,080 of
 * the 11,050 instructions even when both old and new are NULL. In the rare
 * case the old row had an expiry, a second UPDATE clears it. */
static int prop_put(struct storage *s, int64_t sk, struct cmd_bytes name,
                    struct cmd_bytes value, int64_t expires, int64_t doc[2])
{
    sqlite3_stmt *st = s->st[expires == 0 ? ST_PROP_SET_VALUE
                                          : ST_PROP_UPDATE];
    struct prop_old old = {-1, 0};
    int rc = prop_bind(st, sk, name, value, expires);

    if (rc == SQLITE_OK) {
        (void)sqlite3_preupdate_hook(s->db, prop_old_row, &old);
        rc = sqlite3_step(st);
        (void)sqlite3_preupdate_hook(s->db, NULL, NULL);
    }
    finish(st);
    if (rc != SQLITE_DONE) {
        return map_rc(rc);
    }
    if (old.len >= 0) {
        doc[1] += (int64_t)value.len - old.len;
        if (expires == 0 && old.had_expiry) {
            st = s->st[ST_PROP_UPDATE];
            return run(st, prop_bind(st, sk, name, value, 0));
        }
        return 0;
    }
    st = s->st[ST_PROP_INSERT];
    doc[0] += 1;
    doc[1] += (int64_t)name.len + (int64_t)value.len;
    return run(st, prop_bind(st, sk, name, value, expires));
}

/* Size of the session document once written: 2 + sum(len(name) + 3 +
 * len(value)) + commas. Runs after expired rows of the session are gone, so
 * every row counted is live. */
static int doc_size(struct storage *s, int64_t sk, uint64_t *size)
{
    sqlite3_stmt *st = s->st[ST_DOC_SIZE];
    int rc = sqlite3_bind_int64(st, 1, sk);

    *size = 0;
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
    }
    if (rc == SQLITE_ROW) {
        uint64_t n = col_u64(st, 0);
        uint64_t bytes = col_u64(st, 1);

        *size = 2 + bytes + 3 * n + (n > 0 ? n - 1 : 0);
        rc = SQLITE_DONE;
    }
    finish(st);
    return rc == SQLITE_DONE ? 0 : map_rc(rc);
}

/* The namespace row and the session row of a command, in one lookup (what
 * a write needs to know before it changes anything; removals, TTLs and
 * queries use it too). A session row never exists without its namespace
 * row (writes create the namespace first; a namespace delete takes its
 * sessions along), so no namespace row means no session either. */
struct sess_view
{
    int ns_exists;      /* the namespace row exists */
    int64_t ns_ttl;     /* its TTL in seconds, 0 when none */
    int sess_exists;    /* the session row exists */
    int64_t sk;         /* its key (sessions.sk), 0 when absent */
    int64_t sess_ttl;   /* its TTL in seconds, 0 when none */
    uint64_t version;   /* its version, 0 when absent */
    uint64_t doc_count; /* its property rows, expired ones included */
    uint64_t doc_bytes; /* their name and value bytes */
};

static void view_session_cols(sqlite3_stmt *st, int col, struct sess_view *v)
{
    v->sess_exists = sqlite3_column_type(st, col) != SQLITE_NULL;
    if (v->sess_exists) {
        v->sk = sqlite3_column_int64(st, col);
        if (sqlite3_column_type(st, col + 1) != SQLITE_NULL) {
            v->sess_ttl = sqlite3_column_int64(st, col + 1);
        }
        v->version = col_u64(st, col + 2);
        v->doc_count = col_u64(st, col + 3);
        v->doc_bytes = col_u64(st, col + 4);
    }
}

static int same_blob(sqlite3_stmt *st, int col, struct cmd_bytes f)
{
    const void *p = sqlite3_column_blob(st, col);
    int n = sqlite3_column_bytes(st, col);

    return n >= 0 && (uint32_t)n == f.len &&
           (f.len == 0 || (p != NULL && memcmp(p, f.base, f.len) == 0));
}

/* Whether the row's columns col, col + 1 and col + 2 are c's (acc, ns,
 * sid): how a session hint (sk_slot) is checked before it is trusted. */
static int same_session(sqlite3_stmt *st, int col, const struct cmd *c)
{
    return same_blob(st, col, c->acc) && same_blob(st, col + 1, c->ns) &&
           same_blob(st, col + 2, sid_of(c));
}

/* The session row at sk, when it is the session of c: 1 and v's session
 * columns filled, 0 when the row is another session's or absent. */
static int sess_view_by_sk(struct storage *s, const struct cmd *c,
                           int64_t sk, struct sess_view *v)
{
    sqlite3_stmt *st = s->st[ST_SESS_BY_SK];
    int rc = sqlite3_bind_int64(st, 1, sk);
    int found = 0;

    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
    }
    if (rc == SQLITE_ROW) {
        found = same_session(st, 5, c);
        if (found) {
            view_session_cols(st, 0, v);
        }
        rc = SQLITE_DONE;
    }
    finish(st);
    return rc == SQLITE_DONE ? found : -map_rc(rc);
}

static int sess_view_get(struct storage *s, const struct cmd *c,
                          struct sess_view *v)
{
    struct ns_slot *e = ns_slot_of(s, c);
    int hit = e != NULL && ns_slot_holds(s, e, c);
    uint64_t hash;
    struct sk_slot *k = sk_slot_of(s, c, &hash);
    sqlite3_stmt *st;
    int rc;

    memset(v, 0, sizeof *v);
    if (hit) {
        v->ns_exists = 1;
        v->ns_ttl = e->ttl;
        if (k->sk != 0 && k->hash == hash) {
            rc = sess_view_by_sk(s, c, k->sk, v);
            if (rc != 0) {
                return rc < 0 ? -rc : 0;
            }
        }
    }
    st = s->st[hit ? ST_SESS_GET : ST_VIEW_GET];
    rc = bind_where(st, c, 1);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
    }
    if (rc == SQLITE_ROW && hit) {
        view_session_cols(st, 0, v);
        rc = SQLITE_DONE;
    } else if (rc == SQLITE_ROW) {
        v->ns_exists = 1;
        if (sqlite3_column_type(st, 0) != SQLITE_NULL) {
            v->ns_ttl = sqlite3_column_int64(st, 0);
        }
        view_session_cols(st, 1, v);
        if (e != NULL) {
            ns_slot_fill(s, e, c, v->ns_ttl);
        }
        rc = SQLITE_DONE;
    }
    finish(st);
    if (rc != SQLITE_DONE) {
        return map_rc(rc);
    }
    if (v->sess_exists) {
        k->hash = hash;
        k->sk = v->sk;
    }
    return 0;
}

static struct row_slot *row_slot_of(struct storage *s, const struct cmd *c,
                                    uint64_t hash)
{
    if ((size_t)c->acc.len + c->ns.len + sid_of(c).len > ROW_CACHE_KEY) {
        return NULL;
    }
    return &s->row_cache[hash % ROW_CACHE_SLOTS];
}

/* Whether the bytes at k are c's acc, ns and sid, one after the other,
 * as session_key_put writes them (the lengths checked by the caller). */
static int session_key_is(const unsigned char *k, const struct cmd *c)
{
    struct cmd_bytes sid = sid_of(c);

    return memcmp(k, c->acc.base, c->acc.len) == 0 &&
           memcmp(k + c->acc.len, c->ns.base, c->ns.len) == 0 &&
           memcmp(k + c->acc.len + c->ns.len, sid.base, sid.len) == 0;
}

/* Write c's acc, ns and sid at k, one after the other; returns the end. */
static unsigned char *session_key_put(unsigned char *k, const struct cmd *c)
{
    struct cmd_bytes sid = sid_of(c);

    memcpy(k, c->acc.base, c->acc.len);
    k += c->acc.len;
    memcpy(k, c->ns.base, c->ns.len);
    k += c->ns.len;
    memcpy(k, sid.base, sid.len);
    return k + sid.len;
}

static int row_slot_holds(const struct storage *s, const struct row_slot *r,
                          const struct cmd *c)
{
    return r->gen == s->row_gen && r->acc_len == c->acc.len &&
           r->ns_len == c->ns.len && r->sid_len == sid_of(c).len &&
           session_key_is(r->key, c);
}

/* r holds c's session row as v has it. */
static void row_slot_fill(struct storage *s, struct row_slot *r,
                          const struct cmd *c, const struct sess_view *v)
{
    struct cmd_bytes sid = sid_of(c);

    r->gen = s->row_gen;
    r->sk = v->sk;
    r->ttl = v->sess_ttl;
    r->version = v->version;
    r->doc_count = v->doc_count;
    r->doc_bytes = v->doc_bytes;
    r->acc_len = (uint8_t)c->acc.len;
    r->ns_len = (uint8_t)c->ns.len;
    r->sid_len = (uint8_t)sid.len;
    (void)session_key_put(r->key, c);
}

/* Before anything but op_write's own statements may change a session row
 * or a property, and after any rollback: empties the row and read slots. */
static void row_cache_clear(struct storage *s)
{
    s->row_gen++;
    s->read_gen++;
}

/* The hash of a property's key (its session's hash, then its name). */
static uint64_t read_hash(uint64_t session, struct cmd_bytes name)
{
    return fnv64(session, name);
}

/* The two slots where a property of that hash may be kept: two ways, so
 * that two properties whose hashes meet can both stay (one way kept 90 %
 * of 10,000 properties read at random, two keep 99 %). */
static struct read_slot *read_set_of(struct storage *s, uint64_t hash)
{
    return &s->read_cache[2 * (hash % (READ_CACHE_SLOTS / 2))];
}

/* Where the value starts in r->data. */
static size_t read_key_len(const struct read_slot *r)
{
    return (size_t)r->acc_len + r->ns_len + r->sid_len + r->name_len;
}

static int read_slot_holds(const struct storage *s, const struct read_slot *r,
                           uint64_t hash, const struct cmd *c)
{
    struct cmd_bytes sid = sid_of(c);
    const unsigned char *k = r->data;

    if (r->gen != s->read_gen || r->hash != hash ||
        r->acc_len != c->acc.len || r->ns_len != c->ns.len ||
        r->sid_len != sid.len || r->name_len != c->name.len) {
        return 0;
    }
    return session_key_is(k, c) &&
           memcmp(k + c->acc.len + c->ns.len + sid.len, c->name.base,
                  c->name.len) == 0;
}

/* The slot that holds c's property, or NULL. */
static struct read_slot *read_slot_find(struct storage *s, uint64_t hash,
                                        const struct cmd *c)
{
    struct read_slot *set = read_set_of(s, hash);

    if (read_slot_holds(s, &set[0], hash, c)) {
        return &set[0];
    }
    return read_slot_holds(s, &set[1], hash, c) ? &set[1] : NULL;
}

/* Where to keep a property its set does not hold: a slot that holds
 * nothing; else, while hits have earned credit (one each, at most
 * READ_CREDIT_MAX) or on every READ_MISS_TAKE-th miss, the one the hash
 * picks; else NULL, and the property is not kept. Over data far larger
 * than the slots, where few reads hit (1,000,000 properties read at
 * random: 5 %), taking a slot on every miss cost 7-40 % more CPU per read
 * than no slots at all, and 2-11 % with the credit (three pairs each).
 * The credit keeps replacement to about the rate of hits, and the 1 in
 * READ_MISS_TAKE lets a new set of hot properties in when none hit. */
#define READ_CREDIT_MAX 4096u
#define READ_MISS_TAKE 16u

static struct read_slot *read_slot_victim(struct storage *s, uint64_t hash)
{
    struct read_slot *set = read_set_of(s, hash);

    if (set[0].gen != s->read_gen) {
        return &set[0];
    }
    if (set[1].gen != s->read_gen) {
        return &set[1];
    }
    if (s->read_credit > 0) {
        s->read_credit--;
    } else if ((s->prop_reads - s->prop_reads_cached) % READ_MISS_TAKE != 0) {
        return NULL;
    }
    return &set[(hash >> 32) & 1];
}

/* Keep what SQLite answered for c's property in r: its value bytes and its
 * expires_ms (0: none). Nothing is kept when it does not fit or memory
 * runs short; r is then empty. */
static void read_slot_fill(struct storage *s, struct read_slot *r,
                           uint64_t hash, const struct cmd *c,
                           const void *value, size_t value_len,
                           int64_t expires)
{
    struct cmd_bytes sid = sid_of(c);
    size_t key_len = (size_t)c->acc.len + c->ns.len + sid.len + c->name.len;
    size_t need = key_len + value_len;
    unsigned char *k;

    r->gen = 0;
    if (need > READ_SLOT_BYTES || (value_len > 0 && value == NULL)) {
        return;
    }
    if (need > r->cap) {
        unsigned char *p;

        if (s->read_bytes - r->cap + need > READ_CACHE_BYTES) {
            return;
        }
        p = realloc(r->data, need);
        if (p == NULL) {
            return;
        }
        if (r->data == NULL) {
            r->next = s->read_last;
            s->read_last = (uint32_t)(r - s->read_cache) + 1;
        }
        s->read_bytes = s->read_bytes - r->cap + need;
        r->data = p;
        r->cap = (uint32_t)need;
    }
    k = session_key_put(r->data, c);
    memcpy(k, c->name.base, c->name.len);
    k += c->name.len;
    if (value_len > 0) {
        memcpy(k, value, value_len);
    }
    r->hash = hash;
    r->expires = expires;
    r->value_len = (uint32_t)value_len;
    r->acc_len = (uint16_t)c->acc.len;
    r->ns_len = (uint16_t)c->ns.len;
    r->sid_len = (uint16_t)sid.len;
    r->name_len = (uint16_t)c->name.len;
    r->gen = s->read_gen;
}

/* op_write is about to change property name of c's session: whatever a
 * slot holds for that key is no longer true. */
static void read_slot_forget(struct storage *s, uint64_t session,
                             struct cmd_bytes name)
{
    uint64_t hash = read_hash(session, name);
    struct read_slot *set = read_set_of(s, hash);

    if (set[0].hash == hash) {
        set[0].gen = 0;
    }
    if (set[1].hash == hash) {
        set[1].gen = 0;
    }
}

/* sess_view_get for op_write: from c's row slot when it holds the session
 * and the namespace slot holds its namespace, else from the database,
 * keeping the row in the slot. session is session_hash(c); *r is c's row
 * slot, NULL when its key is too long to keep. */
static int sess_view_write(struct storage *s, const struct cmd *c,
                           uint64_t session, struct sess_view *v,
                           struct row_slot **r)
{
    struct ns_slot *e = ns_slot_of(s, c);
    int rc;

    *r = row_slot_of(s, c, session);
    if (*r != NULL && e != NULL && ns_slot_holds(s, e, c) &&
        row_slot_holds(s, *r, c)) {
        memset(v, 0, sizeof *v);
        v->ns_exists = 1;
        v->ns_ttl = e->ttl;
        v->sess_exists = 1;
        v->sk = (*r)->sk;
        v->sess_ttl = (*r)->ttl;
        v->version = (*r)->version;
        v->doc_count = (*r)->doc_count;
        v->doc_bytes = (*r)->doc_bytes;
        return 0;
    }
    rc = sess_view_get(s, c, v);
    if (rc == 0 && *r != NULL && v->sess_exists) {
        row_slot_fill(s, *r, c, v);
    }
    return rc;
}

/* Open the command's savepoint (apply_one releases it). */
static int savepoint_open(struct storage *s, struct apply_ctx *a)
{
    int rc = run(s->st[ST_SAVEPOINT], SQLITE_OK);

    if (rc == 0) {
        a->savepoint = 1;
        a->at_savepoint = s->live;
    }
    return rc;
}

/* PATCH and PROP_PUT: one_name/one_value is the PROP_PUT pair, or NULL to
 * take the PATCH pairs.
 *
 * The savepoint is opened only when the write might still be refused after
 * it has changed something, that is when the document might go over its
 * limit: a refused If-Match changes nothing, and within the limit nothing
 * else refuses (a database failure rolls back the whole entry anyway). */
static int op_write(struct storage *s, struct apply_ctx *a,
                    const struct cmd *c, const struct cmd_bytes *one_name,
                    const struct cmd_bytes *one_value)
{
    sqlite3_stmt *st;
    struct sess_view v;
    struct row_slot *r;
    int64_t expires = 0;
    uint64_t size = 0;
    uint64_t add_n;
    uint64_t add_bytes;
    int64_t doc[2] = {0, 0}; /* rows and bytes this write adds */
    uint64_t session = session_hash(c);
    int may_overflow;
    int rc;

    rc = sess_view_write(s, c, session, &v, &r);
    if (rc != 0) {
        return rc;
    }
    if (c->has_if_match && c->if_match != v.version) {
        return STORAGE_EPRECONDITION;
    }
    /* The document after this write is at most its size before (expired
     * rows included) plus every written pair as a new member: each adds at
     * most its name and value bytes and 4 for the quotes, colon and comma.
     * Within the limit by that bound, the exact size need not be read. */
    if (one_name != NULL) {
        add_n = 1;
        add_bytes = (uint64_t)one_name->len + one_value->len;
    } else {
        add_n = c->n_props;
        add_bytes = c->props.len; /* the pairs with their length fields */
    }
    may_overflow = 2 + v.doc_bytes + add_bytes + 4 * (v.doc_count + add_n) >
                   STORAGE_DOC_MAX;
    if (may_overflow) {
        rc = savepoint_open(s, a);
    }
    if (rc == 0 && !v.ns_exists) {
        rc = ns_create(s, a, c);
    }
    if (rc != 0) {
        return rc;
    }
    if (v.sess_ttl > 0) {
        expires = expiry_of(a->time, v.sess_ttl);
    } else if (v.ns_ttl > 0) {
        expires = expiry_of(a->time, v.ns_ttl);
    }

    /* Expired-but-unpurged rows are replaced by this write, not counted.
     * Before the floor nothing has expired anywhere, and the DELETE would
     * find nothing: skipping it changes no state, so replicas whose floors
     * differ still agree. */
    if (v.sess_exists && a->time >= s->expiry_floor) {
        st = s->st[ST_PROP_DEL_EXPIRED];
        rc = sqlite3_bind_int64(st, 1, v.sk);
        if (rc == SQLITE_OK) {
            rc = sqlite3_bind_int64(st, 2, a->time);
        }
        rc = run(st, rc);
        if (rc != 0) {
            return rc;
        }
        if (sqlite3_changes(s->db) > 0) {
            s->read_gen++; /* read slots of the rows deleted among them */
            if (r != NULL) {
                r->gen = 0; /* the trigger changed the session's counts */
            }
        }
    }
    /* Lowered even if this command is rolled back: it stays a lower
     * bound. */
    if (expires != 0 && expires < s->expiry_floor) {
        s->expiry_floor = expires;
    }

    /* A new session's row first (the removal trigger and the update below
     * need it), then the properties, then one update of the session with
     * the new version and the document's change. */
    if (!v.sess_exists) {
        rc = sess_new(s, a, c, &v.sk);
        if (rc == 0 && r != NULL) {
            v.sess_exists = 1; /* the row as sess_new inserted it */
            v.version = a->index;
            row_slot_fill(s, r, c, &v);
        }
    }
    if (rc == 0 && one_name != NULL) {
        read_slot_forget(s, session, *one_name);
        rc = prop_put(s, v.sk, *one_name, *one_value, expires, doc);
    } else if (rc == 0) {
        struct cmd_bytes name;
        struct cmd_bytes value;
        size_t pos = 0;

        while (rc == 0 && cmd_props_next(c, &pos, &name, &value) == 1) {
            read_slot_forget(s, session, name);
            rc = prop_put(s, v.sk, name, value, expires, doc);
        }
    }
    if (rc == 0) {
        st = s->st[ST_SESS_WRITTEN];
        rc = sqlite3_bind_int64(st, 1, v.sk);
        if (rc == SQLITE_OK) {
            rc = sqlite3_bind_int64(st, 2, u2i(a->index));
        }
        if (rc == SQLITE_OK) {
            rc = sqlite3_bind_int64(st, 3, doc[0]);
        }
        if (rc == SQLITE_OK) {
            rc = sqlite3_bind_int64(st, 4, doc[1]);
        }
        rc = run(st, rc);
        if (rc == 0) {
            s->live.properties += (uint64_t)doc[0]; /* rows inserted */
        }
        /* By now r holds c's key (it was found there, or filled above),
         * so its generation alone says whether it is still true. */
        if (rc == 0 && r != NULL && r->gen == s->row_gen) {
            r->version = a->index;
            r->doc_count = (uint64_t)((int64_t)r->doc_count + doc[0]);
            r->doc_bytes = (uint64_t)((int64_t)r->doc_bytes + doc[1]);
        }
    }
    if (rc == 0 && may_overflow) {
        rc = doc_size(s, v.sk, &size);
    }
    if (rc != 0) {
        return rc;
    }
    return size > STORAGE_DOC_MAX ? STORAGE_ETOOLARGE : 0;
}

/* PROP_DELETE (name != NULL) and SESSION_CLEAR (name == NULL). */
static int op_remove(struct storage *s, const struct apply_ctx *a,
                     const struct cmd *c, const struct cmd_bytes *name)
{
    sqlite3_stmt *st;
    struct sess_view v;
    int rc;

    rc = sess_view_get(s, c, &v);
    if (rc != 0) {
        return rc;
    }
    if (c->has_if_match && c->if_match != v.version) {
        return STORAGE_EPRECONDITION;
    }
    if (!v.sess_exists) {
        return 0; /* no session row, no property rows */
    }
    st = s->st[name != NULL ? ST_PROP_DEL : ST_PROP_CLEAR];
    rc = sqlite3_bind_int64(st, 1, v.sk);
    if (rc == SQLITE_OK && name != NULL) {
        rc = bind_f(st, 2, *name);
    }
    rc = run(st, rc);
    if (rc == 0) {
        rc = sess_bump(s, a, v.sk);
    }
    return rc;
}

static int op_session_ttl(struct storage *s, const struct apply_ctx *a,
                          const struct cmd *c)
{
    sqlite3_stmt *st = s->st[ST_SESS_SET_TTL];
    struct sess_view v;
    int rc;

    if (c->ttl < 0) {
        return STORAGE_ECORRUPT; /* the format requires seconds >= 0 */
    }
    rc = sess_view_get(s, c, &v);
    if (rc != 0) {
        return rc;
    }
    if (!v.ns_exists) {
        return STORAGE_ENOTFOUND;
    }
    rc = bind_where(st, c, 1);
    if (rc == SQLITE_OK) {
        rc = sqlite3_bind_int64(st, 4, a->time);
    }
    if (rc == SQLITE_OK) {
        rc = sqlite3_bind_int64(st, 5, u2i(a->index));
    }
    if (rc == SQLITE_OK) {
        rc = c->ttl == 0 ? sqlite3_bind_null(st, 6)
                         : sqlite3_bind_int64(st, 6, c->ttl);
    }
    return run(st, rc);
}

static int op_purge(struct storage *s, struct apply_ctx *a)
{
    sqlite3_stmt *st = s->st[ST_PURGE];
    int rc = run(st, sqlite3_bind_int64(st, 1, a->time));

    if (rc == 0) {
        a->purged += (uint64_t)sqlite3_changes(s->db);
        a->purge_ran = 1;
    }
    return rc;
}

static int op_node_info(struct storage *s, const struct cmd *c)
{
    sqlite3_stmt *st = s->st[ST_NODE_PUT];
    int rc = sqlite3_bind_int64(st, 1, (sqlite3_int64)c->node_id);

    if (rc == SQLITE_OK) {
        rc = bind_f(st, 2, c->http_addr);
    }
    if (rc == SQLITE_OK) {
        rc = bind_f(st, 3, c->region);
    }
    return run(st, rc);
}

static int op_dispatch(struct storage *s, struct apply_ctx *a,
                       const struct cmd *c)
{
    switch (c->op) {
        case CMD_SET_KEY:
            return op_set_key(s, c);
        case CMD_NS_PUT:
            return op_ns_put(s, a, c);
        case CMD_NS_DELETE:
            return op_ns_delete(s, c);
        case CMD_PATCH:
            return op_write(s, a, c, NULL, NULL);
        case CMD_PROP_PUT:
            return op_write(s, a, c, &c->name, &c->value);
        case CMD_PROP_DELETE:
            return op_remove(s, a, c, &c->name);
        case CMD_SESSION_CLEAR:
            return op_remove(s, a, c, NULL);
        case CMD_SESSION_TTL:
            return op_session_ttl(s, a, c);
        case CMD_PURGE:
            return op_purge(s, a);
        case CMD_NODE_INFO:
            return op_node_info(s, c);
        default:
            return STORAGE_ECORRUPT;
    }
}

/* --- Apply: one command, one entry ---------------------------------- */

/* Look up a remembered request: 1 when found (res filled), 0 when not, or a
 * fatal status. */
static int request_find(struct storage *s, const struct cmd *c,
                        struct storage_result *res)
{
    sqlite3_stmt *st = s->st[ST_REQ_GET];
    int found = 0;
    int rc = bind_f(st, 1, c->acc);

    if (rc == SQLITE_OK) {
        rc = bind_f(st, 2, c->request_id);
    }
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
    }
    if (rc == SQLITE_ROW) {
        res->status = sqlite3_column_int(st, 0);
        res->index = col_u64(st, 1);
        found = 1;
        rc = SQLITE_DONE;
    }
    finish(st);
    return rc == SQLITE_DONE ? found : map_rc(rc);
}

static int request_record(struct storage *s, const struct apply_ctx *a,
                          const struct cmd *c, int status)
{
    sqlite3_stmt *st = s->st[ST_REQ_PUT];
    int rc = bind_f(st, 1, c->acc);

    if (rc == SQLITE_OK) {
        rc = bind_f(st, 2, c->request_id);
    }
    if (rc == SQLITE_OK) {
        rc = sqlite3_bind_int64(st, 3, a->time);
    }
    if (rc == SQLITE_OK) {
        rc = sqlite3_bind_int(st, 4, status);
    }
    if (rc == SQLITE_OK) {
        rc = sqlite3_bind_int64(st, 5, u2i(a->index));
    }
    return run(st, rc);
}

/* Apply one decoded command in its own savepoint. Returns 0 with *res set,
 * or a fatal status. */
static int apply_one(struct storage *s, struct apply_ctx *a,
                     const struct cmd *c, struct storage_result *res)
{
    uint64_t purged = a->purged;
    int status;
    int rc;

    res->index = a->index;
    if (c->request_id.len > 0) {
        rc = request_find(s, c, res);
        if (rc != 0) {
            return rc == 1 ? 0 : rc; /* replay: the original outcome */
        }
    }
    /* Every command runs in a savepoint so that a refusal leaves no
     * trace, except writes, which open theirs only when they can still be
     * refused after a change (see op_write). */
    a->savepoint = 0;
    if (c->op != CMD_PATCH && c->op != CMD_PROP_PUT) {
        row_cache_clear(s); /* only op_write keeps the row slots true */
        rc = savepoint_open(s, a);
        if (rc != 0) {
            return rc;
        }
    }
    status = op_dispatch(s, a, c);
    if (is_fatal(status)) {
        return status; /* the caller rolls back the whole entry */
    }
    if (status != STORAGE_OK) {
        a->purged = purged;
        if (a->savepoint) {
            /* The write may have created its namespace, which no slot
             * holds yet: it was looked up before (sess_view_get). */
            row_cache_clear(s);
            rc = run(s->st[ST_ROLLBACK_TO], SQLITE_OK);
            if (rc != 0) {
                return rc;
            }
            s->live = a->at_savepoint;
        }
    }
    if (a->savepoint) {
        rc = run(s->st[ST_RELEASE], SQLITE_OK);
        if (rc != 0) {
            return rc;
        }
    }
    res->status = status;
    /* Deterministic outcomes are remembered; a malformed command is not. */
    if (c->request_id.len > 0 &&
        (status == STORAGE_OK || status == STORAGE_EPRECONDITION ||
         status == STORAGE_ETOOLARGE || status == STORAGE_ENOTFOUND)) {
        return request_record(s, a, c, status);
    }
    return 0;
}

int storage_apply(struct storage *s, uint64_t index, const void *entry,
                  size_t len, struct storage_result **results,
                  uint32_t *n_results)
{
    struct storage_result *res;
    struct cmd_entry e;
    struct cmd_entry scan;
    struct apply_ctx a;
    const char *rec;
    size_t rec_len;
    uint32_t i;
    int rc;

    *results = NULL;
    *n_results = 0;
    if (cmd_entry_open(entry, len, &e) != 0) {
        return STORAGE_ECORRUPT;
    }
    /* Check the framing before touching anything: a broken frame means we
     * cannot know which commands the entry holds. */
    scan = e;
    while ((rc = cmd_entry_next(&scan, &rec, &rec_len)) == 1) {
    }
    if (rc != 0) {
        return STORAGE_ECORRUPT;
    }
    res = calloc(e.count > 0 ? e.count : 1, sizeof *res);
    if (res == NULL) {
        return STORAGE_ENOMEM;
    }
    a.index = index;
    a.time = u2i(e.time_ms > s->last_time_ms ? e.time_ms : s->last_time_ms);
    a.purged = s->purged;
    a.purge_ran = 0;

    rc = run(s->st[ST_BEGIN], SQLITE_OK);
    if (rc != 0) {
        goto err_after_alloc;
    }
    if ((uint64_t)a.time > STORAGE_DEDUP_WINDOW_MS) {
        sqlite3_stmt *st = s->st[ST_REQ_EXPIRE];

        rc = run(st, sqlite3_bind_int64(st, 1,
                                        a.time - STORAGE_DEDUP_WINDOW_MS));
        if (rc != 0) {
            goto err_after_begin;
        }
    }
    for (i = 0; i < e.count; i++) {
        struct cmd c;

        if (cmd_entry_next(&e, &rec, &rec_len) != 1) {
            rc = STORAGE_EINTERNAL; /* checked above: cannot happen */
            goto err_after_begin;
        }
        if (cmd_decode(rec, rec_len, &c) != 0) {
            res[i].status = STORAGE_ECORRUPT;
            res[i].index = index;
            continue;
        }
        rc = apply_one(s, &a, &c, &res[i]);
        if (rc != 0) {
            goto err_after_begin;
        }
    }
    rc = run(s->st[ST_COMMIT], SQLITE_OK);
    if (rc != 0) {
        goto err_after_begin;
    }
    s->meta_stale = 1; /* see meta_sync */
    s->applied_index = index;
    s->last_time_ms = (uint64_t)a.time;
    s->purged = a.purged;
    s->committed = s->live;
    if (a.purge_ran) {
        expiry_floor_refresh(s); /* raised only by what is committed */
    }
    *results = res;
    *n_results = e.count;
    return 0;

err_after_begin:
    /* Fails harmlessly when SQLite already rolled back on its own. */
    ns_cache_clear(s); /* an earlier command may have changed one */
    row_cache_clear(s);
    run(s->st[ST_ROLLBACK], SQLITE_OK);
    s->live = s->committed;
err_after_alloc:
    free(res);
    return rc;
}

/* --- Queries ---------------------------------------------------------- */

uint64_t storage_keys_generation(const struct storage *s)
{
    return s->keys_generation;
}

int storage_key_verify(struct storage *s, const char *acc, size_t acc_len,
                       const uint8_t hash[32])
{
    sqlite3_stmt *st = s->st[ST_ACC_GET];
    int ok = 0;

    if (bind_b(st, 1, acc, acc_len) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW &&
        sqlite3_column_bytes(st, 0) == SHA256_LEN) {
        const void *stored = sqlite3_column_blob(st, 0);

        ok = stored != NULL && ct_equal(stored, hash, SHA256_LEN);
    }
    finish(st);
    return ok;
}

int storage_ns_exists(struct storage *s, const char *acc, size_t acc_len,
                      const char *ns, size_t ns_len)
{
    struct cmd c;
    struct sess_view v;

    memset(&c, 0, sizeof c);
    if (acc_len > UINT32_MAX || ns_len > UINT32_MAX) {
        return 0;
    }
    c.acc.base = acc;
    c.acc.len = (uint32_t)acc_len;
    c.ns.base = ns;
    c.ns.len = (uint32_t)ns_len;
    return sess_view_get(s, &c, &v) == 0 && v.ns_exists;
}

/* Existence check shared by the namespace-scoped queries. */
static int ns_require(struct storage *s, const struct cmd *where)
{
    struct sess_view v;
    int rc = sess_view_get(s, where, &v);

    if (rc != 0) {
        return rc;
    }
    return v.ns_exists ? 0 : STORAGE_ENOTFOUND;
}

static int append_blob_string(struct buf *out, sqlite3_stmt *st, int col)
{
    return buf_append_json_string(out, sqlite3_column_blob(st, col),
                                  (size_t)sqlite3_column_bytes(st, col));
}

static int append_time(struct buf *out, uint64_t ms)
{
    char t[25];

    storage_format_time(ms, t);
    return buf_append_json_string(out, t, strlen(t));
}

int storage_ns_list(struct storage *s, const char *acc, size_t acc_len,
                    struct buf *out)
{
    sqlite3_stmt *st = s->st[ST_NS_LIST];
    size_t mark = out->len;
    int first = 1;
    int rc = bind_b(st, 1, acc, acc_len);

    if (buf_append_char(out, '[') != 0) {
        rc = SQLITE_NOMEM;
    }
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        rc = SQLITE_NOMEM;
        if ((!first && buf_append_char(out, ',') != 0) ||
            buf_append_str(out, "{\"name\":") != 0 ||
            append_blob_string(out, st, 0) != 0 ||
            buf_append_str(out, ",\"createdAt\":") != 0 ||
            append_time(out, col_u64(st, 1)) != 0) {
            break;
        }
        if (sqlite3_column_type(st, 2) != SQLITE_NULL &&
            buf_printf(out, ",\"ttlSecond\":%lld",
                       (long long)sqlite3_column_int64(st, 2)) != 0) {
            break;
        }
        if (buf_append_char(out, '}') != 0) {
            break;
        }
        first = 0;
        rc = SQLITE_OK;
    }
    finish(st);
    if (rc != SQLITE_DONE || buf_append_char(out, ']') != 0) {
        truncate_buf(out, mark);
        return rc == SQLITE_DONE ? STORAGE_ENOMEM : map_rc(rc);
    }
    return 0;
}

static int name_wanted(const struct cmd_bytes *names, size_t n_names,
                       const void *name, size_t len)
{
    size_t i;

    for (i = 0; i < n_names; i++) {
        if (names[i].len == len &&
            (len == 0 || memcmp(names[i].base, name, len) == 0)) {
            return 1;
        }
    }
    return 0;
}

/* Append column col of the current row (a stored value: exact JSON text).
 * 0 or STORAGE_ENOMEM. */
static int append_col(struct buf *out, sqlite3_stmt *st, int col)
{
    return buf_append(out, sqlite3_column_blob(st, col),
                      (size_t)sqlite3_column_bytes(st, col)) == 0
               ? 0
               : STORAGE_ENOMEM;
}

/* Append the JSON object of the live properties of session sk (filtered
 * by names when non-NULL). */
static int append_props(struct storage *s, int64_t sk,
                        const struct cmd_bytes *names, size_t n_names,
                        uint64_t now_ms, struct buf *out)
{
    sqlite3_stmt *st = s->st[ST_PROPS_GET];
    int first = 1;
    int rc = sqlite3_bind_int64(st, 1, sk);

    if (rc == SQLITE_OK) {
        rc = sqlite3_bind_int64(st, 2, u2i(now_ms));
    }
    if (rc == SQLITE_OK && buf_append_char(out, '{') != 0) {
        rc = SQLITE_NOMEM;
    }
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const void *name = sqlite3_column_blob(st, 0);
        size_t name_len = (size_t)sqlite3_column_bytes(st, 0);

        rc = SQLITE_OK;
        if (names != NULL && !name_wanted(names, n_names, name, name_len)) {
            continue;
        }
        if ((!first && buf_append_char(out, ',') != 0) ||
            buf_append_json_string(out, name, name_len) != 0 ||
            buf_append_char(out, ':') != 0 ||
            append_col(out, st, 1) != 0) {
            rc = SQLITE_NOMEM;
            break;
        }
        first = 0;
    }
    finish(st);
    if (rc != SQLITE_DONE) {
        return map_rc(rc);
    }
    return buf_append_char(out, '}') == 0 ? 0 : STORAGE_ENOMEM;
}

int storage_props_get(struct storage *s, const struct cmd *where,
                      const struct cmd_bytes *names, size_t n_names,
                      uint64_t now_ms, struct buf *out, uint64_t *version)
{
    size_t mark = out->len;
    struct sess_view v;
    int rc;

    /* One lookup for both: the namespace must exist, the session need not
     * (an absent one is an empty document at version 0). */
    rc = sess_view_get(s, where, &v);
    *version = v.version;
    if (rc == 0 && !v.ns_exists) {
        rc = STORAGE_ENOTFOUND;
    }
    if (rc == 0 && !v.sess_exists) {
        rc = buf_append_str(out, "{}") == 0 ? 0 : STORAGE_ENOMEM;
    } else if (rc == 0) {
        rc = append_props(s, v.sk, names, n_names, now_ms, out);
    }
    if (rc != 0) {
        truncate_buf(out, mark);
    }
    return rc;
}

/* Append the value in column col of st's row to out and keep it, with
 * the expiry in column col + 1, in read slot r (when not NULL) for
 * where's property. */
static int prop_found(struct storage *s, struct read_slot *r, uint64_t hash,
                      const struct cmd *where, sqlite3_stmt *st, int col,
                      struct buf *out)
{
    const void *value = sqlite3_column_blob(st, col);
    size_t len = (size_t)sqlite3_column_bytes(st, col);

    if (buf_append(out, value, len) != 0) {
        return STORAGE_ENOMEM;
    }
    if (r != NULL) {
        read_slot_fill(s, r, hash, where, value, len,
                       sqlite3_column_int64(st, col + 1));
    }
    return 0;
}

/* The property of where through the session hint (sk_slot): 1 when the
 * session at sk is where's, with the value appended to out (and kept in
 * read slot r when not NULL) or STORAGE_ENOTFOUND in *status; 0 when the hint does not
 * hold; a negative storage error when SQLite fails. Properties never hold
 * SQL NULL, so a NULL value is a property that is absent or expired. */
static int prop_get_by_sk(struct storage *s, const struct cmd *where,
                          int64_t sk, uint64_t now_ms, struct read_slot *r,
                          uint64_t rhash, struct buf *out, int *status)
{
    sqlite3_stmt *st = s->st[ST_PROP_GET_BY_SK];
    int rc = sqlite3_bind_int64(st, 1, sk);
    int held = 0;

    if (rc == SQLITE_OK) {
        rc = bind_f(st, 2, where->name);
    }
    if (rc == SQLITE_OK) {
        rc = sqlite3_bind_int64(st, 3, u2i(now_ms));
    }
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
    }
    if (rc == SQLITE_ROW) {
        rc = SQLITE_DONE;
        held = same_session(st, 0, where);
        if (held && sqlite3_column_type(st, 3) == SQLITE_NULL) {
            *status = STORAGE_ENOTFOUND;
        } else if (held) {
            *status = prop_found(s, r, rhash, where, st, 3, out);
        }
    }
    finish(st);
    return rc == SQLITE_DONE ? held : -map_rc(rc);
}

int storage_prop_get(struct storage *s, const struct cmd *where,
                     uint64_t now_ms, struct buf *out)
{
    sqlite3_stmt *st = s->st[ST_PROP_GET];
    uint64_t hash;
    struct sk_slot *k = sk_slot_of(s, where, &hash);
    uint64_t rhash = read_hash(hash, where->name);
    struct read_slot *r = read_slot_find(s, rhash, where);
    int rc;

    s->prop_reads++;
    if (r != NULL) {
        s->prop_reads_cached++;
        if (s->read_credit < READ_CREDIT_MAX) {
            s->read_credit++;
        }
        /* As the SELECTs have it: expires_ms IS NULL OR expires_ms > now. */
        if (r->expires != 0 && r->expires <= u2i(now_ms)) {
            return STORAGE_ENOTFOUND;
        }
        return buf_append(out, r->data + read_key_len(r), r->value_len) == 0
                   ? 0
                   : STORAGE_ENOMEM;
    }
    r = read_slot_victim(s, rhash);
    if (k->sk != 0 && k->hash == hash) {
        int status = 0;

        rc = prop_get_by_sk(s, where, k->sk, now_ms, r, rhash, out, &status);
        if (rc != 0) {
            return rc < 0 ? -rc : status;
        }
    }
    /* No namespace check: a property row implies its namespace row (see
     * sess_view_get), and either miss is ENOTFOUND. */
    rc = bind_where(st, where, 1);
    if (rc == SQLITE_OK) {
        rc = bind_f(st, 4, where->name);
    }
    if (rc == SQLITE_OK) {
        rc = sqlite3_bind_int64(st, 5, u2i(now_ms));
    }
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
    }
    if (rc == SQLITE_ROW) {
        k->hash = hash;
        k->sk = sqlite3_column_int64(st, 2);
        rc = prop_found(s, r, rhash, where, st, 0, out);
    } else if (rc == SQLITE_DONE) {
        rc = STORAGE_ENOTFOUND;
    } else {
        rc = map_rc(rc);
    }
    finish(st);
    return rc;
}

/* Shared by session_ids (with_props 0) and session_props (1). */
static int session_page(struct storage *s, const struct cmd *where,
                        uint64_t page, uint64_t per_page, uint64_t now_ms,
                        int with_props, struct buf *out)
{
    sqlite3_stmt *st = s->st[ST_SESSION_IDS];
    size_t mark = out->len;
    int first = 1;
    int rc = ns_require(s, where);

    if (rc != 0) {
        return rc;
    }
    if (buf_append_char(out, '[') != 0) {
        return STORAGE_ENOMEM;
    }
    /* A page beyond what SQLite can count is simply empty. */
    if (per_page == 0 || page > (uint64_t)INT64_MAX / per_page) {
        goto close;
    }
    rc = bind_where(st, where, 0);
    if (rc == SQLITE_OK) {
        rc = sqlite3_bind_int64(st, 3, u2i(now_ms));
    }
    if (rc == SQLITE_OK) {
        rc = sqlite3_bind_int64(st, 4, u2i(per_page));
    }
    if (rc == SQLITE_OK) {
        rc = sqlite3_bind_int64(st, 5, (sqlite3_int64)(page * per_page));
    }
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t sk = sqlite3_column_int64(st, 0);
        const void *sid = sqlite3_column_blob(st, 1);
        size_t sid_len = (size_t)sqlite3_column_bytes(st, 1);

        rc = SQLITE_NOMEM;
        if (!first && buf_append_char(out, ',') != 0) {
            break;
        }
        if (!with_props) {
            if (buf_append_json_string(out, sid, sid_len) != 0) {
                break;
            }
        } else {
            int prc;

            if (buf_append_str(out, "{\"sessionId\":") != 0 ||
                buf_append_json_string(out, sid, sid_len) != 0 ||
                buf_append_str(out, ",\"property\":") != 0) {
                break;
            }
            prc = append_props(s, sk, NULL, 0, now_ms, out);
            if (prc != 0) {
                rc = prc == STORAGE_ENOMEM ? SQLITE_NOMEM : SQLITE_ERROR;
                break;
            }
            if (buf_append_char(out, '}') != 0) {
                break;
            }
        }
        first = 0;
        rc = SQLITE_OK;
    }
    finish(st);
    if (rc != SQLITE_DONE) {
        truncate_buf(out, mark);
        return map_rc(rc);
    }
close:
    if (buf_append_char(out, ']') != 0) {
        truncate_buf(out, mark);
        return STORAGE_ENOMEM;
    }
    return 0;
}

int storage_session_ids(struct storage *s, const struct cmd *where,
                        uint64_t page, uint64_t per_page, uint64_t now_ms,
                        struct buf *out)
{
    return session_page(s, where, page, per_page, now_ms, 0, out);
}

int storage_session_props(struct storage *s, const struct cmd *where,
                          uint64_t page, uint64_t per_page, uint64_t now_ms,
                          struct buf *out)
{
    return session_page(s, where, page, per_page, now_ms, 1, out);
}

int storage_session_ttls(struct storage *s, const struct cmd *where,
                         struct buf *out)
{
    sqlite3_stmt *st = s->st[ST_SESS_TTLS];
    size_t mark = out->len;
    int first = 1;
    int rc = ns_require(s, where);

    if (rc != 0) {
        return rc;
    }
    rc = bind_where(st, where, 0);
    if (rc == SQLITE_OK && buf_append_char(out, '[') != 0) {
        rc = SQLITE_NOMEM;
    }
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        rc = SQLITE_NOMEM;
        if ((!first && buf_append_char(out, ',') != 0) ||
            buf_append_str(out, "{\"sessionId\":") != 0 ||
            append_blob_string(out, st, 0) != 0 ||
            buf_append_str(out, ",\"createdAt\":") != 0 ||
            append_time(out, col_u64(st, 1)) != 0 ||
            buf_printf(out, ",\"ttlSecond\":%lld}",
                       (long long)sqlite3_column_int64(st, 2)) != 0) {
            break;
        }
        first = 0;
        rc = SQLITE_OK;
    }
    finish(st);
    if (rc != SQLITE_DONE || buf_append_char(out, ']') != 0) {
        truncate_buf(out, mark);
        return rc == SQLITE_DONE ? STORAGE_ENOMEM : map_rc(rc);
    }
    return 0;
}

int storage_next_expiry(struct storage *s, uint64_t *t_ms)
{
    sqlite3_stmt *st = s->st[ST_NEXT_EXPIRY];
    int rc = sqlite3_step(st);

    *t_ms = 0;
    if (rc == SQLITE_ROW) {
        *t_ms = col_u64(st, 0);
        rc = 0;
    } else if (rc == SQLITE_DONE) {
        rc = STORAGE_ENOTFOUND;
    } else {
        rc = map_rc(rc);
    }
    finish(st);
    return rc;
}

int storage_node_lookup(struct storage *s, uint64_t id, struct buf *http_addr,
                        struct buf *region)
{
    sqlite3_stmt *st = s->st[ST_NODE_GET];
    int rc = sqlite3_bind_int64(st, 1, (sqlite3_int64)id);

    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
    }
    if (rc == SQLITE_ROW) {
        size_t m1 = http_addr->len;

        rc = 0;
        if (buf_append(http_addr, sqlite3_column_blob(st, 0),
                       (size_t)sqlite3_column_bytes(st, 0)) != 0 ||
            buf_append(region, sqlite3_column_blob(st, 1),
                       (size_t)sqlite3_column_bytes(st, 1)) != 0) {
            truncate_buf(http_addr, m1);
            rc = STORAGE_ENOMEM;
        }
    } else if (rc == SQLITE_DONE) {
        rc = STORAGE_ENOTFOUND;
    } else {
        rc = map_rc(rc);
    }
    finish(st);
    return rc;
}

static int count_rows(struct storage *s, enum stmt_id id, uint64_t *n)
{
    sqlite3_stmt *st = s->st[id];
    int rc = sqlite3_step(st);

    *n = 0;
    if (rc == SQLITE_ROW) {
        *n = col_u64(st, 0);
        rc = SQLITE_DONE;
    }
    finish(st);
    return rc == SQLITE_DONE ? 0 : map_rc(rc);
}

void storage_counts(struct storage *s, struct storage_counts *c)
{
    *c = s->committed;
    c->purged = s->purged;
}

int storage_recount(struct storage *s, struct storage_counts *c)
{
    int rc;

    memset(c, 0, sizeof *c);
    rc = count_rows(s, ST_COUNT_ACCOUNTS, &c->accounts);
    if (rc == 0) {
        rc = count_rows(s, ST_COUNT_NAMESPACES, &c->namespaces);
    }
    if (rc == 0) {
        rc = count_rows(s, ST_COUNT_SESSIONS, &c->sessions);
    }
    if (rc == 0) {
        rc = count_rows(s, ST_COUNT_PROPERTIES, &c->properties);
    }
    c->purged = s->purged;
    return rc;
}

/* One integer from a query that answers one row, or -1. */
static int64_t query_i64(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st;
    int64_t v = -1;

    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        return -1;
    }
    if (sqlite3_step(st) == SQLITE_ROW) {
        v = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    return v;
}

uint64_t storage_db_bytes(struct storage *s)
{
    int64_t pages = query_i64(s->db, "PRAGMA page_count");
    int64_t size = query_i64(s->db, "PRAGMA page_size");

    return pages > 0 && size > 0 ? (uint64_t)pages * (uint64_t)size : 0;
}

/* --- Snapshots ------------------------------------------------------- */

int storage_snapshot(struct storage *s, void **data, size_t *len)
{
    sqlite3_int64 size = 0;
    unsigned char *img;
    void *copy;
    int rc = meta_sync(s);

    *data = NULL;
    *len = 0;
    if (rc != 0) {
        return rc;
    }
    img = sqlite3_serialize(s->db, "main", &size, 0);
    if (img == NULL) {
        return STORAGE_ENOMEM;
    }
    copy = malloc(size > 0 ? (size_t)size : 1);
    if (copy == NULL) {
        sqlite3_free(img);
        return STORAGE_ENOMEM;
    }
    memcpy(copy, img, (size_t)size);
    sqlite3_free(img);
    *data = copy;
    *len = (size_t)size;
    return 0;
}

/* --- Snapshot images taken by a child process ------------------------ */

#define IMAGE_MAX_BYTES ((uint64_t)1 << 40) /* sanity bound on the header */

static int fd_write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    ssize_t w;

    while (n > 0) {
        w = write(fd, c, n);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return -1;
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Bytes read (< n only at end of file), or -1. */
static ssize_t fd_read_all(int fd, void *p, size_t n)
{
    char *c = p;
    size_t got = 0;
    ssize_t r;

    while (got < n) {
        r = read(fd, c + got, n - got);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            return -1;
        }
        if (r == 0) {
            break;
        }
        got += (size_t)r;
    }
    return (ssize_t)got;
}

/* Held by storage_image_read (a libuv worker) while it allocates or frees
 * an image buffer, and by image_fork across fork(). A child gets only the
 * forking thread, and the locks of every other thread stay taken in it:
 * glibc's malloc takes its own locks around fork, but AddressSanitizer's
 * allocator (GCC 12) does not, and a child forked while a worker was in
 * malloc for an image of the same size class waited forever in its first
 * allocation (sqlite3_serialize), which hung /admin/v1/backup in the ASan
 * build (e2e_test_security, about one run in twenty). The workers' image
 * buffers are the only allocations ctxd makes off the loop; the loop waits
 * at most one malloc or free for this lock. */
static pthread_mutex_t image_alloc_lock = PTHREAD_MUTEX_INITIALIZER;

/* What a forked child sends: the whole database image, or its digest. */
enum image_kind { IMAGE_SNAPSHOT, IMAGE_DIGEST };

/* The kind's bytes in the calling process, into a malloc'd buffer. */
static int image_take(struct storage *s, enum image_kind kind, void **data,
                      size_t *len)
{
    uint8_t *d;
    int rc;

    if (kind == IMAGE_SNAPSHOT) {
        return storage_snapshot(s, data, len);
    }
    *data = NULL;
    *len = 0;
    d = malloc(SHA256_LEN);
    if (d == NULL) {
        return STORAGE_ENOMEM;
    }
    rc = storage_digest(s, d);
    if (rc != 0) {
        free(d);
        return rc;
    }
    *data = d;
    *len = SHA256_LEN;
    return 0;
}

/* In the child: write the 8-byte little-endian length, then the bytes of
 * the kind. Never returns. Only async-signal-safe work besides SQLite's
 * own reads (and its malloc, for a ":memory:" database that SQLite cannot
 * hand over without a copy and for the digest's statements, which glibc
 * makes safe after fork). */
static void image_child(struct storage *s, enum image_kind kind, int fd,
                        pid_t parent)
{
    sqlite3_int64 size = 0;
    unsigned char *img;
    uint8_t digest[SHA256_LEN];
    unsigned char hdr[8];
    uint64_t n;
    int i;

    (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) {
        _exit(2);
    }
    /* Background work: the node's loop comes first for the CPU. */
    (void)setpriority(PRIO_PROCESS, 0, 10);
    if (kind == IMAGE_DIGEST) {
        if (storage_digest(s, digest) != 0) {
            _exit(1);
        }
        img = digest;
        size = SHA256_LEN;
    } else {
        /* meta_sync writes to the child's copy: the parent's stays as
         * it was, and syncs when it next needs to. */
        if (meta_sync(s) != 0) {
            _exit(1);
        }
        img = sqlite3_serialize(s->db, "main", &size,
                                SQLITE_SERIALIZE_NOCOPY);
        if (img == NULL) {
            img = sqlite3_serialize(s->db, "main", &size, 0);
        }
    }
    if (img == NULL || size < 0) {
        _exit(1);
    }
    n = (uint64_t)size;
    for (i = 0; i < 8; i++) {
        hdr[i] = (unsigned char)(n >> (8 * i));
    }
    if (fd_write_all(fd, hdr, sizeof hdr) != 0 ||
        fd_write_all(fd, img, (size_t)size) != 0) {
        _exit(1);
    }
    _exit(0);
}

static int image_fork(struct storage *s, enum image_kind kind,
                      struct storage_image *img)
{
    int fds[2];
    pid_t parent = getpid();
    pid_t pid;

    memset(img, 0, sizeof *img);
    img->fd = -1;
    if (pipe(fds) != 0) {
        return image_take(s, kind, &img->data, &img->len);
    }
    /* Not inherited by anything the node might exec. */
    (void)fcntl(fds[0], F_SETFD, FD_CLOEXEC);
    (void)fcntl(fds[1], F_SETFD, FD_CLOEXEC);
    (void)pthread_mutex_lock(&image_alloc_lock);
    pid = fork();
    if (pid == 0) {
        close(fds[0]);
        image_child(s, kind, fds[1], parent);
    }
    (void)pthread_mutex_unlock(&image_alloc_lock);
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return image_take(s, kind, &img->data, &img->len);
    }
    close(fds[1]);
    img->pid = (int)pid;
    img->fd = fds[0];
    return 0;
}

int storage_image_fork(struct storage *s, struct storage_image *img)
{
    return image_fork(s, IMAGE_SNAPSHOT, img);
}

/* image_fork for a caller that allows one at a time: *busy is set until
 * the caller releases it. */
static int image_fork_one(struct storage *s, enum image_kind kind, int *busy,
                          struct storage_image *img)
{
    int rc;

    if (*busy) {
        memset(img, 0, sizeof *img);
        img->fd = -1;
        return STORAGE_EBUSY;
    }
    rc = image_fork(s, kind, img);
    *busy = rc == 0;
    return rc;
}

int storage_digest_fork(struct storage *s, struct storage_image *img)
{
    return image_fork_one(s, IMAGE_DIGEST, &s->digest_busy, img);
}

void storage_digest_release(struct storage *s)
{
    s->digest_busy = 0;
}

int storage_backup_fork(struct storage *s, struct storage_image *img)
{
    return image_fork_one(s, IMAGE_SNAPSHOT, &s->backup_busy, img);
}

void storage_backup_release(struct storage *s)
{
    s->backup_busy = 0;
}

/* Close the pipe and reap the child; 0 when it exited with status 0. */
static int image_reap(struct storage_image *img)
{
    int status = 0;
    pid_t r;

    if (img->fd >= 0) {
        close(img->fd);
        img->fd = -1;
    }
    if (img->pid <= 0) {
        return 0;
    }
    do {
        r = waitpid((pid_t)img->pid, &status, 0);
    } while (r < 0 && errno == EINTR);
    img->pid = 0;
    if (r < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        return -1;
    }
    return 0;
}

int storage_image_read(struct storage_image *img, void **data, size_t *len)
{
    unsigned char hdr[8];
    unsigned char extra;
    uint64_t n = 0;
    void *buf = NULL;
    int i;
    int rv = STORAGE_EINTERNAL;

    *data = NULL;
    *len = 0;
    if (img->pid <= 0) {
        /* Taken synchronously by storage_image_fork. */
        if (img->data == NULL) {
            return STORAGE_EINTERNAL;
        }
        *data = img->data;
        *len = img->len;
        img->data = NULL;
        img->len = 0;
        return 0;
    }
    if (fd_read_all(img->fd, hdr, sizeof hdr) != (ssize_t)sizeof hdr) {
        goto out;
    }
    for (i = 0; i < 8; i++) {
        n |= (uint64_t)hdr[i] << (8 * i);
    }
    if (n > IMAGE_MAX_BYTES || n > (uint64_t)SSIZE_MAX) {
        goto out;
    }
    (void)pthread_mutex_lock(&image_alloc_lock);
    buf = malloc(n > 0 ? (size_t)n : 1);
    (void)pthread_mutex_unlock(&image_alloc_lock);
    if (buf == NULL) {
        rv = STORAGE_ENOMEM;
        goto out;
    }
    if (fd_read_all(img->fd, buf, (size_t)n) != (ssize_t)n ||
        fd_read_all(img->fd, &extra, 1) != 0) {
        goto out;
    }
    rv = 0;
out:
    if (rv != 0) {
        /* The child may still be writing: stop it before reaping. */
        (void)kill((pid_t)img->pid, SIGKILL);
    }
    if (image_reap(img) != 0 && rv == 0) {
        rv = STORAGE_EINTERNAL;
    }
    if (rv != 0) {
        (void)pthread_mutex_lock(&image_alloc_lock);
        free(buf);
        (void)pthread_mutex_unlock(&image_alloc_lock);
        return rv;
    }
    *data = buf;
    *len = (size_t)n;
    return 0;
}

void storage_image_discard(struct storage_image *img)
{
    if (img->pid > 0) {
        (void)kill((pid_t)img->pid, SIGKILL);
    }
    (void)image_reap(img);
    free(img->data);
    img->data = NULL;
    img->len = 0;
}

/* 0 when PRAGMA integrity_check answers exactly one row "ok". */
static int check_integrity(sqlite3 *db)
{
    sqlite3_stmt *st;
    int ok = 0;
    int rc = sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL);

    if (rc != SQLITE_OK) {
        return rc == SQLITE_NOMEM ? STORAGE_ENOMEM : STORAGE_ECORRUPT;
    }
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);

        ok = t != NULL && strcmp((const char *)t, "ok") == 0 &&
             sqlite3_step(st) == SQLITE_DONE;
    }
    sqlite3_finalize(st);
    if (rc == SQLITE_NOMEM) {
        return STORAGE_ENOMEM;
    }
    return ok ? 0 : STORAGE_ECORRUPT;
}

/* 0 when every table of the schema exists. Their columns are checked by
 * preparing the statements afterwards. */
static int check_schema(sqlite3 *db)
{
    size_t i;

    for (i = 0; i < N_TABLES; i++) {
        sqlite3_stmt *st;
        int found;
        int rc = sqlite3_prepare_v2(
            db, "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            -1, &st, NULL);

        if (rc != SQLITE_OK) {
            return rc == SQLITE_NOMEM ? STORAGE_ENOMEM : STORAGE_ECORRUPT;
        }
        rc = sqlite3_bind_text(st, 1, tables[i].name, -1, SQLITE_STATIC);
        found = rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW;
        sqlite3_finalize(st);
        if (!found) {
            return STORAGE_ECORRUPT;
        }
    }
    return 0;
}

/* Bring an image from before sessions had an integer key (its properties
 * still have an acc column) to the current layout, in one transaction:
 * every property row must find its session, or the image is refused. */
static int migrate_sk(sqlite3 *db)
{
    int64_t old_layout = query_i64(
        db, "SELECT count(*) FROM pragma_table_info('properties')"
            " WHERE name = 'acc'");
    int64_t before;
    int rc;

    if (old_layout <= 0) {
        return old_layout == 0 ? 0 : STORAGE_ECORRUPT;
    }
    before = query_i64(db, "SELECT count(*) FROM properties");
    rc = exec_sql(db, "BEGIN");
    if (rc != 0) {
        return rc;
    }
    rc = exec_sql(db, migrate_sk_sql);
    if (rc == 0 && (before < 0 ||
                    query_i64(db, "SELECT count(*) FROM properties") !=
                        before)) {
        rc = STORAGE_ECORRUPT; /* a property without its session */
    }
    if (rc == 0) {
        rc = exec_sql(db, "DROP TABLE sessions_v1; DROP TABLE properties_v1;"
                          "COMMIT");
    }
    if (rc != 0) {
        exec_sql(db, "ROLLBACK"); /* the caller discards db anyway */
    }
    return rc;
}

int storage_restore(struct storage *s, const void *data, size_t len)
{
    static const char magic[16] = "SQLite format 3";
    struct storage fresh;
    unsigned char *copy;
    int rc;

    /* 100 bytes: the SQLite file header. */
    if (data == NULL || len < 100 || memcmp(data, magic, sizeof magic) != 0 ||
        len > (size_t)INT64_MAX) {
        return STORAGE_ECORRUPT;
    }
    memset(&fresh, 0, sizeof fresh);
    rc = db_open(&fresh.db);
    if (rc != 0) {
        return rc;
    }
    copy = sqlite3_malloc64(len);
    if (copy == NULL) {
        rc = STORAGE_ENOMEM;
        goto err_after_db_open;
    }
    memcpy(copy, data, len);
    /* On failure SQLite frees copy itself (FREEONCLOSE). */
    rc = sqlite3_deserialize(fresh.db, "main", copy, (sqlite3_int64)len,
                             (sqlite3_int64)len,
                             SQLITE_DESERIALIZE_FREEONCLOSE |
                                 SQLITE_DESERIALIZE_RESIZEABLE);
    if (rc != SQLITE_OK) {
        rc = rc == SQLITE_NOMEM ? STORAGE_ENOMEM : STORAGE_ECORRUPT;
        goto err_after_db_open;
    }
    rc = db_configure(fresh.db);
    if (rc == 0) {
        /* Images from before writes kept the document counts themselves
         * had triggers for inserts and updates too; with them the counts
         * would be added twice. */
        rc = exec_sql(fresh.db, "DROP TRIGGER IF EXISTS properties_ins;"
                                "DROP TRIGGER IF EXISTS properties_upd;");
    }
    if (rc != 0) {
        rc = rc == STORAGE_ENOMEM ? rc : STORAGE_ECORRUPT;
        goto err_after_db_open;
    }
    rc = check_integrity(fresh.db);
    if (rc == 0) {
        rc = check_schema(fresh.db);
    }
    if (rc == 0) {
        rc = migrate_sk(fresh.db);
        rc = rc == 0 || rc == STORAGE_ENOMEM ? rc : STORAGE_ECORRUPT;
    }
    if (rc != 0) {
        goto err_after_db_open;
    }
    rc = counts_setup(fresh.db, s);
    if (rc != 0) {
        goto err_after_db_open;
    }
    rc = stmts_prepare(fresh.db, fresh.st);
    if (rc != 0) {
        rc = rc == STORAGE_ENOMEM ? rc : STORAGE_ECORRUPT;
        goto err_after_db_open;
    }
    /* The one full count: restore reads every row anyway. */
    rc = storage_recount(&fresh, &fresh.committed);
    if (rc != 0) {
        rc = rc == STORAGE_ENOMEM ? rc : STORAGE_ECORRUPT;
        goto err_after_prepare;
    }
    fresh.committed.purged = 0;
    fresh.live = fresh.committed;
    rc = meta_load(&fresh);
    if (rc != 0) {
        rc = rc == STORAGE_ENOMEM ? rc : STORAGE_ECORRUPT;
        goto err_after_prepare;
    }

    /* Everything checked: swap the new database in. A digest or backup
     * child in flight keeps the state it forked with, and its slot. */
    fresh.digest_busy = s->digest_busy;
    fresh.backup_busy = s->backup_busy;
    fresh.keys_generation = s->keys_generation + 1;
    expiry_floor_refresh(&fresh);
    fresh.ns_gen = s->ns_gen + 1; /* fresh's slots are all generation 0 */
    fresh.sk_cache = s->sk_cache; /* hints only: kept (see sk_slot) */
    fresh.row_gen = s->row_gen + 1; /* every row slot is stale */
    fresh.row_cache = s->row_cache;
    fresh.read_gen = s->read_gen + 1; /* every read slot is stale */
    fresh.read_bytes = s->read_bytes;
    fresh.read_last = s->read_last;
    fresh.read_cache = s->read_cache;
    fresh.prop_reads = s->prop_reads;
    fresh.prop_reads_cached = s->prop_reads_cached;
    fresh.read_credit = s->read_credit;
    stmts_finalize(s->st);
    sqlite3_close(s->db);
    *s = fresh;
    return 0;

err_after_prepare:
    stmts_finalize(fresh.st);
err_after_db_open:
    sqlite3_close(fresh.db);
    return rc;
}

/* --- Digest and dump -------------------------------------------------- */

/* Called for each row of each table, in digest order. */
typedef int (*row_fn)(void *arg, const char *table, sqlite3_stmt *st);

/* Called at the start of each table. */
typedef int (*table_fn)(void *arg, const char *table);

static int walk_rows(struct storage *s, table_fn on_table, row_fn on_row,
                     void *arg)
{
    size_t i;
    int sync_rc = meta_sync(s);

    if (sync_rc != 0) {
        return sync_rc;
    }
    for (i = 0; i < N_TABLES; i++) {
        struct buf sql = BUF_INIT;
        sqlite3_stmt *st;
        int rc;

        if (buf_printf(&sql, "SELECT %s FROM %s ORDER BY %s", tables[i].cols,
                       tables[i].from, tables[i].key) != 0) {
            return STORAGE_ENOMEM;
        }
        rc = sqlite3_prepare_v2(s->db, sql.base, -1, &st, NULL);
        buf_free(&sql);
        if (rc != SQLITE_OK) {
            return map_rc(rc);
        }
        rc = on_table(arg, tables[i].name);
        while (rc == 0) {
            int step = sqlite3_step(st);

            if (step == SQLITE_DONE) {
                break;
            }
            if (step != SQLITE_ROW) {
                rc = map_rc(step);
                break;
            }
            rc = on_row(arg, tables[i].name, st);
        }
        sqlite3_finalize(st);
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

static void hash_u64(struct sha256 *h, uint64_t v)
{
    uint8_t b[8];
    unsigned i;

    for (i = 0; i < 8; i++) {
        b[i] = (uint8_t)(v >> (8 * i));
    }
    sha256_update(h, b, sizeof b);
}

static int digest_table(void *arg, const char *table)
{
    struct sha256 *h = arg;
    size_t n = strlen(table);

    sha256_update(h, "T", 1);
    hash_u64(h, n);
    sha256_update(h, table, n);
    return 0;
}

/* Each column: a type byte, then an 8-byte integer or a length-prefixed
 * byte string, so no two different rows hash the same stream. */
static int digest_row(void *arg, const char *table, sqlite3_stmt *st)
{
    struct sha256 *h = arg;
    int n = sqlite3_column_count(st);
    int i;

    (void)table;
    sha256_update(h, "R", 1);
    for (i = 0; i < n; i++) {
        int type = sqlite3_column_type(st, i);
        uint8_t tag = (uint8_t)type;

        sha256_update(h, &tag, 1);
        if (type == SQLITE_INTEGER) {
            hash_u64(h, (uint64_t)sqlite3_column_int64(st, i));
        } else if (type == SQLITE_FLOAT) {
            double d = sqlite3_column_double(st, i);
            uint64_t bits;

            memcpy(&bits, &d, sizeof bits);
            hash_u64(h, bits);
        } else if (type != SQLITE_NULL) {
            const void *p = sqlite3_column_blob(st, i);
            size_t len = (size_t)sqlite3_column_bytes(st, i);

            hash_u64(h, len);
            if (len > 0) {
                sha256_update(h, p, len);
            }
        }
    }
    return 0;
}

int storage_check(struct storage *s)
{
    static const char sql[] =
        "SELECT (SELECT count(*) FROM sessions s WHERE"
        " doc_count != (SELECT count(*) FROM properties p WHERE p.sk = s.sk)"
        " OR doc_bytes != (SELECT coalesce(sum(length(name) + length(value)), 0)"
        "  FROM properties p WHERE p.sk = s.sk))"
        " + (SELECT count(*) FROM properties p WHERE NOT EXISTS"
        " (SELECT 1 FROM sessions s WHERE s.sk = p.sk))";
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    int bad = -1;

    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
    }
    if (rc == SQLITE_ROW) {
        bad = sqlite3_column_int(st, 0);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_OK) {
        return map_rc(rc);
    }
    return bad == 0 ? 0 : STORAGE_ECORRUPT;
}

int storage_digest(struct storage *s, uint8_t out[32])
{
    struct sha256 h;
    int rc;

    sha256_init(&h);
    rc = walk_rows(s, digest_table, digest_row, &h);
    sha256_final(&h, out);
    if (rc != 0) {
        memset(out, 0, 32);
    }
    return rc;
}

static int dump_table(void *arg, const char *table)
{
    (void)arg;
    (void)table;
    return 0;
}

/* Bytes as a quoted string: printable ASCII verbatim, the rest \xHH. */
static int dump_bytes(struct buf *out, const unsigned char *p, size_t n)
{
    size_t i;

    if (buf_append_char(out, '"') != 0) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        int rc;

        if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '"' && p[i] != '\\') {
            rc = buf_append_char(out, (char)p[i]);
        } else {
            rc = buf_printf(out, "\\x%02x", p[i]);
        }
        if (rc != 0) {
            return -1;
        }
    }
    return buf_append_char(out, '"');
}

static int dump_row(void *arg, const char *table, sqlite3_stmt *st)
{
    struct buf *out = arg;
    int n = sqlite3_column_count(st);
    int i;

    if (buf_append_str(out, table) != 0) {
        return STORAGE_ENOMEM;
    }
    for (i = 0; i < n; i++) {
        int type = sqlite3_column_type(st, i);
        int rc;

        if (buf_printf(out, " %s=", sqlite3_column_name(st, i)) != 0) {
            return STORAGE_ENOMEM;
        }
        if (type == SQLITE_INTEGER) {
            rc = buf_printf(out, "%lld", (long long)sqlite3_column_int64(st, i));
        } else if (type == SQLITE_FLOAT) {
            rc = buf_printf(out, "%.17g", sqlite3_column_double(st, i));
        } else if (type == SQLITE_NULL) {
            rc = buf_append_str(out, "NULL");
        } else {
            rc = dump_bytes(out, sqlite3_column_blob(st, i),
                            (size_t)sqlite3_column_bytes(st, i));
        }
        if (rc != 0) {
            return STORAGE_ENOMEM;
        }
    }
    return buf_append_char(out, '\n') == 0 ? 0 : STORAGE_ENOMEM;
}

int storage_dump(struct storage *s, struct buf *out)
{
    size_t mark = out->len;
    int rc = walk_rows(s, dump_table, dump_row, out);

    if (rc != 0) {
        truncate_buf(out, mark);
    }
    return rc;
}

/* --- Time ------------------------------------------------------------ */

/* Civil date from days since 1970-01-01 (proleptic Gregorian), after the
 * well-known era/day-of-era decomposition. */
static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    int64_t era;
    unsigned doe;
    unsigned yoe;
    unsigned doy;
    unsigned mp;

    z += 719468;
    era = (z >= 0 ? z : z - 146096) / 146097;
    doe = (unsigned)(z - era * 146097);
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static void put_digits(char *p, uint64_t v, unsigned n)
{
    while (n-- > 0) {
        p[n] = (char)('0' + v % 10);
        v /= 10;
    }
}

void storage_format_time(uint64_t ms, char out[25])
{
    /* 9999-12-31T23:59:59.999Z: the last instant with a 4-digit year. */
    const uint64_t max_ms = 253402300799999ull;
    uint64_t days;
    uint64_t rem;
    int64_t y;
    unsigned m;
    unsigned d;

    if (ms > max_ms) {
        ms = max_ms;
    }
    days = ms / 86400000u;
    rem = ms % 86400000u;
    civil_from_days((int64_t)days, &y, &m, &d);
    memcpy(out, "0000-00-00T00:00:00.000Z", 25);
    put_digits(out, (uint64_t)y, 4);
    put_digits(out + 5, m, 2);
    put_digits(out + 8, d, 2);
    put_digits(out + 11, rem / 3600000u, 2);
    put_digits(out + 14, rem / 60000u % 60, 2);
    put_digits(out + 17, rem / 1000u % 60, 2);
    put_digits(out + 20, rem % 1000u, 3);
}
