"""End-to-end: every row of the routes table of docs/api.md on one node.

Each test gets its own account (fresh API key), so namespace lists and
session lists are exactly what the test wrote. Statuses and bodies are
checked exactly; values are checked byte for byte."""

import itertools
import json
import re
import time

import harness
from harness import q, raw_members

CREATED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
_counter = itertools.count()


class ApiRows(harness.SharedNodeTestCase):
    keep_admin = True

    def setUp(self):
        self.acc = "acc%d_%s" % (next(_counter), self._testMethodName[5:40])
        self.key = self.admin.create_account(self.acc)
        self.c = self.node.client(self.key)
        self.addCleanup(self.c.close)

    # -- helpers ------------------------------------------------------------

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

    def create_ns(self, name, ttl=None):
        query = "" if ttl is None else "ttlSecond=%d" % ttl
        return self.ok(self.c.post(self.url(query=query), {"name": name}))

    def get_json(self, path):
        r = self.ok(self.c.get(path), 200)
        self.assertTrue(r.headers.get("content-type", "").startswith("application/json"),
                        "content type of %r" % (r,))
        return r.json()

    # -- namespaces (rows 1-3) --------------------------------------------

    def test_created_namespaces_are_listed_sorted_with_created_at(self):
        for name in ("zeta", "alpha", "Mid_1", "beta"):
            r = self.create_ns(name)
            self.assertEqual(r.body, b"")
        doc = self.get_json(self.url())
        self.assertEqual([d["name"] for d in doc], sorted(["zeta", "alpha", "Mid_1", "beta"]))
        for d in doc:
            self.assertRegex(d["createdAt"], CREATED_AT)
            self.assertNotIn("ttlSecond", d)
            self.assertEqual(set(d), {"name", "createdAt"})

    def test_empty_account_lists_no_namespaces(self):
        self.assertEqual(self.get_json(self.url()), [])

    def test_namespace_ttl_is_listed_only_when_set_and_can_be_changed(self):
        self.create_ns("a", ttl=60)
        self.create_ns("b")
        doc = {d["name"]: d for d in self.get_json(self.url())}
        self.assertEqual(doc["a"]["ttlSecond"], 60)
        self.assertNotIn("ttlSecond", doc["b"])
        created = doc["a"]["createdAt"]
        self.create_ns("a", ttl=120)
        self.create_ns("b", ttl=5)
        doc = {d["name"]: d for d in self.get_json(self.url())}
        self.assertEqual(doc["a"]["ttlSecond"], 120)
        self.assertEqual(doc["b"]["ttlSecond"], 5)
        self.assertEqual(doc["a"]["createdAt"], created, "re-POST must not recreate")
        self.create_ns("a")   # no ttlSecond: TTL unchanged
        doc = {d["name"]: d for d in self.get_json(self.url())}
        self.assertEqual(doc["a"]["ttlSecond"], 120)
        self.create_ns("a", ttl=0)   # 0 removes the TTL
        doc = {d["name"]: d for d in self.get_json(self.url())}
        self.assertNotIn("ttlSecond", doc["a"])
        self.assertEqual(len(doc), 2)

    def test_delete_namespace_removes_it_and_its_properties(self):
        self.create_ns("gone")
        self.ok(self.c.patch(self.props("gone"), {"a": 1}))
        self.ok(self.c.patch(self.props("gone", "s1"), {"b": 2}))
        self.create_ns("kept")
        r = self.ok(self.c.delete(self.url("gone")))
        self.assertEqual(r.body, b"")
        self.assertEqual([d["name"] for d in self.get_json(self.url())], ["kept"])
        r = self.c.get(self.props("gone"))
        self.assertStatus(r, 404, "namespace_not_found")
        self.create_ns("gone")
        self.assertEqual(self.get_json(self.props("gone")), {})
        self.assertEqual(self.get_json(self.props("gone", "s1")), {})
        self.assertEqual(self.get_json(self.url("gone", "session-ids")), [])

    def test_delete_absent_namespace_is_204(self):
        self.ok(self.c.delete(self.url("never_was")))
        self.assertEqual(self.get_json(self.url()), [])

    def test_delete_namespace_removes_session_ttls(self):
        self.create_ns("n")
        self.ok(self.c.post(self.url("namespace", "n", "session", query="ttlSecond=50"),
                            {"sessionId": "s"}))
        self.ok(self.c.delete(self.url("n")))
        self.create_ns("n")
        self.assertEqual(self.get_json(self.url("namespace", "n", "session")), [])

    # -- properties (rows 4-9) ----------------------------------------------

    def test_patch_creates_namespace_and_session(self):
        self.ok(self.c.patch(self.props("auto", "s1"), {"intent": "buy", "n": 3}))
        self.assertEqual([d["name"] for d in self.get_json(self.url())], ["auto"])
        self.assertEqual(self.get_json(self.props("auto", "s1")), {"intent": "buy", "n": 3})

    def test_put_creates_namespace_and_session(self):
        self.ok(self.c.put(self.url("auto2", "s9", "properties", "p"), [1, 2]))
        self.assertEqual([d["name"] for d in self.get_json(self.url())], ["auto2"])
        self.assertEqual(self.get_json(self.props("auto2", "s9")), {"p": [1, 2]})

    def test_patch_upserts_each_member(self):
        self.ok(self.c.patch(self.props("n", "s"), {"a": 1, "b": 2}))
        self.ok(self.c.patch(self.props("n", "s"), {"b": 3, "c": {"x": None}}))
        self.assertEqual(self.get_json(self.props("n", "s")), {"a": 1, "b": 3, "c": {"x": None}})

    def test_empty_patch_is_204_and_changes_nothing(self):
        self.ok(self.c.patch(self.props("n", "s"), {"a": 1}))
        self.ok(self.c.patch(self.props("n", "s"), {}))
        self.assertEqual(self.get_json(self.props("n", "s")), {"a": 1})

    def test_namespace_properties_are_the_default_session(self):
        self.ok(self.c.patch(self.props("n"), {"a": 1}))
        self.ok(self.c.patch(self.props("n", "__default__"), {"b": 2}))
        self.ok(self.c.put(self.url("n", "properties", "c"), '"three"'))
        self.ok(self.c.put(self.url("n", "__default__", "properties", "d"), 4))
        want = {"a": 1, "b": 2, "c": "three", "d": 4}
        self.assertEqual(self.get_json(self.props("n")), want)
        self.assertEqual(self.get_json(self.props("n", "__default__")), want)
        self.assertEqual(self.get_json(self.url("n", "properties", "b")), 2)
        self.assertEqual(self.get_json(self.url("n", "__default__", "properties", "a")), 1)
        self.ok(self.c.delete(self.url("n", "__default__", "properties", "a")))
        self.assertStatus(self.c.get(self.url("n", "properties", "a")), 404,
                          "property_not_found")
        self.assertEqual(self.get_json(self.url("n", "session-ids")), ["__default__"])

    def test_sessions_are_separate_from_each_other_and_the_namespace(self):
        self.ok(self.c.patch(self.props("n"), {"a": "ns"}))
        self.ok(self.c.patch(self.props("n", "s1"), {"a": "s1"}))
        self.ok(self.c.patch(self.props("n", "s2"), {"a": "s2"}))
        self.assertEqual(self.get_json(self.props("n")), {"a": "ns"})
        self.assertEqual(self.get_json(self.props("n", "s1")), {"a": "s1"})
        self.assertEqual(self.get_json(self.props("n", "s2")), {"a": "s2"})

    def test_put_replaces_a_single_property(self):
        self.ok(self.c.patch(self.props("n", "s"), {"a": 1, "b": 2}))
        self.ok(self.c.put(self.url("n", "s", "properties", "a"), {"deep": [True]}))
        self.assertEqual(self.get_json(self.props("n", "s")), {"a": {"deep": [True]}, "b": 2})
        self.assertEqual(self.get_json(self.url("n", "s", "properties", "a")), {"deep": [True]})

    def test_get_with_include_returns_only_those_properties(self):
        self.ok(self.c.patch(self.props("n", "s"), {"a": 1, "b": 2, "c": 3}))
        self.ok(self.c.patch(self.props("n"), {"a": 10, "b": 20, "c": 30}))
        self.assertEqual(self.get_json(self.props("n", "s") + "?include=a,c"), {"a": 1, "c": 3})
        self.assertEqual(self.get_json(self.props("n") + "?include=b"), {"b": 20})
        self.assertEqual(self.get_json(self.props("n", "s") + "?include=a,zz"), {"a": 1})
        self.assertEqual(self.get_json(self.props("n", "s") + "?include=zz"), {})

    def test_absent_session_of_existing_namespace_is_an_empty_object(self):
        self.create_ns("n")
        r = self.ok(self.c.get(self.props("n", "nobody")), 200)
        self.assertEqual(r.json(), {})
        self.assertEqual(self.get_json(self.props("n")), {})

    def test_unknown_namespace_is_404_namespace_not_found(self):
        self.assertStatus(self.c.get(self.props("nope")), 404, "namespace_not_found")
        self.assertStatus(self.c.get(self.props("nope", "s")), 404, "namespace_not_found")
        self.assertStatus(self.c.get(self.url("nope", "properties", "p")), 404,
                          "namespace_not_found")
        self.assertStatus(self.c.get(self.url("nope", "s", "properties", "p")), 404,
                          "namespace_not_found")

    def test_absent_property_is_404_property_not_found(self):
        self.ok(self.c.patch(self.props("n", "s"), {"a": 1}))
        self.assertStatus(self.c.get(self.url("n", "s", "properties", "b")), 404,
                          "property_not_found")
        self.assertStatus(self.c.get(self.url("n", "other", "properties", "a")), 404,
                          "property_not_found")
        self.assertStatus(self.c.get(self.url("n", "properties", "a")), 404,
                          "property_not_found")

    def test_delete_property_removes_only_it_and_is_204_when_absent(self):
        self.ok(self.c.patch(self.props("n", "s"), {"a": 1, "b": 2}))
        r = self.ok(self.c.delete(self.url("n", "s", "properties", "a")))
        self.assertEqual(r.body, b"")
        self.assertEqual(self.get_json(self.props("n", "s")), {"b": 2})
        self.ok(self.c.delete(self.url("n", "s", "properties", "a")))
        self.ok(self.c.delete(self.url("n", "s", "properties", "never")))
        self.ok(self.c.delete(self.url("n", "nosession", "properties", "x")))
        self.ok(self.c.patch(self.props("n"), {"a": 1}))
        self.ok(self.c.delete(self.url("n", "properties", "a")))
        self.assertEqual(self.get_json(self.props("n")), {})

    def test_clear_session_removes_its_properties_and_keeps_its_ttl(self):
        self.create_ns("n")
        self.ok(self.c.post(self.url("namespace", "n", "session", query="ttlSecond=100"),
                            {"sessionId": "s1"}))
        self.ok(self.c.patch(self.props("n", "s1"), {"a": 1, "b": 2}))
        self.ok(self.c.patch(self.props("n", "s2"), {"c": 3}))
        r = self.ok(self.c.delete(self.props("n", "s1")))
        self.assertEqual(r.body, b"")
        self.assertEqual(self.get_json(self.props("n", "s1")), {})
        self.assertEqual(self.get_json(self.props("n", "s2")), {"c": 3})
        sessions = self.get_json(self.url("namespace", "n", "session"))
        self.assertEqual([(s["sessionId"], s["ttlSecond"]) for s in sessions], [("s1", 100)])
        self.assertEqual(self.get_json(self.url("n", "session-ids")), ["s2"])

    def test_clear_session_accepts_a_trailing_slash(self):
        self.ok(self.c.patch(self.props("n", "s1"), {"a": 1}))
        self.ok(self.c.delete(self.props("n", "s1") + "/"))
        self.assertEqual(self.get_json(self.props("n", "s1")), {})

    def test_clear_namespace_properties(self):
        self.ok(self.c.patch(self.props("n"), {"a": 1}))
        self.ok(self.c.patch(self.props("n", "s"), {"a": 2}))
        self.ok(self.c.delete(self.props("n")))
        self.assertEqual(self.get_json(self.props("n")), {})
        self.assertEqual(self.get_json(self.props("n", "s")), {"a": 2})

    # -- session lists (rows 10-11) -------------------------------------------

    def test_session_ids_lists_sessions_with_live_properties_sorted(self):
        self.ok(self.c.patch(self.props("n", "s2"), {"a": 1}))
        self.ok(self.c.patch(self.props("n", "s1"), {"a": 1}))
        self.ok(self.c.patch(self.props("n"), {"a": 1}))
        self.ok(self.c.patch(self.props("n", "empty"), {"a": 1}))
        self.ok(self.c.delete(self.url("n", "empty", "properties", "a")))
        self.assertEqual(self.get_json(self.url("n", "session-ids")), ["__default__", "s1", "s2"])

    def test_session_ids_pages(self):
        ids = ["s%02d" % i for i in range(7)]
        for sid in reversed(ids):
            self.ok(self.c.patch(self.props("n", sid), {"v": sid}))
        base = self.url("n", "session-ids")
        self.assertEqual(self.get_json(base + "?page=0&perPage=3"), ids[0:3])
        self.assertEqual(self.get_json(base + "?page=1&perPage=3"), ids[3:6])
        self.assertEqual(self.get_json(base + "?page=2&perPage=3"), ids[6:])
        self.assertEqual(self.get_json(base + "?page=3&perPage=3"), [])
        self.assertEqual(self.get_json(base + "?perPage=1000"), ids)
        self.assertEqual(self.get_json(base + "?page=0"), ids)
        self.assertEqual(self.get_json(base + "?perPage=1"), ids[:1])
        self.assertEqual(self.get_json(base + "?page=6&perPage=1"), ids[6:])

    def test_session_ids_default_page_size_is_100(self):
        for i in range(105):
            self.ok(self.c.put(self.url("n", "s%03d" % i, "properties", "p"), i))
        ids = self.get_json(self.url("n", "session-ids"))
        self.assertEqual(ids, ["s%03d" % i for i in range(100)])
        self.assertEqual(self.get_json(self.url("n", "session-ids") + "?page=1"),
                         ["s%03d" % i for i in range(100, 105)])

    def test_bad_paging_is_400_bad_paging(self):
        self.ok(self.c.patch(self.props("n", "s"), {"a": 1}))
        for route in ("session-ids", "session-properties"):
            for qs in ("page=-1", "perPage=0", "perPage=1001", "page=abc", "perPage=x",
                       "perPage=-5", "page=1.5", "perPage=", "page="):
                r = self.c.get(self.url("n", route, query=qs))
                self.assertStatus(r, 400, "bad_paging")

    def test_session_properties_lists_each_session_with_its_properties(self):
        self.ok(self.c.patch(self.props("n", "s2"), {"b": [1, 2]}))
        self.ok(self.c.patch(self.props("n", "s1"), {"a": 1, "c": "x"}))
        self.ok(self.c.patch(self.props("n"), {"d": None}))
        doc = self.get_json(self.url("n", "session-properties"))
        self.assertEqual(doc, [
            {"sessionId": "__default__", "property": {"d": None}},
            {"sessionId": "s1", "property": {"a": 1, "c": "x"}},
            {"sessionId": "s2", "property": {"b": [1, 2]}},
        ])
        page = self.get_json(self.url("n", "session-properties", query="page=1&perPage=2"))
        self.assertEqual(page, [{"sessionId": "s2", "property": {"b": [1, 2]}}])

    # -- session TTLs (rows 12-13) --------------------------------------------

    def test_session_ttls_are_created_and_listed_sorted(self):
        self.create_ns("n")
        for sid, ttl in (("zz", 30), ("aa", 10), ("mm", 20)):
            r = self.ok(self.c.post(self.url("namespace", "n", "session",
                                             query="ttlSecond=%d" % ttl), {"sessionId": sid}))
            self.assertEqual(r.body, b"")
        self.ok(self.c.patch(self.props("n", "nottl"), {"a": 1}))
        doc = self.get_json(self.url("namespace", "n", "session"))
        self.assertEqual([(d["sessionId"], d["ttlSecond"]) for d in doc],
                         [("aa", 10), ("mm", 20), ("zz", 30)])
        for d in doc:
            self.assertRegex(d["createdAt"], CREATED_AT)
            self.assertEqual(set(d), {"sessionId", "createdAt", "ttlSecond"})
        self.ok(self.c.post(self.url("namespace", "n", "session", query="ttlSecond=99"),
                            {"sessionId": "mm"}))
        doc = self.get_json(self.url("namespace", "n", "session"))
        self.assertEqual([(d["sessionId"], d["ttlSecond"]) for d in doc],
                         [("aa", 10), ("mm", 99), ("zz", 30)])

    def test_session_ttl_on_unknown_namespace_is_404(self):
        r = self.c.post(self.url("namespace", "ghost", "session", query="ttlSecond=5"),
                        {"sessionId": "s"})
        self.assertStatus(r, 404, "namespace_not_found")

    def test_session_ttl_list_of_namespace_without_ttls_is_empty(self):
        self.create_ns("n")
        self.assertEqual(self.get_json(self.url("namespace", "n", "session")), [])

    # -- paths ------------------------------------------------------------------

    def test_trailing_slashes_are_accepted(self):
        self.ok(self.c.post(self.url() + "/", {"name": "n"}))
        self.assertEqual([d["name"] for d in self.get_json(self.url() + "/")], ["n"])
        self.ok(self.c.patch(self.props("n", "s") + "/", {"a": 1}))
        self.ok(self.c.put(self.url("n", "s", "properties", "b") + "/", 2))
        self.assertEqual(self.get_json(self.props("n", "s") + "/"), {"a": 1, "b": 2})
        self.assertEqual(self.get_json(self.url("n", "s", "properties", "b") + "/"), 2)
        self.assertEqual(self.get_json(self.url("n", "session-ids") + "/"), ["s"])
        self.assertEqual(len(self.get_json(self.url("n", "session-properties") + "/")), 1)
        self.ok(self.c.post(self.url("namespace", "n", "session") + "/?ttlSecond=5",
                            {"sessionId": "s"}))
        self.assertEqual(len(self.get_json(self.url("namespace", "n", "session") + "/")), 1)
        self.ok(self.c.delete(self.url("n", "s", "properties", "b") + "/"))
        self.assertEqual(self.get_json(self.props("n", "s")), {"a": 1})
        self.ok(self.c.delete(self.url("n") + "/"))
        self.assertEqual(self.get_json(self.url()), [])

    def test_path_segments_are_percent_decoded(self):
        self.ok(self.c.patch(self.props("n", "a%20b"), {"x": 1}))
        self.ok(self.c.put(self.url("n", "a%20b", "properties", "p%20q"), 2))
        self.ok(self.c.put(self.url("n", q("é/ü"), "properties", q("ключ")), '"v"'))
        self.assertEqual(self.get_json(self.props("n", "a%20b")), {"x": 1, "p q": 2})
        self.assertEqual(self.get_json(self.url("n", "a%20b", "properties", "p%20q")), 2)
        self.assertEqual(self.get_json(self.url("n", q("é/ü"), "properties")), {"ключ": "v"})
        self.assertEqual(self.get_json(self.url("n", "session-ids")), sorted(["a b", "é/ü"]))
        self.assertEqual(self.get_json(self.url("n", "%61%20b", "properties", "x")), 1)
        self.ok(self.c.post(self.url("namespace", "n", "session", query="ttlSecond=7"),
                            {"sessionId": "a b"}))
        self.assertEqual([d["sessionId"] for d in self.get_json(
            self.url("namespace", "n", "session"))], ["a b"])
        # The namespace segment is decoded too.
        self.assertEqual(self.get_json(self.url("%6e", "a%20b", "properties", "x")), 1)

    # -- headers ----------------------------------------------------------------

    def test_every_response_carries_x_context_node(self):
        responses = [
            self.c.post(self.url(), {"name": "n"}),
            self.c.get(self.url()),
            self.c.patch(self.props("n", "s"), {"a": 1}),
            self.c.get(self.props("n", "s")),
            self.c.get(self.url("n", "s", "properties", "a")),
            self.c.get(self.url("n", "s", "properties", "zz")),
            self.c.get(self.props("nope")),
            self.c.get("/nowhere"),
            self.c.get(self.url(), key="wrong"),
            self.c.req("POST", self.props("n")),
            self.c.patch(self.props("n"), "[1]"),
            self.c.get("/healthz"),
            self.c.get("/readyz"),
            self.admin.get("/admin/v1/cluster"),
        ]
        for r in responses:
            self.assertEqual(r.headers.get("x-context-node"), "1", "in %r" % (r,))

    def test_writes_answer_increasing_x_context_index(self):
        writes = [
            lambda: self.c.post(self.url(), {"name": "n"}),
            lambda: self.c.patch(self.props("n", "s"), {"a": 1}),
            lambda: self.c.put(self.url("n", "s", "properties", "b"), 2),
            lambda: self.c.delete(self.url("n", "s", "properties", "b")),
            lambda: self.c.delete(self.props("n", "s")),
            lambda: self.c.post(self.url("namespace", "n", "session", query="ttlSecond=5"),
                                {"sessionId": "s"}),
            lambda: self.c.delete(self.url("n")),
        ]
        last = 0
        for w in writes:
            r = self.ok(w())
            idx = r.headers.get("x-context-index")
            self.assertIsNotNone(idx, "no X-Context-Index in %r" % (r,))
            self.assertRegex(idx, r"^[0-9]+$")
            self.assertGreater(int(idx), last)
            last = int(idx)
        r = self.ok(self.c.get(self.url()), 200)
        self.assertRegex(r.headers.get("x-context-index", ""), r"^[0-9]+$")
        self.assertGreaterEqual(int(r.headers["x-context-index"]), last)

    def test_session_read_answers_an_etag(self):
        self.create_ns("n")
        r = self.ok(self.c.get(self.props("n", "fresh")), 200)
        self.assertEqual(r.headers.get("etag"), '"0"')
        w = self.ok(self.c.patch(self.props("n", "s"), {"a": 1}))
        r = self.ok(self.c.get(self.props("n", "s")), 200)
        self.assertEqual(r.headers.get("etag"), '"%s"' % w.headers["x-context-index"])

    # -- read extensions (docs/api.md, Extensions) ---------------------------------

    def test_reads_accept_every_consistency_level(self):
        self.ok(self.c.patch(self.props("n", "s"), {"a": 1}))
        for level in ("linearizable", "leader", "stale"):
            r = self.ok(self.c.get(self.props("n", "s") + "?consistency=" + level), 200)
            self.assertEqual(r.json(), {"a": 1})
            r = self.ok(self.c.get(self.props("n", "s"),
                                   headers={"X-Context-Consistency": level}), 200)
            self.assertEqual(r.json(), {"a": 1})

    def test_read_with_an_applied_min_index_is_served(self):
        w = self.ok(self.c.patch(self.props("n", "s"), {"a": 1}))
        r = self.ok(self.c.get(self.props("n", "s"),
                               headers={"X-Context-Min-Index": w.headers["x-context-index"]}),
                    200)
        self.assertEqual(r.json(), {"a": 1})
        self.assertGreaterEqual(int(r.headers["x-context-index"]),
                                int(w.headers["x-context-index"]))

    def test_read_with_a_min_index_never_reached_is_504_after_a_bounded_wait(self):
        self.ok(self.c.patch(self.props("n", "s"), {"a": 1}))
        t0 = time.monotonic()
        r = self.c.get(self.props("n", "s"), headers={"X-Context-Min-Index": "999999999"})
        self.assertStatus(r, 504)
        self.assertLess(time.monotonic() - t0, 10.0)

    # -- values -----------------------------------------------------------------

    VALUES = [
        "1.1", "12345678901234567890", "-0.0", "1e400", "-12345678901234567890.5e-3",
        '"\\u00e9 \u00fc \U0001F600"', '{"a" : [1 ,2, {"b":  null}],\n "c":"d"}',
        '[ 1.10 , "x" ,[ ] , { } ]', "true", "false", "null", '""', "0", "1E+2",
        '"quote \\" backslash \\\\ slash \\/ ctl \\n\\t"',
    ]

    def test_values_round_trip_byte_identical_through_put(self):
        for i, v in enumerate(self.VALUES):
            self.ok(self.c.put(self.url("n", "s", "properties", "p%d" % i), v))
        for i, v in enumerate(self.VALUES):
            r = self.ok(self.c.get(self.url("n", "s", "properties", "p%d" % i)), 200)
            self.assertEqual(r.body, v.encode("utf-8"), "value %d" % i)
            self.assertTrue(r.headers.get("content-type", "").startswith("application/json"))
        members = raw_members(self.ok(self.c.get(self.props("n", "s")), 200).body)
        self.assertEqual(members, {"p%d" % i: v for i, v in enumerate(self.VALUES)})

    def test_values_round_trip_byte_identical_through_patch(self):
        text = "{" + ",".join('"p%d" : %s' % (i, v) for i, v in enumerate(self.VALUES)) + "}"
        self.ok(self.c.patch(self.props("n"), text))
        for i, v in enumerate(self.VALUES):
            r = self.ok(self.c.get(self.url("n", "properties", "p%d" % i)), 200)
            self.assertEqual(r.body, v.encode("utf-8"), "value %d" % i)
        members = raw_members(self.ok(self.c.get(self.props("n")), 200).body)
        self.assertEqual(members, {"p%d" % i: v for i, v in enumerate(self.VALUES)})
        rows = self.ok(self.c.get(self.url("n", "session-properties")), 200).text()
        # The property object of the one session, byte for byte.
        start = rows.index('"property"')
        obj = rows[rows.index("{", start):]
        self.assertEqual(raw_members(obj), {"p%d" % i: v for i, v in enumerate(self.VALUES)})

    def test_unicode_property_names_round_trip(self):
        self.ok(self.c.patch(self.props("n", "s"), {"é ü 😀": 1, "a\"b": 2, "tab\\x": 3}))
        self.assertEqual(self.get_json(self.props("n", "s")), {"é ü 😀": 1, "a\"b": 2, "tab\\x": 3})
        self.assertEqual(self.get_json(self.url("n", "s", "properties", q("é ü 😀"))), 1)
        self.assertEqual(self.get_json(self.url("n", "s", "properties", q("a\"b"))), 2)

    def test_property_value_of_large_size_round_trips(self):
        v = json.dumps({"blob": "x" * 200000, "list": list(range(1000))})
        self.ok(self.c.put(self.url("n", "s", "properties", "big"), v))
        r = self.ok(self.c.get(self.url("n", "s", "properties", "big")), 200)
        self.assertEqual(r.body, v.encode())


if __name__ == "__main__":
    harness.main()
