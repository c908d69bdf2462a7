/* Routes, auth, validation and the request life cycle of the data, admin
 * and health endpoints.
 *
 * A request goes through:
 *
 *   parse path and query ──▶ match route (404 / 405)
 *     ──▶ auth (401) ──▶ content type (415) ──▶ validate (400 / 403)
 *     ──▶ write: encode a command, consensus_propose ─▶ applied ─▶ answer
 *     ──▶ read:  consistency gate (barrier / min index) ─▶ storage query
 *
 * A write or gated read that cannot be answered at once becomes an api_op,
 * kept on a FIFO list in deadline order (every op of a list has the same
 * timeout, so insertion order is deadline order). The timer answers ops past
 * their deadline (504); an op whose consensus callback is still due stays
 * allocated, detached from its request, until that callback fires (it fires
 * exactly once, also on shutdown). A read that passed its gate is handled
 * again from the start with the gate marked as passed (req->data), which
 * keeps one code path per route and costs a re-parse of a short path. */
#include "api.h"
#include "internal.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "../lib/crypto.h"
#include "../lib/log.h"
#include "json.h"
#include "metrics.h"

#include <http_parser.h>

static const struct
{
    int status;
    const char *code;
    const char *message;
} api_errors[] = {
    {500, "internal", "internal error"}, /* AE_NONE: never answered */
#define AE_ROW(name, status, code, msg) {status, code, msg},
    API_ERRORS(AE_ROW)
#undef AE_ROW
};

static const char *const route_allow[] = {
    [R_NONE] = "",
    [R_ACCOUNT] = "GET, POST",
    [R_NAMESPACE] = "DELETE",
    [R_PROPS] = "GET, PATCH, DELETE",
    [R_PROP] = "GET, PUT, DELETE",
    [R_SESSION_IDS] = "GET",
    [R_SESSION_PROPS] = "GET",
    [R_SESSION_TTL] = "GET, POST",
    [R_ADMIN_KEY] = "PUT",
    [R_HEALTHZ] = "GET",
    [R_READYZ] = "GET",
    [R_ADMIN_DIGEST] = "GET",
    [R_ADMIN_BACKUP] = "GET",
    [R_METRICS] = "GET",
    [R_ADMIN_CLUSTER] = "GET",
    [R_ADMIN_NODES] = "POST",
    [R_ADMIN_NODE] = "DELETE",
    [R_ADMIN_TRANSFER] = "POST",
    [R_INT_FORWARD] = "POST",
    [R_INT_READ_INDEX] = "GET",
    [R_INT_JOIN] = "POST",
};

/* Route templates for logs: never the raw path, which holds ids. */
static const char *const route_template[] = {
    [R_NONE] = "unknown",
    [R_ACCOUNT] = "/v1/account/{acc}",
    [R_NAMESPACE] = "/v1/account/{acc}/{ns}",
    [R_PROPS] = "/v1/account/{acc}/{ns}[/{sid}]/properties",
    [R_PROP] = "/v1/account/{acc}/{ns}[/{sid}]/properties/{prop}",
    [R_SESSION_IDS] = "/v1/account/{acc}/{ns}/session-ids",
    [R_SESSION_PROPS] = "/v1/account/{acc}/{ns}/session-properties",
    [R_SESSION_TTL] = "/v1/account/{acc}/namespace/{ns}/session",
    [R_ADMIN_KEY] = "/admin/v1/accounts/{acc}/key",
    [R_HEALTHZ] = "/healthz",
    [R_READYZ] = "/readyz",
    [R_ADMIN_DIGEST] = "/admin/v1/digest",
    [R_ADMIN_BACKUP] = "/admin/v1/backup",
    [R_METRICS] = "/metrics",
    [R_ADMIN_CLUSTER] = "/admin/v1/cluster",
    [R_ADMIN_NODES] = "/admin/v1/cluster/nodes",
    [R_ADMIN_NODE] = "/admin/v1/cluster/nodes/{id}",
    [R_ADMIN_TRANSFER] = "/admin/v1/cluster/transfer",
    [R_INT_FORWARD] = "/internal/v1/forward",
    [R_INT_READ_INDEX] = "/internal/v1/read-index",
    [R_INT_JOIN] = "/internal/v1/join",
};

/* --- Small helpers ---------------------------------------------------- */

void api_op_list_push(struct op_list *l, struct api_op *op)
{
    op->prev = l->tail;
    op->next = NULL;
    if (l->tail != NULL) {
        l->tail->next = op;
    } else {
        l->head = op;
    }
    l->tail = op;
    l->n++;
    op->list = l;
}

void api_op_list_remove(struct api_op *op)
{
    struct op_list *l = op->list;

    if (l == NULL) {
        return;
    }
    if (op->prev != NULL) {
        op->prev->next = op->next;
    } else {
        l->head = op->next;
    }
    if (op->next != NULL) {
        op->next->prev = op->prev;
    } else {
        l->tail = op->prev;
    }
    l->n--;
    op->prev = op->next = NULL;
    op->list = NULL;
}

void api_op_free(struct api_op *op)
{
    struct api *a = op->api;

    api_op_list_remove(op);
    free(op->body);
    free(op);
    a->pending--;
}

uint64_t api_wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void log_request(struct api *a, struct http_request *req, int status)
{
    unsigned route = ((unsigned)(uintptr_t)req->data >> ROUTE_SHIFT) & 0xffu;
    const struct http_header *rid;
    char rid_text[80];
    size_t i;

    /* Metrics are recorded where the request line is: same route, method,
     * status and duration. */
    metrics_api_request(
        route_template[route < sizeof route_template / sizeof route_template[0]
                           ? route
                           : R_NONE],
        req->method_name, status,
        (double)(uv_now(a->cfg.loop) - req->start_ms) / 1000.0);
    if (!log_enabled(LOG_DEBUG)) {
        return;
    }
    if (route >= sizeof route_template / sizeof route_template[0]) {
        route = R_NONE;
    }
    rid = http_request_header(req, "x-request-id");
    rid_text[0] = '\0';
    if (rid != NULL) {
        /* Printable ASCII only, quotes dropped, bounded. */
        size_t n = 0;
        for (i = 0; i < rid->value_len && n < sizeof rid_text - 1; i++) {
            char c = rid->value[i];
            if (c > 0x20 && c < 0x7f && c != '"' && c != '\\') {
                rid_text[n++] = c;
            }
        }
        rid_text[n] = '\0';
    }
    LOGD("request", " method=%s route=\"%s\" status=%d duration_ms=%llu request_id=\"%s\"",
         req->method_name, route_template[route], status,
         (unsigned long long)(uv_now(a->cfg.loop) - req->start_ms), rid_text);
}

/* Write "Name: v\r\n" (v in quotes when quoted) at p; returns the end. The
 * request path builds these without printf. */
static char *put_header_u64(char *p, const char *name, uint64_t v, int quoted)
{
    char digits[20];
    size_t n = 0;
    size_t name_len = strlen(name);

    do {
        digits[sizeof digits - 1 - n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    memcpy(p, name, name_len);
    p += name_len;
    *p++ = ':';
    *p++ = ' ';
    if (quoted) {
        *p++ = '"';
    }
    memcpy(p, digits + sizeof digits - n, n);
    p += n;
    if (quoted) {
        *p++ = '"';
    }
    *p++ = '\r';
    *p++ = '\n';
    *p = '\0';
    return p;
}

int api_respond(struct api *a, struct http_request *req, int status,
                   const char *extra, const char *body, size_t len)
{
    char headers[512];
    size_t node_len = strlen(a->node_header);
    size_t extra_len = extra != NULL ? strlen(extra) : 0;

    if (req == NULL) {
        return 0; /* an internal operation with nobody to answer */
    }
    log_request(a, req, status);
    if (node_len + extra_len >= sizeof headers) {
        extra_len = 0; /* never with our own header lines */
    }
    memcpy(headers, a->node_header, node_len);
    if (extra_len > 0) {
        memcpy(headers + node_len, extra, extra_len);
    }
    headers[node_len + extra_len] = '\0';
    return http_respond(req, status, headers, body, len);
}

void api_respond_error(struct api *a, struct http_request *req,
                          enum api_error e, const char *message)
{
    struct buf body = BUF_INIT;
    char extra[128] = "";
    int rv;

    if (req == NULL) {
        return;
    }
    metrics_api_error(api_errors[e].code, api_errors[e].status);
    if (e == AE_OVERLOADED || e == AE_SCRAPES || e == AE_UNAVAILABLE ||
        e == AE_SHUTTING_DOWN) {
        snprintf(extra, sizeof extra, "Retry-After: 1\r\n");
    }
    rv = buf_append_str(&body, "{\"code\":\"");
    rv |= buf_append_str(&body, api_errors[e].code);
    rv |= buf_append_str(&body, "\",\"message\":");
    if (message == NULL) {
        message = api_errors[e].message;
    }
    rv |= buf_append_json_string(&body, message, strlen(message));
    rv |= buf_append_char(&body, '}');
    if (rv != 0) {
        api_respond(a, req, 500, NULL, NULL, 0);
    } else {
        api_respond(a, req, api_errors[e].status, extra, body.base, body.len);
    }
    buf_free(&body);
}

static void respond_method(struct api *a, struct http_request *req,
                           enum route_id id)
{
    char extra[96];

    snprintf(extra, sizeof extra, "Allow: %s\r\n", route_allow[id]);
    struct buf body = BUF_INIT;
    if (buf_printf(&body,
                   "{\"code\":\"method_not_allowed\",\"message\":\"method %s "
                   "not allowed; allowed: %s\"}",
                   req->method_name, route_allow[id]) != 0) {
        buf_free(&body);
        api_respond(a, req, 500, NULL, NULL, 0);
        return;
    }
    api_respond(a, req, 405, extra, body.base, body.len);
    buf_free(&body);
}

int api_bytes_eq(const char *s, size_t n, const char *lit)
{
    return strlen(lit) == n && memcmp(s, lit, n) == 0;
}

/* --- Validators (exposed for tests) ----------------------------------- */

int api_valid_account(const char *s, size_t n)
{
    size_t i;

    if (n == 0 || n > 64) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!isalnum(c) && c != '_' && c != '-') {
            return 0;
        }
    }
    return 1;
}

int api_valid_namespace(const char *s, size_t n)
{
    size_t i;

    if (n == 0 || n > 64) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!isalnum(c) && c != '_') {
            return 0;
        }
    }
    return 1;
}

int api_reserved_namespace(const char *s, size_t n)
{
    static const char *const reserved[] = {"consumer", "operational",
                                           "conversation", "faas", "custom",
                                           "sde"};
    size_t i;

    for (i = 0; i < sizeof reserved / sizeof reserved[0]; i++) {
        if (api_bytes_eq(s, n, reserved[i])) {
            return 1;
        }
    }
    return 0;
}

/* UTF-8, 1..API_MAX_NAME bytes, no control characters. */
static int valid_name(const char *s, size_t n)
{
    size_t i;

    if (n == 0 || n > API_MAX_NAME || !json_utf8_valid(s, n)) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) {
            return 0;
        }
    }
    return 1;
}

int api_valid_session(const char *s, size_t n)
{
    return valid_name(s, n);
}

int api_valid_property(const char *s, size_t n)
{
    return valid_name(s, n);
}

int api_percent_decode(const char *src, size_t n, struct buf *out)
{
    size_t plain;
    size_t i;

    if (buf_reserve(out, n) != 0) {
        return -1;
    }
    /* The plain printable ASCII prefix (most segments are nothing else)
     * is copied whole: nothing in it needs decoding or checking. */
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)src[i];

        if (c == '%' || c < 0x20 || c >= 0x7f) {
            break;
        }
    }
    memcpy(out->base + out->len, src, i);
    out->len += i;
    plain = out->len;
    for (; i < n; i++) {
        char c = src[i];
        if (c == '%') {
            int hi, lo;
            if (n - i < 3 || (hi = hex_digit(src[i + 1])) < 0 ||
                (lo = hex_digit(src[i + 2])) < 0) {
                return -1;
            }
            c = (char)(hi << 4 | lo);
            i += 2;
        }
        if ((unsigned char)c < 0x20 || c == 0x7f) {
            return -1;
        }
        out->base[out->len++] = c;
    }
    out->base[out->len] = '\0';
    /* ASCII ends no UTF-8 sequence: checking from plain on is enough. */
    if (!json_utf8_valid(out->base + plain, out->len - plain)) {
        return -2;
    }
    return 0;
}

int api_parse_uint(const char *s, size_t n, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    size_t i;

    if (n == 0 || n > 20) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
        if (v > (max - (uint64_t)(s[i] - '0')) / 10) {
            return -1;
        }
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return 0;
}

/* --- Query strings ---------------------------------------------------- */

/* Find parameter `name` in the query; decode its value into out. Returns 1
 * found, 0 absent, -1 bad encoding. '+' is kept as is (paths and names
 * here never use form encoding). */
static int query_param(const struct route *r, const char *name, struct buf *out)
{
    const char *p = r->query;
    const char *end;
    size_t name_len = strlen(name);

    if (p == NULL) {
        return 0;
    }
    end = p + r->query_len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp != NULL ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(stop - p));
        const char *key_end = eq != NULL ? eq : stop;

        if ((size_t)(key_end - p) == name_len && memcmp(p, name, name_len) == 0) {
            const char *v = eq != NULL ? eq + 1 : stop;
            buf_reset(out);
            if (api_percent_decode(v, (size_t)(stop - v), out) != 0) {
                return -1;
            }
            return 1;
        }
        p = stop + 1;
    }
    return 0;
}

/* --- Routing ---------------------------------------------------------- */

static void route_free(struct route *r)
{
    buf_free(&r->text);
}

static struct cmd_bytes seg_bytes(const struct route *r, unsigned i)
{
    struct cmd_bytes b = {r->seg[i].base != NULL ? r->seg[i].base : "",
                          (uint32_t)r->seg[i].len};
    return b;
}

static int seg_is(const struct route *r, unsigned i, const char *lit)
{
    return i < r->n_seg && api_bytes_eq(r->seg[i].base, r->seg[i].len, lit);
}

static const struct cmd_bytes default_sid = {STORAGE_DEFAULT_SID,
                                             sizeof STORAGE_DEFAULT_SID - 1};

/* Split and decode the path, then match it. Returns 0, or an api_error
 * (bad encoding in a segment). R_NONE when nothing matches. */
static int route_match(struct http_request *req, struct route *r)
{
    const char *url = req->url;
    const char *q = memchr(url, '?', req->url_len);
    size_t path_len = q != NULL ? (size_t)(q - url) : req->url_len;
    const char *p = url;
    const char *end = url + path_len;
    unsigned base; /* first segment after /v1/account */
    int rv;

    memset(r, 0, sizeof *r);
    r->id = R_NONE;
    if (q != NULL) {
        r->query = q + 1;
        r->query_len = req->url_len - path_len - 1;
    }
    if (path_len == 0 || url[0] != '/') {
        return 0;
    }
    /* Drop one trailing slash ("/a/b/" is "/a/b"). */
    if (path_len > 1 && end[-1] == '/') {
        end--;
    }
    /* Decoding never lengthens a segment: with room for the whole path
     * and a NUL per segment reserved now, text never moves and the views
     * stay valid. */
    if (buf_reserve(&r->text, path_len + API_MAX_SEGMENTS) != 0) {
        return AE_INTERNAL;
    }
    p++;
    while (p <= end) {
        const char *slash = memchr(p, '/', (size_t)(end - p));
        const char *stop = slash != NULL ? slash : end;
        size_t start = r->text.len;

        if (r->n_seg == API_MAX_SEGMENTS || stop == p) {
            return 0; /* too deep, or an empty segment: no route */
        }
        rv = api_percent_decode(p, (size_t)(stop - p), &r->text);
        if (rv != 0) {
            return rv == -2 ? AE_UTF8 : AE_BAD_NAME;
        }
        r->seg[r->n_seg].base = r->text.base + start;
        r->seg[r->n_seg].len = r->text.len - start;
        r->text.len++; /* keep the NUL api_percent_decode wrote */
        r->n_seg++;
        p = stop + 1;
        if (slash == NULL) {
            break;
        }
    }

    if (r->n_seg == 1 && seg_is(r, 0, "healthz")) {
        r->id = R_HEALTHZ;
        return 0;
    }
    if (r->n_seg == 1 && seg_is(r, 0, "readyz")) {
        r->id = R_READYZ;
        return 0;
    }
    if (r->n_seg == 1 && seg_is(r, 0, "metrics")) {
        r->id = R_METRICS;
        return 0;
    }
    if (r->n_seg >= 3 && seg_is(r, 0, "admin") && seg_is(r, 1, "v1") &&
        seg_is(r, 2, "cluster")) {
        if (r->n_seg == 3) {
            r->id = R_ADMIN_CLUSTER;
        } else if (r->n_seg == 4 && seg_is(r, 3, "nodes")) {
            r->id = R_ADMIN_NODES;
        } else if (r->n_seg == 5 && seg_is(r, 3, "nodes")) {
            r->id = R_ADMIN_NODE;
        } else if (r->n_seg == 4 && seg_is(r, 3, "transfer")) {
            r->id = R_ADMIN_TRANSFER;
        }
        return 0;
    }
    if (r->n_seg == 3 && seg_is(r, 0, "internal") && seg_is(r, 1, "v1")) {
        if (seg_is(r, 2, "forward")) {
            r->id = R_INT_FORWARD;
        } else if (seg_is(r, 2, "read-index")) {
            r->id = R_INT_READ_INDEX;
        } else if (seg_is(r, 2, "join")) {
            r->id = R_INT_JOIN;
        }
        return 0;
    }
    if (r->n_seg == 3 && seg_is(r, 0, "admin") && seg_is(r, 1, "v1") &&
        seg_is(r, 2, "digest")) {
        r->id = R_ADMIN_DIGEST;
        return 0;
    }
    if (r->n_seg == 3 && seg_is(r, 0, "admin") && seg_is(r, 1, "v1") &&
        seg_is(r, 2, "backup")) {
        r->id = R_ADMIN_BACKUP;
        return 0;
    }
    if (r->n_seg == 5 && seg_is(r, 0, "admin") && seg_is(r, 1, "v1") &&
        seg_is(r, 2, "accounts") && seg_is(r, 4, "key")) {
        r->id = R_ADMIN_KEY;
        r->where.acc = seg_bytes(r, 3);
        return 0;
    }
    if (r->n_seg < 3 || !seg_is(r, 0, "v1") || !seg_is(r, 1, "account")) {
        return 0;
    }
    base = 2;
    r->where.acc = seg_bytes(r, base);
    switch (r->n_seg - base) {
        case 1:
            r->id = R_ACCOUNT;
            break;
        case 2:
            r->id = R_NAMESPACE;
            r->where.ns = seg_bytes(r, base + 1);
            break;
        case 3:
            r->where.ns = seg_bytes(r, base + 1);
            r->where.sid = default_sid;
            if (seg_is(r, base + 2, "properties")) {
                r->id = R_PROPS;
            } else if (seg_is(r, base + 2, "session-ids")) {
                r->id = R_SESSION_IDS;
            } else if (seg_is(r, base + 2, "session-properties")) {
                r->id = R_SESSION_PROPS;
            }
            break;
        case 4:
            if (seg_is(r, base + 1, "namespace") && seg_is(r, base + 3, "session")) {
                r->id = R_SESSION_TTL;
                r->where.ns = seg_bytes(r, base + 2);
            } else if (seg_is(r, base + 2, "properties")) {
                r->id = R_PROP;
                r->where.ns = seg_bytes(r, base + 1);
                r->where.sid = default_sid;
                r->where.name = seg_bytes(r, base + 3);
            } else if (seg_is(r, base + 3, "properties")) {
                r->id = R_PROPS;
                r->where.ns = seg_bytes(r, base + 1);
                r->where.sid = seg_bytes(r, base + 2);
            }
            break;
        case 5:
            if (seg_is(r, base + 3, "properties")) {
                r->id = R_PROP;
                r->where.ns = seg_bytes(r, base + 1);
                r->where.sid = seg_bytes(r, base + 2);
                r->where.name = seg_bytes(r, base + 4);
            }
            break;
        default:
            break;
    }
    return 0;
}

static int method_allowed(enum route_id id, int method)
{
    switch (id) {
        case R_ACCOUNT: return method == HTTP_GET || method == HTTP_POST;
        case R_NAMESPACE: return method == HTTP_DELETE;
        case R_PROPS:
            return method == HTTP_GET || method == HTTP_PATCH ||
                   method == HTTP_DELETE;
        case R_PROP:
            return method == HTTP_GET || method == HTTP_PUT ||
                   method == HTTP_DELETE;
        case R_SESSION_IDS:
        case R_SESSION_PROPS:
        case R_HEALTHZ:
        case R_READYZ:
        case R_ADMIN_DIGEST:
        case R_ADMIN_BACKUP:
        case R_ADMIN_CLUSTER:
        case R_INT_READ_INDEX:
        case R_METRICS: return method == HTTP_GET;
        case R_ADMIN_NODES:
        case R_ADMIN_TRANSFER:
        case R_INT_FORWARD:
        case R_INT_JOIN: return method == HTTP_POST;
        case R_ADMIN_NODE: return method == HTTP_DELETE;
        case R_SESSION_TTL: return method == HTTP_GET || method == HTTP_POST;
        case R_ADMIN_KEY: return method == HTTP_PUT;
        default: return 0;
    }
}

/* --- Auth ------------------------------------------------------------- */

/* A verified (account, key) pair is remembered in a small direct-mapped
 * cache, so the SHA-256 and the SQLite lookup are paid once per key rather
 * than once per request. Entries are valid only for the storage's current
 * keys generation, which moves on every SET_KEY and restore, so a rotated
 * or revoked key stops working at the same index as without the cache. The
 * presented key is compared with the cached one in constant time. */
static unsigned auth_slot(const char *acc, size_t acc_len, const char *key,
                          size_t key_len)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    size_t i;

    for (i = 0; i < acc_len; i++) {
        h = (h ^ (uint8_t)acc[i]) * 16777619u;
    }
    for (i = 0; i < key_len; i++) {
        h = (h ^ (uint8_t)key[i]) * 16777619u;
    }
    return h % API_AUTH_CACHE;
}

static int auth_account(struct api *a, struct http_request *req,
                        const struct route *r)
{
    const struct http_header *h = http_request_header(req, "maven-api-key");
    uint8_t hash[SHA256_LEN];
    uint64_t gen = storage_keys_generation(a->cfg.storage);
    struct api_auth_entry *e;
    const char *acc = r->where.acc.base;
    size_t acc_len = r->where.acc.len;

    if (h == NULL || h->value_len == 0 || !api_valid_account(acc, acc_len)) {
        return 0;
    }
    e = &a->auth_cache[auth_slot(acc, acc_len, h->value, h->value_len)];
    if (h->value_len <= sizeof e->key && e->gen == gen && e->gen != 0 &&
        e->acc_len == acc_len && memcmp(e->acc, acc, acc_len) == 0 &&
        e->key_len == h->value_len &&
        ct_equal(e->key, h->value, h->value_len)) {
        return 1;
    }
    sha256(h->value, h->value_len, hash);
    if (!storage_key_verify(a->cfg.storage, acc, acc_len, hash)) {
        return 0;
    }
    if (h->value_len <= sizeof e->key && acc_len <= sizeof e->acc) {
        memcpy(e->acc, acc, acc_len);
        e->acc_len = acc_len;
        memcpy(e->key, h->value, h->value_len);
        e->key_len = h->value_len;
        e->gen = gen;
    }
    return 1;
}

/* Compare the bearer token in constant time (over the token's length:
 * both are hashed first so lengths leak nothing either). */
int api_auth_admin(struct api *a, struct http_request *req)
{
    const struct http_header *h = http_request_header(req, "authorization");
    uint8_t want[SHA256_LEN];
    uint8_t got[SHA256_LEN];

    if (h == NULL || h->value_len < 7 || strncasecmp(h->value, "Bearer ", 7) != 0) {
        return 0;
    }
    sha256(a->admin_token, strlen(a->admin_token), want);
    sha256(h->value + 7, h->value_len - 7, got);
    return ct_equal(want, got, SHA256_LEN);
}

int api_content_type_json(struct http_request *req)
{
    const struct http_header *h = http_request_header(req, "content-type");
    size_t n;

    if (h == NULL) {
        return 0;
    }
    n = strcspn(h->value, "; \t");
    return n == 16 && strncasecmp(h->value, "application/json", 16) == 0;
}

/* --- Writes ----------------------------------------------------------- */

static void write_answer(struct api *a, struct http_request *req,
                         struct api_op *op, int status,
                         const struct storage_result *res)
{
    char extra[64];

    if (status != CONSENSUS_OK) {
        if (status == CONSENSUS_ENOTLEADER) {
            api_respond_error(a, req, AE_UNAVAILABLE, NULL);
        } else if (status == CONSENSUS_ENOMEM || status == CONSENSUS_EIO) {
            api_respond_error(a, req, AE_INTERNAL, consensus_strerror(status));
        } else {
            /* Leadership lost or shutdown with the entry possibly in the
             * log: it may still commit. */
            api_respond_error(a, req, AE_UNKNOWN_OUTCOME, NULL);
        }
        return;
    }
    switch (res->status) {
        case STORAGE_OK:
            put_header_u64(extra, "X-Context-Index", res->index, 0);
            api_respond(a, req, op->success_status, extra, op->body, op->body_len);
            return;
        case STORAGE_ENOTFOUND: api_respond_error(a, req, AE_NS_NOT_FOUND, NULL); return;
        case STORAGE_EPRECONDITION:
            api_respond_error(a, req, AE_PRECONDITION, NULL);
            return;
        case STORAGE_ETOOLARGE: api_respond_error(a, req, AE_DOC_TOO_LARGE, NULL); return;
        default:
            api_respond_error(a, req, AE_INTERNAL, storage_strerror(res->status));
            return;
    }
}

static void write_cb(struct consensus_propose *prop, int status,
                     const struct storage_result *result)
{
    struct api_op *op = CONTAINER_OF(prop, struct api_op, prop);
    struct api *a = op->api;

    /* The op was made by api_propose with the write timeout as deadline. */
    metrics_api_proposal(
        (double)(uv_now(a->cfg.loop) -
                 (op->deadline - a->cfg.write_timeout_ms)) /
        1000.0);
    api_op_list_remove(op);
    if (op->applied != NULL && status == CONSENSUS_OK &&
        result->status == STORAGE_OK) {
        op->applied(op, result); /* continues the operation; frees op */
        return;
    }
    if (op->req != NULL) {
        write_answer(op->api, op->req, op, status, result);
        op->req = NULL;
    }
    api_op_free(op);
}

/* Fill the header fields every write shares: If-Match and X-REQUEST-ID.
 * Returns 0 or an api_error. */
static int write_headers(struct http_request *req, struct cmd *cmd)
{
    const struct http_header *h = http_request_header(req, "if-match");
    const struct http_header *rid = http_request_header(req, "x-request-id");

    if (h != NULL) {
        const char *v = h->value;
        size_t n = h->value_len;
        uint64_t version;

        if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
            v++;
            n -= 2;
        }
        if (api_parse_uint(v, n, UINT64_MAX, &version) != 0) {
            return AE_BAD_REQUEST;
        }
        cmd->has_if_match = 1;
        cmd->if_match = version;
    }
    if (rid != NULL) {
        if (rid->value_len == 0 || rid->value_len > API_MAX_REQUEST_ID) {
            return AE_BAD_REQUEST;
        }
        cmd->request_id.base = rid->value;
        cmd->request_id.len = (uint32_t)rid->value_len;
    }
    return 0;
}

void api_consensus_info(struct api *a, struct consensus_info *info)
{
    uint64_t applied;

    if (a->cfg.consensus != NULL) {
        consensus_info(a->cfg.consensus, info);
        return;
    }
    applied = storage_applied_index(a->cfg.storage);
    memset(info, 0, sizeof *info);
    info->is_leader = 1;
    info->leader_id = a->cfg.node_id;
    info->term = 1;
    info->commit_index = applied;
    info->applied_index = applied;
    info->last_index = applied;
    info->role = "leader";
}

static int is_leader(struct api *a)
{
    struct consensus_info info;

    api_consensus_info(a, &info);
    return info.is_leader;
}

/* Encode and propose cmd; on success the answer comes from write_cb.
 * body (owned, may be NULL) is the success body. */
struct api_op *api_propose(struct api *a, struct http_request *req,
                           const struct cmd *cmd, int success_status,
                           char *body, size_t body_len)
{
    struct api_op *op;
    int rv;

    if (a->cfg.consensus == NULL) {
        /* Nothing to propose to (unit tests and fuzzing). */
        free(body);
        api_respond_error(a, req, AE_UNAVAILABLE, NULL);
        return NULL;
    }
    if (req != NULL && !is_leader(a)) {
        /* Validated here; the leader validates again and applies. */
        free(body);
        api_forward(a, req);
        return NULL;
    }
    buf_reset(&a->scratch);
    if (cmd_encode(cmd, &a->scratch) != 0) {
        free(body);
        api_respond_error(a, req, AE_INTERNAL, "cannot encode command");
        return NULL;
    }
    op = api_op_new(a, req, OP_WRITE, a->cfg.write_timeout_ms);
    if (op == NULL) {
        free(body);
        api_respond_error(a, req, AE_INTERNAL, "out of memory");
        return NULL;
    }
    op->success_status = success_status;
    op->body = body;
    op->body_len = body_len;
    op->prop.data = op;
    op->prop.cb = write_cb;
    rv = consensus_propose(a->cfg.consensus, &op->prop, a->scratch.base,
                           a->scratch.len);
    if (rv != CONSENSUS_OK) {
        op->req = NULL;
        api_op_free(op);
        switch (rv) {
            case CONSENSUS_EBUSY:
                api_respond_error(a, req, AE_OVERLOADED, NULL);
                break;
            case CONSENSUS_ENOTLEADER:
                api_respond_error(a, req, AE_UNAVAILABLE, NULL);
                break;
            case CONSENSUS_ESHUTDOWN:
                api_respond_error(a, req, AE_SHUTTING_DOWN, NULL);
                break;
            default:
                api_respond_error(a, req, AE_INTERNAL, consensus_strerror(rv));
                break;
        }
        return NULL;
    }
    return op;
}

enum api_error api_json_error(int rv)
{
    switch (rv) {
        case JSON_EDEPTH: return AE_TOO_DEEP;
        case JSON_EUTF8: return AE_UTF8;
        case JSON_EDUP: return AE_DUPLICATE;
        case JSON_ETYPE: return AE_WRONG_TYPE;
        case JSON_ENOMEM: return AE_INTERNAL;
        default: return AE_MALFORMED_JSON;
    }
}

/* The ttlSecond query parameter: -1 when absent. */
static int parse_ttl(const struct route *r, int required, int64_t *ttl)
{
    struct buf v = BUF_INIT;
    uint64_t n;
    int rv = query_param(r, "ttlSecond", &v);

    *ttl = -1;
    if (rv == 0) {
        buf_free(&v);
        return required ? AE_BAD_TTL : 0;
    }
    if (rv < 0 || api_parse_uint(v.base, v.len, API_MAX_TTL, &n) != 0) {
        buf_free(&v);
        return AE_BAD_TTL;
    }
    buf_free(&v);
    *ttl = (int64_t)n;
    return 0;
}

/* The string member `field` of a JSON object body, decoded into out. */
int api_body_string_member(struct http_request *req, const char *field,
                              struct buf *out)
{
    struct json_member *m = NULL;
    size_t n = 0, i;
    int rv;

    rv = json_object_members(req->body, req->body_len, JSON_MAX_DEPTH, &m, &n);
    if (rv != JSON_OK) {
        return api_json_error(rv);
    }
    rv = AE_WRONG_TYPE;
    for (i = 0; i < n; i++) {
        if (strcmp(m[i].name, field) == 0 && m[i].name_len == strlen(field)) {
            if (m[i].type == JSON_T_STRING) {
                rv = json_string_decode(m[i].value, m[i].value_len, out) == 0
                         ? 0
                         : AE_INTERNAL;
            }
            break;
        }
    }
    json_members_free(m, n);
    return rv;
}

static int check_ns_writable(const struct cmd_bytes *ns)
{
    if (!api_valid_namespace(ns->base, ns->len)) {
        return AE_BAD_NAME;
    }
    if (api_reserved_namespace(ns->base, ns->len)) {
        return AE_RESERVED;
    }
    return 0;
}

static int check_where(const struct route *r, int writing)
{
    const struct cmd *w = &r->where;
    int rv;

    if (writing) {
        if ((rv = check_ns_writable(&w->ns)) != 0) {
            return rv;
        }
    } else if (!api_valid_namespace(w->ns.base, w->ns.len)) {
        return AE_BAD_NAME;
    }
    if (w->sid.len > 0 && !api_valid_session(w->sid.base, w->sid.len)) {
        return AE_BAD_NAME;
    }
    if (r->id == R_PROP && !api_valid_property(w->name.base, w->name.len)) {
        return AE_BAD_NAME;
    }
    return 0;
}

/* Route-specific write handling. Returns 0 when answered or proposed, or
 * an api_error to answer. */
static int handle_write(struct api *a, struct http_request *req,
                        struct route *r)
{
    struct cmd cmd = r->where;
    struct buf name = BUF_INIT;
    struct buf pairs = BUF_INIT;
    struct json_member *m = NULL;
    size_t n = 0, i;
    int has_body = req->method != HTTP_DELETE;
    int rv;

    cmd.ttl = -1;
    if (has_body && !api_content_type_json(req)) {
        return AE_MEDIA_TYPE;
    }
    if ((rv = write_headers(req, &cmd)) != 0) {
        return rv;
    }
    switch (r->id) {
        case R_ACCOUNT: /* POST: create namespace / set its TTL */
            if ((rv = parse_ttl(r, 0, &cmd.ttl)) != 0) {
                return rv;
            }
            if ((rv = api_body_string_member(req, "name", &name)) != 0) {
                break;
            }
            cmd.ns.base = name.base;
            cmd.ns.len = (uint32_t)name.len;
            if ((rv = check_ns_writable(&cmd.ns)) != 0) {
                break;
            }
            cmd.op = CMD_NS_PUT;
            cmd.has_if_match = 0;
            cmd.if_match = 0;
            api_propose(a, req, &cmd, 204, NULL, 0);
            break;
        case R_NAMESPACE:
            if ((rv = check_ns_writable(&cmd.ns)) != 0) {
                break;
            }
            cmd.op = CMD_NS_DELETE;
            cmd.has_if_match = 0;
            cmd.if_match = 0;
            api_propose(a, req, &cmd, 204, NULL, 0);
            break;
        case R_SESSION_TTL: /* POST */
            if ((rv = check_ns_writable(&cmd.ns)) != 0) {
                break;
            }
            if ((rv = parse_ttl(r, 1, &cmd.ttl)) != 0) {
                break;
            }
            if ((rv = api_body_string_member(req, "sessionId", &name)) != 0) {
                break;
            }
            if (!api_valid_session(name.base, name.len)) {
                rv = AE_BAD_NAME;
                break;
            }
            cmd.sid.base = name.base;
            cmd.sid.len = (uint32_t)name.len;
            cmd.op = CMD_SESSION_TTL;
            cmd.has_if_match = 0;
            cmd.if_match = 0;
            api_propose(a, req, &cmd, 204, NULL, 0);
            break;
        case R_PROPS:
            if ((rv = check_where(r, 1)) != 0) {
                break;
            }
            if (req->method == HTTP_DELETE) {
                cmd.op = CMD_SESSION_CLEAR;
                api_propose(a, req, &cmd, 204, NULL, 0);
                break;
            }
            rv = json_object_members(req->body, req->body_len, JSON_MAX_DEPTH,
                                     &m, &n);
            if (rv != JSON_OK) {
                rv = api_json_error(rv);
                break;
            }
            if (n > a->cfg.max_patch_properties) {
                rv = AE_TOO_MANY;
                break;
            }
            for (i = 0; i < n && rv == 0; i++) {
                if (!api_valid_property(m[i].name, m[i].name_len)) {
                    rv = AE_BAD_NAME;
                } else if (cmd_props_add(&pairs, m[i].name, m[i].name_len,
                                         m[i].value, m[i].value_len) != 0) {
                    rv = AE_INTERNAL;
                }
            }
            if (rv != 0) {
                break;
            }
            cmd.op = CMD_PATCH;
            cmd.n_props = (uint32_t)n;
            cmd.props.base = pairs.base;
            cmd.props.len = (uint32_t)pairs.len;
            api_propose(a, req, &cmd, 204, NULL, 0);
            break;
        case R_PROP: {
            size_t start, end;
            enum json_type type;

            if ((rv = check_where(r, 1)) != 0) {
                break;
            }
            if (req->method == HTTP_DELETE) {
                cmd.op = CMD_PROP_DELETE;
                api_propose(a, req, &cmd, 204, NULL, 0);
                break;
            }
            rv = json_validate(req->body, req->body_len, JSON_MAX_DEPTH, &start,
                               &end, &type);
            if (rv != JSON_OK) {
                rv = api_json_error(rv);
                break;
            }
            cmd.op = CMD_PROP_PUT;
            cmd.value.base = req->body + start;
            cmd.value.len = (uint32_t)(end - start);
            api_propose(a, req, &cmd, 204, NULL, 0);
            break;
        }
        default:
            rv = AE_INTERNAL;
            break;
    }
    json_members_free(m, n);
    buf_free(&pairs);
    buf_free(&name);
    return rv;
}

/* --- Reads ------------------------------------------------------------ */

static void api_check_cb(uv_check_t *c);

/* Barrier completion of a read: redispatch with GATE_BARRIER. */
static void api_barrier_cb(struct consensus_read *read, int status)
{
    struct api_op *op = CONTAINER_OF(read, struct api_op, read);
    struct api *a = op->api;
    struct http_request *req = op->req;

    op->req = NULL;
    api_op_free(op);
    if (req == NULL) {
        return; /* already answered by the timeout */
    }
    if (status != CONSENSUS_OK) {
        api_respond_error(a, req, status == CONSENSUS_ESHUTDOWN ? AE_SHUTTING_DOWN
                                                            : AE_UNAVAILABLE,
                      NULL);
        return;
    }
    api_redispatch(a, req, ((unsigned)(uintptr_t)req->data & GATE_MASK) | GATE_BARRIER);
}

struct api_op *api_op_new(struct api *a, struct http_request *req,
                          enum op_kind kind, uint64_t timeout_ms)
{
    struct api_op *op = calloc(1, sizeof *op);

    if (op == NULL) {
        return NULL;
    }
    op->api = a;
    op->req = req;
    op->kind = kind;
    op->deadline = uv_now(a->cfg.loop) + timeout_ms;
    a->pending++;
    switch (kind) {
        case OP_WRITE: api_op_list_push(&a->writes, op); break;
        case OP_BARRIER: api_op_list_push(&a->barriers, op); break;
        case OP_MIN: api_op_list_push(&a->mins, op); break;
        default: break; /* the caller lists it, or nothing needs to */
    }
    return op;
}

enum level { LEVEL_LINEARIZABLE, LEVEL_LEADER, LEVEL_STALE };

/* Decide whether a read can be served now. Returns 1 to serve, 0 when the
 * request was deferred or answered. */
static int read_gate(struct api *a, struct http_request *req,
                     const struct route *r)
{
    unsigned gate = (unsigned)(uintptr_t)req->data & GATE_MASK;
    const struct http_header *h;
    struct buf v = BUF_INIT;
    enum level level = LEVEL_LINEARIZABLE;
    int explicit_level = 0;
    uint64_t min_index = 0;
    struct consensus_info info;
    int rv;

    rv = query_param(r, "consistency", &v);
    if (rv == 0 && (h = http_request_header(req, "x-context-consistency")) != NULL) {
        buf_reset(&v);
        rv = buf_append(&v, h->value, h->value_len) == 0 ? 1 : -1;
    }
    if (rv > 0) {
        explicit_level = 1;
        if (api_bytes_eq(v.base, v.len, "linearizable")) {
            level = LEVEL_LINEARIZABLE;
        } else if (api_bytes_eq(v.base, v.len, "leader")) {
            level = LEVEL_LEADER;
        } else if (api_bytes_eq(v.base, v.len, "stale")) {
            level = LEVEL_STALE;
        } else {
            rv = -1;
        }
    }
    buf_free(&v);
    if (rv < 0) {
        api_respond_error(a, req, AE_BAD_REQUEST,
                      "consistency must be linearizable, leader or stale");
        return 0;
    }
    h = http_request_header(req, "x-context-min-index");
    if (h != NULL) {
        if (api_parse_uint(h->value, h->value_len, UINT64_MAX, &min_index) != 0) {
            api_respond_error(a, req, AE_BAD_REQUEST,
                          "X-Context-Min-Index must be an integer");
            return 0;
        }
        if (!(gate & GATE_MIN_INDEX) &&
            storage_applied_index(a->cfg.storage) < min_index) {
            struct api_op *op = api_op_new(a, req, OP_MIN, a->cfg.read_timeout_ms);
            if (op == NULL) {
                api_respond_error(a, req, AE_INTERNAL, "out of memory");
                return 0;
            }
            op->min_index = min_index;
            uv_check_start(&a->check, api_check_cb);
            return 0;
        }
        if (!explicit_level) {
            return 1; /* the index token alone: serve locally */
        }
    }
    if (level == LEVEL_STALE || (gate & GATE_BARRIER)) {
        return 1;
    }
    if (a->cfg.consensus == NULL) {
        return 1; /* a single node with nothing pending: serve locally */
    }
    consensus_info(a->cfg.consensus, &info);
    if (!info.is_leader) {
        if (level == LEVEL_LEADER) {
            api_forward(a, req);
        } else if ((rv = api_read_index_wait(a, req)) != 0) {
            api_respond_error(a, req, (enum api_error)rv, NULL);
        }
        return 0;
    }
    if (level == LEVEL_LEADER) {
        return 1;
    }
    rv = api_barrier_start(a, req);
    if (rv != 0) {
        api_respond_error(a, req, (enum api_error)rv,
                          rv == AE_INTERNAL ? "out of memory" : NULL);
    }
    return 0;
}

int api_barrier_start(struct api *a, struct http_request *req)
{
    struct api_op *op = api_op_new(a, req, OP_BARRIER, a->cfg.read_timeout_ms);
    int rv;

    if (op == NULL) {
        return AE_INTERNAL;
    }
    op->read.data = op;
    op->read.cb = api_barrier_cb;
    rv = consensus_barrier(a->cfg.consensus, &op->read);
    if (rv != CONSENSUS_OK) {
        op->req = NULL;
        api_op_free(op);
        return rv == CONSENSUS_ESHUTDOWN ? AE_SHUTTING_DOWN : AE_UNAVAILABLE;
    }
    return 0;
}

/* Split ?include=a,b into names pointing into out. */
static int parse_include(const struct route *r, struct buf *raw,
                         struct cmd_bytes **names, size_t *n)
{
    size_t count = 1, i, start = 0;
    int rv = query_param(r, "include", raw);

    *names = NULL;
    *n = 0;
    if (rv <= 0) {
        return rv < 0 ? AE_UTF8 : 0;
    }
    for (i = 0; i < raw->len; i++) {
        count += raw->base[i] == ',';
    }
    *names = calloc(count, sizeof **names);
    if (*names == NULL) {
        return AE_INTERNAL;
    }
    for (i = 0; i <= raw->len; i++) {
        if (i == raw->len || raw->base[i] == ',') {
            if (i > start) {
                (*names)[*n].base = raw->base + start;
                (*names)[*n].len = (uint32_t)(i - start);
                (*n)++;
            }
            start = i + 1;
        }
    }
    if (*n == 0) {
        /* include= with no names asks for nothing. */
        (*names)[0].base = "";
        (*names)[0].len = 0;
        *n = 0;
    }
    return 0;
}

static int parse_paging(const struct route *r, uint64_t *page, uint64_t *per)
{
    struct buf v = BUF_INIT;
    int rv;

    *page = 0;
    *per = API_DEFAULT_PER_PAGE;
    rv = query_param(r, "page", &v);
    if (rv < 0 || (rv > 0 && api_parse_uint(v.base, v.len, UINT32_MAX, page) != 0)) {
        buf_free(&v);
        return AE_BAD_PAGING;
    }
    rv = query_param(r, "perPage", &v);
    if (rv < 0 || (rv > 0 && (api_parse_uint(v.base, v.len, API_MAX_PER_PAGE, per) != 0 ||
                              *per == 0))) {
        buf_free(&v);
        return AE_BAD_PAGING;
    }
    buf_free(&v);
    return 0;
}

static int handle_read(struct api *a, struct http_request *req,
                       struct route *r)
{
    struct buf out = BUF_INIT;
    struct buf raw = BUF_INIT;
    struct cmd_bytes *names = NULL;
    size_t n_names = 0;
    uint64_t version = 0, page = 0, per = API_DEFAULT_PER_PAGE;
    uint64_t now = api_wall_ms();
    char extra[128];
    int rv = 0, st = STORAGE_OK;
    int etag = 0;

    if (r->id != R_ACCOUNT && (rv = check_where(r, 0)) != 0) {
        return rv;
    }
    if ((r->id == R_SESSION_IDS || r->id == R_SESSION_PROPS) &&
        (rv = parse_paging(r, &page, &per)) != 0) {
        return rv;
    }
    if (r->id == R_PROPS && (rv = parse_include(r, &raw, &names, &n_names)) != 0) {
        buf_free(&raw);
        return rv;
    }
    if (!read_gate(a, req, r)) {
        free(names);
        buf_free(&raw);
        return 0;
    }
    switch (r->id) {
        case R_ACCOUNT:
            st = storage_ns_list(a->cfg.storage, r->where.acc.base,
                                 r->where.acc.len, &out);
            break;
        case R_PROPS:
            st = storage_props_get(a->cfg.storage, &r->where,
                                   names != NULL ? names : NULL,
                                   names != NULL ? n_names : 0, now, &out,
                                   &version);
            etag = 1;
            break;
        case R_PROP:
            st = storage_prop_get(a->cfg.storage, &r->where, now, &out);
            if (st == STORAGE_ENOTFOUND &&
                storage_ns_exists(a->cfg.storage, r->where.acc.base,
                                  r->where.acc.len, r->where.ns.base,
                                  r->where.ns.len)) {
                rv = AE_PROP_NOT_FOUND;
            }
            break;
        case R_SESSION_IDS:
            st = storage_session_ids(a->cfg.storage, &r->where, page, per, now,
                                     &out);
            break;
        case R_SESSION_PROPS:
            st = storage_session_props(a->cfg.storage, &r->where, page, per,
                                       now, &out);
            break;
        case R_SESSION_TTL:
            st = storage_session_ttls(a->cfg.storage, &r->where, &out);
            break;
        default:
            st = STORAGE_EINTERNAL;
            break;
    }
    free(names);
    buf_free(&raw);
    if (rv == 0 && st == STORAGE_ENOTFOUND) {
        rv = AE_NS_NOT_FOUND;
    } else if (rv == 0 && st != STORAGE_OK) {
        rv = AE_INTERNAL;
    }
    if (rv != 0) {
        buf_free(&out);
        return rv;
    }
    {
        char *p = extra;

        if (etag) {
            p = put_header_u64(p, "ETag", version, 1);
        }
        put_header_u64(p, "X-Context-Index",
                       storage_applied_index(a->cfg.storage), 0);
    }
    api_respond(a, req, 200, extra, out.base, out.len);
    buf_free(&out);
    return 0;
}

/* --- Dispatch --------------------------------------------------------- */


static void dispatch(struct api *a, struct http_request *req)
{
    unsigned gate = (unsigned)(uintptr_t)req->data & GATE_MASK;
    struct route r;
    int rv;

    rv = route_match(req, &r);
    req->data = (void *)(uintptr_t)(((unsigned)(uintptr_t)req->data & GATE_MASK) |
                                    ((unsigned)r.id << ROUTE_SHIFT));
    if (rv != 0) {
        api_respond_error(a, req, (enum api_error)rv,
                          rv == AE_INTERNAL ? NULL : "invalid path segment");
        goto out;
    }
    if (r.id == R_NONE) {
        api_respond_error(a, req, AE_NOT_FOUND, NULL);
        goto out;
    }
    if (!method_allowed(r.id, req->method)) {
        respond_method(a, req, r.id);
        goto out;
    }
    if (r.id == R_HEALTHZ || r.id == R_READYZ) {
        api_handle_health(a, req, r.id);
        goto out;
    }
    if (r.id == R_METRICS) {
        rv = api_handle_metrics(a, req);
        goto answer;
    }
    if (a->closing) {
        api_respond_error(a, req, AE_SHUTTING_DOWN, NULL);
        goto out;
    }
    if (a->cfg.consensus == NULL &&
        (r.id == R_INT_FORWARD || r.id == R_INT_READ_INDEX ||
         r.id == R_INT_JOIN || r.id == R_ADMIN_CLUSTER ||
         r.id == R_ADMIN_NODES || r.id == R_ADMIN_NODE ||
         r.id == R_ADMIN_TRANSFER)) {
        /* The cluster routes need consensus (absent in unit tests and
         * fuzzing). */
        api_respond_error(a, req, AE_UNAVAILABLE, NULL);
        goto out;
    }
    switch (r.id) {
        case R_INT_FORWARD:
        case R_INT_READ_INDEX:
        case R_INT_JOIN:
            if (!api_auth_internal(a, req)) {
                rv = AE_UNAUTHORIZED;
            } else if (r.id == R_INT_FORWARD) {
                rv = api_handle_forwarded(a, req);
            } else if (r.id == R_INT_READ_INDEX) {
                rv = api_handle_read_index(a, req, gate);
            } else {
                rv = api_handle_nodes_add(a, req, 1);
            }
            break;
        case R_ADMIN_KEY:
        case R_ADMIN_DIGEST:
        case R_ADMIN_BACKUP:
        case R_ADMIN_CLUSTER:
        case R_ADMIN_NODES:
        case R_ADMIN_NODE:
        case R_ADMIN_TRANSFER:
            if (!api_auth_admin(a, req)) {
                rv = AE_UNAUTHORIZED;
            } else if (r.id == R_ADMIN_DIGEST) {
                rv = api_handle_digest(a, req);
            } else if (r.id == R_ADMIN_BACKUP) {
                rv = api_handle_backup(a, req);
            } else if (r.id == R_ADMIN_CLUSTER) {
                rv = api_handle_cluster(a, req);
            } else if (r.id == R_ADMIN_KEY) {
                rv = api_handle_admin_key(a, req, &r);
            } else if (r.id == R_ADMIN_NODES) {
                rv = api_handle_nodes_add(a, req, 0);
            } else if (!is_leader(a)) {
                api_forward(a, req);
            } else if (r.id == R_ADMIN_NODE) {
                rv = api_handle_node_remove(a, req, &r);
            } else {
                rv = api_handle_transfer(a, req);
            }
            break;
        default:
            if (!auth_account(a, req, &r)) {
                /* A follower may not have applied a key the leader has
                 * already acknowledged (just created or rotated, or this
                 * node restarted): before saying 401, catch up with the
                 * leader's commit index, as a linearizable read does, and
                 * check again. No leader reachable: 503, not 401. */
                if (!(gate & GATE_AUTH_RETRY) && a->cfg.consensus != NULL &&
                    !is_leader(a)) {
                    req->data = (void *)((uintptr_t)req->data | GATE_AUTH_RETRY);
                    rv = api_read_index_wait(a, req);
                } else {
                    rv = AE_UNAUTHORIZED;
                }
            } else if (req->method == HTTP_GET) {
                rv = handle_read(a, req, &r);
            } else {
                rv = handle_write(a, req, &r);
            }
            break;
    }
answer:
    if (rv != 0) {
        api_respond_error(a, req, (enum api_error)rv, NULL);
    }
out:
    route_free(&r);
}

void api_redispatch(struct api *a, struct http_request *req, unsigned gate)
{
    req->data = (void *)(uintptr_t)gate;
    dispatch(a, req);
}

void api_handle(void *ctx, struct http_request *req)
{
    struct api *a = ctx;

    req->data = NULL;
    dispatch(a, req);
}

/* --- Timeouts and min-index waiters ----------------------------------- */

static void expire_list(struct api *a, struct op_list *l, uint64_t now,
                        enum api_error e)
{
    while (l->head != NULL && l->head->deadline <= now) {
        struct api_op *op = l->head;
        struct http_request *req = op->req;

        api_op_list_remove(op);
        op->req = NULL;
        if (req != NULL) {
            api_respond_error(a, req, e, NULL);
        }
        if (op->kind == OP_MIN) {
            api_op_free(op); /* nothing else refers to it */
        }
        /* OP_WRITE / OP_BARRIER: freed by their consensus callback. */
    }
}

static void api_timer_cb(uv_timer_t *t)
{
    struct api *a = t->data;
    uint64_t now = uv_now(a->cfg.loop);

    expire_list(a, &a->writes, now, AE_UNKNOWN_OUTCOME);
    expire_list(a, &a->barriers, now, AE_READ_TIMEOUT);
    expire_list(a, &a->mins, now, AE_READ_TIMEOUT);
    if (a->cfg.consensus != NULL && now - a->last_register >= API_REGISTER_MS) {
        a->last_register = now;
        api_cluster_tick(a);
    }
}

/* After each loop turn: serve the waiters whose index has been applied. */
static void api_check_cb(uv_check_t *c)
{
    struct api *a = c->data;
    uint64_t applied = storage_applied_index(a->cfg.storage);
    struct api_op *op = a->mins.head;

    while (op != NULL) {
        struct api_op *next = op->next;
        if (op->min_index <= applied) {
            struct http_request *req = op->req;
            op->req = NULL;
            api_op_free(op);
            if (req != NULL) {
                api_redispatch(a, req,
                           ((unsigned)(uintptr_t)req->data & GATE_MASK) |
                               GATE_MIN_INDEX);
            }
        }
        op = next;
    }
    if (a->mins.head == NULL) {
        uv_check_stop(&a->check);
    }
}

void api_wake_min_waiters(struct api *a)
{
    uv_check_start(&a->check, api_check_cb);
}

/* --- Life cycle ------------------------------------------------------- */

static void api_free(struct api *a)
{
    unsigned i;

    buf_free(&a->scratch);
    free(a->admin_token);
    free(a->cluster_secret);
    for (i = 0; i < a->cfg.n_members; i++) {
        free((char *)a->members[i].http_addr);
    }
    free(a->members);
    for (i = 0; a->strings != NULL && i < a->n_strings; i++) {
        free(a->strings[i]);
    }
    free(a->strings);
    free(a);
}

/* Copy a string of the config into a->strings-owned memory. */
static const char *api_strdup(struct api *a, const char *s, int *failed)
{
    char *p;

    if (s == NULL) {
        return NULL;
    }
    p = strdup(s);
    if (p == NULL) {
        *failed = 1;
        return NULL;
    }
    a->strings[a->n_strings++] = p;
    return p;
}

int api_init(struct api **out, const struct api_config *cfg)
{
    struct api *a = calloc(1, sizeof *a);
    int failed = 0;
    unsigned i;

    if (a == NULL) {
        return -1;
    }
    a->cfg = *cfg;
    a->admin_token = strdup(cfg->admin_token != NULL ? cfg->admin_token : "");
    a->strings = calloc(8, sizeof *a->strings);
    a->members = calloc(cfg->n_members + 1, sizeof *a->members);
    if (a->admin_token == NULL || a->strings == NULL || a->members == NULL) {
        a->cfg.n_members = 0;
        api_free(a);
        return -1;
    }
    a->cfg.admin_token = a->admin_token;
    if (cfg->cluster_secret != NULL) {
        a->cluster_secret = strdup(cfg->cluster_secret);
        failed |= a->cluster_secret == NULL;
    }
    a->cfg.cluster_secret = a->cluster_secret;
    a->cfg.http_addr = api_strdup(a, cfg->http_addr, &failed);
    a->cfg.raft_addr = api_strdup(a, cfg->raft_addr, &failed);
    a->cfg.region = api_strdup(a, cfg->region != NULL ? cfg->region : "local",
                               &failed);
    a->cfg.join_addr = api_strdup(a, cfg->join_addr, &failed);
    a->cfg.n_members = 0;
    for (i = 0; i < cfg->n_members && !failed; i++) {
        a->members[i].id = cfg->members[i].id;
        a->members[i].http_addr = strdup(cfg->members[i].http_addr);
        failed |= a->members[i].http_addr == NULL;
        a->cfg.n_members = i + 1;
    }
    a->cfg.members = a->members;
    if (failed || (cfg->consensus != NULL && api_cluster_init(a) != 0)) {
        api_free(a);
        return -1;
    }
    if (a->cfg.write_timeout_ms == 0) {
        a->cfg.write_timeout_ms = 10000;
    }
    if (a->cfg.read_timeout_ms == 0) {
        a->cfg.read_timeout_ms = 5000;
    }
    if (a->cfg.max_patch_properties == 0) {
        a->cfg.max_patch_properties = 1000;
    }
    a->metrics_tokens = API_METRICS_BURST;
    a->metrics_at = uv_now(cfg->loop);
    snprintf(a->node_header, sizeof a->node_header, "X-Context-Node: %llu\r\n",
             (unsigned long long)cfg->node_id);
    uv_timer_init(cfg->loop, &a->timer);
    uv_check_init(cfg->loop, &a->check);
    a->timer.data = a;
    a->check.data = a;
    api_read_index_init(a);
    a->open_handles = 3;
    uv_timer_start(&a->timer, api_timer_cb, API_TICK_MS, API_TICK_MS);
    uv_unref((uv_handle_t *)&a->timer);
    *out = a;
    return 0;
}

void api_shutdown(struct api *a)
{
    a->closing = 1;
}

unsigned api_pending(const struct api *a)
{
    return a->pending;
}

static void api_handle_closed(uv_handle_t *h)
{
    struct api *a = h->data;

    if (--a->open_handles == 0) {
        api_free(a);
    }
}

static void api_client_closed(void *data)
{
    struct api *a = data;

    a->client = NULL;
    if (--a->open_handles == 0) {
        api_free(a);
    }
}

void api_close(struct api *a)
{
    a->closing = 1;
    a->freeing = 1;
    /* Closing the client completes forwarded requests and read-index
     * waiters (ECANCELED → 503) before its callback. */
    if (a->client != NULL) {
        a->open_handles++;
        client_close(a->client, api_client_closed, a);
    }
    /* Min-index waiters have no callback to wait for: answer them now. */
    while (a->mins.head != NULL) {
        struct api_op *op = a->mins.head;
        if (op->req != NULL) {
            api_respond_error(a, op->req, AE_SHUTTING_DOWN, NULL);
            op->req = NULL;
        }
        api_op_free(op);
    }
    api_read_index_close(a);
    uv_close((uv_handle_t *)&a->timer, api_handle_closed);
    uv_close((uv_handle_t *)&a->check, api_handle_closed);
    uv_close((uv_handle_t *)&a->rindex_gather.timer, api_handle_closed);
}
