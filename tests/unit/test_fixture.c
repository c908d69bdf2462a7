/* Tests of the consensus FSM (consensus/fsm.c) on libraft's raft_fixture:
 * N in-memory raft instances with simulated time, each applying to its own
 * storage through the very raft_fsm the node uses on raft_uv. Elections,
 * partitions and crashes are driven deterministically by the fixture's
 * step functions, so every test is exact and fast.
 *
 * Entries are built as consensus.c builds them: cmd_entry_begin/add, then
 * padded to 8 bytes (consensus_entry_pad) and given to raft_apply. The time
 * stamped in every entry is a constant, so storage digests depend only on
 * the entries and their order. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <raft.h>
#include <raft/fixture.h>

#include "../../consensus/fsm.h"
#include "../../lib/buf.h"
#include "../../storage/command.h"
#include "../../storage/storage.h"
#include "encode.h"

#define N_NODES 3                   /* servers in every cluster */
#define ENTRY_TIME_MS 1700000000000ull /* leader time stamped in entries */
#define MAX_SLOTS 8                 /* commands one proposal tracks */
#define STEP_MS 10000               /* simulated ms a step_until may take */

/* One replica: its storage and the FSM raft applies to it. */
struct node
{
    struct storage *storage;  /* owned */
    struct consensus_fsm fsm; /* raft_fsm over storage */
};

struct fixture
{
    struct raft_fixture rf;      /* the simulated cluster */
    struct node nodes[N_NODES];  /* replica i is fixture server i */
};

/* One raft_apply and what its callback saw. */
struct proposal
{
    struct raft_apply req;      /* libraft request; data = this */
    struct fixture *f;          /* owning fixture */
    unsigned node;              /* server it was proposed on */
    uint32_t n_cmds;            /* commands in the entry */
    int calls;                  /* callback count */
    int status;                 /* libraft status of the last callback */
    struct storage_result results[MAX_SLOTS]; /* per command, status 0 only */
};

/* --- Fixture -------------------------------------------------------------- */

static void fixture_cluster(struct fixture *f, unsigned threshold,
                            unsigned trailing)
{
    struct raft_configuration conf;
    unsigned i;

    assert_int_equal(raft_fixture_initialize(&f->rf), 0);
    for (i = 0; i < N_NODES; i++) {
        struct node *n = &f->nodes[i];
        assert_int_equal(storage_open(&n->storage), 0);
        consensus_fsm_init(&n->fsm, n->storage, false);
        assert_int_equal(raft_fixture_grow(&f->rf, &n->fsm.fsm), 0);
        n->fsm.raft = raft_fixture_get(&f->rf, i);
        if (threshold != 0) {
            raft_set_snapshot_threshold(n->fsm.raft, threshold);
            raft_set_snapshot_trailing(n->fsm.raft, trailing);
        }
    }
    assert_int_equal(raft_fixture_configuration(&f->rf, N_NODES, &conf), 0);
    assert_int_equal(raft_fixture_bootstrap(&f->rf, &conf), 0);
    raft_configuration_close(&conf);
    assert_int_equal(raft_fixture_start(&f->rf), 0);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);

    assert_non_null(f);
    fixture_cluster(f, 0, 0);
    *state = f;
    return 0;
}

/* A cluster that snapshots every 4 applied entries, keeping 2. */
static int setup_snapshots(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);

    assert_non_null(f);
    fixture_cluster(f, 4, 2);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    unsigned i;

    /* Fails whatever is still pending, so proposals must outlive this. */
    raft_fixture_close(&f->rf);
    for (i = 0; i < N_NODES; i++) {
        consensus_fsm_close(&f->nodes[i].fsm);
        storage_close(f->nodes[i].storage);
    }
    free(f);
    return 0;
}

/* --- Helpers --------------------------------------------------------------- */

/* The fixture's commands carry no TTL. */
#define encode(enc, op, ns, sid, name, value, if_match) \
    test_encode(enc, op, ns, sid, name, value, -1, if_match)

/* Append one encoded command to an entry being built. */
static void entry_add(struct buf *entry, uint8_t op, const char *ns,
                      const char *sid, const char *name, const char *value,
                      uint64_t if_match)
{
    struct buf enc = BUF_INIT;

    encode(&enc, op, ns, sid, name, value, if_match);
    assert_int_equal(cmd_entry_add(entry, enc.base, enc.len), 0);
    buf_free(&enc);
}

static void apply_cb(struct raft_apply *req, int status, void *result)
{
    struct proposal *p = req->data;
    struct consensus_fsm *fsm = &p->f->nodes[p->node].fsm;
    uint32_t i;

    assert_null(result);
    p->calls++;
    p->status = status;
    if (status != 0) {
        return;
    }
    for (i = 0; i < p->n_cmds && i < MAX_SLOTS; i++) {
        consensus_fsm_result(fsm, req->index, i, &p->results[i]);
    }
}

/* Submit entry (the commands added so far) on server i as consensus.c does:
 * padded to 8 bytes, one raft_buffer. Returns raft_apply's code. */
static int submit(struct fixture *f, unsigned i, struct proposal *p,
                  const struct buf *entry)
{
    struct raft_buffer rb;
    int rv;

    memset(p, 0, sizeof *p);
    p->req.data = p;
    p->f = f;
    p->node = i;
    p->n_cmds = cmd_entry_count(entry);
    assert_int_equal(consensus_entry_pad(entry->base, entry->len, &rb), 0);
    assert_int_equal(rb.len % CONSENSUS_ENTRY_ALIGN, 0);
    rv = raft_apply(raft_fixture_get(&f->rf, i), &p->req, &rb, 1, apply_cb);
    if (rv != 0) {
        raft_free(rb.base);
    }
    return rv;
}

/* Propose on server i one entry that creates ns (or leaves it as is) and
 * sets ns/s1/name = value. */
static void put(struct fixture *f, unsigned i, struct proposal *p,
                const char *ns, const char *name, const char *value)
{
    struct buf entry = BUF_INIT;

    assert_int_equal(cmd_entry_begin(&entry, ENTRY_TIME_MS), 0);
    entry_add(&entry, CMD_NS_PUT, ns, NULL, NULL, NULL, 0);
    entry_add(&entry, CMD_PROP_PUT, ns, "s1", name, value, 0);
    assert_int_equal(submit(f, i, p, &entry), 0);
    buf_free(&entry);
}

static unsigned elect(struct fixture *f)
{
    unsigned leader;

    assert_true(raft_fixture_step_until_has_leader(&f->rf, STEP_MS));
    leader = raft_fixture_leader_index(&f->rf);
    assert_true(leader < N_NODES);
    return leader;
}

static raft_index last_index(struct fixture *f, unsigned i)
{
    return raft_last_index(raft_fixture_get(&f->rf, i));
}

/* Every replica has applied up to index and all digests are equal. */
static void assert_converged(struct fixture *f, raft_index index)
{
    uint8_t digest[N_NODES][32];
    unsigned i;

    assert_true(raft_fixture_step_until_applied(&f->rf, N_NODES, index,
                                                STEP_MS));
    for (i = 0; i < N_NODES; i++) {
        assert_int_equal(storage_applied_index(f->nodes[i].storage),
                         raft_last_applied(raft_fixture_get(&f->rf, i)));
        assert_int_equal(storage_digest(f->nodes[i].storage, digest[i]), 0);
        assert_memory_equal(digest[i], digest[0], 32);
    }
}

/* --- Replication ------------------------------------------------------------ */

static void a_three_node_cluster_applies_entries_in_the_same_order(
    void **state)
{
    struct fixture *f = *state;
    struct proposal p[4];
    unsigned leader = elect(f);
    unsigned i;
    uint32_t k;

    /* Successive writes of one property: the final value depends on order. */
    put(f, leader, &p[0], "ns1", "x", "0");
    put(f, leader, &p[1], "ns1", "x", "1");
    put(f, leader, &p[2], "ns1", "x", "2");
    put(f, leader, &p[3], "ns1", "x", "3");

    assert_converged(f, last_index(f, leader));
    for (i = 0; i < 4; i++) {
        assert_int_equal(p[i].calls, 1);
        assert_int_equal(p[i].status, 0);
        assert_int_equal(p[i].n_cmds, 2);
        for (k = 0; k < p[i].n_cmds; k++) {
            assert_int_equal(p[i].results[k].status, STORAGE_OK);
            assert_int_equal(p[i].results[k].index, p[i].req.index);
        }
    }
    assert_true(p[0].req.index < p[1].req.index);
    assert_true(p[2].req.index < p[3].req.index);
    for (i = 0; i < N_NODES; i++) {
        assert_int_equal(storage_applied_index(f->nodes[i].storage),
                         p[3].req.index);
        assert_int_equal(storage_ns_exists(f->nodes[i].storage, "acc", 3,
                                           "ns1", 3),
                         1);
    }
}

static void a_follower_refuses_raft_apply_as_not_leader(void **state)
{
    struct fixture *f = *state;
    struct proposal p;
    struct buf entry = BUF_INIT;
    unsigned leader = elect(f);

    assert_int_equal(cmd_entry_begin(&entry, ENTRY_TIME_MS), 0);
    entry_add(&entry, CMD_NS_PUT, "ns1", NULL, NULL, NULL, 0);
    assert_int_equal(submit(f, (leader + 1) % N_NODES, &p, &entry),
                     RAFT_NOTLEADER);
    buf_free(&entry);
    assert_int_equal(p.calls, 0);
}

/* --- Results ------------------------------------------------------------------ */

static void each_command_result_reaches_the_proposer_on_the_leader(
    void **state)
{
    struct fixture *f = *state;
    struct proposal p;
    struct buf entry = BUF_INIT;
    unsigned leader = elect(f);

    assert_int_equal(cmd_entry_begin(&entry, ENTRY_TIME_MS), 0);
    entry_add(&entry, CMD_NS_PUT, "ns1", NULL, NULL, NULL, 0);
    entry_add(&entry, CMD_PROP_PUT, "ns1", "s1", "a", "1", 0);
    /* s1 is at version 1 now: If-Match 7 fails alone. */
    entry_add(&entry, CMD_PROP_PUT, "ns1", "s1", "b", "2", 7);
    entry_add(&entry, CMD_PROP_PUT, "ns1", "s1", "c", "3", 0);
    assert_int_equal(submit(f, leader, &p, &entry), 0);
    buf_free(&entry);

    assert_converged(f, last_index(f, leader));
    assert_int_equal(p.calls, 1);
    assert_int_equal(p.status, 0);
    assert_int_equal(p.results[0].status, STORAGE_OK);
    assert_int_equal(p.results[1].status, STORAGE_OK);
    assert_int_equal(p.results[2].status, STORAGE_EPRECONDITION);
    assert_int_equal(p.results[3].status, STORAGE_OK);
    assert_int_equal(p.results[0].index, p.req.index);
    assert_int_equal(p.results[3].index, p.req.index);
}

/* What the committed hook of one replica saw; on the leader it may also
 * propose one more entry from inside the hook, as consensus.c does. */
struct hook_log
{
    struct fixture *f;
    unsigned node;                /* replica whose FSM calls the hook */
    unsigned calls;               /* hook calls */
    uint64_t index;               /* index of the first call */
    uint64_t applied_before;      /* storage's applied index at that call */
    struct proposal *next;        /* to submit from the first call, or NULL */
};

static void hook_cb(void *arg, uint64_t index)
{
    struct hook_log *h = arg;
    struct node *n = &h->f->nodes[h->node];

    if (h->calls++ == 0) {
        h->index = index;
        h->applied_before = storage_applied_index(n->storage);
    }
    if (h->next != NULL) {
        struct proposal *q = h->next;

        h->next = NULL;
        put(h->f, h->node, q, "ns1", "y", "2"); /* asserts raft_apply's 0 */
    }
}

static void the_committed_hook_sees_each_entry_before_it_is_applied(
    void **state)
{
    struct fixture *f = *state;
    struct hook_log h[N_NODES];
    struct proposal p;
    unsigned leader = elect(f);
    unsigned i;

    for (i = 0; i < N_NODES; i++) {
        memset(&h[i], 0, sizeof h[i]);
        h[i].f = f;
        h[i].node = i;
        f->nodes[i].fsm.committed = hook_cb;
        f->nodes[i].fsm.committed_arg = &h[i];
    }
    put(f, leader, &p, "ns1", "x", "1");
    assert_converged(f, last_index(f, leader));
    assert_int_equal(p.status, 0);
    for (i = 0; i < N_NODES; i++) {
        /* The one command entry, once, while storage was still short of
         * it (the entries before it are libraft's own, which storage never
         * sees); it is applied now. */
        assert_int_equal(h[i].calls, 1);
        assert_int_equal(h[i].index, p.req.index);
        assert_true(h[i].applied_before < p.req.index);
        assert_int_equal(storage_applied_index(f->nodes[i].storage),
                         p.req.index);
    }
}

/* consensus.c submits its next entry from inside the hook, that is from
 * within libraft's apply loop; the entry being applied must come through
 * whole (the FSM copies its buffer before the hook can grow the log). */
static void an_entry_proposed_from_the_committed_hook_commits_everywhere(
    void **state)
{
    struct fixture *f = *state;
    struct hook_log h;
    struct proposal p;
    struct proposal q;
    unsigned leader = elect(f);
    unsigned i;

    memset(&h, 0, sizeof h);
    h.f = f;
    h.node = leader;
    h.next = &q;
    f->nodes[leader].fsm.committed = hook_cb;
    f->nodes[leader].fsm.committed_arg = &h;
    put(f, leader, &p, "ns1", "x", "1");
    assert_true(raft_fixture_step_until_applied(&f->rf, N_NODES, p.req.index,
                                                STEP_MS));
    assert_null(h.next);
    assert_true(q.req.index > p.req.index);
    assert_converged(f, q.req.index);
    assert_int_equal(p.calls, 1);
    assert_int_equal(p.status, 0);
    assert_int_equal(p.results[1].status, STORAGE_OK);
    assert_int_equal(q.calls, 1);
    assert_int_equal(q.status, 0);
    assert_int_equal(q.results[1].status, STORAGE_OK);
    assert_int_equal(q.results[1].index, q.req.index);
    for (i = 0; i < N_NODES; i++) {
        struct buf out = BUF_INIT;
        struct cmd where;

        memset(&where, 0, sizeof where);
        where.acc.base = "acc";
        where.acc.len = 3;
        where.ns.base = "ns1";
        where.ns.len = 3;
        where.sid.base = "s1";
        where.sid.len = 2;
        where.name.base = "y";
        where.name.len = 1;
        assert_int_equal(storage_prop_get(f->nodes[i].storage, &where,
                                          ENTRY_TIME_MS, &out),
                         STORAGE_OK);
        assert_int_equal(out.len, 1);
        assert_memory_equal(out.base, "2", 1);
        buf_free(&out);
    }
}

static void a_corrupt_entry_is_skipped_alike_on_every_replica(void **state)
{
    struct fixture *f = *state;
    struct proposal bad;
    struct proposal good;
    struct buf entry = BUF_INIT;
    unsigned leader = elect(f);

    /* A header with a wrong magic byte: storage refuses the whole entry. */
    assert_int_equal(cmd_entry_begin(&entry, ENTRY_TIME_MS), 0);
    entry_add(&entry, CMD_NS_PUT, "bad", NULL, NULL, NULL, 0);
    entry.base[0] = 'X';
    assert_int_equal(submit(f, leader, &bad, &entry), 0);
    buf_free(&entry);
    assert_int_equal(cmd_entry_begin(&entry, ENTRY_TIME_MS), 0);
    entry_add(&entry, CMD_NS_PUT, "good", NULL, NULL, NULL, 0);
    assert_int_equal(submit(f, leader, &good, &entry), 0);
    buf_free(&entry);

    assert_converged(f, last_index(f, leader));
    assert_int_equal(bad.calls, 1);
    assert_int_equal(bad.status, 0);
    assert_int_equal(bad.results[0].status, STORAGE_ECORRUPT);
    assert_int_equal(good.results[0].status, STORAGE_OK);
    assert_int_equal(storage_ns_exists(f->nodes[0].storage, "acc", 3, "bad", 3),
                     0);
    assert_int_equal(
        storage_ns_exists(f->nodes[0].storage, "acc", 3, "good", 4), 1);
}

/* --- Partitions ----------------------------------------------------------------- */

/* Stop when the old leader's proposal has failed and another server leads. */
struct partition_wait
{
    struct proposal *lost; /* the old leader's proposal */
    unsigned old_leader;   /* its server index */
};

static bool partition_settled(struct raft_fixture *rf, void *arg)
{
    struct partition_wait *w = arg;
    unsigned i;

    if (w->lost->calls == 0) {
        return false;
    }
    for (i = 0; i < N_NODES; i++) {
        if (i != w->old_leader &&
            raft_state(raft_fixture_get(rf, i)) == RAFT_LEADER) {
            return true;
        }
    }
    return false;
}

static void a_partitioned_leader_loses_its_uncommitted_entry(void **state)
{
    struct fixture *f = *state;
    struct proposal first;
    struct proposal lost;
    struct proposal after;
    struct partition_wait w;
    unsigned old = elect(f);
    unsigned leader = N_NODES;
    unsigned i;

    put(f, old, &first, "ns1", "a", "1");
    assert_converged(f, last_index(f, old));

    for (i = 0; i < N_NODES; i++) {
        if (i != old) {
            raft_fixture_disconnect(&f->rf, old, i);
            raft_fixture_disconnect(&f->rf, i, old);
        }
    }
    put(f, old, &lost, "lost", "x", "1");
    w.lost = &lost;
    w.old_leader = old;
    assert_true(raft_fixture_step_until(&f->rf, partition_settled, &w,
                                        STEP_MS));
    assert_int_equal(lost.calls, 1);
    assert_int_equal(lost.status, RAFT_LEADERSHIPLOST);
    assert_int_not_equal(raft_state(raft_fixture_get(&f->rf, old)),
                         RAFT_LEADER);
    for (i = 0; i < N_NODES; i++) {
        if (i != old && raft_state(raft_fixture_get(&f->rf, i)) == RAFT_LEADER) {
            leader = i;
        }
    }
    assert_true(leader < N_NODES);

    /* The majority keeps committing without the old leader. */
    put(f, leader, &after, "ns1", "b", "2");
    assert_true(raft_fixture_step_until_applied(&f->rf, leader,
                                                after.req.index, STEP_MS));
    assert_int_equal(after.calls, 1);
    assert_int_equal(after.status, 0);
    assert_int_equal(after.results[1].status, STORAGE_OK);

    for (i = 0; i < N_NODES; i++) {
        if (i != old) {
            raft_fixture_reconnect(&f->rf, old, i);
            raft_fixture_reconnect(&f->rf, i, old);
        }
    }
    assert_converged(f, last_index(f, leader));
    assert_int_equal(lost.calls, 1);
    assert_int_equal(last_index(f, old), last_index(f, leader));
    for (i = 0; i < N_NODES; i++) {
        assert_int_equal(storage_ns_exists(f->nodes[i].storage, "acc", 3,
                                           "lost", 4),
                         0);
        assert_int_equal(storage_ns_exists(f->nodes[i].storage, "acc", 3,
                                           "ns1", 3),
                         1);
    }
}

/* --- Crashes ---------------------------------------------------------------------- */

static void a_revived_follower_catches_up_through_a_snapshot(void **state)
{
    struct fixture *f = *state;
    struct proposal p[12];
    char name[8];
    unsigned leader = elect(f);
    unsigned dead = (leader + 1) % N_NODES;
    unsigned i;

    put(f, leader, &p[0], "ns1", "a", "0");
    assert_converged(f, last_index(f, leader));
    raft_fixture_kill(&f->rf, dead);

    for (i = 1; i < 12; i++) {
        snprintf(name, sizeof name, "p%u", i);
        put(f, leader, &p[i], "ns1", name, "1");
        assert_true(raft_fixture_step_until_applied(&f->rf, leader,
                                                    p[i].req.index, STEP_MS));
        assert_int_equal(p[i].status, 0);
    }
    assert_true(f->nodes[leader].fsm.snapshots_taken > 0);
    assert_true(storage_applied_index(f->nodes[dead].storage) <
                p[11].req.index);

    raft_fixture_revive(&f->rf, dead);
    assert_converged(f, p[11].req.index);
    assert_true(f->nodes[dead].fsm.snapshots_installed > 0);
    assert_int_equal(storage_applied_index(f->nodes[dead].storage),
                     p[11].req.index);
}

/* --- consensus_entry_unpad ---------------------------------------------------------- */

static void padding_is_stripped_only_when_it_is_short_and_zero(void **state)
{
    struct buf entry = BUF_INIT;
    size_t len;

    (void)state;
    assert_int_equal(cmd_entry_begin(&entry, ENTRY_TIME_MS), 0);
    entry_add(&entry, CMD_NS_PUT, "ns1", NULL, NULL, NULL, 0);
    len = entry.len;
    assert_int_equal(buf_append(&entry, "\0\0\0", 3), 0);
    assert_int_equal(consensus_entry_unpad(entry.base, entry.len), len);
    entry.base[len + 1] = 1;
    assert_int_equal(consensus_entry_unpad(entry.base, entry.len), len + 3);
    buf_free(&entry);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            a_three_node_cluster_applies_entries_in_the_same_order, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            a_follower_refuses_raft_apply_as_not_leader, setup, teardown),
        cmocka_unit_test_setup_teardown(
            each_command_result_reaches_the_proposer_on_the_leader, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            a_corrupt_entry_is_skipped_alike_on_every_replica, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            a_partitioned_leader_loses_its_uncommitted_entry, setup, teardown),
        cmocka_unit_test_setup_teardown(
            a_revived_follower_catches_up_through_a_snapshot, setup_snapshots,
            teardown),
        cmocka_unit_test_setup_teardown(
            the_committed_hook_sees_each_entry_before_it_is_applied, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            an_entry_proposed_from_the_committed_hook_commits_everywhere,
            setup, teardown),
        cmocka_unit_test(padding_is_stripped_only_when_it_is_short_and_zero),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
