/* HTTP/1.1 server: libuv TCP connections parsed with http-parser 2.9.4.
 *
 * Connection life:
 *
 *   accept ──▶ READING ◀──────────────▶ PAUSED (pipeline full, or unsent
 *                │                              bytes over the bound)
 *                │ no_more (Connection: close, error, EOF, server stop)
 *                ▼
 *             DRAINING: answer and write what is queued, read nothing
 *                │ queue empty and no write in flight
 *                ▼
 *             LINGERING: FIN sent (uv_shutdown), input discarded until
 *                │        the client's EOF or HTTP_LINGER_MS, so a client
 *                │        still sending (say, a refused body) does not
 *                │        get a reset that destroys our last response
 *                ▼
 *             CLOSING (uv_close on both handles) ──▶ freed in the last
 *                                                    close callback
 *
 * Timeouts, with one timer per connection (conn_update_timer picks the
 * mode): a request being received must be complete within
 * request_timeout_ms of its first byte; a connection with nothing queued
 * and nothing to write is closed after idle_timeout_ms; a connection whose
 * writes make no progress for idle_timeout_ms is closed; requests waiting
 * for the handler never time out here.
 *
 * The timer is lazy: a mode change records a deadline (uv_now plus the
 * mode's timeout) and leaves the libuv timer alone when it is already due
 * no later than that deadline. When it fires before the deadline it is
 * re-armed for the rest. It is never armed for longer than the shortest
 * of request_timeout_ms and idle_timeout_ms, so no later mode change of a
 * busy connection (idle, request, handler, idle again) needs to move it
 * earlier; only lingering, shorter still, restarts it. That saves the
 * three timer heap operations a keep-alive request would otherwise cost
 * (start, stop, start), at the price of one wake-up per shortest timeout
 * for a connection that stays idle or busy longer than that.
 *
 * Invariants:
 * - Requests are queued in arrival order and written in that order: only
 *   the answered (done) requests at the head of the queue are written.
 * - The parser is paused after every complete request, so each request is
 *   handed to the handler outside http-parser's callbacks, and parsing
 *   stops exactly when a bound is reached; the bytes not yet parsed wait in
 *   conn->pending, and reading is stopped whenever pending is not empty.
 * - A connection's memory is freed only in the close callback of its last
 *   handle; by then every request it had is freed or detached (gone = 1),
 *   and write and shutdown callbacks (which libuv runs before the close
 *   callbacks) have run.
 * - A detached request (http_request_new_detached) has conn == NULL and
 *   gone == 0; its answer is kept in resp as "<header lines>\0<body>\0"
 *   and its status in done.
 * - An offline connection (http_feed_bytes) has sink != NULL and no libuv
 *   handle at all: it is never on the server's list, its timer and reading
 *   are never touched, and what would be written is appended to sink. */
#include "http.h"
#include "headers.h"

#include <http_parser.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../lib/buf.h"
#include "metrics.h"

#define HTTP_READ_CHUNK 65536 /* bytes per read buffer */
#define HTTP_RESPONSE_HEAD 192 /* bytes: status line and fixed header lines */
#define HTTP_LINGER_MS 2000   /* longest wait for the client's EOF, ms */
#define HTTP_BACKLOG 511      /* listen(2) backlog */

enum conn_timer_mode {
    TIMER_OFF,     /* nothing to time */
    TIMER_REQUEST, /* a request is being received */
    TIMER_IDLE,    /* keep-alive with nothing queued */
    TIMER_WRITE,   /* waiting for write progress */
    TIMER_LINGER,  /* waiting for the client's EOF after our FIN */
};

struct http_server
{
    uv_loop_t *loop;             /* not owned */
    uv_tcp_t listener;           /* listening socket */
    struct http_limits limits;   /* copied at start */
    http_handler_fn handler;     /* called once per complete request */
    void *ctx;                   /* handler's context */
    int port;                    /* bound port */
    unsigned n_conns;            /* connections in the list */
    unsigned n_handles;          /* handles not yet through their close cb */
    struct http_conn *conns;     /* open connections, doubly linked */
    int stopping;                /* http_server_stop was called */
    void (*stop_cb)(void *data); /* fires once every handle is closed */
    void *stop_data;             /* argument of stop_cb */
    char *error_headers;         /* header lines added to the errors this
                                    layer answers itself (owned), or NULL */
    /* HTTP_READ_CHUNK bytes every read lands in (NULL offline): the loop
     * runs one read callback at a time, and conn_read_cb parses the bytes
     * or copies the rest to conn->pending before it returns. */
    char *rbuf;
};

struct http_conn
{
    struct http_server *srv;      /* owning server */
    uv_tcp_t tcp;                 /* the client socket */
    uv_timer_t timer;             /* request, idle, write and linger timeouts */
    uv_shutdown_t shutdown;       /* FIN once the last response is written */
    int open_handles;             /* handles whose close cb has not run */
    http_parser parser;           /* HTTP_REQUEST parser, data = this */
    char peer[64];                /* "ip:port" of the client */
    /* Requests of this connection, in arrival order. */
    struct http_request *head;    /* oldest, next to be written */
    struct http_request *tail;    /* newest */
    unsigned n_queued;            /* length of the queue */
    struct http_request *ready;   /* queued, not yet given to the handler */
    /* The request being parsed, accumulated under the limits. */
    int in_request;               /* first byte seen, not yet complete */
    size_t header_bytes;          /* url + header names + values so far */
    struct buf url;               /* request target */
    struct http_header_list hdrs; /* headers so far */
    struct buf body;              /* request body */
    int fail_status;              /* 413 or 431 set by a callback; 0: 400 */
    /* Input and output state. */
    struct buf pending;           /* read but not yet parsed */
    int reading;                  /* uv_read_start is in effect */
    int feeding;                  /* conn_feed is on the stack */
    int no_more;                  /* read no further request */
    int lingering;                /* FIN sent, discarding input */
    int closing;                  /* uv_close was called */
    unsigned writes;              /* uv_write requests in flight */
    enum conn_timer_mode timer_mode; /* what the timer is armed for */
    uint64_t deadline;            /* uv_now ms when timer_mode's time is up;
                                     0: nothing to time (TIMER_OFF) */
    struct buf *sink;             /* offline: output goes here (no socket,
                                     no handles); NULL for a real one */
    struct http_conn *prev;       /* server list */
    struct http_conn *next;       /* server list */
};

/* A response body handed over by http_respond_owned. refs counts the
 * request holding it plus each queued write of one of its chunks; the
 * owner's free function runs when the last one lets go. */
struct http_ext_body
{
    const char *base;           /* the bytes (not ours to free) */
    size_t len;                 /* bytes of base */
    void (*free_fn)(void *data); /* the owner's release, called once */
    void *free_data;            /* its argument */
    unsigned refs;              /* holders, see above */
};

/* One uv_write of one or more serialized responses. */
struct http_write
{
    uv_write_t req;        /* libuv request, req.data unused */
    struct http_conn *conn; /* the connection written to */
    struct http_ext_body *ext; /* chunk of this owned body, or NULL */
    int owned;             /* bufs[i].base are malloc'd and freed here */
    unsigned n;            /* entries of bufs */
    uv_buf_t bufs[];       /* the responses */
};

static void conn_close(struct http_conn *c);
static void conn_update_reading(struct http_conn *c);
static void conn_update_timer(struct http_conn *c);
static void conn_arm_timer(struct http_conn *c, uint64_t now);

/* Forget the current mode's deadline: the next conn_update_timer counts
 * the mode's time from now, even when the mode is the same. */
static void conn_timer_restart(struct http_conn *c)
{
    c->timer_mode = TIMER_OFF;
    c->deadline = 0;
}
static void conn_maybe_finish(struct http_conn *c);
static void conn_flush(struct http_conn *c);

/******************************************************************************
 * Small helpers
 *****************************************************************************/

void http_limits_default(struct http_limits *l)
{
    l->max_header_bytes = 16 * 1024;
    l->max_body_bytes = 1024 * 1024;
    l->max_connections = 4096;
    l->max_pipeline = 64;
    l->max_write_bytes = 4 * 1024 * 1024;
    l->request_timeout_ms = 10000;
    l->idle_timeout_ms = 60000;
}

#define HTTP_STATUSES(X)                      \
    X(100, "Continue")                        \
    X(101, "Switching Protocols")             \
    X(200, "OK")                              \
    X(201, "Created")                         \
    X(202, "Accepted")                        \
    X(204, "No Content")                      \
    X(206, "Partial Content")                 \
    X(301, "Moved Permanently")               \
    X(302, "Found")                           \
    X(303, "See Other")                       \
    X(304, "Not Modified")                    \
    X(307, "Temporary Redirect")              \
    X(308, "Permanent Redirect")              \
    X(400, "Bad Request")                     \
    X(401, "Unauthorized")                    \
    X(403, "Forbidden")                       \
    X(404, "Not Found")                       \
    X(405, "Method Not Allowed")              \
    X(406, "Not Acceptable")                  \
    X(408, "Request Timeout")                 \
    X(409, "Conflict")                        \
    X(410, "Gone")                            \
    X(411, "Length Required")                 \
    X(412, "Precondition Failed")             \
    X(413, "Payload Too Large")               \
    X(414, "URI Too Long")                    \
    X(415, "Unsupported Media Type")          \
    X(416, "Range Not Satisfiable")           \
    X(417, "Expectation Failed")              \
    X(421, "Misdirected Request")             \
    X(422, "Unprocessable Entity")            \
    X(425, "Too Early")                       \
    X(426, "Upgrade Required")                \
    X(428, "Precondition Required")           \
    X(429, "Too Many Requests")               \
    X(431, "Request Header Fields Too Large") \
    X(500, "Internal Server Error")           \
    X(501, "Not Implemented")                 \
    X(502, "Bad Gateway")                     \
    X(503, "Service Unavailable")             \
    X(504, "Gateway Timeout")                 \
    X(505, "HTTP Version Not Supported")

const char *http_status_text(int status)
{
    switch (status) {
#define HTTP_STATUS_CASE(code, text) \
    case code:                       \
        return text;
        HTTP_STATUSES(HTTP_STATUS_CASE)
#undef HTTP_STATUS_CASE
        default:
            return "Unknown";
    }
}

static char ascii_lower(char ch)
{
    return ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch;
}

/* 1 when the header block (lines "Name: value\r\n") has a line named name
 * (lower case), compared without regard to case. */
static int header_block_has(const char *block, const char *name)
{
    size_t n = strlen(name);
    const char *line = block;

    while (line != NULL && *line != '\0') {
        size_t i;

        for (i = 0; i < n; i++) {
            if (line[i] == '\0' || ascii_lower(line[i]) != name[i]) {
                break;
            }
        }
        if (i == n && line[n] == ':') {
            return 1;
        }
        line = strchr(line, '\n');
        if (line != NULL) {
            line++;
        }
    }
    return 0;
}

/* Copy the lower-cased name and the blank-trimmed value into h. */

static void ext_release(struct http_ext_body *e)
{
    if (--e->refs == 0) {
        e->free_fn(e->free_data);
        free(e);
    }
}

static void request_free(struct http_request *req)
{
    if (req->ext != NULL) {
        ext_release(req->ext);
    }
    free(req->url);
    http_headers_free(req->headers);
    free(req->body);
    free(req->resp);
    free(req);
}

int http_request_set_target(struct http_request *req, const char *method,
                            const char *url, size_t url_len)
{
    size_t method_len = strlen(method);
    int m = -1;
    char *block;
    int i;

    /* http-parser names its methods; find ours among them. */
    for (i = 0; i < 64; i++) {
        const char *name = http_method_str((enum http_method)i);
        if (strcmp(name, "<unknown>") == 0) {
            break;
        }
        if (strcmp(name, method) == 0) {
            m = i;
            break;
        }
    }
    if (m < 0 || url_len == 0 || memchr(url, '\0', url_len) != NULL) {
        return -1;
    }
    /* url and method name share one allocation: "url\0method\0". */
    block = malloc(url_len + method_len + 2);
    if (block == NULL) {
        return -1;
    }
    memcpy(block, url, url_len);
    block[url_len] = '\0';
    memcpy(block + url_len + 1, method, method_len + 1);
    free(req->url);
    req->url = block;
    req->url_len = url_len;
    req->method = m;
    req->method_name = block + url_len + 1;
    return 0;
}

const struct http_header *http_request_header(const struct http_request *req,
                                              const char *name)
{
    unsigned i;

    for (i = 0; i < req->n_headers; i++) {
        if (strcmp(req->headers[i].name, name) == 0) {
            return &req->headers[i];
        }
    }
    return NULL;
}

/******************************************************************************
 * Responses
 *****************************************************************************/

/* Append the header lines of a response (without the status line and the
 * blank line). */
static int build_header_lines(struct buf *b, int status, const char *headers,
                              size_t body_len, int keep_alive)
{
    int no_length = status < 200 || status == 204 || status == 304;

    if (headers != NULL && buf_append_str(b, headers) != 0) {
        return -1;
    }
    if (!no_length && (buf_append_str(b, "Content-Length: ") != 0 ||
                       buf_append_u64(b, body_len) != 0 ||
                       buf_append(b, "\r\n", 2) != 0)) {
        return -1;
    }
    if (body_len > 0 && !no_length &&
        (headers == NULL || !header_block_has(headers, "content-type")) &&
        buf_append_str(b, "Content-Type: application/json\r\n") != 0) {
        return -1;
    }
    return buf_append_str(b, keep_alive ? "Connection: keep-alive\r\n"
                                        : "Connection: close\r\n");
}

/* Store the answer of a detached request: "<header lines>\0<body>\0". */
static int respond_detached(struct http_request *req, int status,
                            const char *headers, const char *body,
                            size_t body_len)
{
    struct buf b = BUF_INIT;

    if (build_header_lines(&b, status, headers, body_len, req->keep_alive) !=
            0 ||
        buf_append_char(&b, '\0') != 0 ||
        (body_len > 0 && buf_append(&b, body, body_len) != 0) ||
        buf_reserve(&b, 0) != 0) {
        buf_free(&b);
        return -1;
    }
    free(req->resp);
    req->resp = buf_steal(&b, &req->resp_len);
    req->done = status;
    return 0;
}

/* Answer a request of a live connection: the body is copied from
 * body[0..body_len), or, when req->ext is set (http_respond_owned), it is
 * the handed-over body, written after the header by conn_write_ext. */
static int respond_conn(struct http_request *req, int status,
                        const char *headers, const char *body,
                        size_t body_len)
{
    struct http_conn *c = req->conn;
    struct buf b = BUF_INIT;
    size_t length = req->ext != NULL ? req->ext->len : body_len;
    int keep;
    int no_body;

    /* While stopping, the last queued request tells the client we close. */
    keep = req->keep_alive && !(c->srv->stopping && req == c->tail);
    no_body = req->method == HTTP_HEAD || status < 200 || status == 204 ||
              status == 304;
    if (no_body && req->ext != NULL) {
        ext_release(req->ext);
        req->ext = NULL;
    }
    /* One allocation for the usual response: the status line and our
     * header lines fit in HTTP_RESPONSE_HEAD bytes. */
    if (buf_reserve(&b, HTTP_RESPONSE_HEAD +
                            (headers != NULL ? strlen(headers) : 0) +
                            (!no_body && req->ext == NULL ? body_len : 0)) !=
            0 ||
        buf_append_str(&b, "HTTP/1.1 ") != 0 ||
        buf_append_u64(&b, (uint64_t)status) != 0 ||
        buf_append_char(&b, ' ') != 0 ||
        buf_append_str(&b, http_status_text(status)) != 0 ||
        buf_append(&b, "\r\n", 2) != 0 ||
        build_header_lines(&b, status, headers, length, keep) != 0 ||
        buf_append_str(&b, "\r\n") != 0 ||
        (!no_body && req->ext == NULL && body_len > 0 &&
         buf_append(&b, body, body_len) != 0)) {
        buf_free(&b);
        conn_close(c); /* detaches req and marks it gone */
        request_free(req);
        return -1;
    }
    req->resp = buf_steal(&b, &req->resp_len);
    req->keep_alive = keep;
    req->done = 1;
    conn_flush(c);
    if (!c->closing) {
        conn_update_reading(c);
        conn_maybe_finish(c); /* the response may be written already */
    }
    if (!c->closing) {
        conn_update_timer(c);
    }
    return 0;
}

int http_respond_owned(struct http_request *req, int status,
                       const char *headers, const char *body, size_t body_len,
                       void (*body_free)(void *data), void *free_data)
{
    struct http_ext_body *e;
    int rv;

    if (status < 100 || status > 599) {
        status = 500;
    }
    if (req->gone || req->conn == NULL || req->conn->sink != NULL) {
        rv = http_respond(req, status, headers, body, body_len);
        body_free(free_data);
        return rv;
    }
    e = malloc(sizeof *e);
    if (e == NULL) {
        body_free(free_data);
        conn_close(req->conn);
        request_free(req);
        return -1;
    }
    e->base = body;
    e->len = body_len;
    e->free_fn = body_free;
    e->free_data = free_data;
    e->refs = 1; /* the request's */
    req->ext = e;
    return respond_conn(req, status, headers, NULL, 0);
}

int http_respond(struct http_request *req, int status, const char *headers,
                 const char *body, size_t body_len)
{
    if (status < 100 || status > 599) {
        status = 500;
    }
    if (req->gone) {
        request_free(req);
        return 0;
    }
    if (req->conn == NULL) {
        return respond_detached(req, status, headers, body, body_len);
    }
    return respond_conn(req, status, headers, body, body_len);
}

int http_respond_error(struct http_request *req, int status,
                       const char *headers, const char *code,
                       const char *message)
{
    struct buf b = BUF_INIT;
    int rv;

    if (buf_append_str(&b, "{\"code\":") != 0 ||
        buf_append_json_string(&b, code, strlen(code)) != 0 ||
        buf_append_str(&b, ",\"message\":") != 0 ||
        buf_append_json_string(&b, message, strlen(message)) != 0 ||
        buf_append_char(&b, '}') != 0) {
        buf_free(&b);
        if (req->conn != NULL && !req->gone) {
            conn_close(req->conn);
            request_free(req);
        } else if (req->gone) {
            request_free(req);
        }
        /* A detached request stays with its caller, unanswered. */
        return -1;
    }
    rv = http_respond(req, status, headers, b.base, b.len);
    buf_free(&b);
    return rv;
}

/******************************************************************************
 * Detached requests
 *****************************************************************************/

struct http_request *http_request_new_detached(const char *method,
                                               const char *url,
                                               const char *const *headers,
                                               const char *body,
                                               size_t body_len)
{
    struct http_request *req = calloc(1, sizeof *req);
    size_t url_len = strlen(url);
    size_t method_len = strlen(method);
    unsigned n = 0;

    if (req == NULL) {
        return NULL;
    }
    req->method = -1;
#define HTTP_METHOD_MATCH(num, name, string) \
    if (strcmp(method, #string) == 0) {      \
        req->method = num;                   \
    }
    HTTP_METHOD_MAP(HTTP_METHOD_MATCH)
#undef HTTP_METHOD_MATCH
    /* url and method name share one allocation: "url\0method\0". */
    req->url = malloc(url_len + method_len + 2);
    if (req->url == NULL) {
        goto err_after_req;
    }
    memcpy(req->url, url, url_len + 1);
    memcpy(req->url + url_len + 1, method, method_len + 1);
    req->url_len = url_len;
    req->method_name = req->url + url_len + 1;
    {
        struct http_header_list list;

        memset(&list, 0, sizeof list);
        while (headers != NULL && headers[2 * n] != NULL &&
               headers[2 * n + 1] != NULL) {
            if (http_headers_add(&list, headers[2 * n], strlen(headers[2 * n]),
                                 headers[2 * n + 1],
                                 strlen(headers[2 * n + 1])) != 0) {
                http_headers_reset(&list);
                goto err_after_req;
            }
            n++;
        }
        if (http_headers_end(&list) != 0) {
            http_headers_reset(&list);
            goto err_after_req;
        }
        req->headers = http_headers_take(&list, &req->n_headers);
        http_headers_reset(&list);
    }
    req->body = malloc(body_len + 1);
    if (req->body == NULL) {
        goto err_after_req;
    }
    if (body != NULL && body_len > 0) {
        memcpy(req->body, body, body_len);
    } else {
        body_len = 0;
    }
    req->body[body_len] = '\0';
    req->body_len = body_len;
    req->keep_alive = 1;
    snprintf(req->peer, sizeof req->peer, "detached");
    return req;

err_after_req:
    request_free(req);
    return NULL;
}

int http_detached_status(const struct http_request *req)
{
    return req->done;
}

const char *http_detached_headers(const struct http_request *req)
{
    return req->resp;
}

const char *http_detached_body(const struct http_request *req, size_t *len)
{
    size_t head_len;

    if (req->resp == NULL) {
        if (len != NULL) {
            *len = 0;
        }
        return NULL;
    }
    head_len = strlen(req->resp);
    if (len != NULL) {
        *len = req->resp_len - head_len - 1;
    }
    return req->resp + head_len + 1;
}

void http_request_free_detached(struct http_request *req)
{
    if (req != NULL) {
        request_free(req);
    }
}

/******************************************************************************
 * Writing
 *****************************************************************************/

static void conn_write_cb(uv_write_t *wreq, int status)
{
    struct http_write *w = (struct http_write *)wreq;
    struct http_conn *c = w->conn;
    unsigned i;

    if (status >= 0) {
        for (i = 0; i < w->n; i++) {
            metrics_http_bytes_out(w->bufs[i].len);
        }
    }
    if (w->owned) {
        for (i = 0; i < w->n; i++) {
            free(w->bufs[i].base);
        }
    }
    if (w->ext != NULL) {
        ext_release(w->ext);
    }
    free(w);
    c->writes--;
    if (c->closing) {
        return;
    }
    if (status < 0) {
        conn_close(c);
        return;
    }
    /* Progress: re-arm the write timer from now. */
    if (c->timer_mode == TIMER_WRITE) {
        conn_timer_restart(c);
    }
    conn_update_reading(c);
    conn_maybe_finish(c);
    conn_update_timer(c);
}

/* Unlink the answered request at the head of the queue and return it; a
 * response that says Connection: close ends the connection's requests. */
static struct http_request *conn_take_head(struct http_conn *c)
{
    struct http_request *r = c->head;

    c->head = r->next;
    if (c->head == NULL) {
        c->tail = NULL;
    }
    c->n_queued--;
    if (!r->keep_alive) {
        c->no_more = 1;
    }
    return r;
}

/* Offline: append the n answered requests at the head to the sink. */
static void conn_flush_offline(struct http_conn *c, unsigned n)
{
    while (n-- > 0) {
        struct http_request *r = c->head;
        int rv;

        conn_take_head(c);
        rv = buf_append(c->sink, r->resp, r->resp_len);
        request_free(r);
        if (rv != 0) {
            conn_close(c);
            return;
        }
    }
}

/* Write the answered request at the head, whose body was handed over:
 * the header, then the body in HTTP_BODY_CHUNK writes, each holding a
 * reference to it. */
static void conn_write_ext(struct http_conn *c)
{
    struct http_request *r = c->head;
    struct http_ext_body *e = r->ext;
    struct http_write *w;
    size_t off;

    conn_take_head(c);
    r->ext = NULL; /* its reference is ours now */
    w = malloc(sizeof *w + sizeof w->bufs[0]);
    if (w == NULL) {
        request_free(r);
        ext_release(e);
        conn_close(c);
        return;
    }
    w->conn = c;
    w->ext = NULL;
    w->owned = 1;
    w->n = 1;
    w->bufs[0] = uv_buf_init(r->resp, (unsigned)r->resp_len);
    r->resp = NULL;
    request_free(r);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, w->bufs, 1,
                 conn_write_cb) != 0) {
        free(w->bufs[0].base);
        free(w);
        ext_release(e);
        conn_close(c);
        return;
    }
    c->writes++;
    for (off = 0; off < e->len; off += HTTP_BODY_CHUNK) {
        size_t n = e->len - off < HTTP_BODY_CHUNK ? e->len - off
                                                  : HTTP_BODY_CHUNK;

        w = malloc(sizeof *w + sizeof w->bufs[0]);
        if (w == NULL) {
            break;
        }
        w->conn = c;
        w->ext = e;
        w->owned = 0;
        w->n = 1;
        w->bufs[0] = uv_buf_init((char *)e->base + off, (unsigned)n);
        e->refs++;
        if (uv_write(&w->req, (uv_stream_t *)&c->tcp, w->bufs, 1,
                     conn_write_cb) != 0) {
            e->refs--;
            free(w);
            break;
        }
        c->writes++;
    }
    if (off < e->len) {
        conn_close(c); /* queued chunks complete with ECANCELED */
    }
    ext_release(e);
}

static void conn_flush_batch(struct http_conn *c);

/* Write every answered request at the head of the queue: runs of ordinary
 * responses in one uv_write each, handed-over bodies by conn_write_ext. */
static void conn_flush(struct http_conn *c)
{
    while (!c->closing && !c->lingering && c->head != NULL && c->head->done) {
        if (c->head->ext != NULL) {
            conn_write_ext(c);
        } else {
            conn_flush_batch(c);
        }
    }
}

int http_try_write(uv_stream_t *s, const uv_buf_t *bufs, unsigned n,
                   size_t *written, uv_buf_t *rest)
{
    size_t total = 0;
    size_t skip;
    size_t off = 0;
    unsigned i;
    int rv;

    *written = 0;
    *rest = uv_buf_init(NULL, 0);
    for (i = 0; i < n; i++) {
        total += bufs[i].len;
    }
    rv = uv_try_write(s, bufs, n);
    if (rv == UV_EAGAIN) {
        return 0;
    }
    if (rv < 0) {
        return rv;
    }
    *written = (size_t)rv;
    if (*written == total) {
        return 1;
    }
    rest->base = malloc(total - *written);
    if (rest->base == NULL) {
        return UV_ENOMEM;
    }
    rest->len = total - *written;
    skip = *written;
    for (i = 0; i < n; i++) {
        size_t len = bufs[i].len;

        if (skip >= len) {
            skip -= len;
            continue;
        }
        memcpy(rest->base + off, bufs[i].base + skip, len - skip);
        off += len - skip;
        skip = 0;
    }
    return 0;
}

/* With no write queued, write w's responses now (see http_try_write).
 * Returns 1 when w is used up (written and freed, or the connection
 * closed); 0 when w, or the unwritten rest now in it, is left for
 * uv_write. */
static int conn_try_write(struct http_conn *c, struct http_write *w)
{
    size_t done;
    uv_buf_t rest;
    unsigned i;
    int rv;

    rv = http_try_write((uv_stream_t *)&c->tcp, w->bufs, w->n, &done, &rest);
    if (done > 0) {
        metrics_http_bytes_out(done);
    }
    if (rv == 0 && rest.base == NULL) {
        return 0; /* nothing written: uv_write takes w as it is */
    }
    for (i = 0; i < w->n; i++) {
        free(w->bufs[i].base);
    }
    if (rv != 0) {
        free(w);
        if (rv < 0) {
            conn_close(c);
        }
        return 1;
    }
    w->n = 1;
    w->bufs[0] = rest;
    return 0;
}

/* Write the answered requests at the head up to the first handed-over
 * body, in one uv_write. */
static void conn_flush_batch(struct http_conn *c)
{
    struct http_request *r;
    struct http_write *w;
    unsigned n = 0;
    unsigned i;
    int rv;

    for (r = c->head; r != NULL && r->done && r->ext == NULL; r = r->next) {
        n++;
    }
    if (n == 0) {
        return;
    }
    if (c->sink != NULL) {
        conn_flush_offline(c, n);
        return;
    }
    w = malloc(sizeof *w + n * sizeof w->bufs[0]);
    if (w == NULL) {
        conn_close(c);
        return;
    }
    w->conn = c;
    w->ext = NULL;
    w->owned = 1;
    w->n = n;
    for (i = 0; i < n; i++) {
        r = conn_take_head(c);
        w->bufs[i] = uv_buf_init(r->resp, (unsigned)r->resp_len);
        r->resp = NULL;
        request_free(r);
    }
    if (c->writes == 0 && conn_try_write(c, w) != 0) {
        return; /* written, or the connection is closing */
    }
    rv = uv_write(&w->req, (uv_stream_t *)&c->tcp, w->bufs, w->n, conn_write_cb);
    if (rv != 0) {
        for (i = 0; i < w->n; i++) { /* after a partial write: the rest */
            free(w->bufs[i].base);
        }
        free(w);
        conn_close(c);
        return;
    }
    c->writes++;
}

/* "100 Continue" ahead of a body, only when no earlier response is owed. */
static void conn_send_continue(struct http_conn *c)
{
    static const char text[] = "HTTP/1.1 100 Continue\r\n\r\n";
    struct http_write *w;

    if (c->head != NULL || c->writes > 0) {
        return;
    }
    if (c->sink != NULL) {
        (void)buf_append(c->sink, text, sizeof text - 1);
        return;
    }
    w = malloc(sizeof *w + sizeof w->bufs[0]);
    if (w == NULL) {
        return; /* the client sends its body after its own timeout */
    }
    w->conn = c;
    w->ext = NULL;
    w->owned = 0;
    w->n = 1;
    w->bufs[0] = uv_buf_init((char *)text, sizeof text - 1);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, w->bufs, 1,
                 conn_write_cb) != 0) {
        free(w);
        return;
    }
    c->writes++;
}

/******************************************************************************
 * Closing
 *****************************************************************************/

static void server_free(struct http_server *s)
{
    free(s->error_headers);
    free(s->rbuf);
    free(s);
}

static void server_maybe_finish(struct http_server *s)
{
    if (s->stopping && s->n_handles == 0) {
        void (*cb)(void *) = s->stop_cb;
        void *data = s->stop_data;

        server_free(s);
        if (cb != NULL) {
            cb(data);
        }
    }
}

/* Ready for the next request; the header buffers are kept (see
 * http_headers_clear) until conn_parse_free. */
static void conn_parse_reset(struct http_conn *c)
{
    buf_free(&c->url);
    buf_free(&c->body);
    http_headers_clear(&c->hdrs);
    c->header_bytes = 0;
}

static void conn_parse_free(struct http_conn *c)
{
    conn_parse_reset(c);
    http_headers_reset(&c->hdrs);
}

static void conn_handle_close_cb(uv_handle_t *h)
{
    struct http_conn *c = h->data;
    struct http_server *s = c->srv;

    s->n_handles--;
    if (--c->open_handles == 0) {
        conn_parse_free(c);
        buf_free(&c->pending);
        free(c);
    }
    server_maybe_finish(s);
}

/* Close now: requests still with the handler are detached (gone = 1). */
static void conn_close(struct http_conn *c)
{
    struct http_server *s = c->srv;
    struct http_request *r;

    if (c->closing) {
        return;
    }
    c->closing = 1;
    r = c->head;
    while (r != NULL) {
        struct http_request *next = r->next;

        if (r->done || r == c->ready) {
            request_free(r);
        } else {
            r->gone = 1;
            r->conn = NULL;
            r->next = NULL;
        }
        r = next;
    }
    c->head = NULL;
    c->tail = NULL;
    c->ready = NULL;
    c->n_queued = 0;
    if (c->sink != NULL) {
        return; /* offline: no list, no handles; freed by its feeder */
    }
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        s->conns = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    s->n_conns--;
    metrics_http_connection_closed();
    uv_close((uv_handle_t *)&c->tcp, conn_handle_close_cb);
    uv_close((uv_handle_t *)&c->timer, conn_handle_close_cb);
}

static void conn_shutdown_cb(uv_shutdown_t *sreq, int status)
{
    struct http_conn *c = sreq->data;

    if (!c->closing && status < 0) {
        conn_close(c);
    }
}

static void conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b);
static void conn_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *b);

/* Everything is written: send FIN and wait (bounded) for the client's. */
static void conn_linger(struct http_conn *c)
{
    c->lingering = 1;
    c->shutdown.data = c;
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, conn_shutdown_cb) !=
        0) {
        conn_close(c);
        return;
    }
    if (c->srv->stopping) {
        /* Keep the stop short: no reading, a short grace for the FIN. */
        if (c->reading) {
            uv_read_stop((uv_stream_t *)&c->tcp);
            c->reading = 0;
        }
    } else if (!c->reading) {
        if (uv_read_start((uv_stream_t *)&c->tcp, conn_alloc_cb,
                          conn_read_cb) != 0) {
            conn_close(c);
            return;
        }
        c->reading = 1;
    }
    uv_timer_stop(&c->timer);
    conn_timer_restart(c);
    conn_update_timer(c);
}

static void conn_maybe_finish(struct http_conn *c)
{
    if (c->sink == NULL && !c->closing && !c->lingering && c->no_more && c->head == NULL &&
        c->writes == 0) {
        conn_linger(c);
    }
}

/******************************************************************************
 * Timer
 *****************************************************************************/

static void conn_timer_cb(uv_timer_t *t)
{
    struct http_conn *c = t->data;
    uint64_t now = uv_now(c->srv->loop);

    if (c->deadline == 0) {
        return; /* TIMER_OFF since it was armed: let it lapse */
    }
    if (now < c->deadline) {
        conn_arm_timer(c, now);
        return;
    }
    if (c->timer_mode == TIMER_REQUEST) {
        metrics_http_request_rejected("request_timeout");
    }
    conn_close(c);
}

/* Arm the libuv timer for c->deadline, or for the shortest timeout if that
 * comes first (see "The timer is lazy" above). */
static void conn_arm_timer(struct http_conn *c, uint64_t now)
{
    const struct http_limits *l = &c->srv->limits;
    uint64_t ms = c->deadline > now ? c->deadline - now : 0;
    uint64_t cap = l->request_timeout_ms < l->idle_timeout_ms
                       ? l->request_timeout_ms
                       : l->idle_timeout_ms;

    if (cap == 0) {
        cap = 1; /* never re-arm for 0 ms: that would fire every turn */
    }
    uv_timer_start(&c->timer, conn_timer_cb, ms < cap ? ms : cap, 0);
}

static void conn_update_timer(struct http_conn *c)
{
    const struct http_limits *l = &c->srv->limits;
    enum conn_timer_mode mode;
    uint64_t ms = 0;
    uint64_t now;

    if (c->closing || c->sink != NULL) {
        return;
    }
    if (c->lingering) {
        mode = TIMER_LINGER;
        ms = c->srv->stopping ? 100 : HTTP_LINGER_MS;
        if (!c->srv->stopping && l->idle_timeout_ms < ms) {
            ms = l->idle_timeout_ms;
        }
    } else if (c->in_request) {
        mode = TIMER_REQUEST;
        ms = l->request_timeout_ms;
    } else if (c->writes > 0) {
        mode = TIMER_WRITE;
        ms = l->idle_timeout_ms;
    } else if (c->head == NULL) {
        mode = TIMER_IDLE;
        ms = l->idle_timeout_ms;
    } else {
        mode = TIMER_OFF;
    }
    /* The same mode keeps its deadline: a request's time counts from its
     * first byte, an idle connection's from when it became idle. */
    if (mode == c->timer_mode) {
        return;
    }
    c->timer_mode = mode;
    if (mode == TIMER_OFF) {
        c->deadline = 0;
        return;
    }
    now = uv_now(c->srv->loop);
    c->deadline = now + ms;
    if (!uv_is_active((uv_handle_t *)&c->timer) ||
        now + uv_timer_get_due_in(&c->timer) > c->deadline) {
        conn_arm_timer(c, now);
    }
}

/******************************************************************************
 * Parsing
 *****************************************************************************/

/* Count header bytes against the limit; on excess mark a 431. */
static int conn_count_header_bytes(struct http_conn *c, size_t n)
{
    if (n > c->srv->limits.max_header_bytes - c->header_bytes) {
        c->fail_status = 431;
        return -1;
    }
    c->header_bytes += n;
    return 0;
}



static int on_message_begin(http_parser *p)
{
    struct http_conn *c = p->data;

    conn_parse_reset(c);
    c->in_request = 1;
    conn_update_timer(c);
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;

    if (conn_count_header_bytes(c, len) != 0) {
        return -1;
    }
    if (memchr(at, '\0', len) != NULL) {
        return -1;
    }
    return buf_append(&c->url, at, len);
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;

    if (conn_count_header_bytes(c, len) != 0) {
        return -1;
    }
    return http_headers_field(&c->hdrs, at, len);
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;

    if (conn_count_header_bytes(c, len) != 0) {
        return -1;
    }
    return http_headers_value(&c->hdrs, at, len);
}

static int on_headers_complete(http_parser *p)
{
    struct http_conn *c = p->data;
    unsigned i;

    if (http_headers_end(&c->hdrs) != 0) {
        return -1;
    }
    if (!(p->flags & F_CHUNKED) && p->content_length != ULLONG_MAX &&
        p->content_length > c->srv->limits.max_body_bytes) {
        c->fail_status = 413;
        return -1;
    }
    for (i = 0; i < c->hdrs.n_items; i++) {
        if (strcmp(c->hdrs.items[i].name, "expect") == 0 &&
            strcasecmp(c->hdrs.items[i].value, "100-continue") == 0 &&
            (p->flags & F_CHUNKED || p->content_length > 0)) {
            conn_send_continue(c);
        }
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;

    if (len > c->srv->limits.max_body_bytes - c->body.len) {
        c->fail_status = 413;
        return -1;
    }
    return buf_append(&c->body, at, len);
}

static int on_message_complete(http_parser *p)
{
    struct http_conn *c = p->data;
    struct http_request *req = calloc(1, sizeof *req);

    if (req == NULL || buf_reserve(&c->url, 0) != 0 ||
        buf_reserve(&c->body, 0) != 0) {
        free(req);
        return -1;
    }
    req->method = (int)p->method;
    req->method_name = http_method_str((enum http_method)p->method);
    req->url = buf_steal(&c->url, &req->url_len);
    req->headers = http_headers_take(&c->hdrs, &req->n_headers);
    req->body = buf_steal(&c->body, &req->body_len);
    req->keep_alive = http_should_keep_alive(p) && !p->upgrade;
    req->start_ms = c->srv->loop != NULL ? uv_now(c->srv->loop) : 0;
    memcpy(req->peer, c->peer, sizeof req->peer);
    req->conn = c;
    if (c->tail != NULL) {
        c->tail->next = req;
    } else {
        c->head = req;
    }
    c->tail = req;
    c->n_queued++;
    c->ready = req;
    c->in_request = 0;
    conn_parse_reset(c);
    if (!req->keep_alive) {
        c->no_more = 1; /* nothing after this request is read */
    }
    /* Hand the request over outside the parser's callbacks. */
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* Answer a malformed or over-limit request and read nothing more. The
 * answer is queued behind the requests already received. */
static void conn_fail(struct http_conn *c, int status)
{
    struct http_request *req;
    const char *code = "bad_request";
    const char *message = "malformed HTTP request";

    c->no_more = 1;
    c->in_request = 0;
    conn_parse_reset(c);
    if (status == 413) {
        code = "body_too_large";
        message = "request body too large";
    } else if (status == 431) {
        code = "headers_too_large";
        message = "request headers too large";
    } else {
        status = 400;
    }
    metrics_http_request_rejected(status == 400 ? "bad_request" : code);
    req = calloc(1, sizeof *req);
    if (req == NULL) {
        conn_close(c);
        return;
    }
    req->method = -1;
    req->method_name = "";
    req->conn = c;
    memcpy(req->peer, c->peer, sizeof req->peer);
    if (c->tail != NULL) {
        c->tail->next = req;
    } else {
        c->head = req;
    }
    c->tail = req;
    c->n_queued++;
    http_respond_error(req, status, c->srv->error_headers, code, message);
}

/* 1 while another request may be parsed. */
static int conn_can_parse(const struct http_conn *c)
{
    return !c->closing && !c->lingering && !c->no_more &&
           c->n_queued < c->srv->limits.max_pipeline &&
           (c->sink != NULL ||
            uv_stream_get_write_queue_size((const uv_stream_t *)&c->tcp) <=
                c->srv->limits.max_write_bytes);
}

/* Parse data[0..len) until it is used up or a bound is reached; hand each
 * complete request to the handler. Returns the bytes consumed. */
static size_t conn_feed(struct http_conn *c, const char *data, size_t len)
{
    size_t off = 0;

    while (off < len && conn_can_parse(c)) {
        size_t n = http_parser_execute(&c->parser, &parser_settings,
                                       data + off, len - off);
        enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
        struct http_request *req;

        off += n;
        if (c->closing) {
            return len;
        }
        if (err == HPE_PAUSED) {
            http_parser_pause(&c->parser, 0);
            req = c->ready;
            c->ready = NULL;
            if (req != NULL) {
                conn_update_timer(c);
                c->srv->handler(c->srv->ctx, req);
                if (c->closing) {
                    return len;
                }
            }
            continue;
        }
        if (err != HPE_OK) {
            int status = c->fail_status;

            if (err == HPE_HEADER_OVERFLOW) {
                status = 431;
            }
            conn_fail(c, status);
            return len;
        }
        if (n == 0) {
            break; /* no progress without an error: do not spin */
        }
    }
    if (c->no_more) {
        return len; /* whatever follows is never read */
    }
    return off;
}

static void conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct http_conn *c = h->data;

    (void)suggested;
    *b = uv_buf_init(c->srv->rbuf, HTTP_READ_CHUNK);
}

static void conn_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    struct http_conn *c = st->data;

    if (nread > 0) {
        metrics_http_bytes_in((size_t)nread);
    }
    if (nread > 0 && !c->lingering && !c->no_more && !c->closing) {
        size_t n;

        c->feeding = 1;
        n = conn_feed(c, b->base, (size_t)nread);
        c->feeding = 0;
        if (!c->closing && n < (size_t)nread &&
            buf_append(&c->pending, b->base + n, (size_t)nread - n) != 0) {
            conn_close(c);
        }
    }
    if (c->closing) {
        return;
    }
    if (nread < 0) {
        if (nread != UV_EOF || c->lingering) {
            conn_close(c);
            return;
        }
        /* The client sent everything: answer what is queued, then close. */
        c->no_more = 1;
        c->in_request = 0;
        uv_read_stop(st);
        c->reading = 0;
        conn_maybe_finish(c);
        if (!c->closing) {
            conn_update_timer(c);
        }
        return;
    }
    conn_update_reading(c);
    conn_maybe_finish(c);
    if (!c->closing) {
        conn_update_timer(c);
    }
}

/* Start or stop reading as the bounds allow; parse pending input first. */
static void conn_update_reading(struct http_conn *c)
{
    if (c->closing || c->lingering || c->feeding || c->sink != NULL) {
        return;
    }
    if (c->no_more) {
        buf_free(&c->pending);
    }
    while (c->pending.len > 0 && conn_can_parse(c)) {
        size_t n;

        c->feeding = 1;
        n = conn_feed(c, c->pending.base, c->pending.len);
        c->feeding = 0;
        if (c->closing) {
            return;
        }
        if (c->no_more || n >= c->pending.len) {
            buf_reset(&c->pending);
        } else {
            memmove(c->pending.base, c->pending.base + n, c->pending.len - n);
            c->pending.len -= n;
            c->pending.base[c->pending.len] = '\0';
        }
        if (n == 0) {
            break;
        }
    }
    if (c->pending.len == 0 && conn_can_parse(c)) {
        if (!c->reading) {
            if (uv_read_start((uv_stream_t *)&c->tcp, conn_alloc_cb,
                              conn_read_cb) != 0) {
                conn_close(c);
                return;
            }
            c->reading = 1;
        }
    } else if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = 0;
    }
}

/******************************************************************************
 * Listening
 *****************************************************************************/

static void server_handle_close_cb(uv_handle_t *h)
{
    struct http_server *s = h->data;

    s->n_handles--;
    server_maybe_finish(s);
}

static void rejected_close_cb(uv_handle_t *h)
{
    struct http_server *s = h->data;

    free(h);
    s->n_handles--;
    server_maybe_finish(s);
}

/* Accept and close at once (over the connection cap, or stopping). */
static void server_reject(struct http_server *s)
{
    uv_tcp_t *t = malloc(sizeof *t);

    if (t == NULL) {
        return;
    }
    if (uv_tcp_init(s->loop, t) != 0) {
        free(t);
        return;
    }
    t->data = s;
    s->n_handles++;
    (void)uv_accept((uv_stream_t *)&s->listener, (uv_stream_t *)t);
    uv_close((uv_handle_t *)t, rejected_close_cb);
}

static void conn_peer_name(struct http_conn *c)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    char ip[INET6_ADDRSTRLEN] = "";

    c->peer[0] = '\0';
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0) {
        return;
    }
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        uv_ip4_name(a, ip, sizeof ip);
        snprintf(c->peer, sizeof c->peer, "%s:%u", ip, ntohs(a->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
        uv_ip6_name(a, ip, sizeof ip);
        snprintf(c->peer, sizeof c->peer, "[%s]:%u", ip,
                 ntohs(a->sin6_port));
    }
}

static void server_connection_cb(uv_stream_t *listener, int status)
{
    struct http_server *s = listener->data;
    struct http_conn *c;

    if (status < 0) {
        return;
    }
    if (s->stopping || s->n_conns >= s->limits.max_connections) {
        metrics_http_connection_rejected(s->stopping ? "stopping" : "limit");
        server_reject(s);
        return;
    }
    c = calloc(1, sizeof *c);
    if (c == NULL) {
        server_reject(s);
        return;
    }
    c->srv = s;
    if (uv_tcp_init(s->loop, &c->tcp) != 0) {
        free(c);
        server_reject(s);
        return;
    }
    c->tcp.data = c;
    c->open_handles = 1;
    s->n_handles++;
    if (uv_timer_init(s->loop, &c->timer) != 0) {
        /* Only the tcp handle exists: close it alone. */
        c->closing = 1;
        uv_close((uv_handle_t *)&c->tcp, conn_handle_close_cb);
        server_reject(s);
        return;
    }
    c->timer.data = c;
    c->open_handles = 2;
    s->n_handles++;
    c->next = s->conns;
    if (s->conns != NULL) {
        s->conns->prev = c;
    }
    s->conns = c;
    s->n_conns++;
    metrics_http_connection_opened();
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    conn_peer_name(c);
    conn_update_reading(c);
    if (!c->closing) {
        conn_update_timer(c);
    }
}

/* Parse "host:port" or "[v6]:port" into a socket address. */
static int parse_addr(const char *addr, struct sockaddr_storage *ss)
{
    char host[INET6_ADDRSTRLEN];
    const char *colon;
    const char *h;
    size_t hlen;
    char *end;
    long port;

    if (addr[0] == '[') {
        const char *close = strchr(addr, ']');

        if (close == NULL || close[1] != ':') {
            return UV_EINVAL;
        }
        h = addr + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(addr, ':');
        if (colon == NULL) {
            return UV_EINVAL;
        }
        h = addr;
        hlen = (size_t)(colon - addr);
    }
    if (hlen == 0 || hlen >= sizeof host || colon[1] < '0' || colon[1] > '9') {
        return UV_EINVAL;
    }
    port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port < 0 || port > 65535) {
        return UV_EINVAL;
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    if (addr[0] == '[') {
        return uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss);
    }
    return uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss);
}

static void server_free_cb(uv_handle_t *h)
{
    server_free(h->data);
}

int http_server_start(struct http_server **out, uv_loop_t *loop,
                      const char *addr, const struct http_limits *limits,
                      http_handler_fn handler, void *ctx, char *errmsg,
                      size_t errmsg_len)
{
    struct http_server *s;
    struct sockaddr_storage ss;
    int namelen = sizeof ss;
    int rv;

    *out = NULL;
    memset(&ss, 0, sizeof ss);
    rv = parse_addr(addr, &ss);
    if (rv != 0) {
        snprintf(errmsg, errmsg_len, "listen %s: invalid address", addr);
        return UV_EINVAL;
    }
    s = calloc(1, sizeof *s);
    if (s != NULL) {
        s->rbuf = malloc(HTTP_READ_CHUNK);
    }
    if (s == NULL || s->rbuf == NULL) {
        free(s);
        snprintf(errmsg, errmsg_len, "listen %s: out of memory", addr);
        return UV_ENOMEM;
    }
    s->loop = loop;
    if (limits != NULL) {
        s->limits = *limits;
    } else {
        http_limits_default(&s->limits);
    }
    s->handler = handler;
    s->ctx = ctx;
    rv = uv_tcp_init(loop, &s->listener);
    if (rv != 0) {
        server_free(s);
        snprintf(errmsg, errmsg_len, "listen %s: %s", addr, uv_strerror(rv));
        return rv;
    }
    s->listener.data = s;
    rv = uv_tcp_bind(&s->listener, (const struct sockaddr *)&ss, 0);
    if (rv == 0) {
        rv = uv_listen((uv_stream_t *)&s->listener, HTTP_BACKLOG,
                       server_connection_cb);
    }
    if (rv == 0) {
        rv = uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss,
                                &namelen);
    }
    if (rv != 0) {
        snprintf(errmsg, errmsg_len, "listen %s: %s", addr, uv_strerror(rv));
        /* The handle memory is freed by the loop's next close phase. */
        uv_close((uv_handle_t *)&s->listener, server_free_cb);
        return rv;
    }
    s->port = ss.ss_family == AF_INET6
                  ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                  : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    s->n_handles = 1;
    *out = s;
    return 0;
}

int http_server_set_error_headers(struct http_server *s, const char *lines)
{
    char *copy = strdup(lines);

    if (copy == NULL) {
        return -1;
    }
    free(s->error_headers);
    s->error_headers = copy;
    return 0;
}

int http_server_port(const struct http_server *s)
{
    return s->port;
}

unsigned http_server_connections(const struct http_server *s)
{
    return s->n_conns;
}

void http_server_stop(struct http_server *s, void (*cb)(void *data),
                      void *data)
{
    struct http_conn *c;
    struct http_conn *next;

    if (s->stopping) {
        return;
    }
    s->stopping = 1;
    s->stop_cb = cb;
    s->stop_data = data;
    uv_close((uv_handle_t *)&s->listener, server_handle_close_cb);
    for (c = s->conns; c != NULL; c = next) {
        next = c->next;
        c->no_more = 1;
        c->in_request = 0;
        buf_reset(&c->pending); /* may be under conn_feed: freed at close */
        if (c->reading) {
            uv_read_stop((uv_stream_t *)&c->tcp);
            c->reading = 0;
        }
        if (c->lingering || (c->head == NULL && c->writes == 0)) {
            conn_close(c);
        } else {
            conn_update_timer(c);
        }
    }
}

/******************************************************************************
 * Offline feeding (tests and fuzzing)
 *****************************************************************************/

int http_feed_bytes(const struct http_limits *limits, const char *data,
                    size_t len, http_handler_fn handler, void *ctx,
                    char **out, size_t *out_len)
{
    struct http_server *s;
    struct http_conn *c;
    struct buf sink = BUF_INIT;
    size_t off = 0;
    int rv = 0;

    *out = NULL;
    *out_len = 0;
    s = calloc(1, sizeof *s);
    c = calloc(1, sizeof *c);
    if (s == NULL || c == NULL) {
        free(s);
        free(c);
        return -1;
    }
    if (limits != NULL) {
        s->limits = *limits;
    } else {
        http_limits_default(&s->limits);
    }
    s->handler = handler;
    s->ctx = ctx;
    c->srv = s;
    c->sink = &sink;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    snprintf(c->peer, sizeof c->peer, "offline");
    /* The same loop as conn_read_cb + conn_update_reading: feed until the
     * input is used up or the connection would stop reading. */
    while (off < len && conn_can_parse(c)) {
        size_t n;

        c->feeding = 1;
        n = conn_feed(c, data + off, len - off);
        c->feeding = 0;
        if (n == 0) {
            break;
        }
        off += n;
    }
    if (c->closing) {
        rv = -1; /* only out of memory closes an offline connection */
    }
    conn_close(c); /* detaches what the handler still holds */
    conn_parse_free(c);
    buf_free(&c->pending);
    free(c);
    server_free(s);
    if (rv == 0 && buf_reserve(&sink, 0) != 0) {
        rv = -1;
    }
    if (rv != 0) {
        buf_free(&sink);
        return -1;
    }
    *out = buf_steal(&sink, out_len);
    return 0;
}
