/* Flags and environment variables, driven by one table: the name of the
 * flag, the variable, the kind of value, where it goes, its default and its
 * help line. A flag wins over its variable; both win over the default. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum opt_kind { OPT_STR, OPT_U64 };

struct opt
{
    const char *flag;   /* without the leading "--" */
    const char *env;    /* environment variable */
    enum opt_kind kind; /* value type */
    size_t offset;      /* field in struct config */
    const char *def;    /* default as text, NULL for none */
    uint64_t min, max;  /* OPT_U64 bounds */
    const char *help;   /* one line */
};

#define STR(field, flag, env, def, help) \
    {flag, env, OPT_STR, offsetof(struct config, field), def, 0, 0, help}
#define U64(field, flag, env, def, min, max, help) \
    {flag, env, OPT_U64, offsetof(struct config, field), def, min, max, help}

static const struct opt opts[] = {
    U64(id, "id", "CTXD_ID", "1", 1, UINT32_MAX, "this node's id"),
    STR(data_dir, "data-dir", "CTXD_DATA_DIR", "./ctxd-data",
        "directory for the Raft log, snapshots and the admin token"),
    STR(http_addr, "http-addr", "CTXD_HTTP_ADDR", "127.0.0.1:8080",
        "HOST:PORT the HTTP API listens on"),
    STR(raft_addr, "raft-addr", "CTXD_RAFT_ADDR", "127.0.0.1:9080",
        "HOST:PORT the Raft transport listens on"),
    STR(region, "region", "CTXD_REGION", "local", "region (zone) of this node"),
    STR(cluster, "cluster", "CTXD_CLUSTER", NULL,
        "initial members 1=RAFT@HTTP,2=RAFT@HTTP,... (default: this node alone)"),
    STR(join, "join", "CTXD_JOIN", NULL,
        "HTTP address of a member to ask for admission (new node, empty data dir)"),
    STR(restore, "restore", "CTXD_RESTORE", NULL,
        "backup file (GET /admin/v1/backup) to start a new cluster from: first "
        "start of its first node, empty data dir, no --join; see "
        "docs/operations.md"),
    STR(cluster_secret_file, "cluster-secret-file", "CTXD_CLUSTER_SECRET_FILE",
        NULL,
        "file holding the secret of internal calls between nodes "
        "(CTXD_CLUSTER_SECRET gives the secret itself; required with more "
        "than one node)"),
    STR(admin_token_file, "admin-token-file", "CTXD_ADMIN_TOKEN_FILE", NULL,
        "file holding the admin token (CTXD_ADMIN_TOKEN gives the token itself; "
        "default: generated into DATA_DIR/admin.token)"),
    STR(log_level, "log-level", "CTXD_LOG_LEVEL", "info",
        "debug | info | warn | error"),
    U64(max_body_bytes, "max-body-bytes", "CTXD_MAX_BODY_BYTES", "1048576", 1,
        64ull << 20, "largest request body (413 above)"),
    U64(max_header_bytes, "max-header-bytes", "CTXD_MAX_HEADER_BYTES", "16384",
        256, 1 << 20, "largest request line + headers (431 above)"),
    U64(max_connections, "max-connections", "CTXD_MAX_CONNECTIONS", "4096", 1,
        1 << 20, "open client connections; more are closed at once"),
    U64(max_pipeline, "max-pipeline", "CTXD_MAX_PIPELINE", "64", 1, 4096,
        "queued requests per connection before reading pauses"),
    U64(max_write_bytes, "max-write-bytes", "CTXD_MAX_WRITE_BYTES", "4194304",
        4096, 1ull << 32, "unsent response bytes per connection before reading pauses"),
    U64(request_timeout_ms, "request-timeout-ms", "CTXD_REQUEST_TIMEOUT_MS",
        "10000", 10, 3600000, "time to receive a whole request"),
    U64(idle_timeout_ms, "idle-timeout-ms", "CTXD_IDLE_TIMEOUT_MS", "60000", 10,
        86400000, "keep-alive idle time before the connection is closed"),
    U64(write_timeout_ms, "write-timeout-ms", "CTXD_WRITE_TIMEOUT_MS", "10000",
        10, 3600000, "time for a write to commit before 504 outcome_unknown"),
    U64(read_timeout_ms, "read-timeout-ms", "CTXD_READ_TIMEOUT_MS", "5000", 10,
        3600000, "time a read waits for its consistency condition before 504"),
    U64(max_pending, "max-pending", "CTXD_MAX_PENDING", "10000", 1, 1 << 24,
        "pending proposals before writes get 429"),
    U64(max_patch_properties, "max-patch-properties",
        "CTXD_MAX_PATCH_PROPERTIES", "1000", 1, 1000000,
        "properties in one PATCH (400 too_many_properties above)"),
    U64(snapshot_threshold, "snapshot-threshold", "CTXD_SNAPSHOT_THRESHOLD",
        "8192", 4, UINT32_MAX, "log entries between snapshots"),
    U64(snapshot_trailing, "snapshot-trailing", "CTXD_SNAPSHOT_TRAILING", "2048",
        0, UINT32_MAX, "log entries kept after a snapshot"),
    U64(install_snapshot_timeout_ms, "install-snapshot-timeout-ms",
        "CTXD_INSTALL_SNAPSHOT_TIMEOUT_MS", "5000", 100, 600000,
        "leader resends a snapshot a follower has not acknowledged after this"),
    U64(election_timeout_ms, "election-timeout-ms", "CTXD_ELECTION_TIMEOUT_MS",
        "1000", 50, 60000, "Raft election timeout"),
    U64(heartbeat_ms, "heartbeat-ms", "CTXD_HEARTBEAT_MS", "100", 10, 10000,
        "Raft heartbeat interval"),
    U64(purge_interval_ms, "purge-interval-ms", "CTXD_PURGE_INTERVAL_MS", "1000",
        10, 3600000, "how often the leader looks for expired properties"),
};

#define N_OPTS (sizeof opts / sizeof opts[0])

static void print_help(void)
{
    size_t i;

    printf("usage: ctxd [flags]\n\n"
           "A replicated context store serving the Maven Context Session Store "
           "API v1.\nWith no flags: a one-node cluster, data in ./ctxd-data, "
           "HTTP on 127.0.0.1:8080,\nRaft on 127.0.0.1:9080.\n\n"
           "Each flag is also an environment variable; the flag wins.\n\n");
    for (i = 0; i < N_OPTS; i++) {
        printf("  --%s %s\n      %s\n      env %s", opts[i].flag,
               opts[i].kind == OPT_U64 ? "N" : "VALUE", opts[i].help,
               opts[i].env);
        if (opts[i].def != NULL) {
            printf(", default %s", opts[i].def);
        }
        printf("\n");
    }
    printf("  --help\n      print this text\n\n"
           "  CTXD_ADMIN_TOKEN=TOKEN sets the admin token itself.\n"
           "  CTXD_CLUSTER_SECRET=SECRET sets the cluster secret itself.\n");
}

static int set_opt(struct config *cfg, const struct opt *o, const char *v,
                   char *errmsg, size_t errmsg_len)
{
    char *field = (char *)cfg + o->offset;

    if (o->kind == OPT_STR) {
        char **p = (char **)(void *)field;
        char *copy = strdup(v);
        if (copy == NULL) {
            snprintf(errmsg, errmsg_len, "out of memory");
            return -1;
        }
        free(*p);
        *p = copy;
        return 0;
    }
    {
        char *end;
        unsigned long long n;

        errno = 0;
        n = strtoull(v, &end, 10);
        if (*v == '\0' || *end != '\0' || errno != 0 || v[0] == '-' ||
            n < o->min || n > o->max) {
            snprintf(errmsg, errmsg_len,
                     "--%s: '%s' is not an integer in %llu..%llu", o->flag, v,
                     (unsigned long long)o->min, (unsigned long long)o->max);
            return -1;
        }
        *(uint64_t *)(void *)field = n;
    }
    return 0;
}

int config_parse_cluster(struct config *cfg, const char *spec, char *errmsg,
                         size_t errmsg_len)
{
    const char *p = spec;

    cfg->n_members = 0;
    while (*p != '\0') {
        const char *comma = strchr(p, ',');
        size_t len = comma != NULL ? (size_t)(comma - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        const char *at = eq != NULL ? memchr(eq, '@', len - (size_t)(eq - p)) : NULL;
        struct config_member *m;
        char idbuf[24];
        char *end;
        unsigned long long id;
        size_t raft_len, http_len;

        if (eq == NULL || at == NULL || (size_t)(eq - p) == 0 ||
            (size_t)(eq - p) >= sizeof idbuf) {
            snprintf(errmsg, errmsg_len,
                     "--cluster: expected ID=RAFT_ADDR@HTTP_ADDR, got '%.*s'",
                     (int)len, p);
            return -1;
        }
        if (cfg->n_members == CONFIG_MAX_MEMBERS) {
            snprintf(errmsg, errmsg_len, "--cluster: more than %d members",
                     CONFIG_MAX_MEMBERS);
            return -1;
        }
        memcpy(idbuf, p, (size_t)(eq - p));
        idbuf[eq - p] = '\0';
        errno = 0;
        id = strtoull(idbuf, &end, 10);
        raft_len = (size_t)(at - eq - 1);
        http_len = len - (size_t)(at - p) - 1;
        if (*end != '\0' || errno != 0 || id == 0 || id > UINT32_MAX ||
            idbuf[0] == '-' || raft_len == 0 || http_len == 0 ||
            raft_len >= sizeof m->raft_addr || http_len >= sizeof m->http_addr) {
            snprintf(errmsg, errmsg_len, "--cluster: bad member '%.*s'",
                     (int)len, p);
            return -1;
        }
        m = &cfg->members[cfg->n_members];
        for (unsigned i = 0; i < cfg->n_members; i++) {
            if (cfg->members[i].id == id) {
                snprintf(errmsg, errmsg_len, "--cluster: id %llu given twice", id);
                return -1;
            }
        }
        m->id = id;
        memcpy(m->raft_addr, eq + 1, raft_len);
        m->raft_addr[raft_len] = '\0';
        memcpy(m->http_addr, at + 1, http_len);
        m->http_addr[http_len] = '\0';
        cfg->n_members++;
        p += len;
        if (*p == ',') {
            p++;
        }
    }
    if (cfg->n_members == 0) {
        snprintf(errmsg, errmsg_len, "--cluster: no members");
        return -1;
    }
    return 0;
}

int config_parse(struct config *cfg, int argc, char **argv, char *errmsg,
                 size_t errmsg_len)
{
    size_t i;
    int k;

    memset(cfg, 0, sizeof *cfg);
    for (i = 0; i < N_OPTS; i++) {
        const char *v = getenv(opts[i].env);
        if (v == NULL) {
            v = opts[i].def;
        }
        if (v != NULL && set_opt(cfg, &opts[i], v, errmsg, errmsg_len) != 0) {
            if (getenv(opts[i].env) != NULL) {
                size_t n = strlen(errmsg);
                snprintf(errmsg + n, errmsg_len - n, " (from %s)", opts[i].env);
            }
            return -1;
        }
    }
    for (k = 1; k < argc; k++) {
        const char *arg = argv[k];
        const char *value = NULL;
        size_t name_len;

        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            print_help();
            return 1;
        }
        if (strncmp(arg, "--", 2) != 0) {
            snprintf(errmsg, errmsg_len, "unexpected argument '%s' (see --help)", arg);
            return -1;
        }
        arg += 2;
        name_len = strcspn(arg, "=");
        for (i = 0; i < N_OPTS; i++) {
            if (strlen(opts[i].flag) == name_len &&
                strncmp(opts[i].flag, arg, name_len) == 0) {
                break;
            }
        }
        if (i == N_OPTS) {
            snprintf(errmsg, errmsg_len, "unknown flag '--%.*s' (see --help)",
                     (int)name_len, arg);
            return -1;
        }
        if (arg[name_len] == '=') {
            value = arg + name_len + 1;
        } else if (k + 1 < argc) {
            value = argv[++k];
        } else {
            snprintf(errmsg, errmsg_len, "--%s needs a value", opts[i].flag);
            return -1;
        }
        if (set_opt(cfg, &opts[i], value, errmsg, errmsg_len) != 0) {
            return -1;
        }
    }
    if (cfg->cluster != NULL &&
        config_parse_cluster(cfg, cfg->cluster, errmsg, errmsg_len) != 0) {
        return -1;
    }
    return 0;
}

void config_free(struct config *cfg)
{
    size_t i;

    for (i = 0; i < N_OPTS; i++) {
        if (opts[i].kind == OPT_STR) {
            char **p = (char **)(void *)((char *)cfg + opts[i].offset);
            free(*p);
            *p = NULL;
        }
    }
}
