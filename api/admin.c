/* Operator endpoints that need no routing state: health and readiness,
 * account keys, the state digest, backups and metrics. */
#include <stdlib.h>
#include <string.h>

#include "../lib/crypto.h"
#include "internal.h"

int api_handle_admin_key(struct api *a, struct http_request *req,
                            struct route *r)
{
    uint8_t raw[32];
    uint8_t hash[SHA256_LEN];
    char key[65];
    struct cmd cmd;
    struct buf body = BUF_INIT;

    if (!api_valid_account(r->where.acc.base, r->where.acc.len)) {
        return AE_BAD_NAME;
    }
    if (random_bytes(raw, sizeof raw) != 0) {
        return AE_INTERNAL;
    }
    hex_encode(raw, sizeof raw, key);
    sha256(key, 64, hash);
    memset(&cmd, 0, sizeof cmd);
    cmd.op = CMD_SET_KEY;
    cmd.ttl = -1;
    cmd.acc = r->where.acc;
    cmd.key_hash.base = (const char *)hash;
    cmd.key_hash.len = SHA256_LEN;
    if (buf_append_str(&body, "{\"accountId\":") != 0 ||
        buf_append_json_string(&body, r->where.acc.base, r->where.acc.len) != 0 ||
        buf_printf(&body, ",\"apiKey\":\"%s\"}", key) != 0) {
        buf_free(&body);
        return AE_INTERNAL;
    }
    {
        size_t len;
        char *p = buf_steal(&body, &len);
        api_propose(a, req, &cmd, 201, p, len);
    }
    memset(key, 0, sizeof key);
    memset(raw, 0, sizeof raw);
    return 0;
}

void api_handle_health(struct api *a, struct http_request *req,
                          enum route_id id)
{
    struct consensus_info info;
    static const char ok[] = "{\"status\":\"ok\"}";
    static const char ready[] = "{\"status\":\"ready\"}";

    if (id == R_HEALTHZ) {
        api_respond(a, req, 200, NULL, ok, sizeof ok - 1);
        return;
    }
    api_consensus_info(a, &info);
    if (a->closing || info.leader_id == 0 ||
        info.applied_index < info.commit_index) {
        struct buf body = BUF_INIT;
        const char *why = a->closing             ? "shutting down"
                          : info.leader_id == 0 ? "no known leader"
                                                : "catching up";
        if (buf_printf(&body, "{\"code\":\"not_ready\",\"message\":\"%s\"}",
                       why) != 0) {
            api_respond(a, req, 503, NULL, NULL, 0);
        } else {
            api_respond(a, req, 503, NULL, body.base, body.len);
        }
        buf_free(&body);
        return;
    }
    api_respond(a, req, 200, NULL, ready, sizeof ready - 1);
}

/* GET /admin/v1/digest: this node's applied index and state hash. */
int api_handle_digest(struct api *a, struct http_request *req)
{
    uint8_t digest[SHA256_LEN];
    char hex[2 * SHA256_LEN + 1];
    struct buf body = BUF_INIT;

    if (storage_digest(a->cfg.storage, digest) != STORAGE_OK) {
        return AE_INTERNAL;
    }
    hex_encode(digest, sizeof digest, hex);
    if (buf_printf(&body, "{\"node\":%llu,\"index\":%llu,\"sha256\":\"%s\"}",
                   (unsigned long long)a->cfg.node_id,
                   (unsigned long long)storage_applied_index(a->cfg.storage),
                   hex) != 0) {
        buf_free(&body);
        return AE_INTERNAL;
    }
    api_respond(a, req, 200, NULL, body.base, body.len);
    buf_free(&body);
    return 0;
}

/* GET /admin/v1/backup: the whole database as one SQLite file, taken at
 * one applied index (named in X-Context-Index). The copy is taken on the
 * loop in one step (sqlite3_serialize of the in-memory database), so it is
 * consistent by construction. */
int api_handle_backup(struct api *a, struct http_request *req)
{
    void *data = NULL;
    size_t len = 0;
    char extra[160];

    if (storage_snapshot(a->cfg.storage, &data, &len) != STORAGE_OK) {
        return AE_INTERNAL;
    }
    snprintf(extra, sizeof extra,
             "Content-Type: application/vnd.sqlite3\r\n"
             "Content-Disposition: attachment; filename=\"ctxd-backup.db\"\r\n"
             "X-Context-Index: %llu\r\n",
             (unsigned long long)storage_applied_index(a->cfg.storage));
    api_respond(a, req, 200, extra, data, len);
    free(data);
    return 0;
}

/* GET /metrics: Prometheus text exposition format 0.0.4. */
int api_handle_metrics(struct api *a, struct http_request *req)
{
    struct consensus_info info;
    struct storage_counts counts;
    struct buf body = BUF_INIT;
    int rv = 0;

    api_consensus_info(a, &info);
    if (storage_counts(a->cfg.storage, &counts) != STORAGE_OK) {
        return AE_INTERNAL;
    }
    rv |= buf_printf(&body,
                     "# HELP ctxd_raft_leader 1 when this node is the leader.\n"
                     "# TYPE ctxd_raft_leader gauge\n"
                     "ctxd_raft_leader %d\n"
                     "# HELP ctxd_raft_leader_id Id of the known leader, 0 when none.\n"
                     "# TYPE ctxd_raft_leader_id gauge\n"
                     "ctxd_raft_leader_id %llu\n"
                     "# HELP ctxd_raft_term Current Raft term.\n"
                     "# TYPE ctxd_raft_term gauge\n"
                     "ctxd_raft_term %llu\n"
                     "# HELP ctxd_raft_commit_index Highest index known committed.\n"
                     "# TYPE ctxd_raft_commit_index gauge\n"
                     "ctxd_raft_commit_index %llu\n"
                     "# HELP ctxd_raft_applied_index Highest index applied to the state.\n"
                     "# TYPE ctxd_raft_applied_index gauge\n"
                     "ctxd_raft_applied_index %llu\n"
                     "# HELP ctxd_raft_last_index Last index in the local log.\n"
                     "# TYPE ctxd_raft_last_index gauge\n"
                     "ctxd_raft_last_index %llu\n"
                     "# HELP ctxd_proposals_pending Proposals queued or in flight.\n"
                     "# TYPE ctxd_proposals_pending gauge\n"
                     "ctxd_proposals_pending %u\n",
                     info.is_leader, (unsigned long long)info.leader_id,
                     (unsigned long long)info.term,
                     (unsigned long long)info.commit_index,
                     (unsigned long long)info.applied_index,
                     (unsigned long long)info.last_index, info.pending);
    rv |= buf_printf(&body,
                     "# HELP ctxd_accounts Accounts with a key.\n"
                     "# TYPE ctxd_accounts gauge\n"
                     "ctxd_accounts %llu\n"
                     "# HELP ctxd_namespaces Namespaces.\n"
                     "# TYPE ctxd_namespaces gauge\n"
                     "ctxd_namespaces %llu\n"
                     "# HELP ctxd_sessions Sessions.\n"
                     "# TYPE ctxd_sessions gauge\n"
                     "ctxd_sessions %llu\n"
                     "# HELP ctxd_properties Stored properties.\n"
                     "# TYPE ctxd_properties gauge\n"
                     "ctxd_properties %llu\n"
                     "# HELP ctxd_purged_properties_total Properties removed by purges.\n"
                     "# TYPE ctxd_purged_properties_total counter\n"
                     "ctxd_purged_properties_total %llu\n"
                     "# HELP ctxd_api_pending Requests waiting for a commit or a read condition.\n"
                     "# TYPE ctxd_api_pending gauge\n"
                     "ctxd_api_pending %u\n",
                     (unsigned long long)counts.accounts,
                     (unsigned long long)counts.namespaces,
                     (unsigned long long)counts.sessions,
                     (unsigned long long)counts.properties,
                     (unsigned long long)counts.purged, a->pending);
    if (rv != 0) {
        buf_free(&body);
        return AE_INTERNAL;
    }
    api_respond(a, req, 200, "Content-Type: text/plain; version=0.0.4\r\n",
            body.base, body.len);
    buf_free(&body);
    return 0;
}
