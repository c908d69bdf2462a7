/* Unit tests for http_respond_owned (api/http.c): a handed-over body is
 * written after its header in HTTP_BODY_CHUNK writes over a real loopback
 * connection, byte for byte, with the Content-Length of the body, and its
 * free function runs exactly once: after the last write, when the client
 * goes away first, and at once for a detached request (which gets a copy).
 * The client is a blocking socket in a second thread; the server runs on
 * the main thread's loop. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "../../api/http.h"

#define BODY_LEN (3 * HTTP_BODY_CHUNK + 12345) /* bytes: several chunks */

/* One test's server side. */
struct fixture
{
    uv_loop_t loop;          /* the server's loop */
    struct http_server *srv; /* listening on 127.0.0.1:0 */
    char *body;              /* the body handed over */
    int frees;               /* body_free calls */
    int stopped;             /* the server's stop callback ran */
    int port;                /* bound port */
    int read_all;            /* client: read the whole response */
    size_t got;              /* client: body bytes received and checked */
    int ok;                  /* client: header and bytes as expected */
};

static void body_free(void *data)
{
    struct fixture *f = data;

    f->frees++;
}

static void handler(void *ctx, struct http_request *req)
{
    struct fixture *f = ctx;

    http_respond_owned(req, 200, "Content-Type: application/octet-stream\r\n",
                       f->body, BODY_LEN, body_free, f);
}

static void stop_cb(void *data)
{
    struct fixture *f = data;

    f->stopped = 1;
}

/* Client thread: send one GET, then read the response (all of it, or only
 * the first bytes when read_all is 0) and close. */
static void *client_main(void *arg)
{
    struct fixture *f = arg;
    struct sockaddr_in sa;
    static const char get[] = "GET /x HTTP/1.1\r\nHost: t\r\n\r\n";
    char want_len[64];
    char *buf = malloc(BODY_LEN + 4096);
    size_t n = 0;
    char *end = NULL;
    int s = socket(AF_INET, SOCK_STREAM, 0);

    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)f->port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (buf == NULL || s < 0 ||
        connect(s, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        write(s, get, sizeof get - 1) != (ssize_t)(sizeof get - 1)) {
        goto out;
    }
    for (;;) {
        ssize_t r = read(s, buf + n, BODY_LEN + 4096 - n);

        if (r <= 0) {
            break;
        }
        n += (size_t)r;
        buf[n] = '\0';
        if (end == NULL) {
            end = strstr(buf, "\r\n\r\n");
        }
        if (!f->read_all && n > 4096) {
            break;
        }
        if (end != NULL && n - (size_t)(end + 4 - buf) >= BODY_LEN) {
            break;
        }
    }
    snprintf(want_len, sizeof want_len, "Content-Length: %d\r\n", BODY_LEN);
    if (end != NULL && strncmp(buf, "HTTP/1.1 200 OK\r\n", 17) == 0 &&
        strstr(buf, want_len) != NULL) {
        f->got = n - (size_t)(end + 4 - buf);
        f->ok = f->got <= BODY_LEN &&
                memcmp(end + 4, f->body, f->got) == 0;
    }
out:
    if (s >= 0) {
        close(s);
    }
    free(buf);
    return NULL;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    char errmsg[128];
    size_t i;

    if (f == NULL || (f->body = malloc(BODY_LEN)) == NULL) {
        free(f);
        return -1;
    }
    for (i = 0; i < BODY_LEN; i++) {
        f->body[i] = (char)(i * 7 + i / 4096);
    }
    if (uv_loop_init(&f->loop) != 0 ||
        http_server_start(&f->srv, &f->loop, "127.0.0.1:0", NULL, handler, f,
                          errmsg, sizeof errmsg) != 0) {
        return -1;
    }
    f->port = http_server_port(f->srv);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    if (!f->stopped) {
        http_server_stop(f->srv, stop_cb, f);
        uv_run(&f->loop, UV_RUN_DEFAULT);
    }
    uv_loop_close(&f->loop);
    free(f->body);
    free(f);
    return 0;
}

/* Run the loop until the body is released (bounded), then stop. */
static void run_until_freed(struct fixture *f)
{
    int i;

    for (i = 0; i < 200000 && f->frees == 0; i++) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        usleep(50);
    }
}

/******************************************************************************
 * http_respond_owned
 *****************************************************************************/

static void an_owned_body_arrives_whole_and_is_freed_once(void **state)
{
    struct fixture *f = *state;
    pthread_t t;

    f->read_all = 1;
    assert_int_equal(pthread_create(&t, NULL, client_main, f), 0);
    run_until_freed(f);
    pthread_join(t, NULL);
    assert_int_equal(f->frees, 1);
    assert_true(f->ok);
    assert_int_equal(f->got, BODY_LEN);
    http_server_stop(f->srv, stop_cb, f);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->frees, 1);
}

static void a_client_leaving_early_still_frees_the_body_once(void **state)
{
    struct fixture *f = *state;
    pthread_t t;

    f->read_all = 0;
    assert_int_equal(pthread_create(&t, NULL, client_main, f), 0);
    run_until_freed(f);
    pthread_join(t, NULL);
    assert_true(f->ok); /* the bytes it read were right */
    assert_true(f->got < BODY_LEN);
    http_server_stop(f->srv, stop_cb, f);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->frees, 1);
}

static void a_detached_request_gets_a_copy_and_the_body_is_freed(void **state)
{
    struct fixture *f = *state;
    struct http_request *req = http_request_new_detached("GET", "/x", NULL,
                                                         NULL, 0);
    size_t len;
    const char *body;

    assert_non_null(req);
    assert_int_equal(http_respond_owned(req, 200, NULL, f->body, 1000,
                                        body_free, f),
                     0);
    assert_int_equal(f->frees, 1);
    assert_int_equal(http_detached_status(req), 200);
    body = http_detached_body(req, &len);
    assert_int_equal(len, 1000);
    assert_memory_equal(body, f->body, 1000);
    http_request_free_detached(req);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            an_owned_body_arrives_whole_and_is_freed_once, setup, teardown),
        cmocka_unit_test_setup_teardown(
            a_client_leaving_early_still_frees_the_body_once, setup, teardown),
        cmocka_unit_test_setup_teardown(
            a_detached_request_gets_a_copy_and_the_body_is_freed, setup,
            teardown),
    };

    /* A client closing early makes writes fail with EPIPE, as in ctxd. */
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
