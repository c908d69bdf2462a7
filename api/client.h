/* HTTP/1.1 client on libuv for calls between nodes (forwarded writes,
 * read-index, join): kept-alive connections per peer address, requests
 * pipelined on them and answered in order, responses parsed with
 * http-parser (HTTP_RESPONSE), every request bounded by a timeout.
 *
 * Outcome of a request, reported exactly once through its callback:
 *   CLIENT_OK        a complete response arrived (any HTTP status)
 *   CLIENT_ENOTSENT  no byte of the request reached the socket (connect
 *                    failed, or the connection died before its turn): the
 *                    peer certainly did not act on it
 *   CLIENT_EUNKNOWN  the request was written (wholly or partly) but no
 *                    complete response came back: the peer may have acted
 *   CLIENT_ETIMEOUT  no response within the timeout (outcome unknown too)
 *   CLIENT_ECANCELED the client is closing
 *   CLIENT_ENOMEM / CLIENT_EINVAL
 * After EUNKNOWN / ETIMEOUT the connection is closed (later requests
 * pipelined behind on it become ENOTSENT if they were not written yet, or
 * EUNKNOWN if they were). */
#ifndef CTXD_CLIENT_H
#define CTXD_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "http.h"

#define CLIENT_ERRORS(X)                                            \
    X(CLIENT_OK, 0, "ok")                                           \
    X(CLIENT_ENOTSENT, 1, "request not sent")                       \
    X(CLIENT_EUNKNOWN, 2, "connection lost before the response")    \
    X(CLIENT_ETIMEOUT, 3, "no response in time")                    \
    X(CLIENT_ECANCELED, 4, "client closing")                        \
    X(CLIENT_ENOMEM, 5, "out of memory")                            \
    X(CLIENT_EINVAL, 6, "invalid argument")

enum client_status {
#define CLIENT_ENUM(name, code, text) name = code,
    CLIENT_ERRORS(CLIENT_ENUM)
#undef CLIENT_ENUM
};

const char *client_strerror(int status);

struct client_limits
{
    unsigned max_conns_per_peer; /* default 4 */
    unsigned max_pipeline;       /* requests in flight per connection, default 64 */
    size_t max_response_bytes;   /* headers + body, default 64 MiB */
    uint64_t connect_timeout_ms; /* default 1000 */
};

void client_limits_default(struct client_limits *l);

/* A parsed response, valid only during the callback. */
struct client_response
{
    int status;                  /* HTTP status */
    const struct http_header *headers; /* lower-case names, in order */
    unsigned n_headers;
    const char *body;            /* not NUL-terminated */
    size_t body_len;
};

struct client_request;
typedef void (*client_cb)(struct client_request *req, int status,
                          const struct client_response *resp);

/* Caller-allocated; must stay alive until cb. */
struct client_request
{
    void *data;
    client_cb cb;
    /* private */
    struct client_request *next;
    struct client_conn *conn;
    char *wire;        /* serialized request (owned until written) */
    size_t wire_len;
    uint64_t deadline; /* uv_now() ms */
    int written;       /* 1 once handed to uv_write */
};

struct client; /* opaque */

int client_init(struct client **out, uv_loop_t *loop,
                const struct client_limits *limits);

/* Send a request to addr ("host:port", IPv4 or [IPv6]). headers: extra
 * header lines "Name: value\r\n" (may be NULL); Host, Content-Length and
 * Connection: keep-alive are added. body is copied. Returns 0 (cb will
 * fire) or CLIENT_ENOMEM / CLIENT_EINVAL / CLIENT_ECANCELED (cb never
 * fires). */
int client_send(struct client *c, struct client_request *req, const char *addr,
                const char *method, const char *url, const char *headers,
                const char *body, size_t body_len, uint64_t timeout_ms);

/* Close every connection; pending requests complete with ECANCELED (or
 * EUNKNOWN if written — they are reported as ECANCELED all the same:
 * callers treat both as outcome unknown), then cb (may be NULL); the
 * client is freed after it. */
void client_close(struct client *c, void (*cb)(void *data), void *data);

#endif
