/* consensus/gather.c: when the next read round may start. Each test owns a
 * libuv loop; the waits run on it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include <cmocka.h>

#include "../../consensus/gather.h"

struct fixture
{
    uv_loop_t loop;
    struct gather g;
    unsigned queued;  /* reads the owner has waiting */
    unsigned flushes; /* flush calls */
    unsigned started; /* rounds started from flush */
};

/* The owner's flush: start a round if gather_ready says so. */
static void flush(struct gather *g)
{
    struct fixture *f = g->timer.data;

    f->flushes++;
    if (gather_ready(g, f->queued)) {
        f->started++;
    }
}

static int setup(void **state)
{
    static struct fixture f;

    f = (struct fixture){0};
    if (uv_loop_init(&f.loop) != 0) {
        return -1;
    }
    gather_init(&f.g, &f.loop, &f, flush);
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    uv_close((uv_handle_t *)&f->g.timer, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    return uv_loop_close(&f->loop);
}

static int timer_armed(struct fixture *f)
{
    return uv_is_active((uv_handle_t *)&f->g.timer);
}

static void the_first_round_starts_at_once(void **state)
{
    struct fixture *f = *state;

    assert_int_equal(gather_ready(&f->g, 1), 1);
    assert_false(timer_armed(f));
}

/* A lone client: its round had one read and nothing queued behind it. */
static void a_lone_client_never_waits(void **state)
{
    struct fixture *f = *state;

    gather_ended(&f->g, 1, 0);
    assert_int_equal(gather_ready(&f->g, 1), 1);
    assert_false(timer_armed(f));
}

/* Two groups taking turns: 3 served, 2 already queued for the next. The
 * next round waits for the 3 to come back, then starts with all 5. */
static void the_next_round_waits_for_as_many_as_the_last_had(void **state)
{
    struct fixture *f = *state;

    gather_ended(&f->g, 3, 2);
    assert_int_equal(gather_ready(&f->g, 2), 0);
    assert_true(timer_armed(f));
    assert_int_equal(gather_ready(&f->g, 4), 0);
    assert_int_equal(gather_ready(&f->g, 5), 1);
    assert_false(timer_armed(f));
    assert_int_equal(f->flushes, 0);
}

/* The load shrank: the reads that are not coming back are waited for
 * GATHER_MAX_MS, then the round starts with what is there. */
static void the_wait_ends_after_gather_max_ms(void **state)
{
    struct fixture *f = *state;
    uint64_t t0;

    gather_ended(&f->g, 3, 1);
    f->queued = 2;
    uv_update_time(&f->loop);
    t0 = uv_now(&f->loop);
    assert_int_equal(gather_ready(&f->g, f->queued), 0);
    uv_run(&f->loop, UV_RUN_DEFAULT); /* returns once the timer is done */
    assert_int_equal(f->flushes, 1);
    assert_int_equal(f->started, 1);
    assert_true(uv_now(&f->loop) - t0 >= GATHER_MAX_MS);
    assert_false(timer_armed(f));
}

/* Clients that think between requests would make every round wait: after
 * a wait that ran out, GATHER_SKIP_ROUNDS rounds start at once, however
 * few are queued; then rounds wait again. */
static void after_a_wait_runs_out_rounds_do_not_wait_for_a_while(
    void **state)
{
    struct fixture *f = *state;
    unsigned i;

    gather_ended(&f->g, 3, 1);
    f->queued = 1;
    assert_int_equal(gather_ready(&f->g, f->queued), 0);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->started, 1);
    for (i = 0; i < GATHER_SKIP_ROUNDS; i++) {
        gather_ended(&f->g, 1, 1);
        assert_int_equal(gather_ready(&f->g, 1), 1);
        assert_false(timer_armed(f));
    }
    gather_ended(&f->g, 1, 1);
    assert_int_equal(gather_ready(&f->g, 1), 0);
    assert_true(timer_armed(f));
    /* A round that reaches its target never used the skip. */
    assert_int_equal(gather_ready(&f->g, 2), 1);
}

/* Asking again while waiting does not restart the wait. */
static void asking_again_keeps_the_first_deadline(void **state)
{
    struct fixture *f = *state;
    uint64_t due;

    gather_ended(&f->g, 4, 0);
    assert_int_equal(gather_ready(&f->g, 1), 0);
    due = uv_timer_get_due_in(&f->g.timer);
    assert_int_equal(gather_ready(&f->g, 2), 0);
    assert_true(uv_timer_get_due_in(&f->g.timer) <= due);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(the_first_round_starts_at_once),
        T(a_lone_client_never_waits),
        T(the_next_round_waits_for_as_many_as_the_last_had),
        T(the_wait_ends_after_gather_max_ms),
        T(after_a_wait_runs_out_rounds_do_not_wait_for_a_while),
        T(asking_again_keeps_the_first_deadline),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
