/* HTTP/1.1 server on libuv with http-parser: connections, parsing, limits,
 * timeouts and in-order responses. It knows nothing of routes: each complete
 * request is handed to the handler, which answers with http_respond() now
 * or later.
 *
 * Request lifecycle:
 *
 *   bytes ──parse──▶ http_request (queued on its connection, in order)
 *          ──handler(ctx, req)──▶ ... ──http_respond(req)──▶ written when
 *          every earlier request of the connection has been written
 *
 * The server owns each http_request. The handler must call http_respond()
 * exactly once per request, and must not touch the request afterwards. If
 * the client goes away first, the request stays valid (req->gone is set)
 * until http_respond(), which then just frees it.
 *
 * Limits (see struct http_limits) are enforced here: header bytes (431),
 * body bytes (413 from Content-Length before reading the body, or as soon as
 * a chunked body passes the limit; the connection is closed afterwards),
 * pipelined requests per connection and unsent response bytes (reading from
 * the client pauses while over either bound), connection count (excess
 * connections are accepted and closed at once), header/request read timeout
 * and keep-alive idle timeout (the connection is closed). */
#ifndef CTXD_HTTP_H
#define CTXD_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct http_limits
{
    size_t max_header_bytes;   /* request line + headers, default 16 KiB */
    size_t max_body_bytes;     /* default 1 MiB */
    unsigned max_connections;  /* default 4096 */
    unsigned max_pipeline;     /* queued requests per connection, default 64 */
    size_t max_write_bytes;    /* unsent response bytes per connection before
                                  reading pauses, default 4 MiB */
    uint64_t request_timeout_ms; /* first byte to complete request, default 10000 */
    uint64_t idle_timeout_ms;  /* keep-alive idle, default 60000 */
};

void http_limits_default(struct http_limits *l);

struct http_header
{
    char *name;      /* lower-cased, NUL-terminated */
    char *value;     /* NUL-terminated, surrounding blanks trimmed */
    size_t value_len;
};

struct http_server;
struct http_conn;

struct http_request
{
    /* Parsed request, owned by the server. */
    int method;                  /* enum http_method of http-parser */
    const char *method_name;     /* "GET", ... */
    char *url;                   /* raw request target, NUL-terminated */
    size_t url_len;
    struct http_header *headers; /* in arrival order */
    unsigned n_headers;
    char *body;                  /* NUL-terminated (NUL not counted); may
                                    contain NUL bytes itself */
    size_t body_len;
    int keep_alive;              /* client wants the connection kept */
    uint64_t start_ms;           /* uv_now when the request completed */
    int gone;                    /* 1 once the client connection is gone */
    void *data;                  /* free for the handler */
    char peer[64];               /* client address, "ip:port" */
    /* private */
    struct http_conn *conn;
    struct http_request *next;
    int done;                    /* http_respond was called */
    char *resp;                  /* serialized response */
    size_t resp_len;
    struct http_ext_body *ext;   /* body handed over by http_respond_owned,
                                  written after resp; NULL when none */
};

typedef void (*http_handler_fn)(void *ctx, struct http_request *req);

/* Replace the method and target of a request (a forwarded request carries
 * the original ones in headers). Returns 0, or -1 on out of memory or an
 * unknown method (the request is unchanged then). */
int http_request_set_target(struct http_request *req, const char *method,
                            const char *url, size_t url_len);

/* Look up a request header by lower-case name; NULL when absent. The first
 * occurrence wins. */
const struct http_header *http_request_header(const struct http_request *req,
                                              const char *name);

/* Listen on host:port (IPv4 or IPv6 literal). Returns 0 or a negative libuv
 * error, with errmsg filled. */
int http_server_start(struct http_server **out, uv_loop_t *loop,
                      const char *addr, const struct http_limits *limits,
                      http_handler_fn handler, void *ctx, char *errmsg,
                      size_t errmsg_len);

/* Header lines ("Name: value\r\n"...) added to the error responses this
 * layer answers by itself (400, 413, 431). Copied. Returns 0 or -1. */
int http_server_set_error_headers(struct http_server *s, const char *lines);

/* The port actually bound (useful with port 0). */
int http_server_port(const struct http_server *s);

/* Open connections (for metrics and tests). */
unsigned http_server_connections(const struct http_server *s);

/* Answer a request. status: 100..599; headers: extra header lines, each
 * "Name: value\r\n", or NULL; body/body_len: copied. Content-Length,
 * Content-Type (application/json when a body is given and headers has no
 * Content-Type), Connection are added here. Returns 0, or -1 on out of
 * memory (the connection is then closed and the request freed all the
 * same: the caller must not touch req either way). */
int http_respond(struct http_request *req, int status, const char *headers,
                 const char *body, size_t body_len);

/* Answer with a body handed over instead of copied (a large download: the
 * memory is not duplicated). body[0..body_len) must stay unchanged until
 * body_free(free_data) is called, which happens exactly once, when nothing
 * refers to the body any more: after the last byte is written or the
 * connection is closed, at once when the client is gone, when this returns
 * -1, or for a detached or offline request (which get a copy). The body is
 * queued as HTTP_BODY_CHUNK-byte writes after the header, so a reader that
 * keeps reading keeps the write timeout from firing. Otherwise as
 * http_respond (the caller must not touch req afterwards). */
#define HTTP_BODY_CHUNK (1024 * 1024) /* bytes per write of an owned body */
int http_respond_owned(struct http_request *req, int status,
                       const char *headers, const char *body, size_t body_len,
                       void (*body_free)(void *data), void *free_data);

/* Convenience: {"code":code,"message":message} with the given status. */
int http_respond_error(struct http_request *req, int status,
                       const char *headers, const char *code,
                       const char *message);

/* For tests without sockets: a request that belongs to no connection.
 * headers is "name: value" pairs as a NULL-terminated array of alternating
 * name and value strings; body may be NULL. http_respond() on it stores the
 * response (status, header lines, body) in the request instead of sending
 * it; read them with the accessors below, then free with
 * http_request_free_detached(). Returns NULL on out of memory. */
struct http_request *http_request_new_detached(const char *method,
                                               const char *url,
                                               const char *const *headers,
                                               const char *body,
                                               size_t body_len);
int http_detached_status(const struct http_request *req); /* 0: no answer yet */
const char *http_detached_headers(const struct http_request *req);
const char *http_detached_body(const struct http_request *req, size_t *len);
void http_request_free_detached(struct http_request *req);

/* For tests and fuzzing without sockets: run data[0..len) through the
 * same parser, callbacks and limits as the input of a connection (as if it
 * arrived in one read), handing each complete request to handler(ctx,
 * req). What would be written to the client (responses the handler gives
 * before this returns, in order, the errors this layer answers itself:
 * 400, 413, 431, and "100 Continue") is returned in *out (malloc'd,
 * NUL-terminated, *out_len bytes without the NUL; free it). Parsing stops
 * where a connection would stop reading: an error, Connection: close, or
 * max_pipeline requests still unanswered. Timeouts, the connection cap and
 * the write bound do not apply. A request still unanswered on return is
 * detached as when its client goes away (gone = 1, freed by its
 * http_respond()). limits NULL: the defaults. Returns 0, or -1 on out of
 * memory (*out is then NULL). */
int http_feed_bytes(const struct http_limits *limits, const char *data,
                    size_t len, http_handler_fn handler, void *ctx,
                    char **out, size_t *out_len);

/* Graceful stop: close the listener, close idle connections now, and each
 * busy one once its last response is written (no new requests are read).
 * cb fires once every connection is closed; the server is freed after it. */
void http_server_stop(struct http_server *s, void (*cb)(void *data),
                      void *data);

/* Write bufs[0..n) to s now, as far as the socket takes them, for a stream
 * with no uv_write queued. A write taken whole needs no uv_write request,
 * callback or poll change (libuv re-arms the socket's epoll entry after each
 * completed uv_write: one epoll_ctl per response). Returns 1 when all was
 * written; 0 when the rest is for uv_write: *rest is a malloc'd copy of the
 * unwritten tail, or {NULL, 0} when nothing was written; or a negative libuv
 * error (UV_ENOMEM for the copy). *written is the bytes written. */
int http_try_write(uv_stream_t *s, const uv_buf_t *bufs, unsigned n,
                   size_t *written, uv_buf_t *rest);

/* Reason phrase for a status ("Not Found"). */
const char *http_status_text(int status);

#endif
