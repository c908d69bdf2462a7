/* Everything a node does for the others in a region cluster:
 *
 *   forwarding   a write (or a `leader` read, or a membership call) that
 *                reaches a follower is sent to the leader as
 *                POST /internal/v1/forward with the original method and
 *                target in X-Ctxd-Method / X-Ctxd-Url and the original
 *                headers and body; the leader's answer is relayed as is.
 *                Not sent (leader unreachable): 503. Sent, no answer: the
 *                outcome is unknown, 504 (a retry with the same
 *                X-REQUEST-ID is safe).
 *   read-index   a linearizable read on a follower waits for the leader's
 *                confirmed index (GET /internal/v1/read-index runs a
 *                barrier there), then until it has applied that index, and
 *                is served locally. One request in flight serves every read
 *                that was waiting when it was sent; reads arriving
 *                meanwhile wait for the next one, which is sent once as
 *                many are waiting as the last one had in all, or after
 *                GATHER_MAX_MS (consensus/gather.h).
 *   directory    every node records its own HTTP address and region in the
 *                replicated state (a NODE_INFO command): the leader
 *                proposes it directly, a follower or a joining node asks
 *                the leader with POST /internal/v1/join, which also adds a
 *                node missing from the Raft configuration (as a non-voter,
 *                promoted once caught up).
 *
 * A join is a two-step operation on the leader:
 *
 *   NODE_INFO proposed ──applied──▶ in config as voter? ──yes──▶ 201
 *                                         │ no
 *                                         ▼
 *                           consensus_add_server ──cb──▶ 201 / error
 *
 * Internal calls carry X-Ctxd-Secret; it is compared in constant time
 * (both sides hashed first). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <http_parser.h>
#include <jansson.h>

#include "../lib/crypto.h"
#include "../lib/log.h"
#include "internal.h"
#include "json.h"

#define MAX_SERVERS 64 /* configuration size we report on */

/* Hop-by-hop and internal headers are never forwarded or relayed. */
static int header_skipped(const char *name)
{
    static const char *const skip[] = {
        "connection", "keep-alive", "content-length", "transfer-encoding",
        "host", "te", "upgrade", "proxy-connection", "expect", "trailer"};
    size_t i;

    if (strncmp(name, "x-ctxd-", 7) == 0) {
        return 1;
    }
    for (i = 0; i < sizeof skip / sizeof skip[0]; i++) {
        if (strcmp(name, skip[i]) == 0) {
            return 1;
        }
    }
    return 0;
}

int api_auth_internal(struct api *a, struct http_request *req)
{
    const struct http_header *h = http_request_header(req, API_SECRET_HEADER);
    uint8_t want[SHA256_LEN];
    uint8_t got[SHA256_LEN];

    if (a->cluster_secret == NULL || h == NULL) {
        return 0;
    }
    sha256(a->cluster_secret, strlen(a->cluster_secret), want);
    sha256(h->value, h->value_len, got);
    return ct_equal(want, got, SHA256_LEN);
}

int api_node_http_addr(struct api *a, uint64_t id, char *out, size_t cap)
{
    struct buf http = BUF_INIT;
    struct buf region = BUF_INIT;
    unsigned i;
    int rv = -1;

    if (storage_node_lookup(a->cfg.storage, id, &http, &region) == STORAGE_OK &&
        http.len > 0 && http.len < cap) {
        memcpy(out, http.base, http.len + 1);
        rv = 0;
    }
    buf_free(&http);
    buf_free(&region);
    if (rv == 0) {
        return 0;
    }
    for (i = 0; i < a->cfg.n_members; i++) {
        if (a->cfg.members[i].id == id &&
            strlen(a->cfg.members[i].http_addr) < cap) {
            strcpy(out, a->cfg.members[i].http_addr);
            return 0;
        }
    }
    if (id == a->cfg.node_id && a->cfg.http_addr != NULL &&
        strlen(a->cfg.http_addr) < cap) {
        strcpy(out, a->cfg.http_addr);
        return 0;
    }
    return -1;
}

/* Address of the current leader's API, or -1 when unknown. */
static int leader_addr(struct api *a, char *out, size_t cap, uint64_t *id)
{
    struct consensus_info info;

    consensus_info(a->cfg.consensus, &info);
    *id = info.leader_id;
    if (info.leader_id == 0) {
        return -1;
    }
    return api_node_http_addr(a, info.leader_id, out, cap);
}

/* --- Forwarding ------------------------------------------------------- */

/* Header names come back lower-cased from the client; give them their
 * usual spelling again (names are case-insensitive, but people read them). */
static int append_header_name(struct buf *b, const char *name)
{
    size_t i, n = strlen(name);
    int up = 1;

    if (strcmp(name, "etag") == 0) {
        return buf_append_str(b, "ETag");
    }
    if (buf_reserve(b, n) != 0) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        char c = name[i];
        if (up && c >= 'a' && c <= 'z') {
            c = (char)(c - 'a' + 'A');
        }
        up = c == '-';
        b->base[b->len++] = c;
    }
    b->base[b->len] = '\0';
    return 0;
}

static void forward_cb(struct client_request *creq, int status,
                       const struct client_response *resp)
{
    struct api_op *op = CONTAINER_OF(creq, struct api_op, creq);
    struct api *a = op->api;
    struct http_request *req = op->req;
    struct buf headers = BUF_INIT;
    unsigned i;
    int rv = 0;

    op->req = NULL;
    api_op_free(op);
    if (req == NULL) {
        return;
    }
    if (status != CLIENT_OK) {
        if (status == CLIENT_ENOTSENT) {
            api_respond_error(a, req, AE_UNAVAILABLE,
                              "the leader could not be reached, retry");
        } else if (req->method == HTTP_GET) {
            api_respond_error(a, req, AE_UNAVAILABLE,
                              "the leader did not answer, retry");
        } else {
            api_respond_error(a, req, AE_UNKNOWN_OUTCOME, NULL);
        }
        return;
    }
    /* Relay the leader's answer: same status, headers and body. */
    for (i = 0; i < resp->n_headers && rv == 0; i++) {
        const struct http_header *h = &resp->headers[i];
        if (header_skipped(h->name)) {
            continue;
        }
        rv |= append_header_name(&headers, h->name);
        rv |= buf_printf(&headers, ": %s\r\n", h->value);
    }
    if (rv != 0) {
        buf_free(&headers);
        api_respond_error(a, req, AE_INTERNAL, "out of memory");
        return;
    }
    LOGD("request forwarded", " method=%s status=%d", req->method_name,
         resp->status);
    http_respond(req, resp->status, headers.base, resp->body, resp->body_len);
    buf_free(&headers);
}

void api_forward(struct api *a, struct http_request *req)
{
    char addr[160];
    uint64_t leader;
    struct buf headers = BUF_INIT;
    struct api_op *op;
    unsigned i;
    int rv = 0;

    if ((unsigned)(uintptr_t)req->data & GATE_FORWARDED) {
        /* Forwarded to us, but we are not (or no longer) the leader: one
         * hop only, the client retries. */
        api_respond_error(a, req, AE_UNAVAILABLE, "leadership moved, retry");
        return;
    }
    if (leader_addr(a, addr, sizeof addr, &leader) != 0 ||
        leader == a->cfg.node_id || a->cluster_secret == NULL) {
        api_respond_error(a, req, AE_UNAVAILABLE, NULL);
        return;
    }
    rv |= buf_printf(&headers, "X-Ctxd-Secret: %s\r\nX-Ctxd-Method: %s\r\n",
                     a->cluster_secret, req->method_name);
    rv |= buf_append_str(&headers, "X-Ctxd-Url: ");
    rv |= buf_append(&headers, req->url, req->url_len);
    rv |= buf_append_str(&headers, "\r\n");
    for (i = 0; i < req->n_headers && rv == 0; i++) {
        const struct http_header *h = &req->headers[i];
        if (!header_skipped(h->name)) {
            rv |= buf_printf(&headers, "%s: %s\r\n", h->name, h->value);
        }
    }
    op = rv == 0 ? api_op_new(a, req, OP_FORWARD, 0) : NULL;
    if (op == NULL) {
        buf_free(&headers);
        api_respond_error(a, req, AE_INTERNAL, "out of memory");
        return;
    }
    op->creq.data = op;
    op->creq.cb = forward_cb;
    rv = client_send(a->client, &op->creq, addr, "POST", "/internal/v1/forward",
                     headers.base, req->body, req->body_len,
                     a->cfg.write_timeout_ms + 1000);
    buf_free(&headers);
    if (rv != CLIENT_OK) {
        op->req = NULL;
        api_op_free(op);
        api_respond_error(a, req, rv == CLIENT_ECANCELED ? AE_SHUTTING_DOWN
                                                         : AE_INTERNAL,
                          client_strerror(rv));
    }
}

int api_handle_forwarded(struct api *a, struct http_request *req)
{
    const struct http_header *m = http_request_header(req, "x-ctxd-method");
    const struct http_header *u = http_request_header(req, "x-ctxd-url");

    if (m == NULL || u == NULL || u->value_len == 0 || u->value[0] != '/' ||
        http_request_set_target(req, m->value, u->value, u->value_len) != 0) {
        return AE_BAD_REQUEST;
    }
    api_redispatch(a, req, GATE_FORWARDED);
    return 0;
}

/* --- Read index -------------------------------------------------------- */

static void rindex_send(struct api *a);
static void rindex_maybe_send(struct api *a);

static void rindex_fail_all(struct api *a, struct op_list *l, const char *why)
{
    while (l->head != NULL) {
        struct api_op *op = l->head;
        struct http_request *req = op->req;
        op->req = NULL;
        api_op_free(op);
        if (req != NULL) {
            api_respond_error(a, req, AE_UNAVAILABLE, why);
        }
    }
}

static void rindex_cb(struct client_request *creq, int status,
                      const struct client_response *resp)
{
    struct api *a = CONTAINER_OF(creq, struct api, rindex_req);
    uint64_t index = 0;
    int ok = 0;

    a->rindex_inflight = 0;
    gather_ended(&a->rindex_gather, a->rindex_cur.n,
                 a->rindex_next.n);
    if (status == CLIENT_OK && resp->status == 200) {
        json_error_t err;
        json_t *doc = json_loadb(resp->body, resp->body_len, 0, &err);
        json_t *v = doc != NULL ? json_object_get(doc, "index") : NULL;
        if (v != NULL && json_is_integer(v) && json_integer_value(v) >= 0) {
            index = (uint64_t)json_integer_value(v);
            ok = 1;
        }
        json_decref(doc);
    }
    if (!ok) {
        rindex_fail_all(a, &a->rindex_cur,
                        status == CLIENT_ECANCELED ? "node is shutting down"
                                                   : "the leader could not "
                                                     "confirm a read index, "
                                                     "retry");
    } else {
        /* Each read now only waits for this node to apply `index`. */
        while (a->rindex_cur.head != NULL) {
            struct api_op *op = a->rindex_cur.head;
            api_op_list_remove(op);
            if (op->req == NULL) {
                api_op_free(op);
                continue;
            }
            op->req->data =
                (void *)((uintptr_t)op->req->data | GATE_BARRIER);
            op->kind = OP_MIN;
            op->min_index = index;
            op->deadline = uv_now(a->cfg.loop) + a->cfg.read_timeout_ms;
            api_op_list_push(&a->mins, op);
        }
        api_wake_min_waiters(a);
    }
    rindex_maybe_send(a);
}

/* Send the next read-index request if reads wait for one and none is in
 * flight, once gathered (consensus/gather.h): it costs the leader a Raft
 * barrier whatever it serves. */
static void rindex_maybe_send(struct api *a)
{
    if (a->rindex_inflight || a->rindex_next.head == NULL) {
        return;
    }
    if (a->closing) {
        rindex_fail_all(a, &a->rindex_next, "node is shutting down");
        return;
    }
    if (gather_ready(&a->rindex_gather, a->rindex_next.n)) {
        rindex_send(a);
    }
}

static void rindex_gather_flush(struct gather *g)
{
    rindex_maybe_send(CONTAINER_OF(g, struct api, rindex_gather));
}

void api_read_index_init(struct api *a)
{
    gather_init(&a->rindex_gather, a->cfg.loop, a, rindex_gather_flush);
}

void api_read_index_close(struct api *a)
{
    if (!a->rindex_inflight) {
        rindex_fail_all(a, &a->rindex_next, "node is shutting down");
    }
}

static void rindex_send(struct api *a)
{
    char addr[160];
    char headers[600];
    uint64_t leader;
    int rv;

    if (leader_addr(a, addr, sizeof addr, &leader) != 0 ||
        leader == a->cfg.node_id || a->cluster_secret == NULL) {
        rindex_fail_all(a, &a->rindex_next, NULL);
        return;
    }
    snprintf(headers, sizeof headers, "X-Ctxd-Secret: %s\r\n",
             a->cluster_secret);
    /* Move the waiting reads to the in-flight group. */
    a->rindex_cur = a->rindex_next;
    a->rindex_next.head = a->rindex_next.tail = NULL;
    a->rindex_next.n = 0;
    for (struct api_op *op = a->rindex_cur.head; op != NULL; op = op->next) {
        op->list = &a->rindex_cur;
    }
    a->rindex_req.data = a;
    a->rindex_req.cb = rindex_cb;
    rv = client_send(a->client, &a->rindex_req, addr, "GET",
                     "/internal/v1/read-index", headers, NULL, 0,
                     a->cfg.read_timeout_ms);
    if (rv != CLIENT_OK) {
        rindex_fail_all(a, &a->rindex_cur, client_strerror(rv));
        return;
    }
    a->rindex_inflight = 1;
}

int api_read_index_wait(struct api *a, struct http_request *req)
{
    struct api_op *op = api_op_new(a, req, OP_RINDEX, 0);

    if (op == NULL) {
        return AE_INTERNAL;
    }
    api_op_list_push(&a->rindex_next, op);
    rindex_maybe_send(a);
    return 0;
}

int api_handle_read_index(struct api *a, struct http_request *req,
                          unsigned gate)
{
    struct consensus_info info;
    char body[64];

    if (gate & GATE_BARRIER) {
        snprintf(body, sizeof body, "{\"index\":%llu}",
                 (unsigned long long)storage_applied_index(a->cfg.storage));
        api_respond(a, req, 200, NULL, body, strlen(body));
        return 0;
    }
    consensus_info(a->cfg.consensus, &info);
    if (!info.is_leader) {
        return AE_UNAVAILABLE;
    }
    return api_barrier_start(a, req);
}

/* --- Membership -------------------------------------------------------- */

static const char *role_name(int role)
{
    switch (role) {
        case CONSENSUS_VOTER: return "voter";
        case CONSENSUS_STANDBY: return "standby";
        default: return "spare";
    }
}

/* Where is id in the configuration? -1 absent, else its role; *addr_ok
 * tells whether its raft address is raft_addr. */
static int config_role(struct api *a, uint64_t id, const char *raft_addr,
                       int *addr_ok)
{
    struct consensus_server servers[MAX_SERVERS];
    unsigned n = 0, i;

    *addr_ok = 0;
    if (consensus_servers(a->cfg.consensus, servers, MAX_SERVERS, &n) != 0) {
        return -1;
    }
    for (i = 0; i < n && i < MAX_SERVERS; i++) {
        if (servers[i].id == id) {
            *addr_ok = raft_addr == NULL || strcmp(servers[i].raft_addr, raft_addr) == 0;
            return servers[i].role;
        }
    }
    return -1;
}

static int check_node_conflict(struct api *a, uint64_t id, const char *raft,
                               int internal)
{
    struct consensus_server servers[MAX_SERVERS];
    unsigned n = 0, i;

    if (consensus_servers(a->cfg.consensus, servers, MAX_SERVERS, &n) != 0) {
        return AE_INTERNAL;
    }
    for (i = 0; i < n && i < MAX_SERVERS; i++) {
        int same_addr = strcmp(servers[i].raft_addr, raft) == 0;
        if (servers[i].id == id) {
            if (!same_addr) {
                return AE_CONFLICT;
            }
            if (!internal && servers[i].role == CONSENSUS_VOTER) {
                return AE_CONFLICT;
            }
        } else if (same_addr) {
            return AE_CONFLICT;
        }
    }
    return 0;
}

static enum api_error change_error(int status)
{
    switch (status) {
        case CONSENSUS_ENOTLEADER: return AE_UNAVAILABLE;
        case CONSENSUS_ENOTFOUND: return AE_NODE_NOT_FOUND;
        case CONSENSUS_EEXIST: return AE_CONFLICT;
        case CONSENSUS_ECHANGING: return AE_CHANGING;
        case CONSENSUS_ESHUTDOWN: return AE_SHUTTING_DOWN;
        case CONSENSUS_ELEADERSHIP: return AE_UNKNOWN_OUTCOME;
        default: return AE_INTERNAL;
    }
}

static void change_answer(struct api_op *op, int status)
{
    struct api *a = op->api;
    struct http_request *req = op->req;

    op->req = NULL;
    if (req != NULL) {
        if (status != CONSENSUS_OK) {
            api_respond_error(a, req, change_error(status),
                              consensus_strerror(status));
        } else {
            api_respond(a, req, op->success_status, NULL, op->body,
                        op->body_len);
        }
    }
    api_op_free(op);
}

static void add_cb(struct consensus_change *change, int status)
{
    struct api_op *op = CONTAINER_OF(change, struct api_op, change);

    if (status == CONSENSUS_EIO && op->req != NULL) {
        /* libraft gave up promoting it: the server never caught up. */
        api_respond_error(op->api, op->req, AE_CATCH_UP, NULL);
        op->req = NULL;
    }
    LOGI("node added", " id=%llu raft=%s status=\"%s\"",
         (unsigned long long)op->node_id, op->raft_addr,
         consensus_strerror(status));
    change_answer(op, status);
}

/* NODE_INFO of a joining node applied: make it a voter if it is not. */
static void join_applied(struct api_op *op, const struct storage_result *res)
{
    struct api *a = op->api;
    int addr_ok;
    int role = config_role(a, op->node_id, op->raft_addr, &addr_ok);
    int rv;

    (void)res;
    if (role == CONSENSUS_VOTER && addr_ok) {
        change_answer(op, CONSENSUS_OK);
        return;
    }
    if (role >= 0 && !addr_ok) {
        change_answer(op, CONSENSUS_EEXIST);
        return;
    }
    op->kind = OP_CHANGE;
    op->change.data = op;
    op->change.cb = add_cb;
    rv = consensus_add_server(a->cfg.consensus, &op->change, op->node_id,
                              op->raft_addr);
    if (rv != CONSENSUS_OK) {
        change_answer(op, rv);
    }
}

/* Parse {"id","raftAddress","httpAddress","region"} into cmd + op. */
static int parse_node_body(struct http_request *req, uint64_t *id,
                           char *raft, size_t raft_cap, char *http,
                           size_t http_cap, char *region, size_t region_cap)
{
    json_error_t err;
    size_t start, end;
    enum json_type type;
    json_t *doc, *v;
    const char *s;
    int rv = AE_WRONG_TYPE;

    /* Our scanner first: depth, UTF-8 and syntax with the usual errors. */
    int jrv = json_validate(req->body, req->body_len, JSON_MAX_DEPTH, &start,
                            &end, &type);
    if (jrv != JSON_OK) {
        return api_json_error(jrv);
    }
    if (type != JSON_T_OBJECT) {
        return AE_WRONG_TYPE;
    }
    doc = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &err);
    if (doc == NULL) {
        return AE_MALFORMED_JSON;
    }
    v = json_object_get(doc, "id");
    if (v == NULL || !json_is_integer(v) || json_integer_value(v) < 1 ||
        json_integer_value(v) > (json_int_t)UINT32_MAX) {
        goto out;
    }
    *id = (uint64_t)json_integer_value(v);
    s = json_string_value(json_object_get(doc, "raftAddress"));
    if (s == NULL || strlen(s) == 0 || strlen(s) >= raft_cap) {
        goto out;
    }
    strcpy(raft, s);
    s = json_string_value(json_object_get(doc, "httpAddress"));
    if (s == NULL || strlen(s) == 0 || strlen(s) >= http_cap) {
        goto out;
    }
    strcpy(http, s);
    s = json_string_value(json_object_get(doc, "region"));
    if (s == NULL) {
        s = "local";
    }
    if (strlen(s) == 0 || strlen(s) >= region_cap) {
        goto out;
    }
    strcpy(region, s);
    rv = 0;
out:
    json_decref(doc);
    return rv;
}

int api_handle_nodes_add(struct api *a, struct http_request *req, int internal)
{
    char raft[128], http[128], region[64];
    uint64_t id = 0;
    struct cmd cmd;
    struct api_op *op;
    json_t *doc;
    char *body;
    int rv;

    if (!api_content_type_json(req)) {
        return AE_MEDIA_TYPE;
    }
    rv = parse_node_body(req, &id, raft, sizeof raft, http, sizeof http,
                         region, sizeof region);
    if (rv != 0) {
        return rv;
    }
    /* Conflicts are refused before anything is written: an id that is in
     * the configuration with another Raft address, an address taken by
     * another id, or (admin route) an id that already votes. A member
     * re-registering itself (internal join, same id and address) only
     * refreshes its directory entry. */
    if ((rv = check_node_conflict(a, id, raft, internal)) != 0) {
        return rv;
    }
    doc = json_pack("{s:I,s:s,s:s,s:s,s:s}", "id", (json_int_t)id,
                    "raftAddress", raft, "httpAddress", http, "region",
                    region, "role", "voter");
    body = doc != NULL ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    if (body == NULL) {
        return AE_INTERNAL;
    }
    memset(&cmd, 0, sizeof cmd);
    cmd.op = CMD_NODE_INFO;
    cmd.ttl = -1;
    cmd.node_id = id;
    cmd.http_addr.base = http;
    cmd.http_addr.len = (uint32_t)strlen(http);
    cmd.region.base = region;
    cmd.region.len = (uint32_t)strlen(region);
    LOGI(internal ? "join requested" : "node add requested",
         " id=%llu raft=%s http=%s region=%s", (unsigned long long)id, raft,
         http, region);
    op = api_propose(a, req, &cmd, 201, body, strlen(body));
    if (op != NULL) {
        op->node_id = id;
        snprintf(op->raft_addr, sizeof op->raft_addr, "%s", raft);
        op->applied = join_applied;
        /* The catch-up may take a while: allow more than a plain write. */
        op->deadline = uv_now(a->cfg.loop) + API_CHANGE_TIMEOUT_MS;
    }
    return 0;
}

static void remove_cb(struct consensus_change *change, int status)
{
    struct api_op *op = CONTAINER_OF(change, struct api_op, change);

    LOGI("node removed", " id=%llu status=\"%s\"",
         (unsigned long long)op->node_id, consensus_strerror(status));
    change_answer(op, status);
}

int api_handle_node_remove(struct api *a, struct http_request *req,
                           struct route *r)
{
    uint64_t id;
    struct api_op *op;
    int rv;

    if (api_parse_uint(r->seg[4].base, r->seg[4].len, UINT32_MAX, &id) != 0 ||
        id == 0) {
        return AE_NODE_NOT_FOUND;
    }
    op = api_op_new(a, req, OP_CHANGE, 0);
    if (op == NULL) {
        return AE_INTERNAL;
    }
    op->node_id = id;
    op->success_status = 204;
    op->change.data = op;
    op->change.cb = remove_cb;
    rv = consensus_remove_server(a->cfg.consensus, &op->change, id);
    if (rv != CONSENSUS_OK) {
        op->req = NULL;
        api_op_free(op);
        return change_error(rv);
    }
    return 0;
}

static void transfer_cb(struct consensus_change *change, int status)
{
    struct api_op *op = CONTAINER_OF(change, struct api_op, change);
    struct consensus_info info;
    char body[64];

    consensus_info(op->api->cfg.consensus, &info);
    if (status == CONSENSUS_OK) {
        free(op->body);
        snprintf(body, sizeof body, "{\"leader\":%llu}",
                 (unsigned long long)info.leader_id);
        op->body = strdup(body);
        op->body_len = op->body != NULL ? strlen(body) : 0;
        LOGI("leadership transferred", " to=%llu",
             (unsigned long long)info.leader_id);
    }
    change_answer(op, status);
}

int api_handle_transfer(struct api *a, struct http_request *req)
{
    uint64_t id = 0;
    struct api_op *op;
    int rv;

    if (req->body_len > 0) {
        json_error_t err;
        json_t *doc, *v;
        size_t start, end;
        enum json_type type;
        int jrv;

        if (!api_content_type_json(req)) {
            return AE_MEDIA_TYPE;
        }
        jrv = json_validate(req->body, req->body_len, JSON_MAX_DEPTH, &start,
                            &end, &type);
        if (jrv != JSON_OK) {
            return api_json_error(jrv);
        }
        if (type != JSON_T_OBJECT) {
            return AE_WRONG_TYPE;
        }
        doc = json_loadb(req->body, req->body_len, 0, &err);
        if (doc == NULL) {
            return AE_MALFORMED_JSON;
        }
        v = json_object_get(doc, "id");
        if (v != NULL && !json_is_null(v)) {
            if (!json_is_integer(v) || json_integer_value(v) < 1 ||
                json_integer_value(v) > (json_int_t)UINT32_MAX) {
                json_decref(doc);
                return AE_WRONG_TYPE;
            }
            id = (uint64_t)json_integer_value(v);
        }
        json_decref(doc);
    }
    op = api_op_new(a, req, OP_CHANGE, 0);
    if (op == NULL) {
        return AE_INTERNAL;
    }
    op->node_id = id;
    op->success_status = 200;
    op->change.data = op;
    op->change.cb = transfer_cb;
    rv = consensus_transfer(a->cfg.consensus, &op->change, id);
    if (rv != CONSENSUS_OK) {
        op->req = NULL;
        api_op_free(op);
        return change_error(rv);
    }
    return 0;
}

/* GET /admin/v1/cluster: membership from the Raft configuration, joined
 * with the replicated directory for HTTP addresses and regions. */
int api_handle_cluster(struct api *a, struct http_request *req)
{
    struct consensus_server servers[MAX_SERVERS];
    struct consensus_info info;
    struct buf http = BUF_INIT, region = BUF_INIT;
    json_t *doc, *nodes;
    unsigned n = 0, i;
    char *text;
    int rv = 0;

    consensus_info(a->cfg.consensus, &info);
    if (consensus_servers(a->cfg.consensus, servers, MAX_SERVERS, &n) != 0) {
        return AE_INTERNAL;
    }
    if (n > MAX_SERVERS) {
        n = MAX_SERVERS;
    }
    doc = json_object();
    nodes = json_array();
    if (doc == NULL || nodes == NULL) {
        json_decref(doc);
        json_decref(nodes);
        return AE_INTERNAL;
    }
    rv |= json_object_set_new(doc, "node", json_integer((json_int_t)a->cfg.node_id));
    rv |= json_object_set_new(doc, "leader",
                              info.leader_id != 0
                                  ? json_integer((json_int_t)info.leader_id)
                                  : json_null());
    rv |= json_object_set_new(doc, "term", json_integer((json_int_t)info.term));
    rv |= json_object_set_new(doc, "commitIndex",
                              json_integer((json_int_t)info.commit_index));
    rv |= json_object_set_new(doc, "appliedIndex",
                              json_integer((json_int_t)info.applied_index));
    /* Sorted by id (the configuration is in insertion order). */
    for (i = 1; i < n; i++) {
        struct consensus_server tmp = servers[i];
        unsigned j = i;
        while (j > 0 && servers[j - 1].id > tmp.id) {
            servers[j] = servers[j - 1];
            j--;
        }
        servers[j] = tmp;
    }
    for (i = 0; i < n && rv == 0; i++) {
        char addr[160] = "";
        json_t *node = json_object();

        buf_reset(&http);
        buf_reset(&region);
        if (storage_node_lookup(a->cfg.storage, servers[i].id, &http,
                                &region) != STORAGE_OK) {
            buf_reset(&region);
            if (api_node_http_addr(a, servers[i].id, addr, sizeof addr) != 0) {
                addr[0] = '\0';
            }
        } else {
            snprintf(addr, sizeof addr, "%s", http.base != NULL ? http.base : "");
        }
        if (node == NULL) {
            rv = -1;
            break;
        }
        rv |= json_object_set_new(node, "id", json_integer((json_int_t)servers[i].id));
        rv |= json_object_set_new(node, "raftAddress", json_string(servers[i].raft_addr));
        rv |= json_object_set_new(node, "httpAddress",
                                  addr[0] != '\0' ? json_string(addr) : json_null());
        rv |= json_object_set_new(node, "region",
                                  region.len > 0 ? json_stringn(region.base, region.len)
                                                 : json_null());
        rv |= json_object_set_new(node, "role", json_string(role_name(servers[i].role)));
        rv |= json_object_set_new(node, "reachable",
                                  servers[i].reachable < 0
                                      ? json_null()
                                      : json_boolean(servers[i].reachable));
        rv |= json_object_set_new(node, "leader",
                                  json_boolean(servers[i].id == info.leader_id));
        rv |= json_array_append_new(nodes, node);
    }
    buf_free(&http);
    buf_free(&region);
    rv |= json_object_set_new(doc, "nodes", nodes);
    text = rv == 0 ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    if (text == NULL) {
        return AE_INTERNAL;
    }
    api_respond(a, req, 200, NULL, text, strlen(text));
    free(text);
    return 0;
}

/* --- Self-registration -------------------------------------------------- */

static int directory_current(struct api *a)
{
    struct buf http = BUF_INIT, region = BUF_INIT;
    int ok;

    ok = storage_node_lookup(a->cfg.storage, a->cfg.node_id, &http, &region) ==
             STORAGE_OK &&
         a->cfg.http_addr != NULL && http.base != NULL &&
         strcmp(http.base, a->cfg.http_addr) == 0 && a->cfg.region != NULL &&
         region.base != NULL && strcmp(region.base, a->cfg.region) == 0;
    buf_free(&http);
    buf_free(&region);
    return ok;
}

static void reg_cb(struct client_request *creq, int status,
                   const struct client_response *resp)
{
    struct api *a = CONTAINER_OF(creq, struct api, reg_req);

    a->reg_inflight = 0;
    if (status == CLIENT_OK && resp->status == 201) {
        LOGI("registered with the cluster", NULL);
    } else if (status == CLIENT_OK) {
        LOGD("registration refused, will retry", " status=%d", resp->status);
    } else {
        LOGD("registration failed, will retry", " error=\"%s\"",
             client_strerror(status));
    }
}

static void reg_local_cb(struct consensus_propose *prop, int status,
                         const struct storage_result *res)
{
    (void)res;
    free(prop);
    (void)status;
}

void api_cluster_tick(struct api *a)
{
    struct consensus_info info;
    char addr[160];
    struct buf body = BUF_INIT;
    char headers[600];
    int addr_ok;
    int rv;

    if (a->closing || a->reg_inflight || a->cfg.http_addr == NULL) {
        return;
    }
    consensus_info(a->cfg.consensus, &info);
    if (directory_current(a) &&
        config_role(a, a->cfg.node_id, NULL, &addr_ok) == CONSENSUS_VOTER) {
        a->registered = 1;
        return;
    }
    a->registered = 0;
    if (info.is_leader) {
        /* Record our own directory entry directly. */
        struct consensus_propose *prop;
        struct cmd cmd;

        if (directory_current(a)) {
            return;
        }
        memset(&cmd, 0, sizeof cmd);
        cmd.op = CMD_NODE_INFO;
        cmd.ttl = -1;
        cmd.node_id = a->cfg.node_id;
        cmd.http_addr.base = a->cfg.http_addr;
        cmd.http_addr.len = (uint32_t)strlen(a->cfg.http_addr);
        cmd.region.base = a->cfg.region;
        cmd.region.len = (uint32_t)strlen(a->cfg.region);
        buf_reset(&a->scratch);
        prop = calloc(1, sizeof *prop);
        if (prop == NULL || cmd_encode(&cmd, &a->scratch) != 0) {
            free(prop);
            return;
        }
        prop->cb = reg_local_cb;
        if (consensus_propose(a->cfg.consensus, prop, a->scratch.base,
                              a->scratch.len) != CONSENSUS_OK) {
            free(prop);
        }
        return;
    }
    if (a->cluster_secret == NULL) {
        return;
    }
    if (info.leader_id != 0 &&
        api_node_http_addr(a, info.leader_id, addr, sizeof addr) == 0) {
        /* ask the leader */
    } else if (a->cfg.join_addr != NULL && strlen(a->cfg.join_addr) < sizeof addr) {
        strcpy(addr, a->cfg.join_addr);
    } else {
        return;
    }
    rv = buf_printf(&body,
                    "{\"id\":%llu,\"raftAddress\":", (unsigned long long)a->cfg.node_id);
    rv |= buf_append_json_string(&body, a->cfg.raft_addr, strlen(a->cfg.raft_addr));
    rv |= buf_append_str(&body, ",\"httpAddress\":");
    rv |= buf_append_json_string(&body, a->cfg.http_addr, strlen(a->cfg.http_addr));
    rv |= buf_append_str(&body, ",\"region\":");
    rv |= buf_append_json_string(&body, a->cfg.region, strlen(a->cfg.region));
    rv |= buf_append_char(&body, '}');
    if (rv != 0) {
        buf_free(&body);
        return;
    }
    snprintf(headers, sizeof headers,
             "X-Ctxd-Secret: %s\r\nContent-Type: application/json\r\n",
             a->cluster_secret);
    a->reg_req.data = a;
    a->reg_req.cb = reg_cb;
    if (client_send(a->client, &a->reg_req, addr, "POST", "/internal/v1/join",
                    headers, body.base, body.len, API_CHANGE_TIMEOUT_MS) ==
        CLIENT_OK) {
        a->reg_inflight = 1;
    }
    buf_free(&body);
}

int api_cluster_init(struct api *a)
{
    struct client_limits limits;

    client_limits_default(&limits);
    return client_init(&a->client, a->cfg.loop, &limits) == CLIENT_OK ? 0 : -1;
}
