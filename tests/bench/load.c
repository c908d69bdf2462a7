/* ctxd_load: a closed-loop HTTP/1.1 load generator for cluster/bench.
 *
 *     ctxd_load [-c CONNS] [-t THREADS] [-d SECONDS] [-n REQUESTS]
 *               [-T TIMEOUT_S] FILE HOST PORT
 *
 * Each of CONNS kept-alive connections to HOST:PORT (HOST must be in
 * 127.0.0.0/8) sends one request, waits for the whole response, records its
 * latency and sends the next, until SECONDS have passed or REQUESTS
 * requests have been sent in all (then the ones in flight are awaited).
 * Each request is one of FILE's, picked uniformly at random. THREADS
 * threads share the connections, one libuv loop each.
 *
 * FILE holds the requests ready to send, each as its length in decimal, a
 * newline and that many bytes (a whole HTTP/1.1 request). cluster/bench
 * writes it, the same way for ctxd and for etcd.
 *
 * Why not wrk: wrk's Lua request() runs per request, and wrk registers and
 * removes the socket's writable event in epoll around every request. Here
 * a request is written from the read callback that completed the previous
 * one (uv_try_write), so a request costs the client one write and one read
 * and the servers are left more of the two shared cores. Both systems are
 * driven by the same program; docs/performance.md has both figures.
 *
 * It prints one line that cluster/bench parses, as its wrk scripts do:
 *
 *     RESULT requests=N duration_s=S rps=R p50_ms=.. p99_ms=.. p999_ms=..
 *            max_ms=.. errors=E
 *
 * and on stderr the errors by kind. An error is a response whose status
 * is not 2xx, a connection that could not be made, broke or answered
 * something that is not HTTP, or a response that took longer than
 * TIMEOUT_S (5); a connection that failed is made again (at most once per
 * tick of 50 ms), one the server closed after a whole response at once. Latencies are kept in a log-linear histogram of
 * nanoseconds, 64 buckets per power of two (1.6 % wide); a percentile is
 * the middle of its bucket, never above the slowest request. Exit status: 0
 * after a run (with or without errors), 2 for bad arguments or a bad FILE,
 * 1 when the run itself could not be set up. */
#define _GNU_SOURCE
#include <errno.h>
#include <http_parser.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define MAX_FILE_BYTES (256u << 20) /* bytes */
#define MAX_REQUEST_BYTES (1u << 20) /* bytes, one request */
#define MAX_CONNS 16384
#define MAX_THREADS 64
#define READ_BUF_BYTES 16384
#define TICK_MS 50
#define SUB_BITS 6 /* histogram: 64 buckets per power of two */
#define HIST_BUCKETS ((64 - SUB_BITS) * (1 << SUB_BITS) + (1 << SUB_BITS))

struct requests {
    char *data;       /* owned: the whole file */
    size_t count;     /* number of requests */
    size_t *off;      /* owned: offset of each request in data */
    uint32_t *len;    /* owned: length of each request */
};

struct counts {
    uint64_t requests;        /* whole responses received */
    uint64_t status;          /* of which not 2xx */
    uint64_t connect;         /* connections that could not be made */
    uint64_t read;            /* broken or closed while a request waited */
    uint64_t write;           /* a request could not be written */
    uint64_t parse;           /* an answer that is not HTTP/1.1 */
    uint64_t timeout;         /* no whole response within the timeout */
    uint64_t hist[HIST_BUCKETS]; /* latencies of the whole responses */
    uint64_t max_ns;          /* the longest of them */
};

struct worker;

struct conn {
    uv_tcp_t tcp;             /* the connection; data points here */
    uv_write_t wreq;          /* the rest of a request a try left */
    http_parser parser;       /* the response being read */
    struct worker *w;         /* owner */
    uint64_t start_ns;        /* when the request in flight was sent */
    int open;                 /* tcp initialised and not yet closed */
    int connected;            /* connect succeeded */
    int busy;                 /* a request is in flight */
    int done;                 /* on_message_complete ran for it */
    int want_connect;         /* connect again at the next tick */
    int again;                /* the server ended a kept-alive connection
                                 after a whole response: connect at once */
    char buf[READ_BUF_BYTES]; /* read buffer */
};

struct worker {
    uv_loop_t loop;           /* this thread's loop */
    uv_timer_t tick;          /* deadline, timeouts, reconnects */
    pthread_t thread;
    const struct requests *reqs;
    struct sockaddr_in addr;  /* the server */
    struct conn *conns;       /* owned */
    int nconns;
    uint64_t rng;             /* xorshift64* state */
    uint64_t deadline_ns;     /* stop sending at this time */
    uint64_t timeout_ns;      /* per request */
    uint64_t budget;          /* requests this worker may still send */
    uint64_t start_ns, stop_ns; /* the run */
    int stopping;             /* no new requests; wait for in-flight ones */
    int finished;             /* every handle closed or closing */
    int started;              /* its thread runs */
    struct counts c;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Histogram: values below 2^(SUB_BITS+1) have their own bucket; above,
 * a value with highest bit e falls in one of 64 buckets for [2^e, 2^(e+1)). */
static unsigned hist_index(uint64_t v)
{
    unsigned e;

    if (v < (1u << (SUB_BITS + 1))) {
        return (unsigned)v;
    }
    e = 63u - (unsigned)__builtin_clzll(v);
    return (e - SUB_BITS) * (1u << SUB_BITS) + (unsigned)(v >> (e - SUB_BITS));
}

/* The middle of bucket i. */
static double hist_value(unsigned i)
{
    unsigned shift, m;

    if (i < (1u << (SUB_BITS + 1))) {
        return (double)i;
    }
    shift = i / (1u << SUB_BITS) - 1;
    m = i % (1u << SUB_BITS) + (1u << SUB_BITS);
    return ((double)m + 0.5) * (double)(1ull << shift);
}

static double hist_percentile(const struct counts *c, double p)
{
    uint64_t target, seen = 0;
    unsigned i;

    if (c->requests == 0) {
        return 0.0;
    }
    target = (uint64_t)(p / 100.0 * (double)c->requests + 0.999999);
    if (target == 0) {
        target = 1;
    }
    for (i = 0; i < HIST_BUCKETS; i++) {
        seen += c->hist[i];
        if (seen >= target) {
            /* The middle of the top bucket may lie above the largest
             * latency in it; no percentile is above the maximum. */
            double v = hist_value(i);
            return v < (double)c->max_ns ? v : (double)c->max_ns;
        }
    }
    return (double)c->max_ns;
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

/* --- The request file ---------------------------------------------------- */

static void requests_free(struct requests *r)
{
    free(r->data);
    free(r->off);
    free(r->len);
    memset(r, 0, sizeof *r);
}

/* Read and check FILE. Returns 0, or -1 after printing why. */
static int requests_load(struct requests *r, const char *path)
{
    FILE *f = fopen(path, "rb");
    size_t size = 0, cap = 0, pos, n;
    char *p;

    memset(r, 0, sizeof *r);
    if (f == NULL) {
        fprintf(stderr, "ctxd_load: %s: %s\n", path, strerror(errno));
        return -1;
    }
    for (;;) {
        if (size == cap) {
            size_t ncap = cap ? cap * 2 : 1 << 16;
            if (cap >= MAX_FILE_BYTES) {
                fprintf(stderr, "ctxd_load: %s: larger than %u bytes\n", path,
                        MAX_FILE_BYTES);
                goto err;
            }
            p = realloc(r->data, ncap + 1);
            if (p == NULL) {
                goto oom;
            }
            r->data = p;
            cap = ncap;
        }
        n = fread(r->data + size, 1, cap - size, f);
        size += n;
        if (n == 0) {
            break;
        }
    }
    if (ferror(f)) {
        fprintf(stderr, "ctxd_load: %s: read error\n", path);
        goto err;
    }
    fclose(f);
    f = NULL;
    r->data[size] = '\0';

    /* Two passes: count, then index. */
    for (int pass = 0; pass < 2; pass++) {
        size_t count = 0;
        pos = 0;
        while (pos < size) {
            uint64_t len = 0;
            size_t digits = 0;
            while (pos < size && r->data[pos] >= '0' && r->data[pos] <= '9' &&
                   digits < 8) {
                len = len * 10 + (uint64_t)(r->data[pos] - '0');
                pos++;
                digits++;
            }
            if (digits == 0 || pos >= size || r->data[pos] != '\n') {
                fprintf(stderr, "ctxd_load: %s: request %zu: expected a length "
                        "and a newline at byte %zu\n", path, count + 1, pos);
                goto err;
            }
            pos++;
            if (len == 0 || len > MAX_REQUEST_BYTES || len > size - pos) {
                fprintf(stderr, "ctxd_load: %s: request %zu: length %llu is 0, "
                        "over %u or past the end\n", path, count + 1,
                        (unsigned long long)len, MAX_REQUEST_BYTES);
                goto err;
            }
            if (pass == 1) {
                r->off[count] = pos;
                r->len[count] = (uint32_t)len;
            }
            pos += (size_t)len;
            count++;
        }
        if (count == 0) {
            fprintf(stderr, "ctxd_load: %s: no requests\n", path);
            goto err;
        }
        if (pass == 0) {
            r->count = count;
            r->off = calloc(count, sizeof *r->off);
            r->len = calloc(count, sizeof *r->len);
            if (r->off == NULL || r->len == NULL) {
                goto oom;
            }
        }
    }
    return 0;

oom:
    fprintf(stderr, "ctxd_load: %s: out of memory\n", path);
err:
    if (f != NULL) {
        fclose(f);
    }
    requests_free(r);
    return -1;
}

/* --- One connection --------------------------------------------------------- */

static void conn_connect(struct conn *c);
static void conn_send(struct conn *c);

static void on_closed(uv_handle_t *h)
{
    struct conn *c = h->data;

    c->open = 0;
    if (c->w->stopping) {
        return;
    }
    if (c->again) {
        c->again = 0;
        conn_connect(c);
        return;
    }
    c->want_connect = 1; /* at the next tick: no busy loop of refusals */
}

static void conn_close(struct conn *c)
{
    if (c->open && !uv_is_closing((uv_handle_t *)&c->tcp)) {
        uv_close((uv_handle_t *)&c->tcp, on_closed);
    }
    c->busy = 0;
    c->connected = 0;
}

/* A request in flight failed: count it under *counter and start over. */
static void conn_fail(struct conn *c, uint64_t *counter)
{
    if (c->busy) {
        (*counter)++;
    }
    conn_close(c);
}

static int on_message_complete(http_parser *p)
{
    struct conn *c = p->data;
    struct worker *w = c->w;
    uint64_t lat = now_ns() - c->start_ns;

    if (!c->busy || c->done) {
        return -1; /* an answer nobody asked for */
    }
    c->done = 1;
    w->c.requests++;
    if (p->status_code < 200 || p->status_code > 299) {
        w->c.status++;
    }
    w->c.hist[hist_index(lat)]++;
    if (lat > w->c.max_ns) {
        w->c.max_ns = lat;
    }
    return 0;
}

static const http_parser_settings response_settings = {
    .on_message_complete = on_message_complete,
};

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    struct conn *c = h->data;

    (void)hint;
    buf->base = c->buf;
    buf->len = sizeof c->buf;
}

static void worker_check_done(struct worker *w);

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    struct worker *w = c->w;
    size_t used;

    if (nread == 0) {
        return;
    }
    if (nread < 0) {
        conn_fail(c, &w->c.read);
        worker_check_done(w);
        return;
    }
    if (!c->busy) {
        w->c.parse++; /* bytes nobody asked for */
        conn_close(c);
        return;
    }
    used = http_parser_execute(&c->parser, &response_settings, buf->base,
                               (size_t)nread);
    if (c->parser.http_errno != HPE_OK || used != (size_t)nread) {
        conn_fail(c, &w->c.parse);
        worker_check_done(w);
        return;
    }
    if (!c->done) {
        return; /* more of the response to come */
    }
    c->busy = 0;
    if (!http_should_keep_alive(&c->parser)) {
        c->again = 1;
        conn_close(c);
    } else if (!w->stopping) {
        conn_send(c); /* may find the run over and set stopping */
    }
    worker_check_done(w);
}

static void write_cb(uv_write_t *req, int status)
{
    struct conn *c = req->data;

    if (status != 0 && status != UV_ECANCELED) {
        conn_fail(c, &c->w->c.write);
        worker_check_done(c->w);
    }
}

static void conn_send(struct conn *c)
{
    struct worker *w = c->w;
    const struct requests *r = w->reqs;
    size_t i;
    uv_buf_t b;
    int n;

    if (w->budget == 0 || now_ns() >= w->deadline_ns) {
        w->stopping = 1;
        return;
    }
    w->budget--;
    i = (size_t)(((rng_next(&w->rng) >> 32) * (uint64_t)r->count) >> 32);
    b = uv_buf_init(r->data + r->off[i], r->len[i]);
    http_parser_init(&c->parser, HTTP_RESPONSE);
    c->parser.data = c;
    c->busy = 1;
    c->done = 0;
    c->start_ns = now_ns();
    n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n == (int)b.len) {
        return;
    }
    if (n == UV_EAGAIN) {
        n = 0;
    }
    if (n < 0) {
        conn_fail(c, &w->c.write);
        return;
    }
    b.base += n;
    b.len -= (size_t)n;
    c->wreq.data = c;
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, write_cb) != 0) {
        conn_fail(c, &w->c.write);
    }
}

static void connect_cb(uv_connect_t *req, int status)
{
    struct conn *c = req->data;
    struct worker *w = c->w;

    free(req);
    if (status == UV_ECANCELED) {
        return;
    }
    if (status != 0 || uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) != 0) {
        w->c.connect++;
        conn_close(c);
        worker_check_done(w);
        return;
    }
    c->connected = 1;
    if (w->stopping) {
        conn_close(c);
        worker_check_done(w);
        return;
    }
    conn_send(c);
    worker_check_done(w);
}

static void conn_connect(struct conn *c)
{
    struct worker *w = c->w;
    uv_connect_t *req;

    c->want_connect = 0;
    if (uv_tcp_init(&w->loop, &c->tcp) != 0) {
        w->c.connect++;
        c->want_connect = 1;
        return;
    }
    c->tcp.data = c;
    c->open = 1;
    req = malloc(sizeof *req);
    if (req == NULL) {
        w->c.connect++;
        conn_close(c);
        return;
    }
    req->data = c;
    uv_tcp_nodelay(&c->tcp, 1);
    if (uv_tcp_connect(req, &c->tcp, (const struct sockaddr *)&w->addr, connect_cb) != 0) {
        free(req);
        w->c.connect++;
        conn_close(c);
    }
}

/* --- One worker: a thread, a loop, its share of the connections ----------- */

/* Once no request may be sent, stop when none is in flight. */
static void worker_check_done(struct worker *w)
{
    if (!w->stopping || w->finished) {
        return;
    }
    for (int i = 0; i < w->nconns; i++) {
        if (w->conns[i].busy) {
            return;
        }
    }
    if (w->stop_ns == 0) {
        w->stop_ns = now_ns();
    }
    w->finished = 1;
    for (int i = 0; i < w->nconns; i++) {
        conn_close(&w->conns[i]);
    }
    uv_close((uv_handle_t *)&w->tick, NULL);
}

static void tick_cb(uv_timer_t *t)
{
    struct worker *w = t->data;
    uint64_t now = now_ns();

    if (now >= w->deadline_ns || w->budget == 0) {
        if (!w->stopping) {
            w->stopping = 1;
        }
        /* The deadline ends the run; a request still in flight then is
         * neither counted nor waited for, as in wrk. With only the count
         * bound (-n), the ones in flight are awaited, up to the timeout. */
        if (now >= w->deadline_ns) {
            for (int i = 0; i < w->nconns; i++) {
                if (w->conns[i].busy && now - w->conns[i].start_ns <= w->timeout_ns) {
                    w->conns[i].busy = 0;
                }
            }
        }
    }
    for (int i = 0; i < w->nconns; i++) {
        struct conn *c = &w->conns[i];
        if (c->busy && now - c->start_ns > w->timeout_ns) {
            conn_fail(c, &w->c.timeout);
        } else if (c->want_connect && !c->open && !w->stopping) {
            conn_connect(c);
        } else if (c->connected && !c->busy && !w->stopping) {
            conn_send(c); /* a connection the budget or a close left idle */
        }
    }
    worker_check_done(w);
}

static void *worker_run(void *arg)
{
    struct worker *w = arg;

    w->start_ns = now_ns();
    for (int i = 0; i < w->nconns; i++) {
        w->conns[i].w = w;
        conn_connect(&w->conns[i]);
    }
    w->tick.data = w;
    uv_timer_start(&w->tick, tick_cb, TICK_MS, TICK_MS);
    /* Runs until worker_check_done has closed every handle. */
    uv_run(&w->loop, UV_RUN_DEFAULT);
    if (w->stop_ns == 0) {
        w->stop_ns = now_ns();
    }
    return NULL;
}

/* --- Main ------------------------------------------------------------------ */

static int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v < min || v > max) {
        return -1;
    }
    *out = v;
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: ctxd_load [-c CONNS] [-t THREADS] [-d SECONDS] "
            "[-n REQUESTS] [-T TIMEOUT_S] FILE HOST PORT\n"
            "  HOST must be in 127.0.0.0/8\n");
}

int main(int argc, char **argv)
{
    uint64_t conns = 64, threads = 2, seconds = 10, total = 1000000000ull,
             timeout_s = 5, port;
    struct requests reqs;
    struct sockaddr_in addr;
    struct worker *ws;
    struct counts sum;
    uint64_t errors, start_ns, end_ns = 0;
    double dur;
    int opt;

    while ((opt = getopt(argc, argv, "c:t:d:n:T:")) != -1) {
        uint64_t *dst = opt == 'c' ? &conns : opt == 't' ? &threads :
                        opt == 'd' ? &seconds : opt == 'n' ? &total :
                        opt == 'T' ? &timeout_s : NULL;
        uint64_t max = opt == 'c' ? MAX_CONNS : opt == 't' ? MAX_THREADS :
                       opt == 'd' || opt == 'T' ? 86400 : 1000000000000ull;
        if (dst == NULL || parse_u64(optarg, 1, max, dst) != 0) {
            usage();
            return 2;
        }
    }
    if (argc - optind != 3) {
        usage();
        return 2;
    }
    if (parse_u64(argv[optind + 2], 1, 65535, &port) != 0 ||
        uv_ip4_addr(argv[optind + 1], (int)port, &addr) != 0 ||
        (ntohl(addr.sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "ctxd_load: %s %s: not a port on 127.0.0.0/8\n",
                argv[optind + 1], argv[optind + 2]);
        return 2;
    }
    if (requests_load(&reqs, argv[optind]) != 0) {
        return 2;
    }
    if (threads > conns) {
        threads = conns;
    }
    ws = calloc(threads, sizeof *ws);
    if (ws == NULL) {
        fprintf(stderr, "ctxd_load: out of memory\n");
        requests_free(&reqs);
        return 1;
    }
    start_ns = now_ns();
    for (uint64_t t = 0; t < threads; t++) {
        struct worker *w = &ws[t];
        w->reqs = &reqs;
        w->addr = addr;
        w->nconns = (int)(conns / threads + (t < conns % threads));
        w->budget = total / threads + (t < total % threads);
        w->deadline_ns = start_ns + seconds * 1000000000ull;
        w->timeout_ns = timeout_s * 1000000000ull;
        w->rng = (start_ns ^ ((uint64_t)getpid() << 20) ^ (t + 1) * 0x9e3779b97f4a7c15ull) | 1;
        w->conns = calloc((size_t)w->nconns, sizeof *w->conns);
        if (w->conns == NULL || uv_loop_init(&w->loop) != 0) {
            fprintf(stderr, "ctxd_load: out of memory\n");
            free(w->conns);
            threads = t;
            goto fail;
        }
        uv_timer_init(&w->loop, &w->tick);
    }
    for (uint64_t t = 0; t < threads; t++) {
        if (pthread_create(&ws[t].thread, NULL, worker_run, &ws[t]) != 0) {
            fprintf(stderr, "ctxd_load: cannot start a thread\n");
            goto fail;
        }
        ws[t].started = 1;
    }
    memset(&sum, 0, sizeof sum);
    for (uint64_t t = 0; t < threads; t++) {
        struct worker *w = &ws[t];
        pthread_join(w->thread, NULL);
        sum.requests += w->c.requests;
        sum.status += w->c.status;
        sum.connect += w->c.connect;
        sum.read += w->c.read;
        sum.write += w->c.write;
        sum.parse += w->c.parse;
        sum.timeout += w->c.timeout;
        for (unsigned i = 0; i < HIST_BUCKETS; i++) {
            sum.hist[i] += w->c.hist[i];
        }
        if (w->c.max_ns > sum.max_ns) {
            sum.max_ns = w->c.max_ns;
        }
        if (w->stop_ns > end_ns) {
            end_ns = w->stop_ns;
        }
        uv_loop_close(&w->loop);
        free(w->conns);
    }
    free(ws);
    requests_free(&reqs);
    errors = sum.status + sum.connect + sum.read + sum.write + sum.parse + sum.timeout;
    dur = (double)(end_ns - start_ns) / 1e9;
    printf("RESULT requests=%llu duration_s=%.2f rps=%.0f p50_ms=%.3f p99_ms=%.3f "
           "p999_ms=%.3f max_ms=%.3f errors=%llu\n",
           (unsigned long long)sum.requests, dur,
           dur > 0 ? (double)sum.requests / dur : 0.0,
           hist_percentile(&sum, 50) / 1e6, hist_percentile(&sum, 99) / 1e6,
           hist_percentile(&sum, 99.9) / 1e6, (double)sum.max_ns / 1e6,
           (unsigned long long)errors);
    fprintf(stderr, "errors: status=%llu connect=%llu read=%llu write=%llu "
            "parse=%llu timeout=%llu\n",
            (unsigned long long)sum.status, (unsigned long long)sum.connect,
            (unsigned long long)sum.read, (unsigned long long)sum.write,
            (unsigned long long)sum.parse, (unsigned long long)sum.timeout);
    return 0;

fail:
    /* Threads already started stop by themselves at the deadline. */
    for (uint64_t t = 0; t < threads; t++) {
        if (ws[t].started) {
            pthread_join(ws[t].thread, NULL);
        } else {
            uv_close((uv_handle_t *)&ws[t].tick, NULL);
            uv_run(&ws[t].loop, UV_RUN_DEFAULT);
        }
        uv_loop_close(&ws[t].loop);
        free(ws[t].conns);
    }
    free(ws);
    requests_free(&reqs);
    return 1;
}
