/* HTTP/1.1 client on libuv for calls between nodes, responses parsed with
 * http-parser 2.9.4 (HTTP_RESPONSE).
 *
 * Objects:
 *
 *   client ──▶ peer ("host:port", created on first use, freed with the
 *    │           │   client) ──▶ queue of requests not yet on a connection
 *    │           └──▶ conns: up to max_conns_per_peer ──▶ requests in order
 *    ├── timer: ticks every CLIENT_TICK_MS while work is pending; expires
 *    │          requests and connects past their deadline
 *    └── idle:  runs once per loop turn after client_send; dispatches the
 *               peer queues, so every request sent in one turn goes out in
 *               one uv_write per connection
 *
 * Request life:
 *
 *   client_send ──▶ peer queue ──dispatch──▶ conn list, unwritten
 *        ──flush (uv_write)──▶ conn list, written ──response──▶ cb(OK)
 *
 * A request is never in more than one list. Dispatch picks the connection
 * with the fewest requests below max_pipeline; it opens a new connection
 * while below max_conns_per_peer and every existing one is busy; when
 * every connection holds max_pipeline requests the request waits in the
 * peer queue until a response frees room.
 *
 * Failure modes of a connection, and what becomes of its requests
 * (written = handed to uv_write; "redispatch" = back to the head of the
 * peer queue, since the server never saw a byte of them):
 *
 *   1. connect fails or times out       all ENOTSENT (no automatic retry)
 *   2. EOF, read or write error, bad    written EUNKNOWN, unwritten ENOTSENT
 *      or unsolicited response
 *   3. "Connection: close" response     that one OK; written EUNKNOWN,
 *                                       unwritten redispatch
 *   4. a written request times out      it ETIMEOUT; written EUNKNOWN,
 *                                       unwritten redispatch
 *   5. response over max_response_bytes it EUNKNOWN; written EUNKNOWN,
 *                                       unwritten redispatch
 *   6. client_close                     all ECANCELED
 *
 * A request whose deadline passes before any of it was written completes
 * with ENOTSENT (the peer certainly never saw it, so a caller may retry
 * it safely); ETIMEOUT is kept for requests that were written.
 *
 * Invariants:
 * - User callbacks run only from libuv callbacks (timer, idle, connect,
 *   read, write, close) or from client_close, never from client_send.
 *   Dispatch and flush never run them: when they fail, the connection is
 *   closed and its close callback completes what it still holds.
 * - Before a callback runs, the request is unlinked from every list and
 *   its wire buffer is freed, so the callback may free or resend it. Code
 *   that runs a callback re-checks c->closing and conn->closing after it.
 * - On a connection, written requests precede unwritten ones; unsent
 *   points at the first unwritten one. At most one uv_write is in flight
 *   per connection; what is queued meanwhile goes out in the next one.
 * - Responses are matched to requests in order (FIFO).
 * - A connection leaves its peer's list when it starts closing, and its
 *   memory is freed in its close callback (libuv runs pending connect and
 *   write callbacks, with UV_ECANCELED, before it). The client is freed
 *   once its last handle is closed, after client_close. */
#include "client.h"
#include "headers.h"
#include "http.h"

#include <http_parser.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "../lib/buf.h"

#define CLIENT_TICK_MS 50        /* deadline resolution, ms */
#define CLIENT_READ_BYTES 65536  /* read buffer, shared by all connections */
#define CLIENT_ADDR_MAX 255      /* longest "host:port" accepted, bytes */
#define CLIENT_REDISPATCH (-1)   /* unwritten requests go back to the peer */

enum conn_state {
    CONN_CONNECTING, /* uv_tcp_connect in progress */
    CONN_OPEN,       /* connected, reading */
};

struct client_peer;

struct client_conn
{
    struct client_peer *peer;     /* owning peer */
    uv_tcp_t tcp;                 /* the socket, tcp.data = this */
    uv_connect_t connect;         /* the connect request */
    enum conn_state state;        /* connecting or open */
    int closing;                  /* uv_close was called */
    int writing;                  /* a uv_write is in flight */
    uint64_t connect_deadline;    /* uv_now() ms by which to be connected */
    /* Requests assigned to this connection, in the order written. */
    struct client_request *head;  /* oldest: the next response is its */
    struct client_request *tail;  /* newest */
    struct client_request *unsent; /* first request not yet written */
    unsigned n_reqs;              /* length of the list */
    /* The response being parsed, bounded by max_response_bytes. */
    http_parser parser;           /* HTTP_RESPONSE, parser.data = this */
    size_t resp_bytes;            /* header and body bytes so far */
    struct http_header_list hdrs; /* headers of the response being parsed */
    struct buf body;              /* response body */
    int complete;                 /* a whole response is parsed */
    int too_big;                  /* max_response_bytes was passed */
    int unsolicited;              /* a response came with no request */
    struct client_conn *next;     /* peer's list */
};

struct client_peer
{
    struct client *client;        /* owning client */
    char *addr;                   /* "host:port" as given, owned */
    struct sockaddr_storage sa;   /* parsed address */
    struct client_conn *conns;    /* open and connecting connections */
    unsigned n_conns;             /* length of conns */
    struct client_request *q_head; /* waiting for a connection, oldest */
    struct client_request *q_tail; /* newest */
    struct client_peer *next;     /* client's list */
};

struct client
{
    uv_loop_t *loop;              /* not owned */
    struct client_limits limits;  /* copied at init */
    uv_timer_t timer;             /* deadline tick */
    uv_idle_t idle;               /* dispatch once per loop turn */
    struct client_peer *peers;    /* every peer used so far */
    unsigned n_handles;           /* handles whose close cb has not run */
    unsigned n_pending;           /* requests sent and not yet completed */
    unsigned n_connecting;        /* connections in CONN_CONNECTING */
    int closing;                  /* client_close was called */
    void (*close_cb)(void *data); /* fires once every handle is closed */
    void *close_data;             /* argument of close_cb */
    char rbuf[CLIENT_READ_BYTES]; /* read buffer: each read is parsed
                                     whole in its read callback */
};

/* One uv_write of one or more serialized requests. */
struct client_write
{
    uv_write_t req;           /* libuv request */
    struct client_conn *conn; /* connection written to */
    unsigned n;               /* entries of bufs */
    uv_buf_t bufs[];          /* the requests' wire bytes, owned */
};

static void peer_dispatch(struct client_peer *p);
static void conn_close_handle(struct client_conn *conn);
static void conn_flush(struct client_conn *conn);
static void conn_mark_written(struct client_conn *conn);

/******************************************************************************
 * Small helpers
 *****************************************************************************/

const char *client_strerror(int status)
{
    switch (status) {
#define CLIENT_CASE(name, code, text) \
    case code:                        \
        return text;
        CLIENT_ERRORS(CLIENT_CASE)
#undef CLIENT_CASE
        default:
            return "unknown error";
    }
}

void client_limits_default(struct client_limits *l)
{
    l->max_conns_per_peer = 4;
    l->max_pipeline = 64;
    l->max_response_bytes = 64 * 1024 * 1024;
    l->connect_timeout_ms = 1000;
}



/* Parse "a.b.c.d:port" or "[v6]:port". Returns 0 or -1. */
static int addr_parse(const char *addr, struct sockaddr_storage *sa)
{
    char host[64];
    const char *host_start;
    const char *colon;
    const char *port_s;
    size_t host_len;
    unsigned long port = 0;
    int v6 = 0;

    if (addr[0] == '[') {
        const char *close = strchr(addr, ']');

        if (close == NULL || close[1] != ':') {
            return -1;
        }
        host_start = addr + 1;
        host_len = (size_t)(close - host_start);
        colon = close + 1;
        v6 = 1;
    } else {
        colon = strrchr(addr, ':');
        if (colon == NULL) {
            return -1;
        }
        host_start = addr;
        host_len = (size_t)(colon - addr);
    }
    if (host_len == 0 || host_len >= sizeof host) {
        return -1;
    }
    memcpy(host, host_start, host_len);
    host[host_len] = '\0';
    port_s = colon + 1;
    if (*port_s == '\0' || strlen(port_s) > 5) {
        return -1;
    }
    for (; *port_s != '\0'; port_s++) {
        if (*port_s < '0' || *port_s > '9') {
            return -1;
        }
        port = port * 10 + (unsigned long)(*port_s - '0');
    }
    if (port == 0 || port > 65535) {
        return -1;
    }
    memset(sa, 0, sizeof *sa);
    if (v6) {
        return uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)sa) == 0
                   ? 0
                   : -1;
    }
    return uv_ip4_addr(host, (int)port, (struct sockaddr_in *)sa) == 0 ? 0
                                                                       : -1;
}

/* 1 when s is a non-empty HTTP token (method). */
static int is_token(const char *s)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";

    if (*s == '\0') {
        return 0;
    }
    for (; *s != '\0'; s++) {
        int alnum = (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
                    (*s >= '0' && *s <= '9');

        if (!alnum && strchr(extra, *s) == NULL) {
            return 0;
        }
    }
    return 1;
}

/* 1 when s is a non-empty request target without blanks or controls. */
static int is_target(const char *s)
{
    if (*s == '\0') {
        return 0;
    }
    for (; *s != '\0'; s++) {
        if ((unsigned char)*s <= ' ' || *s == 0x7f) {
            return 0;
        }
    }
    return 1;
}

/* 1 when block is lines "Name: value\r\n": every line ends with CRLF, none
 * is empty (that would end the header section), no bare CR or LF. */
static int is_header_block(const char *s)
{
    int line_start = 1;

    for (; *s != '\0'; s++) {
        if (*s == '\r') {
            if (s[1] != '\n' || line_start) {
                return 0;
            }
            s++;
            line_start = 1;
            continue;
        }
        if (*s == '\n') {
            return 0;
        }
        line_start = 0;
    }
    return line_start;
}

/******************************************************************************
 * Completion
 *****************************************************************************/

/* Forget the private state of req and report status. The caller has
 * unlinked req from every list. */
static void request_complete(struct client *c, struct client_request *req,
                             int status, const struct client_response *resp)
{
    free(req->wire);
    req->wire = NULL;
    req->wire_len = 0;
    req->next = NULL;
    req->conn = NULL;
    c->n_pending--;
    req->cb(req, status, resp);
}

/* Append the list starting at req to the list (*head, *tail). */
static void list_append(struct client_request **head,
                        struct client_request **tail,
                        struct client_request *req)
{
    req->next = NULL;
    if (*tail != NULL) {
        (*tail)->next = req;
    } else {
        *head = req;
    }
    *tail = req;
}

/* Close conn and complete or redispatch its requests: culprit with
 * culprit_status, other written ones EUNKNOWN, unwritten ones
 * unwritten_status or back to the peer queue (CLIENT_REDISPATCH). Runs
 * user callbacks: call it from libuv callbacks only. */
static void conn_abort(struct client_conn *conn,
                       struct client_request *culprit, int culprit_status,
                       int unwritten_status)
{
    struct client_peer *p = conn->peer;
    struct client *c = p->client;
    struct client_request *list = conn->head;
    struct client_request *redo_head = NULL;
    struct client_request *redo_tail = NULL;
    struct client_request *done_head = NULL;
    struct client_request *done_tail = NULL;
    struct client_request *req;

    conn->head = conn->tail = conn->unsent = NULL;
    conn->n_reqs = 0;
    conn_close_handle(conn);
    while (list != NULL) {
        req = list;
        list = req->next;
        if (req != culprit && !req->written &&
            unwritten_status == CLIENT_REDISPATCH) {
            req->conn = NULL;
            list_append(&redo_head, &redo_tail, req);
        } else {
            list_append(&done_head, &done_tail, req);
        }
    }
    if (redo_head != NULL) {
        redo_tail->next = p->q_head;
        p->q_head = redo_head;
        if (p->q_tail == NULL) {
            p->q_tail = redo_tail;
        }
    }
    while (done_head != NULL) {
        int status;

        req = done_head;
        done_head = req->next;
        if (req == culprit) {
            status = culprit_status;
        } else if (req->written) {
            status = CLIENT_EUNKNOWN;
        } else {
            status = unwritten_status;
        }
        request_complete(c, req, status, NULL);
    }
    if (!c->closing) {
        peer_dispatch(p);
    }
}

/******************************************************************************
 * Connections: close
 *****************************************************************************/

static void client_handle_closed(struct client *c)
{
    struct client_peer *p;

    c->n_handles--;
    if (!c->closing || c->n_handles > 0) {
        return;
    }
    if (c->close_cb != NULL) {
        c->close_cb(c->close_data);
    }
    while (c->peers != NULL) {
        p = c->peers;
        c->peers = p->next;
        free(p->addr);
        free(p);
    }
    free(c);
}

static void conn_parse_reset(struct client_conn *conn)
{
    buf_free(&conn->body);
    http_headers_reset(&conn->hdrs);
    conn->resp_bytes = 0;
    conn->complete = 0;
}

static void conn_close_cb(uv_handle_t *h)
{
    struct client_conn *conn = h->data;
    struct client *c = conn->peer->client;
    struct client_request *req;

    /* Requests still here were left by a dispatch or flush that failed
     * outside a libuv callback: complete them now. */
    while (conn->head != NULL) {
        req = conn->head;
        conn->head = req->next;
        request_complete(c, req,
                         req->written ? CLIENT_EUNKNOWN : CLIENT_ENOTSENT,
                         NULL);
    }
    conn_parse_reset(conn);
    free(conn);
    client_handle_closed(c);
}

/* Start closing conn: it leaves the peer's list and takes no more
 * requests. Its requests stay with it (the caller takes them first, or the
 * close callback completes them). */
static void conn_close_handle(struct client_conn *conn)
{
    struct client_peer *p = conn->peer;
    struct client_conn **pp;

    if (conn->closing) {
        return;
    }
    conn->closing = 1;
    for (pp = &p->conns; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == conn) {
            *pp = conn->next;
            p->n_conns--;
            break;
        }
    }
    conn->next = NULL;
    if (conn->state == CONN_CONNECTING) {
        p->client->n_connecting--;
    }
    uv_close((uv_handle_t *)&conn->tcp, conn_close_cb);
}

/******************************************************************************
 * Connections: writing
 *****************************************************************************/

static void conn_write_cb(uv_write_t *w, int status)
{
    struct client_write *cw = (struct client_write *)w;
    struct client_conn *conn = cw->conn;
    unsigned i;

    for (i = 0; i < cw->n; i++) {
        free(cw->bufs[i].base);
    }
    free(cw);
    conn->writing = 0;
    if (conn->closing) {
        return;
    }
    if (status != 0) {
        conn_abort(conn, NULL, 0, CLIENT_ENOTSENT);
        return;
    }
    /* What was queued while this write was in flight goes out now. */
    conn_flush(conn);
}

/* Write every unwritten request of conn in one uv_write, unless a write is
 * in flight. Runs no user callback: on failure the connection is closed
 * and its close callback completes the requests. */
static void conn_flush(struct client_conn *conn)
{
    struct client_write *cw;
    struct client_request *req;
    uv_buf_t rest;
    size_t done;
    unsigned n = 0;
    unsigned i = 0;
    int rv;

    if (conn->closing || conn->state != CONN_OPEN || conn->writing ||
        conn->unsent == NULL) {
        return;
    }
    for (req = conn->unsent; req != NULL; req = req->next) {
        n++;
    }
    cw = malloc(sizeof *cw + n * sizeof cw->bufs[0]);
    if (cw == NULL) {
        conn_close_handle(conn);
        return;
    }
    cw->conn = conn;
    cw->n = n;
    for (req = conn->unsent; req != NULL; req = req->next) {
        cw->bufs[i++] = uv_buf_init(req->wire, (unsigned)req->wire_len);
    }
    rv = http_try_write((uv_stream_t *)&conn->tcp, cw->bufs, n, &done, &rest);
    if (done == 0 && rv <= 0) {
        /* Nothing went out: uv_write takes the wire buffers as they are,
         * or, on an error, they stay with their requests (not sent). */
        if (rv == 0 && uv_write(&cw->req, (uv_stream_t *)&conn->tcp,
                                cw->bufs, n, conn_write_cb) == 0) {
            conn_mark_written(conn);
            conn->writing = 1;
            return;
        }
        free(cw);
        conn_close_handle(conn);
        return;
    }
    /* Bytes went out: the requests are in flight; the rest, if any, is one
     * copy for uv_write. */
    for (i = 0; i < n; i++) {
        free(cw->bufs[i].base);
    }
    conn_mark_written(conn);
    if (rv == 0) {
        cw->n = 1;
        cw->bufs[0] = rest;
        if (uv_write(&cw->req, (uv_stream_t *)&conn->tcp, cw->bufs, 1,
                     conn_write_cb) == 0) {
            conn->writing = 1;
            return;
        }
        free(rest.base);
        rv = UV_EIO;
    }
    free(cw);
    if (rv < 0) {
        conn_close_handle(conn);
    }
}

/* The requests of conn->unsent are written or being written: the bytes are
 * no longer theirs. */
static void conn_mark_written(struct client_conn *conn)
{
    struct client_request *req;

    for (req = conn->unsent; req != NULL; req = req->next) {
        req->wire = NULL;
        req->written = 1;
    }
    conn->unsent = NULL;
}

/******************************************************************************
 * Connections: reading responses
 *****************************************************************************/

/* Count n more response bytes; 0, or -1 once over the bound. */
static int conn_count(struct client_conn *conn, size_t n)
{
    size_t max = conn->peer->client->limits.max_response_bytes;

    if (n > max || conn->resp_bytes > max - n) {
        conn->too_big = 1;
        return -1;
    }
    conn->resp_bytes += n;
    return 0;
}


static int on_message_begin(http_parser *hp)
{
    struct client_conn *conn = hp->data;

    if (conn->head == NULL || !conn->head->written) {
        conn->unsolicited = 1;
        return -1;
    }
    conn_parse_reset(conn);
    return 0;
}

static int on_header_field(http_parser *hp, const char *at, size_t len)
{
    struct client_conn *conn = hp->data;

    if (conn_count(conn, len) != 0 ||
        http_headers_field(&conn->hdrs, at, len) != 0) {
        return -1;
    }
    return 0;
}

static int on_header_value(http_parser *hp, const char *at, size_t len)
{
    struct client_conn *conn = hp->data;

    if (conn_count(conn, len) != 0 ||
        http_headers_value(&conn->hdrs, at, len) != 0) {
        return -1;
    }
    return 0;
}

static int on_headers_complete(http_parser *hp)
{
    struct client_conn *conn = hp->data;
    size_t max = conn->peer->client->limits.max_response_bytes;

    if (http_headers_end(&conn->hdrs) != 0) {
        return -1;
    }
    /* Refuse a declared body over the bound before reading any of it. */
    if ((hp->flags & F_CHUNKED) == 0 && hp->content_length != ULLONG_MAX &&
        hp->content_length > 0 &&
        (hp->content_length > max ||
         conn->resp_bytes > max - (size_t)hp->content_length)) {
        conn->too_big = 1;
        return -1;
    }
    return 0;
}

static int on_body(http_parser *hp, const char *at, size_t len)
{
    struct client_conn *conn = hp->data;

    if (conn_count(conn, len) != 0 || buf_append(&conn->body, at, len) != 0) {
        return -1;
    }
    return 0;
}

static int on_message_complete(http_parser *hp)
{
    struct client_conn *conn = hp->data;

    /* An interim response (100 Continue) is not the answer. */
    if (hp->status_code >= 100 && hp->status_code < 200 &&
        hp->status_code != 101) {
        conn_parse_reset(conn);
        return 0;
    }
    conn->complete = 1;
    /* Deliver outside the parser's callbacks. */
    http_parser_pause(hp, 1);
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* Hand the parsed response to the head request. */
static void conn_deliver(struct client_conn *conn)
{
    struct client_peer *p = conn->peer;
    struct client *c = p->client;
    struct client_request *req = conn->head;
    struct client_response resp;
    unsigned n_hdrs;
    struct http_header *hdrs = http_headers_take(&conn->hdrs, &n_hdrs);
    struct buf body = conn->body;
    int keep = http_should_keep_alive(&conn->parser);

    /* Take the request and the response out of the connection first. */
    conn->head = req->next;
    if (conn->head == NULL) {
        conn->tail = NULL;
    }
    conn->n_reqs--;
    resp.status = (int)conn->parser.status_code;
    resp.headers = hdrs;
    resp.n_headers = n_hdrs;
    resp.body = body.base != NULL ? body.base : "";
    resp.body_len = body.len;
    conn->body = (struct buf)BUF_INIT;
    conn_parse_reset(conn);
    if (!keep) {
        /* The server closes after this response. */
        conn_abort(conn, NULL, 0, CLIENT_REDISPATCH);
    }
    request_complete(c, req, CLIENT_OK, &resp);
    http_headers_free(hdrs);
    buf_free(&body);
    if (keep && !c->closing && !conn->closing && p->q_head != NULL) {
        peer_dispatch(p); /* a pipeline slot is free */
    }
}

/* Parse data[0..len) and deliver each complete response. Stops when the
 * connection closes. */
static void conn_feed(struct client_conn *conn, const char *data, size_t len)
{
    struct client *c = conn->peer->client;
    size_t off = 0;
    int eof = data == NULL;

    while (eof || off < len) {
        size_t n = http_parser_execute(&conn->parser, &parser_settings,
                                       eof ? NULL : data + off,
                                       eof ? 0 : len - off);
        enum http_errno err = HTTP_PARSER_ERRNO(&conn->parser);

        off += n;
        if (err == HPE_PAUSED) {
            http_parser_pause(&conn->parser, 0);
            if (conn->complete) {
                conn->complete = 0;
                conn_deliver(conn);
            }
            if (c->closing || conn->closing) {
                return;
            }
            if (eof) {
                return;
            }
            continue;
        }
        if (err != HPE_OK) {
            if (conn->too_big) {
                conn_abort(conn, conn->head, CLIENT_EUNKNOWN,
                           CLIENT_REDISPATCH);
            } else {
                conn_abort(conn, NULL, 0, CLIENT_ENOTSENT);
            }
            return;
        }
        if (eof || n == 0) {
            return;
        }
    }
}

static void conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct client_conn *conn = h->data;

    (void)suggested;
    *b = uv_buf_init(conn->peer->client->rbuf, CLIENT_READ_BYTES);
}

static void conn_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct client_conn *conn = s->data;
    struct client *c = conn->peer->client;

    if (conn->closing || nread == 0) {
        return;
    }
    if (nread > 0) {
        conn_feed(conn, b->base, (size_t)nread);
        return;
    }
    if (nread == UV_EOF) {
        /* A body delimited by the end of the connection ends here. */
        conn_feed(conn, NULL, 0);
        if (c->closing || conn->closing) {
            return;
        }
    }
    /* Outstanding requests lost their answers; an idle connection the
     * server closed is just dropped. */
    conn_abort(conn, NULL, 0, CLIENT_ENOTSENT);
}

/******************************************************************************
 * Connections: opening
 *****************************************************************************/

static void conn_connect_cb(uv_connect_t *cr, int status)
{
    struct client_conn *conn = cr->data;
    struct client *c = conn->peer->client;

    if (conn->closing) {
        return; /* UV_ECANCELED: closed while connecting */
    }
    c->n_connecting--;
    conn->state = CONN_OPEN;
    if (status != 0) {
        conn_abort(conn, NULL, 0, CLIENT_ENOTSENT);
        return;
    }
    /* Small requests must not wait for Nagle; failing to set it only
     * costs latency, so the result is not an error. */
    (void)uv_tcp_nodelay(&conn->tcp, 1);
    if (uv_read_start((uv_stream_t *)&conn->tcp, conn_alloc_cb,
                      conn_read_cb) != 0) {
        conn_abort(conn, NULL, 0, CLIENT_ENOTSENT);
        return;
    }
    conn_flush(conn);
}

/* Open a new connection to p. Returns it, or NULL when out of memory. A
 * connection whose connect failed at once is returned closing: requests
 * given to it complete with ENOTSENT in its close callback. */
static struct client_conn *conn_open(struct client_peer *p)
{
    struct client *c = p->client;
    struct client_conn *conn = calloc(1, sizeof *conn);

    if (conn == NULL) {
        return NULL;
    }
    if (uv_tcp_init(c->loop, &conn->tcp) != 0) {
        free(conn);
        return NULL;
    }
    conn->peer = p;
    conn->tcp.data = conn;
    conn->connect.data = conn;
    conn->state = CONN_CONNECTING;
    conn->connect_deadline = uv_now(c->loop) + c->limits.connect_timeout_ms;
    http_parser_init(&conn->parser, HTTP_RESPONSE);
    conn->parser.data = conn;
    c->n_handles++;
    c->n_connecting++;
    conn->next = p->conns;
    p->conns = conn;
    p->n_conns++;
    if (uv_tcp_connect(&conn->connect, &conn->tcp,
                       (const struct sockaddr *)&p->sa,
                       conn_connect_cb) != 0) {
        conn_close_handle(conn);
    }
    return conn;
}

static void conn_assign(struct client_conn *conn, struct client_request *req)
{
    req->conn = conn;
    list_append(&conn->head, &conn->tail, req);
    if (conn->unsent == NULL) {
        conn->unsent = req;
    }
    conn->n_reqs++;
}

/******************************************************************************
 * Dispatch
 *****************************************************************************/

/* Move requests from p's queue to connections, opening connections as
 * needed, then write what is ready. Runs no user callback. */
static void peer_dispatch(struct client_peer *p)
{
    struct client *c = p->client;
    struct client_conn *conn;
    struct client_conn *next;

    while (p->q_head != NULL) {
        struct client_conn *best = NULL;
        struct client_conn *target = NULL;
        struct client_request *req;

        for (conn = p->conns; conn != NULL; conn = conn->next) {
            if (conn->n_reqs < c->limits.max_pipeline &&
                (best == NULL || conn->n_reqs < best->n_reqs)) {
                best = conn;
            }
        }
        if (best != NULL && best->n_reqs == 0) {
            target = best;
        } else if (p->n_conns < c->limits.max_conns_per_peer) {
            target = conn_open(p);
        }
        if (target == NULL) {
            target = best;
        }
        if (target == NULL) {
            break; /* every connection is full: wait for a response */
        }
        req = p->q_head;
        p->q_head = req->next;
        if (p->q_head == NULL) {
            p->q_tail = NULL;
        }
        conn_assign(target, req);
    }
    for (conn = p->conns; conn != NULL; conn = next) {
        next = conn->next; /* a failed flush unlinks conn */
        conn_flush(conn);
    }
}

/******************************************************************************
 * Timer and idle
 *****************************************************************************/

/* Complete one expired request or connect of p. Returns 1 when it did
 * (user callbacks ran, lists may have changed), else 0. */
static int peer_expire_one(struct client_peer *p, uint64_t now)
{
    struct client *c = p->client;
    struct client_request **pp;
    struct client_request *prev;
    struct client_request *req;
    struct client_conn *conn;

    for (pp = &p->q_head, prev = NULL; *pp != NULL;
         prev = *pp, pp = &(*pp)->next) {
        if ((*pp)->deadline <= now) {
            req = *pp;
            *pp = req->next;
            if (p->q_tail == req) {
                p->q_tail = prev;
            }
            request_complete(c, req, CLIENT_ENOTSENT, NULL);
            return 1;
        }
    }
    for (conn = p->conns; conn != NULL; conn = conn->next) {
        if (conn->state == CONN_CONNECTING && conn->connect_deadline <= now) {
            conn_abort(conn, NULL, 0, CLIENT_ENOTSENT);
            return 1;
        }
        for (pp = &conn->head, prev = NULL; *pp != NULL;
             prev = *pp, pp = &(*pp)->next) {
            req = *pp;
            if (req->deadline > now) {
                continue;
            }
            if (req->written) {
                /* The order of the answers on conn is now unknown. */
                conn_abort(conn, req, CLIENT_ETIMEOUT, CLIENT_REDISPATCH);
                return 1;
            }
            *pp = req->next;
            if (conn->tail == req) {
                conn->tail = prev;
            }
            if (conn->unsent == req) {
                conn->unsent = req->next;
            }
            conn->n_reqs--;
            request_complete(c, req, CLIENT_ENOTSENT, NULL);
            return 1;
        }
    }
    return 0;
}

static void client_tick_cb(uv_timer_t *t)
{
    struct client *c = t->data;
    struct client_peer *p;
    uint64_t now = uv_now(c->loop);

restart:
    for (p = c->peers; p != NULL; p = p->next) {
        if (peer_expire_one(p, now)) {
            if (c->closing) {
                return;
            }
            goto restart;
        }
    }
    /* Retry dispatches that found no memory for a connection. */
    for (p = c->peers; p != NULL; p = p->next) {
        if (p->q_head != NULL) {
            peer_dispatch(p);
        }
    }
    if (c->n_pending == 0 && c->n_connecting == 0) {
        uv_timer_stop(&c->timer);
    }
}

static void client_idle_cb(uv_idle_t *h)
{
    struct client *c = h->data;
    struct client_peer *p;

    uv_idle_stop(&c->idle);
    for (p = c->peers; p != NULL; p = p->next) {
        if (p->q_head != NULL) {
            peer_dispatch(p);
        }
    }
}

static void client_timer_ensure(struct client *c)
{
    /* uv_timer_start fails only without a callback. */
    if (!uv_is_active((uv_handle_t *)&c->timer)) {
        (void)uv_timer_start(&c->timer, client_tick_cb, CLIENT_TICK_MS,
                             CLIENT_TICK_MS);
    }
}

/******************************************************************************
 * Public API
 *****************************************************************************/

static void client_handle_close_cb(uv_handle_t *h)
{
    client_handle_closed(h->data);
}

int client_init(struct client **out, uv_loop_t *loop,
                const struct client_limits *limits)
{
    struct client *c;

    if (out == NULL || loop == NULL) {
        return CLIENT_EINVAL;
    }
    c = calloc(1, sizeof *c);
    if (c == NULL) {
        return CLIENT_ENOMEM;
    }
    c->loop = loop;
    if (limits != NULL) {
        c->limits = *limits;
    } else {
        client_limits_default(&c->limits);
    }
    if (c->limits.max_conns_per_peer == 0 || c->limits.max_pipeline == 0 ||
        c->limits.max_response_bytes == 0 ||
        c->limits.connect_timeout_ms == 0) {
        free(c);
        return CLIENT_EINVAL;
    }
    /* Neither init can fail on Unix: they only fill in the handle. */
    (void)uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    (void)uv_idle_init(loop, &c->idle);
    c->idle.data = c;
    c->n_handles = 2;
    *out = c;
    return 0;
}

static struct client_peer *client_peer_get(struct client *c, const char *addr,
                                           int *err)
{
    struct client_peer *p;

    for (p = c->peers; p != NULL; p = p->next) {
        if (strcmp(p->addr, addr) == 0) {
            return p;
        }
    }
    p = calloc(1, sizeof *p);
    if (p == NULL) {
        *err = CLIENT_ENOMEM;
        return NULL;
    }
    if (addr_parse(addr, &p->sa) != 0) {
        free(p);
        *err = CLIENT_EINVAL;
        return NULL;
    }
    p->addr = strdup(addr);
    if (p->addr == NULL) {
        free(p);
        *err = CLIENT_ENOMEM;
        return NULL;
    }
    p->client = c;
    p->next = c->peers;
    c->peers = p;
    return p;
}

int client_send(struct client *c, struct client_request *req, const char *addr,
                const char *method, const char *url, const char *headers,
                const char *body, size_t body_len, uint64_t timeout_ms)
{
    struct client_peer *p;
    struct buf w = BUF_INIT;
    uint64_t now;
    int err = 0;

    if (c == NULL || req == NULL || req->cb == NULL || addr == NULL ||
        method == NULL || url == NULL || timeout_ms == 0 ||
        (body == NULL && body_len > 0)) {
        return CLIENT_EINVAL;
    }
    if (c->closing) {
        return CLIENT_ECANCELED;
    }
    /* A HEAD response announces a body it does not carry; we never need
     * HEAD between nodes, so refuse it rather than mis-parse. */
    if (strlen(addr) > CLIENT_ADDR_MAX || !is_token(method) ||
        strcmp(method, "HEAD") == 0 || !is_target(url) ||
        (headers != NULL && !is_header_block(headers))) {
        return CLIENT_EINVAL;
    }
    p = client_peer_get(c, addr, &err);
    if (p == NULL) {
        return err;
    }
    if (buf_printf(&w, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, url, addr) !=
            0 ||
        (headers != NULL && buf_append_str(&w, headers) != 0) ||
        buf_printf(&w,
                   "Content-Length: %zu\r\nConnection: keep-alive\r\n\r\n",
                   body_len) != 0 ||
        (body_len > 0 && buf_append(&w, body, body_len) != 0)) {
        buf_free(&w);
        return CLIENT_ENOMEM;
    }
    if (w.len > UINT32_MAX) {
        buf_free(&w);
        return CLIENT_EINVAL; /* one uv_buf_t cannot carry it */
    }
    req->wire = buf_steal(&w, &req->wire_len);
    req->conn = NULL;
    req->written = 0;
    now = uv_now(c->loop);
    req->deadline = timeout_ms > UINT64_MAX - now ? UINT64_MAX
                                                  : now + timeout_ms;
    list_append(&p->q_head, &p->q_tail, req);
    c->n_pending++;
    client_timer_ensure(c);
    (void)uv_idle_start(&c->idle, client_idle_cb); /* fails only without cb */
    return 0;
}

void client_close(struct client *c, void (*cb)(void *data), void *data)
{
    struct client_request *head = NULL;
    struct client_request *tail = NULL;
    struct client_request *req;
    struct client_peer *p;

    if (c == NULL || c->closing) {
        return;
    }
    c->closing = 1;
    c->close_cb = cb;
    c->close_data = data;
    for (p = c->peers; p != NULL; p = p->next) {
        while (p->q_head != NULL) {
            req = p->q_head;
            p->q_head = req->next;
            list_append(&head, &tail, req);
        }
        p->q_tail = NULL;
        while (p->conns != NULL) {
            struct client_conn *conn = p->conns;

            while (conn->head != NULL) {
                req = conn->head;
                conn->head = req->next;
                list_append(&head, &tail, req);
            }
            conn->tail = conn->unsent = NULL;
            conn->n_reqs = 0;
            conn_close_handle(conn); /* unlinks conn from p->conns */
        }
    }
    uv_close((uv_handle_t *)&c->timer, client_handle_close_cb);
    uv_close((uv_handle_t *)&c->idle, client_handle_close_cb);
    while (head != NULL) {
        req = head;
        head = req->next;
        request_complete(c, req, CLIENT_ECANCELED, NULL);
    }
}
