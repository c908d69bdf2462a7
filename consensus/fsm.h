/* Consensus FSM (private to consensus/ and its tests): the libraft 0.15
 * raft_fsm that applies committed entries to storage.
 *
 * It is separate from consensus.c so that a test can drive N storages
 * through libraft's raft_fixture (in-memory I/O, simulated time) with the
 * very callbacks the node uses on raft_uv.
 *
 * Entries. A raft entry is one command.h entry followed by at most
 * CONSENSUS_ENTRY_ALIGN - 1 zero bytes: raft_uv stores payloads in units of
 * 8 bytes, so consensus_entry_pad() builds the raft buffer and apply strips
 * the padding (consensus_entry_unpad) before storage sees the entry.
 *
 * Results. libraft does not pass the entry index to fsm->apply, but sets
 * last_applied only after the apply returns, so the entry being applied is
 * raft_last_applied() + 1. The outcomes of the last applied entry stay in
 * the FSM (results, results_n, results_index) until the next apply: the
 * leader's raft_apply callback runs synchronously right after the apply of
 * its entry and reads them with consensus_fsm_result(). Nothing goes back
 * through the `result` pointer, which only a local request would free.
 *
 * Invariants:
 *   - results is NULL or a malloc'd array of results_n outcomes of the
 *     entry at results_index; results_index == 0 means none.
 *   - raft is set before the instance is started. */
#ifndef CTXD_CONSENSUS_FSM_H
#define CTXD_CONSENSUS_FSM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <raft.h>

#include "../storage/storage.h"

#define CONSENSUS_ENTRY_ALIGN 8 /* bytes: raft_uv's entry length unit */

struct consensus_fsm
{
    struct raft_fsm fsm;             /* libraft callbacks; fsm.data = this */
    struct raft *raft;               /* instance applying (not owned) */
    struct storage *storage;         /* the state machine (not owned) */
    struct storage_result *results;  /* owned: outcomes of the last entry */
    uint32_t results_n;              /* elements in results */
    uint64_t results_index;          /* raft index results belong to */
    uint64_t snapshots_taken;        /* snapshots taken and handed over */
    struct storage_image image;      /* the snapshot being taken */
    bool image_busy;                 /* image is live (snapshot..finalize) */
    uint64_t image_index;            /* applied index the image is of */
    uint64_t image_fork_ns;          /* time snapshot() held the loop */
    int image_status;                /* set by snapshot_async: 0 or RAFT_* */
    uint64_t snapshots_installed;    /* successful fsm->restore calls */
    uint64_t snapshot_index;         /* applied index of the last snapshot
                                        taken, 0 before the first */
    unsigned snapshot_threshold;     /* when not 0: libraft's snapshot
                                        threshold from the first snapshot
                                        on (consensus starts each node at
                                        a staggered one, see consensus.c) */
    void (*committed)(void *arg, uint64_t index); /* optional: called with
                                        the index of each entry about to be
                                        applied (it is committed), before
                                        storage sees it; may call raft_apply */
    void *committed_arg;             /* its argument */
};

/* Fill f for storage; set f->raft before raft_start. With
 * async_snapshots (fsm version 3; the io must offer async_work) the
 * snapshot image is read on a worker thread; without (version 2, e.g. for
 * raft_fixture, whose io is version 1) snapshot() waits for it. Either way
 * the image comes from a forked child (storage_image_fork). */
void consensus_fsm_init(struct consensus_fsm *f, struct storage *storage,
                        bool async_snapshots);

/* Free the kept results. The storage is not touched. */
void consensus_fsm_close(struct consensus_fsm *f);

/* Outcome of command `slot` of the entry at `index`, valid until the next
 * apply. An entry skipped as corrupt reports STORAGE_ECORRUPT for every
 * command. */
void consensus_fsm_result(const struct consensus_fsm *f, uint64_t index,
                          uint32_t slot, struct storage_result *out);

/* The entry's length without the padding: the bytes up to the end of the
 * last declared command, when at most ALIGN - 1 zero bytes follow. Anything
 * else is returned whole, for storage to judge. */
size_t consensus_entry_unpad(const void *p, size_t len);

/* out = a raft_malloc'd copy of entry padded with zeros to a multiple of
 * CONSENSUS_ENTRY_ALIGN (raft_apply takes it on success; the caller
 * raft_free()s it otherwise). Returns 0 or RAFT_NOMEM. */
int consensus_entry_pad(const void *entry, size_t len, struct raft_buffer *out);

#endif
