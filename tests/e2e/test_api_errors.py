"""End-to-end: every error of docs/api.md that one node can produce.

Each case checks the status and the `code` of the JSON error body, and after
each test a fresh connection must still be served (the node survived)."""

import itertools
import json
import os
import socket
import time

import harness
from harness import create_account, q, request_bytes

_counter = itertools.count()
RESERVED = ("consumer", "operational", "conversation", "faas", "custom", "sde")


class ApiErrors(harness.SharedNodeTestCase):
    keep_admin = True

    def setUp(self):
        self.acc = "err%d" % next(_counter)
        self.key = self.admin.create_account(self.acc)
        self.c = self.node.client(self.key)
        self.addCleanup(self.c.close)
        self.addCleanup(self.assert_still_serving)

    def assert_still_serving(self):
        """A good request on a fresh connection still works."""
        c = self.node.client(self.key)
        try:
            r = c.put(self.url("alive", "s", "properties", "p"), 1)
            self.assertEqual(r.status, 204, "node no longer serves: %r" % (r,))
            r = c.get(self.url("alive", "s", "properties", "p"))
            self.assertEqual((r.status, r.body), (200, b"1"))
        finally:
            c.close()

    def url(self, *segments, query=""):
        p = "/v1/account/" + self.acc
        for s in segments:
            p += "/" + s
        return p + (("?" + query) if query else "")

    def props(self, ns, sid=None):
        return self.url(ns, sid, "properties") if sid else self.url(ns, "properties")

    def ok(self, resp, status=204):
        self.assertEqual(resp.status, status, "unexpected response %r" % (resp,))
        return resp

    # -- JSON bodies -------------------------------------------------------------

    def test_malformed_json_is_400_malformed_json(self):
        for body in (b'{"a":', b'{"a":1,}', b"{a:1}", b'{"a":1} x', b"", b"   ",
                     b'{"a":01}', b'{"a":.5}', b'{"a":NaN}', b'{"a":"\\x"}',
                     b"{'a':1}", b'{"a":tru}', b'{"a":"unterminated}'):
            self.assertStatus(self.c.patch(self.props("n", "s"), body), 400, "malformed_json")
        for body in (b"tru", b"1.", b"-", b"[1,]", b'"abc', b"1 2", b"+1", b"0x10"):
            self.assertStatus(self.c.put(self.url("n", "s", "properties", "p"), body), 400,
                              "malformed_json")
        self.assertStatus(self.c.post(self.url(), b'{"name":'), 400, "malformed_json")
        self.assertStatus(self.c.post(self.url("namespace", "n", "session",
                                               query="ttlSecond=5"), b"{"),
                          400, "malformed_json")
        self.assertStatus(self.c.get(self.props("n", "s")), 404, "namespace_not_found")

    def test_patch_body_that_is_not_an_object_is_400_wrong_type(self):
        for body in ("[1,2]", '"text"', "1", "null", "true"):
            self.assertStatus(self.c.patch(self.props("n", "s"), body), 400, "wrong_type")
            self.assertStatus(self.c.patch(self.props("n"), body), 400, "wrong_type")

    def test_namespace_create_body_of_wrong_type_is_400(self):
        for body in ('{"name":5}', '{"name":null}', '{"name":["a"]}', "[]", '"n"'):
            self.assertStatus(self.c.post(self.url(), body), 400, "wrong_type")
        self.assertEqual(self.c.post(self.url(), "{}").status, 400)
        self.assertStatus(self.c.post(self.url("namespace", "n", "session",
                                               query="ttlSecond=5"), '{"sessionId":7}'),
                          400, "wrong_type")
        self.assertEqual(self.c.get(self.url()).json(), [])

    def test_duplicate_member_names_are_400_duplicate_member(self):
        self.assertStatus(self.c.patch(self.props("n", "s"), '{"a":1,"a":2}'), 400,
                          "duplicate_member")
        self.assertStatus(self.c.patch(self.props("n", "s"), '{"a":1,"b":2,"\\u0061":3}'),
                          400, "duplicate_member")
        self.assertStatus(self.c.get(self.props("n")), 404, "namespace_not_found")

    def test_nesting_65_deep_is_400_too_deep_and_64_is_accepted(self):
        ok64 = "[" * 64 + "]" * 64
        bad65 = "[" * 65 + "]" * 65
        self.ok(self.c.put(self.url("n", "s", "properties", "deep"), ok64))
        r = self.ok(self.c.get(self.url("n", "s", "properties", "deep")), 200)
        self.assertEqual(r.body, ok64.encode())
        self.assertStatus(self.c.put(self.url("n", "s", "properties", "deeper"), bad65),
                          400, "too_deep")
        mixed = '{"a":' * 65 + "1" + "}" * 65
        self.assertStatus(self.c.put(self.url("n", "s", "properties", "deeper"), mixed),
                          400, "too_deep")
        self.assertStatus(self.c.patch(self.props("n", "s"), '{"x":' + "[" * 100 + "]" * 100
                                       + "}"), 400, "too_deep")
        self.assertStatus(self.c.put(self.url("n", "s", "properties", "deeper"),
                                     "[" * 100000), 400, ("too_deep", "malformed_json"))
        self.assertStatus(self.c.get(self.url("n", "s", "properties", "deeper")), 404,
                          "property_not_found")

    def test_invalid_utf8_in_body_is_400_invalid_utf8(self):
        bodies = [b'"\xff"', b'"\xc3"', b'"\xc0\xaf"', b'"\xed\xa0\x80"', b'"\xf4\x90\x80\x80"',
                  b'"a\xe2\x82"']
        for body in bodies:
            self.assertStatus(self.c.put(self.url("n", "s", "properties", "p"), body), 400,
                              "invalid_utf8")
        self.assertStatus(self.c.patch(self.props("n", "s"), b'{"a":"\xc3("}'), 400,
                          "invalid_utf8")
        self.assertStatus(self.c.patch(self.props("n", "s"), b'{"\xff":1}'), 400,
                          "invalid_utf8")
        self.assertStatus(self.c.post(self.url(), b'{"name":"\xfe"}'), 400,
                          ("invalid_utf8", "bad_name"))

    def test_control_characters_in_strings_are_malformed_json(self):
        self.assertStatus(self.c.put(self.url("n", "s", "properties", "p"), b'"a\x01b"'), 400,
                          "malformed_json")
        self.assertStatus(self.c.patch(self.props("n", "s"), b'{"a\nb":1}'), 400,
                          "malformed_json")

    # -- path segments and names -----------------------------------------------

    def test_invalid_utf8_in_a_path_segment_is_400(self):
        for path in (self.props("n", "%ff"), self.url("n", "s", "properties", "%c3"),
                     self.url("n", "s", "properties", "a%ed%a0%80")):
            self.assertStatus(self.c.get(path), 400, ("invalid_utf8", "bad_name"))
        self.assertStatus(self.c.patch(self.props("n", "%ff"), {"a": 1}), 400,
                          ("invalid_utf8", "bad_name"))

    def test_nul_and_control_bytes_in_a_path_segment_are_400(self):
        # docs/api.md groups these with UTF-8 validity of a decoded segment
        # without naming the code: any of the three path codes is accepted.
        codes = ("bad_name", "bad_request", "invalid_utf8")
        for seg in ("%00", "a%00b", "%0a", "%1f", "%7f"):
            self.assertStatus(self.c.get(self.props("n", seg)), 400, codes)
            self.assertStatus(self.c.put(self.url("n", "s", "properties", seg), 1), 400, codes)
        self.assertStatus(self.c.get(self.url("n%00")), 400, codes)

    def test_bad_percent_encoding_is_400(self):
        for seg in ("%", "%g1", "a%2"):
            r = self.c.get(self.props("n", seg))
            self.assertEqual(r.status, 400, "for %r: %r" % (seg, r))

    def test_names_over_the_limits_are_400_bad_name(self):
        ns64, ns65 = "n" * 64, "n" * 65
        self.ok(self.c.post(self.url(), {"name": ns64}))
        self.ok(self.c.patch(self.props(ns64), {"a": 1}))
        self.assertStatus(self.c.post(self.url(), {"name": ns65}), 400, "bad_name")
        self.assertStatus(self.c.patch(self.props(ns65), {"a": 1}), 400, "bad_name")
        self.assertStatus(self.c.get(self.props(ns65)), 400, "bad_name")
        self.assertStatus(self.c.delete(self.url(ns65)), 400, "bad_name")

        sid256, sid257 = "s" * 256, "s" * 257
        self.ok(self.c.patch(self.props("n", sid256), {"a": 1}))
        self.ok(self.c.patch(self.props("n", q("é" * 128)), {"a": 1}))
        self.assertStatus(self.c.patch(self.props("n", sid257), {"a": 1}), 400, "bad_name")
        self.assertStatus(self.c.patch(self.props("n", q("é" * 128 + "x")), {"a": 1}), 400,
                          "bad_name")
        self.assertStatus(self.c.get(self.props("n", sid257)), 400, "bad_name")
        self.assertStatus(self.c.post(self.url("namespace", "n", "session", query="ttlSecond=1"),
                                      {"sessionId": sid257}), 400, "bad_name")
        self.assertStatus(self.c.post(self.url("namespace", "n", "session", query="ttlSecond=1"),
                                      {"sessionId": ""}), 400, "bad_name")

        p256, p257 = "p" * 256, "p" * 257
        self.ok(self.c.put(self.url("n", "s", "properties", p256), 1))
        self.ok(self.c.patch(self.props("n", "s"), {"q" * 256: 2}))
        self.assertStatus(self.c.put(self.url("n", "s", "properties", p257), 1), 400, "bad_name")
        self.assertStatus(self.c.patch(self.props("n", "s"), {p257: 1}), 400, "bad_name")
        self.assertStatus(self.c.patch(self.props("n", "s"), {"é" * 128 + "x": 1}), 400,
                          "bad_name")
        self.assertStatus(self.c.patch(self.props("n", "s"), {"": 1}), 400, "bad_name")
        self.assertStatus(self.c.patch(self.props("n", "s"), {"a\u0000b": 1}), 400,
                          ("bad_name", "malformed_json"))
        self.assertStatus(self.c.get(self.url("n", "s", "properties", p257)), 400, "bad_name")
        self.assertEqual(set(self.c.get(self.props("n", "s")).json()), {p256, "q" * 256})

    def test_bad_namespace_characters_are_400_bad_name(self):
        for name in ("a-b", "a.b", "a b", "é", "a/b", "", "a+b", "a\u0000"):
            self.assertStatus(self.c.post(self.url(), {"name": name}), 400, "bad_name")
        for seg in ("a-b", "a.b", "a%20b", q("é"), "a~b"):
            self.assertStatus(self.c.patch(self.props(seg), {"a": 1}), 400, "bad_name")
            self.assertStatus(self.c.get(self.props(seg)), 400, "bad_name")
        self.assertEqual(self.c.get(self.url()).json(), [])

    def test_bad_account_id_is_rejected(self):
        r = self.c.get("/v1/account/" + "a" * 65)
        self.assertIn(r.status, (400, 401), "%r" % (r,))
        r = self.admin.put("/admin/v1/accounts/%s/key" % ("a" * 65), None)
        self.assertStatus(r, 400, "bad_name")
        r = self.admin.put("/admin/v1/accounts/a.b/key", None)
        self.assertStatus(r, 400, "bad_name")

    def test_reserved_namespaces_are_403_on_create_write_and_delete(self):
        for ns in RESERVED:
            self.assertStatus(self.c.post(self.url(), {"name": ns}), 403, "reserved_namespace")
            self.assertStatus(self.c.post(self.url(query="ttlSecond=5"), {"name": ns}), 403,
                              "reserved_namespace")
            self.assertStatus(self.c.patch(self.props(ns), {"a": 1}), 403, "reserved_namespace")
            self.assertStatus(self.c.patch(self.props(ns, "s"), {"a": 1}), 403,
                              "reserved_namespace")
            self.assertStatus(self.c.put(self.url(ns, "s", "properties", "a"), 1), 403,
                              "reserved_namespace")
            self.assertStatus(self.c.delete(self.url(ns)), 403, "reserved_namespace")
            self.assertStatus(self.c.delete(self.url(ns, "s", "properties", "a")), 403,
                              "reserved_namespace")
            self.assertStatus(self.c.delete(self.props(ns, "s")), 403, "reserved_namespace")
        self.assertEqual(self.c.get(self.url()).json(), [])
        # Only the exact names are reserved.
        self.ok(self.c.post(self.url(), {"name": "consumers"}))
        self.ok(self.c.patch(self.props("Consumer_x"), {"a": 1}))

    def test_bad_ttl_is_400_bad_ttl(self):
        self.ok(self.c.post(self.url(), {"name": "n"}))
        for v in ("-1", "abc", "1e3", "315360001", "1.5", "", "99999999999999999999999",
                  "%2B5", "0x10"):
            self.assertStatus(self.c.post(self.url(query="ttlSecond=" + v), {"name": "n"}),
                              400, "bad_ttl")
            self.assertStatus(self.c.post(self.url("namespace", "n", "session",
                                                   query="ttlSecond=" + v),
                                          {"sessionId": "s"}), 400, "bad_ttl")
        self.ok(self.c.post(self.url(query="ttlSecond=315360000"), {"name": "n"}))
        self.ok(self.c.post(self.url("namespace", "n", "session", query="ttlSecond=315360000"),
                            {"sessionId": "s"}))
        self.assertEqual([(d["name"], d.get("ttlSecond")) for d in self.c.get(self.url()).json()],
                         [("n", 315360000)])

    # -- content type and sizes --------------------------------------------------

    def test_body_with_wrong_or_missing_content_type_is_415(self):
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "application/jsonx",
                      "json", "application/xml", None):
            r = self.c.patch(self.props("n", "s"), {"a": 1}, content_type=ctype)
            self.assertStatus(r, 415, "unsupported_media_type")
            r = self.c.put(self.url("n", "s", "properties", "a"), 1, content_type=ctype)
            self.assertStatus(r, 415, "unsupported_media_type")
            r = self.c.post(self.url(), {"name": "n"}, content_type=ctype)
            self.assertStatus(r, 415, "unsupported_media_type")
        # 415 is checked before the body.
        r = self.c.patch(self.props("n", "s"), "{oops", content_type="text/plain")
        self.assertStatus(r, 415, "unsupported_media_type")
        self.assertStatus(self.c.get(self.props("n")), 404, "namespace_not_found")
        # Parameters are allowed.
        self.ok(self.c.patch(self.props("n", "s"), {"a": 1},
                             content_type="application/json; charset=utf-8"))
        self.ok(self.c.patch(self.props("n", "s"), {"a": 2},
                             content_type="application/json;charset=UTF-8"))

    def test_body_over_max_body_bytes_is_413_before_it_is_read(self):
        node = harness.Node(args=["--max-body-bytes", "4096"])
        self.nodes = [self.node, node]
        self.addCleanup(node.cleanup)
        node.start()
        key = create_account(node, "small")
        c = node.client(key)
        self.addCleanup(c.close)
        base = "/v1/account/small/n/s/properties"
        body = '{"a":"' + "x" * (4096 - 8) + '"}'
        self.assertEqual(len(body), 4096)
        self.ok(c.patch(base, body))
        self.assertStatus(c.patch(base, body[:-2] + 'x"}'), 413, "body_too_large")
        # Announce 10 MB, send a little, and read the answer without sending the rest.
        raw = node.raw(timeout=5)
        self.addCleanup(raw.close)
        head = ("PATCH %s HTTP/1.1\r\nHost: x\r\nmaven-api-key: %s\r\n"
                "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % (base, key, 10 * 1024 * 1024)).encode()
        raw.send(head + b'{"a":"' + b"x" * 1000)
        t0 = time.monotonic()
        r = raw.response()
        self.assertLess(time.monotonic() - t0, 4.0)
        self.assertStatus(r, 413, "body_too_large")
        self.assertTrue(raw.wait_closed(5.0), "connection kept open after 413")
        # Chunked body passing the limit.
        raw2 = node.raw(timeout=5)
        self.addCleanup(raw2.close)
        head = ("PATCH %s HTTP/1.1\r\nHost: x\r\nmaven-api-key: %s\r\n"
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                % (base, key)).encode()
        chunk = b"x" * 3000
        raw2.send(head + b'6\r\n{"a":"\r\n' + (b"%x\r\n" % len(chunk)) + chunk + b"\r\n"
                  + (b"%x\r\n" % len(chunk)) + chunk + b"\r\n")
        self.assertStatus(raw2.response(), 413, "body_too_large")
        self.assertEqual(raw_ok(node, key, base), 200)
        node.stop()

    def test_document_over_800000_bytes_is_413_and_changes_nothing(self):
        # Size = 2 + sum(len(name) + 3 + len(value)) + commas (docs/api.md).
        L = 100000
        for i in range(7):
            val = '"' + "x" * (L - 2) + '"'
            self.ok(self.c.patch(self.props("n", "s"), '{"p%d":%s}' % (i, val)))
        size = 2 + 7 * (2 + 3 + L) + 6
        self.assertEqual(size, 700043)
        left = 800000 - size - 1 - 2 - 3   # comma, name "p7", quotes and colon
        too_big = '"' + "y" * (left + 1 - 2) + '"'
        r = self.c.patch(self.props("n", "s"), '{"p7":%s}' % too_big)
        self.assertStatus(r, 413, "document_too_large")
        r = self.c.put(self.url("n", "s", "properties", "p7"), too_big)
        self.assertStatus(r, 413, "document_too_large")
        # Several members, the first of which would fit: nothing is applied.
        r = self.c.patch(self.props("n", "s"), '{"a":1,"p7":%s}' % too_big)
        self.assertStatus(r, 413, "document_too_large")
        got = self.c.get(self.props("n", "s")).json()
        self.assertEqual(sorted(got), ["p%d" % i for i in range(7)])
        # Exactly 800,000 bytes fits.
        fits = '"' + "y" * (left - 2) + '"'
        self.ok(self.c.put(self.url("n", "s", "properties", "p7"), fits))
        r = self.ok(self.c.get(self.props("n", "s")), 200)
        self.assertEqual(len(r.json()), 8)
        # One more byte anywhere is too much, even a new tiny member.
        self.assertStatus(self.c.patch(self.props("n", "s"), {"z": 1}), 413, "document_too_large")
        # Replacing a value by a shorter one is fine.
        self.ok(self.c.put(self.url("n", "s", "properties", "p0"), "1"))
        self.ok(self.c.patch(self.props("n", "s"), {"z": 1}))
        self.assertEqual(self.c.get(self.url("n", "s", "properties", "z")).body, b"1")
        # Other sessions have their own budget.
        self.ok(self.c.put(self.url("n", "s2", "properties", "p"), fits))

    def test_header_of_20_kb_is_431(self):
        raw = self.node.raw(timeout=5)
        self.addCleanup(raw.close)
        raw.send("GET %s HTTP/1.1\r\nHost: x\r\nmaven-api-key: %s\r\nX-Big: %s\r\n\r\n"
                 % (self.props("n"), self.key, "a" * 20000))
        resp = raw.response()
        self.assertStatus(resp, 431, "headers_too_large")
        # Errors answered by the HTTP layer itself name the node too.
        self.assertIn("x-context-node", resp.headers)
        raw2 = self.node.raw(timeout=5)
        self.addCleanup(raw2.close)
        raw2.send("GET /healthz?%s HTTP/1.1\r\nHost: x\r\n\r\n" % ("a" * 20000))
        self.assertStatus(raw2.response(), 431, "headers_too_large")
        # Many small headers adding up to more than 16 KiB.
        raw3 = self.node.raw(timeout=5)
        self.addCleanup(raw3.close)
        raw3.send("GET /healthz HTTP/1.1\r\nHost: x\r\n"
                  + "".join("X-H%d: %s\r\n" % (i, "b" * 100) for i in range(200)) + "\r\n")
        self.assertStatus(raw3.response(), 431, "headers_too_large")

    def test_headers_over_max_header_bytes_flag_are_431(self):
        node = harness.Node(args=["--max-header-bytes", "2048"])
        self.nodes = [self.node, node]
        self.addCleanup(node.cleanup)
        node.start()
        raw = node.raw(timeout=5)
        self.addCleanup(raw.close)
        raw.send("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: %s\r\n\r\n" % ("a" * 1000))
        self.assertEqual(raw.response().status, 200)
        raw2 = node.raw(timeout=5)
        self.addCleanup(raw2.close)
        raw2.send("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: %s\r\n\r\n" % ("a" * 3000))
        self.assertStatus(raw2.response(), 431, "headers_too_large")
        node.stop()

    def test_malformed_http_is_400(self):
        for req in (b"GARBAGE\r\n\r\n",
                    b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
                    b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n"):
            raw = self.node.raw(timeout=5)
            try:
                raw.send(req)
                r = raw.response()
                self.assertStatus(r, 400, "bad_request")
            finally:
                raw.close()

    # -- routing -----------------------------------------------------------------

    def test_unknown_path_is_404_not_found_with_json_body(self):
        for path in ("/", "/nope", "/v2/account/x", "/v1/account", "/v1/account/",
                     self.url("n", "s", "properties", "p", "extra"),
                     self.url("n", "s", "t", "properties"), "/admin/v1/nothing",
                     self.url("namespace", "n", "session", "x", "y")):
            self.assertStatus(self.c.get(path), 404, "not_found")
            self.assertStatus(self.c.get(path, key=None), 404, "not_found")

    def test_known_path_with_wrong_method_is_405_with_allow(self):
        cases = [
            ("PUT", self.url(), {"GET", "POST"}),
            ("DELETE", self.url(), {"GET", "POST"}),
            ("GET", self.url("n"), {"DELETE"}),
            ("POST", self.props("n"), {"GET", "PATCH", "DELETE"}),
            ("PUT", self.props("n", "s"), {"GET", "PATCH", "DELETE"}),
            ("POST", self.url("n", "s", "properties", "p"), {"GET", "PUT", "DELETE"}),
            ("PATCH", self.url("n", "s", "properties", "p"), {"GET", "PUT", "DELETE"}),
            ("POST", self.url("n", "session-ids"), {"GET"}),
            ("DELETE", self.url("n", "session-properties"), {"GET"}),
            ("PUT", self.url("namespace", "n", "session"), {"GET", "POST"}),
            ("POST", "/healthz", {"GET"}),
            ("GET", "/admin/v1/accounts/x/key", {"PUT"}),
        ]
        for method, path, allowed in cases:
            r = self.c.req(method, path, key=None)
            self.assertStatus(r, 405, "method_not_allowed")
            allow = {m.strip() for m in r.headers.get("allow", "").split(",") if m.strip()}
            self.assertTrue(allowed <= allow, "%s %s: Allow %r" % (method, path, allow))
            self.assertNotIn(method, allow, "%s %s: Allow %r" % (method, path, allow))

    # -- If-Match ----------------------------------------------------------------

    def test_if_match_mismatch_is_412_and_current_etag_succeeds(self):
        self.ok(self.c.patch(self.props("n", "s"), {"a": 1}))
        etag = self.ok(self.c.get(self.props("n", "s")), 200).headers["etag"]
        self.assertRegex(etag, r'^"[0-9]+"$')
        stale = '"%d"' % (int(etag.strip('"')) - 1)
        self.assertStatus(self.c.patch(self.props("n", "s"), {"a": 2},
                                       headers={"If-Match": stale}), 412, "precondition_failed")
        self.assertStatus(self.c.put(self.url("n", "s", "properties", "a"), 3,
                                     headers={"If-Match": '"999999999"'}), 412,
                          "precondition_failed")
        self.assertStatus(self.c.delete(self.url("n", "s", "properties", "a"),
                                        headers={"If-Match": stale}), 412, "precondition_failed")
        self.assertStatus(self.c.delete(self.props("n", "s"), headers={"If-Match": stale}),
                          412, "precondition_failed")
        self.assertEqual(self.c.get(self.props("n", "s")).json(), {"a": 1})
        w = self.ok(self.c.patch(self.props("n", "s"), {"a": 2}, headers={"If-Match": etag}))
        self.assertStatus(self.c.put(self.url("n", "s", "properties", "a"), 3,
                                     headers={"If-Match": etag}), 412, "precondition_failed")
        new = '"%s"' % w.headers["x-context-index"]
        self.assertEqual(self.c.get(self.props("n", "s")).headers["etag"], new)
        self.ok(self.c.put(self.url("n", "s", "properties", "a"), 3,
                           headers={"If-Match": new.strip('"')}))   # quotes optional
        self.assertEqual(self.c.get(self.props("n", "s")).json(), {"a": 3})
        etag = self.c.get(self.props("n", "s")).headers["etag"]
        self.ok(self.c.delete(self.url("n", "s", "properties", "a"), headers={"If-Match": etag}))
        # A session that does not exist has ETag "0".
        self.ok(self.c.patch(self.props("n", "new"), {"b": 1}, headers={"If-Match": '"0"'}))
        self.assertStatus(self.c.patch(self.props("n", "other"), {"b": 1},
                                       headers={"If-Match": '"5"'}), 412, "precondition_failed")

    def test_bad_if_match_is_400_bad_request(self):
        for v in ("abc", '"x"', "-1", '"1'):
            self.assertStatus(self.c.patch(self.props("n", "s"), {"a": 1},
                                           headers={"If-Match": v}), 400, "bad_request")

    # -- auth ------------------------------------------------------------------

    def data_routes(self, acc):
        base = "/v1/account/" + acc
        return [
            ("POST", base, {"name": "n"}), ("GET", base, None), ("DELETE", base + "/n", None),
            ("PATCH", base + "/n/properties", {"a": 1}),
            ("PATCH", base + "/n/s/properties", {"a": 1}),
            ("PUT", base + "/n/properties/p", 1), ("PUT", base + "/n/s/properties/p", 1),
            ("GET", base + "/n/properties", None), ("GET", base + "/n/s/properties", None),
            ("GET", base + "/n/properties/p", None), ("GET", base + "/n/s/properties/p", None),
            ("DELETE", base + "/n/properties/p", None), ("DELETE", base + "/n/s/properties/p", None),
            ("DELETE", base + "/n/s/properties", None), ("DELETE", base + "/n/properties", None),
            ("GET", base + "/n/session-ids", None), ("GET", base + "/n/session-properties", None),
            ("POST", base + "/namespace/n/session?ttlSecond=5", {"sessionId": "s"}),
            ("GET", base + "/namespace/n/session", None),
        ]

    def test_401_matrix_on_every_data_route(self):
        other = "err_other%d" % next(_counter)
        other_key = self.admin.create_account(other)
        self.ok(self.c.patch(self.props("n", "s"), {"p": 1}))
        wrong = "0" * 64
        for method, path, body in self.data_routes(self.acc):
            for key in (None, wrong, other_key, "", self.key + "0", self.key[:-1]):
                r = self.c.req(method, path, body, key=key)
                self.assertStatus(r, 401, "unauthorized")
        # Auth comes before the content type and the body.
        r = self.c.patch(self.props("n", "s"), "{bad", content_type="text/plain", key=None)
        self.assertStatus(r, 401, "unauthorized")
        r = self.c.patch(self.props("consumer", "s"), {"a": 1}, key=wrong)
        self.assertStatus(r, 401, "unauthorized")
        # An account that never had a key.
        r = self.c.get("/v1/account/never_created_acc", key=wrong)
        self.assertStatus(r, 401, "unauthorized")
        self.assertEqual(self.c.get(self.props("n", "s")).json(), {"p": 1})

    def test_revoked_key_is_401_on_every_data_route_after_rotation(self):
        old = self.key
        new = self.admin.create_account(self.acc)
        self.assertNotEqual(old, new)
        self.assertRegex(new, r"^[0-9a-f]{64}$")
        for method, path, body in self.data_routes(self.acc):
            self.assertStatus(self.c.req(method, path, body, key=old), 401, "unauthorized")
        for method, path, body in self.data_routes(self.acc):
            r = self.c.req(method, path, body, key=new)
            self.assertIn(r.status, (200, 204, 404), "%s %s with new key: %r" % (method, path, r))
        self.key = new

    def bad_bearers(self):
        token = self.node.admin_token()
        return ({}, {"Authorization": "Bearer wrong"},
                {"Authorization": "Bearer " + token + "x"}, {"Authorization": "Bearer " + token[:-1]},
                {"Authorization": "Bearer"}, {"Authorization": "Basic " + token},
                {"Authorization": token}, {"maven-api-key": self.key})

    def test_admin_key_route_needs_the_bearer_token(self):
        for headers in self.bad_bearers():
            r = self.c.req("PUT", "/admin/v1/accounts/%s/key" % self.acc, key=None,
                           headers=headers)
            self.assertStatus(r, 401, "unauthorized")
        # The key was not rotated by any of these.
        self.assertEqual(self.c.get(self.url()).status, 200)

    def test_admin_cluster_route_needs_the_bearer_token(self):
        r = self.admin.get("/admin/v1/cluster")
        self.assertEqual(r.status, 200, "%r" % (r,))
        for headers in self.bad_bearers():
            r = self.c.req("GET", "/admin/v1/cluster", key=None, headers=headers)
            self.assertStatus(r, 401, "unauthorized")


def raw_ok(node, key, path):
    c = node.client(key)
    try:
        return c.get(path).status
    finally:
        c.close()


if __name__ == "__main__":
    harness.main()
