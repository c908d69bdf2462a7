/* Metrics registry and the Prometheus text format 0.0.4 writer (see
 * metrics.h), and the process registry that holds ctxd's own metrics.
 *
 * Layout: a registry is a list of families in registration order; a family
 * keeps its series in creation order (the output order) and in a small
 * chained hash table keyed by the label values, so finding the series of a
 * request costs one hash of a few short strings. A series is one
 * allocation: the struct, then the bucket counts of a histogram, then the
 * label values, NUL-terminated one after the other, then its label block
 * as written ('l1="v1",l2="v2"', escaped), so that writing a sample is a
 * few appends and no printf: /metrics stays cheap enough to be scraped
 * often, even pipelined by an abusive client, without starving the loop.
 *
 * Invariants:
 *   - A histogram series has n_buckets + 1 counts; counts[i] is the number
 *     of observations v <= bounds[i] that were above bounds[i - 1] (not
 *     cumulative: the writer sums them), counts[n_buckets] those above the
 *     last bound (and NaN). count is their total.
 *   - Nothing here allocates after a series exists: recording never fails. */
#include "metrics.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define METRICS_HASH_SLOTS 64 /* hash chains per family */

struct metrics_series
{
    struct metrics_series *next;      /* creation order (output order) */
    struct metrics_series *hash_next; /* same hash slot */
    const struct metrics_family *family; /* owner */
    uint64_t hash;                    /* of the label values */
    const char *values[METRICS_MAX_LABELS]; /* point into this allocation */
    const char *block;                /* escaped label pairs, "" when none
                                         (this allocation) */
    size_t block_len;                 /* bytes of block */
    double value;                     /* counter or gauge value */
    double sum;                       /* histogram: sum of observations */
    uint64_t count;                   /* histogram: observations */
    uint64_t *counts;                 /* histogram: n_buckets + 1 per-bucket
                                         counts (this allocation), or NULL */
};

struct metrics_family
{
    struct metrics_family *next;      /* registration order */
    char *name;                       /* owned */
    char *help;                       /* owned */
    enum metrics_type type;           /* counter, gauge or histogram */
    unsigned n_labels;                /* label names used */
    char *labels[METRICS_MAX_LABELS]; /* owned */
    unsigned n_buckets;               /* histogram bounds, +Inf aside */
    double bounds[METRICS_MAX_BUCKETS]; /* strictly increasing */
    char bound_text[METRICS_MAX_BUCKETS][32]; /* bounds as written */
    struct metrics_series *head;      /* series, creation order */
    struct metrics_series *tail;      /* last created */
    struct metrics_series *slots[METRICS_HASH_SLOTS]; /* hash chains */
    struct metrics_series *last;      /* returned by the last lookup */
};

struct metrics
{
    struct metrics_family *head; /* families, registration order */
    struct metrics_family *tail; /* last registered */
};

/******************************************************************************
 * Registry
 *****************************************************************************/

int metrics_new(struct metrics **out)
{
    *out = calloc(1, sizeof **out);
    return *out != NULL ? METRICS_OK : METRICS_ENOMEM;
}

static void family_free(struct metrics_family *f)
{
    struct metrics_series *s = f->head;
    unsigned i;

    while (s != NULL) {
        struct metrics_series *next = s->next;

        free(s);
        s = next;
    }
    for (i = 0; i < f->n_labels; i++) {
        free(f->labels[i]);
    }
    free(f->name);
    free(f->help);
    free(f);
}

void metrics_free(struct metrics *m)
{
    struct metrics_family *f;

    if (m == NULL) {
        return;
    }
    f = m->head;
    while (f != NULL) {
        struct metrics_family *next = f->next;

        family_free(f);
        f = next;
    }
    free(m);
}

static int is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* [a-zA-Z_:][a-zA-Z0-9_:]* */
static int valid_metric_name(const char *s)
{
    size_t i;

    if (s == NULL || s[0] == '\0' || !(is_alpha(s[0]) || s[0] == ':')) {
        return 0;
    }
    for (i = 1; s[i] != '\0'; i++) {
        if (!(is_alpha(s[i]) || is_digit(s[i]) || s[i] == ':')) {
            return 0;
        }
    }
    return 1;
}

/* [a-zA-Z_][a-zA-Z0-9_]*, not reserved ("__" prefix). */
static int valid_label_name(const char *s)
{
    size_t i;

    if (s == NULL || !is_alpha(s[0]) || strncmp(s, "__", 2) == 0) {
        return 0;
    }
    for (i = 1; s[i] != '\0'; i++) {
        if (!(is_alpha(s[i]) || is_digit(s[i]))) {
            return 0;
        }
    }
    return 1;
}

struct metrics_family *metrics_family_find(struct metrics *m, const char *name)
{
    struct metrics_family *f;

    for (f = m->head; f != NULL; f = f->next) {
        if (strcmp(f->name, name) == 0) {
            return f;
        }
    }
    return NULL;
}

static int family_check(struct metrics *m, const char *name, const char *help,
                        enum metrics_type type, const char *const *labels,
                        unsigned n_labels, const double *buckets,
                        unsigned n_buckets)
{
    unsigned i;

    if (!valid_metric_name(name) || help == NULL ||
        metrics_family_find(m, name) != NULL ||
        n_labels > METRICS_MAX_LABELS || (n_labels > 0 && labels == NULL) ||
        (type != METRICS_COUNTER && type != METRICS_GAUGE &&
         type != METRICS_HISTOGRAM)) {
        return METRICS_EINVAL;
    }
    for (i = 0; i < n_labels; i++) {
        if (!valid_label_name(labels[i]) ||
            (type == METRICS_HISTOGRAM && strcmp(labels[i], "le") == 0)) {
            return METRICS_EINVAL;
        }
    }
    if (type != METRICS_HISTOGRAM) {
        return n_buckets == 0 ? METRICS_OK : METRICS_EINVAL;
    }
    if (n_buckets == 0 || n_buckets > METRICS_MAX_BUCKETS || buckets == NULL) {
        return METRICS_EINVAL;
    }
    for (i = 0; i < n_buckets; i++) {
        if (!isfinite(buckets[i]) || (i > 0 && buckets[i] <= buckets[i - 1])) {
            return METRICS_EINVAL;
        }
    }
    return METRICS_OK;
}

int metrics_family_add(struct metrics *m, const char *name, const char *help,
                       enum metrics_type type, const char *const *labels,
                       unsigned n_labels, const double *buckets,
                       unsigned n_buckets, struct metrics_family **out)
{
    struct metrics_family *f;
    unsigned i;
    int rv;

    if (out != NULL) {
        *out = NULL;
    }
    rv = family_check(m, name, help, type, labels, n_labels, buckets,
                      n_buckets);
    if (rv != METRICS_OK) {
        return rv;
    }
    f = calloc(1, sizeof *f);
    if (f == NULL) {
        return METRICS_ENOMEM;
    }
    f->type = type;
    f->name = strdup(name);
    f->help = strdup(help);
    if (f->name == NULL || f->help == NULL) {
        goto err_after_alloc;
    }
    for (i = 0; i < n_labels; i++) {
        f->labels[i] = strdup(labels[i]);
        if (f->labels[i] == NULL) {
            goto err_after_alloc;
        }
        f->n_labels = i + 1;
    }
    f->n_buckets = n_buckets;
    for (i = 0; i < n_buckets; i++) {
        struct buf text = BUF_INIT;

        f->bounds[i] = buckets[i];
        if (metrics_format_value(&text, buckets[i]) != METRICS_OK ||
            text.len >= sizeof f->bound_text[i]) {
            buf_free(&text);
            goto err_after_alloc;
        }
        memcpy(f->bound_text[i], text.base, text.len + 1);
        buf_free(&text);
    }
    if (m->tail != NULL) {
        m->tail->next = f;
    } else {
        m->head = f;
    }
    m->tail = f;
    if (out != NULL) {
        *out = f;
    }
    return METRICS_OK;

err_after_alloc:
    family_free(f);
    return METRICS_ENOMEM;
}

/******************************************************************************
 * Series
 *****************************************************************************/

/* FNV-1a over the values, each with its terminating NUL. */
static uint64_t values_hash(const char *const *values, unsigned n)
{
    uint64_t h = 14695981039346656037ull;
    unsigned i;

    for (i = 0; i < n; i++) {
        const unsigned char *p = (const unsigned char *)values[i];

        do {
            h ^= *p;
            h *= 1099511628211ull;
        } while (*p++ != '\0');
    }
    return h;
}

static int values_equal(const struct metrics_series *s,
                        const char *const *values, unsigned n)
{
    unsigned i;

    for (i = 0; i < n; i++) {
        if (strcmp(s->values[i], values[i]) != 0) {
            return 0;
        }
    }
    return 1;
}

struct metrics_series *metrics_series_get(struct metrics_family *f,
                                          const char *const *values)
{
    static const char *const none[1] = {""};
    struct metrics_series *s;
    struct buf block = BUF_INIT;
    size_t lens[METRICS_MAX_LABELS];
    size_t size;
    size_t counts_size = 0;
    uint64_t h;
    unsigned slot;
    unsigned i;
    char *p;

    if (f->n_labels == 0) {
        values = none;
    }
    /* Most requests in a row share their labels: compare with the last
     * series found before hashing. */
    if (f->last != NULL && values_equal(f->last, values, f->n_labels)) {
        return f->last;
    }
    h = values_hash(values, f->n_labels);
    slot = (unsigned)(h % METRICS_HASH_SLOTS);
    for (s = f->slots[slot]; s != NULL; s = s->hash_next) {
        if (s->hash == h && values_equal(s, values, f->n_labels)) {
            f->last = s;
            return s;
        }
    }
    size = sizeof *s;
    if (f->type == METRICS_HISTOGRAM) {
        counts_size = (f->n_buckets + 1) * sizeof(uint64_t);
        size += counts_size;
    }
    for (i = 0; i < f->n_labels; i++) {
        lens[i] = strlen(values[i]);
        size += lens[i] + 1;
        if ((i > 0 && buf_append_char(&block, ',') != 0) ||
            buf_append_str(&block, f->labels[i]) != 0 ||
            buf_append(&block, "=\"", 2) != 0 ||
            metrics_escape_label(&block, values[i], lens[i]) != METRICS_OK ||
            buf_append_char(&block, '"') != 0) {
            buf_free(&block);
            return NULL;
        }
    }
    size += block.len + 1;
    s = calloc(1, size);
    if (s == NULL) {
        buf_free(&block);
        return NULL;
    }
    s->hash = h;
    s->family = f;
    p = (char *)(s + 1);
    if (counts_size > 0) {
        s->counts = (uint64_t *)(void *)p;
        p += counts_size;
    }
    for (i = 0; i < f->n_labels; i++) {
        memcpy(p, values[i], lens[i] + 1);
        s->values[i] = p;
        p += lens[i] + 1;
    }
    if (block.len > 0) {
        memcpy(p, block.base, block.len);
    }
    p[block.len] = '\0';
    s->block = p;
    s->block_len = block.len;
    buf_free(&block);
    s->hash_next = f->slots[slot];
    f->slots[slot] = s;
    if (f->tail != NULL) {
        f->tail->next = s;
    } else {
        f->head = s;
    }
    f->tail = s;
    f->last = s;
    return s;
}

void metrics_add(struct metrics_series *s, double v)
{
    if (s == NULL || s->counts != NULL ||
        (s->family->type == METRICS_COUNTER && !(v >= 0))) {
        return;
    }
    s->value += v;
}

void metrics_set(struct metrics_series *s, double v)
{
    if (s == NULL || s->family->type != METRICS_GAUGE) {
        return;
    }
    s->value = v;
}

void metrics_observe(struct metrics_series *s, double v)
{
    const struct metrics_family *f;
    unsigned i = 0;

    if (s == NULL || s->counts == NULL) {
        return;
    }
    f = s->family;
    if (!isnan(v)) {
        while (i < f->n_buckets && v > f->bounds[i]) {
            i++;
        }
    } else {
        i = f->n_buckets;
    }
    s->counts[i]++;
    s->count++;
    s->sum += v;
}

double metrics_value(const struct metrics_series *s)
{
    if (s == NULL) {
        return 0;
    }
    return s->counts != NULL ? (double)s->count : s->value;
}

/******************************************************************************
 * Writer
 *****************************************************************************/

int metrics_escape_label(struct buf *out, const char *s, size_t n)
{
    size_t start = 0;
    size_t i;
    int rv = 0;

    /* Runs without a special byte are appended whole. */
    for (i = 0; i < n && rv == 0; i++) {
        const char *esc = s[i] == '\\'  ? "\\\\"
                          : s[i] == '"'  ? "\\\""
                          : s[i] == '\n' ? "\\n"
                                         : NULL;

        if (esc != NULL) {
            rv = buf_append(out, s + start, i - start);
            rv |= buf_append(out, esc, 2);
            start = i + 1;
        }
    }
    if (rv == 0) {
        rv = buf_append(out, s + start, n - start);
    }
    return rv == 0 ? METRICS_OK : METRICS_ENOMEM;
}

/* HELP text escapes only '\\' and newline. */
static int escape_help(struct buf *out, const char *s)
{
    int rv = 0;

    for (; *s != '\0' && rv == 0; s++) {
        if (*s == '\\') {
            rv = buf_append(out, "\\\\", 2);
        } else if (*s == '\n') {
            rv = buf_append(out, "\\n", 2);
        } else {
            rv = buf_append_char(out, *s);
        }
    }
    return rv;
}

int metrics_format_value(struct buf *out, double v)
{
    char text[40];

    if (isnan(v)) {
        return buf_append_str(out, "NaN") == 0 ? METRICS_OK : METRICS_ENOMEM;
    }
    if (isinf(v)) {
        return buf_append_str(out, v > 0 ? "+Inf" : "-Inf") == 0
                   ? METRICS_OK
                   : METRICS_ENOMEM;
    }
    if (v == floor(v) && fabs(v) < 9007199254740992.0) {
        /* Integral (counts, indexes, bytes): digits by hand, no printf. */
        uint64_t u = (uint64_t)fabs(v);
        char *p = text + sizeof text;

        *--p = '\0';
        do {
            *--p = (char)('0' + u % 10);
            u /= 10;
        } while (u > 0);
        if (v < 0) {
            *--p = '-';
        }
        return buf_append_str(out, p) == 0 ? METRICS_OK : METRICS_ENOMEM;
    }
    snprintf(text, sizeof text, "%.15g", v);
    if (strtod(text, NULL) != v) {
        snprintf(text, sizeof text, "%.17g", v);
    }
    return buf_append_str(out, text) == 0 ? METRICS_OK : METRICS_ENOMEM;
}

/* name{labels[,le="bound"]} value\n; le NULL when none. */
static int write_sample(struct buf *out, const struct metrics_family *f,
                        const char *suffix, const struct metrics_series *s,
                        const char *le, double v)
{
    int rv = buf_append_str(out, f->name);

    rv |= buf_append_str(out, suffix);
    if (f->n_labels > 0 || le != NULL) {
        rv |= buf_append_char(out, '{');
        rv |= buf_append(out, s->block, s->block_len);
        if (le != NULL) {
            rv |= buf_append_str(out, f->n_labels > 0 ? ",le=\"" : "le=\"");
            rv |= buf_append_str(out, le);
            rv |= buf_append_char(out, '"');
        }
        rv |= buf_append_char(out, '}');
    }
    rv |= buf_append_char(out, ' ');
    rv |= metrics_format_value(out, v);
    rv |= buf_append_char(out, '\n');
    return rv != 0 ? METRICS_ENOMEM : METRICS_OK;
}

static int write_histogram(struct buf *out, const struct metrics_family *f,
                           const struct metrics_series *s)
{
    uint64_t cumulative = 0;
    unsigned i;
    int rv = 0;

    for (i = 0; i < f->n_buckets && rv == 0; i++) {
        cumulative += s->counts[i];
        rv = write_sample(out, f, "_bucket", s, f->bound_text[i],
                          (double)cumulative);
    }
    if (rv == 0) {
        rv = write_sample(out, f, "_bucket", s, "+Inf", (double)s->count);
    }
    if (rv == 0) {
        rv = write_sample(out, f, "_sum", s, NULL, s->sum);
    }
    if (rv == 0) {
        rv = write_sample(out, f, "_count", s, NULL, (double)s->count);
    }
    return rv;
}

int metrics_write(const struct metrics *m, struct buf *out)
{
    static const char *const type_names[] = {"counter", "gauge", "histogram"};
    const struct metrics_family *f;

    for (f = m->head; f != NULL; f = f->next) {
        const struct metrics_series *s;
        int rv = buf_printf(out, "# HELP %s ", f->name);

        rv |= escape_help(out, f->help);
        rv |= buf_printf(out, "\n# TYPE %s %s\n", f->name, type_names[f->type]);
        if (rv != 0) {
            return METRICS_ENOMEM;
        }
        for (s = f->head; s != NULL; s = s->next) {
            rv = f->type == METRICS_HISTOGRAM
                     ? write_histogram(out, f, s)
                     : write_sample(out, f, "", s, NULL, s->value);
            if (rv != 0) {
                return METRICS_ENOMEM;
            }
        }
    }
    return METRICS_OK;
}

/******************************************************************************
 * The process registry
 *****************************************************************************/

/* Latency bounds in seconds: 0.5 ms to 10 s. */
static const double latency_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01,
                                        0.025,  0.05,  0.1,    0.25,  0.5,
                                        1,      2.5,   5,      10};
#define N_LATENCY (sizeof latency_bounds / sizeof latency_bounds[0])

/* The families recorded through the helpers; the rest (raft, state,
 * process) are registered here too and set at scrape time by name. */
static struct
{
    struct metrics *m;                    /* the registry, NULL until used */
    struct metrics_series *bytes_in;      /* ctxd_http_received_bytes_total */
    struct metrics_series *bytes_out;     /* ctxd_http_sent_bytes_total */
    struct metrics_series *conns_open;    /* ctxd_http_connections_open */
    struct metrics_series *conns_total;   /* ..._connections_accepted_total */
    struct metrics_family *conns_rejected; /* by reason */
    struct metrics_family *req_rejected;  /* by reason */
    struct metrics_family *requests;      /* by route, method, code */
    struct metrics_family *duration;      /* histogram by route */
    struct metrics_family *errors;        /* by code, status */
    struct metrics_family *proposal;      /* histogram, no labels */
    struct metrics_series *loop_turn;     /* histogram, no labels */
    struct metrics_series *loop_turn_max; /* gauge, since start */
    double loop_turn_max_value;           /* what loop_turn_max holds */
} proc;

/* Scrape-time gauges and counters (no labels unless said): name, type,
 * help. */
static const struct
{
    const char *name;
    enum metrics_type type;
    const char *help;
} scrape_families[] = {
    {"ctxd_raft_leader", METRICS_GAUGE, "1 when this node is the leader."},
    {"ctxd_raft_leader_id", METRICS_GAUGE,
     "Id of the leader this node knows, 0 when none."},
    {"ctxd_raft_term", METRICS_GAUGE, "Current Raft term."},
    {"ctxd_raft_commit_index", METRICS_GAUGE,
     "Highest log index known to be committed."},
    {"ctxd_raft_applied_index", METRICS_GAUGE,
     "Highest log index applied to the state."},
    {"ctxd_raft_last_index", METRICS_GAUGE, "Last index in the local log."},
    {"ctxd_raft_elections_total", METRICS_COUNTER,
     "Elections this node started."},
    {"ctxd_raft_leader_changes_total", METRICS_COUNTER,
     "Leader changes this node has seen."},
    {"ctxd_raft_proposals_pending", METRICS_GAUGE,
     "Proposals queued or in flight."},
    {"ctxd_raft_barriers_total", METRICS_COUNTER,
     "Read barriers (linearizable read rounds) issued."},
    {"ctxd_raft_barrier_reads_total", METRICS_COUNTER,
     "Reads served by those barriers."},
    {"ctxd_raft_reads_per_barrier", METRICS_GAUGE,
     "Mean reads served per barrier (read batch size), 0 before the first."},
    {"ctxd_raft_snapshots_taken_total", METRICS_COUNTER,
     "Snapshots this node took."},
    {"ctxd_raft_snapshots_installed_total", METRICS_COUNTER,
     "Snapshots this node restored from (at start or sent by the leader)."},
    {"ctxd_raft_entries_total", METRICS_COUNTER,
     "Log entries this node proposed (raft_apply calls)."},
    {"ctxd_raft_commands_total", METRICS_COUNTER,
     "Commands in those entries."},
    {"ctxd_raft_commands_per_entry", METRICS_GAUGE,
     "Mean commands per proposed entry (append batch size), 0 before the "
     "first."},
    {"ctxd_api_pending", METRICS_GAUGE,
     "Requests waiting for a commit or a read condition."},
    {"ctxd_accounts", METRICS_GAUGE, "Accounts with a key."},
    {"ctxd_namespaces", METRICS_GAUGE, "Namespaces."},
    {"ctxd_sessions", METRICS_GAUGE, "Sessions."},
    {"ctxd_properties", METRICS_GAUGE,
     "Stored properties (expired ones count until purged)."},
    {"ctxd_purged_properties_total", METRICS_COUNTER,
     "Properties removed by expiry purges."},
    {"ctxd_property_reads_total", METRICS_COUNTER,
     "Reads of one property served from this node's state."},
    {"ctxd_property_reads_cached_total", METRICS_COUNTER,
     "Of those, reads answered from the read cache without SQLite."},
    {"ctxd_database_bytes", METRICS_GAUGE,
     "Size of the state database (SQLite pages in use times page size)."},
    {"process_resident_memory_bytes", METRICS_GAUGE,
     "Resident set size of the process."},
    {"process_open_fds", METRICS_GAUGE, "Open file descriptors."},
};

static int process_register(struct metrics *m)
{
    static const char *const reason[] = {"reason"};
    static const char *const req_labels[] = {"route", "method", "code"};
    static const char *const route[] = {"route"};
    static const char *const err_labels[] = {"code", "status"};
    static const char *const state[] = {"state"};
    struct metrics_family *f;
    size_t i;
    int rv = 0;

#define ADD(name, type, help, labels, n, b, nb, out) \
    if (rv == 0) {                                  \
        rv = metrics_family_add(m, name, help, type, labels, n, b, nb, out); \
    }
/* A family without labels and its one series, kept in `series`. */
#define ADD1(name, type, help, b, nb, series)                           \
    ADD(name, type, help, NULL, 0, b, nb, &f);                          \
    if (rv == 0 && ((series) = metrics_series_get(f, NULL)) == NULL) { \
        rv = METRICS_ENOMEM;                                            \
    }
    ADD("ctxd_http_requests_total", METRICS_COUNTER,
        "HTTP requests answered by the API, by route template, method and "
        "status class.",
        req_labels, 3, NULL, 0, &proc.requests);
    ADD("ctxd_http_request_duration_seconds", METRICS_HISTOGRAM,
        "Time from a complete request to its answer, by route template.",
        route, 1, latency_bounds, N_LATENCY, &proc.duration);
    ADD("ctxd_http_errors_total", METRICS_COUNTER,
        "Error answers of the API by code (429 overloaded, 503 unavailable, "
        "...) and status.",
        err_labels, 2, NULL, 0, &proc.errors);
    ADD("ctxd_http_requests_rejected_total", METRICS_COUNTER,
        "Requests refused by the HTTP layer before routing, by reason "
        "(bad_request 400, body_too_large 413, headers_too_large 431, "
        "request_timeout).",
        reason, 1, NULL, 0, &proc.req_rejected);
    ADD1("ctxd_http_connections_open", METRICS_GAUGE,
         "Open client connections.", NULL, 0, proc.conns_open);
    ADD1("ctxd_http_connections_accepted_total", METRICS_COUNTER,
         "Client connections accepted and served.", NULL, 0,
         proc.conns_total);
    ADD("ctxd_http_connections_rejected_total", METRICS_COUNTER,
        "Client connections closed at once, by reason (limit: over "
        "--max-connections; stopping).",
        reason, 1, NULL, 0, &proc.conns_rejected);
    ADD1("ctxd_http_received_bytes_total", METRICS_COUNTER,
         "Bytes read from client connections.", NULL, 0, proc.bytes_in);
    ADD1("ctxd_http_sent_bytes_total", METRICS_COUNTER,
         "Bytes written to client connections.", NULL, 0, proc.bytes_out);
    ADD("ctxd_raft_proposal_duration_seconds", METRICS_HISTOGRAM,
        "Time from proposing a write to its apply on this (leader) node.",
        NULL, 0, latency_bounds, N_LATENCY, &proc.proposal);
    if (rv == 0) {
        /* Present from the start: a histogram with zero observations. */
        rv = metrics_series_get(proc.proposal, NULL) != NULL ? 0
                                                             : METRICS_ENOMEM;
    }
    ADD1("ctxd_event_loop_turn_seconds", METRICS_HISTOGRAM,
         "Busy time of one event loop turn (every callback run between two "
         "waits for I/O): the longest a new event can wait for the loop.",
         latency_bounds, N_LATENCY, proc.loop_turn);
    ADD1("ctxd_event_loop_turn_max_seconds", METRICS_GAUGE,
         "Longest event loop turn since the node started.", NULL, 0,
         proc.loop_turn_max);
    ADD("ctxd_raft_state", METRICS_GAUGE,
        "1 for the Raft role this node is in, 0 for the others.", state, 1,
        NULL, 0, NULL);
    for (i = 0; rv == 0 && i < sizeof scrape_families / sizeof scrape_families[0];
         i++) {
        ADD(scrape_families[i].name, scrape_families[i].type,
            scrape_families[i].help, NULL, 0, NULL, 0, &f);
        if (rv == 0 && metrics_series_get(f, NULL) == NULL) {
            rv = METRICS_ENOMEM;
        }
    }
#undef ADD1
#undef ADD
    return rv;
}

struct metrics *metrics_process(void)
{
    struct metrics *m;

    if (proc.m != NULL) {
        return proc.m;
    }
    if (metrics_new(&m) != METRICS_OK) {
        return NULL;
    }
    if (process_register(m) != METRICS_OK) {
        metrics_free(m);
        memset(&proc, 0, sizeof proc);
        return NULL;
    }
    proc.m = m;
    return m;
}

void metrics_process_free(void)
{
    metrics_free(proc.m);
    memset(&proc, 0, sizeof proc);
}

void metrics_http_bytes_in(size_t n)
{
    if (metrics_process() != NULL) {
        metrics_add(proc.bytes_in, (double)n);
    }
}

void metrics_http_bytes_out(size_t n)
{
    if (metrics_process() != NULL) {
        metrics_add(proc.bytes_out, (double)n);
    }
}

void metrics_http_connection_opened(void)
{
    if (metrics_process() != NULL) {
        metrics_add(proc.conns_open, 1);
        metrics_add(proc.conns_total, 1);
    }
}

void metrics_http_connection_closed(void)
{
    if (metrics_process() != NULL) {
        metrics_add(proc.conns_open, -1);
    }
}

static void add_by_reason(struct metrics_family *f, const char *reason)
{
    const char *values[1];

    values[0] = reason;
    metrics_add(metrics_series_get(f, values), 1);
}

void metrics_http_connection_rejected(const char *reason)
{
    if (metrics_process() != NULL) {
        add_by_reason(proc.conns_rejected, reason);
    }
}

void metrics_http_request_rejected(const char *reason)
{
    if (metrics_process() != NULL) {
        add_by_reason(proc.req_rejected, reason);
    }
}

void metrics_api_request(const char *route, const char *method, int status,
                         double seconds)
{
    static const char *const classes[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
    const char *values[3];

    if (metrics_process() == NULL) {
        return;
    }
    values[0] = route;
    values[1] = method != NULL && method[0] != '\0' ? method : "unknown";
    values[2] = status >= 100 && status <= 599 ? classes[status / 100 - 1]
                                               : "5xx";
    metrics_add(metrics_series_get(proc.requests, values), 1);
    metrics_observe(metrics_series_get(proc.duration, values), seconds);
}

void metrics_api_error(const char *code, int status)
{
    char status_text[8];
    const char *values[2];

    if (metrics_process() == NULL) {
        return;
    }
    snprintf(status_text, sizeof status_text, "%d",
             status >= 100 && status <= 599 ? status : 500);
    values[0] = code;
    values[1] = status_text;
    metrics_add(metrics_series_get(proc.errors, values), 1);
}

void metrics_api_proposal(double seconds)
{
    if (metrics_process() != NULL) {
        metrics_observe(metrics_series_get(proc.proposal, NULL), seconds);
    }
}

void metrics_loop_turn(double seconds)
{
    if (metrics_process() == NULL) {
        return;
    }
    metrics_observe(proc.loop_turn, seconds);
    if (seconds > proc.loop_turn_max_value) {
        proc.loop_turn_max_value = seconds;
        metrics_set(proc.loop_turn_max, seconds);
    }
}
