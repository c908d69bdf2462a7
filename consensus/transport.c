/* A raft_uv_transport that delegates to raft_uv_tcp and turns on
 * TCP_NODELAY for every connection; see transport.h for why.
 *
 * Connect requests: raft_uv hands us its request; we give raft_uv_tcp a
 * request of our own (heap-allocated, freed in our callback, which
 * raft_uv_tcp fires exactly once, with RAFT_CANCELED on close) and forward
 * the outcome to raft_uv's request. */
#include "transport.h"

#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

#include "../lib/container.h"

struct transport_connect
{
    struct raft_uv_connect inner;  /* given to raft_uv_tcp */
    struct raft_uv_connect *outer; /* raft_uv's request */
    raft_uv_connect_cb cb;         /* raft_uv's callback */
};

static void nodelay(struct uv_stream_s *stream)
{
    /* Best effort: a failure leaves Nagle on, slower but correct. */
    if (stream != NULL && stream->type == UV_TCP) {
        (void)uv_tcp_nodelay((uv_tcp_t *)stream, 1);
    }
}

static int transport_init(struct raft_uv_transport *outer, raft_id id,
                          const char *address)
{
    struct consensus_transport *t =
        CONTAINER_OF(outer, struct consensus_transport, outer);
    int rv = t->inner.init(&t->inner, id, address);

    if (rv != 0) {
        snprintf(outer->errmsg, sizeof outer->errmsg, "%s", t->inner.errmsg);
    }
    return rv;
}

static void transport_accept_cb(struct raft_uv_transport *inner, raft_id id,
                                const char *address, struct uv_stream_s *stream)
{
    struct consensus_transport *t =
        CONTAINER_OF(inner, struct consensus_transport, inner);

    nodelay(stream);
    t->accept_cb(&t->outer, id, address, stream);
}

static int transport_listen(struct raft_uv_transport *outer,
                            raft_uv_accept_cb cb)
{
    struct consensus_transport *t =
        CONTAINER_OF(outer, struct consensus_transport, outer);
    int rv;

    t->accept_cb = cb;
    rv = t->inner.listen(&t->inner, transport_accept_cb);
    if (rv != 0) {
        snprintf(outer->errmsg, sizeof outer->errmsg, "%s", t->inner.errmsg);
    }
    return rv;
}

static void transport_connect_cb(struct raft_uv_connect *inner,
                                 struct uv_stream_s *stream, int status)
{
    struct transport_connect *req =
        CONTAINER_OF(inner, struct transport_connect, inner);
    struct raft_uv_connect *outer = req->outer;
    raft_uv_connect_cb cb = req->cb;

    free(req); /* before the callback, which may start another connect */
    if (status == 0) {
        nodelay(stream);
    }
    cb(outer, stream, status);
}

static int transport_connect(struct raft_uv_transport *outer,
                             struct raft_uv_connect *outer_req, raft_id id,
                             const char *address, raft_uv_connect_cb cb)
{
    struct consensus_transport *t =
        CONTAINER_OF(outer, struct consensus_transport, outer);
    struct transport_connect *req = calloc(1, sizeof *req);
    int rv;

    if (req == NULL) {
        return RAFT_NOMEM;
    }
    req->outer = outer_req;
    req->cb = cb;
    outer_req->cb = cb;
    rv = t->inner.connect(&t->inner, &req->inner, id, address,
                          transport_connect_cb);
    if (rv != 0) {
        snprintf(outer->errmsg, sizeof outer->errmsg, "%s", t->inner.errmsg);
        free(req);
    }
    return rv;
}

static void transport_close_cb(struct raft_uv_transport *inner)
{
    struct consensus_transport *t =
        CONTAINER_OF(inner, struct consensus_transport, inner);

    t->close_cb(&t->outer);
}

static void transport_close(struct raft_uv_transport *outer,
                            raft_uv_transport_close_cb cb)
{
    struct consensus_transport *t =
        CONTAINER_OF(outer, struct consensus_transport, outer);

    t->close_cb = cb;
    t->inner.close(&t->inner, transport_close_cb);
}

int consensus_transport_init(struct consensus_transport *t,
                             struct uv_loop_s *loop)
{
    int rv = raft_uv_tcp_init(&t->inner, loop);

    if (rv != 0) {
        return rv;
    }
    t->outer.data = NULL;
    t->outer.impl = t;
    t->outer.errmsg[0] = '\0';
    t->outer.init = transport_init;
    t->outer.listen = transport_listen;
    t->outer.connect = transport_connect;
    t->outer.close = transport_close;
    t->accept_cb = NULL;
    t->close_cb = NULL;
    return 0;
}

void consensus_transport_close(struct consensus_transport *t)
{
    raft_uv_tcp_close(&t->inner);
}
