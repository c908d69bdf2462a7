/* Consensus: libraft 0.15 (raft_uv log and snapshots, raft_uv_tcp
 * transport) driving the storage state machine.
 *
 * Proposals and batching
 *
 *   consensus_propose ──▶ open batch (queued) ──check──▶ raft_apply (in flight)
 *                               │ full: a new batch        │ applyCb
 *                               ▼                          ▼
 *                         next batch (queued)        one callback per proposer
 *
 * Every command proposed is appended to the open batch (struct
 * consensus_batch: an entry in the command.h format plus the list of its
 * proposers with their slot), which so gathers the commands of one loop
 * turn and of the turns that pass while an entry commits. A batch holds at
 * most CONSENSUS_BATCH_MAX_BYTES and CONSENSUS_BATCH_MAX_CMDS; when full, a
 * new one is opened in the same turn. The uv_check handle runs once per
 * turn, after the I/O callbacks that proposed: when no entry in flight is
 * still uncommitted and the write gather (consensus/gather.h) allows, it
 * stamps the oldest queued batch with the leader's wall clock and hands it
 * to raft_apply as ONE raft_buffer (a raft_malloc'd copy of the entry:
 * raft_apply takes bufs[0].base on success and leaves it to us on failure,
 * it never frees it on error paths since logDiscard does not destroy
 * entries). The FSM's committed hook (consensus_committed) ends the
 * gather's round and tries the same at once, before the leader applies the
 * entry. The gather holds the next entry until as many commands are queued
 * as the committed entry carried plus those queued behind it (the answered
 * clients write again), or GATHER_MAX_MS: under a steady load of N clients
 * an entry then carries about N commands, not N/2 in two alternating
 * groups, and every entry costs a disk write on each node and a round of
 * messages. After a wait that ran out, the next entries go out as soon as
 * the previous one commits (the peers replicate the next entry while the
 * leader applies the previous one) for GATHER_SKIP_ROUNDS entries.
 *
 * The state machine (consensus/fsm.c) applies entries to storage; entries
 * are padded to 8 bytes for raft_uv, and each entry's results stay in the
 * FSM until the leader's raft_apply callback, which libraft runs right after
 * the apply of its entry, hands each proposer its own result.
 *
 * Leadership lost with entries in flight: libraft fails every pending
 * raft_apply once with LEADERSHIPLOST, which proposers see as ELEADERSHIP
 * (the entry may still commit under the next leader: outcome unknown).
 * Batches still queued at the check of a node that is no longer leader
 * never reach the log and fail with ENOTLEADER.
 *
 * Reads. consensus_barrier queues a read. At the check, when no barrier is
 * in flight, reads are waiting and the read gather allows (as for
 * entries: as many reads as the last barrier served plus those queued when
 * it completed, or GATHER_MAX_MS), all waiting reads move to the in-flight
 * list and one raft_barrier is issued; its callback completes exactly those
 * reads. Reads arriving meanwhile wait for the next barrier.
 *
 * Purge. A timer checks every purge_interval_ms whether this node leads and
 * storage's earliest expiry has passed; then it proposes one PURGE command
 * through the same batching path (at most one in flight).
 *
 * Bootstrap. On first start the node bootstraps the configured members (all
 * voters) or, with none, itself alone. A node started with join = 1, or not
 * among the configured members, never bootstraps: it starts with an empty
 * log and waits for a leader to add it and send it entries or a snapshot.
 * RAFT_CANTBOOTSTRAP means state already exists and is not an error.
 *
 * Membership changes (one at a time, leader only; struct consensus_change):
 *
 *   add:  raft_add (SPARE) ──cb──▶ [next check] raft_assign(VOTER) ──cb──▶ cb(0)
 *         step 0                   step 1: catch-up rounds, step 2: promoting
 *         a server already present as a non-voter skips raft_add.
 *   remove: raft_remove ──cb──▶ cb.   transfer: raft_transfer ──cb──▶ cb.
 *
 * In libraft 0.15 raft_assign(VOTER) of a server whose log lags runs the
 * catch-up itself (leader_state.promotee_id: rounds of AppendEntries, then
 * the configuration entry with the server as voter; it aborts with
 * NOCONNECTION when the server does not keep up), so no timer is needed
 * here. The assign is issued from the check after the add callback rather
 * than inside it, which runs in the middle of libraft's apply loop. Losing
 * leadership fails the pending libraft change with LEADERSHIPLOST
 * (ELEADERSHIP). The transfer callback carries no status: it succeeded when
 * the target is now the known leader.
 *
 * Reachability (consensus_servers): the leader's progress array has a
 * recent_recv flag per server, which libraft clears at every election
 * timeout; each poll records when the flag was last seen set, and a server
 * is reachable when that was within the last election timeout.
 *
 * Shutdown. consensus_close fails queued proposals and reads with ESHUTDOWN,
 * then raft_close fails the in-flight ones synchronously (libraft reports
 * LEADERSHIPLOST, which becomes ESHUTDOWN while closing). When raft's close
 * callback and both of our handles' close callbacks have run, the user
 * callback fires. The memory (raft, its io and transport) is freed later,
 * by consensus_free once the loop has drained: libraft 0.15 reports the
 * close before the writer of its last open segment has finished closing,
 * and that writer's close callback checks the io once more
 * (uvAliveSegmentWriterCloseCb calls uvMaybeFireCloseCb; cowsql/raft#45
 * removed the call). With the io freed in raft's close callback, as it used
 * to be here, that check read freed memory: SIGSEGV at SIGTERM in about one
 * e2e run in twenty under load. With the io alive it would report the close
 * a second time (a double free in ioCloseCb), unless the transport's data
 * is non-NULL, which makes the check return at once: so raft's close
 * callback sets it.
 *
 * Invariants:
 *   - pending == proposals in queued batches + proposals in in-flight batches.
 *   - at most one in-flight batch is not marked committed.
 *   - change is the one membership request not yet completed, or NULL.
 *   - a proposal's or read's callback fires exactly once, after which the
 *     object no longer references it.
 *   - only the last batch of the queued list is open for new commands. */
#include "consensus.h"
#include "gather.h"
#include "transport.h"
#include "../lib/container.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <raft.h>
#include <raft/uv.h>

#include "../lib/buf.h"
#include "../lib/log.h"
#include "../storage/command.h"
#include "fsm.h"

#define CONSENSUS_DEFAULT_ELECTION_MS 1000  /* ms */
#define CONSENSUS_DEFAULT_HEARTBEAT_MS 100  /* ms */
#define CONSENSUS_DEFAULT_SNAPSHOT_THRESHOLD 8192 /* entries */
#define CONSENSUS_DEFAULT_SNAPSHOT_TRAILING 2048  /* entries */
#define CONSENSUS_DEFAULT_INSTALL_SNAPSHOT_MS 5000 /* resend an unanswered snapshot */
#define CONSENSUS_DEFAULT_MAX_PENDING 10000 /* proposals */
#define CONSENSUS_DEFAULT_PURGE_MS 1000     /* ms */
#define CONSENSUS_BATCH_MAX_BYTES (4u * 1024 * 1024) /* bytes per entry */
/* A new batch reserves the size of the last entry, up to this: one
 * allocation instead of a doubling realloc (and copy) every few commands. */
#define CONSENSUS_ENTRY_HINT_MAX (256u * 1024)
#define CONSENSUS_BATCH_MAX_CMDS 4096u               /* commands per entry */
#define CONSENSUS_CMD_LEN_SIZE 4 /* bytes: the len:u32 before each command */
#define CONSENSUS_TIME_OFFSET 4  /* bytes: magic, version, reserved:u16 come
                                    before time_ms in the entry header */
#define CONSENSUS_SEEN_MAX 64    /* servers whose last contact is tracked */

/* When the leader last saw a server's recent_recv flag set. */
struct consensus_seen
{
    uint64_t id; /* raft id, 0 for a free slot */
    uint64_t ms; /* monotonic time of the last sighting, ms */
};

/* One entry being built (queued) or replicated (in flight). */
struct consensus_batch
{
    struct raft_apply req;           /* embedded libraft request; data = us */
    struct consensus *c;             /* owner */
    struct buf entry;                /* owned: header + commands (command.h) */
    uint32_t count;                  /* commands in the entry */
    struct consensus_propose *head;  /* proposers in slot order */
    struct consensus_propose *tail;  /* last proposer, for appending */
    struct consensus_batch *next;    /* next batch in the same list */
    int committed;                   /* in flight: its entry is committed
                                        (consensus_committed) */
};

struct consensus
{
    uv_loop_t *loop;                 /* the node's loop (not owned) */
    struct storage *storage;         /* state machine (not owned) */
    struct raft raft;                /* the raft instance */
    struct raft_io io;               /* raft_uv disk + network backend */
    struct consensus_transport transport; /* raft_uv_tcp with TCP_NODELAY */
    struct consensus_fsm fsm;        /* raft_fsm over storage (fsm.c) */
    uv_check_t check;                /* flushes batches and reads each turn */
    uv_timer_t purge_timer;          /* periodic expiry check */

    unsigned max_pending;            /* EBUSY threshold */
    unsigned purge_interval_ms;      /* purge_timer period, ms */

    struct consensus_batch *queued;      /* batches not yet submitted */
    struct consensus_batch *queued_tail; /* the open batch, or NULL */
    struct consensus_batch *inflight;    /* batches given to raft_apply
                                            whose callback has not run; at
                                            most one not yet committed, see
                                            consensus_flush_batches */
    unsigned pending;                    /* proposals queued or in flight */
    size_t entry_hint;                   /* bytes of the last entry submitted
                                            (at most CONSENSUS_ENTRY_HINT_MAX):
                                            a new batch reserves that much */

    struct consensus_read *reads;      /* reads waiting for a barrier */
    struct consensus_read *reads_tail; /* last waiting read */
    struct consensus_read *reads_inflight; /* reads the current barrier serves */
    struct raft_barrier barrier;       /* the one barrier request */
    int barrier_busy;                  /* 1 while barrier is in flight */
    unsigned reads_queued;             /* length of reads */
    unsigned reads_inflight_n;         /* length of reads_inflight */
    struct gather gather;              /* when the next barrier may start */
    struct gather wgather;             /* when the next entry may start */

    struct consensus_change *change; /* membership change in progress */
    int assign_due;                  /* 1: change's raft_assign is due at the
                                        next check */
    struct consensus_seen seen[CONSENSUS_SEEN_MAX]; /* leader's contacts */

    uint64_t elections;              /* terms this node campaigned in */
    uint64_t leader_changes;         /* changes to a new non-zero leader id */
    uint64_t barriers;               /* raft_barrier calls issued */
    uint64_t barrier_reads;          /* reads those barriers served */
    uint64_t entries;                /* raft_apply calls accepted */
    uint64_t commands;               /* commands in those entries */

    struct consensus_propose purge_req; /* internal PURGE proposal */
    int purge_busy;                  /* 1 while purge_req is pending */

    int last_state;                  /* raft_state seen at the last poll */
    uint64_t last_term;              /* raft term seen at the last poll */
    uint64_t last_leader;            /* leader id seen at the last poll */

    int closing;                     /* close started: refuse new work */
    int raft_closed;                 /* raft close callback has run */
    int destroyed;                   /* consensus_destroy has run */
    unsigned handles_open;           /* our uv handles not yet closed */
    void (*close_cb)(void *data);    /* user close callback, may be NULL */
    void *close_data;                /* its argument */
};

const char *consensus_strerror(int status)
{
    switch (status) {
#define CONSENSUS_TEXT(name, code, text) \
    case code:                           \
        return text;
        CONSENSUS_ERRORS(CONSENSUS_TEXT)
#undef CONSENSUS_TEXT
        default:
            return "unknown error";
    }
}

static uint64_t consensus_now_ms(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) {
        return 0;
    }
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static const char *consensus_state_name(int state)
{
    switch (state) {
        case RAFT_FOLLOWER: return "follower";
        case RAFT_CANDIDATE: return "candidate";
        case RAFT_LEADER: return "leader";
        default: return "unavailable";
    }
}

/* Map a libraft request status to ours. While closing every failure is a
 * shutdown: libraft reports LEADERSHIPLOST for requests it drops on close. */
static int consensus_map_raft(const struct consensus *c, int rv)
{
    if (rv == 0) {
        return CONSENSUS_OK;
    }
    if (c->closing) {
        return CONSENSUS_ESHUTDOWN;
    }
    switch (rv) {
        case RAFT_NOTLEADER: return CONSENSUS_ENOTLEADER;
        case RAFT_LEADERSHIPLOST: return CONSENSUS_ELEADERSHIP;
        case RAFT_SHUTDOWN:
        case RAFT_CANCELED: return CONSENSUS_ESHUTDOWN;
        case RAFT_NOMEM: return CONSENSUS_ENOMEM;
        default: return CONSENSUS_EIO;
    }
}

/* --- Proposals -------------------------------------------------------- */

static void consensus_batch_free(struct consensus_batch *b)
{
    buf_free(&b->entry);
    free(b);
}

/* Complete every proposer of a detached batch with status (results only when
 * status is OK), then free the batch. */
static void consensus_batch_complete(struct consensus *c,
                                     struct consensus_batch *b, int status,
                                     uint64_t index)
{
    struct consensus_propose *p = b->head;

    c->pending -= b->count;
    while (p != NULL) {
        struct consensus_propose *next = p->next;
        p->next = NULL;
        p->batch = NULL;
        if (status != CONSENSUS_OK) {
            p->cb(p, status, NULL);
        } else {
            struct storage_result r;
            consensus_fsm_result(&c->fsm, index, p->slot, &r);
            p->cb(p, CONSENSUS_OK, &r);
        }
        p = next;
    }
    consensus_batch_free(b);
}

static void consensus_inflight_remove(struct consensus *c,
                                      struct consensus_batch *b)
{
    struct consensus_batch **pp = &c->inflight;

    while (*pp != NULL && *pp != b) {
        pp = &(*pp)->next;
    }
    if (*pp == b) {
        *pp = b->next;
    }
    b->next = NULL;
}

static void consensus_apply_cb(struct raft_apply *req, int status,
                               void *result)
{
    struct consensus_batch *b = req->data;
    struct consensus *c = b->c;

    (void)result; /* always NULL: results stay in the FSM (fsm.h) */
    consensus_inflight_remove(c, b);
    consensus_batch_complete(c, b, consensus_map_raft(c, status), req->index);
}

/* Write the leader's time into the entry header (command.h layout). */
static void consensus_entry_stamp(struct buf *entry, uint64_t ms)
{
    unsigned i;

    for (i = 0; i < 8; i++) {
        entry->base[CONSENSUS_TIME_OFFSET + i] = (char)(uint8_t)(ms >> (8 * i));
    }
}

/* Submit one detached batch to raft. */
static void consensus_batch_submit(struct consensus *c,
                                   struct consensus_batch *b)
{
    struct raft_buffer rb;
    int rv;

    consensus_entry_stamp(&b->entry, consensus_now_ms());
    c->entry_hint = b->entry.len < CONSENSUS_ENTRY_HINT_MAX
                        ? b->entry.len
                        : CONSENSUS_ENTRY_HINT_MAX;
    if (consensus_entry_pad(b->entry.base, b->entry.len, &rb) != 0) {
        consensus_batch_complete(c, b, CONSENSUS_ENOMEM, 0);
        return;
    }
    buf_free(&b->entry);

    b->req.data = b;
    b->committed = 0;
    b->next = c->inflight;
    c->inflight = b;
    rv = raft_apply(&c->raft, &b->req, &rb, 1, consensus_apply_cb);
    if (rv != 0) {
        raft_free(rb.base);
        consensus_inflight_remove(c, b);
        consensus_batch_complete(c, b, consensus_map_raft(c, rv), 0);
        return;
    }
    c->entries++;
    c->commands += b->count;
}

/* In-flight batches whose entry is not known to be committed yet. */
static unsigned consensus_uncommitted(const struct consensus *c)
{
    const struct consensus_batch *b;
    unsigned n = 0;

    for (b = c->inflight; b != NULL; b = b->next) {
        n += !b->committed;
    }
    return n;
}

/* Commands in the queued batches (the gather's queue). */
static unsigned consensus_queued_commands(const struct consensus *c)
{
    const struct consensus_batch *b;
    unsigned n = 0;

    for (b = c->queued; b != NULL; b = b->next) {
        n += b->count;
    }
    return n;
}

/* Submit the oldest queued batch when no entry in flight is still to be
 * committed. With one uncommitted entry at a time, the commands that arrive
 * while it commits gather into the next: measured on 3 nodes at 64
 * connections, 31.6 commands per entry instead of 17.6, the same writes/s
 * and half the p99 (10.5–10.9 ms against 19–51 ms); 10 KB values showed no
 * difference. The next entry goes out once the previous one is committed
 * (consensus_committed, called before the leader applies it) and the write
 * gather allows: at once after a wait that ran out, so that the peers
 * replicate it while the leader applies and answers; otherwise when as
 * many commands are queued as the last round had (consensus/gather.h). The
 * loop goes on past a batch that fails at once or is empty. */
static void consensus_flush_batches(struct consensus *c)
{
    while (c->queued != NULL && consensus_uncommitted(c) == 0 &&
           gather_ready(&c->wgather, consensus_queued_commands(c))) {
        struct consensus_batch *b = c->queued;
        c->queued = b->next;
        if (c->queued == NULL) {
            c->queued_tail = NULL;
        }
        b->next = NULL;
        if (b->count == 0) {
            consensus_batch_free(b);
            continue;
        }
        consensus_batch_submit(c, b);
    }
}

/* The FSM's committed hook: the entry at index is about to be applied, so
 * it and every entry before it are committed. When that leaves no entry in
 * flight uncommitted, the next batch is submitted now, before the apply:
 * raft_apply from within libraft's apply loop is safe in 0.15 (the loop
 * looks each entry up again by index, and the FSM copied its buffer). */
static void consensus_committed(void *arg, uint64_t index)
{
    struct consensus *c = arg;
    struct consensus_batch *b;
    unsigned served = 0; /* submitted batches are never empty */

    for (b = c->inflight; b != NULL; b = b->next) {
        if (!b->committed && b->req.index <= index) {
            b->committed = 1;
            served += b->count;
        }
    }
    if (served == 0) {
        return;
    }
    gather_ended(&c->wgather, served, consensus_queued_commands(c));
    if (!c->closing) {
        consensus_flush_batches(c);
    }
}

/* Return the open batch with room for a command of len bytes, opening a new
 * one when there is none or it is full; NULL when out of memory. */
static struct consensus_batch *consensus_batch_for(struct consensus *c,
                                                   size_t len)
{
    struct consensus_batch *b = c->queued_tail;

    if (b != NULL && b->count < CONSENSUS_BATCH_MAX_CMDS &&
        b->entry.len + CONSENSUS_CMD_LEN_SIZE + len <=
            CONSENSUS_BATCH_MAX_BYTES) {
        return b;
    }
    b = calloc(1, sizeof *b);
    if (b == NULL) {
        return NULL;
    }
    b->c = c;
    /* time_ms is stamped when the batch is submitted. */
    if (buf_reserve(&b->entry, c->entry_hint) != 0 ||
        cmd_entry_begin(&b->entry, 0) != 0) {
        consensus_batch_free(b);
        return NULL;
    }
    if (c->queued_tail == NULL) {
        c->queued = b;
    } else {
        c->queued_tail->next = b;
    }
    c->queued_tail = b;
    return b;
}

int consensus_propose(struct consensus *c, struct consensus_propose *req,
                      const void *cmd, size_t len)
{
    struct consensus_batch *b;

    if (c->closing) {
        return CONSENSUS_ESHUTDOWN;
    }
    if (req == NULL || req->cb == NULL || cmd == NULL || len == 0 ||
        len > CONSENSUS_BATCH_MAX_BYTES - CMD_ENTRY_HEADER_LEN -
                  CONSENSUS_CMD_LEN_SIZE) {
        return CONSENSUS_EINVAL;
    }
    if (raft_state(&c->raft) != RAFT_LEADER) {
        return CONSENSUS_ENOTLEADER;
    }
    if (c->pending >= c->max_pending) {
        return CONSENSUS_EBUSY;
    }
    b = consensus_batch_for(c, len);
    if (b == NULL) {
        return CONSENSUS_ENOMEM;
    }
    if (cmd_entry_add(&b->entry, cmd, len) != 0) {
        /* A batch opened just for this command stays empty and is harmless:
         * the flush submits only batches with commands. */
        return CONSENSUS_ENOMEM;
    }
    req->slot = b->count;
    req->batch = b;
    req->next = NULL;
    if (b->tail == NULL) {
        b->head = req;
    } else {
        b->tail->next = req;
    }
    b->tail = req;
    b->count++;
    c->pending++;
    return CONSENSUS_OK;
}

/* --- Reads ------------------------------------------------------------- */

static void consensus_reads_complete(struct consensus_read *r, int status)
{
    while (r != NULL) {
        struct consensus_read *next = r->next;
        r->next = NULL;
        r->cb(r, status);
        r = next;
    }
}

static void consensus_barrier_cb(struct raft_barrier *req, int status)
{
    struct consensus *c = req->data;
    struct consensus_read *served = c->reads_inflight;

    c->reads_inflight = NULL;
    c->barrier_busy = 0;
    gather_ended(&c->gather, c->reads_inflight_n, c->reads_queued);
    c->reads_inflight_n = 0;
    consensus_reads_complete(served, consensus_map_raft(c, status));
}

static void consensus_flush_reads(struct consensus *c);

static void consensus_wgather_flush(struct gather *g)
{
    struct consensus *c = CONTAINER_OF(g, struct consensus, wgather);

    if (!c->closing) {
        consensus_flush_batches(c);
    }
}

static void consensus_gather_flush(struct gather *g)
{
    consensus_flush_reads(CONTAINER_OF(g, struct consensus, gather));
}

static void consensus_flush_reads(struct consensus *c)
{
    int rv;

    if (c->closing || c->barrier_busy || c->reads == NULL ||
        !gather_ready(&c->gather, c->reads_queued)) {
        return;
    }
    c->reads_inflight = c->reads;
    c->reads_inflight_n = c->reads_queued;
    c->reads = NULL;
    c->reads_tail = NULL;
    c->reads_queued = 0;
    c->barrier.data = c;
    c->barrier_busy = 1;
    rv = raft_barrier(&c->raft, &c->barrier, consensus_barrier_cb);
    if (rv != 0) {
        struct consensus_read *failed = c->reads_inflight;
        c->reads_inflight = NULL;
        c->reads_inflight_n = 0;
        c->barrier_busy = 0;
        consensus_reads_complete(failed, consensus_map_raft(c, rv));
        return;
    }
    c->barriers++;
    c->barrier_reads += c->reads_inflight_n;
}

int consensus_barrier(struct consensus *c, struct consensus_read *req)
{
    if (c->closing) {
        return CONSENSUS_ESHUTDOWN;
    }
    if (req == NULL || req->cb == NULL) {
        return CONSENSUS_EINVAL;
    }
    if (raft_state(&c->raft) != RAFT_LEADER) {
        return CONSENSUS_ENOTLEADER;
    }
    req->next = NULL;
    if (c->reads_tail == NULL) {
        c->reads = req;
    } else {
        c->reads_tail->next = req;
    }
    c->reads_tail = req;
    c->reads_queued++;
    return CONSENSUS_OK;
}

/* --- Membership --------------------------------------------------------- */

static void consensus_poll_contacts(struct consensus *c);

/* consensus_change.step values: add uses the first three (see consensus.h). */
enum {
    CONSENSUS_STEP_ADDING = 0,      /* raft_add in flight */
    CONSENSUS_STEP_CATCHING_UP = 1, /* raft_assign(VOTER) due or catching up */
    CONSENSUS_STEP_PROMOTING = 2,   /* voter configuration entry in flight */
    CONSENSUS_STEP_REMOVING = 3,    /* raft_remove in flight */
    CONSENSUS_STEP_TRANSFERRING = 4 /* raft_transfer in flight */
};

static int consensus_map_change(const struct consensus *c, int rv)
{
    if (rv == 0 || c->closing) {
        return consensus_map_raft(c, rv);
    }
    switch (rv) {
        case RAFT_DUPLICATEID:
        case RAFT_DUPLICATEADDRESS: return CONSENSUS_EEXIST;
        case RAFT_CANTCHANGE: return CONSENSUS_ECHANGING;
        case RAFT_NOTFOUND:
        case RAFT_BADID: return CONSENSUS_ENOTFOUND;
        default: return consensus_map_raft(c, rv);
    }
}

/* Detach the change from c, free its libraft request, then run its
 * callback (which may free req). */
static void consensus_change_complete(struct consensus *c,
                                      struct consensus_change *req, int status)
{
    if (c->change == req) {
        c->change = NULL;
        c->assign_due = 0;
    }
    free(req->raft_req);
    req->raft_req = NULL;
    req->c = NULL;
    req->cb(req, status);
}

static void consensus_raft_change_cb(struct raft_change *rc, int status)
{
    struct consensus_change *req = rc->data;
    struct consensus *c = req->c;

    if (status == 0 && req->step == CONSENSUS_STEP_ADDING && !c->closing) {
        /* In the configuration as a spare: promote it at the next check. */
        LOGI("raft server added", " id=%llu role=spare",
             (unsigned long long)req->id);
        req->step = CONSENSUS_STEP_CATCHING_UP;
        c->assign_due = 1;
        return;
    }
    if (status == 0) {
        LOGI("raft configuration changed", " id=%llu step=%d",
             (unsigned long long)req->id, req->step);
    } else {
        LOGW("raft configuration change failed", " id=%llu step=%d err=\"%s\"",
             (unsigned long long)req->id, req->step, raft_strerror(status));
    }
    consensus_change_complete(c, req, consensus_map_change(c, status));
}

/* Ask libraft to catch the server up and make it a voter. */
static int consensus_change_assign(struct consensus *c,
                                   struct consensus_change *req)
{
    int rv;

    req->step = CONSENSUS_STEP_CATCHING_UP;
    rv = raft_assign(&c->raft, req->raft_req, req->id, RAFT_VOTER,
                     consensus_raft_change_cb);
    return consensus_map_change(c, rv);
}

/* The check's part of an add: issue the assign the add callback left due,
 * and note when catch-up has ended and the voter entry is in flight. */
static void consensus_change_poll(struct consensus *c)
{
    struct consensus_change *req = c->change;
    int rv;

    if (req == NULL) {
        return;
    }
    if (c->assign_due) {
        c->assign_due = 0;
        rv = consensus_change_assign(c, req);
        if (rv != CONSENSUS_OK) {
            /* Leadership went between add and assign: the server stays a
             * spare, and adding it again completes the promotion. */
            consensus_change_complete(
                c, req, rv == CONSENSUS_ENOTLEADER ? CONSENSUS_ELEADERSHIP : rv);
        }
        return;
    }
    if (req->step == CONSENSUS_STEP_CATCHING_UP &&
        raft_state(&c->raft) == RAFT_LEADER &&
        c->raft.leader_state.promotee_id != req->id) {
        req->step = CONSENSUS_STEP_PROMOTING;
    }
}

/* Common checks of the three calls; on success req is c's change. */
static int consensus_change_begin(struct consensus *c,
                                  struct consensus_change *req, uint64_t id,
                                  int step, size_t raft_req_size)
{
    if (c->closing) {
        return CONSENSUS_ESHUTDOWN;
    }
    if (req == NULL || req->cb == NULL) {
        return CONSENSUS_EINVAL;
    }
    if (raft_state(&c->raft) != RAFT_LEADER) {
        return CONSENSUS_ENOTLEADER;
    }
    if (c->change != NULL || c->raft.transfer != NULL ||
        c->raft.configuration_uncommitted_index != 0) {
        return CONSENSUS_ECHANGING;
    }
    req->raft_req = calloc(1, raft_req_size);
    if (req->raft_req == NULL) {
        return CONSENSUS_ENOMEM;
    }
    req->c = c;
    req->id = id;
    req->step = step;
    return CONSENSUS_OK;
}

/* Undo consensus_change_begin after the libraft call refused. */
static int consensus_change_abort(struct consensus_change *req, int status)
{
    free(req->raft_req);
    req->raft_req = NULL;
    req->c = NULL;
    return status;
}

int consensus_add_server(struct consensus *c, struct consensus_change *req,
                         uint64_t id, const char *raft_addr)
{
    const struct raft_configuration *conf = &c->raft.configuration;
    const struct raft_server *present = NULL;
    struct raft_change *rc;
    unsigned i;
    int rv;

    if (id == 0 || raft_addr == NULL || raft_addr[0] == '\0' ||
        strlen(raft_addr) >= sizeof ((struct consensus_server *)0)->raft_addr) {
        return c->closing ? CONSENSUS_ESHUTDOWN : CONSENSUS_EINVAL;
    }
    rv = consensus_change_begin(c, req, id, CONSENSUS_STEP_ADDING,
                                sizeof *rc);
    if (rv != CONSENSUS_OK) {
        return rv;
    }
    for (i = 0; i < conf->n; i++) {
        const struct raft_server *s = &conf->servers[i];
        if (s->id == id) {
            present = s;
        } else if (strcmp(s->address, raft_addr) == 0) {
            return consensus_change_abort(req, CONSENSUS_EEXIST);
        }
    }
    if (present != NULL &&
        (present->role == RAFT_VOTER || strcmp(present->address, raft_addr) != 0)) {
        return consensus_change_abort(req, CONSENSUS_EEXIST);
    }
    rc = req->raft_req;
    rc->data = req;
    if (present != NULL) {
        /* Left a non-voter by an earlier attempt: finish its promotion. */
        rv = consensus_change_assign(c, req);
    } else {
        rv = consensus_map_change(
            c, raft_add(&c->raft, rc, id, raft_addr, consensus_raft_change_cb));
    }
    if (rv != CONSENSUS_OK) {
        return consensus_change_abort(req, rv);
    }
    c->change = req;
    LOGI("raft adding server", " id=%llu addr=%s promote_only=%d",
         (unsigned long long)id, raft_addr, present != NULL);
    return CONSENSUS_OK;
}

int consensus_remove_server(struct consensus *c, struct consensus_change *req,
                            uint64_t id)
{
    struct raft_change *rc;
    int rv;

    rv = consensus_change_begin(c, req, id, CONSENSUS_STEP_REMOVING,
                                sizeof *rc);
    if (rv != CONSENSUS_OK) {
        return rv;
    }
    rc = req->raft_req;
    rc->data = req;
    rv = consensus_map_change(
        c, raft_remove(&c->raft, rc, id, consensus_raft_change_cb));
    if (rv != CONSENSUS_OK) {
        return consensus_change_abort(req, rv);
    }
    c->change = req;
    LOGI("raft removing server", " id=%llu", (unsigned long long)id);
    return CONSENSUS_OK;
}

/* libraft calls this when the target became leader, when the transfer timed
 * out (one election timeout) or on close; it carries no status. */
static void consensus_transfer_cb(struct raft_transfer *rt)
{
    struct consensus_change *req = rt->data;
    struct consensus *c = req->c;
    raft_id leader = 0;
    const char *addr = NULL;
    int status;

    raft_leader(&c->raft, &leader, &addr);
    if (c->closing) {
        status = CONSENSUS_ESHUTDOWN;
    } else if (raft_state(&c->raft) != RAFT_LEADER && leader == rt->id) {
        status = CONSENSUS_OK;
        LOGI("raft leadership transferred", " to=%llu",
             (unsigned long long)rt->id);
    } else {
        status = CONSENSUS_EIO;
        LOGW("raft leadership transfer timed out", " to=%llu",
             (unsigned long long)rt->id);
    }
    consensus_change_complete(c, req, status);
}

int consensus_transfer(struct consensus *c, struct consensus_change *req,
                       uint64_t id)
{
    struct raft_transfer *rt;
    int rv;

    if (id != 0 && id == c->raft.id) {
        return c->closing ? CONSENSUS_ESHUTDOWN : CONSENSUS_EINVAL;
    }
    rv = consensus_change_begin(c, req, id, CONSENSUS_STEP_TRANSFERRING,
                                sizeof *rt);
    if (rv != CONSENSUS_OK) {
        return rv;
    }
    rt = req->raft_req;
    rt->data = req;
    rv = consensus_map_change(
        c, raft_transfer(&c->raft, rt, id, consensus_transfer_cb));
    if (rv != CONSENSUS_OK) {
        return consensus_change_abort(req, rv);
    }
    req->id = rt->id; /* the transferee libraft picked when id was 0 */
    c->change = req;
    LOGI("raft transferring leadership", " to=%llu",
         (unsigned long long)req->id);
    return CONSENSUS_OK;
}

static int consensus_map_role(int role)
{
    switch (role) {
        case RAFT_VOTER: return CONSENSUS_VOTER;
        case RAFT_STANDBY: return CONSENSUS_STANDBY;
        default: return CONSENSUS_SPARE;
    }
}

/* 1 when the leader saw a message from server id within the last election
 * timeout. */
static int consensus_reachable(struct consensus *c, unsigned i)
{
    uint64_t id = c->raft.configuration.servers[i].id;
    uint64_t now = uv_now(c->loop);
    unsigned k;

    if (c->raft.leader_state.progress[i].recent_recv) {
        return 1;
    }
    for (k = 0; k < CONSENSUS_SEEN_MAX; k++) {
        if (c->seen[k].id == id) {
            return now - c->seen[k].ms <= c->raft.election_timeout;
        }
    }
    return 0;
}

int consensus_servers(struct consensus *c, struct consensus_server *out,
                      unsigned cap, unsigned *n)
{
    const struct raft_configuration *conf = &c->raft.configuration;
    int leading = raft_state(&c->raft) == RAFT_LEADER &&
                  c->raft.leader_state.progress != NULL;
    raft_id leader = 0;
    const char *addr = NULL;
    unsigned i;

    if (n == NULL || (out == NULL && cap > 0)) {
        return CONSENSUS_EINVAL;
    }
    *n = 0;
    if (c->closing) {
        return CONSENSUS_ESHUTDOWN;
    }
    consensus_poll_contacts(c);
    raft_leader(&c->raft, &leader, &addr);
    *n = conf->n;
    for (i = 0; i < conf->n && i < cap; i++) {
        const struct raft_server *s = &conf->servers[i];
        struct consensus_server *o = &out[i];

        memset(o, 0, sizeof *o);
        o->id = s->id;
        snprintf(o->raft_addr, sizeof o->raft_addr, "%s",
                 s->address != NULL ? s->address : "");
        o->role = consensus_map_role(s->role);
        if (s->id == c->raft.id) {
            o->reachable = 1;
            o->match_index = leading ? c->raft.last_stored : 0;
        } else if (leading) {
            o->reachable = consensus_reachable(c, i);
            o->match_index = c->raft.leader_state.progress[i].match_index;
        } else {
            o->reachable = leader != 0 && s->id == leader ? 1 : -1;
        }
    }
    return CONSENSUS_OK;
}

/* --- Loop hooks -------------------------------------------------------- */

/* Record, on the leader, which servers answered within the current election
 * timeout window (see the file header). */
static void consensus_poll_contacts(struct consensus *c)
{
    const struct raft_configuration *conf = &c->raft.configuration;
    uint64_t now = uv_now(c->loop);
    unsigned i;
    unsigned k;

    if (raft_state(&c->raft) != RAFT_LEADER ||
        c->raft.leader_state.progress == NULL) {
        return;
    }
    for (i = 0; i < conf->n; i++) {
        struct consensus_seen *slot = NULL;
        if (!c->raft.leader_state.progress[i].recent_recv) {
            continue;
        }
        for (k = 0; k < CONSENSUS_SEEN_MAX; k++) {
            if (c->seen[k].id == conf->servers[i].id) {
                slot = &c->seen[k];
                break;
            }
            if (slot == NULL && c->seen[k].id == 0) {
                slot = &c->seen[k];
            }
        }
        if (slot == NULL) {
            /* Table full: reuse the stalest slot. */
            slot = &c->seen[0];
            for (k = 1; k < CONSENSUS_SEEN_MAX; k++) {
                if (c->seen[k].ms < slot->ms) {
                    slot = &c->seen[k];
                }
            }
        }
        slot->id = conf->servers[i].id;
        slot->ms = now;
    }
}

/* Count and log role and leader changes, polled once per turn and per purge
 * tick. */
static void consensus_poll_state(struct consensus *c)
{
    int state = raft_state(&c->raft);
    raft_id leader = 0;
    const char *addr = NULL;

    raft_leader(&c->raft, &leader, &addr);
    /* An election this node started shows as a new term in which it voted
     * for itself: a lone voter goes from follower to leader within one
     * libraft call, never showing the candidate state to a poll. */
    if (c->raft.current_term != c->last_term) {
        if (c->raft.voted_for == c->raft.id) {
            c->elections++;
        }
        c->last_term = c->raft.current_term;
    }
    if (state != c->last_state) {
        LOGI("raft role changed", " from=%s to=%s term=%llu",
             consensus_state_name(c->last_state), consensus_state_name(state),
             (unsigned long long)c->raft.current_term);
        if (state == RAFT_LEADER) {
            /* A new term: forget contacts seen under an earlier one. */
            memset(c->seen, 0, sizeof c->seen);
        }
        c->last_state = state;
    }
    consensus_poll_contacts(c);
    if (leader != c->last_leader) {
        if (leader != 0) {
            c->leader_changes++;
            LOGI("raft leader known", " leader=%llu addr=%s term=%llu",
                 (unsigned long long)leader, addr != NULL ? addr : "-",
                 (unsigned long long)c->raft.current_term);
        } else {
            LOGW("raft leader lost", " term=%llu",
                 (unsigned long long)c->raft.current_term);
        }
        c->last_leader = leader;
    }
}

static void consensus_check_cb(uv_check_t *check)
{
    struct consensus *c = check->data;

    if (c->closing) {
        return;
    }
    consensus_poll_state(c);
    consensus_change_poll(c);
    consensus_flush_batches(c);
    consensus_flush_reads(c);
}

static void consensus_purge_cb(struct consensus_propose *req, int status,
                               const struct storage_result *result)
{
    struct consensus *c = req->data;

    c->purge_busy = 0;
    if (status != CONSENSUS_OK) {
        LOGW("purge not committed", " err=\"%s\"", consensus_strerror(status));
    } else if (result->status != STORAGE_OK) {
        LOGW("purge failed", " index=%llu err=\"%s\"",
             (unsigned long long)result->index,
             storage_strerror(result->status));
    } else {
        LOGD("purge applied", " index=%llu",
             (unsigned long long)result->index);
    }
}

static void consensus_purge_timer_cb(uv_timer_t *timer)
{
    struct consensus *c = timer->data;
    struct cmd cmd;
    struct buf enc = BUF_INIT;
    uint64_t t_ms = 0;
    int rv;

    if (c->closing) {
        return;
    }
    consensus_poll_state(c);
    if (c->purge_busy || raft_state(&c->raft) != RAFT_LEADER) {
        return;
    }
    if (storage_next_expiry(c->storage, &t_ms) != STORAGE_OK ||
        t_ms > consensus_now_ms()) {
        return;
    }
    memset(&cmd, 0, sizeof cmd);
    cmd.op = CMD_PURGE;
    cmd.ttl = -1;
    if (cmd_encode(&cmd, &enc) != 0) {
        LOGW("purge not proposed", " err=\"%s\"",
             consensus_strerror(CONSENSUS_ENOMEM));
        buf_free(&enc);
        return;
    }
    c->purge_req.data = c;
    c->purge_req.cb = consensus_purge_cb;
    rv = consensus_propose(c, &c->purge_req, enc.base, enc.len);
    buf_free(&enc);
    if (rv != CONSENSUS_OK) {
        LOGW("purge not proposed", " err=\"%s\"", consensus_strerror(rv));
        return;
    }
    c->purge_busy = 1;
}

/* --- Start and close --------------------------------------------------- */

static void consensus_destroy(struct consensus *c)
{
    void (*cb)(void *data) = c->close_cb;
    void *data = c->close_data;

    /* Defensive: libraft fails every in-flight request on close, so these
     * lists are empty here; whatever is left still gets its one callback. */
    while (c->inflight != NULL) {
        struct consensus_batch *b = c->inflight;
        consensus_inflight_remove(c, b);
        consensus_batch_complete(c, b, CONSENSUS_ESHUTDOWN, 0);
    }
    if (c->barrier_busy) {
        struct consensus_read *r = c->reads_inflight;
        c->reads_inflight = NULL;
        c->barrier_busy = 0;
        consensus_reads_complete(r, CONSENSUS_ESHUTDOWN);
    }
    if (c->change != NULL) {
        consensus_change_complete(c, c->change, CONSENSUS_ESHUTDOWN);
    }
    if (cb != NULL) {
        cb(data);
    }
    consensus_fsm_close(&c->fsm);
}

static void consensus_maybe_destroy(struct consensus *c)
{
    if (c->raft_closed && c->handles_open == 0 && !c->destroyed) {
        c->destroyed = 1;
        consensus_destroy(c);
    }
}

static void consensus_handle_close_cb(uv_handle_t *h)
{
    struct consensus *c = h->data;

    c->handles_open--;
    consensus_maybe_destroy(c);
}

static void consensus_raft_close_cb(struct raft *r)
{
    struct consensus *c = r->data;

    /* A late uvMaybeFireCloseCb returns at "transport data != NULL" instead
     * of closing a second time (see Shutdown above). */
    c->transport.outer.data = &c->transport;
    c->raft_closed = 1;
    consensus_maybe_destroy(c);
}

/* Fail what was never handed to libraft, then close raft and our handles. */
static void consensus_shutdown(struct consensus *c)
{
    struct consensus_read *reads = c->reads;

    c->closing = 1;
    c->reads = NULL;
    c->reads_tail = NULL;
    c->reads_queued = 0;
    while (c->queued != NULL) {
        struct consensus_batch *b = c->queued;
        c->queued = b->next;
        consensus_batch_complete(c, b, CONSENSUS_ESHUTDOWN, 0);
    }
    c->queued_tail = NULL;
    consensus_reads_complete(reads, CONSENSUS_ESHUTDOWN);
    if (c->change != NULL && c->assign_due) {
        /* Between raft_add and raft_assign: libraft holds no request. */
        consensus_change_complete(c, c->change, CONSENSUS_ESHUTDOWN);
    }

    uv_close((uv_handle_t *)&c->check, consensus_handle_close_cb);
    uv_close((uv_handle_t *)&c->purge_timer, consensus_handle_close_cb);
    uv_close((uv_handle_t *)&c->gather.timer, consensus_handle_close_cb);
    uv_close((uv_handle_t *)&c->wgather.timer, consensus_handle_close_cb);
    raft_close(&c->raft, consensus_raft_close_cb);
}

void consensus_free(struct consensus *c)
{
    if (c == NULL) {
        return;
    }
    raft_uv_close(&c->io);
    consensus_transport_close(&c->transport);
    free(c);
}

void consensus_close(struct consensus *c, void (*cb)(void *data), void *data)
{
    if (c == NULL || c->closing) {
        return;
    }
    LOGI("raft closing", " applied=%llu pending=%u",
         (unsigned long long)raft_last_applied(&c->raft), c->pending);
    c->close_cb = cb;
    c->close_data = data;
    consensus_shutdown(c);
}

static int consensus_bootstrap(struct consensus *c,
                               const struct consensus_config *cfg,
                               int *bootstrapped)
{
    struct raft_configuration conf;
    unsigned i;
    int self = cfg->n_members == 0;
    int rv = 0;

    *bootstrapped = 0;
    raft_configuration_init(&conf);
    if (cfg->n_members == 0) {
        rv = raft_configuration_add(&conf, cfg->id, cfg->raft_addr,
                                    RAFT_VOTER);
    }
    for (i = 0; rv == 0 && i < cfg->n_members; i++) {
        if (cfg->members[i].id == cfg->id) {
            self = 1;
        }
        rv = raft_configuration_add(&conf, cfg->members[i].id,
                                    cfg->members[i].raft_addr, RAFT_VOTER);
    }
    if (rv == 0 && self && !cfg->join) {
        rv = raft_bootstrap(&c->raft, &conf);
        if (rv == 0) {
            *bootstrapped = 1;
        } else if (rv == RAFT_CANTBOOTSTRAP) {
            rv = 0;
        }
    }
    raft_configuration_close(&conf);
    return rv;
}

/* Completion of the initial snapshot put: status, or -1 while pending. */
static void consensus_initial_put_cb(struct raft_io_snapshot_put *req,
                                     int status)
{
    *(int *)req->data = status;
}

/* --restore: write the image as the snapshot at initial_index (term 1,
 * configuration: this node alone, voter) through raft_uv itself, before
 * raft_start loads it, so the log of the new cluster continues after the
 * backup's index and every index, ETag and X-REQUEST-ID of the backup keeps
 * its meaning. raft_uv writes snapshots on the thread pool: the loop runs
 * here, at start-up, until the put completes (nothing else is on the loop
 * yet). */
static int consensus_put_initial_snapshot(struct consensus *c,
                                          const struct consensus_config *cfg)
{
    struct raft_snapshot snap;
    struct raft_buffer buf;
    struct raft_io_snapshot_put put;
    int status = -1;
    int rv;

    memset(&snap, 0, sizeof snap);
    raft_configuration_init(&snap.configuration);
    rv = raft_configuration_add(&snap.configuration, cfg->id, cfg->raft_addr,
                                RAFT_VOTER);
    if (rv != 0) {
        goto out;
    }
    rv = c->io.set_term(&c->io, 1);
    if (rv != 0) {
        goto out;
    }
    buf.base = (void *)cfg->initial_snapshot;
    buf.len = cfg->initial_snapshot_len;
    snap.index = cfg->initial_index;
    snap.term = 1;
    snap.configuration_index = cfg->initial_index;
    snap.bufs = &buf;
    snap.n_bufs = 1;
    put.data = &status;
    rv = c->io.snapshot_put(&c->io, 0, &put, &snap, consensus_initial_put_cb);
    if (rv != 0) {
        goto out;
    }
    while (status == -1) {
        uv_run(c->loop, UV_RUN_ONCE);
    }
    rv = status;
    if (rv == 0) {
        LOGI("raft initial snapshot written", " index=%llu bytes=%zu",
             (unsigned long long)cfg->initial_index, buf.len);
    }
out:
    raft_configuration_close(&snap.configuration);
    return rv;
}

static int consensus_map_start(int rv)
{
    return rv == RAFT_NOMEM ? CONSENSUS_ENOMEM : CONSENSUS_EIO;
}

int consensus_start(struct consensus **out, const struct consensus_config *cfg,
                    char *errmsg, size_t errmsg_len)
{
    struct consensus *c;
    unsigned threshold;
    unsigned stagger;
    int bootstrapped = 0;
    int rv;

    *out = NULL;
    if (errmsg != NULL && errmsg_len > 0) {
        errmsg[0] = '\0';
    }
    if (cfg == NULL || cfg->loop == NULL || cfg->storage == NULL ||
        cfg->id == 0 || cfg->raft_addr == NULL || cfg->data_dir == NULL ||
        (cfg->n_members > 0 && cfg->members == NULL)) {
        snprintf(errmsg, errmsg_len, "consensus: invalid configuration");
        return CONSENSUS_EINVAL;
    }
    c = calloc(1, sizeof *c);
    if (c == NULL) {
        snprintf(errmsg, errmsg_len, "consensus: out of memory");
        return CONSENSUS_ENOMEM;
    }
    c->loop = cfg->loop;
    c->storage = cfg->storage;
    c->max_pending = cfg->max_pending != 0 ? cfg->max_pending
                                           : CONSENSUS_DEFAULT_MAX_PENDING;
    c->purge_interval_ms = cfg->purge_interval_ms != 0
                               ? cfg->purge_interval_ms
                               : CONSENSUS_DEFAULT_PURGE_MS;
    c->last_state = RAFT_UNAVAILABLE;

    if (mkdir(cfg->data_dir, 0700) != 0 && errno != EEXIST) {
        snprintf(errmsg, errmsg_len, "raft data dir %s: %s", cfg->data_dir,
                 strerror(errno));
        rv = CONSENSUS_EIO;
        goto err_after_alloc;
    }
    rv = consensus_transport_init(&c->transport, c->loop);
    if (rv != 0) {
        snprintf(errmsg, errmsg_len, "raft transport: %s", raft_strerror(rv));
        rv = consensus_map_start(rv);
        goto err_after_alloc;
    }
    rv = raft_uv_init(&c->io, c->loop, cfg->data_dir, &c->transport.outer);
    if (rv != 0) {
        snprintf(errmsg, errmsg_len, "raft storage %s: %s", cfg->data_dir,
                 c->io.errmsg);
        rv = consensus_map_start(rv);
        goto err_after_transport_init;
    }
    /* raft_uv 0.15 implements async_work (uv_queue_work) but still labels
     * its io version 1, and raft_init refuses an async-snapshot FSM on a
     * version-1 io. The method is there, so say so. */
    if (c->io.async_work != NULL && c->io.version < 2) {
        c->io.version = 2;
    }
    consensus_fsm_init(&c->fsm, c->storage, true);
    c->fsm.committed = consensus_committed;
    c->fsm.committed_arg = c;
    c->fsm.raft = &c->raft;
    rv = raft_init(&c->raft, &c->io, &c->fsm.fsm, cfg->id, cfg->raft_addr);
    if (rv != 0) {
        snprintf(errmsg, errmsg_len, "raft init: %s", raft_errmsg(&c->raft));
        rv = consensus_map_start(rv);
        goto err_after_io_init;
    }
    c->raft.data = c;
    raft_set_election_timeout(&c->raft, cfg->election_timeout_ms != 0
                                            ? cfg->election_timeout_ms
                                            : CONSENSUS_DEFAULT_ELECTION_MS);
    raft_set_heartbeat_timeout(&c->raft, cfg->heartbeat_ms != 0
                                             ? cfg->heartbeat_ms
                                             : CONSENSUS_DEFAULT_HEARTBEAT_MS);
    /* Every node of a cluster applies the same log, so with one threshold
     * they all snapshot at the same indexes, at the same moment: three
     * forked children serializing the whole database and three image
     * writes at once, which starved the nodes' loops of CPU for over
     * 100 ms at 1,000,000 properties (docs/performance.md, eleventh run).
     * Each node's first snapshot comes a third of the threshold later per
     * id (modulo 3), and from then on every threshold entries, so the
     * nodes keep their phases apart. */
    threshold = cfg->snapshot_threshold != 0
                    ? cfg->snapshot_threshold
                    : CONSENSUS_DEFAULT_SNAPSHOT_THRESHOLD;
    stagger = (unsigned)((cfg->id - 1) % 3) * (threshold / 3);
    c->fsm.snapshot_threshold = threshold;
    raft_set_snapshot_threshold(&c->raft, stagger <= UINT_MAX - threshold
                                              ? threshold + stagger
                                              : UINT_MAX);
    raft_set_snapshot_trailing(&c->raft,
                               cfg->snapshot_trailing != 0
                                   ? cfg->snapshot_trailing
                                   : CONSENSUS_DEFAULT_SNAPSHOT_TRAILING);
    /* A follower busy taking or installing a snapshot drops an
     * InstallSnapshot without answering (replicationInstallSnapshot in
     * libraft 0.15: "the leader will eventually retry"); the retry comes
     * after this timeout, whose 30 s default left a restarted node behind
     * for half a minute whenever its own snapshot coincided. */
    raft_set_install_snapshot_timeout(
        &c->raft, cfg->install_snapshot_timeout_ms != 0
                      ? cfg->install_snapshot_timeout_ms
                      : CONSENSUS_DEFAULT_INSTALL_SNAPSHOT_MS);
    raft_set_pre_vote(&c->raft, true);

    /* From here on, failures close raft on the loop: the object frees itself
     * the next time the loop runs. */
    uv_check_init(c->loop, &c->check);
    c->check.data = c;
    uv_timer_init(c->loop, &c->purge_timer);
    c->purge_timer.data = c;
    gather_init(&c->gather, c->loop, c, consensus_gather_flush);
    gather_init(&c->wgather, c->loop, c, consensus_wgather_flush);
    c->handles_open = 4;

    if (c->raft.heartbeat_timeout >= c->raft.election_timeout) {
        snprintf(errmsg, errmsg_len,
                 "raft: heartbeat %u ms must be below election timeout %u ms",
                 c->raft.heartbeat_timeout, c->raft.election_timeout);
        rv = CONSENSUS_EINVAL;
        goto err_after_raft_init;
    }
    if (cfg->initial_snapshot != NULL) {
        rv = consensus_put_initial_snapshot(c, cfg);
        if (rv != 0) {
            snprintf(errmsg, errmsg_len, "raft initial snapshot: %s",
                     raft_strerror(rv));
            rv = consensus_map_start(rv);
            goto err_after_raft_init;
        }
    } else {
        rv = consensus_bootstrap(c, cfg, &bootstrapped);
    }
    if (rv != 0) {
        snprintf(errmsg, errmsg_len, "raft bootstrap: %s",
                 raft_errmsg(&c->raft)[0] != '\0' ? raft_errmsg(&c->raft)
                                                  : raft_strerror(rv));
        rv = consensus_map_start(rv);
        goto err_after_raft_init;
    }
    rv = raft_start(&c->raft);
    if (rv != 0) {
        snprintf(errmsg, errmsg_len, "raft start: %s (is %s in use?)",
                 raft_errmsg(&c->raft)[0] != '\0' ? raft_errmsg(&c->raft)
                                                  : raft_strerror(rv),
                 cfg->raft_addr);
        rv = consensus_map_start(rv);
        goto err_after_raft_init;
    }
    /* Elections from earlier runs are not this run's; raft_start may have
     * just elected a lone voter, which is. */
    c->last_term = c->raft.current_term;
    if (raft_state(&c->raft) != RAFT_FOLLOWER) {
        c->elections++;
    }
    uv_check_start(&c->check, consensus_check_cb);
    uv_timer_start(&c->purge_timer, consensus_purge_timer_cb,
                   c->purge_interval_ms, c->purge_interval_ms);
    if (bootstrapped) {
        LOGI("raft bootstrapped", " id=%llu members=%u",
             (unsigned long long)cfg->id,
             cfg->n_members != 0 ? cfg->n_members : 1u);
    } else if (raft_last_index(&c->raft) == 0) {
        LOGI("raft waiting to be added", " id=%llu addr=%s",
             (unsigned long long)cfg->id, cfg->raft_addr);
    }
    LOGI("raft started", " id=%llu addr=%s applied=%llu last_index=%llu",
         (unsigned long long)cfg->id, cfg->raft_addr,
         (unsigned long long)raft_last_applied(&c->raft),
         (unsigned long long)raft_last_index(&c->raft));
    consensus_poll_state(c);
    *out = c;
    return CONSENSUS_OK;

err_after_raft_init:
    LOGE("raft start failed", " err=\"%s\"", errmsg != NULL ? errmsg : "");
    consensus_shutdown(c);
    return rv;
err_after_io_init:
    raft_uv_close(&c->io);
err_after_transport_init:
    consensus_transport_close(&c->transport);
err_after_alloc:
    free(c);
    return rv;
}

void consensus_info(struct consensus *c, struct consensus_info *info)
{
    const struct consensus_batch *b;
    raft_id id = 0;
    const char *addr = NULL;

    memset(info, 0, sizeof *info);
    raft_leader(&c->raft, &id, &addr);
    info->is_leader = raft_state(&c->raft) == RAFT_LEADER;
    info->leader_id = id;
    info->leader_addr = addr;
    info->term = c->raft.current_term;
    info->commit_index = c->raft.commit_index;
    info->applied_index = raft_last_applied(&c->raft);
    info->last_index = raft_last_index(&c->raft);
    info->pending = c->pending;
    info->role = consensus_state_name(raft_state(&c->raft));
    info->elections = c->elections;
    info->leader_changes = c->leader_changes;
    info->snapshots_taken = c->fsm.snapshots_taken;
    info->snapshots_installed = c->fsm.snapshots_installed;
    info->snapshot_index = c->fsm.snapshot_index;
    info->barriers = c->barriers;
    info->barrier_reads = c->barrier_reads;
    info->entries = c->entries;
    info->commands = c->commands;
    info->inflight = 0;
    for (b = c->inflight; b != NULL; b = b->next) {
        info->inflight++;
    }
}
