/* Tests for consensus/: a real raft_uv node on a fresh temporary directory
 * and a free loopback port, driven by uv_run with a bounded watchdog.
 *
 * The fixture runs the loop until a predicate holds (polled every few ms) or
 * the watchdog fires, which fails the test. Proposals made from the test body
 * between two runs all land in the same loop turn, so they form one entry. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "../../consensus/consensus.h"
#include "../../lib/buf.h"
#include "../../storage/command.h"
#include "../../storage/storage.h"
#include "encode.h"
#include "tmpdir.h"

#define WATCHDOG_MS 15000 /* ms before a run is declared stuck */
#define POLL_MS 2         /* ms between predicate checks */
#define MAX_PROPS 64      /* proposals one test tracks */
#define MAX_CHANGES 8     /* membership changes one test tracks */
#define MAX_RETIRED 16    /* closed nodes one test leaves to teardown */

struct fixture;
typedef int (*fixture_pred)(struct fixture *f);

/* One node under test and the bookkeeping of its callbacks. */
struct fixture
{
    uv_loop_t loop;                 /* private loop */
    uv_timer_t poll;                /* checks pred every POLL_MS */
    uv_timer_t watchdog;            /* stops a stuck run */
    fixture_pred pred;              /* what the current run waits for */
    int timed_out;                  /* the watchdog fired */
    char dir[64];                   /* raft data dir (mkdtemp) */
    char addr[32];                  /* 127.x.y.z:port */
    struct storage *storage;        /* state machine */
    struct consensus *c;            /* node under test, NULL once closed */
    struct consensus_config cfg;    /* its configuration */
    int closed;                     /* close callback count */
    struct consensus_propose props[MAX_PROPS]; /* proposals */
    int prop_calls[MAX_PROPS];      /* callback count per proposal */
    int prop_status[MAX_PROPS];     /* consensus status per proposal */
    struct storage_result prop_result[MAX_PROPS]; /* copied results */
    int n_done;                     /* proposal callbacks so far */
    struct consensus_read reads[MAX_PROPS]; /* reads */
    int read_calls[MAX_PROPS];      /* callback count per read */
    int read_status[MAX_PROPS];     /* status per read */
    int n_reads_done;               /* read callbacks so far */
    int chain_left;                 /* proposals still to chain (restart) */
    struct consensus *c2;           /* second node (membership), or NULL */
    struct storage *storage2;       /* its state machine */
    char dir2[96];                  /* its raft data dir */
    char addr2[32];                 /* its raft address */
    struct consensus_change changes[MAX_CHANGES]; /* membership requests */
    int change_calls[MAX_CHANGES];  /* callback count per change */
    int change_status[MAX_CHANGES]; /* status per change */
    struct consensus *retired[MAX_RETIRED]; /* closed, freed at teardown */
    unsigned n_retired;             /* entries of retired */
};

/* A node whose close callback has run is freed only once the loop has
 * drained (consensus_free), which teardown does. */
static void retire(struct fixture *f, struct consensus *c)
{
    assert_true(f->n_retired < MAX_RETIRED);
    f->retired[f->n_retired++] = c;
}

/* --- Fixture ------------------------------------------------------------ */

/* A free port on a loopback address of its own (127.x.y.z, not
 * 127.0.0.1): the port is released before the node binds it, and on
 * 127.0.0.1 a connection of a test running alongside could take it as its
 * local port in between. */
static void free_port_addr(char *out, size_t len)
{
    static unsigned seq;
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    unsigned r = (unsigned)getpid() * 2654435761u + seq++ * 40503u;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(0x7f000000u | (1 + (r >> 8) % 250) << 16 |
                               ((r >> 16) & 0xff) << 8 | (1 + r % 250));
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    snprintf(out, len, "127.%u.%u.%u:%u",
             (unsigned)(ntohl(sa.sin_addr.s_addr) >> 16 & 0xff),
             (unsigned)(ntohl(sa.sin_addr.s_addr) >> 8 & 0xff),
             (unsigned)(ntohl(sa.sin_addr.s_addr) & 0xff),
             (unsigned)ntohs(sa.sin_port));
    close(fd);
}

static void poll_cb(uv_timer_t *t)
{
    struct fixture *f = t->data;

    if (f->pred != NULL && f->pred(f)) {
        uv_stop(&f->loop);
    }
}

static void watchdog_cb(uv_timer_t *t)
{
    struct fixture *f = t->data;

    f->timed_out = 1;
    uv_stop(&f->loop);
}

/* Run the loop until pred(f) holds; fail when the watchdog fires first. */
static void run_until(struct fixture *f, fixture_pred pred)
{
    f->pred = pred;
    f->timed_out = 0;
    uv_timer_start(&f->poll, poll_cb, POLL_MS, POLL_MS);
    uv_timer_start(&f->watchdog, watchdog_cb, WATCHDOG_MS, 0);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    uv_timer_stop(&f->poll);
    uv_timer_stop(&f->watchdog);
    f->pred = NULL;
    assert_false(f->timed_out);
}

static void node_start(struct fixture *f)
{
    char errmsg[256];
    int rv;

    assert_int_equal(storage_open(&f->storage), 0);
    f->cfg.loop = &f->loop;
    f->cfg.storage = f->storage;
    rv = consensus_start(&f->c, &f->cfg, errmsg, sizeof errmsg);
    if (rv != 0) {
        fail_msg("consensus_start: %s", errmsg);
    }
}

static void closed_cb(void *data)
{
    struct fixture *f = data;

    f->closed++;
}

static int pred_closed(struct fixture *f)
{
    return f->closed > 0;
}

static void node_stop(struct fixture *f)
{
    if (f->c != NULL) {
        consensus_close(f->c, closed_cb, f);
        run_until(f, pred_closed);
        assert_int_equal(f->closed, 1);
        retire(f, f->c);
        f->c = NULL;
        f->closed = 0;
    }
    if (f->storage != NULL) {
        storage_close(f->storage);
        f->storage = NULL;
    }
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);

    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    uv_timer_init(&f->loop, &f->poll);
    uv_timer_init(&f->loop, &f->watchdog);
    f->poll.data = f;
    f->watchdog.data = f;
    assert_non_null(test_tmpdir(f->dir, sizeof f->dir, "consensus"));
    free_port_addr(f->addr, sizeof f->addr);
    f->cfg.id = 1;
    f->cfg.raft_addr = f->addr;
    f->cfg.data_dir = f->dir;
    f->cfg.election_timeout_ms = 200;
    f->cfg.heartbeat_ms = 20;
    *state = f;
    return 0;
}

static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[512];

    if (d == NULL) {
        return;
    }
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
            continue;
        }
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (unlink(path) != 0) {
            remove_dir(path);
        }
    }
    closedir(d);
    rmdir(dir);
}

static void node2_stop(struct fixture *f);

static int teardown(void **state)
{
    struct fixture *f = *state;

    if (f->c2 != NULL || f->storage2 != NULL) {
        node2_stop(f);
    }
    node_stop(f);
    uv_close((uv_handle_t *)&f->poll, NULL);
    uv_close((uv_handle_t *)&f->watchdog, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    while (f->n_retired > 0) {
        consensus_free(f->retired[--f->n_retired]);
    }
    remove_dir(f->dir);
    free(f);
    return 0;
}

/* --- Helpers ------------------------------------------------------------ */

static int pred_leader(struct fixture *f)
{
    struct consensus_info info;

    consensus_info(f->c, &info);
    return info.is_leader;
}

static int pred_all_done(struct fixture *f)
{
    int i;

    for (i = 0; i < MAX_PROPS; i++) {
        if (f->props[i].cb != NULL && f->prop_calls[i] == 0) {
            return 0;
        }
        if (f->reads[i].cb != NULL && f->read_calls[i] == 0) {
            return 0;
        }
    }
    return 1;
}

static void prop_cb(struct consensus_propose *req, int status,
                    const struct storage_result *result)
{
    struct fixture *f = req->data;
    int i = (int)(req - f->props);

    f->prop_calls[i]++;
    f->prop_status[i] = status;
    if (status == CONSENSUS_OK) {
        assert_non_null(result);
        f->prop_result[i] = *result;
    }
    f->n_done++;
}

static void read_cb(struct consensus_read *req, int status)
{
    struct fixture *f = req->data;
    int i = (int)(req - f->reads);

    f->read_calls[i]++;
    f->read_status[i] = status;
    f->n_reads_done++;
}

#define encode test_encode

/* Propose into slot i of the fixture. */
static int propose(struct fixture *f, int i, const struct buf *enc)
{
    f->props[i].data = f;
    f->props[i].cb = prop_cb;
    return consensus_propose(f->c, &f->props[i], enc->base, enc->len);
}

static void propose_ns(struct fixture *f, int i, const char *ns, int64_t ttl)
{
    struct buf enc = BUF_INIT;

    encode(&enc, CMD_NS_PUT, ns, NULL, NULL, NULL, ttl, 0);
    assert_int_equal(propose(f, i, &enc), CONSENSUS_OK);
    buf_free(&enc);
}

static void start_leader(struct fixture *f)
{
    node_start(f);
    run_until(f, pred_leader);
}

/* --- consensus_propose ---------------------------------------------------- */

static void a_one_node_cluster_applies_a_proposal_at_its_entry_index(
    void **state)
{
    struct fixture *f = *state;
    struct consensus_info info;

    start_leader(f);
    propose_ns(f, 0, "ns1", -1);
    run_until(f, pred_all_done);

    consensus_info(f->c, &info);
    assert_int_equal(f->prop_calls[0], 1);
    assert_int_equal(f->prop_status[0], CONSENSUS_OK);
    assert_int_equal(f->prop_result[0].status, STORAGE_OK);
    assert_int_equal(f->prop_result[0].index, info.last_index);
    assert_int_equal(info.applied_index, info.last_index);
    assert_int_equal(storage_applied_index(f->storage), info.last_index);
    assert_int_equal(storage_ns_exists(f->storage, "acc", 3, "ns1", 3), 1);
    assert_int_equal(info.pending, 0);
}

static void proposals_of_one_loop_turn_share_one_entry_with_own_results(
    void **state)
{
    struct fixture *f = *state;
    struct consensus_info before;
    struct consensus_info after;
    struct buf enc = BUF_INIT;
    char name[16];
    int i;
    const int n = 8;

    start_leader(f);
    propose_ns(f, 0, "ns1", -1);
    run_until(f, pred_all_done);
    consensus_info(f->c, &before);

    for (i = 1; i <= n; i++) {
        snprintf(name, sizeof name, "p%d", i);
        /* Slot 4 requires a session version that does not exist. */
        encode(&enc, CMD_PROP_PUT, "ns1", "s1", name, "1.1", -1,
               i == 4 ? 999 : 0);
        assert_int_equal(propose(f, i, &enc), CONSENSUS_OK);
    }
    buf_free(&enc);
    consensus_info(f->c, &after);
    assert_int_equal(after.pending, (unsigned)n);
    run_until(f, pred_all_done);

    consensus_info(f->c, &after);
    assert_int_equal(after.last_index, before.last_index + 1);
    for (i = 1; i <= n; i++) {
        assert_int_equal(f->prop_calls[i], 1);
        assert_int_equal(f->prop_status[i], CONSENSUS_OK);
        assert_int_equal(f->prop_result[i].index, after.last_index);
        assert_int_equal(f->prop_result[i].status,
                         i == 4 ? STORAGE_EPRECONDITION : STORAGE_OK);
    }
    assert_int_equal(after.pending, 0);
}

/* Proposes one command per loop turn (an idle handle keeps the loop
 * turning while entries commit) and records the most entries in flight. */
struct trickle
{
    struct fixture *f;
    uv_idle_t idle;
    struct buf enc;
    int next;          /* next proposal slot */
    int last;          /* last slot to propose */
    unsigned max_inflight;
};

static void trickle_cb(uv_idle_t *h)
{
    struct trickle *t = h->data;
    struct consensus_info info;

    consensus_info(t->f->c, &info);
    if (info.inflight > t->max_inflight) {
        t->max_inflight = info.inflight;
    }
    if (t->next <= t->last) {
        assert_int_equal(propose(t->f, t->next, &t->enc), CONSENSUS_OK);
        t->next++;
    } else if (pred_all_done(t->f)) {
        uv_idle_stop(h);
    }
}

static void proposals_arriving_while_an_entry_commits_share_the_next_one(
    void **state)
{
    struct fixture *f = *state;
    struct consensus_info before;
    struct consensus_info after;
    struct trickle t;
    int i;

    start_leader(f);
    propose_ns(f, 0, "ns1", -1);
    run_until(f, pred_all_done);
    consensus_info(f->c, &before);

    memset(&t, 0, sizeof t);
    t.f = f;
    t.next = 1;
    t.last = MAX_PROPS - 1;
    encode(&t.enc, CMD_NS_PUT, "ns1", NULL, NULL, NULL, -1, 0);
    assert_int_equal(uv_idle_init(&f->loop, &t.idle), 0);
    t.idle.data = &t;
    assert_int_equal(uv_idle_start(&t.idle, trickle_cb), 0);
    run_until(f, pred_all_done);
    uv_idle_stop(&t.idle);
    uv_close((uv_handle_t *)&t.idle, NULL);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    buf_free(&t.enc);

    consensus_info(f->c, &after);
    for (i = 1; i < MAX_PROPS; i++) {
        assert_int_equal(f->prop_status[i], CONSENSUS_OK);
        assert_int_equal(f->prop_result[i].status, STORAGE_OK);
    }
    /* Never more than one entry in flight, so proposals made while one
     * committed were gathered: fewer entries than proposals. */
    assert_int_equal(t.max_inflight, 1);
    assert_int_equal(after.inflight, 0);
    assert_true(after.entries - before.entries < (uint64_t)(MAX_PROPS - 1));
    assert_int_equal(after.pending, 0);
}

/* What consensus reported when the first of two chained proposals was
 * answered (its callback runs right after the leader applies its entry). */
struct early
{
    struct fixture *f;
    struct consensus_info seen;
};

static void early_cb(struct consensus_propose *req, int status,
                     const struct storage_result *result)
{
    struct early *e = req->data;

    consensus_info(e->f->c, &e->seen);
    req->data = e->f;
    prop_cb(req, status, result);
}

/* Slot 1's client writes again (slot 3) as soon as it is answered. */
static void then_slot3_cb(struct consensus_propose *req, int status,
                          const struct storage_result *result)
{
    struct fixture *f = req->data;
    struct buf enc = BUF_INIT;

    prop_cb(req, status, result);
    encode(&enc, CMD_PROP_PUT, "ns1", "s1", "c", "3", -1, 0);
    assert_int_equal(propose(f, 3, &enc), CONSENSUS_OK);
    buf_free(&enc);
}

/* The entry of slot 1 committed with slot 2 queued behind it: the next
 * entry waits (consensus/gather.h) until as many commands are queued as
 * that round had in all, so slot 1's client's next write (slot 3) goes out
 * with slot 2, in one entry. */
static void the_next_entry_gathers_as_many_commands_as_the_last_had(
    void **state)
{
    struct fixture *f = *state;
    struct consensus_info before;
    struct consensus_info after;
    struct buf enc = BUF_INIT;

    start_leader(f);
    propose_ns(f, 0, "ns1", -1);
    run_until(f, pred_all_done);
    consensus_info(f->c, &before);

    encode(&enc, CMD_PROP_PUT, "ns1", "s1", "a", "1", -1, 0);
    assert_int_equal(propose(f, 1, &enc), CONSENSUS_OK);
    f->props[1].cb = then_slot3_cb;
    uv_run(&f->loop, UV_RUN_NOWAIT); /* slot 1's entry goes to raft */
    buf_reset(&enc);
    encode(&enc, CMD_PROP_PUT, "ns1", "s1", "b", "2", -1, 0);
    assert_int_equal(propose(f, 2, &enc), CONSENSUS_OK);
    buf_free(&enc);
    f->props[3].cb = prop_cb; /* pred_all_done waits for slot 3 too */
    run_until(f, pred_all_done);

    consensus_info(f->c, &after);
    assert_int_equal(after.entries, before.entries + 2);
    assert_int_equal(f->prop_status[2], CONSENSUS_OK);
    assert_int_equal(f->prop_status[3], CONSENSUS_OK);
    assert_int_equal(f->prop_result[2].index, f->prop_result[1].index + 1);
    assert_int_equal(f->prop_result[3].index, f->prop_result[2].index);
}

/* After a wait that ran out (slot 2 waited for a second command that never
 * came), entries go out again as soon as the previous one commits: slot
 * 4's entry is submitted before the leader applies slot 3's and answers
 * it. */
static void after_a_wait_runs_out_the_next_entry_goes_out_at_commit(
    void **state)
{
    struct fixture *f = *state;
    struct consensus_info before;
    struct consensus_info mid;
    struct buf enc = BUF_INIT;
    struct early e;

    start_leader(f);
    propose_ns(f, 0, "ns1", -1);
    run_until(f, pred_all_done);
    encode(&enc, CMD_PROP_PUT, "ns1", "s1", "a", "1", -1, 0);
    assert_int_equal(propose(f, 1, &enc), CONSENSUS_OK);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    buf_reset(&enc);
    encode(&enc, CMD_PROP_PUT, "ns1", "s1", "b", "2", -1, 0);
    assert_int_equal(propose(f, 2, &enc), CONSENSUS_OK);
    run_until(f, pred_all_done);
    consensus_info(f->c, &before);

    /* Slot 3's entry goes to raft at this turn's check ... */
    buf_reset(&enc);
    encode(&enc, CMD_PROP_PUT, "ns1", "s1", "c", "3", -1, 0);
    memset(&e, 0, sizeof e);
    e.f = f;
    f->props[3].data = &e;
    f->props[3].cb = early_cb;
    assert_int_equal(consensus_propose(f->c, &f->props[3], enc.base,
                                       enc.len),
                     CONSENSUS_OK);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    consensus_info(f->c, &mid);
    assert_int_equal(mid.entries, before.entries + 1);
    assert_int_equal(mid.inflight, 1);

    /* ... and slot 4, queued behind it, is submitted once that entry is
     * committed, before the leader applies it and answers slot 3. */
    buf_reset(&enc);
    encode(&enc, CMD_PROP_PUT, "ns1", "s1", "d", "4", -1, 0);
    assert_int_equal(propose(f, 4, &enc), CONSENSUS_OK);
    buf_free(&enc);
    run_until(f, pred_all_done);

    /* Slot 3's batch had left the in-flight list; slot 4's was in it. */
    assert_int_equal(e.seen.entries, before.entries + 2);
    assert_int_equal(e.seen.inflight, 1);
    assert_int_equal(f->prop_status[3], CONSENSUS_OK);
    assert_int_equal(f->prop_status[4], CONSENSUS_OK);
    assert_int_equal(f->prop_result[4].index, f->prop_result[3].index + 1);
}

/* Counts callbacks of the many-proposal test; data points at a counter. */
static void count_cb(struct consensus_propose *req, int status,
                     const struct storage_result *result)
{
    unsigned *n = req->data;

    assert_int_equal(status, CONSENSUS_OK);
    assert_int_equal(result->status, STORAGE_OK);
    (*n)++;
}

static int many_done;     /* callbacks expected by pred_many_done */
static unsigned many_cbs; /* callbacks seen */

static int pred_many_done(struct fixture *f)
{
    (void)f;
    return many_cbs == (unsigned)many_done;
}

static void a_full_batch_spills_into_another_entry_in_the_same_turn(
    void **state)
{
    struct fixture *f = *state;
    struct consensus_info before;
    struct consensus_info after;
    struct consensus_propose *reqs;
    struct buf enc = BUF_INIT;
    const int n = 4096 + 3; /* one full entry and a bit */
    int i;

    start_leader(f);
    reqs = calloc((size_t)n, sizeof *reqs);
    assert_non_null(reqs);
    consensus_info(f->c, &before);
    encode(&enc, CMD_NS_PUT, "ns1", NULL, NULL, NULL, -1, 0);
    many_done = n;
    many_cbs = 0;
    for (i = 0; i < n; i++) {
        reqs[i].data = &many_cbs;
        reqs[i].cb = count_cb;
        assert_int_equal(consensus_propose(f->c, &reqs[i], enc.base, enc.len),
                         CONSENSUS_OK);
    }
    buf_free(&enc);
    run_until(f, pred_many_done);
    consensus_info(f->c, &after);
    assert_int_equal(after.last_index, before.last_index + 2);
    assert_int_equal(after.pending, 0);
    free(reqs);
}

static void a_malformed_command_fails_alone_while_its_entry_applies(
    void **state)
{
    struct fixture *f = *state;
    struct buf enc = BUF_INIT;
    static const char junk[] = {'\x7f', 0, 1, 2, 3}; /* unknown op */

    start_leader(f);
    f->props[0].data = f;
    f->props[0].cb = prop_cb;
    assert_int_equal(
        consensus_propose(f->c, &f->props[0], junk, sizeof junk),
        CONSENSUS_OK);
    encode(&enc, CMD_NS_PUT, "ns1", NULL, NULL, NULL, -1, 0);
    assert_int_equal(propose(f, 1, &enc), CONSENSUS_OK);
    buf_free(&enc);
    run_until(f, pred_all_done);

    assert_int_equal(f->prop_status[0], CONSENSUS_OK);
    assert_int_equal(f->prop_result[0].status, STORAGE_ECORRUPT);
    assert_int_equal(f->prop_status[1], CONSENSUS_OK);
    assert_int_equal(f->prop_result[1].status, STORAGE_OK);
    assert_int_equal(f->prop_result[0].index, f->prop_result[1].index);
    assert_int_equal(storage_ns_exists(f->storage, "acc", 3, "ns1", 3), 1);
}

static void a_proposal_over_max_pending_is_refused_with_ebusy(void **state)
{
    struct fixture *f = *state;
    struct buf enc = BUF_INIT;
    struct consensus_propose extra = {f, prop_cb, NULL, 0, NULL};

    f->cfg.max_pending = 2;
    start_leader(f);
    encode(&enc, CMD_NS_PUT, "ns1", NULL, NULL, NULL, -1, 0);
    assert_int_equal(propose(f, 0, &enc), CONSENSUS_OK);
    assert_int_equal(propose(f, 1, &enc), CONSENSUS_OK);
    assert_int_equal(consensus_propose(f->c, &extra, enc.base, enc.len),
                     CONSENSUS_EBUSY);
    buf_free(&enc);
    run_until(f, pred_all_done);
    assert_int_equal(f->prop_status[0], CONSENSUS_OK);
    assert_int_equal(f->prop_status[1], CONSENSUS_OK);
}

static void a_node_without_quorum_refuses_proposals_and_reads(void **state)
{
    struct fixture *f = *state;
    struct consensus_member members[2];
    char other[32];
    struct buf enc = BUF_INIT;

    free_port_addr(other, sizeof other);
    members[0].id = 1;
    members[0].raft_addr = f->addr;
    members[1].id = 2;
    members[1].raft_addr = other;
    f->cfg.members = members;
    f->cfg.n_members = 2;
    node_start(f);

    encode(&enc, CMD_NS_PUT, "ns1", NULL, NULL, NULL, -1, 0);
    f->props[0].cb = prop_cb;
    f->props[0].data = f;
    assert_int_equal(consensus_propose(f->c, &f->props[0], enc.base, enc.len),
                     CONSENSUS_ENOTLEADER);
    f->reads[0].cb = read_cb;
    f->reads[0].data = f;
    assert_int_equal(consensus_barrier(f->c, &f->reads[0]),
                     CONSENSUS_ENOTLEADER);
    buf_free(&enc);
    f->props[0].cb = NULL;
    f->reads[0].cb = NULL;
}

/* --- consensus_barrier ----------------------------------------------------- */

static void reads_waiting_together_share_one_barrier(void **state)
{
    struct fixture *f = *state;
    struct consensus_info before;
    struct consensus_info after;
    int i;
    const int n = 5;

    start_leader(f);
    consensus_info(f->c, &before);
    for (i = 0; i < n; i++) {
        f->reads[i].data = f;
        f->reads[i].cb = read_cb;
        assert_int_equal(consensus_barrier(f->c, &f->reads[i]), CONSENSUS_OK);
    }
    run_until(f, pred_all_done);
    consensus_info(f->c, &after);
    assert_int_equal(after.last_index, before.last_index + 1);
    assert_int_equal(after.applied_index, after.last_index);
    for (i = 0; i < n; i++) {
        assert_int_equal(f->read_calls[i], 1);
        assert_int_equal(f->read_status[i], CONSENSUS_OK);
    }
}

static void a_read_arriving_during_a_barrier_waits_for_the_next_one(
    void **state)
{
    struct fixture *f = *state;
    struct consensus_info before;
    struct consensus_info after;

    start_leader(f);
    consensus_info(f->c, &before);
    f->reads[0].data = f;
    f->reads[0].cb = read_cb;
    assert_int_equal(consensus_barrier(f->c, &f->reads[0]), CONSENSUS_OK);
    /* One turn: the check issues the barrier for read 0 only. */
    uv_run(&f->loop, UV_RUN_NOWAIT);
    consensus_info(f->c, &after);
    assert_int_equal(after.last_index, before.last_index + 1);
    assert_int_equal(f->read_calls[0], 0);

    /* Read 1 is then held for a second read (consensus/gather.h) that
     * never comes: GATHER_MAX_MS later its barrier starts anyway. */
    f->reads[1].data = f;
    f->reads[1].cb = read_cb;
    assert_int_equal(consensus_barrier(f->c, &f->reads[1]), CONSENSUS_OK);
    run_until(f, pred_all_done);
    consensus_info(f->c, &after);
    assert_int_equal(after.last_index, before.last_index + 2);
    assert_int_equal(f->read_calls[0], 1);
    assert_int_equal(f->read_calls[1], 1);
    assert_int_equal(f->read_status[0], CONSENSUS_OK);
    assert_int_equal(f->read_status[1], CONSENSUS_OK);
}

/* Read 2 arrives one loop turn after read 0 is answered: after the check
 * that would have issued the next barrier at once for read 1 alone. */
static uv_timer_t late_read_timer;

static void late_read_cb(uv_timer_t *t)
{
    struct fixture *f = t->data;

    f->reads[2].data = f;
    f->reads[2].cb = read_cb;
    assert_int_equal(consensus_barrier(f->c, &f->reads[2]), CONSENSUS_OK);
}

static void read0_then_late_read_cb(struct consensus_read *req, int status)
{
    read_cb(req, status);
    uv_timer_start(&late_read_timer, late_read_cb, 0, 0);
}

/* The barrier that served read 0 ended with read 1 waiting: the next one
 * waits for two reads (consensus/gather.h) and serves reads 1 and 2 both. */
static void the_next_barrier_gathers_as_many_reads_as_the_last_had(
    void **state)
{
    struct fixture *f = *state;
    struct consensus_info before;
    struct consensus_info after;
    int i;

    start_leader(f);
    assert_int_equal(uv_timer_init(&f->loop, &late_read_timer), 0);
    late_read_timer.data = f;
    consensus_info(f->c, &before);
    f->reads[0].data = f;
    f->reads[0].cb = read0_then_late_read_cb;
    assert_int_equal(consensus_barrier(f->c, &f->reads[0]), CONSENSUS_OK);
    uv_run(&f->loop, UV_RUN_NOWAIT); /* the barrier for read 0 is issued */
    f->reads[1].data = f;
    f->reads[1].cb = read_cb;
    assert_int_equal(consensus_barrier(f->c, &f->reads[1]), CONSENSUS_OK);
    f->reads[2].cb = read_cb; /* pred_all_done waits for it too */
    run_until(f, pred_all_done);
    uv_close((uv_handle_t *)&late_read_timer, NULL);
    consensus_info(f->c, &after);
    assert_int_equal(after.last_index, before.last_index + 2);
    for (i = 0; i < 3; i++) {
        assert_int_equal(f->read_calls[i], 1);
        assert_int_equal(f->read_status[i], CONSENSUS_OK);
    }
}

/* --- restart --------------------------------------------------------------- */

static void chain_cb(struct consensus_propose *req, int status,
                     const struct storage_result *result);

static void chain_next(struct fixture *f)
{
    struct buf enc = BUF_INIT;
    char name[16];
    char value[16];
    int i = f->chain_left - 1;

    snprintf(name, sizeof name, "p%d", i % 7);
    snprintf(value, sizeof value, "%d", i);
    encode(&enc, CMD_PROP_PUT, "ns1", "s1", name, value, -1, 0);
    f->props[0].data = f;
    f->props[0].cb = chain_cb;
    assert_int_equal(
        consensus_propose(f->c, &f->props[0], enc.base, enc.len),
        CONSENSUS_OK);
    buf_free(&enc);
}

/* Each proposal is made from the previous one's callback, so each becomes
 * an entry of its own. */
static void chain_cb(struct consensus_propose *req, int status,
                     const struct storage_result *result)
{
    struct fixture *f = req->data;

    assert_int_equal(status, CONSENSUS_OK);
    assert_int_equal(result->status, STORAGE_OK);
    f->chain_left--;
    if (f->chain_left > 0) {
        chain_next(f);
    }
}

static int pred_chain_done(struct fixture *f)
{
    return f->chain_left == 0;
}

static int dir_has_snapshot(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int found = 0;

    assert_non_null(d);
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, "snapshot-", 9) == 0) {
            found = 1;
        }
    }
    closedir(d);
    return found;
}

/* A snapshot is stored: libraft calls the FSM's finalize, which counts it,
 * once its files are written. Stopping before that abandons it. */
static int pred_snapshot_stored(struct fixture *f)
{
    struct consensus_info info;

    consensus_info(f->c, &info);
    return info.snapshots_taken > 0;
}

static void a_restart_rebuilds_the_same_state_from_snapshot_and_log(
    void **state)
{
    struct fixture *f = *state;
    uint8_t before[32];
    uint8_t after[32];
    struct consensus_info info;
    uint64_t last;

    f->cfg.snapshot_threshold = 16;
    f->cfg.snapshot_trailing = 4;
    start_leader(f);
    propose_ns(f, 1, "ns1", -1);
    run_until(f, pred_all_done);
    f->chain_left = 45;
    chain_next(f);
    run_until(f, pred_chain_done);
    run_until(f, pred_snapshot_stored);

    consensus_info(f->c, &info);
    last = info.last_index;
    assert_true(last >= 46);
    assert_int_equal(storage_digest(f->storage, before), 0);
    node_stop(f);
    assert_true(dir_has_snapshot(f->dir));

    start_leader(f);
    consensus_info(f->c, &info);
    assert_int_equal(info.applied_index, last);
    assert_int_equal(storage_applied_index(f->storage), last);
    assert_int_equal(storage_digest(f->storage, after), 0);
    assert_memory_equal(before, after, sizeof before);
}

/* --- three nodes ------------------------------------------------------------ */

#define N_NODES 3

/* A three-node cluster on the fixture's loop. */
struct cluster
{
    char dirs[N_NODES][96];                 /* data dir per node */
    char addrs[N_NODES][32];                /* raft address per node */
    struct consensus_member members[N_NODES]; /* bootstrap configuration */
    struct storage *storages[N_NODES];      /* state machines */
    struct consensus *nodes[N_NODES];       /* the nodes */
};

static struct cluster *the_cluster; /* for predicates */

static int pred_cluster_leader(struct fixture *f)
{
    struct consensus_info info;
    int i;

    (void)f;
    for (i = 0; i < N_NODES; i++) {
        consensus_info(the_cluster->nodes[i], &info);
        if (info.is_leader) {
            return 1;
        }
    }
    return 0;
}

static int pred_cluster_caught_up(struct fixture *f)
{
    uint64_t target = storage_applied_index(the_cluster->storages[0]);
    int i;

    if (!pred_all_done(f)) {
        return 0;
    }
    for (i = 0; i < N_NODES; i++) {
        uint64_t idx = storage_applied_index(the_cluster->storages[i]);
        if (idx > target) {
            target = idx;
        }
    }
    for (i = 0; i < N_NODES; i++) {
        if (storage_applied_index(the_cluster->storages[i]) != target) {
            return 0;
        }
    }
    return 1;
}

static int pred_cluster_closed(struct fixture *f)
{
    return f->closed == N_NODES;
}

/* Start the three nodes of cl with f->cfg (ids 1..3) and run until one
 * leads; returns its slot. */
static int cluster_start(struct fixture *f, struct cluster *cl)
{
    struct consensus_config cfg;
    struct consensus_info info;
    char errmsg[256];
    int leader = -1;
    int i;

    memset(cl, 0, sizeof *cl);
    the_cluster = cl;
    for (i = 0; i < N_NODES; i++) {
        snprintf(cl->dirs[i], sizeof cl->dirs[i], "%s/n%d", f->dir, i + 1);
        free_port_addr(cl->addrs[i], sizeof cl->addrs[i]);
        cl->members[i].id = (uint64_t)i + 1;
        cl->members[i].raft_addr = cl->addrs[i];
    }
    for (i = 0; i < N_NODES; i++) {
        assert_int_equal(storage_open(&cl->storages[i]), 0);
        cfg = f->cfg;
        cfg.loop = &f->loop;
        cfg.storage = cl->storages[i];
        cfg.id = (uint64_t)i + 1;
        cfg.raft_addr = cl->addrs[i];
        cfg.data_dir = cl->dirs[i];
        cfg.members = cl->members;
        cfg.n_members = N_NODES;
        if (consensus_start(&cl->nodes[i], &cfg, errmsg, sizeof errmsg) != 0) {
            fail_msg("consensus_start: %s", errmsg);
        }
    }
    run_until(f, pred_cluster_leader);
    for (i = 0; i < N_NODES; i++) {
        consensus_info(cl->nodes[i], &info);
        if (info.is_leader) {
            leader = i;
        }
    }
    assert_true(leader >= 0);
    return leader;
}

static void cluster_stop(struct fixture *f, struct cluster *cl)
{
    int i;

    for (i = 0; i < N_NODES; i++) {
        consensus_close(cl->nodes[i], closed_cb, f);
        retire(f, cl->nodes[i]);
    }
    run_until(f, pred_cluster_closed);
    f->closed = 0;
    for (i = 0; i < N_NODES; i++) {
        storage_close(cl->storages[i]);
    }
    the_cluster = NULL;
}

static void every_replica_of_a_three_node_cluster_applies_the_same_entries(
    void **state)
{
    struct fixture *f = *state;
    struct cluster cl;
    struct buf enc = BUF_INIT;
    struct consensus_propose extra = {f, prop_cb, NULL, 0, NULL};
    uint8_t digests[N_NODES][32];
    uint64_t applied[N_NODES];
    int digest_rc[N_NODES];
    char name[16];
    int leader = cluster_start(f, &cl);
    int i;

    f->c = cl.nodes[leader];
    propose_ns(f, 0, "ns1", -1);
    for (i = 1; i <= 5; i++) {
        snprintf(name, sizeof name, "p%d", i);
        encode(&enc, CMD_PROP_PUT, "ns1", "s1", name, "\"v\"", -1, 0);
        assert_int_equal(propose(f, i, &enc), CONSENSUS_OK);
    }
    f->c = NULL;
    assert_int_equal(consensus_propose(cl.nodes[(leader + 1) % N_NODES],
                                       &extra, enc.base, enc.len),
                     CONSENSUS_ENOTLEADER);
    buf_free(&enc);
    run_until(f, pred_cluster_caught_up);
    for (i = 0; i < N_NODES; i++) {
        applied[i] = storage_applied_index(cl.storages[i]);
        digest_rc[i] = storage_digest(cl.storages[i], digests[i]);
    }
    cluster_stop(f, &cl); /* before any assertion can leave the test */

    for (i = 0; i <= 5; i++) {
        assert_int_equal(f->prop_status[i], CONSENSUS_OK);
        assert_int_equal(f->prop_result[i].status, STORAGE_OK);
    }
    for (i = 0; i < N_NODES; i++) {
        assert_int_equal(applied[i], f->prop_result[0].index);
        assert_int_equal(digest_rc[i], 0);
        assert_memory_equal(digests[i], digests[0], 32);
    }
}

/* The nodes of a cluster apply the same log, so with one threshold they
 * would all snapshot at the same indexes, at once. Node id k takes its
 * first snapshot (k - 1) * threshold / 3 entries later than node 1, then
 * one every threshold entries. Entries go one at a time here, each applied
 * by every node before the next, so a snapshot starts exactly at its
 * index unless the node's previous one is still being written (then
 * libraft takes it at the first entry after): the checks allow such a
 * delay, never an early snapshot. */
#define STAGGER_T 30u

static void the_nodes_snapshot_at_staggered_indexes(void **state)
{
    struct fixture *f = *state;
    struct cluster cl;
    struct consensus_info info;
    uint64_t at[N_NODES][2] = {{0}};   /* first two snapshot indexes */
    uint64_t taken[N_NODES] = {0};
    int leader;
    int round;
    int i;

    f->cfg.snapshot_threshold = STAGGER_T;
    f->cfg.snapshot_trailing = 4;
    leader = cluster_start(f, &cl);
    f->c = cl.nodes[leader];
    propose_ns(f, 0, "ns1", -1);
    run_until(f, pred_all_done);
    for (round = 0; round < 200; round++) {
        int done = 1;

        f->chain_left = 1;
        chain_next(f);
        run_until(f, pred_chain_done);
        run_until(f, pred_cluster_caught_up);
        for (i = 0; i < N_NODES; i++) {
            consensus_info(cl.nodes[i], &info);
            if (info.snapshots_taken > taken[i] && taken[i] < 2) {
                at[i][taken[i]] = info.snapshot_index;
            }
            taken[i] = info.snapshots_taken;
            done = done && taken[i] >= 2;
        }
        if (done) {
            break;
        }
    }
    f->c = NULL;
    cluster_stop(f, &cl); /* before any assertion can leave the test */
    for (i = 0; i < N_NODES; i++) {
        uint64_t first_at = STAGGER_T + (uint64_t)i * (STAGGER_T / 3);

        if (taken[i] < 2 || at[i][0] < first_at ||
            at[i][1] < at[i][0] + STAGGER_T ||
            (i == 2 && at[i][1] >= at[i][0] + first_at)) {
            fail_msg("node %d: %llu snapshots, first at %llu (not before "
                     "%llu), second at %llu (%u later, and for node 3 "
                     "less than %llu)",
                     i + 1, (unsigned long long)taken[i],
                     (unsigned long long)at[i][0],
                     (unsigned long long)first_at,
                     (unsigned long long)at[i][1], STAGGER_T,
                     (unsigned long long)first_at);
        }
    }
}

/* --- Membership ---------------------------------------------------------- */

static void change_cb(struct consensus_change *req, int status)
{
    struct fixture *f = req->data;
    int i = (int)(req - f->changes);

    f->change_calls[i]++;
    f->change_status[i] = status;
}

static struct consensus_change *change(struct fixture *f, int i)
{
    f->changes[i].data = f;
    f->changes[i].cb = change_cb;
    return &f->changes[i];
}

static int pred_change0(struct fixture *f) { return f->change_calls[0] > 0; }
static int pred_change1(struct fixture *f) { return f->change_calls[1] > 0; }
static int pred_change2(struct fixture *f) { return f->change_calls[2] > 0; }

/* Node 2 has applied everything node 1 has, and all proposals are done. */
static int pred_pair_caught_up(struct fixture *f)
{
    return pred_all_done(f) &&
           storage_applied_index(f->storage2) ==
               storage_applied_index(f->storage) &&
           storage_applied_index(f->storage) > 0;
}

static int pred_peer_reachable(struct fixture *f)
{
    struct consensus_server out[4];
    unsigned n = 0;
    unsigned i;

    assert_int_equal(consensus_servers(f->c, out, 4, &n), 0);
    for (i = 0; i < n && i < 4; i++) {
        if (out[i].id == 2) {
            return out[i].reachable == 1 && out[i].role == CONSENSUS_VOTER;
        }
    }
    return 0;
}

static int pred_node2_leads(struct fixture *f)
{
    struct consensus_info info;

    consensus_info(f->c2, &info);
    return info.is_leader;
}

static int pred_node1_leads_alone(struct fixture *f)
{
    struct consensus_server out[4];
    unsigned n = 0;
    struct consensus_info info;

    consensus_info(f->c, &info);
    if (!info.is_leader) {
        return 0;
    }
    assert_int_equal(consensus_servers(f->c, out, 4, &n), 0);
    return n == 1;
}

static int pred_node2_closed(struct fixture *f)
{
    return f->c2 == NULL;
}

static void node2_closed_cb(void *data)
{
    struct fixture *f = data;

    retire(f, f->c2);
    f->c2 = NULL;
}

/* The add of change 0 is committed: node 2 is in the configuration. */
static int pred_add_committed(struct fixture *f)
{
    return f->changes[0].step >= 1 || f->change_calls[0] > 0;
}

/* Start node 2 as configured in f->cfg (members, if any) with join and
 * election timeout election_ms (0: f->cfg's). */
static void node2_start_as(struct fixture *f, int join, unsigned election_ms)
{
    struct consensus_config cfg = f->cfg;
    char errmsg[256];

    snprintf(f->dir2, sizeof f->dir2, "%s/n2", f->dir);
    if (f->addr2[0] == '\0') {
        free_port_addr(f->addr2, sizeof f->addr2);
    }
    assert_int_equal(storage_open(&f->storage2), 0);
    cfg.loop = &f->loop;
    cfg.storage = f->storage2;
    cfg.id = 2;
    cfg.raft_addr = f->addr2;
    cfg.data_dir = f->dir2;
    cfg.join = join;
    if (election_ms != 0) {
        cfg.election_timeout_ms = election_ms;
    }
    if (consensus_start(&f->c2, &cfg, errmsg, sizeof errmsg) != 0) {
        fail_msg("consensus_start: %s", errmsg);
    }
}

/* Start node 2 with join = 1: an empty log, waiting to be added. */
static void node2_start(struct fixture *f)
{
    node2_start_as(f, 1, 0);
}

static void node2_stop(struct fixture *f)
{
    if (f->c2 != NULL) {
        consensus_close(f->c2, node2_closed_cb, f);
        run_until(f, pred_node2_closed);
    }
    if (f->storage2 != NULL) {
        storage_close(f->storage2);
        f->storage2 = NULL;
    }
}

static void a_joining_node_is_added_given_leadership_and_removed(void **state)
{
    struct fixture *f = *state;
    struct consensus_server out[4];
    struct consensus_info info;
    uint8_t d1[32];
    uint8_t d2[32];
    unsigned n = 0;

    start_leader(f);
    propose_ns(f, 0, "ns1", -1);
    run_until(f, pred_all_done);
    node2_start(f);
    consensus_info(f->c2, &info);
    assert_false(info.is_leader);
    assert_int_equal(info.last_index, 0);
    assert_int_equal(consensus_servers(f->c2, out, 4, &n), 0);
    assert_int_equal(n, 0);

    /* Only the leader changes membership, one change at a time. */
    assert_int_equal(consensus_add_server(f->c2, change(f, 7), 3, "x:1"),
                     CONSENSUS_ENOTLEADER);
    assert_int_equal(consensus_add_server(f->c, change(f, 0), 2, f->addr2),
                     CONSENSUS_OK);
    assert_int_equal(consensus_add_server(f->c, change(f, 7), 3, "x:1"),
                     CONSENSUS_ECHANGING);
    run_until(f, pred_change0);
    assert_int_equal(f->change_calls[0], 1);
    assert_int_equal(f->change_status[0], CONSENSUS_OK);
    assert_int_equal(f->changes[0].id, 2);
    assert_int_equal(f->change_calls[7], 0);

    /* Both vote; the leader hears from node 2. */
    run_until(f, pred_peer_reachable);
    assert_int_equal(consensus_servers(f->c, out, 4, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(out[0].id, 1);
    assert_int_equal(out[0].role, CONSENSUS_VOTER);
    assert_int_equal(out[0].reachable, 1);
    assert_string_equal(out[1].raft_addr, f->addr2);
    assert_int_equal(out[1].role, CONSENSUS_VOTER);
    assert_int_equal(consensus_servers(f->c2, out, 4, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(out[0].reachable, 1); /* the leader it follows */
    assert_int_equal(out[1].reachable, 1); /* itself */
    assert_int_equal(out[0].match_index, 0);

    /* The id or the address taken: EEXIST. */
    assert_int_equal(consensus_add_server(f->c, change(f, 7), 2, f->addr2),
                     CONSENSUS_EEXIST);
    assert_int_equal(consensus_add_server(f->c, change(f, 7), 3, f->addr2),
                     CONSENSUS_EEXIST);
    assert_int_equal(consensus_remove_server(f->c, change(f, 7), 9),
                     CONSENSUS_ENOTFOUND);

    /* Node 2 applies what the cluster commits. */
    propose_ns(f, 1, "ns2", -1);
    run_until(f, pred_pair_caught_up);
    assert_int_equal(f->prop_status[1], CONSENSUS_OK);
    assert_int_equal(storage_digest(f->storage, d1), 0);
    assert_int_equal(storage_digest(f->storage2, d2), 0);
    assert_memory_equal(d1, d2, 32);

    /* Hand leadership to node 2. */
    assert_int_equal(consensus_transfer(f->c, change(f, 1), 2), CONSENSUS_OK);
    run_until(f, pred_change1);
    assert_int_equal(f->change_status[1], CONSENSUS_OK);
    run_until(f, pred_node2_leads);
    consensus_info(f->c2, &info);
    assert_int_equal(info.leader_id, 2);
    assert_true(info.elections >= 1);
    assert_true(info.leader_changes >= 2);
    consensus_info(f->c, &info);
    assert_false(info.is_leader);
    assert_int_equal(info.entries, 2);
    assert_int_equal(info.commands, 2);

    /* Node 2 removes itself: it steps down, node 1 leads alone. */
    assert_int_equal(consensus_remove_server(f->c2, change(f, 2), 2),
                     CONSENSUS_OK);
    run_until(f, pred_change2);
    assert_int_equal(f->change_status[2], CONSENSUS_OK);
    run_until(f, pred_node1_leads_alone);
    propose_ns(f, 3, "ns3", -1);
    run_until(f, pred_all_done);
    assert_int_equal(f->prop_status[3], CONSENSUS_OK);
    assert_int_equal(f->prop_result[3].status, STORAGE_OK);

    node2_stop(f);
    assert_int_equal(f->change_calls[7], 0);
}

static void a_leader_losing_its_quorum_fails_in_flight_proposals_once(
    void **state)
{
    struct fixture *f = *state;
    struct consensus_member members[2];
    struct consensus_server out[4];
    unsigned n = 0;

    free_port_addr(f->addr2, sizeof f->addr2);
    members[0].id = 1;
    members[0].raft_addr = f->addr;
    members[1].id = 2;
    members[1].raft_addr = f->addr2;
    f->cfg.members = members;
    f->cfg.n_members = 2;
    node_start(f);
    /* Node 2 waits ten times longer before campaigning: node 1 leads. */
    node2_start_as(f, 0, 2000);
    run_until(f, pred_leader);
    propose_ns(f, 0, "ns1", -1);
    run_until(f, pred_all_done);
    assert_int_equal(f->prop_status[0], CONSENSUS_OK);
    run_until(f, pred_peer_reachable);

    node2_stop(f);
    propose_ns(f, 1, "ns2", -1);
    run_until(f, pred_all_done);
    assert_int_equal(f->prop_calls[1], 1);
    assert_int_equal(f->prop_status[1], CONSENSUS_ELEADERSHIP);
    f->props[2].data = f;
    f->props[2].cb = prop_cb;
    assert_int_equal(consensus_propose(f->c, &f->props[2], "x", 1),
                     CONSENSUS_ENOTLEADER);
    /* A follower knows the members but not whether they are up. */
    assert_int_equal(consensus_servers(f->c, out, 4, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(out[0].reachable, 1);
    assert_int_equal(out[1].reachable, -1);
    node_stop(f);
    assert_int_equal(f->prop_calls[1], 1);
}

static void a_server_left_a_non_voter_is_promoted_by_adding_it_again(
    void **state)
{
    struct fixture *f = *state;
    struct consensus_server out[4];
    unsigned n = 0;

    start_leader(f);
    propose_ns(f, 0, "ns1", -1);
    run_until(f, pred_all_done);
    /* Node 2 is not running yet: it joins the configuration as a spare but
     * cannot catch up, and closing the leader fails the change once. */
    free_port_addr(f->addr2, sizeof f->addr2);
    assert_int_equal(consensus_add_server(f->c, change(f, 0), 2, f->addr2),
                     CONSENSUS_OK);
    run_until(f, pred_add_committed);
    node_stop(f);
    assert_int_equal(f->change_calls[0], 1);
    assert_int_equal(f->change_status[0], CONSENSUS_ESHUTDOWN);

    /* Restarted, node 1 finds 2 as a spare; adding it again promotes it. */
    node_start(f);
    run_until(f, pred_leader);
    assert_int_equal(consensus_servers(f->c, out, 4, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(out[1].role, CONSENSUS_SPARE);
    node2_start(f);
    assert_int_equal(consensus_add_server(f->c, change(f, 1), 2, f->addr2),
                     CONSENSUS_OK);
    run_until(f, pred_change1);
    assert_int_equal(f->change_status[1], CONSENSUS_OK);
    run_until(f, pred_peer_reachable);
    node2_stop(f);
}

/* --- consensus_close -------------------------------------------------------- */

static void closing_fails_pending_requests_once_and_refuses_new_ones(
    void **state)
{
    struct fixture *f = *state;
    struct buf enc = BUF_INIT;
    int i;

    start_leader(f);
    encode(&enc, CMD_NS_PUT, "ns1", NULL, NULL, NULL, -1, 0);
    /* Slot 0 is flushed to raft (in flight); 1 and 2 stay queued. */
    assert_int_equal(propose(f, 0, &enc), CONSENSUS_OK);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(propose(f, 1, &enc), CONSENSUS_OK);
    assert_int_equal(propose(f, 2, &enc), CONSENSUS_OK);
    f->reads[0].data = f;
    f->reads[0].cb = read_cb;
    assert_int_equal(consensus_barrier(f->c, &f->reads[0]), CONSENSUS_OK);

    consensus_close(f->c, closed_cb, f);
    assert_int_equal(consensus_propose(f->c, &f->props[3], enc.base, enc.len),
                     CONSENSUS_ESHUTDOWN);
    assert_int_equal(consensus_barrier(f->c, &f->reads[1]),
                     CONSENSUS_ESHUTDOWN);
    buf_free(&enc);
    run_until(f, pred_closed);
    retire(f, f->c);
    f->c = NULL;

    assert_int_equal(f->closed, 1);
    f->closed = 0;
    for (i = 0; i < 3; i++) {
        assert_int_equal(f->prop_calls[i], 1);
    }
    assert_true(f->prop_status[0] == CONSENSUS_ESHUTDOWN ||
                f->prop_status[0] == CONSENSUS_OK);
    assert_int_equal(f->prop_status[1], CONSENSUS_ESHUTDOWN);
    assert_int_equal(f->prop_status[2], CONSENSUS_ESHUTDOWN);
    assert_int_equal(f->prop_calls[3], 0);
    assert_int_equal(f->read_calls[0], 1);
    assert_int_equal(f->read_status[0], CONSENSUS_ESHUTDOWN);
    assert_int_equal(f->read_calls[1], 0);
}

/* --- purge ------------------------------------------------------------------ */

static int pred_purged(struct fixture *f)
{
    struct storage_counts counts;

    storage_counts(f->storage, &counts);
    return counts.properties == 0;
}

static void the_leader_purges_an_expired_property(void **state)
{
    struct fixture *f = *state;
    struct buf enc = BUF_INIT;
    struct storage_counts counts;
    uint64_t t = 0;

    f->cfg.purge_interval_ms = 50;
    start_leader(f);
    propose_ns(f, 0, "ns1", 1);
    run_until(f, pred_all_done);
    encode(&enc, CMD_PROP_PUT, "ns1", "s1", "p", "true", -1, 0);
    assert_int_equal(propose(f, 1, &enc), CONSENSUS_OK);
    buf_free(&enc);
    run_until(f, pred_all_done);
    assert_int_equal(f->prop_result[1].status, STORAGE_OK);
    storage_counts(f->storage, &counts);
    assert_int_equal(counts.properties, 1);
    assert_int_equal(storage_next_expiry(f->storage, &t), 0);

    run_until(f, pred_purged);
    storage_counts(f->storage, &counts);
    assert_int_equal(counts.properties, 0);
    assert_int_equal(storage_next_expiry(f->storage, &t), STORAGE_ENOTFOUND);
}

/* --- consensus_strerror ------------------------------------------------------ */

static void every_status_has_a_message(void **state)
{
    (void)state;
    assert_string_equal(consensus_strerror(CONSENSUS_OK), "ok");
    assert_string_equal(consensus_strerror(CONSENSUS_ESHUTDOWN),
                        "node is shutting down");
    assert_string_equal(consensus_strerror(99), "unknown error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            a_one_node_cluster_applies_a_proposal_at_its_entry_index, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            proposals_of_one_loop_turn_share_one_entry_with_own_results, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            a_full_batch_spills_into_another_entry_in_the_same_turn, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            proposals_arriving_while_an_entry_commits_share_the_next_one,
            setup, teardown),
        cmocka_unit_test_setup_teardown(
            the_next_entry_gathers_as_many_commands_as_the_last_had, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            after_a_wait_runs_out_the_next_entry_goes_out_at_commit, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            a_malformed_command_fails_alone_while_its_entry_applies, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            a_proposal_over_max_pending_is_refused_with_ebusy, setup, teardown),
        cmocka_unit_test_setup_teardown(
            a_node_without_quorum_refuses_proposals_and_reads, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            reads_waiting_together_share_one_barrier, setup, teardown),
        cmocka_unit_test_setup_teardown(
            the_next_barrier_gathers_as_many_reads_as_the_last_had, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            a_read_arriving_during_a_barrier_waits_for_the_next_one, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            a_restart_rebuilds_the_same_state_from_snapshot_and_log, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            the_nodes_snapshot_at_staggered_indexes, setup, teardown),
        cmocka_unit_test_setup_teardown(
            every_replica_of_a_three_node_cluster_applies_the_same_entries,
            setup, teardown),
        cmocka_unit_test_setup_teardown(
            closing_fails_pending_requests_once_and_refuses_new_ones, setup,
            teardown),
        cmocka_unit_test_setup_teardown(the_leader_purges_an_expired_property,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            a_joining_node_is_added_given_leadership_and_removed, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            a_server_left_a_non_voter_is_promoted_by_adding_it_again, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            a_leader_losing_its_quorum_fails_in_flight_proposals_once, setup,
            teardown),
        cmocka_unit_test(every_status_has_a_message),
    };

    /* As in node/main.c: raft's peers close connections while we write. */
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
