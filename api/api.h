/* The API: routes, authentication, validation, commands and responses for
 * every endpoint of DESIGN.md §1-§3 (see docs/api.md for the exact choices).
 *
 * api_handle() is the http_handler_fn given to the HTTP server. Writes are
 * encoded as commands and proposed through consensus; their answer is sent
 * once the entry is applied. Reads are served from storage once the
 * consistency level asked for is satisfied. api/ never includes raft.h. */
#ifndef CTXD_API_H
#define CTXD_API_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "../consensus/consensus.h"
#include "../storage/storage.h"
#include "http.h"

/* A member of the --cluster spec: where its API answers before the
 * replicated directory knows it. */
struct api_member
{
    uint64_t id;           /* raft id */
    const char *http_addr; /* host:port */
};

struct api_config
{
    uv_loop_t *loop;             /* the node's loop */
    uint64_t node_id;            /* for X-Context-Node */
    struct storage *storage;     /* queries (not owned) */
    struct consensus *consensus; /* proposals and barriers (not owned) */
    const char *admin_token;     /* bearer token of the admin routes */
    uint64_t write_timeout_ms;   /* proposal → 504 outcome_unknown, default 10000 */
    uint64_t read_timeout_ms;    /* wait for X-Context-Min-Index / barrier, default 5000 */
    unsigned max_patch_properties; /* members of one PATCH, default 1000 */
    const char *cluster_secret;  /* internal calls; NULL: internal routes refuse all */
    const char *http_addr;       /* this node's API address (directory entry) */
    const char *raft_addr;       /* this node's Raft address (joining) */
    const char *region;          /* this node's region (directory entry) */
    const char *join_addr;       /* --join: member to ask, NULL when none */
    const struct api_member *members; /* --cluster spec (copied) */
    unsigned n_members;
};

struct api; /* opaque */

/* Returns 0, or -1 on out of memory. The config strings are copied. */
int api_init(struct api **out, const struct api_config *cfg);

/* The HTTP handler; ctx is the struct api. */
void api_handle(void *ctx, struct http_request *req);

/* Stop taking work: later requests get 503. Writes and reads already
 * waiting still complete (or time out). */
void api_shutdown(struct api *a);

/* Number of requests still waiting for consensus or a read condition. */
unsigned api_pending(const struct api *a);

/* Free; every pending request must have completed (api_pending() == 0) or
 * consensus must have been closed (which completes them). The api's own
 * handles are closed asynchronously; the memory is released once they are. */
void api_close(struct api *a);

/* --- Pure helpers, exposed for unit tests ----------------------------- */

/* Validators: 1 when valid. */
int api_valid_account(const char *s, size_t n);
int api_valid_namespace(const char *s, size_t n);
int api_reserved_namespace(const char *s, size_t n);
int api_valid_session(const char *s, size_t n);
int api_valid_property(const char *s, size_t n);

/* Percent-decode src[0..n), appending to out (NUL-terminated). Returns 0,
 * -1 on a bad escape, a NUL or another control byte, -2 on invalid UTF-8. */
int api_percent_decode(const char *src, size_t n, struct buf *out);

/* Parse a non-negative decimal integer no larger than max. 0 or -1. */
int api_parse_uint(const char *s, size_t n, uint64_t max, uint64_t *out);

#endif
