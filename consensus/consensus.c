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
 * Every command proposed during one loop turn is appended to the open batch
 * (struct consensus_batch: an entry in the command.h format plus the list of
 * its proposers with their slot). A batch holds at most
 * CONSENSUS_BATCH_MAX_BYTES and CONSENSUS_BATCH_MAX_CMDS; when full, a new one
 * is opened in the same turn. The uv_check handle runs once per turn, after
 * the I/O callbacks that proposed: it stamps each queued batch with the
 * leader's wall clock and hands it to raft_apply as ONE raft_buffer (a
 * raft_malloc'd copy of the entry: raft_apply takes bufs[0].base on success
 * and leaves it to us on failure, it never frees it on error paths since
 * logDiscard does not destroy entries).
 *
 * Padding. raft_uv writes entry payloads in units of 8 bytes and requires
 * len % 8 == 0 (an assert in uvSegmentBufferAppend that release builds
 * drop; a shorter payload writes a segment that no longer loads). So the
 * raft buffer is the entry followed by up to 7 zero bytes, and apply strips
 * them (consensus_entry_unpad) before storage, whose decoder rejects
 * trailing bytes, sees the entry.
 *
 * Results. libraft 0.15 does not pass the entry index to fsm->apply, but
 * replicationApply() sets last_applied only after the apply returns, so the
 * entry being applied is raft_last_applied() + 1. The apply `result` pointer
 * reaches only a local raft_apply request (on followers nobody takes it and
 * it would leak), so the results of the last applied entry are kept in
 * struct consensus (results, results_n, results_index). applyCommand() calls
 * the request's callback synchronously right after the fsm apply of the same
 * entry, so when the callback sees results_index equal to its request's
 * index, the array holds that entry's outcomes.
 *
 * A bad entry (storage ECORRUPT: header does not parse) is logged and treated
 * as applied with every command failed: storage leaves the state untouched on
 * every replica alike, and a non-zero fsm return would wedge libraft. A
 * resource failure (ENOMEM, EINTERNAL) is returned to libraft instead: the
 * entry is not marked applied and is applied again on the next commit
 * advance or restart, so replicas never diverge.
 *
 * Reads. consensus_barrier queues a read. At the check, when no barrier is
 * in flight and reads are waiting, all waiting reads move to the in-flight
 * list and one raft_barrier is issued; its callback completes exactly those
 * reads. Reads arriving meanwhile wait for the next barrier, issued at the
 * check of the turn in which the previous one completed.
 *
 * Purge. A timer checks every purge_interval_ms whether this node leads and
 * storage's earliest expiry has passed; then it proposes one PURGE command
 * through the same batching path (at most one in flight).
 *
 * Membership. On first start the node bootstraps the configured members (all
 * voters) or, with none, itself alone. A node that is not among the
 * configured members does not bootstrap: it waits to be added by the leader.
 * RAFT_CANTBOOTSTRAP means state already exists and is not an error.
 *
 * Shutdown. consensus_close fails queued proposals and reads with ESHUTDOWN,
 * then raft_close fails the in-flight ones synchronously (libraft reports
 * LEADERSHIPLOST, which becomes ESHUTDOWN while closing). When raft's close
 * callback and both of our handles' close callbacks have run, the user
 * callback fires and the object is freed.
 *
 * Invariants:
 *   - pending == proposals in queued batches + proposals in in-flight batches.
 *   - a proposal's or read's callback fires exactly once, after which the
 *     object no longer references it.
 *   - only the last batch of the queued list is open for new commands. */
#include "consensus.h"

#include <errno.h>
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

#define CONSENSUS_DEFAULT_ELECTION_MS 1000  /* ms */
#define CONSENSUS_DEFAULT_HEARTBEAT_MS 100  /* ms */
#define CONSENSUS_DEFAULT_SNAPSHOT_THRESHOLD 8192 /* entries */
#define CONSENSUS_DEFAULT_SNAPSHOT_TRAILING 2048  /* entries */
#define CONSENSUS_DEFAULT_MAX_PENDING 10000 /* proposals */
#define CONSENSUS_DEFAULT_PURGE_MS 1000     /* ms */
#define CONSENSUS_BATCH_MAX_BYTES (4u * 1024 * 1024) /* bytes per entry */
#define CONSENSUS_BATCH_MAX_CMDS 4096u               /* commands per entry */
#define CONSENSUS_CMD_LEN_SIZE 4 /* bytes: the len:u32 before each command */
#define CONSENSUS_ENTRY_ALIGN 8  /* bytes: raft_uv's entry length unit */
#define CONSENSUS_TIME_OFFSET 4  /* bytes: magic, version, reserved:u16 come
                                    before time_ms in the entry header */

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
};

struct consensus
{
    uv_loop_t *loop;                 /* the node's loop (not owned) */
    struct storage *storage;         /* state machine (not owned) */
    struct raft raft;                /* the raft instance */
    struct raft_io io;               /* raft_uv disk + network backend */
    struct raft_uv_transport transport; /* raft_uv_tcp transport */
    struct raft_fsm fsm;             /* callbacks into storage */
    uv_check_t check;                /* flushes batches and reads each turn */
    uv_timer_t purge_timer;          /* periodic expiry check */

    unsigned max_pending;            /* EBUSY threshold */
    unsigned purge_interval_ms;      /* purge_timer period, ms */

    struct consensus_batch *queued;      /* batches not yet submitted */
    struct consensus_batch *queued_tail; /* the open batch, or NULL */
    struct consensus_batch *inflight;    /* batches given to raft_apply */
    unsigned pending;                    /* proposals queued or in flight */

    struct consensus_read *reads;      /* reads waiting for a barrier */
    struct consensus_read *reads_tail; /* last waiting read */
    struct consensus_read *reads_inflight; /* reads the current barrier serves */
    struct raft_barrier barrier;       /* the one barrier request */
    int barrier_busy;                  /* 1 while barrier is in flight */

    struct storage_result *results;  /* owned: outcomes of the last entry */
    uint32_t results_n;              /* elements in results */
    uint64_t results_index;          /* raft index results belong to */

    struct consensus_propose purge_req; /* internal PURGE proposal */
    int purge_busy;                  /* 1 while purge_req is pending */

    int last_state;                  /* raft_state seen at the last poll */
    uint64_t last_leader;            /* leader id seen at the last poll */

    int closing;                     /* close started: refuse new work */
    int raft_closed;                 /* raft close callback has run */
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

/* --- The state machine ------------------------------------------------ */

/* Length of the entry without the zero padding added at submit: the bytes up
 * to the end of the last declared command, when at most ALIGN - 1 zero bytes
 * follow. Anything else is returned whole, for storage to judge. */
static size_t consensus_entry_unpad(const void *p, size_t len)
{
    struct cmd_entry e;
    const char *rec;
    size_t rec_len;
    size_t used;
    size_t i;
    uint32_t n;

    if (cmd_entry_open(p, len, &e) != 0) {
        return len;
    }
    for (n = 0; n < e.count; n++) {
        if (cmd_entry_next(&e, &rec, &rec_len) != 1) {
            return len;
        }
    }
    used = (size_t)(e.p - (const char *)p);
    if (len - used >= CONSENSUS_ENTRY_ALIGN) {
        return len;
    }
    for (i = used; i < len; i++) {
        if (((const char *)p)[i] != 0) {
            return len;
        }
    }
    return used;
}

static int consensus_fsm_apply(struct raft_fsm *fsm,
                               const struct raft_buffer *buf, void **result)
{
    struct consensus *c = fsm->data;
    uint64_t index = raft_last_applied(&c->raft) + 1;
    struct storage_result *results = NULL;
    uint32_t n = 0;
    int rv;

    *result = NULL;
    free(c->results);
    c->results = NULL;
    c->results_n = 0;
    c->results_index = 0;

    rv = storage_apply(c->storage, index, buf->base,
                       consensus_entry_unpad(buf->base, buf->len), &results,
                       &n);
    switch (rv) {
        case STORAGE_OK:
            c->results = results;
            c->results_n = n;
            c->results_index = index;
            return 0;
        case STORAGE_ECORRUPT:
            /* Deterministic on every replica: nothing changed anywhere. */
            LOGE("bad raft entry skipped", " index=%llu bytes=%zu",
                 (unsigned long long)index, buf->len);
            c->results_index = index;
            return 0;
        case STORAGE_ENOMEM:
            LOGE("apply failed", " index=%llu err=\"%s\"",
                 (unsigned long long)index, storage_strerror(rv));
            return RAFT_NOMEM;
        default:
            LOGE("apply failed", " index=%llu err=\"%s\"",
                 (unsigned long long)index, storage_strerror(rv));
            return RAFT_IOERR;
    }
}

static int consensus_fsm_snapshot(struct raft_fsm *fsm,
                                  struct raft_buffer *bufs[], unsigned *n_bufs)
{
    struct consensus *c = fsm->data;
    struct raft_buffer *b;
    void *data = NULL;
    size_t len = 0;
    int rv;

    b = malloc(sizeof *b);
    if (b == NULL) {
        return RAFT_NOMEM;
    }
    rv = storage_snapshot(c->storage, &data, &len);
    if (rv != STORAGE_OK) {
        LOGW("snapshot failed", " index=%llu err=\"%s\"",
             (unsigned long long)raft_last_applied(&c->raft),
             storage_strerror(rv));
        free(b);
        return rv == STORAGE_ENOMEM ? RAFT_NOMEM : RAFT_IOERR;
    }
    b->base = data;
    b->len = len;
    *bufs = b;
    *n_bufs = 1;
    LOGI("snapshot taken", " index=%llu bytes=%zu",
         (unsigned long long)raft_last_applied(&c->raft), len);
    return 0;
}

/* Called by libraft once the snapshot is stored (or failed): frees what
 * consensus_fsm_snapshot allocated. */
static int consensus_fsm_snapshot_finalize(struct raft_fsm *fsm,
                                           struct raft_buffer *bufs[],
                                           unsigned *n_bufs)
{
    unsigned i;

    (void)fsm;
    if (*bufs != NULL) {
        for (i = 0; i < *n_bufs; i++) {
            free((*bufs)[i].base);
        }
        free(*bufs);
    }
    *bufs = NULL;
    *n_bufs = 0;
    return 0;
}

/* On success libraft hands buf->base to the FSM (snapshotRestore does not
 * free it); on failure it frees the snapshot itself. */
static int consensus_fsm_restore(struct raft_fsm *fsm, struct raft_buffer *buf)
{
    struct consensus *c = fsm->data;
    int rv;

    rv = storage_restore(c->storage, buf->base, buf->len);
    if (rv != STORAGE_OK) {
        LOGE("snapshot restore failed", " bytes=%zu err=\"%s\"", buf->len,
             storage_strerror(rv));
        return rv == STORAGE_ENOMEM ? RAFT_NOMEM : RAFT_CORRUPT;
    }
    LOGI("snapshot restored", " index=%llu bytes=%zu",
         (unsigned long long)storage_applied_index(c->storage), buf->len);
    raft_free(buf->base);
    free(c->results);
    c->results = NULL;
    c->results_n = 0;
    c->results_index = 0;
    return 0;
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
        } else if (c->results_index == index && p->slot < c->results_n) {
            p->cb(p, CONSENSUS_OK, &c->results[p->slot]);
        } else {
            /* The entry was skipped as corrupt: every command failed. */
            struct storage_result r = {STORAGE_ECORRUPT, index};
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

    (void)result; /* always NULL: results travel through c->results */
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
    rb.len = (b->entry.len + CONSENSUS_ENTRY_ALIGN - 1) /
             CONSENSUS_ENTRY_ALIGN * CONSENSUS_ENTRY_ALIGN;
    rb.base = raft_malloc(rb.len);
    if (rb.base == NULL) {
        consensus_batch_complete(c, b, CONSENSUS_ENOMEM, 0);
        return;
    }
    memcpy(rb.base, b->entry.base, b->entry.len);
    memset((char *)rb.base + b->entry.len, 0, rb.len - b->entry.len);
    buf_free(&b->entry);

    b->req.data = b;
    b->next = c->inflight;
    c->inflight = b;
    rv = raft_apply(&c->raft, &b->req, &rb, 1, consensus_apply_cb);
    if (rv != 0) {
        raft_free(rb.base);
        consensus_inflight_remove(c, b);
        consensus_batch_complete(c, b, consensus_map_raft(c, rv), 0);
    }
}

static void consensus_flush_batches(struct consensus *c)
{
    while (c->queued != NULL) {
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
    if (cmd_entry_begin(&b->entry, 0) != 0) {
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
    consensus_reads_complete(served, consensus_map_raft(c, status));
}

static void consensus_flush_reads(struct consensus *c)
{
    int rv;

    if (c->barrier_busy || c->reads == NULL) {
        return;
    }
    c->reads_inflight = c->reads;
    c->reads = NULL;
    c->reads_tail = NULL;
    c->barrier.data = c;
    c->barrier_busy = 1;
    rv = raft_barrier(&c->raft, &c->barrier, consensus_barrier_cb);
    if (rv != 0) {
        struct consensus_read *failed = c->reads_inflight;
        c->reads_inflight = NULL;
        c->barrier_busy = 0;
        consensus_reads_complete(failed, consensus_map_raft(c, rv));
    }
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
    return CONSENSUS_OK;
}

/* --- Loop hooks -------------------------------------------------------- */

/* Log role and leader changes, polled once per turn and per purge tick. */
static void consensus_poll_state(struct consensus *c)
{
    int state = raft_state(&c->raft);
    raft_id leader = 0;
    const char *addr = NULL;

    raft_leader(&c->raft, &leader, &addr);
    if (state != c->last_state) {
        LOGI("raft role changed", " from=%s to=%s term=%llu",
             consensus_state_name(c->last_state), consensus_state_name(state),
             (unsigned long long)c->raft.current_term);
        c->last_state = state;
    }
    if (leader != c->last_leader) {
        if (leader != 0) {
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
        c->inflight = b->next;
        consensus_batch_complete(c, b, CONSENSUS_ESHUTDOWN, 0);
    }
    if (c->barrier_busy) {
        struct consensus_read *r = c->reads_inflight;
        c->reads_inflight = NULL;
        c->barrier_busy = 0;
        consensus_reads_complete(r, CONSENSUS_ESHUTDOWN);
    }
    if (cb != NULL) {
        cb(data);
    }
    free(c->results);
    free(c);
}

static void consensus_maybe_destroy(struct consensus *c)
{
    if (c->raft_closed && c->handles_open == 0) {
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

    raft_uv_close(&c->io);
    raft_uv_tcp_close(&c->transport);
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
    while (c->queued != NULL) {
        struct consensus_batch *b = c->queued;
        c->queued = b->next;
        consensus_batch_complete(c, b, CONSENSUS_ESHUTDOWN, 0);
    }
    c->queued_tail = NULL;
    consensus_reads_complete(reads, CONSENSUS_ESHUTDOWN);

    uv_close((uv_handle_t *)&c->check, consensus_handle_close_cb);
    uv_close((uv_handle_t *)&c->purge_timer, consensus_handle_close_cb);
    raft_close(&c->raft, consensus_raft_close_cb);
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
    if (rv == 0 && self) {
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

static int consensus_map_start(int rv)
{
    return rv == RAFT_NOMEM ? CONSENSUS_ENOMEM : CONSENSUS_EIO;
}

int consensus_start(struct consensus **out, const struct consensus_config *cfg,
                    char *errmsg, size_t errmsg_len)
{
    struct consensus *c;
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
    rv = raft_uv_tcp_init(&c->transport, c->loop);
    if (rv != 0) {
        snprintf(errmsg, errmsg_len, "raft transport: %s", raft_strerror(rv));
        rv = consensus_map_start(rv);
        goto err_after_alloc;
    }
    rv = raft_uv_init(&c->io, c->loop, cfg->data_dir, &c->transport);
    if (rv != 0) {
        snprintf(errmsg, errmsg_len, "raft storage %s: %s", cfg->data_dir,
                 c->io.errmsg);
        rv = consensus_map_start(rv);
        goto err_after_transport_init;
    }
    c->fsm.version = 2;
    c->fsm.data = c;
    c->fsm.apply = consensus_fsm_apply;
    c->fsm.snapshot = consensus_fsm_snapshot;
    c->fsm.restore = consensus_fsm_restore;
    c->fsm.snapshot_finalize = consensus_fsm_snapshot_finalize;
    rv = raft_init(&c->raft, &c->io, &c->fsm, cfg->id, cfg->raft_addr);
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
    raft_set_snapshot_threshold(&c->raft,
                                cfg->snapshot_threshold != 0
                                    ? cfg->snapshot_threshold
                                    : CONSENSUS_DEFAULT_SNAPSHOT_THRESHOLD);
    raft_set_snapshot_trailing(&c->raft,
                               cfg->snapshot_trailing != 0
                                   ? cfg->snapshot_trailing
                                   : CONSENSUS_DEFAULT_SNAPSHOT_TRAILING);
    raft_set_pre_vote(&c->raft, true);

    /* From here on, failures close raft on the loop: the object frees itself
     * the next time the loop runs. */
    uv_check_init(c->loop, &c->check);
    c->check.data = c;
    uv_timer_init(c->loop, &c->purge_timer);
    c->purge_timer.data = c;
    c->handles_open = 2;

    if (c->raft.heartbeat_timeout >= c->raft.election_timeout) {
        snprintf(errmsg, errmsg_len,
                 "raft: heartbeat %u ms must be below election timeout %u ms",
                 c->raft.heartbeat_timeout, c->raft.election_timeout);
        rv = CONSENSUS_EINVAL;
        goto err_after_raft_init;
    }
    rv = consensus_bootstrap(c, cfg, &bootstrapped);
    if (rv != 0) {
        snprintf(errmsg, errmsg_len, "raft bootstrap: %s", raft_errmsg(&c->raft));
        rv = consensus_map_start(rv);
        goto err_after_raft_init;
    }
    rv = raft_start(&c->raft);
    if (rv != 0) {
        snprintf(errmsg, errmsg_len, "raft start: %s", raft_errmsg(&c->raft));
        rv = consensus_map_start(rv);
        goto err_after_raft_init;
    }
    uv_check_start(&c->check, consensus_check_cb);
    uv_timer_start(&c->purge_timer, consensus_purge_timer_cb,
                   c->purge_interval_ms, c->purge_interval_ms);
    if (bootstrapped) {
        LOGI("raft bootstrapped", " id=%llu members=%u",
             (unsigned long long)cfg->id,
             cfg->n_members != 0 ? cfg->n_members : 1u);
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
    raft_uv_tcp_close(&c->transport);
err_after_alloc:
    free(c);
    return rv;
}

void consensus_info(struct consensus *c, struct consensus_info *info)
{
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
}
