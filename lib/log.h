/* Logging: one line per event on stderr, logfmt (key=value):
 *
 *   ts=2026-11-27T22:58:09.123Z level=info node=1 msg="raft started" index=7
 *
 * The message and any fields are given by the caller already formatted as
 * logfmt pairs. Never pass a key, token, secret or property value. */
#ifndef CTXD_LOG_H
#define CTXD_LOG_H

#include <stdint.h>

enum log_level {
    LOG_DEBUG = 0,
    LOG_INFO = 1,
    LOG_WARN = 2,
    LOG_ERROR = 3,
};

/* Set the threshold below which lines are dropped, and the node id printed in
 * every line. */
void log_configure(enum log_level level, uint64_t node_id);

/* Parse "debug" | "info" | "warn" | "error". Returns 0 or -1. */
int log_level_parse(const char *s, enum log_level *out);

/* True when a line at this level would be written. */
int log_enabled(enum log_level level);

/* Write one line: msg is quoted, then the optional fields (a printf format
 * producing " k=v k2=v2", may be NULL). */
void log_emit(enum log_level level, const char *msg, const char *fields_fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define LOGD(msg, ...) log_emit(LOG_DEBUG, msg, __VA_ARGS__)
#define LOGI(msg, ...) log_emit(LOG_INFO, msg, __VA_ARGS__)
#define LOGW(msg, ...) log_emit(LOG_WARN, msg, __VA_ARGS__)
#define LOGE(msg, ...) log_emit(LOG_ERROR, msg, __VA_ARGS__)

#endif
