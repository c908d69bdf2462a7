/* Metrics: a small registry of counters, gauges and histograms, written in
 * the Prometheus text exposition format, version 0.0.4.
 *
 * A registry holds families (one metric name, its help text, type and label
 * names); a family holds series (one set of label values each). Series are
 * created on first use, at zero, and live as long as the registry, so a
 * label must never carry an unbounded value (a raw path, an id): callers
 * pass route templates, methods, status classes and fixed reasons.
 *
 * Output (metrics_write), per family, in registration order:
 *
 *   # HELP name help text           ('\\' and newline escaped)
 *   # TYPE name counter|gauge|histogram
 *   name{l1="v1",l2="v2"} value     (label values escape \\, \" and \n)
 *
 * A histogram series is written as name_bucket{...,le="B"} for every bound
 * B in increasing order and le="+Inf", cumulative counts, then name_sum and
 * name_count. Values are written in the shortest form that reads back
 * exactly (%.15g, else %.17g), and +Inf, -Inf, NaN as the format spells
 * them.
 *
 * Invariants: family names match [a-zA-Z_:][a-zA-Z0-9_:]*, label names
 * [a-zA-Z_][a-zA-Z0-9_]* and do not start with "__" (nor are "le" on a
 * histogram); histogram bounds are finite and strictly increasing. Every
 * function is for the loop thread only (no locking).
 *
 * The process registry (metrics_process_*) holds ctxd's own metrics; the
 * recording helpers below create it on first use and do nothing when that
 * fails for lack of memory: metrics must never fail a request. */
#ifndef CTXD_METRICS_H
#define CTXD_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "../lib/buf.h"

#define METRICS_MAX_LABELS 4   /* label names per family */
#define METRICS_MAX_BUCKETS 20 /* histogram bounds per family, +Inf aside */

enum metrics_status {
    METRICS_OK = 0,
    METRICS_EINVAL = 1, /* bad name, label, bucket list or type */
    METRICS_ENOMEM = 2, /* out of memory */
};

enum metrics_type {
    METRICS_COUNTER,
    METRICS_GAUGE,
    METRICS_HISTOGRAM,
};

struct metrics;        /* a registry (opaque) */
struct metrics_family; /* one metric name (opaque, owned by its registry) */
struct metrics_series; /* one label set (opaque, owned by its family) */

/* An empty registry. Returns 0 or METRICS_ENOMEM. */
int metrics_new(struct metrics **out);

/* Free the registry, its families and series. NULL is allowed. */
void metrics_free(struct metrics *m);

/* Register a family. labels: n_labels names (copied); buckets: n_buckets
 * upper bounds for a histogram (copied; +Inf is implicit), NULL and 0
 * otherwise. help is copied. A name registered twice is METRICS_EINVAL. On
 * success *out (may be NULL) is the family, valid until metrics_free. */
int metrics_family_add(struct metrics *m, const char *name, const char *help,
                       enum metrics_type type, const char *const *labels,
                       unsigned n_labels, const double *buckets,
                       unsigned n_buckets, struct metrics_family **out);

/* The family called name, or NULL. */
struct metrics_family *metrics_family_find(struct metrics *m,
                                           const char *name);

/* The series of family f with these label values (one NUL-terminated
 * string per label name, copied when the series is new; NULL when the
 * family has no labels). Created at zero on first use. Returns NULL only
 * when out of memory. */
struct metrics_series *metrics_series_get(struct metrics_family *f,
                                          const char *const *values);

/* Counter or gauge: add v (a counter ignores v < 0 and NaN). */
void metrics_add(struct metrics_series *s, double v);

/* Gauge: set the value (ignored on a counter or histogram). */
void metrics_set(struct metrics_series *s, double v);

/* Histogram: count one observation of v in its bucket and the sum. */
void metrics_observe(struct metrics_series *s, double v);

/* Counter or gauge value; a histogram's observation count. */
double metrics_value(const struct metrics_series *s);

/* Append the exposition of every family to out. Returns 0 or
 * METRICS_ENOMEM (out may then hold part of it). */
int metrics_write(const struct metrics *m, struct buf *out);

/* Append s[0..n) escaped as a label value: '\\' → "\\\\", '"' → "\\\"",
 * newline → "\\n"; other bytes as they are. Returns 0 or METRICS_ENOMEM. */
int metrics_escape_label(struct buf *out, const char *s, size_t n);

/* Append v as the format writes sample values. Returns 0 or
 * METRICS_ENOMEM. */
int metrics_format_value(struct buf *out, double v);

/* --- ctxd's metrics: the process registry ----------------------------- */

/* The process registry with every ctxd family registered, created on first
 * call; NULL when out of memory. */
struct metrics *metrics_process(void);

/* Free the process registry (at exit; a later call creates a new one). */
void metrics_process_free(void);

/* HTTP layer (api/http.c). */
void metrics_http_bytes_in(size_t n);
void metrics_http_bytes_out(size_t n);
void metrics_http_connection_opened(void);
void metrics_http_connection_closed(void);
/* A connection accepted and closed at once: reason "limit" (over
 * --max-connections) or "stopping". */
void metrics_http_connection_rejected(const char *reason);
/* A request refused by the HTTP layer itself: "bad_request" (400, not
 * HTTP), "body_too_large" (413), "headers_too_large" (431),
 * "request_timeout" (not complete within --request-timeout-ms). */
void metrics_http_request_rejected(const char *reason);

/* API (api/api.c): one answered request, by route template, method and
 * status (counted by class "2xx".."5xx"), and its duration. */
void metrics_api_request(const char *route, const char *method, int status,
                         double seconds);
/* An error answer by its code ("overloaded" for a 429, ...) and status. */
void metrics_api_error(const char *code, int status);
/* A write committed and applied (or failed): proposal to callback. */
void metrics_api_proposal(double seconds);

/* Node (node/main.c): the busy time of one event loop turn. */
void metrics_loop_turn(double seconds);

#endif
