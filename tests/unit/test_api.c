/* api/api.c without sockets and without Raft: routing, auth, validation and
 * stale reads, driven through detached requests (api/http.h) against a
 * storage filled by applying entries directly. Paths that would propose a
 * command are not reached here: every request below fails validation first
 * or is a read; writes are covered end to end in tests/e2e. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../api/api.h"
#include "../../lib/crypto.h"

#define KEY "k-secret-1"
#define OTHER_KEY "k-secret-2"

struct fixture
{
    uv_loop_t loop;
    struct storage *storage;
    struct api *api;
    uint64_t index;
};

static void apply_cmd(struct fixture *f, const struct cmd *cmd)
{
    struct buf rec = BUF_INIT, entry = BUF_INIT;
    struct storage_result *res = NULL;
    uint32_t n = 0;

    assert_int_equal(cmd_encode(cmd, &rec), 0);
    assert_int_equal(cmd_entry_begin(&entry, 1614307598220ull), 0);
    assert_int_equal(cmd_entry_add(&entry, rec.base, rec.len), 0);
    assert_int_equal(storage_apply(f->storage, ++f->index, entry.base, entry.len,
                                   &res, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(res[0].status, STORAGE_OK);
    free(res);
    buf_free(&rec);
    buf_free(&entry);
}

static struct cmd_bytes b(const char *s)
{
    struct cmd_bytes x = {s, (uint32_t)strlen(s)};
    return x;
}

static void set_key(struct fixture *f, const char *acc, const char *key)
{
    uint8_t hash[SHA256_LEN];
    struct cmd cmd;

    sha256(key, strlen(key), hash);
    memset(&cmd, 0, sizeof cmd);
    cmd.op = CMD_SET_KEY;
    cmd.ttl = -1;
    cmd.acc = b(acc);
    cmd.key_hash.base = (const char *)hash;
    cmd.key_hash.len = SHA256_LEN;
    apply_cmd(f, &cmd);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    struct api_config cfg;
    struct cmd cmd;
    struct buf pairs = BUF_INIT;

    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(storage_open(&f->storage), 0);
    set_key(f, "acc1", KEY);
    set_key(f, "acc2", OTHER_KEY);
    memset(&cmd, 0, sizeof cmd);
    cmd.op = CMD_PATCH;
    cmd.ttl = -1;
    cmd.acc = b("acc1");
    cmd.ns = b("ns1");
    cmd.sid = b("s1");
    assert_int_equal(cmd_props_add(&pairs, "a", 1, "1.1", 3), 0);
    assert_int_equal(cmd_props_add(&pairs, "b", 1, "{\"x\": [1, 2]}", 13), 0);
    cmd.n_props = 2;
    cmd.props.base = pairs.base;
    cmd.props.len = (uint32_t)pairs.len;
    apply_cmd(f, &cmd);
    buf_free(&pairs);

    memset(&cfg, 0, sizeof cfg);
    cfg.loop = &f->loop;
    cfg.node_id = 7;
    cfg.storage = f->storage;
    cfg.consensus = NULL; /* never reached by these tests */
    cfg.admin_token = "admin-token";
    cfg.max_patch_properties = 3;
    assert_int_equal(api_init(&f->api, &cfg), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    api_close(f->api);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    storage_close(f->storage);
    free(f);
    return 0;
}

/* Run one request; return its status and copy the body into body_out. */
static int call(struct fixture *f, const char *method, const char *url,
                const char *const *headers, const char *body, char *body_out,
                size_t body_cap, char *headers_out, size_t headers_cap)
{
    struct http_request *req = http_request_new_detached(
        method, url, headers, body, body != NULL ? strlen(body) : 0);
    const char *rb;
    size_t len;
    int status;

    assert_non_null(req);
    api_handle(f->api, req);
    status = http_detached_status(req);
    rb = http_detached_body(req, &len);
    if (body_out != NULL) {
        size_t n = len < body_cap - 1 ? len : body_cap - 1;
        memcpy(body_out, rb != NULL ? rb : "", n);
        body_out[n] = '\0';
    }
    if (headers_out != NULL) {
        const char *h = http_detached_headers(req);
        snprintf(headers_out, headers_cap, "%s", h != NULL ? h : "");
    }
    http_request_free_detached(req);
    return status;
}

static const char *const auth1[] = {"maven-api-key", KEY, NULL};
static const char *const auth1_json[] = {"maven-api-key", KEY, "content-type",
                                         "application/json", NULL};

/******************************************************************************
 * Routing
 *****************************************************************************/

static void unknown_path_is_404_json(void **state)
{
    char body[256];

    assert_int_equal(call(*state, "GET", "/nope", auth1, NULL, body, sizeof body,
                          NULL, 0),
                     404);
    assert_string_equal(body,
                        "{\"code\":\"not_found\",\"message\":\"no such resource\"}");
}

static void wrong_method_is_405_with_allow(void **state)
{
    char headers[512];

    assert_int_equal(call(*state, "PUT", "/v1/account/acc1/ns1/properties",
                          auth1, NULL, NULL, 0, headers, sizeof headers),
                     405);
    assert_non_null(strstr(headers, "Allow: GET, PATCH, DELETE\r\n"));
}

static void every_response_names_the_node(void **state)
{
    char headers[512];

    call(*state, "GET", "/nope", NULL, NULL, NULL, 0, headers, sizeof headers);
    assert_non_null(strstr(headers, "X-Context-Node: 7\r\n"));
}

static void trailing_slash_and_percent_decoding_are_accepted(void **state)
{
    char body[256];

    assert_int_equal(call(*state, "GET",
                          "/v1/account/acc1/ns1/%73%31/properties/a/?consistency=stale",
                          auth1, NULL, body, sizeof body, NULL, 0),
                     200);
    assert_string_equal(body, "1.1");
}

static void nul_or_bad_utf8_in_a_segment_is_400(void **state)
{
    char body[256];

    assert_int_equal(call(*state, "GET", "/v1/account/acc1/ns1/a%00b/properties",
                          auth1, NULL, body, sizeof body, NULL, 0),
                     400);
    assert_non_null(strstr(body, "\"bad_name\""));
    assert_int_equal(call(*state, "GET", "/v1/account/acc1/ns1/%ff/properties",
                          auth1, NULL, body, sizeof body, NULL, 0),
                     400);
    assert_non_null(strstr(body, "\"invalid_utf8\""));
}

/******************************************************************************
 * Auth
 *****************************************************************************/

static void data_routes_need_the_account_key(void **state)
{
    static const char *const none[] = {NULL};
    static const char *const wrong[] = {"maven-api-key", "nope", NULL};
    static const char *const other[] = {"maven-api-key", OTHER_KEY, NULL};
    static const char *const urls[] = {
        "/v1/account/acc1",
        "/v1/account/acc1/ns1/properties",
        "/v1/account/acc1/ns1/s1/properties",
        "/v1/account/acc1/ns1/s1/properties/a",
        "/v1/account/acc1/ns1/session-ids",
        "/v1/account/acc1/ns1/session-properties",
        "/v1/account/acc1/namespace/ns1/session",
    };
    const char *const *keys[] = {none, wrong, other};
    size_t i, k;
    char body[256];

    for (i = 0; i < sizeof urls / sizeof urls[0]; i++) {
        for (k = 0; k < 3; k++) {
            assert_int_equal(call(*state, "GET", urls[i], keys[k], NULL, body,
                                  sizeof body, NULL, 0),
                             401);
            assert_null(strstr(body, "1.1")); /* no data in the error */
        }
    }
}

static void a_rotated_key_stops_working_at_once_despite_the_key_cache(void **state)
{
    struct fixture *f = *state;
    static const char *const fresh[] = {"maven-api-key", "k-fresh", NULL};
    const char *url = "/v1/account/acc1/ns1/s1/properties?consistency=stale";

    /* Twice: the second check is answered from the cache. */
    assert_int_equal(call(f, "GET", url, auth1, NULL, NULL, 0, NULL, 0), 200);
    assert_int_equal(call(f, "GET", url, auth1, NULL, NULL, 0, NULL, 0), 200);
    set_key(f, "acc1", "k-fresh");
    assert_int_equal(call(f, "GET", url, auth1, NULL, NULL, 0, NULL, 0), 401);
    assert_int_equal(call(f, "GET", url, fresh, NULL, NULL, 0, NULL, 0), 200);
}

static void admin_routes_need_the_bearer_token(void **state)
{
    static const char *const wrong[] = {"authorization", "Bearer nope", NULL};

    assert_int_equal(call(*state, "PUT", "/admin/v1/accounts/acc1/key", wrong,
                          NULL, NULL, 0, NULL, 0),
                     401);
    assert_int_equal(call(*state, "PUT", "/admin/v1/accounts/acc1/key", NULL,
                          NULL, NULL, 0, NULL, 0),
                     401);
}

/******************************************************************************
 * Validation (all fail before anything is proposed)
 *****************************************************************************/

static void body_without_json_content_type_is_415(void **state)
{
    assert_int_equal(call(*state, "PATCH", "/v1/account/acc1/ns1/properties",
                          auth1, "{}", NULL, 0, NULL, 0),
                     415);
}

static void malformed_or_wrong_json_is_400(void **state)
{
    char body[256];
    struct
    {
        const char *body;
        const char *code;
    } cases[] = {
        {"{", "malformed_json"},
        {"[1]", "wrong_type"},
        {"\"s\"", "wrong_type"},
        {"{\"a\":1,\"a\":2}", "duplicate_member"},
        {"{\"a\":\"\xff\"}", "invalid_utf8"},
        {"{\"\":1}", "bad_name"},
    };
    size_t i;

    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(call(*state, "PATCH", "/v1/account/acc1/ns1/properties",
                              auth1_json, cases[i].body, body, sizeof body, NULL,
                              0),
                         400);
        assert_non_null(strstr(body, cases[i].code));
    }
}

static void more_properties_than_the_limit_is_400(void **state)
{
    char body[256];

    assert_int_equal(call(*state, "PATCH", "/v1/account/acc1/ns1/properties",
                          auth1_json, "{\"a\":1,\"b\":2,\"c\":3,\"d\":4}",
                          body, sizeof body, NULL, 0),
                     400);
    assert_non_null(strstr(body, "too_many_properties"));
}

static void nesting_over_64_levels_is_400(void **state)
{
    char doc[200];
    char body[256];
    int i;

    for (i = 0; i < 65; i++) {
        doc[i] = '[';
    }
    for (i = 0; i < 65; i++) {
        doc[65 + i] = ']';
    }
    doc[130] = '\0';
    assert_int_equal(call(*state, "PUT", "/v1/account/acc1/ns1/properties/p",
                          auth1_json, doc, body, sizeof body, NULL, 0),
                     400);
    assert_non_null(strstr(body, "too_deep"));
}

static void reserved_namespaces_are_403(void **state)
{
    static const char *const ns[] = {"consumer", "operational", "conversation",
                                     "faas", "custom", "sde"};
    char url[128];
    size_t i;

    for (i = 0; i < 6; i++) {
        snprintf(url, sizeof url, "/v1/account/acc1/%s/properties", ns[i]);
        assert_int_equal(call(*state, "PATCH", url, auth1_json, "{\"a\":1}",
                              NULL, 0, NULL, 0),
                         403);
        snprintf(url, sizeof url, "/v1/account/acc1/%s", ns[i]);
        assert_int_equal(call(*state, "DELETE", url, auth1, NULL, NULL, 0, NULL, 0),
                         403);
    }
}

static void bad_names_ttl_and_paging_are_400(void **state)
{
    char long_ns[100];
    char url[256];
    char body[256];

    memset(long_ns, 'n', 65);
    long_ns[65] = '\0';
    snprintf(url, sizeof url, "/v1/account/acc1/%s/properties?consistency=stale",
             long_ns);
    assert_int_equal(call(*state, "GET", url, auth1, NULL, body, sizeof body,
                          NULL, 0),
                     400);
    assert_non_null(strstr(body, "bad_name"));
    assert_int_equal(call(*state, "POST", "/v1/account/acc1?ttlSecond=-1",
                          auth1_json, "{\"name\":\"ns2\"}", body, sizeof body,
                          NULL, 0),
                     400);
    assert_non_null(strstr(body, "bad_ttl"));
    assert_int_equal(call(*state, "GET",
                          "/v1/account/acc1/ns1/session-ids?perPage=0", auth1,
                          NULL, body, sizeof body, NULL, 0),
                     400);
    assert_non_null(strstr(body, "bad_paging"));
    assert_int_equal(call(*state, "GET",
                          "/v1/account/acc1/ns1/session-ids?page=x", auth1, NULL,
                          body, sizeof body, NULL, 0),
                     400);
}

/******************************************************************************
 * Stale reads (served without Raft)
 *****************************************************************************/

static void stale_read_returns_exact_value_text_and_etag(void **state)
{
    char body[256];
    char headers[512];

    assert_int_equal(call(*state, "GET",
                          "/v1/account/acc1/ns1/s1/properties?consistency=stale",
                          auth1, NULL, body, sizeof body, headers, sizeof headers),
                     200);
    assert_string_equal(body, "{\"a\":1.1,\"b\":{\"x\": [1, 2]}}");
    assert_non_null(strstr(headers, "ETag: \"3\"\r\n"));
}

static void absent_property_and_namespace_are_distinguished(void **state)
{
    char body[256];

    assert_int_equal(call(*state, "GET",
                          "/v1/account/acc1/ns1/s1/properties/zz?consistency=stale",
                          auth1, NULL, body, sizeof body, NULL, 0),
                     404);
    assert_non_null(strstr(body, "property_not_found"));
    assert_int_equal(call(*state, "GET",
                          "/v1/account/acc1/nope/properties?consistency=stale",
                          auth1, NULL, body, sizeof body, NULL, 0),
                     404);
    assert_non_null(strstr(body, "namespace_not_found"));
}

static void bad_consistency_level_is_400(void **state)
{
    assert_int_equal(call(*state, "GET",
                          "/v1/account/acc1/ns1/properties?consistency=weird",
                          auth1, NULL, NULL, 0, NULL, 0),
                     400);
}

/******************************************************************************
 * Pure helpers
 *****************************************************************************/

static void validators_follow_the_documented_rules(void **state)
{
    (void)state;
    assert_true(api_valid_namespace("a_B9", 4));
    assert_false(api_valid_namespace("a-b", 3));
    assert_false(api_valid_namespace("", 0));
    assert_true(api_reserved_namespace("faas", 4));
    assert_false(api_reserved_namespace("faas2", 5));
    assert_true(api_valid_account("le-12_3", 7));
    assert_false(api_valid_account("a/b", 3));
    assert_true(api_valid_session("s \xc3\xa9", 4));
    assert_false(api_valid_session("a\tb", 3));
    assert_false(api_valid_property("\xc3", 1));
}

static void percent_decoding_rejects_bad_escapes(void **state)
{
    struct buf out = BUF_INIT;

    (void)state;
    assert_int_equal(api_percent_decode("a%20b", 5, &out), 0);
    assert_string_equal(out.base, "a b");
    buf_reset(&out);
    assert_int_equal(api_percent_decode("a%2", 3, &out), -1);
    buf_reset(&out);
    assert_int_equal(api_percent_decode("a%zz", 4, &out), -1);
    buf_reset(&out);
    assert_int_equal(api_percent_decode("%0a", 3, &out), -1);
    buf_reset(&out);
    assert_int_equal(api_percent_decode("%c3", 3, &out), -2);
    /* A plain prefix, then what needs decoding or checking. */
    buf_reset(&out);
    assert_int_equal(api_percent_decode("abc", 3, &out), 0);
    assert_string_equal(out.base, "abc");
    buf_reset(&out);
    assert_int_equal(api_percent_decode("ab%41c", 6, &out), 0);
    assert_string_equal(out.base, "abAc");
    buf_reset(&out);
    assert_int_equal(api_percent_decode("ab\x7f", 3, &out), -1);
    buf_reset(&out);
    assert_int_equal(api_percent_decode("ab\x01", 3, &out), -1);
    buf_reset(&out);
    assert_int_equal(api_percent_decode("ab\xc3\xa9", 4, &out), 0);
    assert_string_equal(out.base, "ab\xc3\xa9");
    buf_reset(&out);
    assert_int_equal(api_percent_decode("ab\xc3", 3, &out), -2);
    buf_reset(&out);
    assert_int_equal(api_percent_decode("ab%c3%a9%c3", 11, &out), -2);
    buf_free(&out);
}

static void parse_uint_checks_bounds_and_overflow(void **state)
{
    uint64_t v;

    (void)state;
    assert_int_equal(api_parse_uint("315360000", 9, 315360000, &v), 0);
    assert_int_equal(v, 315360000);
    assert_int_equal(api_parse_uint("315360001", 9, 315360000, &v), -1);
    assert_int_equal(api_parse_uint("18446744073709551616", 20, UINT64_MAX, &v), -1);
    assert_int_equal(api_parse_uint("", 0, 10, &v), -1);
    assert_int_equal(api_parse_uint("1e3", 3, 10000, &v), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(unknown_path_is_404_json, setup, teardown),
        cmocka_unit_test_setup_teardown(wrong_method_is_405_with_allow, setup, teardown),
        cmocka_unit_test_setup_teardown(every_response_names_the_node, setup, teardown),
        cmocka_unit_test_setup_teardown(trailing_slash_and_percent_decoding_are_accepted,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(nul_or_bad_utf8_in_a_segment_is_400, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(data_routes_need_the_account_key, setup, teardown),
        cmocka_unit_test_setup_teardown(admin_routes_need_the_bearer_token, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            a_rotated_key_stops_working_at_once_despite_the_key_cache, setup,
            teardown),
        cmocka_unit_test_setup_teardown(body_without_json_content_type_is_415, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(malformed_or_wrong_json_is_400, setup, teardown),
        cmocka_unit_test_setup_teardown(nesting_over_64_levels_is_400, setup, teardown),
        cmocka_unit_test_setup_teardown(more_properties_than_the_limit_is_400, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(reserved_namespaces_are_403, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_names_ttl_and_paging_are_400, setup, teardown),
        cmocka_unit_test_setup_teardown(stale_read_returns_exact_value_text_and_etag,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(absent_property_and_namespace_are_distinguished,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(bad_consistency_level_is_400, setup, teardown),
        cmocka_unit_test(validators_follow_the_documented_rules),
        cmocka_unit_test(percent_decoding_rejects_bad_escapes),
        cmocka_unit_test(parse_uint_checks_bounds_and_overflow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
