/* Unit tests for api/client.c. Each test runs one uv loop on the test's
 * thread holding the client under test and its peers: an http_server
 * (api/http.h) whose handler echoes the URL (or the body under /body),
 * and raw uv_tcp servers that misbehave on purpose (never answer, close
 * without answering, send a canned response). Tests drive the loop with
 * run_until() until the expected callbacks have fired, under a 5 s guard,
 * and teardown closes everything and checks that the loop ends with no
 * handle left (ASan/LSan report anything leaked). */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../api/client.h"
#include "../../api/http.h"

#define GUARD_MS 5000   /* longest a test waits for its callbacks, ms */
#define MAX_REQS 256    /* requests per test */
#define MAX_PEERS 16    /* distinct client connections recorded */

enum raw_mode {
    RAW_SILENT, /* read everything, never answer */
    RAW_DROP,   /* close once a request head arrived */
    RAW_CANNED, /* answer each request head with canned */
};

struct fixture;

/* One connection accepted by the raw server. */
struct raw_conn
{
    uv_tcp_t tcp;           /* the socket */
    struct fixture *f;      /* owning fixture */
    char tail[4];           /* last bytes read, to find "\r\n\r\n" across reads */
    unsigned heads;         /* request heads seen */
    int closing;            /* uv_close called */
    struct raw_conn *next;  /* fixture's list */
};

/* One request sent by a test, with what its callback saw. */
struct sent
{
    struct client_request req; /* the request, req.data = this */
    struct fixture *f;         /* owning fixture */
    unsigned calls;            /* callback invocations */
    int status;                /* client status */
    int http_status;           /* response status */
    char body[512];            /* response body, NUL-terminated */
    size_t body_len;           /* body bytes */
    char hdr[128];             /* value of the header named by f->want_hdr */
    uint64_t sent_ms;          /* uv_now at send */
    uint64_t done_ms;          /* uv_now at callback */
    unsigned resend;           /* times the callback sends it again */
    char url[64];              /* url, kept for resends */
};

struct fixture
{
    uv_loop_t loop;              /* the test's loop */
    uv_timer_t guard;            /* wakes run_until */
    struct client *client;       /* client under test */
    struct client_limits limits; /* its limits */
    int client_closed;           /* client_close callback fired */
    /* http_server peer */
    struct http_server *srv;     /* NULL when unused */
    char srv_addr[64];           /* "127.0.0.1:port" */
    int srv_stopped;             /* stop callback fired */
    char peers[MAX_PEERS][64];   /* distinct client addresses seen */
    unsigned n_peers;            /* entries of peers */
    unsigned handled;            /* requests handled */
    /* raw peer */
    uv_tcp_t raw;                /* listener */
    int raw_on;                  /* listener initialized */
    char raw_addr[64];           /* "127.0.0.1:port" */
    enum raw_mode mode;          /* behaviour */
    const char *canned;          /* response for RAW_CANNED */
    size_t canned_len;           /* its bytes */
    int close_after;             /* RAW_CANNED: close after the first answer */
    unsigned accepted;           /* connections accepted */
    size_t raw_read;             /* bytes read by the raw server */
    struct raw_conn *raws;       /* open raw connections */
    /* results */
    struct sent sent[MAX_REQS];  /* requests */
    unsigned done;               /* callbacks fired */
    const char *want_hdr;        /* header recorded in sent.hdr */
};

/******************************************************************************
 * http_server peer
 *****************************************************************************/

static void handler(void *ctx, struct http_request *req)
{
    struct fixture *f = ctx;
    unsigned i;

    f->handled++;
    for (i = 0; i < f->n_peers; i++) {
        if (strcmp(f->peers[i], req->peer) == 0) {
            break;
        }
    }
    if (i == f->n_peers && f->n_peers < MAX_PEERS) {
        snprintf(f->peers[f->n_peers++], sizeof f->peers[0], "%s", req->peer);
    }
    if (strncmp(req->url, "/body", 5) == 0) {
        http_respond(req, 201, "Content-Type: text/plain\r\n", req->body,
                     req->body_len);
        return;
    }
    http_respond(req, 200, "Content-Type: text/plain\r\n", req->url,
                 req->url_len);
}

static void srv_start(struct fixture *f)
{
    struct http_limits l;
    char errmsg[128];

    http_limits_default(&l);
    l.max_pipeline = 256;
    assert_int_equal(http_server_start(&f->srv, &f->loop, "127.0.0.1:0", &l,
                                       handler, f, errmsg, sizeof errmsg),
                     0);
    snprintf(f->srv_addr, sizeof f->srv_addr, "127.0.0.1:%d",
             http_server_port(f->srv));
}

static void srv_stopped_cb(void *data)
{
    struct fixture *f = data;

    f->srv_stopped = 1;
}

/******************************************************************************
 * Raw peer
 *****************************************************************************/

static void raw_close_cb(uv_handle_t *h)
{
    free(h->data);
}

static void raw_conn_close(struct raw_conn *rc)
{
    struct raw_conn **pp;

    if (rc->closing) {
        return;
    }
    rc->closing = 1;
    for (pp = &rc->f->raws; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == rc) {
            *pp = rc->next;
            break;
        }
    }
    uv_close((uv_handle_t *)&rc->tcp, raw_close_cb);
}

static void raw_write_cb(uv_write_t *w, int status)
{
    struct raw_conn *rc = w->data;

    (void)status;
    free(w);
    if (rc != NULL && !rc->closing) {
        raw_conn_close(rc);
    }
}

static void raw_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    static char buf[65536];

    (void)h;
    (void)suggested;
    *b = uv_buf_init(buf, sizeof buf);
}

/* Count request heads ("\r\n\r\n") in data, across reads. */
static unsigned raw_count_heads(struct raw_conn *rc, const char *data,
                                size_t len)
{
    unsigned n = 0;
    size_t i;

    for (i = 0; i < len; i++) {
        memmove(rc->tail, rc->tail + 1, 3);
        rc->tail[3] = data[i];
        if (memcmp(rc->tail, "\r\n\r\n", 4) == 0) {
            n++;
        }
    }
    return n;
}

static void raw_answer(struct raw_conn *rc)
{
    struct fixture *f = rc->f;
    uv_write_t *w = malloc(sizeof *w);
    uv_buf_t b = uv_buf_init((char *)f->canned, (unsigned)f->canned_len);

    assert_non_null(w);
    /* Only a write that ends the connection closes it in its callback. */
    w->data = f->close_after ? rc : NULL;
    assert_int_equal(uv_write(w, (uv_stream_t *)&rc->tcp, &b, 1,
                              raw_write_cb),
                     0);
    if (f->close_after) {
        uv_read_stop((uv_stream_t *)&rc->tcp);
    }
}

static void raw_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct raw_conn *rc = s->data;
    struct fixture *f = rc->f;
    unsigned heads;
    unsigned i;

    if (nread < 0) {
        raw_conn_close(rc);
        return;
    }
    f->raw_read += (size_t)nread;
    heads = raw_count_heads(rc, b->base, (size_t)nread);
    for (i = 0; i < heads && !rc->closing; i++) {
        rc->heads++;
        if (f->mode == RAW_DROP) {
            raw_conn_close(rc);
        } else if (f->mode == RAW_CANNED) {
            raw_answer(rc);
            if (f->close_after) {
                break;
            }
        }
    }
}

static void raw_accept_cb(uv_stream_t *l, int status)
{
    struct fixture *f = l->data;
    struct raw_conn *rc = calloc(1, sizeof *rc);

    assert_int_equal(status, 0);
    assert_non_null(rc);
    rc->f = f;
    assert_int_equal(uv_tcp_init(&f->loop, &rc->tcp), 0);
    rc->tcp.data = rc;
    assert_int_equal(uv_accept(l, (uv_stream_t *)&rc->tcp), 0);
    rc->next = f->raws;
    f->raws = rc;
    f->accepted++;
    assert_int_equal(uv_read_start((uv_stream_t *)&rc->tcp, raw_alloc_cb,
                                   raw_read_cb),
                     0);
}

static void raw_start(struct fixture *f, enum raw_mode mode)
{
    struct sockaddr_in sa;
    struct sockaddr_storage bound;
    int len = sizeof bound;

    f->mode = mode;
    assert_int_equal(uv_tcp_init(&f->loop, &f->raw), 0);
    f->raw.data = f;
    f->raw_on = 1;
    assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &sa), 0);
    assert_int_equal(uv_tcp_bind(&f->raw, (struct sockaddr *)&sa, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&f->raw, 64, raw_accept_cb), 0);
    assert_int_equal(uv_tcp_getsockname(&f->raw, (struct sockaddr *)&bound,
                                        &len),
                     0);
    snprintf(f->raw_addr, sizeof f->raw_addr, "127.0.0.1:%d",
             ntohs(((struct sockaddr_in *)&bound)->sin_port));
}

/******************************************************************************
 * Fixture
 *****************************************************************************/

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);

    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(uv_timer_init(&f->loop, &f->guard), 0);
    client_limits_default(&f->limits);
    *state = f;
    return 0;
}

static void client_closed_cb(void *data)
{
    struct fixture *f = data;

    f->client_closed++;
}

static void client_start(struct fixture *f)
{
    assert_int_equal(client_init(&f->client, &f->loop, &f->limits), 0);
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    if (f->client != NULL) {
        client_close(f->client, client_closed_cb, f);
        f->client = NULL;
    }
    if (f->srv != NULL) {
        http_server_stop(f->srv, srv_stopped_cb, f);
    }
    while (f->raws != NULL) {
        raw_conn_close(f->raws);
    }
    if (f->raw_on) {
        uv_close((uv_handle_t *)&f->raw, NULL);
    }
    uv_close((uv_handle_t *)&f->guard, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    if (f->srv != NULL) {
        assert_true(f->srv_stopped);
    }
    free(f);
    return 0;
}

static void guard_cb(uv_timer_t *t)
{
    (void)t;
}

/* Run the loop until f->done reaches n; fail after GUARD_MS. */
static void run_until(struct fixture *f, unsigned n)
{
    uint64_t start;

    uv_update_time(&f->loop);
    start = uv_now(&f->loop);
    uv_timer_start(&f->guard, guard_cb, 20, 20);
    while (f->done < n) {
        uv_run(&f->loop, UV_RUN_ONCE);
        assert_true(uv_now(&f->loop) - start < GUARD_MS);
    }
    uv_timer_stop(&f->guard);
}

/* Run the loop for about ms milliseconds. */
static void run_for(struct fixture *f, uint64_t ms)
{
    uint64_t start;

    uv_update_time(&f->loop);
    start = uv_now(&f->loop);
    uv_timer_start(&f->guard, guard_cb, 10, 10);
    while (uv_now(&f->loop) - start < ms) {
        uv_run(&f->loop, UV_RUN_ONCE);
    }
    uv_timer_stop(&f->guard);
}

/******************************************************************************
 * Sending
 *****************************************************************************/

static int send_one(struct fixture *f, unsigned i, const char *addr,
                    const char *method, const char *url, const char *body,
                    uint64_t timeout_ms);

static void sent_cb(struct client_request *req, int status,
                    const struct client_response *resp)
{
    struct sent *s = req->data;
    struct fixture *f = s->f;
    unsigned i;

    s->calls++;
    s->status = status;
    s->done_ms = uv_now(&f->loop);
    if (resp != NULL) {
        s->http_status = resp->status;
        s->body_len = resp->body_len;
        if (resp->body_len < sizeof s->body) {
            memcpy(s->body, resp->body, resp->body_len);
            s->body[resp->body_len] = '\0';
        }
        for (i = 0; f->want_hdr != NULL && i < resp->n_headers; i++) {
            if (strcmp(resp->headers[i].name, f->want_hdr) == 0) {
                snprintf(s->hdr, sizeof s->hdr, "%s", resp->headers[i].value);
            }
        }
    }
    if (s->resend > 0 && status == CLIENT_OK && f->client != NULL) {
        /* Send the same request struct again from its own callback. */
        s->resend--;
        f->done++;
        assert_int_equal(client_send(f->client, req, f->srv_addr, "GET",
                                     s->url, NULL, NULL, 0, 2000),
                         0);
        return;
    }
    f->done++;
}

static int send_one(struct fixture *f, unsigned i, const char *addr,
                    const char *method, const char *url, const char *body,
                    uint64_t timeout_ms)
{
    struct sent *s = &f->sent[i];

    s->f = f;
    s->req.data = s;
    s->req.cb = sent_cb;
    snprintf(s->url, sizeof s->url, "%s", url);
    s->sent_ms = uv_now(&f->loop);
    return client_send(f->client, &s->req, addr, method, url,
                       "X-Test: yes\r\n", body, body != NULL ? strlen(body) : 0,
                       timeout_ms);
}

/******************************************************************************
 * client_send against an http_server
 *****************************************************************************/

static void test_get_returns_the_response(void **state)
{
    struct fixture *f = *state;

    srv_start(f);
    client_start(f);
    f->want_hdr = "content-type";
    assert_int_equal(send_one(f, 0, f->srv_addr, "GET", "/hello", NULL, 2000),
                     0);
    run_until(f, 1);
    assert_int_equal(f->sent[0].calls, 1);
    assert_int_equal(f->sent[0].status, CLIENT_OK);
    assert_int_equal(f->sent[0].http_status, 200);
    assert_string_equal(f->sent[0].body, "/hello");
    assert_string_equal(f->sent[0].hdr, "text/plain");
}

static void test_post_carries_its_body(void **state)
{
    struct fixture *f = *state;

    srv_start(f);
    client_start(f);
    assert_int_equal(send_one(f, 0, f->srv_addr, "POST", "/body",
                              "{\"a\":[1,2,3]}", 2000),
                     0);
    run_until(f, 1);
    assert_int_equal(f->sent[0].status, CLIENT_OK);
    assert_int_equal(f->sent[0].http_status, 201);
    assert_string_equal(f->sent[0].body, "{\"a\":[1,2,3]}");
}

static void test_concurrent_requests_use_at_most_the_connection_limit(
    void **state)
{
    struct fixture *f = *state;
    char url[32];
    unsigned i;

    srv_start(f);
    client_start(f);
    for (i = 0; i < 200; i++) {
        snprintf(url, sizeof url, "/r/%u", i);
        assert_int_equal(send_one(f, i, f->srv_addr, "GET", url, NULL, 4000),
                         0);
    }
    run_until(f, 200);
    for (i = 0; i < 200; i++) {
        snprintf(url, sizeof url, "/r/%u", i);
        assert_int_equal(f->sent[i].calls, 1);
        assert_int_equal(f->sent[i].status, CLIENT_OK);
        assert_string_equal(f->sent[i].body, url);
    }
    assert_int_equal(f->handled, 200);
    assert_true(f->n_peers >= 1);
    assert_true(f->n_peers <= f->limits.max_conns_per_peer);
}

static void test_requests_over_every_pipeline_wait_for_room(void **state)
{
    struct fixture *f = *state;
    char url[32];
    unsigned i;

    f->limits.max_conns_per_peer = 1;
    f->limits.max_pipeline = 2;
    srv_start(f);
    client_start(f);
    for (i = 0; i < 20; i++) {
        snprintf(url, sizeof url, "/q/%u", i);
        assert_int_equal(send_one(f, i, f->srv_addr, "GET", url, NULL, 4000),
                         0);
    }
    run_until(f, 20);
    for (i = 0; i < 20; i++) {
        snprintf(url, sizeof url, "/q/%u", i);
        assert_int_equal(f->sent[i].status, CLIENT_OK);
        assert_string_equal(f->sent[i].body, url);
    }
    assert_int_equal(f->n_peers, 1);
}

static void test_sequential_requests_reuse_one_connection(void **state)
{
    struct fixture *f = *state;

    srv_start(f);
    client_start(f);
    f->sent[0].resend = 4;
    assert_int_equal(send_one(f, 0, f->srv_addr, "GET", "/again", NULL, 2000),
                     0);
    run_until(f, 5);
    assert_int_equal(f->sent[0].calls, 5);
    assert_int_equal(f->sent[0].status, CLIENT_OK);
    assert_string_equal(f->sent[0].body, "/again");
    assert_int_equal(f->handled, 5);
    assert_int_equal(f->n_peers, 1);
}

static void test_invalid_arguments_are_refused_without_callback(void **state)
{
    struct fixture *f = *state;
    static const char *const bad_addrs[] = {
        "nohost", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000",
        "127.0.0.1:8x", "[::1]80", "localhost:80", ":80",
    };
    unsigned i;

    client_start(f);
    for (i = 0; i < sizeof bad_addrs / sizeof bad_addrs[0]; i++) {
        assert_int_equal(send_one(f, 0, bad_addrs[i], "GET", "/", NULL, 100),
                         CLIENT_EINVAL);
    }
    assert_int_equal(send_one(f, 0, "127.0.0.1:1", "G T", "/", NULL, 100),
                     CLIENT_EINVAL);
    assert_int_equal(send_one(f, 0, "127.0.0.1:1", "HEAD", "/", NULL, 100),
                     CLIENT_EINVAL);
    assert_int_equal(send_one(f, 0, "127.0.0.1:1", "GET", "/a b", NULL, 100),
                     CLIENT_EINVAL);
    assert_int_equal(send_one(f, 0, "127.0.0.1:1", "GET", "/", NULL, 0),
                     CLIENT_EINVAL);
    f->sent[0].req.cb = sent_cb;
    assert_int_equal(client_send(f->client, &f->sent[0].req, "127.0.0.1:1",
                                 "GET", "/", "X-Bad: no-crlf", NULL, 0, 100),
                     CLIENT_EINVAL);
    assert_int_equal(client_send(f->client, &f->sent[0].req, "127.0.0.1:1",
                                 "GET", "/", "X-A: 1\r\n\r\nX-B: 2\r\n", NULL,
                                 0, 100),
                     CLIENT_EINVAL);
    run_for(f, 20);
    assert_int_equal(f->sent[0].calls, 0);
}

static void test_strerror_names_every_status(void **state)
{
    (void)state;
    assert_string_equal(client_strerror(CLIENT_OK), "ok");
    assert_string_equal(client_strerror(CLIENT_ETIMEOUT),
                        "no response in time");
    assert_string_equal(client_strerror(99), "unknown error");
}

/******************************************************************************
 * Failure modes
 *****************************************************************************/

static void test_peer_not_listening_gives_enotsent(void **state)
{
    struct fixture *f = *state;
    char addr[64];

    /* Bind a port, then free it: nothing listens there. */
    raw_start(f, RAW_SILENT);
    snprintf(addr, sizeof addr, "%s", f->raw_addr);
    uv_close((uv_handle_t *)&f->raw, NULL);
    f->raw_on = 0;
    run_for(f, 1);
    client_start(f);
    assert_int_equal(send_one(f, 0, addr, "GET", "/", NULL, 2000), 0);
    assert_int_equal(send_one(f, 1, addr, "POST", "/", "{}", 2000), 0);
    run_until(f, 2);
    assert_int_equal(f->sent[0].calls, 1);
    assert_int_equal(f->sent[0].status, CLIENT_ENOTSENT);
    assert_int_equal(f->sent[1].calls, 1);
    assert_int_equal(f->sent[1].status, CLIENT_ENOTSENT);
}

static void test_connect_that_does_not_complete_gives_enotsent(void **state)
{
    struct fixture *f = *state;

    /* TEST-NET-1 (RFC 5737) is never routed: the connect either hangs
     * until connect_timeout_ms or fails at once. */
    f->limits.connect_timeout_ms = 200;
    client_start(f);
    assert_int_equal(send_one(f, 0, "192.0.2.1:80", "GET", "/", NULL, 3000),
                     0);
    run_until(f, 1);
    assert_int_equal(f->sent[0].status, CLIENT_ENOTSENT);
    assert_true(f->sent[0].done_ms - f->sent[0].sent_ms < 1000);
}

static void test_peer_closing_after_reading_gives_eunknown(void **state)
{
    struct fixture *f = *state;

    raw_start(f, RAW_DROP);
    client_start(f);
    assert_int_equal(send_one(f, 0, f->raw_addr, "POST", "/w", "{}", 2000),
                     0);
    run_until(f, 1);
    assert_int_equal(f->sent[0].calls, 1);
    assert_int_equal(f->sent[0].status, CLIENT_EUNKNOWN);
    assert_int_equal(f->accepted, 1);
}

static void test_peer_never_answering_gives_etimeout_in_time(void **state)
{
    struct fixture *f = *state;
    uint64_t took;

    raw_start(f, RAW_SILENT);
    client_start(f);
    assert_int_equal(send_one(f, 0, f->raw_addr, "GET", "/slow", NULL, 200),
                     0);
    run_until(f, 1);
    took = f->sent[0].done_ms - f->sent[0].sent_ms;
    assert_int_equal(f->sent[0].calls, 1);
    assert_int_equal(f->sent[0].status, CLIENT_ETIMEOUT);
    assert_true(took >= 200);
    assert_true(took <= 200 + 150);
}

static void test_timeout_makes_other_written_requests_eunknown(void **state)
{
    struct fixture *f = *state;

    f->limits.max_conns_per_peer = 1;
    raw_start(f, RAW_SILENT);
    client_start(f);
    assert_int_equal(send_one(f, 0, f->raw_addr, "GET", "/a", NULL, 150), 0);
    assert_int_equal(send_one(f, 1, f->raw_addr, "GET", "/b", NULL, 2000), 0);
    run_until(f, 2);
    assert_int_equal(f->sent[0].status, CLIENT_ETIMEOUT);
    assert_int_equal(f->sent[1].status, CLIENT_EUNKNOWN);
    assert_true(f->sent[1].done_ms - f->sent[1].sent_ms < 1000);
}

static void test_queued_request_moves_to_a_new_connection_after_timeout(
    void **state)
{
    struct fixture *f = *state;

    f->limits.max_conns_per_peer = 1;
    f->limits.max_pipeline = 1;
    raw_start(f, RAW_SILENT);
    client_start(f);
    assert_int_equal(send_one(f, 0, f->raw_addr, "GET", "/a", NULL, 150), 0);
    assert_int_equal(send_one(f, 1, f->raw_addr, "GET", "/b", NULL, 500), 0);
    run_until(f, 2);
    assert_int_equal(f->sent[0].status, CLIENT_ETIMEOUT);
    /* b waited in the peer queue, then was written on a second
     * connection: its own timeout, not ENOTSENT. */
    assert_int_equal(f->sent[1].status, CLIENT_ETIMEOUT);
    assert_int_equal(f->accepted, 2);
}

static void test_request_expiring_in_the_queue_gives_enotsent(void **state)
{
    struct fixture *f = *state;

    f->limits.max_conns_per_peer = 1;
    f->limits.max_pipeline = 1;
    raw_start(f, RAW_SILENT);
    client_start(f);
    assert_int_equal(send_one(f, 0, f->raw_addr, "GET", "/a", NULL, 400), 0);
    assert_int_equal(send_one(f, 1, f->raw_addr, "GET", "/b", NULL, 100), 0);
    run_until(f, 1);
    assert_int_equal(f->sent[1].calls, 1);
    assert_int_equal(f->sent[1].status, CLIENT_ENOTSENT);
    assert_int_equal(f->sent[0].calls, 0);
    run_until(f, 2);
    assert_int_equal(f->sent[0].status, CLIENT_ETIMEOUT);
    assert_int_equal(f->accepted, 1);
}

static const char chunked[] = "HTTP/1.1 200 OK\r\n"
                              "Transfer-Encoding: chunked\r\n"
                              "X-Thing: \t padded value  \r\n"
                              "\r\n"
                              "5\r\nhello\r\n"
                              "6\r\n world\r\n"
                              "0\r\n\r\n";

static void test_chunked_body_is_assembled(void **state)
{
    struct fixture *f = *state;

    raw_start(f, RAW_CANNED);
    f->canned = chunked;
    f->canned_len = sizeof chunked - 1;
    client_start(f);
    f->want_hdr = "x-thing";
    assert_int_equal(send_one(f, 0, f->raw_addr, "GET", "/c", NULL, 2000), 0);
    assert_int_equal(send_one(f, 1, f->raw_addr, "GET", "/c", NULL, 2000), 0);
    run_until(f, 2);
    assert_int_equal(f->sent[0].status, CLIENT_OK);
    assert_string_equal(f->sent[0].body, "hello world");
    assert_string_equal(f->sent[0].hdr, "padded value");
    assert_int_equal(f->sent[1].status, CLIENT_OK);
    assert_string_equal(f->sent[1].body, "hello world");
}

static const char until_eof[] = "HTTP/1.1 200 OK\r\n\r\nuntil the end";

static void test_body_ended_by_eof_is_delivered(void **state)
{
    struct fixture *f = *state;

    raw_start(f, RAW_CANNED);
    f->canned = until_eof;
    f->canned_len = sizeof until_eof - 1;
    f->close_after = 1;
    client_start(f);
    assert_int_equal(send_one(f, 0, f->raw_addr, "GET", "/e", NULL, 2000), 0);
    run_until(f, 1);
    assert_int_equal(f->sent[0].status, CLIENT_OK);
    assert_string_equal(f->sent[0].body, "until the end");
}

static void test_response_over_the_limit_gives_eunknown(void **state)
{
    struct fixture *f = *state;
    static const char big[] = "HTTP/1.1 200 OK\r\n"
                              "Content-Length: 100000\r\n"
                              "\r\n"
                              "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

    f->limits.max_response_bytes = 1000;
    raw_start(f, RAW_CANNED);
    f->canned = big;
    f->canned_len = sizeof big - 1;
    client_start(f);
    assert_int_equal(send_one(f, 0, f->raw_addr, "GET", "/big", NULL, 2000),
                     0);
    run_until(f, 1);
    assert_int_equal(f->sent[0].calls, 1);
    assert_int_equal(f->sent[0].status, CLIENT_EUNKNOWN);
}

static void test_chunked_response_over_the_limit_gives_eunknown(void **state)
{
    struct fixture *f = *state;
    static char big[4096];
    size_t n;

    n = (size_t)snprintf(big, sizeof big,
                         "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                         "\r\n400\r\n");
    memset(big + n, 'y', 1024);
    n += 1024;
    memcpy(big + n, "\r\n0\r\n\r\n", 7);
    f->limits.max_response_bytes = 1000;
    raw_start(f, RAW_CANNED);
    f->canned = big;
    f->canned_len = n + 7;
    client_start(f);
    assert_int_equal(send_one(f, 0, f->raw_addr, "GET", "/big", NULL, 2000),
                     0);
    run_until(f, 1);
    assert_int_equal(f->sent[0].status, CLIENT_EUNKNOWN);
}

static const char close_resp[] = "HTTP/1.1 200 OK\r\n"
                                 "Content-Length: 2\r\n"
                                 "Connection: close\r\n"
                                 "\r\n"
                                 "ok";

static void test_connection_close_opens_a_new_connection_next(void **state)
{
    struct fixture *f = *state;

    raw_start(f, RAW_CANNED);
    f->canned = close_resp;
    f->canned_len = sizeof close_resp - 1;
    f->close_after = 1;
    client_start(f);
    assert_int_equal(send_one(f, 0, f->raw_addr, "GET", "/1", NULL, 2000), 0);
    run_until(f, 1);
    assert_int_equal(send_one(f, 1, f->raw_addr, "GET", "/2", NULL, 2000), 0);
    run_until(f, 2);
    assert_int_equal(f->sent[0].status, CLIENT_OK);
    assert_string_equal(f->sent[0].body, "ok");
    assert_int_equal(f->sent[1].status, CLIENT_OK);
    assert_int_equal(f->accepted, 2);
}

static void test_connection_close_makes_pipelined_written_eunknown(
    void **state)
{
    struct fixture *f = *state;

    f->limits.max_conns_per_peer = 1;
    raw_start(f, RAW_CANNED);
    f->canned = close_resp;
    f->canned_len = sizeof close_resp - 1;
    f->close_after = 1;
    client_start(f);
    assert_int_equal(send_one(f, 0, f->raw_addr, "GET", "/1", NULL, 2000), 0);
    assert_int_equal(send_one(f, 1, f->raw_addr, "GET", "/2", NULL, 2000), 0);
    run_until(f, 2);
    assert_int_equal(f->sent[0].status, CLIENT_OK);
    assert_int_equal(f->sent[1].status, CLIENT_EUNKNOWN);
    assert_int_equal(f->sent[1].calls, 1);
}

static void test_unsolicited_response_closes_the_idle_connection(void **state)
{
    struct fixture *f = *state;
    static const char two[] = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"
                              "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb";

    raw_start(f, RAW_CANNED);
    f->canned = two;
    f->canned_len = sizeof two - 1;
    client_start(f);
    assert_int_equal(send_one(f, 0, f->raw_addr, "GET", "/1", NULL, 2000), 0);
    run_until(f, 1);
    run_for(f, 50);
    assert_int_equal(f->sent[0].status, CLIENT_OK);
    assert_string_equal(f->sent[0].body, "a");
    /* The stray answer closed that connection: the next one is new. */
    f->canned = close_resp;
    f->canned_len = sizeof close_resp - 1;
    assert_int_equal(send_one(f, 1, f->raw_addr, "GET", "/2", NULL, 2000), 0);
    run_until(f, 2);
    assert_int_equal(f->sent[1].status, CLIENT_OK);
    assert_string_equal(f->sent[1].body, "ok");
    assert_int_equal(f->accepted, 2);
}

/******************************************************************************
 * client_close
 *****************************************************************************/

static void test_close_cancels_pending_requests_once(void **state)
{
    struct fixture *f = *state;
    unsigned i;

    raw_start(f, RAW_SILENT);
    client_start(f);
    for (i = 0; i < 5; i++) {
        assert_int_equal(send_one(f, i, f->raw_addr, "POST", "/p", "{}", 5000),
                         0);
    }
    while (f->raw_read == 0) {
        run_for(f, 5);
    }
    client_close(f->client, client_closed_cb, f);
    for (i = 0; i < 5; i++) {
        assert_int_equal(f->sent[i].calls, 1);
        assert_int_equal(f->sent[i].status, CLIENT_ECANCELED);
    }
    assert_int_equal(send_one(f, 5, f->raw_addr, "GET", "/late", NULL, 100),
                     CLIENT_ECANCELED);
    f->client = NULL;
    assert_int_equal(f->client_closed, 0);
    run_for(f, 20);
    assert_int_equal(f->client_closed, 1);
    for (i = 0; i < 5; i++) {
        assert_int_equal(f->sent[i].calls, 1);
    }
    assert_int_equal(f->sent[5].calls, 0);
}

static void test_close_of_an_idle_client_fires_its_callback(void **state)
{
    struct fixture *f = *state;

    srv_start(f);
    client_start(f);
    assert_int_equal(send_one(f, 0, f->srv_addr, "GET", "/x", NULL, 2000), 0);
    run_until(f, 1);
    client_close(f->client, client_closed_cb, f);
    f->client = NULL;
    run_for(f, 20);
    assert_int_equal(f->client_closed, 1);
    assert_int_equal(f->sent[0].calls, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
        T(test_get_returns_the_response),
        T(test_post_carries_its_body),
        T(test_concurrent_requests_use_at_most_the_connection_limit),
        T(test_requests_over_every_pipeline_wait_for_room),
        T(test_sequential_requests_reuse_one_connection),
        T(test_invalid_arguments_are_refused_without_callback),
        T(test_strerror_names_every_status),
        T(test_peer_not_listening_gives_enotsent),
        T(test_connect_that_does_not_complete_gives_enotsent),
        T(test_peer_closing_after_reading_gives_eunknown),
        T(test_peer_never_answering_gives_etimeout_in_time),
        T(test_timeout_makes_other_written_requests_eunknown),
        T(test_queued_request_moves_to_a_new_connection_after_timeout),
        T(test_request_expiring_in_the_queue_gives_enotsent),
        T(test_chunked_body_is_assembled),
        T(test_body_ended_by_eof_is_delivered),
        T(test_response_over_the_limit_gives_eunknown),
        T(test_chunked_response_over_the_limit_gives_eunknown),
        T(test_connection_close_opens_a_new_connection_next),
        T(test_connection_close_makes_pipelined_written_eunknown),
        T(test_unsolicited_response_closes_the_idle_connection),
        T(test_close_cancels_pending_requests_once),
        T(test_close_of_an_idle_client_fires_its_callback),
#undef T
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
