/* Gathering the requests of a round (entries, barriers, read-index
 * requests); see gather.h. */
#include "gather.h"

#include "../lib/container.h"

static void gather_timer_cb(uv_timer_t *t)
{
    struct gather *g = CONTAINER_OF(t, struct gather, timer);

    g->due = 1;
    g->skip = GATHER_SKIP_ROUNDS;
    g->flush(g);
}

void gather_init(struct gather *g, uv_loop_t *loop, void *data,
                 void (*flush)(struct gather *g))
{
    (void)uv_timer_init(loop, &g->timer);
    g->timer.data = data;
    g->flush = flush;
    g->target = 0;
    g->skip = 0;
    g->due = 0;
}

int gather_ready(struct gather *g, unsigned queued)
{
    if (g->due || queued >= g->target) {
        uv_timer_stop(&g->timer);
        g->due = 0;
        return 1;
    }
    if (g->skip > 0) {
        g->skip--; /* a recent wait ran out: this round does not wait */
        return 1;
    }
    if (uv_is_active((uv_handle_t *)&g->timer) ||
        uv_timer_start(&g->timer, gather_timer_cb, GATHER_MAX_MS, 0) == 0) {
        return 0;
    }
    return 1; /* no timer to end the wait (closing): do not wait */
}

void gather_ended(struct gather *g, unsigned served, unsigned queued)
{
    g->target = served <= ~0u - queued ? served + queued : ~0u;
}
