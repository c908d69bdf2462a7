/* Node configuration: command-line flags, each also an environment variable
 * CTXD_<FLAG> (flag wins), with the defaults of DESIGN.md §3. One table in
 * config.c drives parsing, defaults and --help. */
#ifndef CTXD_CONFIG_H
#define CTXD_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define CONFIG_MAX_MEMBERS 16

struct config_member
{
    uint64_t id;         /* raft id */
    char raft_addr[128]; /* host:port */
    char http_addr[128]; /* host:port */
};

struct config
{
    uint64_t id;                  /* --id */
    char *data_dir;               /* --data-dir */
    char *http_addr;              /* --http-addr */
    char *raft_addr;              /* --raft-addr */
    char *region;                 /* --region */
    char *cluster;                /* --cluster spec, NULL: this node alone */
    char *join;                   /* --join HTTP address of a member, NULL: none */
    char *restore;                /* --restore backup file, NULL: none */
    char *admin_token_file;       /* --admin-token-file, NULL: generated */
    char *cluster_secret_file;    /* --cluster-secret-file, NULL: none */
    char *log_level;              /* --log-level */
    uint64_t max_body_bytes;      /* --max-body-bytes */
    uint64_t max_header_bytes;    /* --max-header-bytes */
    uint64_t max_connections;     /* --max-connections */
    uint64_t max_pipeline;        /* --max-pipeline */
    uint64_t max_write_bytes;     /* --max-write-bytes */
    uint64_t request_timeout_ms;  /* --request-timeout-ms */
    uint64_t idle_timeout_ms;     /* --idle-timeout-ms */
    uint64_t write_timeout_ms;    /* --write-timeout-ms */
    uint64_t read_timeout_ms;     /* --read-timeout-ms */
    uint64_t max_pending;         /* --max-pending */
    uint64_t max_patch_properties; /* --max-patch-properties */
    uint64_t snapshot_threshold;  /* --snapshot-threshold */
    uint64_t snapshot_trailing;   /* --snapshot-trailing */
    uint64_t install_snapshot_timeout_ms; /* --install-snapshot-timeout-ms */
    uint64_t election_timeout_ms; /* --election-timeout-ms */
    uint64_t heartbeat_ms;        /* --heartbeat-ms */
    uint64_t purge_interval_ms;   /* --purge-interval-ms */
    struct config_member members[CONFIG_MAX_MEMBERS]; /* parsed --cluster */
    unsigned n_members;           /* 0 when --cluster is not given */
};

/* Parse argv and the environment (getenv) into cfg. Returns 0, 1 when
 * --help was asked (the help text was written to stdout), or -1 with a
 * one-line reason in errmsg. Strings in cfg are malloc'd: free them with
 * config_free. */
int config_parse(struct config *cfg, int argc, char **argv, char *errmsg,
                 size_t errmsg_len);
void config_free(struct config *cfg);

/* Parse a --cluster spec "1=RAFT@HTTP,2=RAFT@HTTP" into cfg->members.
 * Returns 0 or -1 with errmsg. */
int config_parse_cluster(struct config *cfg, const char *spec, char *errmsg,
                         size_t errmsg_len);

#endif
