/* Consensus: libraft (raft_uv storage, TCP transport) behind a small API
 * that knows commands as opaque bytes and never exposes raft.h.
 *
 * Proposals: consensus_propose() queues an encoded command; every command
 * queued during one loop turn is sent to Raft as ONE entry (one raft_apply)
 * from a uv_check handle at the end of the turn. When that entry has been
 * applied to storage, each proposer's callback fires with its command's own
 * storage_result. Reads: consensus_barrier() queues a linearizable read;
 * one raft_barrier serves every read that was waiting when it was issued.
 *
 * Time: the leader stamps each entry with its wall clock in ms.
 *
 * Callbacks fire exactly once, unless the starting call returned non-zero.
 * On consensus_close() pending requests complete with CONSENSUS_ESHUTDOWN. */
#ifndef CTXD_CONSENSUS_H
#define CTXD_CONSENSUS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "../storage/storage.h"

#define CONSENSUS_ERRORS(X)                                        \
    X(CONSENSUS_OK, 0, "ok")                                       \
    X(CONSENSUS_ENOTLEADER, 1, "this node is not the leader")      \
    X(CONSENSUS_EBUSY, 2, "too many pending proposals")            \
    X(CONSENSUS_ELEADERSHIP, 3, "leadership lost before commit")   \
    X(CONSENSUS_ESHUTDOWN, 4, "node is shutting down")             \
    X(CONSENSUS_ENOMEM, 5, "out of memory")                        \
    X(CONSENSUS_EIO, 6, "raft I/O error")                          \
    X(CONSENSUS_EINVAL, 7, "invalid argument")                    \
    X(CONSENSUS_ENOTFOUND, 8, "no such server")                    \
    X(CONSENSUS_EEXIST, 9, "server id or address already in use")  \
    X(CONSENSUS_ECHANGING, 10, "a membership change is in progress")

enum consensus_status {
#define CONSENSUS_ENUM(name, code, text) name = code,
    CONSENSUS_ERRORS(CONSENSUS_ENUM)
#undef CONSENSUS_ENUM
};

const char *consensus_strerror(int status);

struct consensus; /* opaque */

/* One member of the initial configuration. */
struct consensus_member
{
    uint64_t id;           /* raft server id, >= 1 */
    const char *raft_addr; /* host:port */
};

struct consensus_config
{
    uv_loop_t *loop;              /* the node's only loop */
    struct storage *storage;      /* the state machine (not owned) */
    uint64_t id;                  /* this node's raft id */
    const char *raft_addr;        /* host:port to listen on */
    const char *data_dir;         /* raft_uv directory (log, snapshots) */
    const struct consensus_member *members; /* bootstrap configuration */
    unsigned n_members;           /* 0: this node alone */
    unsigned election_timeout_ms; /* default 1000 */
    unsigned heartbeat_ms;        /* default 100 */
    unsigned snapshot_threshold;  /* entries between snapshots, default 8192 */
    unsigned snapshot_trailing;   /* entries kept after one, default 2048 */
    unsigned max_pending;         /* queued + in-flight proposals; over it
                                     consensus_propose returns EBUSY */
    unsigned purge_interval_ms;   /* leader's expiry check period, default 1000 */
    unsigned install_snapshot_timeout_ms; /* resend an unanswered snapshot
                                             after this, default 5000 */
    int join;                     /* 1: never bootstrap; wait to be added by
                                     the leader (--join) */
    const void *initial_snapshot; /* --restore: instead of bootstrapping,
                                     start from this SQLite image (validated
                                     by the caller) as the Raft snapshot at
                                     initial_index, term 1, with this node
                                     alone as voter; only on a first start
                                     (empty data dir). Not owned: needed
                                     only during consensus_start. */
    size_t initial_snapshot_len;  /* bytes of initial_snapshot */
    uint64_t initial_index;       /* the image's applied index, >= 1 */
};

/* Create the raft instance, bootstrap it on first start (data dir empty),
 * load snapshot + log otherwise, and start it. On failure errmsg holds a
 * one-line reason. */
int consensus_start(struct consensus **out, const struct consensus_config *cfg,
                    char *errmsg, size_t errmsg_len);

/* Stop: fail queued/in-flight requests with ESHUTDOWN, close raft, then call
 * cb (on the loop). The object must not be used after cb; free it with
 * consensus_free() once the loop has no more work (uv_run returned): until
 * then libraft may still call into its memory (see consensus.c). */
void consensus_close(struct consensus *c, void (*cb)(void *data), void *data);

/* Free a consensus whose close callback has run, after its loop drained.
 * NULL is ignored. */
void consensus_free(struct consensus *c);

/* --- Proposals ----------------------------------------------------- */

struct consensus_propose;
typedef void (*consensus_propose_cb)(struct consensus_propose *req,
                                     int status,
                                     const struct storage_result *result);

/* Caller-allocated; must stay alive until cb. result is valid only for the
 * duration of cb and only when status is CONSENSUS_OK. */
struct consensus_propose
{
    void *data;               /* user data */
    consensus_propose_cb cb;  /* fires exactly once if propose returned 0 */
    /* private */
    struct consensus_propose *next;
    uint32_t slot;            /* position of the command in its entry */
    struct consensus_batch *batch;
};

/* Queue one encoded command (see cmd_encode; copied, the caller keeps
 * cmd). Returns 0, ENOTLEADER, EBUSY, ESHUTDOWN or ENOMEM; the callback
 * never fires on non-zero. */
int consensus_propose(struct consensus *c, struct consensus_propose *req,
                      const void *cmd, size_t len);

/* --- Linearizable reads -------------------------------------------- */

struct consensus_read;
typedef void (*consensus_read_cb)(struct consensus_read *req, int status);

struct consensus_read
{
    void *data;
    consensus_read_cb cb; /* status 0: state applied up to the confirmed
                             commit index, serve from storage now */
    /* private */
    struct consensus_read *next;
};

/* Queue a read that needs leadership confirmed by a Raft round issued after
 * this call. Leader only: returns ENOTLEADER on a follower. */
int consensus_barrier(struct consensus *c, struct consensus_read *req);

/* --- Membership (leader only: ENOTLEADER on a follower) ------------- */

struct consensus_change;
typedef void (*consensus_change_cb)(struct consensus_change *req, int status);

/* Caller-allocated; must stay alive until cb. */
struct consensus_change
{
    void *data;
    consensus_change_cb cb; /* fires exactly once if the call returned 0 */
    /* private */
    struct consensus *c;
    uint64_t id;            /* server being changed */
    int step;               /* add: 0 adding, 1 catching up, 2 promoting */
    void *raft_req;         /* the libraft request in flight (owned) */
};

/* Add server id at raft_addr as a non-voter, let it catch up, then promote
 * it to voter. cb(0) once it votes; EEXIST when the id or address is taken,
 * ECHANGING while another change is in progress, ELEADERSHIP if leadership
 * is lost midway (the server may then be in the configuration as a
 * non-voter: adding it again completes the promotion). */
int consensus_add_server(struct consensus *c, struct consensus_change *req,
                         uint64_t id, const char *raft_addr);

/* Remove server id from the configuration. ENOTFOUND when absent. */
int consensus_remove_server(struct consensus *c, struct consensus_change *req,
                            uint64_t id);

/* Hand leadership to server id (0: the most up-to-date voter). cb(0) once
 * the transfer completed. */
int consensus_transfer(struct consensus *c, struct consensus_change *req,
                       uint64_t id);

enum consensus_role {
    CONSENSUS_VOTER = 0,
    CONSENSUS_STANDBY = 1, /* replicates, does not vote */
    CONSENSUS_SPARE = 2,   /* in the configuration, receives nothing */
};

struct consensus_server
{
    uint64_t id;          /* raft id */
    char raft_addr[128];  /* host:port */
    int role;             /* enum consensus_role */
    int reachable;        /* leader's view: 1 heard from within the last
                             election timeout, 0 not; -1 on a follower
                             (unknown), except 1 for itself and the leader
                             it currently follows */
    uint64_t match_index; /* leader's view of its log, 0 on a follower */
};

/* Copy the current configuration (the last one in the log, committed or
 * not) into out, up to cap servers; *n is the number of servers. */
int consensus_servers(struct consensus *c, struct consensus_server *out,
                      unsigned cap, unsigned *n);

/* --- Observing ------------------------------------------------------ */

struct consensus_info
{
    int is_leader;           /* 1 when this node is the leader */
    uint64_t leader_id;      /* 0 when unknown */
    const char *leader_addr; /* raft address, NULL when unknown */
    uint64_t term;
    uint64_t commit_index;
    uint64_t applied_index;
    uint64_t last_index;
    unsigned pending;        /* proposals queued or in flight */
    const char *role;        /* "leader", "follower", "candidate",
                                "unavailable" */
    uint64_t elections;      /* elections this node started */
    uint64_t leader_changes; /* leader changes this node has seen */
    uint64_t snapshots_taken;     /* snapshots this node took */
    uint64_t snapshots_installed; /* snapshots this node restored from */
    uint64_t snapshot_index; /* applied index of its last snapshot, 0 if none */
    uint64_t barriers;       /* read barriers issued */
    uint64_t barrier_reads;  /* reads served by those barriers */
    uint64_t entries;        /* entries proposed (raft_apply calls) */
    uint64_t commands;       /* commands in those entries */
    unsigned inflight;       /* entries given to raft whose callback has
                                not run: at most one not yet committed,
                                and between loop turns at most one */
};

void consensus_info(struct consensus *c, struct consensus_info *info);

#endif
