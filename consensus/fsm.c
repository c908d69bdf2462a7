/* Consensus FSM: libraft 0.15 raft_fsm callbacks (fsm version 3) over
 * storage. See fsm.h for the entry padding and how results reach the
 * proposer.
 *
 * Failure handling, verified against raft v0.15.0 src/replication.c:
 *   - A bad entry (storage ECORRUPT: the header does not parse) is logged and
 *     treated as applied with every command failed. Storage leaves the state
 *     untouched on every replica alike, and a non-zero fsm return would make
 *     libraft retry the same entry forever.
 *   - A resource failure (ENOMEM, EINTERNAL) is returned to libraft: the
 *     entry is not marked applied and is applied again on the next commit
 *     advance or restart, so replicas never diverge.
 *   - snapshot (fsm version 3): snapshot() forks a child holding a
 *     copy-on-write image of the database at the applied index (on the
 *     loop: a fork, 6-17 ms measured at 1 M properties); snapshot_async()
 *     reads the image from the child on a libuv worker thread into the one
 *     raft_buffer; libraft writes it (also off the loop) and then calls
 *     snapshot_finalize, which frees the buffer and reaps the child on
 *     every path. Apply goes on meanwhile: libraft does not pause it
 *     during a snapshot, and the child's copy cannot see it.
 *   - restore: on success libraft hands buf->base to the FSM
 *     (snapshotRestore frees only the bufs array), so it is raft_free()d
 *     here; on failure libraft still owns it. */
#include "fsm.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../lib/log.h"
#include "../storage/command.h"

static void consensus_fsm_drop_results(struct consensus_fsm *f)
{
    free(f->results);
    f->results = NULL;
    f->results_n = 0;
    f->results_index = 0;
}

size_t consensus_entry_unpad(const void *p, size_t len)
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

int consensus_entry_pad(const void *entry, size_t len, struct raft_buffer *out)
{
    out->len = (len + CONSENSUS_ENTRY_ALIGN - 1) / CONSENSUS_ENTRY_ALIGN *
               CONSENSUS_ENTRY_ALIGN;
    out->base = raft_malloc(out->len);
    if (out->base == NULL) {
        out->len = 0;
        return RAFT_NOMEM;
    }
    memcpy(out->base, entry, len);
    memset((char *)out->base + len, 0, out->len - len);
    return 0;
}

void consensus_fsm_result(const struct consensus_fsm *f, uint64_t index,
                          uint32_t slot, struct storage_result *out)
{
    if (f->results_index == index && f->results != NULL &&
        slot < f->results_n) {
        *out = f->results[slot];
        return;
    }
    /* The entry was skipped as corrupt: every command failed. */
    out->status = STORAGE_ECORRUPT;
    out->index = index;
}

static int consensus_fsm_apply(struct raft_fsm *fsm,
                               const struct raft_buffer *buf, void **result)
{
    struct consensus_fsm *f = fsm->data;
    uint64_t index = raft_last_applied(f->raft) + 1;
    /* A copy: buf points into libraft's log, which a raft_apply made by
     * the committed hook may reallocate (the bytes themselves stay). */
    struct raft_buffer entry = *buf;
    struct storage_result *results = NULL;
    uint32_t n = 0;
    int rv;

    *result = NULL;
    if (f->committed != NULL) {
        f->committed(f->committed_arg, index);
    }
    consensus_fsm_drop_results(f);
    rv = storage_apply(f->storage, index, entry.base,
                       consensus_entry_unpad(entry.base, entry.len), &results,
                       &n);
    switch (rv) {
        case STORAGE_OK:
            f->results = results;
            f->results_n = n;
            f->results_index = index;
            return 0;
        case STORAGE_ECORRUPT:
            /* Deterministic on every replica: nothing changed anywhere. */
            LOGE("bad raft entry skipped", " index=%llu bytes=%zu",
                 (unsigned long long)index, entry.len);
            f->results_index = index;
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

static int consensus_fsm_snapshot_async(struct raft_fsm *fsm,
                                        struct raft_buffer *bufs[],
                                        unsigned *n_bufs);

static uint64_t now_ns(void)
{
    struct timespec ts;

    (void)clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* On the loop, at the applied index: fork the child that serializes the
 * database (storage_image_fork), so the loop pays a fork, not a copy. The
 * one buffer is filled by snapshot_async on a libuv worker thread. */
static int consensus_fsm_snapshot(struct raft_fsm *fsm,
                                  struct raft_buffer *bufs[], unsigned *n_bufs)
{
    struct consensus_fsm *f = fsm->data;
    struct raft_buffer *b;
    uint64_t t0;
    int rv;

    if (f->image_busy) {
        return RAFT_BUSY; /* cannot happen: libraft takes one at a time */
    }
    b = malloc(sizeof *b);
    if (b == NULL) {
        return RAFT_NOMEM;
    }
    t0 = now_ns();
    rv = storage_image_fork(f->storage, &f->image);
    f->image_fork_ns = now_ns() - t0;
    if (rv != STORAGE_OK) {
        LOGW("snapshot failed", " index=%llu err=\"%s\"",
             (unsigned long long)raft_last_applied(f->raft),
             storage_strerror(rv));
        free(b);
        return rv == STORAGE_ENOMEM ? RAFT_NOMEM : RAFT_IOERR;
    }
    f->image_busy = true;
    f->image_index = raft_last_applied(f->raft);
    if (f->snapshot_threshold != 0) {
        raft_set_snapshot_threshold(f->raft, f->snapshot_threshold);
    }
    f->image_status = RAFT_IOERR;
    b->base = NULL;
    b->len = 0;
    *bufs = b;
    *n_bufs = 1;
    if (f->fsm.snapshot_async == NULL) {
        /* Synchronous FSM (an io without async_work): wait here. libraft
         * does not finalize a snapshot() that fails, so clean up. */
        rv = consensus_fsm_snapshot_async(fsm, bufs, n_bufs);
        if (rv != 0) {
            f->image_busy = false;
            storage_image_discard(&f->image);
            free(b);
            *bufs = NULL;
            *n_bufs = 0;
            return rv;
        }
    }
    return 0;
}

/* On a worker thread: wait for the child's image. Touches only f->image
 * and f->image_status, which the loop leaves alone until finalize. */
static int consensus_fsm_snapshot_async(struct raft_fsm *fsm,
                                        struct raft_buffer *bufs[],
                                        unsigned *n_bufs)
{
    struct consensus_fsm *f = fsm->data;
    void *data = NULL;
    size_t len = 0;
    int rv;

    if (*bufs == NULL || *n_bufs != 1) {
        return RAFT_INVALID;
    }
    rv = storage_image_read(&f->image, &data, &len);
    if (rv != STORAGE_OK) {
        f->image_status = rv == STORAGE_ENOMEM ? RAFT_NOMEM : RAFT_IOERR;
        return f->image_status;
    }
    (*bufs)[0].base = data;
    (*bufs)[0].len = len;
    f->image_status = 0;
    return 0;
}

/* On the loop, once the snapshot is stored, failed, or was abandoned. */
static int consensus_fsm_snapshot_finalize(struct raft_fsm *fsm,
                                           struct raft_buffer *bufs[],
                                           unsigned *n_bufs)
{
    struct consensus_fsm *f = fsm->data;
    size_t bytes = 0;
    unsigned i;

    if (f->image_busy) {
        storage_image_discard(&f->image);
        f->image_busy = false;
        if (f->image_status == 0) {
            f->snapshots_taken++;
            f->snapshot_index = f->image_index;
            bytes = *bufs != NULL && *n_bufs == 1 ? (*bufs)[0].len : 0;
            LOGI("snapshot taken", " index=%llu bytes=%zu loop_ms=%.3f",
                 (unsigned long long)f->image_index, bytes,
                 (double)f->image_fork_ns / 1e6);
        } else {
            LOGW("snapshot failed", " index=%llu err=\"%s\"",
                 (unsigned long long)f->image_index,
                 raft_strerror(f->image_status));
        }
    }
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

static int consensus_fsm_restore(struct raft_fsm *fsm, struct raft_buffer *buf)
{
    struct consensus_fsm *f = fsm->data;
    int rv;

    rv = storage_restore(f->storage, buf->base, buf->len);
    if (rv != STORAGE_OK) {
        LOGE("snapshot restore failed", " bytes=%zu err=\"%s\"", buf->len,
             storage_strerror(rv));
        return rv == STORAGE_ENOMEM ? RAFT_NOMEM : RAFT_CORRUPT;
    }
    f->snapshots_installed++;
    LOGI("snapshot restored", " index=%llu bytes=%zu",
         (unsigned long long)storage_applied_index(f->storage), buf->len);
    raft_free(buf->base);
    consensus_fsm_drop_results(f);
    return 0;
}

void consensus_fsm_init(struct consensus_fsm *f, struct storage *storage,
                        bool async_snapshots)
{
    memset(f, 0, sizeof *f);
    f->storage = storage;
    f->fsm.version = async_snapshots ? 3 : 2;
    f->fsm.data = f;
    f->fsm.apply = consensus_fsm_apply;
    f->fsm.snapshot = consensus_fsm_snapshot;
    f->fsm.restore = consensus_fsm_restore;
    f->fsm.snapshot_finalize = consensus_fsm_snapshot_finalize;
    f->fsm.snapshot_async =
        async_snapshots ? consensus_fsm_snapshot_async : NULL;
    f->image.fd = -1;
}

void consensus_fsm_close(struct consensus_fsm *f)
{
    if (f->image_busy) {
        storage_image_discard(&f->image);
        f->image_busy = false;
    }
    consensus_fsm_drop_results(f);
}
