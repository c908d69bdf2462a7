/* Fuzz target: the HTTP request path without sockets and without Raft.
 *
 * Bytes ──http_feed_bytes (the server's parser, callbacks and limits)──▶
 * api_handle (routing, auth, validation, reads from storage) ──▶ the bytes a
 * client would receive. The storage behind it is real and holds two
 * accounts with keys, namespaces, sessions and properties, applied once
 * directly as log entries. There is no consensus: writes and cluster
 * routes answer 503, reads are served locally (api/api.c treats a missing
 * consensus as a single leader with nothing pending).
 *
 * Each input gets a fresh api (so nothing it leaves behind survives into
 * the next input: LeakSanitizer sees every leak) over the same read-only
 * storage.
 *
 * Invariants checked on every input:
 * - what comes back is a sequence of HTTP/1.1 responses (or nothing);
 * - no response is a 500 (an internal error is a bug, not an answer);
 * - isolation: the private value of account acc2 never appears in the
 *   output unless the input carries acc2's key or the admin token (the
 *   backup route returns the whole database).
 *
 * FUZZ_DEBUG=1 in the environment prints each output to stderr. */
#include <string.h>
#include <uv.h>

#include "../../api/api.h"
#include "../../lib/crypto.h"
#include "../../storage/command.h"
#include "fuzz.h"

#define KEY1 "fuzz-key-acc1"
#define KEY2 "fuzz-key-acc2"
#define ADMIN_TOKEN "fuzz-admin-token"
#define PRIVATE_MARKER "acc2-private-8f3a"
#define ENTRY_TIME_MS 1614307598220ull /* leader stamp of the seed entries */

struct fuzz_state {
    uv_loop_t loop;          /* the api's timer and check live here */
    struct storage *storage; /* seeded once, read-only afterwards */
    uint64_t index;          /* last index applied to storage */
};

static struct fuzz_state *state;

static struct cmd_bytes bytes_of(const char *s)
{
    struct cmd_bytes b = {s, (uint32_t)strlen(s)};
    return b;
}

/* Apply one command as one entry; abort on failure (fixed seed data). */
static void seed_apply(const struct cmd *cmd)
{
    struct buf rec = BUF_INIT;
    struct buf entry = BUF_INIT;
    struct storage_result *res = NULL;
    uint32_t n = 0;

    FUZZ_CHECK(cmd_encode(cmd, &rec) == 0);
    FUZZ_CHECK(cmd_entry_begin(&entry, ENTRY_TIME_MS) == 0);
    FUZZ_CHECK(cmd_entry_add(&entry, rec.base, rec.len) == 0);
    FUZZ_CHECK(storage_apply(state->storage, ++state->index, entry.base,
                             entry.len, &res, &n) == 0);
    FUZZ_CHECK(n == 1 && res[0].status == STORAGE_OK);
    free(res);
    buf_free(&rec);
    buf_free(&entry);
}

static void seed_key(const char *acc, const char *key)
{
    uint8_t hash[SHA256_LEN];
    struct cmd cmd;

    sha256(key, strlen(key), hash);
    memset(&cmd, 0, sizeof cmd);
    cmd.op = CMD_SET_KEY;
    cmd.ttl = -1;
    cmd.acc = bytes_of(acc);
    cmd.key_hash.base = (const char *)hash;
    cmd.key_hash.len = SHA256_LEN;
    seed_apply(&cmd);
}

static void seed_ns(const char *acc, const char *ns, int64_t ttl)
{
    struct cmd cmd;

    memset(&cmd, 0, sizeof cmd);
    cmd.op = CMD_NS_PUT;
    cmd.ttl = ttl;
    cmd.acc = bytes_of(acc);
    cmd.ns = bytes_of(ns);
    seed_apply(&cmd);
}

static void seed_prop(const char *acc, const char *ns, const char *sid,
                      const char *name, const char *value)
{
    struct buf pairs = BUF_INIT;
    struct cmd cmd;

    memset(&cmd, 0, sizeof cmd);
    cmd.op = CMD_PATCH;
    cmd.ttl = -1;
    cmd.acc = bytes_of(acc);
    cmd.ns = bytes_of(ns);
    cmd.sid = bytes_of(sid);
    FUZZ_CHECK(
        cmd_props_add(&pairs, name, strlen(name), value, strlen(value)) == 0);
    cmd.n_props = 1;
    cmd.props.base = pairs.base;
    cmd.props.len = (uint32_t)pairs.len;
    seed_apply(&cmd);
    buf_free(&pairs);
}

static void seed_session_ttl(const char *acc, const char *ns, const char *sid,
                             int64_t ttl)
{
    struct cmd cmd;

    memset(&cmd, 0, sizeof cmd);
    cmd.op = CMD_SESSION_TTL;
    cmd.ttl = ttl;
    cmd.acc = bytes_of(acc);
    cmd.ns = bytes_of(ns);
    cmd.sid = bytes_of(sid);
    seed_apply(&cmd);
}

/* Once per process: the loop and the seeded storage (freed at exit by the
 * operating system; LeakSanitizer ignores memory still referenced). */
static void fuzz_init(void)
{
    state = calloc(1, sizeof *state);
    FUZZ_CHECK(state != NULL);
    FUZZ_CHECK(uv_loop_init(&state->loop) == 0);
    FUZZ_CHECK(storage_open(&state->storage) == 0);
    seed_key("acc1", KEY1);
    seed_key("acc2", KEY2);
    seed_ns("acc1", "ns1", -1);
    seed_ns("acc1", "ttlns", 3600);
    seed_prop("acc1", "ns1", "s1", "a", "1.1");
    seed_prop("acc1", "ns1", "s1", "b", "{\"x\":[1,2,\"\\u00e9\"]}");
    seed_prop("acc1", "ns1", "__default__", "c", "\"default\"");
    seed_session_ttl("acc1", "ns1", "s2", 60);
    seed_prop("acc1", "ns1", "s2", "d", "null");
    seed_ns("acc2", "ns2", -1);
    seed_prop("acc2", "ns2", "s1", "secret", "\"" PRIVATE_MARKER "\"");
    seed_prop("acc2", "ns1", "s1", "a", "\"" PRIVATE_MARKER "\"");
}

/* Offset of needle in hay[0..n), or n when absent. */
static size_t find(const uint8_t *hay, size_t n, const char *needle)
{
    size_t m = strlen(needle);
    size_t i;

    for (i = 0; m <= n && i <= n - m; i++) {
        if (memcmp(hay + i, needle, m) == 0) {
            return i;
        }
    }
    return n;
}

static int contains(const uint8_t *hay, size_t n, const char *needle)
{
    return find(hay, n, needle) < n;
}

/* Every response starts with a status line; each one is checked. */
static void check_output(const char *out, size_t len, int may_see_private)
{
    const uint8_t *p = (const uint8_t *)out;
    size_t left = len;

    if (len > 0) {
        FUZZ_CHECK(len >= 12 && memcmp(out, "HTTP/1.1 ", 9) == 0);
    }
    while (left > 0) {
        size_t at = find(p, left, "HTTP/1.1 ");

        if (at == left) {
            break;
        }
        p += at + 9;
        left -= at + 9;
        FUZZ_CHECK(left < 3 || memcmp(p, "500", 3) != 0);
    }
    if (!may_see_private) {
        FUZZ_CHECK(!contains((const uint8_t *)out, len, PRIVATE_MARKER));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct api_config cfg;
    struct http_limits limits;
    struct api *api;
    char *out = NULL;
    size_t out_len = 0;

    if (state == NULL) {
        fuzz_init();
    }
    memset(&cfg, 0, sizeof cfg);
    cfg.loop = &state->loop;
    cfg.node_id = 1;
    cfg.storage = state->storage;
    cfg.consensus = NULL;
    cfg.admin_token = ADMIN_TOKEN;
    cfg.max_patch_properties = 4;
    cfg.read_timeout_ms = 1;
    FUZZ_CHECK(api_init(&api, &cfg) == 0);
    /* Small limits so that 413, 431 and the pipeline bound are reachable. */
    http_limits_default(&limits);
    limits.max_header_bytes = 2048;
    limits.max_body_bytes = 4096;
    limits.max_pipeline = 8;
    FUZZ_CHECK(http_feed_bytes(&limits, (const char *)data, size, api_handle,
                               api, &out, &out_len) == 0);
    if (getenv("FUZZ_DEBUG") != NULL) {
        fwrite(out, 1, out_len, stderr); /* what a client would receive */
        fputs("\n----\n", stderr);
    }
    check_output(out, out_len,
                 contains(data, size, KEY2) ||
                     contains(data, size, ADMIN_TOKEN));
    free(out);
    /* Requests still waiting (a min-index read) are answered by
     * api_close; the loop then runs the close callbacks. */
    api_close(api);
    FUZZ_CHECK(uv_run(&state->loop, UV_RUN_DEFAULT) == 0);
    return 0;
}
