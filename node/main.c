/* ctxd: configuration, wiring, signals and graceful shutdown.
 *
 * Start-up order: config → data dir + lock → admin token → storage →
 * consensus (raft) → api → HTTP listener → signals → loop.
 *
 * Restore (--restore FILE, first start of the first node of a new cluster):
 * the file is read and validated (storage_restore into a scratch storage:
 * SQLite header, integrity, schema), the data dir must hold no Raft state,
 * and consensus starts from the image as its snapshot at the backup's
 * applied index instead of bootstrapping. The node starts alone; the others
 * join it empty (--join). Every start logs whether it is a first start, a
 * restart (Raft state found) or a restore.
 *
 * Shutdown (SIGINT/SIGTERM), each step in the previous one's callback:
 *   api_shutdown (new requests: 503) → http_server_stop (listener closed,
 *   connections closed once their last response is written; writes in
 *   flight complete or time out) → consensus_close (raft closed, anything
 *   still pending fails) → api_close → signal handles closed → the loop
 *   ends → consensus freed, storage closed → exit 0. A guard timer ends the process with
 *   status 1 if a stop takes longer than SHUTDOWN_GUARD_MS. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "../api/api.h"
#include "../api/http.h"
#include "../api/metrics.h"
#include "../consensus/consensus.h"
#include "../lib/crypto.h"
#include "../lib/log.h"
#include "../storage/storage.h"
#include "config.h"

#define SHUTDOWN_GUARD_MS 30000 /* longest graceful stop before exit(1) */
#define RESTORE_MAX_BYTES (64ull << 30) /* largest backup file read */
#define TOKEN_MAX 512           /* bytes of an admin token file */

struct node
{
    struct config cfg;           /* parsed flags (owned) */
    uv_loop_t *loop;             /* the one loop */
    int lock_fd;                 /* DATA_DIR/LOCK, held with flock */
    char admin_token[TOKEN_MAX]; /* the bearer token of admin routes */
    char cluster_secret[TOKEN_MAX]; /* internal calls; "" when none */
    struct api_member api_members[CONFIG_MAX_MEMBERS]; /* for the api */
    struct storage *storage;     /* the state machine (owned) */
    struct consensus *consensus; /* raft (owned) */
    struct api *api;             /* routes (owned) */
    struct http_server *http;    /* listener (owned) */
    uv_signal_t sigint, sigterm; /* shutdown triggers */
    uv_timer_t guard;            /* shutdown deadline */
    int stopping;                /* a signal was received */
    struct consensus_member members[CONFIG_MAX_MEMBERS]; /* for consensus */
    const char *restore_path;    /* --restore FILE (cfg.restore), or NULL */
    uv_prepare_t turn_watch;     /* measures each loop turn, see below */
    int turn_watch_on;           /* turn_watch is initialized */
    uint64_t turn_start_ns;      /* uv_hrtime at the previous prepare */
    uint64_t turn_idle_ns;       /* uv_metrics_idle_time then */
};

/* Loop turn time: the prepare callback runs just before the loop waits for
 * I/O, once per turn. Between two of them the loop waited (idle, counted
 * by libuv with UV_METRICS_IDLE_TIME) and ran callbacks; the rest is the
 * turn's busy time, the longest any event arriving in it could wait. */
static void turn_watch_cb(uv_prepare_t *h)
{
    struct node *n = h->data;
    uint64_t now = uv_hrtime();
    uint64_t idle = uv_metrics_idle_time(n->loop);
    uint64_t spent = now - n->turn_start_ns;
    uint64_t waited = idle - n->turn_idle_ns;

    if (n->turn_start_ns != 0 && spent >= waited) {
        metrics_loop_turn((double)(spent - waited) / 1e9);
    }
    n->turn_start_ns = now;
    n->turn_idle_ns = idle;
}

/* Start measuring turns; a failure only loses the metric. */
static void turn_watch_start(struct node *n)
{
    if (uv_loop_configure(n->loop, UV_METRICS_IDLE_TIME) != 0 ||
        uv_prepare_init(n->loop, &n->turn_watch) != 0) {
        LOGW("event loop turn metric unavailable", NULL);
        return;
    }
    n->turn_watch.data = n;
    n->turn_watch_on = 1;
    (void)uv_prepare_start(&n->turn_watch, turn_watch_cb);
    uv_unref((uv_handle_t *)&n->turn_watch); /* never keeps the loop alive */
}

/* 1 when dir has any entry (Raft state), 0 when empty or absent. */
static int dir_has_entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int found = 0;

    if (d == NULL) {
        return 0;
    }
    while (!found && (e = readdir(d)) != NULL) {
        found = strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    }
    closedir(d);
    return found;
}

/* Read the whole backup file into a malloc'd buffer. */
static int read_backup_file(const char *path, void **data, size_t *len)
{
    struct stat st;
    size_t got = 0;
    char *p;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    *data = NULL;
    *len = 0;
    if (fd < 0) {
        return -1;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0 ||
        (unsigned long long)st.st_size > RESTORE_MAX_BYTES) {
        close(fd);
        errno = EINVAL;
        return -1;
    }
    p = malloc((size_t)st.st_size);
    if (p == NULL) {
        close(fd);
        errno = ENOMEM;
        return -1;
    }
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, p + got, (size_t)st.st_size - got);

        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            free(p);
            close(fd);
            errno = r == 0 ? EINVAL : errno;
            return -1;
        }
        got += (size_t)r;
    }
    close(fd);
    *data = p;
    *len = got;
    return 0;
}

/* --restore: check the setting and the file; on success *data holds the
 * image (malloc'd) and *index its applied index. Each refusal is logged and
 * printed. */
static int restore_prepare(struct node *n, const char *raft_dir, void **data,
                           size_t *len, uint64_t *index)
{
    struct storage *scratch;
    const char *why = NULL;
    int rv;

    *data = NULL;
    if (n->cfg.join != NULL) {
        why = "--restore starts a new cluster: it cannot be used with --join";
    } else if (n->cfg.n_members > 1) {
        why = "--restore starts a one-node cluster: start the other nodes "
              "afterwards with --join (see docs/operations.md)";
    } else if (dir_has_entries(raft_dir)) {
        why = "the data dir already holds Raft state: --restore needs an "
              "empty data dir";
    }
    if (why == NULL && read_backup_file(n->restore_path, data, len) != 0) {
        LOGE("cannot read the backup file", " path=\"%s\" error=\"%s\"",
             n->restore_path, strerror(errno));
        fprintf(stderr, "ctxd: cannot read %s: %s\n", n->restore_path,
                strerror(errno));
        return -1;
    }
    if (why == NULL) {
        rv = storage_open(&scratch);
        if (rv == 0) {
            rv = storage_restore(scratch, *data, *len);
            *index = storage_applied_index(scratch);
            storage_close(scratch);
        }
        if (rv != 0) {
            why = "the file is not a valid ctxd backup (SQLite header, "
                  "integrity or schema check failed)";
        } else if (*index == 0) {
            why = "the backup holds no applied entry: nothing to restore";
        }
    }
    if (why != NULL) {
        LOGE("restore refused", " path=\"%s\" reason=\"%s\"",
             n->restore_path, why);
        fprintf(stderr, "ctxd: restore refused: %s\n", why);
        free(*data);
        *data = NULL;
        return -1;
    }
    return 0;
}

static int mkdir_p(const char *path, mode_t mode)
{
    char tmp[4096];
    size_t len = strlen(path);
    size_t i;

    if (len == 0 || len >= sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(tmp, path, len + 1);
    for (i = 1; i <= len; i++) {
        if (tmp[i] == '/' || tmp[i] == '\0') {
            char c = tmp[i];
            tmp[i] = '\0';
            if (mkdir(tmp, mode) != 0 && errno != EEXIST) {
                return -1;
            }
            tmp[i] = c;
        }
    }
    return 0;
}

/* Hold an exclusive lock on DATA_DIR/LOCK for the life of the process. */
static int lock_data_dir(struct node *n)
{
    char path[4200];

    snprintf(path, sizeof path, "%s/LOCK", n->cfg.data_dir);
    n->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (n->lock_fd < 0) {
        LOGE("cannot open lock file", " path=\"%s\" error=\"%s\"", path,
             strerror(errno));
        return -1;
    }
    if (flock(n->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        LOGE("data dir is in use by another ctxd process; refusing to start",
             " data_dir=\"%s\"", n->cfg.data_dir);
        fprintf(stderr,
                "ctxd: data dir %s is locked by another ctxd process\n",
                n->cfg.data_dir);
        close(n->lock_fd);
        n->lock_fd = -1;
        return -1;
    }
    return 0;
}

static int read_token_file(const char *path, char *out, size_t cap)
{
    FILE *f = fopen(path, "r");
    size_t len;

    if (f == NULL) {
        return -1;
    }
    len = fread(out, 1, cap - 1, f);
    fclose(f);
    out[len] = '\0';
    while (len > 0 && (out[len - 1] == '\n' || out[len - 1] == '\r' ||
                       out[len - 1] == ' ' || out[len - 1] == '\t')) {
        out[--len] = '\0';
    }
    return len > 0 ? 0 : -1;
}

/* The admin token: --admin-token-file, else CTXD_ADMIN_TOKEN, else
 * DATA_DIR/admin.token (created with a fresh random token, mode 0600). The
 * path is logged, never the token. */
static int load_admin_token(struct node *n)
{
    const char *env = getenv("CTXD_ADMIN_TOKEN");
    char path[4200];
    uint8_t raw[32];
    int fd;
    size_t len;

    if (n->cfg.admin_token_file != NULL) {
        if (read_token_file(n->cfg.admin_token_file, n->admin_token,
                            sizeof n->admin_token) != 0) {
            LOGE("cannot read admin token file", " path=\"%s\"",
                 n->cfg.admin_token_file);
            return -1;
        }
        LOGI("admin token loaded", " path=\"%s\"", n->cfg.admin_token_file);
        return 0;
    }
    if (env != NULL && env[0] != '\0') {
        if (strlen(env) >= sizeof n->admin_token) {
            LOGE("CTXD_ADMIN_TOKEN is too long", NULL);
            return -1;
        }
        strcpy(n->admin_token, env);
        LOGI("admin token taken from CTXD_ADMIN_TOKEN", NULL);
        return 0;
    }
    snprintf(path, sizeof path, "%s/admin.token", n->cfg.data_dir);
    if (read_token_file(path, n->admin_token, sizeof n->admin_token) == 0) {
        LOGI("admin token loaded", " path=\"%s\"", path);
        return 0;
    }
    if (random_bytes(raw, sizeof raw) != 0) {
        LOGE("cannot get random bytes for the admin token", NULL);
        return -1;
    }
    hex_encode(raw, sizeof raw, n->admin_token);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        LOGE("cannot write admin token", " path=\"%s\" error=\"%s\"", path,
             strerror(errno));
        return -1;
    }
    len = strlen(n->admin_token);
    if (fchmod(fd, 0600) != 0 || write(fd, n->admin_token, len) != (ssize_t)len ||
        write(fd, "\n", 1) != 1 || fsync(fd) != 0) {
        LOGE("cannot write admin token", " path=\"%s\" error=\"%s\"", path,
             strerror(errno));
        close(fd);
        return -1;
    }
    close(fd);
    LOGI("admin token generated", " path=\"%s\"", path);
    return 0;
}

/* The cluster secret: --cluster-secret-file, else CTXD_CLUSTER_SECRET.
 * Required when the cluster has (or will have) more than one node. */
static int load_cluster_secret(struct node *n)
{
    const char *env = getenv("CTXD_CLUSTER_SECRET");
    int needed = n->cfg.n_members > 1 || n->cfg.join != NULL;

    if (n->cfg.cluster_secret_file != NULL) {
        if (read_token_file(n->cfg.cluster_secret_file, n->cluster_secret,
                            sizeof n->cluster_secret) != 0) {
            LOGE("cannot read cluster secret file", " path=\"%s\"",
                 n->cfg.cluster_secret_file);
            return -1;
        }
    } else if (env != NULL && env[0] != '\0') {
        if (strlen(env) >= sizeof n->cluster_secret) {
            LOGE("CTXD_CLUSTER_SECRET is too long", NULL);
            return -1;
        }
        strcpy(n->cluster_secret, env);
    }
    if (needed && n->cluster_secret[0] == '\0') {
        LOGE("a cluster secret is required with more than one node: give "
             "--cluster-secret-file or CTXD_CLUSTER_SECRET", NULL);
        fprintf(stderr, "ctxd: a cluster secret is required with more than "
                        "one node (--cluster-secret-file or "
                        "CTXD_CLUSTER_SECRET)\n");
        return -2;
    }
    return 0;
}

/* --- Shutdown chain --------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h)
{
    (void)h;
}

static void on_consensus_closed(void *data)
{
    struct node *n = data;

    /* n->consensus is freed after the loop ends (consensus_free). */
    api_close(n->api);
    n->api = NULL;
    uv_close((uv_handle_t *)&n->sigint, on_handle_closed);
    uv_close((uv_handle_t *)&n->sigterm, on_handle_closed);
    uv_close((uv_handle_t *)&n->guard, on_handle_closed);
}

static void on_http_stopped(void *data)
{
    struct node *n = data;

    n->http = NULL;
    LOGI("http stopped", NULL);
    consensus_close(n->consensus, on_consensus_closed, n);
}

static void on_guard(uv_timer_t *t)
{
    (void)t;
    LOGE("graceful stop took too long; exiting", " limit_ms=%d",
         SHUTDOWN_GUARD_MS);
    _exit(1);
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct node *n = s->data;

    if (n->stopping) {
        return;
    }
    n->stopping = 1;
    LOGI("stopping", " signal=%s", signum == SIGINT ? "SIGINT" : "SIGTERM");
    uv_timer_start(&n->guard, on_guard, SHUTDOWN_GUARD_MS, 0);
    api_shutdown(n->api);
    http_server_stop(n->http, on_http_stopped, n);
}

/* --- Start ------------------------------------------------------------ */

static int start(struct node *n)
{
    struct consensus_config cc;
    struct api_config ac;
    struct http_limits limits;
    char raft_dir[4200];
    char errmsg[512];
    void *image = NULL;
    size_t image_len = 0;
    uint64_t image_index = 0;
    const char *kind;
    unsigned i;
    int rv;

    if (mkdir_p(n->cfg.data_dir, 0700) != 0) {
        LOGE("cannot create data dir", " data_dir=\"%s\" error=\"%s\"",
             n->cfg.data_dir, strerror(errno));
        return -1;
    }
    if (lock_data_dir(n) != 0 || load_admin_token(n) != 0) {
        return -1;
    }
    if ((rv = load_cluster_secret(n)) != 0) {
        return rv;
    }
    snprintf(raft_dir, sizeof raft_dir, "%s/raft", n->cfg.data_dir);
    if (mkdir_p(raft_dir, 0700) != 0) {
        LOGE("cannot create raft dir", " dir=\"%s\" error=\"%s\"", raft_dir,
             strerror(errno));
        return -1;
    }
    kind = dir_has_entries(raft_dir) ? "restart" : "first";
    if (n->restore_path != NULL) {
        if (restore_prepare(n, raft_dir, &image, &image_len, &image_index) !=
            0) {
            return -1;
        }
        kind = "restore";
    }
    if (storage_open(&n->storage) != 0) {
        LOGE("cannot open the state machine database", NULL);
        free(image);
        return -1;
    }

    memset(&cc, 0, sizeof cc);
    cc.loop = n->loop;
    cc.storage = n->storage;
    cc.id = n->cfg.id;
    cc.raft_addr = n->cfg.raft_addr;
    cc.data_dir = raft_dir;
    for (i = 0; i < n->cfg.n_members; i++) {
        n->members[i].id = n->cfg.members[i].id;
        n->members[i].raft_addr = n->cfg.members[i].raft_addr;
    }
    cc.members = n->members;
    cc.n_members = n->cfg.n_members;
    cc.election_timeout_ms = (unsigned)n->cfg.election_timeout_ms;
    cc.heartbeat_ms = (unsigned)n->cfg.heartbeat_ms;
    cc.snapshot_threshold = (unsigned)n->cfg.snapshot_threshold;
    cc.snapshot_trailing = (unsigned)n->cfg.snapshot_trailing;
    cc.max_pending = (unsigned)n->cfg.max_pending;
    cc.purge_interval_ms = (unsigned)n->cfg.purge_interval_ms;
    cc.join = n->cfg.join != NULL;
    cc.install_snapshot_timeout_ms = (unsigned)n->cfg.install_snapshot_timeout_ms;
    cc.initial_snapshot = image;
    cc.initial_snapshot_len = image_len;
    cc.initial_index = image_index;
    rv = consensus_start(&n->consensus, &cc, errmsg, sizeof errmsg);
    free(image);
    if (rv != 0) {
        LOGE("cannot start raft", " error=\"%s\"", errmsg);
        return -1;
    }
    if (n->restore_path != NULL) {
        LOGI("restored from backup", " path=\"%s\" index=%llu bytes=%zu",
             n->restore_path, (unsigned long long)image_index, image_len);
    }

    memset(&ac, 0, sizeof ac);
    ac.loop = n->loop;
    ac.node_id = n->cfg.id;
    ac.storage = n->storage;
    ac.consensus = n->consensus;
    ac.admin_token = n->admin_token;
    ac.write_timeout_ms = n->cfg.write_timeout_ms;
    ac.read_timeout_ms = n->cfg.read_timeout_ms;
    ac.max_patch_properties = (unsigned)n->cfg.max_patch_properties;
    ac.cluster_secret = n->cluster_secret[0] != '\0' ? n->cluster_secret : NULL;
    ac.http_addr = n->cfg.http_addr;
    ac.raft_addr = n->cfg.raft_addr;
    ac.region = n->cfg.region;
    ac.join_addr = n->cfg.join;
    for (i = 0; i < n->cfg.n_members; i++) {
        n->api_members[i].id = n->cfg.members[i].id;
        n->api_members[i].http_addr = n->cfg.members[i].http_addr;
    }
    ac.members = n->api_members;
    ac.n_members = n->cfg.n_members;
    if (api_init(&n->api, &ac) != 0) {
        LOGE("out of memory", NULL);
        return -1;
    }

    http_limits_default(&limits);
    limits.max_header_bytes = n->cfg.max_header_bytes;
    limits.max_body_bytes = n->cfg.max_body_bytes;
    limits.max_connections = (unsigned)n->cfg.max_connections;
    limits.max_pipeline = (unsigned)n->cfg.max_pipeline;
    limits.max_write_bytes = n->cfg.max_write_bytes;
    limits.request_timeout_ms = n->cfg.request_timeout_ms;
    limits.idle_timeout_ms = n->cfg.idle_timeout_ms;
    rv = http_server_start(&n->http, n->loop, n->cfg.http_addr, &limits,
                           api_handle, n->api, errmsg, sizeof errmsg);
    if (rv != 0) {
        LOGE("cannot start http", " error=\"%s\"", errmsg);
        return -1;
    }
    snprintf(errmsg, sizeof errmsg, "X-Context-Node: %llu\r\n",
             (unsigned long long)n->cfg.id);
    if (http_server_set_error_headers(n->http, errmsg) != 0) {
        LOGE("out of memory", NULL);
        return -1;
    }

    uv_signal_init(n->loop, &n->sigint);
    uv_signal_init(n->loop, &n->sigterm);
    uv_timer_init(n->loop, &n->guard);
    n->sigint.data = n;
    n->sigterm.data = n;
    uv_signal_start(&n->sigint, on_signal, SIGINT);
    uv_signal_start(&n->sigterm, on_signal, SIGTERM);
    LOGD("limits",
         " max_body_bytes=%llu max_header_bytes=%llu max_connections=%llu "
         "request_timeout_ms=%llu idle_timeout_ms=%llu max_pending=%llu "
         "snapshot_threshold=%llu election_timeout_ms=%llu heartbeat_ms=%llu",
         (unsigned long long)n->cfg.max_body_bytes,
         (unsigned long long)n->cfg.max_header_bytes,
         (unsigned long long)n->cfg.max_connections,
         (unsigned long long)n->cfg.request_timeout_ms,
         (unsigned long long)n->cfg.idle_timeout_ms,
         (unsigned long long)n->cfg.max_pending,
         (unsigned long long)n->cfg.snapshot_threshold,
         (unsigned long long)n->cfg.election_timeout_ms,
         (unsigned long long)n->cfg.heartbeat_ms);
    LOGI("ctxd started",
         " id=%llu http=%s raft=%s region=%s data_dir=\"%s\" members=%u "
         "start=%s",
         (unsigned long long)n->cfg.id, n->cfg.http_addr, n->cfg.raft_addr,
         n->cfg.region, n->cfg.data_dir,
         n->cfg.n_members == 0 ? 1 : n->cfg.n_members, kind);
    return 0;
}

int main(int argc, char **argv)
{
    static struct node node; /* static: zeroed, and large */
    struct node *n = &node;
    enum log_level level;
    char errmsg[512];
    int rv;

    signal(SIGPIPE, SIG_IGN);
    rv = config_parse(&n->cfg, argc, argv, errmsg, sizeof errmsg);
    if (rv != 0) {
        if (rv < 0) {
            fprintf(stderr, "ctxd: %s\n", errmsg);
        }
        config_free(&n->cfg);
        return rv > 0 ? 0 : 2;
    }
    n->restore_path = n->cfg.restore;
    if (n->restore_path != NULL && n->restore_path[0] == '\0') {
        fprintf(stderr, "ctxd: --restore (CTXD_RESTORE) needs a file\n");
        config_free(&n->cfg);
        return 2;
    }
    if (log_level_parse(n->cfg.log_level, &level) != 0) {
        fprintf(stderr, "ctxd: --log-level must be debug, info, warn or error\n");
        config_free(&n->cfg);
        return 2;
    }
    log_configure(level, n->cfg.id);
    n->lock_fd = -1;
    n->loop = uv_default_loop();
    turn_watch_start(n);

    rv = start(n);
    if (rv == 0) {
        uv_run(n->loop, UV_RUN_DEFAULT);
    } else {
        /* Partial start: unwind what is running (closes finish on the
         * loop), then exit non-zero. */
        if (n->http != NULL) {
            http_server_stop(n->http, NULL, NULL);
        }
        if (n->api != NULL) {
            api_close(n->api);
        }
        if (n->consensus != NULL) {
            consensus_close(n->consensus, NULL, NULL);
        }
        uv_run(n->loop, UV_RUN_DEFAULT);
    }
    if (n->turn_watch_on) {
        uv_close((uv_handle_t *)&n->turn_watch, NULL);
        uv_run(n->loop, UV_RUN_DEFAULT);
    }
    uv_loop_close(n->loop);
    consensus_free(n->consensus);
    n->consensus = NULL;
    if (n->storage != NULL) {
        storage_close(n->storage);
    }
    if (n->lock_fd >= 0) {
        close(n->lock_fd);
    }
    memset(n->admin_token, 0, sizeof n->admin_token);
    memset(n->cluster_secret, 0, sizeof n->cluster_secret);
    if (rv == 0) {
        LOGI("stopped", NULL);
    }
    config_free(&n->cfg);
    metrics_process_free();
    return rv == 0 ? 0 : rv == -2 ? 2 : 1;
}
