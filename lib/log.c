#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static enum log_level log_threshold = LOG_INFO;
static uint64_t log_node_id = 0;

static const char *const log_names[] = {"debug", "info", "warn", "error"};

void log_configure(enum log_level level, uint64_t node_id)
{
    log_threshold = level;
    log_node_id = node_id;
}

int log_level_parse(const char *s, enum log_level *out)
{
    unsigned i;

    for (i = 0; i < sizeof log_names / sizeof log_names[0]; i++) {
        if (strcmp(s, log_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

int log_enabled(enum log_level level)
{
    return level >= log_threshold;
}

void log_emit(enum log_level level, const char *msg, const char *fields_fmt, ...)
{
    char line[2048];
    struct timespec ts;
    struct tm tm;
    size_t n;
    int rv;
    va_list ap;

    if (!log_enabled(level)) {
        return;
    }
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    rv = snprintf(line, sizeof line,
                  "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s node=%llu "
                  "msg=\"%s\"",
                  tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                  tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                  log_names[level], (unsigned long long)log_node_id, msg);
    n = rv < 0 ? 0 : (size_t)rv >= sizeof line ? sizeof line - 1 : (size_t)rv;
    if (fields_fmt != NULL && n < sizeof line - 1) {
        va_start(ap, fields_fmt);
        rv = vsnprintf(line + n, sizeof line - n, fields_fmt, ap);
        va_end(ap);
        if (rv > 0) {
            n += (size_t)rv >= sizeof line - n ? sizeof line - n - 1 : (size_t)rv;
        }
    }
    line[n++] = '\n';
    /* One write per line so concurrent writers do not interleave. */
    fwrite(line, 1, n, stderr);
    fflush(stderr);
}
