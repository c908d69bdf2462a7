"""End-to-end: a 3-node region cluster serving every call from every node.

docs/cluster.md "Any node, every call" and the operator view: writes on a
follower are forwarded and answered as the leader answers, the read levels on
a follower, the warm-handoff index, ETag/If-Match across nodes, the cluster
view from every node, the cluster secret on internal routes, and a node that
refuses to start without the secret. Each test starts its own cluster on free
loopback ports with fresh data dirs; after each one every node must reach the
same digest at the same index (harness.ClusterTestCase)."""

import os
import subprocess
import time

import harness
from harness import ClusterTestCase

NS = "/v1/account/acme/ns1"


class ClusterCalls(ClusterTestCase):

    def test_a_write_on_one_follower_is_read_at_once_on_the_other(self):
        c = self.start_cluster()
        leader = c.wait_leader()
        f1, f2 = c.followers(leader)
        r = self.client(f1).patch(NS + "/s1/properties", {"greeting": "hi", "n": 1})
        self.assertStatus(r, 204)
        r = self.client(f2).get(NS + "/s1/properties")
        self.assertStatus(r, 200)
        self.assertEqual(r.json(), {"greeting": "hi", "n": 1})
        r = self.client(f2).get(NS + "/s1/properties/greeting")
        self.assertStatus(r, 200)
        self.assertEqual(r.body, b'"hi"')

    def test_a_key_acknowledged_by_the_leader_works_at_once_on_every_follower(self):
        c = self.start_cluster()
        leader = c.wait_leader()
        for i in range(5):
            adm = leader.admin(c.token)
            self.addCleanup(adm.close)
            key = adm.create_account("fresh%d" % i)
            for f in c.followers(leader):
                cl = f.client(key)
                self.addCleanup(cl.close)
                r = cl.put("/v1/account/fresh%d/ns/s/properties/p" % i, "1")
                self.assertStatus(r, 204)
                r = cl.get("/v1/account/fresh%d/ns/s/properties/p" % i)
                self.assertStatus(r, 200)
        # A wrong key is still refused on a follower, after its re-check.
        cl = c.followers(leader)[0].client("not-a-key")
        self.addCleanup(cl.close)
        self.assertStatus(cl.get("/v1/account/fresh0/ns/s/properties/p"), 401)

    def assertSameAnswer(self, a, b, what):
        self.assertEqual(a.status, b.status, "%s: leader %r, follower %r" % (what, a, b))
        self.assertEqual(a.body, b.body, "%s: leader %r, follower %r" % (what, a, b))
        for h in ("content-type", "etag", "retry-after"):
            self.assertEqual(a.headers.get(h) is None, b.headers.get(h) is None,
                             "%s: header %s: leader %r, follower %r" % (what, h, a, b))

    def test_a_forwarded_write_answers_as_the_leader_answers(self):
        c = self.start_cluster()
        leader = c.wait_leader()
        fol = c.followers(leader)[0]
        lc, fc = self.client(leader), self.client(fol)

        # Success: 204, with the index of the entry that holds the write.
        a = lc.put(NS + "/s1/properties/p", "1")
        b = fc.put(NS + "/s2/properties/p", "1")
        self.assertSameAnswer(a, b, "PUT")
        self.assertStatus(b, 204)
        self.assertTrue(b.headers.get("x-context-index", "").isdigit(), "%r" % (b,))
        self.assertGreater(int(b.headers["x-context-index"]),
                           int(a.headers["x-context-index"]))
        # "Answered as the leader answered (same status, body and headers)":
        # X-Context-Node may name the leader or this node, but is present.
        self.assertIn(b.headers.get("x-context-node"), (str(fol.node_id), str(leader.node_id)),
                      "%r" % (b,))

        # 412: If-Match with an index that is not the session's current one.
        a = lc.put(NS + "/s1/properties/p", "2", headers={"If-Match": '"1"'})
        b = fc.put(NS + "/s2/properties/p", "2", headers={"If-Match": '"1"'})
        self.assertStatus(a, 412, "precondition_failed")
        self.assertSameAnswer(a, b, "If-Match")

        # 413: the session document would exceed 800,000 bytes (decided where
        # the write is applied).
        big = '"' + "x" * 500000 + '"'
        self.assertStatus(lc.put(NS + "/s1/properties/big", big), 204)
        self.assertStatus(fc.put(NS + "/s2/properties/big", big), 204)
        a = lc.put(NS + "/s1/properties/big2", big)
        b = fc.put(NS + "/s2/properties/big2", big)
        self.assertStatus(a, 413, "document_too_large")
        self.assertSameAnswer(a, b, "document too large")

        # 404 decided by the state machine: session TTL on a missing namespace.
        path = "/v1/account/acme/namespace/nope%s/session?ttlSecond=60"
        a = lc.post(path % "A", {"sessionId": "s"})
        b = fc.post(path % "A", {"sessionId": "s"})
        self.assertStatus(a, 404, "namespace_not_found")
        self.assertSameAnswer(a, b, "namespace_not_found")

        # 400 and 403: validation.
        a = lc.patch(NS + "/s1/properties", "[1,2]")
        b = fc.patch(NS + "/s2/properties", "[1,2]")
        self.assertStatus(a, 400, "wrong_type")
        self.assertSameAnswer(a, b, "wrong type")
        a = lc.patch("/v1/account/acme/faas/properties", {"a": 1})
        b = fc.patch("/v1/account/acme/faas/properties", {"a": 1})
        self.assertStatus(a, 403, "reserved_namespace")
        self.assertSameAnswer(a, b, "reserved")

        # Nothing of a refused write was applied anywhere.
        r = fc.get(NS + "/s2/properties?include=p")
        self.assertEqual(r.json(), {"p": 1})

    def test_read_levels_on_a_follower(self):
        c = self.start_cluster(extra=["--read-timeout-ms", "1500"])
        leader = c.wait_leader()
        f1, f2 = c.followers(leader)
        r = self.client(f1).put(NS + "/s1/properties/v", '"one"')
        self.assertStatus(r, 204)
        idx = int(r.headers["x-context-index"])
        fc = self.client(f2)
        for q in ("?consistency=linearizable", "?consistency=leader", ""):
            r = fc.get(NS + "/s1/properties/v" + q)
            self.assertStatus(r, 200)
            self.assertEqual(r.body, b'"one"', q)
            self.assertGreaterEqual(int(r.headers["x-context-index"]), idx, "%r" % (r,))
        for level in ("linearizable", "leader", "stale"):
            r = fc.get(NS + "/s1/properties/v", headers={"X-Context-Consistency": level})
            self.assertStatus(r, 200)
        # Warm handoff: the index of a write made on another node.
        r = fc.get(NS + "/s1/properties/v?consistency=stale",
                   headers={"X-Context-Min-Index": str(idx)})
        self.assertStatus(r, 200)
        self.assertEqual(r.body, b'"one"')
        self.assertGreaterEqual(int(r.headers["x-context-index"]), idx)
        # A stale read answers from this node's state at once.
        t = time.monotonic()
        r = fc.get(NS + "/s1/properties/v?consistency=stale")
        self.assertStatus(r, 200)
        self.assertLess(time.monotonic() - t, 1.0)
        # An index nobody has reached: bounded wait, then 504.
        t = time.monotonic()
        r = fc.get(NS + "/s1/properties/v", headers={"X-Context-Min-Index": str(idx + 100000)})
        self.assertEqual(r.status, 504, "%r" % (r,))
        self.assertLess(time.monotonic() - t, 5.0)

    def test_an_etag_from_one_node_is_checked_on_another(self):
        c = self.start_cluster()
        n1, n2, n3 = c.nodes
        self.assertStatus(self.client(n1).patch(NS + "/s1/properties", {"a": 1}), 204)
        r = self.client(n2).get(NS + "/s1/properties")
        self.assertStatus(r, 200)
        etag = r.headers.get("etag")
        self.assertTrue(etag, "%r" % (r,))
        r = self.client(n3).put(NS + "/s1/properties/a", "2", headers={"If-Match": etag})
        self.assertStatus(r, 204)
        r = self.client(n1).put(NS + "/s1/properties/a", "3", headers={"If-Match": etag})
        self.assertStatus(r, 412, "precondition_failed")
        r = self.client(n2).get(NS + "/s1/properties/a")
        self.assertEqual(r.body, b"2")
        self.assertNotEqual(self.client(n3).get(NS + "/s1/properties").headers.get("etag"),
                            etag)

    def test_every_node_reports_the_same_membership_and_leader(self):
        c = self.start_cluster()
        leader = c.wait_leader()
        views = {}
        for x in c.nodes:
            r = c.admin(x).get("/admin/v1/cluster")
            self.assertStatus(r, 200)
            views[x.node_id] = r.json()
        for nid, v in views.items():
            self.assertEqual(v["node"], nid, v)
            self.assertEqual(v["leader"], leader.node_id, v)
            for k in ("term", "commitIndex", "appliedIndex"):
                self.assertIsInstance(v[k], int, v)
            self.assertEqual([m["id"] for m in v["nodes"]], [1, 2, 3], v)
            for m in v["nodes"]:
                x = c.node(m["id"])
                self.assertEqual(m["raftAddress"], "127.0.0.1:%d" % x.raft_port, v)
                self.assertEqual(m["httpAddress"], "127.0.0.1:%d" % x.http_port, v)
                self.assertEqual(m["region"], x.region, v)
                self.assertEqual(m["role"], "voter", v)
                self.assertEqual(m["leader"], m["id"] == leader.node_id, v)
                if nid == leader.node_id:
                    self.assertIs(m["reachable"], True, v)
                elif m["id"] not in (nid, leader.node_id):
                    self.assertIsNone(m["reachable"], v)
        strip = [[{k: m[k] for k in ("id", "raftAddress", "httpAddress", "region", "role",
                                     "leader")} for m in v["nodes"]] for v in views.values()]
        self.assertEqual(strip[0], strip[1])
        self.assertEqual(strip[0], strip[2])
        self.assertEqual(len({v["term"] for v in views.values()}), 1, views)

    def test_internal_routes_refuse_calls_without_the_cluster_secret(self):
        c = self.start_cluster()
        for x in c.nodes:
            cl = self.client(x)
            for hdrs in ({}, {"X-Ctxd-Secret": "wrong-" + c.secret},
                         {"X-Ctxd-Secret": ""}):
                r = cl.get("/internal/v1/read-index", headers=hdrs, key=None)
                self.assertStatus(r, 401, "unauthorized")
                body = {"id": 9, "raftAddress": "127.0.0.1:1", "httpAddress": "127.0.0.1:2",
                        "region": "z9"}
                r = cl.post("/internal/v1/join", body, headers=hdrs, key=None)
                self.assertStatus(r, 401, "unauthorized")
            # The admin token is not the cluster secret.
            r = cl.get("/internal/v1/read-index", key=None,
                       headers={"X-Ctxd-Secret": c.token,
                                "Authorization": "Bearer " + c.token})
            self.assertStatus(r, 401, "unauthorized")
        # Nothing joined.
        self.assertEqual(len(c.view(c.nodes[0])["nodes"]), 3)


class ClusterStartup(harness.NodeTestCase):

    def setUp(self):
        self.nodes = []

    def test_a_node_of_several_without_the_cluster_secret_refuses_to_start(self):
        spec_nodes = [harness.Node(node_id=i) for i in (1, 2, 3)]
        for x in spec_nodes:
            self.addCleanup(x.cleanup)
        self.nodes = spec_nodes
        spec = ",".join("%d=127.0.0.1:%d@127.0.0.1:%d" % (x.node_id, x.raft_port, x.http_port)
                        for x in spec_nodes)
        for argv in (["--cluster", spec],
                     ["--join", "127.0.0.1:%d" % spec_nodes[1].http_port]):
            x = spec_nodes[0]
            env = dict(os.environ)
            env.pop("CTXD_CLUSTER_SECRET", None)
            p = subprocess.Popen([harness.ctxd_path()] + x.base_args() + argv,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, cwd=x.tmp, env=env)
            try:
                raw, _ = p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                raw, _ = p.communicate(timeout=10)
                self.fail("%r without a secret still running after 10 s: %s"
                          % (argv, raw.decode("utf-8", "replace")[-2000:]))
            out = raw.decode("utf-8", "replace")
            self.assertEqual(p.returncode, 2, "%r: %s" % (argv, out))
            self.assertIn("secret", out.lower(), out)
            self.assertIsNone(harness.sanitizer_report(out), out)


if __name__ == "__main__":
    harness.main()
