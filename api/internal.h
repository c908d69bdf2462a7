/* Private declarations shared by the files of api/: api.c (routing, data
 * routes, request life cycle), admin.c (health, digest, backup, metrics,
 * account keys) and cluster.c (forwarding to the leader, read-index,
 * joining and the cluster admin routes). Nothing outside api/ includes
 * this. */
#ifndef CTXD_API_INTERNAL_H
#define CTXD_API_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "../consensus/gather.h"
#include "../lib/buf.h"
#include "../lib/container.h"
#include "api.h"
#include "client.h"

#define API_MAX_SEGMENTS 8
#define API_MAX_NAME 256         /* bytes: session ids and property names */
#define API_MAX_TTL 315360000ull /* seconds: 10 years */
#define API_MAX_PER_PAGE 1000
#define API_DEFAULT_PER_PAGE 100
#define API_MAX_REQUEST_ID 256   /* bytes of X-REQUEST-ID */
#define API_TICK_MS 50           /* timeout scan period */
#define API_REGISTER_MS 1000     /* self-registration check period */
#define API_CHANGE_TIMEOUT_MS 60000 /* membership change HTTP wait */
#define API_SECRET_HEADER "x-ctxd-secret"
#define API_AUTH_CACHE 256       /* verified (account, key) pairs remembered */
#define API_METRICS_BURST 20.0   /* scrapes admitted at once */
#define API_METRICS_PER_S 10.0   /* scrapes admitted per second after that */

/* req->data carries, between the passes of a request, the gate flags (low
 * byte) and the matched route (next byte, for the request log line). */
#define GATE_MIN_INDEX 1u /* X-Context-Min-Index satisfied */
#define GATE_BARRIER 2u   /* linearizability confirmed after arrival */
#define GATE_FORWARDED 4u /* arrived from a follower: never forward again */
#define GATE_AUTH_RETRY 8u /* key re-checked after catching up with the leader */
#define GATE_MASK 0xffu
#define ROUTE_SHIFT 8

/* The one table from failure to HTTP answer (status, code, message). */
#define API_ERRORS(X)                                                          \
    X(AE_MALFORMED_JSON, 400, "malformed_json", "body is not valid JSON")     \
    X(AE_WRONG_TYPE, 400, "wrong_type", "JSON value of the wrong type")       \
    X(AE_DUPLICATE, 400, "duplicate_member", "duplicate member name")         \
    X(AE_TOO_DEEP, 400, "too_deep", "JSON nested deeper than 64 levels")      \
    X(AE_UTF8, 400, "invalid_utf8", "invalid UTF-8")                           \
    X(AE_BAD_NAME, 400, "bad_name", "invalid name")                            \
    X(AE_BAD_TTL, 400, "bad_ttl", "ttlSecond must be an integer 0..315360000") \
    X(AE_BAD_PAGING, 400, "bad_paging",                                        \
      "page must be >= 0 and perPage 1..1000")                                 \
    X(AE_BAD_REQUEST, 400, "bad_request", "bad request")                       \
    X(AE_TOO_MANY, 400, "too_many_properties",                                 \
      "too many properties in one PATCH")                                      \
    X(AE_UNAUTHORIZED, 401, "unauthorized", "missing or invalid credentials")  \
    X(AE_RESERVED, 403, "reserved_namespace", "namespace is reserved")         \
    X(AE_NOT_FOUND, 404, "not_found", "no such resource")                      \
    X(AE_NS_NOT_FOUND, 404, "namespace_not_found", "namespace does not exist") \
    X(AE_PROP_NOT_FOUND, 404, "property_not_found", "property does not exist") \
    X(AE_NODE_NOT_FOUND, 404, "node_not_found", "no such node in the cluster") \
    X(AE_METHOD, 405, "method_not_allowed", "method not allowed on this path") \
    X(AE_CONFLICT, 409, "conflict", "node id or address already in use")       \
    X(AE_CHANGING, 409, "membership_change_in_progress",                       \
      "another membership change is in progress, retry")                       \
    X(AE_PRECONDITION, 412, "precondition_failed",                             \
      "If-Match does not match the current version")                           \
    X(AE_DOC_TOO_LARGE, 413, "document_too_large",                             \
      "session document would exceed 800000 bytes")                            \
    X(AE_MEDIA_TYPE, 415, "unsupported_media_type",                            \
      "body must be application/json")                                         \
    X(AE_OVERLOADED, 429, "overloaded", "too many pending writes, retry")      \
    X(AE_SCRAPES, 429, "overloaded", "metrics scraped too often, retry")       \
    X(AE_INTERNAL, 500, "internal", "internal error")                          \
    X(AE_UNAVAILABLE, 503, "unavailable", "no leader reachable, retry")        \
    X(AE_SHUTTING_DOWN, 503, "unavailable", "node is shutting down")           \
    X(AE_UNKNOWN_OUTCOME, 504, "outcome_unknown",                              \
      "commit not confirmed in time: the write may or may not have been "      \
      "applied; retry with the same X-REQUEST-ID")                             \
    X(AE_READ_TIMEOUT, 504, "timeout", "read condition not reached in time")   \
    X(AE_CATCH_UP, 504, "catch_up_timeout",                                    \
      "the node did not catch up in time; it stays a non-voter until added "  \
      "again")

/* 0 means "no error", so the first real error is 1. */
enum api_error {
    AE_NONE = 0,
#define AE_ENUM(name, status, code, msg) name,
    API_ERRORS(AE_ENUM)
#undef AE_ENUM
};

enum route_id {
    R_NONE,
    R_ACCOUNT,         /* /v1/account/{acc}: GET list, POST create */
    R_NAMESPACE,       /* /v1/account/{acc}/{ns}: DELETE */
    R_PROPS,           /* .../{ns}[/{sid}]/properties: GET PATCH DELETE */
    R_PROP,            /* .../{ns}[/{sid}]/properties/{prop}: GET PUT DELETE */
    R_SESSION_IDS,     /* .../{ns}/session-ids: GET */
    R_SESSION_PROPS,   /* .../{ns}/session-properties: GET */
    R_SESSION_TTL,     /* .../namespace/{ns}/session: GET POST */
    R_ADMIN_KEY,       /* /admin/v1/accounts/{acc}/key: PUT */
    R_HEALTHZ,         /* /healthz: GET */
    R_READYZ,          /* /readyz: GET */
    R_ADMIN_DIGEST,    /* /admin/v1/digest: GET */
    R_ADMIN_BACKUP,    /* /admin/v1/backup: GET */
    R_METRICS,         /* /metrics: GET */
    R_ADMIN_CLUSTER,   /* /admin/v1/cluster: GET */
    R_ADMIN_NODES,     /* /admin/v1/cluster/nodes: POST */
    R_ADMIN_NODE,      /* /admin/v1/cluster/nodes/{id}: DELETE */
    R_ADMIN_TRANSFER,  /* /admin/v1/cluster/transfer: POST */
    R_INT_FORWARD,     /* /internal/v1/forward: POST */
    R_INT_READ_INDEX,  /* /internal/v1/read-index: GET */
    R_INT_JOIN,        /* /internal/v1/join: POST */
    R_COUNT,           /* number of routes */
};

/* A request's decoded path and the names the route picked from it. */
/* A decoded path segment: a view into route.text. */
struct route_seg
{
    const char *base; /* NUL-terminated */
    size_t len;
};

struct route
{
    enum route_id id;
    struct buf text;                  /* every decoded segment, each
                                         followed by a NUL (owned; one
                                         allocation per request) */
    struct route_seg seg[API_MAX_SEGMENTS]; /* views into text */
    unsigned n_seg;                   /* segments used */
    const char *query;                /* raw query string, NULL when none */
    size_t query_len;
    struct cmd where;                 /* acc, ns, sid, name point into seg */
};

enum op_kind {
    OP_WRITE,   /* a proposal to apply (listed, deadline) */
    OP_BARRIER, /* a local read barrier (listed, deadline) */
    OP_MIN,     /* the applied index to reach min_index (listed, deadline) */
    OP_RINDEX,  /* the leader's read index (on the read-index lists) */
    OP_FORWARD, /* a forwarded request's response (client timeout) */
    OP_CHANGE,  /* a membership change (consensus callback) */
};

/* Something a request waits for. */
struct api_op
{
    struct api *api;                /* owner */
    struct http_request *req;       /* NULL once answered (timed out) */
    enum op_kind kind;              /* what it waits for */
    struct consensus_propose prop;  /* OP_WRITE */
    struct consensus_read read;     /* OP_BARRIER */
    struct client_request creq;     /* OP_FORWARD */
    struct consensus_change change; /* OP_CHANGE */
    uint64_t min_index;             /* OP_MIN */
    uint64_t deadline;              /* uv_now() ms after which: 504 */
    int success_status;             /* OP_WRITE: 204 or 201 */
    char *body;                     /* OP_WRITE / OP_CHANGE: success body
                                       (owned), or NULL */
    size_t body_len;                /* bytes of body */
    void (*applied)(struct api_op *op, const struct storage_result *res);
                                    /* OP_WRITE: instead of answering (a
                                       multi-step operation continues) */
    uint64_t node_id;               /* OP_WRITE / OP_CHANGE: node concerned */
    char raft_addr[128];            /* OP_WRITE / OP_CHANGE: its raft address */
    struct api_op *prev, *next;     /* on the list of its kind */
    struct op_list *list;           /* the list it is on, NULL when none */
};

struct op_list
{
    struct api_op *head, *tail; /* oldest first */
    unsigned n;                 /* ops on the list */
};

/* One remembered successful key check (see auth_account in api.c). */
struct api_auth_entry
{
    uint64_t gen;      /* storage keys generation when verified; 0: empty */
    char acc[64];      /* account id */
    size_t acc_len;
    char key[128];     /* the key as presented */
    size_t key_len;
};

struct api
{
    struct api_config cfg;       /* copy; strings point to our copies */
    char *admin_token;           /* owned */
    char *cluster_secret;        /* owned, NULL when none */
    char node_header[64];        /* "X-Context-Node: N\r\n" */
    int closing;                 /* api_shutdown was called */
    unsigned pending;            /* ops allocated */
    struct op_list writes;       /* OP_WRITE, deadline order */
    struct op_list barriers;     /* OP_BARRIER, deadline order */
    struct op_list mins;         /* OP_MIN, deadline order */
    struct op_list rindex_next;  /* OP_RINDEX waiting for the next request */
    struct op_list rindex_cur;   /* OP_RINDEX served by the one in flight */
    int rindex_inflight;         /* a read-index request is in flight */
    struct gather rindex_gather; /* when the next one may be sent */
    struct client_request rindex_req; /* that request */
    struct client_request reg_req;    /* self-registration request */
    int reg_inflight;            /* reg_req is in flight */
    int registered;              /* our directory entry and membership are in */
    struct client *client;       /* calls to other nodes (owned) */
    struct api_member *members;  /* copy of cfg.members (owned) */
    char **strings;              /* copies of cfg strings (owned) */
    unsigned n_strings;          /* entries used in strings */
    struct buf scratch;          /* reused for command encoding */
    struct api_auth_entry auth_cache[API_AUTH_CACHE]; /* key checks */
    double metrics_tokens;       /* scrape token bucket (see admin.c) */
    uint64_t metrics_at;         /* uv_now() of its last refill */
    uv_timer_t timer;            /* timeout scan, registration */
    uv_check_t check;            /* wakes OP_MIN waiters after each turn */
    uint64_t last_register;      /* uv_now() of the last registration check */
    unsigned open_handles;       /* handles not yet closed */
    int freeing;                 /* api_close was called */
};

/* --- api.c ------------------------------------------------------------ */

/* Answer with the node header plus extra lines; logs the request. */
int api_respond(struct api *a, struct http_request *req, int status,
                const char *extra, const char *body, size_t len);
void api_respond_error(struct api *a, struct http_request *req,
                       enum api_error e, const char *message);
int api_bytes_eq(const char *s, size_t n, const char *lit);
uint64_t api_wall_ms(void);
int api_auth_admin(struct api *a, struct http_request *req);
int api_content_type_json(struct http_request *req);
enum api_error api_json_error(int json_status);
/* Decode the string member `field` of the JSON object body. */
int api_body_string_member(struct http_request *req, const char *field,
                           struct buf *out);
/* Ops: new (listed on the list of its kind, with deadline), free. */
struct api_op *api_op_new(struct api *a, struct http_request *req,
                          enum op_kind kind, uint64_t timeout_ms);
void api_op_free(struct api_op *op);
void api_op_list_push(struct op_list *l, struct api_op *op);
void api_op_list_remove(struct api_op *op);
/* Encode and propose cmd; the answer comes when applied (op->applied, or
 * success_status + body). Returns the op or NULL when answered already. */
struct api_op *api_propose(struct api *a, struct http_request *req,
                           const struct cmd *cmd, int success_status,
                           char *body, size_t body_len);
/* Start a read barrier for req on the leader: once it completes the request
 * is dispatched again with GATE_BARRIER. Returns 0, or the api_error to
 * answer with (nothing started). */
int api_barrier_start(struct api *a, struct http_request *req);
/* Make sure OP_MIN waiters are checked after this loop turn. */
void api_wake_min_waiters(struct api *a);
/* consensus_info(), or, without consensus (cfg.consensus == NULL: unit
 * tests and fuzzing), a single node that is the leader with nothing
 * pending and everything applied. */
void api_consensus_info(struct api *a, struct consensus_info *info);
/* Run the request through routing again with these gate flags. */
void api_redispatch(struct api *a, struct http_request *req, unsigned gate);

/* --- admin.c ---------------------------------------------------------- */

void api_handle_health(struct api *a, struct http_request *req,
                       enum route_id id);
int api_handle_digest(struct api *a, struct http_request *req);
int api_handle_backup(struct api *a, struct http_request *req);
int api_handle_metrics(struct api *a, struct http_request *req);
int api_handle_admin_key(struct api *a, struct http_request *req,
                         struct route *r);

/* --- cluster.c -------------------------------------------------------- */

int api_cluster_init(struct api *a);
/* 1 when the internal secret header is right (constant time). */
int api_auth_internal(struct api *a, struct http_request *req);
/* HTTP address of node id ("host:port") into out; 0 or -1 when unknown. */
int api_node_http_addr(struct api *a, uint64_t id, char *out, size_t cap);
/* Forward the request to the leader (writes, leader reads, membership). */
void api_forward(struct api *a, struct http_request *req);
/* Queue a linearizable read on a follower behind the leader's read index. */
int api_read_index_wait(struct api *a, struct http_request *req);

/* Set up the read-index gathering (its timer, with the api's handles); at
 * close, fail the reads still waiting for a request that will not be
 * sent. */
void api_read_index_init(struct api *a);
void api_read_index_close(struct api *a);
/* Periodic work: self-registration. */
void api_cluster_tick(struct api *a);
int api_handle_cluster(struct api *a, struct http_request *req);
int api_handle_nodes_add(struct api *a, struct http_request *req, int internal);
int api_handle_node_remove(struct api *a, struct http_request *req,
                           struct route *r);
int api_handle_transfer(struct api *a, struct http_request *req);
int api_handle_read_index(struct api *a, struct http_request *req,
                          unsigned gate);
int api_handle_forwarded(struct api *a, struct http_request *req);

#endif
