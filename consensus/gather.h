/* Gathering the requests of a round: the reads of a read round (a Raft
 * barrier on the leader, a read-index request from a follower), or the
 * commands of the leader's next Raft entry.
 *
 * One round in flight serves the reads that were waiting when it started;
 * reads arriving meanwhile wait for the next one. Under steady load that
 * splits the clients into two groups that take turns, each round serving
 * about half of them, while a round costs the same whatever it serves (on
 * the leader a barrier is a Raft entry: a disk write on every node and a
 * round of messages). So when a round ends, the next one waits until as
 * many reads are queued as the last one had in all (those it served plus
 * those queued when it ended), or GATHER_MAX_MS, whichever comes first:
 * the two groups become one, and each round serves twice as many reads.
 *
 * A lone client never waits (its round had one read; the next needs one).
 * Clients that do not come back at once (they think between requests, or
 * went away) make a round wait GATHER_MAX_MS; after such a wait the next
 * GATHER_SKIP_ROUNDS rounds start without waiting, so a load that is not
 * a closed loop pays the wait once in that many rounds. Nothing here
 * blocks: the owner asks gather_ready whenever it could start a round, and
 * the timer calls the owner's flush once the wait is over.
 *
 * The same holds for writes: one Raft entry in flight carries the commands
 * queued when it started, and every entry costs a disk write on every node
 * and a round of messages, so the leader's next entry gathers the same way.
 *
 * Usage: gather_init; gather_ready(g, queued) before starting a round (0:
 * wait, the timer is armed); gather_ended(g, served, queued) when a round
 * completes; uv_close(&g->timer, cb) when done (timer.data is the owner's
 * data, for that callback). */
#ifndef CTXD_GATHER_H
#define CTXD_GATHER_H

#include <uv.h>

#define GATHER_MAX_MS 2       /* longest wait for the target, ms: libuv
                                 counts whole ms from the loop's time, so
                                 the wait is 1 to 2 ms (1 ms was often
                                 much less, and ran out under steady load) */
#define GATHER_SKIP_ROUNDS 16 /* rounds that do not wait after a wait that
                                 ran out */

struct gather
{
    uv_timer_t timer;                /* armed while a round waits */
    void (*flush)(struct gather *g); /* the owner: start a round if ready */
    unsigned target;                 /* reads the last round had in all */
    unsigned skip;                   /* rounds left that do not wait */
    int due;                         /* the wait is over: start now */
};

/* Initialize; data goes to timer.data. Like the callers' other timers,
 * nothing to check: uv_timer_init only fills the handle in and queues it
 * on the loop (it returns 0 on Unix). */
void gather_init(struct gather *g, uv_loop_t *loop, void *data,
                 void (*flush)(struct gather *g));

/* May a round start now, with queued reads waiting (queued > 0)? 1: yes
 * (the wait, if any, is over); 0: not yet, the timer will call flush. */
int gather_ready(struct gather *g, unsigned queued);

/* A round that served `served` reads ended with `queued` waiting. */
void gather_ended(struct gather *g, unsigned served, unsigned queued);

#endif
