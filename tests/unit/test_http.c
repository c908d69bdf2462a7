/* Unit tests for api/http.c. Each test starts the server on 127.0.0.1:0 in
 * its own uv loop, run with uv_run on the test's thread, and drives it from
 * a client thread with plain blocking sockets. The client thread records
 * what it saw; assertions run on the test thread once the loop has ended
 * (the client signals the loop with a uv_async, which stops the server).
 *
 * The handler answers at once, or 50 ms later from a timer when the path
 * starts with "/later", and holds "/stop" requests while it stops the
 * server. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <http_parser.h>

#include "../../api/http.h"

#define MAX_RESPONSES 16 /* responses recorded per test */
#define BIG_ANSWERS 8    /* 1 MiB answers in one pipelined write */

/* One response as the client parsed it. */
struct response
{
    int status;        /* 0: none (connection closed first) */
    char head[1024];   /* status line and headers, NUL-terminated */
    char body[1024];   /* body, NUL-terminated */
    size_t body_len;   /* body bytes */
};

/* A blocking client connection with its unread input. */
struct client
{
    int fd;               /* socket */
    char in[65536];       /* received, not yet consumed */
    size_t len;           /* bytes in `in` */
    int no_body;          /* the next response answers HEAD */
};

struct fixture;
typedef void (*client_fn)(struct fixture *f);

/* A request as the handler saw it. */
struct seen
{
    char method[16];   /* method name */
    char url[256];     /* request target */
    char body[4096];   /* body, NUL-terminated */
    size_t body_len;   /* body bytes */
    char x_test[64];   /* "x-test" header value, or "" */
    int has_empty;     /* an "x-empty" header with an empty value came */
    int keep_alive;    /* client wanted keep-alive */
    unsigned n_headers; /* headers the request carried */
};

struct fixture
{
    uv_loop_t loop;             /* the test's loop */
    struct http_server *srv;    /* server under test */
    struct http_limits limits;  /* limits given to the server */
    uv_async_t done;            /* client finished */
    pthread_t thread;           /* client thread */
    client_fn client;           /* what the client thread does */
    int port;                   /* bound port */
    int stop_called;            /* http_server_stop called */
    int stopped;                /* stop callback fired */
    /* Written by the handler (loop thread). */
    unsigned handled;           /* requests seen by the handler */
    unsigned outstanding;       /* requests not yet answered */
    unsigned max_outstanding;   /* peak of outstanding */
    struct seen seen[MAX_RESPONSES]; /* the first requests seen */
    unsigned conns_at_stop;     /* connections open when the client ended */
    /* Written by the client thread. */
    struct response resp[MAX_RESPONSES]; /* responses, in order */
    int eof[4];                 /* per step: 1 when the server closed */
    double elapsed_ms[4];       /* per step: time measured by the client */
    int kept_fd;                /* socket left open for the server to close */
    int big_ok[BIG_ANSWERS];    /* a /big answer arrived whole and intact */
};

/* A request answered later, from its own timer. */
struct later
{
    uv_timer_t timer;             /* fires once */
    struct http_request *req;     /* to answer */
    struct fixture *f;            /* owning fixture */
};

/******************************************************************************
 * Server side
 *****************************************************************************/

#define BIG_LEN (1u << 20) /* bytes of a /big answer */

/* Byte i of a /big answer: no short period, so a lost, repeated or
 * misplaced run of bytes shows. */
static char big_byte(size_t i)
{
    return (char)('a' + ((i * 2654435761u) >> 7) % 26);
}

static void answer(struct fixture *f, struct http_request *req)
{
    char body[512];
    int n;

    n = snprintf(body, sizeof body, "{\"url\":\"%s\",\"len\":%zu}", req->url,
                 req->body_len);
    f->outstanding--;
    if (strncmp(req->url, "/big", 4) == 0) {
        static char big[BIG_LEN];
        size_t i;

        for (i = 0; i < sizeof big; i++) {
            big[i] = big_byte(i);
        }
        http_respond(req, 200, "Content-Type: text/plain\r\n", big,
                     sizeof big);
        return;
    }
    if (strncmp(req->url, "/nocontent", 10) == 0) {
        http_respond(req, 204, NULL, NULL, 0);
        return;
    }
    http_respond(req, 200, "X-Handler: test\r\n", body, (size_t)n);
}

static void later_close_cb(uv_handle_t *h)
{
    free(h->data);
}

static void later_cb(uv_timer_t *t)
{
    struct later *l = t->data;

    answer(l->f, l->req);
    uv_close((uv_handle_t *)&l->timer, later_close_cb);
}

static void stopped_cb(void *data)
{
    struct fixture *f = data;

    f->stopped = 1;
}

static void answer_later(struct fixture *f, struct http_request *req,
                         uint64_t ms)
{
    struct later *l = malloc(sizeof *l);

    assert_non_null(l);
    l->req = req;
    l->f = f;
    uv_timer_init(&f->loop, &l->timer);
    l->timer.data = l;
    uv_timer_start(&l->timer, later_cb, ms, 0);
}

static void handler(void *ctx, struct http_request *req)
{
    struct fixture *f = ctx;
    const struct http_header *h;

    if (f->handled < MAX_RESPONSES) {
        struct seen *s = &f->seen[f->handled];

        snprintf(s->method, sizeof s->method, "%s", req->method_name);
        snprintf(s->url, sizeof s->url, "%s", req->url);
        s->body_len = req->body_len;
        if (req->body_len < sizeof s->body) {
            memcpy(s->body, req->body, req->body_len + 1);
        }
        h = http_request_header(req, "x-test");
        snprintf(s->x_test, sizeof s->x_test, "%s", h ? h->value : "");
        h = http_request_header(req, "x-empty");
        s->has_empty = h != NULL && h->value_len == 0;
        s->keep_alive = req->keep_alive;
        s->n_headers = req->n_headers;
    }
    f->handled++;
    f->outstanding++;
    if (f->outstanding > f->max_outstanding) {
        f->max_outstanding = f->outstanding;
    }
    if (strncmp(req->url, "/stop", 5) == 0) {
        f->stop_called = 1;
        http_server_stop(f->srv, stopped_cb, f);
        answer_later(f, req, 100);
    } else if (strncmp(req->url, "/later", 6) == 0) {
        answer_later(f, req, 50);
    } else {
        answer(f, req);
    }
}

static void done_cb(uv_async_t *a)
{
    struct fixture *f = a->data;

    f->conns_at_stop = http_server_connections(f->srv);
    if (!f->stop_called) {
        f->stop_called = 1;
        http_server_stop(f->srv, stopped_cb, f);
    }
    uv_close((uv_handle_t *)a, NULL);
}

static void *client_main(void *arg)
{
    struct fixture *f = arg;

    f->client(f);
    uv_async_send(&f->done);
    return NULL;
}

/* Start the server, run the client thread against it, run the loop until
 * everything is closed. */
static void run(struct fixture *f, client_fn fn)
{
    char err[256] = "";

    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(http_server_start(&f->srv, &f->loop, "127.0.0.1:0",
                                       &f->limits, handler, f, err,
                                       sizeof err),
                     0);
    f->port = http_server_port(f->srv);
    assert_true(f->port > 0);
    assert_int_equal(uv_async_init(&f->loop, &f->done, done_cb), 0);
    f->done.data = f;
    f->client = fn;
    assert_int_equal(pthread_create(&f->thread, NULL, client_main, f), 0);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    pthread_join(f->thread, NULL);
    assert_int_equal(f->stopped, 1);
    assert_int_equal(uv_loop_close(&f->loop), 0);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);

    assert_non_null(f);
    http_limits_default(&f->limits);
    f->limits.request_timeout_ms = 2000;
    f->limits.idle_timeout_ms = 2000;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    free(*state);
    return 0;
}

/******************************************************************************
 * Client side (client thread: no cmocka assertions here)
 *****************************************************************************/

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static int client_open(struct client *c, int port)
{
    struct sockaddr_in a;
    struct timeval tv = {5, 0};

    c->len = 0;
    c->no_body = 0;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0) {
        return -1;
    }
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return connect(c->fd, (struct sockaddr *)&a, sizeof a);
}

static void client_send(struct client *c, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
        if (n <= 0) {
            return;
        }
        data += n;
        len -= (size_t)n;
    }
}

static void client_send_str(struct client *c, const char *s)
{
    client_send(c, s, strlen(s));
}

/* Read more input; 0 on EOF, error or timeout. */
static int client_fill(struct client *c)
{
    ssize_t n;

    if (c->len == sizeof c->in) {
        return 0;
    }
    n = recv(c->fd, c->in + c->len, sizeof c->in - c->len, 0);
    if (n <= 0) {
        return 0;
    }
    c->len += (size_t)n;
    return 1;
}

/* Read one response (head, then Content-Length bytes of body). */
static void client_read_response(struct client *c, struct response *r)
{
    char *end;
    size_t head_len;
    size_t body_len = 0;
    const char *cl;

    memset(r, 0, sizeof *r);
    for (;;) {
        end = c->len > 0 ? memmem(c->in, c->len, "\r\n\r\n", 4) : NULL;
        if (end != NULL) {
            break;
        }
        if (!client_fill(c)) {
            return;
        }
    }
    head_len = (size_t)(end - c->in) + 4;
    if (head_len >= sizeof r->head) {
        return;
    }
    memcpy(r->head, c->in, head_len);
    r->head[head_len] = '\0';
    cl = strcasestr(r->head, "\r\nContent-Length: ");
    if (cl != NULL && !c->no_body) {
        body_len = strtoul(cl + 18, NULL, 10);
    }
    while (c->len < head_len + body_len) {
        if (!client_fill(c)) {
            return;
        }
    }
    if (body_len < sizeof r->body) {
        memcpy(r->body, c->in + head_len, body_len);
        r->body[body_len] = '\0';
    }
    r->body_len = body_len;
    sscanf(r->head, "HTTP/1.1 %d", &r->status);
    memmove(c->in, c->in + head_len + body_len, c->len - head_len - body_len);
    c->len -= head_len + body_len;
}

/* 1 when the server closes the connection (EOF or reset) with no more
 * input pending. */
static int client_wait_eof(struct client *c)
{
    char b[256];
    ssize_t n;

    if (c->len > 0) {
        return 0;
    }
    n = recv(c->fd, b, sizeof b, 0);
    if (n == 0) {
        return 1;
    }
    return n < 0 && errno == ECONNRESET;
}

static void client_close(struct client *c)
{
    close(c->fd);
}

/******************************************************************************
 * Basic requests
 *****************************************************************************/

static void client_two_gets(struct fixture *f)
{
    struct client c;

    if (client_open(&c, f->port) != 0) {
        return;
    }
    client_send_str(&c, "GET /a HTTP/1.1\r\nHost: x\r\n"
                        "X-Test:   hello world  \r\nX-Empty:\r\n\r\n");
    client_read_response(&c, &f->resp[0]);
    client_send_str(&c, "GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
    client_read_response(&c, &f->resp[1]);
    client_close(&c);
}

static void a_get_is_answered_and_the_connection_kept_alive(void **state)
{
    struct fixture *f = *state;

    run(f, client_two_gets);
    assert_int_equal(f->handled, 2);
    assert_int_equal(f->resp[0].status, 200);
    assert_non_null(strstr(f->resp[0].head, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(f->resp[0].head, "Connection: keep-alive\r\n"));
    assert_non_null(strstr(f->resp[0].head, "X-Handler: test\r\n"));
    assert_non_null(
        strstr(f->resp[0].head, "Content-Type: application/json\r\n"));
    assert_string_equal(f->resp[0].body, "{\"url\":\"/a\",\"len\":0}");
    assert_int_equal(f->resp[1].status, 200);
    assert_string_equal(f->resp[1].body, "{\"url\":\"/b\",\"len\":0}");
    assert_string_equal(f->seen[0].method, "GET");
}

static void header_names_are_lower_cased_and_values_trimmed(void **state)
{
    struct fixture *f = *state;

    run(f, client_two_gets);
    assert_string_equal(f->seen[0].x_test, "hello world");
    assert_int_equal(f->seen[0].has_empty, 1);
    assert_string_equal(f->seen[1].x_test, "");
}

/* A 6,000-byte header on the first request (its buffers are then freed,
 * not kept), and fewer headers on each next one of the same connection. */
static void client_big_then_small_headers(struct fixture *f)
{
    static char req[8192];
    struct client c;
    int n;

    if (client_open(&c, f->port) != 0) {
        return;
    }
    n = snprintf(req, sizeof req,
                 "GET /a HTTP/1.1\r\nHost: x\r\nX-Test: first\r\nX-Empty:\r\n"
                 "X-Big: %0*d\r\n\r\n",
                 6000, 7);
    client_send(&c, req, (size_t)n);
    client_send_str(&c, "GET /b HTTP/1.1\r\nHost: x\r\nX-Test:  second \r\n\r\n"
                        "GET /c HTTP/1.1\r\nHost: x\r\n\r\n");
    client_read_response(&c, &f->resp[0]);
    client_read_response(&c, &f->resp[1]);
    client_read_response(&c, &f->resp[2]);
    client_close(&c);
}

static void each_request_has_only_its_own_headers(void **state)
{
    struct fixture *f = *state;

    run(f, client_big_then_small_headers);
    assert_int_equal(f->handled, 3);
    assert_int_equal(f->seen[0].n_headers, 4);
    assert_string_equal(f->seen[0].x_test, "first");
    assert_int_equal(f->seen[0].has_empty, 1);
    assert_int_equal(f->seen[1].n_headers, 2);
    assert_string_equal(f->seen[1].x_test, "second");
    assert_int_equal(f->seen[1].has_empty, 0);
    assert_int_equal(f->seen[2].n_headers, 1);
    assert_string_equal(f->seen[2].x_test, "");
    assert_int_equal(f->resp[2].status, 200);
}

/* Trailers of a chunked body are read and dropped: the headers are those
 * before the body. */
static void client_chunked_with_trailers(struct fixture *f)
{
    struct client c;

    if (client_open(&c, f->port) != 0) {
        return;
    }
    client_send_str(&c, "POST /t HTTP/1.1\r\nHost: x\r\nX-Test: head\r\n"
                        "Transfer-Encoding: chunked\r\n\r\n"
                        "5\r\nhello\r\n0\r\nX-A: 1\r\nX-Test: trailer\r\n\r\n"
                        "GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
    client_read_response(&c, &f->resp[0]);
    client_read_response(&c, &f->resp[1]);
    client_close(&c);
}

static void trailers_are_dropped(void **state)
{
    struct fixture *f = *state;

    run(f, client_chunked_with_trailers);
    assert_int_equal(f->handled, 2);
    assert_int_equal(f->seen[0].n_headers, 3);
    assert_string_equal(f->seen[0].x_test, "head");
    assert_string_equal(f->seen[0].body, "hello");
    assert_string_equal(f->seen[1].x_test, "");
    assert_int_equal(f->resp[1].status, 200);
}

static void client_nocontent_and_head(struct fixture *f)
{
    struct client c;

    if (client_open(&c, f->port) != 0) {
        return;
    }
    client_send_str(&c, "DELETE /nocontent HTTP/1.1\r\nHost: x\r\n\r\n"
                        "HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n"
                        "GET /after HTTP/1.1\r\nHost: x\r\n\r\n");
    client_read_response(&c, &f->resp[0]);
    /* A HEAD answer announces a length but carries no body: the next
     * response follows its head at once. */
    c.no_body = 1;
    client_read_response(&c, &f->resp[1]);
    c.no_body = 0;
    client_read_response(&c, &f->resp[2]);
    client_close(&c);
}

static void a_204_has_no_length_and_a_head_answer_no_body(void **state)
{
    struct fixture *f = *state;

    run(f, client_nocontent_and_head);
    assert_int_equal(f->resp[0].status, 204);
    assert_null(strstr(f->resp[0].head, "Content-Length"));
    assert_null(strstr(f->resp[0].head, "Content-Type"));
    assert_int_equal(f->resp[1].status, 200);
    assert_non_null(strstr(f->resp[1].head, "Content-Length: 20\r\n"));
    assert_int_equal(f->resp[2].status, 200);
    assert_string_equal(f->resp[2].body, "{\"url\":\"/after\",\"len\":0}");
}

static void client_connection_close(struct fixture *f)
{
    struct client c;

    if (client_open(&c, f->port) != 0) {
        return;
    }
    client_send_str(&c, "GET /later HTTP/1.1\r\nHost: x\r\n"
                        "Connection: close\r\n\r\n"
                        "GET /never HTTP/1.1\r\nHost: x\r\n\r\n");
    client_read_response(&c, &f->resp[0]);
    f->eof[0] = client_wait_eof(&c);
    client_close(&c);
}

static void connection_close_closes_after_that_response(void **state)
{
    struct fixture *f = *state;

    run(f, client_connection_close);
    assert_int_equal(f->handled, 1);
    assert_int_equal(f->resp[0].status, 200);
    assert_non_null(strstr(f->resp[0].head, "Connection: close\r\n"));
    assert_int_equal(f->eof[0], 1);
}

/******************************************************************************
 * Pipelining and bodies
 *****************************************************************************/

static void client_pipelined(struct fixture *f)
{
    struct client c;

    if (client_open(&c, f->port) != 0) {
        return;
    }
    client_send_str(&c, "GET /later HTTP/1.1\r\nHost: x\r\n\r\n"
                        "GET /now HTTP/1.1\r\nHost: x\r\n\r\n");
    client_read_response(&c, &f->resp[0]);
    client_read_response(&c, &f->resp[1]);
    client_close(&c);
}

/* Read one /big answer: 1 when its head says 200 and BIG_LEN bytes, and
 * every byte of its body is big_byte's. */
static int client_read_big(struct client *c)
{
    char head[1024];
    char *end;
    size_t head_len;
    size_t got = 0;
    const char *cl;

    for (;;) {
        end = c->len > 0 ? memmem(c->in, c->len, "\r\n\r\n", 4) : NULL;
        if (end != NULL) {
            break;
        }
        if (!client_fill(c)) {
            return 0;
        }
    }
    head_len = (size_t)(end - c->in) + 4;
    if (head_len >= sizeof head) {
        return 0;
    }
    memcpy(head, c->in, head_len);
    head[head_len] = '\0';
    cl = strcasestr(head, "\r\nContent-Length: ");
    if (strncmp(head, "HTTP/1.1 200 ", 13) != 0 || cl == NULL ||
        strtoul(cl + 18, NULL, 10) != BIG_LEN) {
        return 0;
    }
    memmove(c->in, c->in + head_len, c->len - head_len);
    c->len -= head_len;
    while (got < BIG_LEN) {
        size_t n = c->len < BIG_LEN - got ? c->len : BIG_LEN - got;
        size_t i;

        for (i = 0; i < n; i++) {
            if (c->in[i] != big_byte(got + i)) {
                return 0;
            }
        }
        got += n;
        memmove(c->in, c->in + n, c->len - n);
        c->len -= n;
        if (got < BIG_LEN && !client_fill(c)) {
            return 0;
        }
    }
    return 1;
}

/* BIG_ANSWERS answers of 1 MiB queue behind a late one; then all go out in
 * one write larger than the socket's send buffer can grow to (4 MiB), so
 * the server writes part at once and queues a copy of the rest. */
static void client_big_pipeline(struct fixture *f)
{
    struct client c;
    int i;

    if (client_open(&c, f->port) != 0) {
        return;
    }
    client_send_str(&c, "GET /later HTTP/1.1\r\nHost: x\r\n\r\n");
    for (i = 0; i < BIG_ANSWERS; i++) {
        client_send_str(&c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    client_send_str(&c, "GET /now HTTP/1.1\r\nHost: x\r\n\r\n");
    usleep(200 * 1000);
    client_read_response(&c, &f->resp[0]);
    for (i = 0; i < BIG_ANSWERS; i++) {
        f->big_ok[i] = client_read_big(&c);
    }
    client_read_response(&c, &f->resp[1]);
    client_close(&c);
}

static void answers_the_socket_takes_in_part_arrive_whole(void **state)
{
    struct fixture *f = *state;
    int i;

    run(f, client_big_pipeline);
    assert_int_equal(f->handled, BIG_ANSWERS + 2);
    assert_string_equal(f->resp[0].body, "{\"url\":\"/later\",\"len\":0}");
    for (i = 0; i < BIG_ANSWERS; i++) {
        assert_true(f->big_ok[i]);
    }
    assert_string_equal(f->resp[1].body, "{\"url\":\"/now\",\"len\":0}");
}

static void pipelined_requests_are_answered_in_order(void **state)
{
    struct fixture *f = *state;

    run(f, client_pipelined);
    assert_int_equal(f->handled, 2);
    assert_string_equal(f->resp[0].body, "{\"url\":\"/later\",\"len\":0}");
    assert_string_equal(f->resp[1].body, "{\"url\":\"/now\",\"len\":0}");
}

static void client_flood(struct fixture *f)
{
    struct client c;
    char req[10 * 64] = "";
    int i;

    if (client_open(&c, f->port) != 0) {
        return;
    }
    for (i = 0; i < 10; i++) {
        char one[64];
        snprintf(one, sizeof one, "GET /later/%d HTTP/1.1\r\nHost: x\r\n\r\n",
                 i);
        strcat(req, one);
    }
    client_send_str(&c, req);
    for (i = 0; i < 10; i++) {
        client_read_response(&c, &f->resp[i]);
    }
    client_close(&c);
}

static void reading_pauses_at_the_pipeline_bound(void **state)
{
    struct fixture *f = *state;
    int i;

    f->limits.max_pipeline = 2;
    run(f, client_flood);
    assert_int_equal(f->handled, 10);
    assert_int_equal(f->max_outstanding, 2);
    for (i = 0; i < 10; i++) {
        char want[64];
        snprintf(want, sizeof want, "{\"url\":\"/later/%d\",\"len\":0}", i);
        assert_string_equal(f->resp[i].body, want);
    }
}

static void client_chunked(struct fixture *f)
{
    struct client c;

    if (client_open(&c, f->port) != 0) {
        return;
    }
    client_send_str(&c, "POST /c HTTP/1.1\r\nHost: x\r\n"
                        "Transfer-Encoding: chunked\r\n\r\n"
                        "5\r\nhello\r\n");
    usleep(20000);
    client_send_str(&c, "1\r\n \r\n5\r\nworld\r\n0\r\n\r\n");
    client_read_response(&c, &f->resp[0]);
    client_close(&c);
}

static void a_chunked_body_is_reassembled(void **state)
{
    struct fixture *f = *state;

    run(f, client_chunked);
    assert_int_equal(f->resp[0].status, 200);
    assert_string_equal(f->seen[0].body, "hello world");
    assert_int_equal(f->seen[0].body_len, 11);
    assert_string_equal(f->seen[0].method, "POST");
}

static void client_expect_continue(struct fixture *f)
{
    struct client c;

    if (client_open(&c, f->port) != 0) {
        return;
    }
    client_send_str(&c, "PUT /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                        "Expect: 100-continue\r\n\r\n");
    client_read_response(&c, &f->resp[0]);
    client_send_str(&c, "hello");
    client_read_response(&c, &f->resp[1]);
    client_close(&c);
}

static void expect_100_continue_is_answered_before_the_body(void **state)
{
    struct fixture *f = *state;

    run(f, client_expect_continue);
    assert_int_equal(f->resp[0].status, 100);
    assert_int_equal(f->resp[1].status, 200);
    assert_string_equal(f->resp[1].body, "{\"url\":\"/e\",\"len\":5}");
    assert_string_equal(f->seen[0].body, "hello");
}

static void client_big_length(struct fixture *f)
{
    struct client c;

    if (client_open(&c, f->port) != 0) {
        return;
    }
    /* Headers only: the answer must come without the body being sent. */
    client_send_str(&c, "PUT /big HTTP/1.1\r\nHost: x\r\n"
                        "Content-Length: 2000\r\n\r\n");
    client_read_response(&c, &f->resp[0]);
    f->eof[0] = client_wait_eof(&c);
    client_close(&c);
}

static void a_content_length_over_the_limit_is_refused_with_413(void **state)
{
    struct fixture *f = *state;

    f->limits.max_body_bytes = 1000;
    run(f, client_big_length);
    assert_int_equal(f->handled, 0);
    assert_int_equal(f->resp[0].status, 413);
    assert_non_null(strstr(f->resp[0].head, "Connection: close\r\n"));
    assert_string_equal(f->resp[0].body,
                        "{\"code\":\"body_too_large\","
                        "\"message\":\"request body too large\"}");
    assert_int_equal(f->eof[0], 1);
}

static void client_big_chunked(struct fixture *f)
{
    struct client c;
    char chunk[700];

    if (client_open(&c, f->port) != 0) {
        return;
    }
    memset(chunk, 'a', sizeof chunk);
    client_send_str(&c, "POST /c HTTP/1.1\r\nHost: x\r\n"
                        "Transfer-Encoding: chunked\r\n\r\n2bc\r\n");
    client_send(&c, chunk, sizeof chunk);
    client_send_str(&c, "\r\n2bc\r\n");
    client_send(&c, chunk, sizeof chunk);
    client_send_str(&c, "\r\n0\r\n\r\n");
    client_read_response(&c, &f->resp[0]);
    f->eof[0] = client_wait_eof(&c);
    client_close(&c);
}

static void a_chunked_body_over_the_limit_is_refused_with_413(void **state)
{
    struct fixture *f = *state;

    f->limits.max_body_bytes = 1000;
    run(f, client_big_chunked);
    assert_int_equal(f->handled, 0);
    assert_int_equal(f->resp[0].status, 413);
    assert_int_equal(f->eof[0], 1);
}

/******************************************************************************
 * Malformed and oversized requests
 *****************************************************************************/

static void client_big_header(struct fixture *f)
{
    struct client c;
    static char req[21 * 1024];
    size_t n;

    if (client_open(&c, f->port) != 0) {
        return;
    }
    n = (size_t)snprintf(req, sizeof req, "GET / HTTP/1.1\r\nX-Big: ");
    memset(req + n, 'b', 20 * 1024);
    n += 20 * 1024;
    memcpy(req + n, "\r\n\r\n", 4);
    client_send(&c, req, n + 4);
    client_read_response(&c, &f->resp[0]);
    f->eof[0] = client_wait_eof(&c);
    client_close(&c);
}

static void a_20_kb_header_is_refused_with_431(void **state)
{
    struct fixture *f = *state;

    run(f, client_big_header);
    assert_int_equal(f->handled, 0);
    assert_int_equal(f->resp[0].status, 431);
    assert_non_null(strstr(f->resp[0].body, "\"code\":\"headers_too_large\""));
    assert_int_equal(f->eof[0], 1);
}

static void client_garbage(struct fixture *f)
{
    struct client c;

    if (client_open(&c, f->port) != 0) {
        return;
    }
    client_send_str(&c, "GET /later HTTP/1.1\r\nHost: x\r\n\r\n"
                        "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n");
    client_read_response(&c, &f->resp[0]);
    client_read_response(&c, &f->resp[1]);
    f->eof[0] = client_wait_eof(&c);
    client_close(&c);
}

static void a_malformed_request_is_refused_with_400_in_order(void **state)
{
    struct fixture *f = *state;

    run(f, client_garbage);
    assert_int_equal(f->handled, 1);
    assert_int_equal(f->resp[0].status, 200);
    assert_int_equal(f->resp[1].status, 400);
    assert_string_equal(f->resp[1].body,
                        "{\"code\":\"bad_request\","
                        "\"message\":\"malformed HTTP request\"}");
    assert_int_equal(f->eof[0], 1);
}

static void client_bad_request_lines(struct fixture *f)
{
    static const char *bad[] = {
        "NOPE / HTTP/1.1\r\n\r\n",
        "GET /a\x01 HTTP/1.1\r\n\r\n",
        "GET / HTTP/9\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        "GET / HTTP/1.1\r\n: novalue\r\n\r\n",
    };
    size_t i;

    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct client c;

        if (client_open(&c, f->port) != 0) {
            return;
        }
        client_send_str(&c, bad[i]);
        client_read_response(&c, &f->resp[i]);
        client_close(&c);
    }
}

static void bad_request_lines_and_chunks_are_refused_with_400(void **state)
{
    struct fixture *f = *state;
    int i;

    run(f, client_bad_request_lines);
    assert_int_equal(f->handled, 0);
    for (i = 0; i < 6; i++) {
        assert_int_equal(f->resp[i].status, 400);
    }
}

static void client_never_reads(struct fixture *f)
{
    struct client c;
    static char reqs[200 * 40];
    size_t n = 0;
    int rcvbuf = 4096;
    int i;

    for (i = 0; i < 200; i++) {
        n += (size_t)snprintf(reqs + n, sizeof reqs - n,
                              "GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    if (client_open(&c, f->port) != 0) {
        return;
    }
    setsockopt(c.fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    client_send(&c, reqs, n);
    /* Read nothing for longer than the idle timeout: the server must stop
     * reading requests, then give up on the stalled connection. The socket
     * stays open until the loop has ended. */
    usleep(800 * 1000);
    f->kept_fd = c.fd;
}

static void a_client_that_never_reads_is_bounded_then_closed(void **state)
{
    struct fixture *f = *state;

    f->limits.max_write_bytes = 1;
    f->limits.idle_timeout_ms = 300;
    f->kept_fd = -1;
    run(f, client_never_reads);
    assert_true(f->kept_fd >= 0);
    close(f->kept_fd);
    /* 200 requests of 1 MiB answers each: reading stopped after a few. */
    assert_true(f->handled < 50);
    /* The stalled connection was closed by the server before the client
     * said it was done. */
    assert_int_equal(f->conns_at_stop, 0);
}

/******************************************************************************
 * Timeouts and the connection cap
 *****************************************************************************/

static void client_slowloris(struct fixture *f)
{
    struct client slow;
    struct client fast;
    double t0;

    if (client_open(&slow, f->port) != 0 ||
        client_open(&fast, f->port) != 0) {
        return;
    }
    t0 = now_ms();
    client_send_str(&slow, "GET / HTTP/1.1\r\nHost: x\r\n");
    client_send_str(&fast, "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n");
    client_read_response(&fast, &f->resp[0]);
    f->eof[0] = client_wait_eof(&slow);
    f->elapsed_ms[0] = now_ms() - t0;
    client_close(&slow);
    client_close(&fast);
}

static void a_stalled_half_request_times_out(void **state)
{
    struct fixture *f = *state;

    f->limits.request_timeout_ms = 200;
    run(f, client_slowloris);
    assert_int_equal(f->resp[0].status, 200);
    assert_int_equal(f->eof[0], 1);
    assert_true(f->elapsed_ms[0] >= 150);
    assert_true(f->elapsed_ms[0] < 1500);
    assert_int_equal(f->handled, 1);
}

static void client_idle(struct fixture *f)
{
    struct client c;
    double t0;

    if (client_open(&c, f->port) != 0) {
        return;
    }
    client_send_str(&c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    client_read_response(&c, &f->resp[0]);
    t0 = now_ms();
    f->eof[0] = client_wait_eof(&c);
    f->elapsed_ms[0] = now_ms() - t0;
    client_close(&c);
}

static void an_idle_keep_alive_connection_is_closed(void **state)
{
    struct fixture *f = *state;

    f->limits.idle_timeout_ms = 200;
    run(f, client_idle);
    assert_int_equal(f->resp[0].status, 200);
    assert_int_equal(f->eof[0], 1);
    assert_true(f->elapsed_ms[0] >= 150);
    assert_true(f->elapsed_ms[0] < 1500);
}

/* Requests 60 ms apart for longer than either timeout, then, after a pause
 * shorter than the idle timeout but longer than the request timeout, half
 * a request. The timer is lazy (api/http.c): it wakes at the shortest
 * timeout and must re-arm for what is left of the current deadline. */
static void client_busy_then_half(struct fixture *f)
{
    struct client c;
    double t0;
    int i;

    if (client_open(&c, f->port) != 0) {
        return;
    }
    for (i = 0; i < 8; i++) {
        client_send_str(&c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        client_read_response(&c, &f->resp[i]);
        usleep(60 * 1000);
    }
    usleep(90 * 1000);
    t0 = now_ms();
    client_send_str(&c, "GET / HTTP/1.1\r\nHost: x\r\n");
    f->eof[0] = client_wait_eof(&c);
    f->elapsed_ms[0] = now_ms() - t0;
    client_close(&c);
}

static void a_busy_connection_outlives_its_timeouts(void **state)
{
    struct fixture *f = *state;
    int i;

    f->limits.request_timeout_ms = 200;
    f->limits.idle_timeout_ms = 300;
    run(f, client_busy_then_half);
    /* 8 requests over 630 ms: the idle and request timeouts both passed
     * while the connection was in use, and none closed it. */
    for (i = 0; i < 8; i++) {
        assert_int_equal(f->resp[i].status, 200);
    }
    assert_int_equal(f->handled, 8);
    /* The half request had its full 200 ms from its first byte, though
     * the timer (never armed for more than 200 ms) woke within them. */
    assert_int_equal(f->eof[0], 1);
    assert_true(f->elapsed_ms[0] >= 150);
    assert_true(f->elapsed_ms[0] < 1500);
}

static void client_cap(struct fixture *f)
{
    struct client a;
    struct client b;
    struct client c;

    if (client_open(&a, f->port) != 0 || client_open(&b, f->port) != 0) {
        return;
    }
    /* Make sure both are accepted before the third one comes. */
    client_send_str(&a, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    client_read_response(&a, &f->resp[0]);
    client_send_str(&b, "GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
    client_read_response(&b, &f->resp[1]);
    if (client_open(&c, f->port) != 0) {
        return;
    }
    f->eof[0] = client_wait_eof(&c);
    client_close(&c);
    client_send_str(&a, "GET /a2 HTTP/1.1\r\nHost: x\r\n\r\n");
    client_read_response(&a, &f->resp[2]);
    client_close(&a);
    client_close(&b);
}

static void connections_over_the_cap_are_closed_at_once(void **state)
{
    struct fixture *f = *state;

    f->limits.max_connections = 2;
    run(f, client_cap);
    assert_int_equal(f->eof[0], 1);
    assert_int_equal(f->resp[0].status, 200);
    assert_int_equal(f->resp[1].status, 200);
    assert_int_equal(f->resp[2].status, 200);
    assert_int_equal(f->handled, 3);
}

/******************************************************************************
 * Stopping
 *****************************************************************************/

static void client_stop(struct fixture *f)
{
    struct client c;

    if (client_open(&c, f->port) != 0) {
        return;
    }
    client_send_str(&c, "GET /stop HTTP/1.1\r\nHost: x\r\n\r\n");
    client_read_response(&c, &f->resp[0]);
    f->eof[0] = client_wait_eof(&c);
    client_close(&c);
}

static void stop_answers_a_pending_request_then_closes(void **state)
{
    struct fixture *f = *state;

    run(f, client_stop);
    assert_int_equal(f->resp[0].status, 200);
    assert_string_equal(f->resp[0].body, "{\"url\":\"/stop\",\"len\":0}");
    assert_non_null(strstr(f->resp[0].head, "Connection: close\r\n"));
    assert_int_equal(f->eof[0], 1);
    assert_int_equal(f->stopped, 1);
}

static void client_open_idle(struct fixture *f)
{
    struct client c;

    if (client_open(&c, f->port) != 0) {
        return;
    }
    client_send_str(&c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    client_read_response(&c, &f->resp[0]);
    /* Leave it open: stopping must close it. */
    f->kept_fd = c.fd;
}

static void stop_closes_idle_connections(void **state)
{
    struct fixture *f = *state;

    f->kept_fd = -1;
    run(f, client_open_idle);
    assert_true(f->kept_fd >= 0);
    close(f->kept_fd);
    assert_int_equal(f->conns_at_stop, 1);
    assert_int_equal(f->stopped, 1);
}

/******************************************************************************
 * Listening
 *****************************************************************************/

static void a_busy_port_is_reported_in_errmsg(void **state)
{
    uv_loop_t loop;
    struct http_server *a = NULL;
    struct http_server *b = NULL;
    struct http_limits l;
    char err[256] = "";
    char addr[64];
    char want[128];
    int stopped = 0;

    (void)state;
    http_limits_default(&l);
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(http_server_start(&a, &loop, "127.0.0.1:0", &l,
                                       handler, NULL, err, sizeof err),
                     0);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", http_server_port(a));
    assert_int_equal(http_server_start(&b, &loop, addr, &l, handler, NULL,
                                       err, sizeof err),
                     UV_EADDRINUSE);
    assert_null(b);
    snprintf(want, sizeof want, "listen %s: address already in use", addr);
    assert_string_equal(err, want);
    assert_int_equal(http_server_start(&b, &loop, "localhost", &l, handler,
                                       NULL, err, sizeof err),
                     UV_EINVAL);
    assert_string_equal(err, "listen localhost: invalid address");
    http_server_stop(a, stopped_cb, &stopped);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void ipv6_literals_are_accepted(void **state)
{
    uv_loop_t loop;
    struct http_server *s = NULL;
    struct http_limits l;
    char err[256] = "";
    int rv;

    (void)state;
    http_limits_default(&l);
    assert_int_equal(uv_loop_init(&loop), 0);
    rv = http_server_start(&s, &loop, "[::1]:0", &l, handler, NULL, err,
                           sizeof err);
    if (rv == 0) {
        assert_true(http_server_port(s) > 0);
        http_server_stop(s, NULL, NULL);
    } else {
        /* No IPv6 loopback on this host: the message still names it. */
        assert_non_null(strstr(err, "listen [::1]:0: "));
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/******************************************************************************
 * Detached requests and status texts
 *****************************************************************************/

static void a_detached_request_captures_its_answer(void **state)
{
    static const char *const headers[] = {"Content-Type", " application/json ",
                                          "X-Request-Id", "r1", NULL};
    struct http_request *req;
    const char *body;
    size_t len = 99;

    (void)state;
    req = http_request_new_detached("PATCH", "/v1/account/a/ns/properties",
                                    headers, "{\"a\":1}", 7);
    assert_non_null(req);
    assert_int_equal(req->method, HTTP_PATCH);
    assert_string_equal(req->method_name, "PATCH");
    assert_string_equal(req->url, "/v1/account/a/ns/properties");
    assert_int_equal(req->n_headers, 2);
    assert_string_equal(http_request_header(req, "content-type")->value,
                        "application/json");
    assert_string_equal(http_request_header(req, "x-request-id")->value,
                        "r1");
    assert_null(http_request_header(req, "X-Request-Id"));
    assert_int_equal(req->body_len, 7);
    assert_string_equal(req->body, "{\"a\":1}");
    assert_int_equal(http_detached_status(req), 0);

    assert_int_equal(http_respond_error(req, 404, "X-Context-Node: 1\r\n",
                                        "not_found", "no such \"thing\""),
                     0);
    assert_int_equal(http_detached_status(req), 404);
    assert_non_null(strstr(http_detached_headers(req),
                           "X-Context-Node: 1\r\n"));
    assert_non_null(strstr(http_detached_headers(req),
                           "Content-Type: application/json\r\n"));
    body = http_detached_body(req, &len);
    assert_int_equal(len, strlen(body));
    assert_string_equal(body, "{\"code\":\"not_found\","
                              "\"message\":\"no such \\\"thing\\\"\"}");
    http_request_free_detached(req);
}

static void a_detached_request_may_have_no_headers_or_body(void **state)
{
    struct http_request *req;
    size_t len = 99;

    (void)state;
    req = http_request_new_detached("GET", "/healthz", NULL, NULL, 0);
    assert_non_null(req);
    assert_int_equal(req->n_headers, 0);
    assert_int_equal(req->body_len, 0);
    assert_string_equal(req->body, "");
    assert_int_equal(http_respond(req, 204, NULL, NULL, 0), 0);
    assert_int_equal(http_detached_status(req), 204);
    assert_null(strstr(http_detached_headers(req), "Content-Length"));
    http_detached_body(req, &len);
    assert_int_equal(len, 0);
    http_request_free_detached(req);
}

static void status_texts_cover_the_api_statuses(void **state)
{
    static const struct
    {
        int status;       /* code */
        const char *text; /* reason phrase */
    } cases[] = {
        {200, "OK"},
        {201, "Created"},
        {204, "No Content"},
        {400, "Bad Request"},
        {401, "Unauthorized"},
        {403, "Forbidden"},
        {404, "Not Found"},
        {405, "Method Not Allowed"},
        {408, "Request Timeout"},
        {409, "Conflict"},
        {412, "Precondition Failed"},
        {413, "Payload Too Large"},
        {415, "Unsupported Media Type"},
        {429, "Too Many Requests"},
        {431, "Request Header Fields Too Large"},
        {500, "Internal Server Error"},
        {503, "Service Unavailable"},
        {504, "Gateway Timeout"},
        {299, "Unknown"},
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_string_equal(http_status_text(cases[i].status), cases[i].text);
    }
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(a_get_is_answered_and_the_connection_kept_alive),
        T(header_names_are_lower_cased_and_values_trimmed),
        T(each_request_has_only_its_own_headers),
        T(trailers_are_dropped),
        T(a_204_has_no_length_and_a_head_answer_no_body),
        T(connection_close_closes_after_that_response),
        T(pipelined_requests_are_answered_in_order),
        T(answers_the_socket_takes_in_part_arrive_whole),
        T(reading_pauses_at_the_pipeline_bound),
        T(a_chunked_body_is_reassembled),
        T(expect_100_continue_is_answered_before_the_body),
        T(a_content_length_over_the_limit_is_refused_with_413),
        T(a_chunked_body_over_the_limit_is_refused_with_413),
        T(a_20_kb_header_is_refused_with_431),
        T(a_malformed_request_is_refused_with_400_in_order),
        T(bad_request_lines_and_chunks_are_refused_with_400),
        T(a_client_that_never_reads_is_bounded_then_closed),
        T(a_stalled_half_request_times_out),
        T(an_idle_keep_alive_connection_is_closed),
        T(a_busy_connection_outlives_its_timeouts),
        T(connections_over_the_cap_are_closed_at_once),
        T(stop_answers_a_pending_request_then_closes),
        T(stop_closes_idle_connections),
        cmocka_unit_test(a_busy_port_is_reported_in_errmsg),
        cmocka_unit_test(ipv6_literals_are_accepted),
        cmocka_unit_test(a_detached_request_captures_its_answer),
        cmocka_unit_test(a_detached_request_may_have_no_headers_or_body),
        cmocka_unit_test(status_texts_cover_the_api_statuses),
    };
#undef T
    return cmocka_run_group_tests(tests, 0, 0);
}
