/* Operator endpoints that need no routing state: health and readiness,
 * account keys, the state digest, backups and metrics. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../lib/crypto.h"
#include "../lib/log.h"
#include "internal.h"
#include "metrics.h"

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

/* The request line and metrics of a GET answered by a job after its
 * handler returned (api_respond's, which needs the api). */
static void job_log(uv_loop_t *loop, uint64_t start_ms, const char *route,
                    int status)
{
    uint64_t ms = uv_now(loop) - start_ms;

    metrics_api_request(route, "GET", status, (double)ms / 1000.0);
    LOGD("request",
         " method=GET route=\"%s\" status=%d duration_ms=%llu "
         "request_id=\"\"",
         route, status, (unsigned long long)ms);
}

/* The digest answer's body, or -1 on out of memory. */
static int digest_body(struct buf *body, uint64_t node_id, uint64_t index,
                       const uint8_t digest[SHA256_LEN])
{
    char hex[2 * SHA256_LEN + 1];

    hex_encode(digest, SHA256_LEN, hex);
    return buf_printf(body, "{\"node\":%llu,\"index\":%llu,\"sha256\":\"%s\"}",
                      (unsigned long long)node_id,
                      (unsigned long long)index, hex);
}

/* GET /admin/v1/digest and GET /admin/v1/backup are answered from the
 * bytes of a forked child (storage_digest_fork, storage_backup_fork):
 *
 *   fork (on the loop) ──▶ image_job_work (a libuv worker: read the
 *   child's bytes, reap it) ──▶ image_job_done (on the loop: answer)
 *
 * The child works on its copy-on-write view of the state at the fork, so
 * the answer is the state at the index the request found, and the loop
 * pays only the fork: hashing or serializing takes seconds at a million
 * properties. One job of each kind at a time per node (the read blocks one
 * of libuv's four worker threads, which libraft's disk writes share);
 * another request meanwhile gets 429 and retries. The job keeps the
 * storage (closed only after the loop has ended, which the work keeps
 * running), the loop and the request, never the api, which may be closed
 * meanwhile. */
struct image_job
{
    uv_work_t work;            /* reads the child's bytes */
    struct storage_image img;  /* the child, then done */
    void *data;                /* its bytes (malloc'd), or NULL */
    size_t len;                /* bytes at data */
    int rv;                    /* storage_image_read's result */
    struct storage *storage;   /* released in image_job_done */
    void (*release)(struct storage *s);  /* frees the kind's slot */
    void (*answer)(struct image_job *j); /* answers req; may take data */
    uint64_t node_id;          /* this node */
    uint64_t index;            /* applied index at the fork */
    uv_loop_t *loop;           /* the api's loop */
    struct http_request *req;  /* answered in image_job_done */
    char node_header[64];      /* copy of the api's X-Context-Node line */
    uint64_t start_ms;         /* the request's start (uv_now) */
};

static void image_job_work(uv_work_t *w)
{
    struct image_job *j = w->data;

    j->rv = storage_image_read(&j->img, &j->data, &j->len);
}

static void image_job_done(uv_work_t *w, int status)
{
    struct image_job *j = w->data;

    if (status != 0) {
        /* The work never ran (cancelled): end the child here. */
        storage_image_discard(&j->img);
        j->rv = STORAGE_EINTERNAL;
    }
    j->release(j->storage);
    j->answer(j);
    free(j->data);
    free(j);
}

/* Fork the job's child and queue the read; 0, or an AE_* code. */
static int image_job_start(struct api *a, struct http_request *req,
                           int (*fork_fn)(struct storage *s,
                                          struct storage_image *img),
                           void (*release)(struct storage *s),
                           void (*answer)(struct image_job *j),
                           const char *busy_message)
{
    struct image_job *j = calloc(1, sizeof *j);
    int rv;

    if (j == NULL) {
        return AE_INTERNAL;
    }
    j->index = storage_applied_index(a->cfg.storage);
    rv = fork_fn(a->cfg.storage, &j->img);
    if (rv != STORAGE_OK) {
        free(j);
        if (rv == STORAGE_EBUSY) {
            api_respond_error(a, req, AE_OVERLOADED, busy_message);
            return 0;
        }
        return AE_INTERNAL;
    }
    j->work.data = j;
    j->storage = a->cfg.storage;
    j->release = release;
    j->answer = answer;
    j->node_id = a->cfg.node_id;
    j->loop = a->cfg.loop;
    j->req = req;
    j->start_ms = req->start_ms;
    snprintf(j->node_header, sizeof j->node_header, "%s", a->node_header);
    if (uv_queue_work(a->cfg.loop, &j->work, image_job_work,
                      image_job_done) != 0) {
        storage_image_discard(&j->img);
        release(a->cfg.storage);
        free(j);
        return AE_INTERNAL;
    }
    return 0;
}

/* A job that failed: 500, logged with its route. */
static void image_job_fail(struct image_job *j, const char *route,
                           const char *what)
{
    LOGW("admin job failed", " route=\"%s\" err=\"%s\"", route,
         storage_strerror(j->rv));
    job_log(j->loop, j->start_ms, route, 500);
    metrics_api_error("internal", 500);
    http_respond_error(j->req, 500, j->node_header, "internal", what);
}

/* GET /admin/v1/digest: this node's applied index and state hash. */
static void digest_answer(struct image_job *j)
{
    struct buf body = BUF_INIT;

    if (j->rv == 0 && j->len == SHA256_LEN &&
        digest_body(&body, j->node_id, j->index, j->data) == 0) {
        job_log(j->loop, j->start_ms, "/admin/v1/digest", 200);
        http_respond(j->req, 200, j->node_header, body.base, body.len);
    } else {
        image_job_fail(j, "/admin/v1/digest", "digest failed");
    }
    buf_free(&body);
}

int api_handle_digest(struct api *a, struct http_request *req)
{
    uint8_t digest[SHA256_LEN];
    struct buf body = BUF_INIT;

    if (a->cfg.loop != NULL) {
        return image_job_start(a, req, storage_digest_fork,
                               storage_digest_release, digest_answer,
                               "another digest is in progress, retry");
    }
    /* No loop to wait on (offline requests): hash here. */
    if (storage_digest(a->cfg.storage, digest) != STORAGE_OK ||
        digest_body(&body, a->cfg.node_id,
                    storage_applied_index(a->cfg.storage), digest) != 0) {
        buf_free(&body);
        return AE_INTERNAL;
    }
    api_respond(a, req, 200, NULL, body.base, body.len);
    buf_free(&body);
    return 0;
}

/* GET /admin/v1/backup: the whole database as one SQLite file at one
 * applied index (named in X-Context-Index), without stopping the node. The
 * file is written to the client from the one buffer the worker read, in
 * HTTP_BODY_CHUNK writes (http_respond_owned), and freed after. */
static void backup_answer(struct image_job *j)
{
    char extra[256];

    if (j->rv != 0) {
        image_job_fail(j, "/admin/v1/backup", "backup failed");
        return;
    }
    snprintf(extra, sizeof extra,
             "%sContent-Type: application/vnd.sqlite3\r\n"
             "Content-Disposition: attachment; "
             "filename=\"ctxd-backup.db\"\r\n"
             "X-Context-Index: %llu\r\n",
             j->node_header, (unsigned long long)j->index);
    LOGI("backup taken", " index=%llu bytes=%zu duration_ms=%llu",
         (unsigned long long)j->index, j->len,
         (unsigned long long)(uv_now(j->loop) - j->start_ms));
    job_log(j->loop, j->start_ms, "/admin/v1/backup", 200);
    http_respond_owned(j->req, 200, extra, j->data, j->len, free, j->data);
    j->data = NULL; /* the body's now */
}

int api_handle_backup(struct api *a, struct http_request *req)
{
    if (a->cfg.loop == NULL) {
        return AE_INTERNAL;
    }
    return image_job_start(a, req, storage_backup_fork,
                           storage_backup_release, backup_answer,
                           "another backup is in progress, retry");
}

/* Resident set size from /proc/self/statm (pages), 0 when unknown. */
static double process_rss_bytes(void)
{
    unsigned long long size = 0;
    unsigned long long resident = 0;
    long page = sysconf(_SC_PAGESIZE);
    FILE *f = fopen("/proc/self/statm", "r");

    if (f == NULL) {
        return 0;
    }
    if (fscanf(f, "%llu %llu", &size, &resident) != 2) {
        resident = 0;
    }
    fclose(f);
    return page > 0 ? (double)resident * (double)page : 0;
}

/* Entries of /proc/self/fd, without the one opendir holds; 0 when
 * unknown. */
static double process_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    double n = 0;

    if (d == NULL) {
        return 0;
    }
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.') {
            n++;
        }
    }
    closedir(d);
    return n > 0 ? n - 1 : 0;
}

/* Set the unlabelled series of family name (registered by metrics.c). */
static void gauge_set(struct metrics *m, const char *name, double v)
{
    struct metrics_family *f = metrics_family_find(m, name);

    if (f != NULL) {
        metrics_set(metrics_series_get(f, NULL), v);
    }
}

/* Counters kept elsewhere (consensus, storage) are copied in at scrape
 * time: set, as a gauge would be, since they only grow at their source. */
static void counter_copy(struct metrics *m, const char *name, uint64_t v)
{
    struct metrics_family *f = metrics_family_find(m, name);
    struct metrics_series *s;

    if (f != NULL && (s = metrics_series_get(f, NULL)) != NULL) {
        metrics_add(s, (double)v - metrics_value(s));
    }
}

/* The Raft role as one gauge per state, 1 for the current one. */
static void raft_state_set(struct metrics *m, const char *role)
{
    static const char *const states[] = {"follower", "candidate", "leader",
                                         "unavailable"};
    struct metrics_family *f = metrics_family_find(m, "ctxd_raft_state");
    size_t i;

    if (f == NULL) {
        return;
    }
    for (i = 0; i < sizeof states / sizeof states[0]; i++) {
        const char *values[1];

        values[0] = states[i];
        metrics_set(metrics_series_get(f, values),
                    role != NULL && strcmp(role, states[i]) == 0 ? 1 : 0);
    }
}

/* A scrape costs the loop about a millisecond (every series formatted,
 * /proc read) and needs no key, so it is rate limited: a token bucket of
 * API_METRICS_BURST scrapes refilled at API_METRICS_PER_S per second. A
 * monitoring system scrapes every few seconds at most; a client pipelining
 * scrapes to stall the node gets 429. */
static int metrics_admit(struct api *a)
{
    uint64_t now = uv_now(a->cfg.loop);
    double refill = (double)(now - a->metrics_at) * API_METRICS_PER_S / 1000.0;

    a->metrics_at = now;
    a->metrics_tokens += refill;
    if (a->metrics_tokens > API_METRICS_BURST) {
        a->metrics_tokens = API_METRICS_BURST;
    }
    if (a->metrics_tokens < 1.0) {
        return 0;
    }
    a->metrics_tokens -= 1.0;
    return 1;
}

/* The costly scrape-time values: database size, RSS and open descriptors
 * (a /proc directory walk, one entry per connection). Taken at most once
 * per METRICS_STATE_MS and reused in between; one node per process, so one
 * cache. Row counts are kept by storage as rows change (storage_counts),
 * so every scrape has the current ones. */
#define METRICS_STATE_MS 1000 /* ms a taken value is reused */

static struct
{
    int valid;                    /* taken at least once */
    uint64_t at_ms;               /* api_wall_ms() when taken */
    double db_bytes;              /* storage_db_bytes */
    double rss;                   /* process_rss_bytes */
    double fds;                   /* process_open_fds */
} state_cache;

/* Refresh state_cache when older than METRICS_STATE_MS. */
static void state_cache_update(struct api *a)
{
    uint64_t now = api_wall_ms();

    if (state_cache.valid && now >= state_cache.at_ms &&
        now - state_cache.at_ms < METRICS_STATE_MS) {
        return;
    }
    state_cache.db_bytes = (double)storage_db_bytes(a->cfg.storage);
    state_cache.rss = process_rss_bytes();
    state_cache.fds = process_open_fds();
    state_cache.at_ms = now;
    state_cache.valid = 1;
}

/* GET /metrics: Prometheus text exposition format 0.0.4. The scrape-time
 * values (raft, state, process) are copied into the process registry, then
 * the whole registry is written. */
int api_handle_metrics(struct api *a, struct http_request *req)
{
    struct consensus_info info;
    struct storage_counts counts;
    struct metrics *m = metrics_process();
    struct buf body = BUF_INIT;
    uint64_t reads_cached;
    uint64_t reads;

    if (m == NULL) {
        return AE_INTERNAL;
    }
    if (!metrics_admit(a)) {
        return AE_SCRAPES;
    }
    api_consensus_info(a, &info);
    state_cache_update(a);
    storage_counts(a->cfg.storage, &counts);
    gauge_set(m, "ctxd_raft_leader", info.is_leader ? 1 : 0);
    gauge_set(m, "ctxd_raft_leader_id", (double)info.leader_id);
    gauge_set(m, "ctxd_raft_term", (double)info.term);
    gauge_set(m, "ctxd_raft_commit_index", (double)info.commit_index);
    gauge_set(m, "ctxd_raft_applied_index", (double)info.applied_index);
    gauge_set(m, "ctxd_raft_last_index", (double)info.last_index);
    gauge_set(m, "ctxd_raft_proposals_pending", info.pending);
    raft_state_set(m, info.role);
    counter_copy(m, "ctxd_raft_elections_total", info.elections);
    counter_copy(m, "ctxd_raft_leader_changes_total", info.leader_changes);
    counter_copy(m, "ctxd_raft_barriers_total", info.barriers);
    counter_copy(m, "ctxd_raft_barrier_reads_total", info.barrier_reads);
    gauge_set(m, "ctxd_raft_reads_per_barrier",
              info.barriers > 0
                  ? (double)info.barrier_reads / (double)info.barriers
                  : 0);
    counter_copy(m, "ctxd_raft_snapshots_taken_total", info.snapshots_taken);
    counter_copy(m, "ctxd_raft_snapshots_installed_total",
                 info.snapshots_installed);
    counter_copy(m, "ctxd_raft_entries_total", info.entries);
    counter_copy(m, "ctxd_raft_commands_total", info.commands);
    gauge_set(m, "ctxd_raft_commands_per_entry",
              info.entries > 0 ? (double)info.commands / (double)info.entries
                               : 0);
    gauge_set(m, "ctxd_api_pending", a->pending);
    gauge_set(m, "ctxd_accounts", (double)counts.accounts);
    gauge_set(m, "ctxd_namespaces", (double)counts.namespaces);
    gauge_set(m, "ctxd_sessions", (double)counts.sessions);
    gauge_set(m, "ctxd_properties", (double)counts.properties);
    counter_copy(m, "ctxd_purged_properties_total", counts.purged);
    reads = storage_prop_reads(a->cfg.storage, &reads_cached);
    counter_copy(m, "ctxd_property_reads_total", reads);
    counter_copy(m, "ctxd_property_reads_cached_total", reads_cached);
    gauge_set(m, "ctxd_database_bytes", state_cache.db_bytes);
    gauge_set(m, "process_resident_memory_bytes", state_cache.rss);
    gauge_set(m, "process_open_fds", state_cache.fds);
    if (metrics_write(m, &body) != METRICS_OK) {
        buf_free(&body);
        return AE_INTERNAL;
    }
    api_respond(a, req, 200, "Content-Type: text/plain; version=0.0.4\r\n",
                body.base, body.len);
    buf_free(&body);
    return 0;
}
