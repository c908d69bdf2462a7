/* The Raft TCP transport with TCP_NODELAY.
 *
 * libraft 0.15's raft_uv_tcp never disables Nagle's algorithm on its
 * connections. Raft messages are small and answered at once, so Nagle
 * holding back a second small segment until the first is acknowledged,
 * against the peer's delayed ACK, stalls replication by tens of
 * milliseconds (measured: p99 of a one-connection PATCH on a 3-node cluster
 * went from ~26 ms to under 1 ms). This wrapper is a raft_uv_transport that
 * forwards every call to raft_uv_tcp and sets TCP_NODELAY on each stream
 * it accepts or connects before handing it to raft_uv. Private to
 * consensus/. */
#ifndef CTXD_CONSENSUS_TRANSPORT_H
#define CTXD_CONSENSUS_TRANSPORT_H

#include <raft.h>
#include <raft/uv.h>

struct consensus_transport
{
    struct raft_uv_transport outer; /* given to raft_uv_init */
    struct raft_uv_transport inner; /* raft_uv_tcp, does the work */
    raft_uv_accept_cb accept_cb;    /* raft_uv's accept callback */
    raft_uv_transport_close_cb close_cb; /* raft_uv's close callback */
};

/* Set up both layers. Returns 0 or a raft error code. */
int consensus_transport_init(struct consensus_transport *t,
                             struct uv_loop_s *loop);

/* Release the inner transport's memory (after raft_uv has closed it). */
void consensus_transport_close(struct consensus_transport *t);

#endif
