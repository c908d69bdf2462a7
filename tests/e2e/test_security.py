"""Access control end to end (docs/security.md).

- Isolation: every data route × {no key, wrong key, another account's key,
  revoked key} is 401 `unauthorized` with the fixed error body (no data in
  it), and changes nothing.
- Secrets at rest: after using a key (with --log-level debug and snapshots
  forced), the raw key appears nowhere: not in the log, not in any file of
  the data dir (Raft log segments, snapshots, metadata), not in a backup;
  its SHA-256 does appear in the backup (so the search would have found
  bytes that are there). The admin token is not in the log either.
- On a 3-node cluster: admin routes need the admin token on every node,
  internal routes need the cluster secret (a forwarded request with the
  secret still needs the client's own key), and a key rotation takes effect
  on every node once applied (old key 401 everywhere, new key works
  everywhere).
"""

import hashlib
import os
import time

import harness
from harness import q

SECRET_VALUE = "alice-private-7d1c"      # stored under alice, never shown to others
DEFAULT_VALUE = "alice-default-52e0"     # alice's namespace property
UNAUTHORIZED = {"code": "unauthorized", "message": "missing or invalid credentials"}


def data_routes(acc):
    """(method, path, body) for every data route of docs/api.md, on acc's
    existing namespace ns1 and session s1."""
    a = "/v1/account/" + acc
    return [
        ("GET", a, None),
        ("POST", a, {"name": "ns2"}),
        ("POST", a + "?ttlSecond=60", {"name": "ns1"}),
        ("DELETE", a + "/ns1", None),
        ("PATCH", a + "/ns1/properties", {"p": 1}),
        ("PATCH", a + "/ns1/s1/properties", {"secret": 2}),
        ("PUT", a + "/ns1/properties/p", "3"),
        ("PUT", a + "/ns1/s1/properties/secret", "4"),
        ("GET", a + "/ns1/properties", None),
        ("GET", a + "/ns1/s1/properties", None),
        ("GET", a + "/ns1/s1/properties?include=secret", None),
        ("GET", a + "/ns1/s1/properties?consistency=stale", None),
        ("GET", a + "/ns1/__default__/properties", None),
        ("GET", a + "/ns1/properties/p", None),
        ("GET", a + "/ns1/s1/properties/secret", None),
        ("GET", a + "/ns1/s1/properties/secret?consistency=leader", None),
        ("DELETE", a + "/ns1/properties/p", None),
        ("DELETE", a + "/ns1/s1/properties/secret", None),
        ("DELETE", a + "/ns1/s1/properties", None),
        ("DELETE", a + "/ns1/s1/properties/", None),
        ("GET", a + "/ns1/session-ids", None),
        ("GET", a + "/ns1/session-ids?page=0&perPage=10", None),
        ("GET", a + "/ns1/session-properties", None),
        ("POST", a + "/namespace/ns1/session?ttlSecond=60", {"sessionId": "s1"}),
        ("GET", a + "/namespace/ns1/session", None),
    ]


def assert_unauthorized(test, resp, what):
    test.assertEqual(resp.status, 401, "%s: %r" % (what, resp))
    test.assertEqual(resp.json(), UNAUTHORIZED, "%s: %r" % (what, resp))
    for marker in (SECRET_VALUE, DEFAULT_VALUE):
        test.assertNotIn(marker.encode(), resp.body, what)
    test.assertNotIn("x-context-index", resp.headers, what)
    test.assertNotIn("etag", resp.headers, what)


class Isolation(harness.NodeTestCase):

    def setUp(self):
        self.node = harness.Node()
        self.addCleanup(self.node.cleanup)
        self.nodes = [self.node]
        self.node.start()
        admin = self.node.admin()
        self.addCleanup(admin.close)
        self.revoked = admin.create_account("alice")
        self.alice = admin.create_account("alice")      # rotation revokes the first
        self.bob = admin.create_account("bob")
        self.ac = self.node.client(self.alice)
        self.addCleanup(self.ac.close)
        self.assertStatus(self.ac.post("/v1/account/alice", {"name": "ns1"}), 204)
        self.assertStatus(self.ac.patch("/v1/account/alice/ns1/s1/properties",
                                        {"secret": SECRET_VALUE}), 204)
        self.assertStatus(self.ac.put("/v1/account/alice/ns1/properties/p",
                                      '"%s"' % DEFAULT_VALUE), 204)
        self.assertStatus(self.ac.post("/v1/account/alice/namespace/ns1/session?ttlSecond=600",
                                       {"sessionId": "s1"}), 204)
        # bob has data of his own under the same names.
        bc = self.node.client(self.bob)
        self.addCleanup(bc.close)
        self.assertStatus(bc.post("/v1/account/bob", {"name": "ns1"}), 204)
        self.assertStatus(bc.patch("/v1/account/bob/ns1/s1/properties", {"b": 1}), 204)

    def state(self):
        """Everything alice can see, read with her key."""
        out = []
        for path in ("/v1/account/alice", "/v1/account/alice/ns1/s1/properties",
                     "/v1/account/alice/ns1/properties",
                     "/v1/account/alice/ns1/session-properties",
                     "/v1/account/alice/namespace/ns1/session"):
            r = self.ac.get(path)
            self.assertEqual(r.status, 200, "%s: %r" % (path, r))
            out.append(r.json())
        return out

    def test_every_data_route_refuses_a_missing_wrong_foreign_or_revoked_key(self):
        before = self.state()
        self.assertIn(SECRET_VALUE, str(before))
        wrong = "f" * 64
        cases = [("no key", None), ("empty key", ""), ("wrong key", wrong),
                 ("bob's key", self.bob), ("revoked key", self.revoked),
                 ("alice's key with a blank", self.alice + " x")]
        cl = self.node.client()
        self.addCleanup(cl.close)
        n = 0
        for method, path, body in data_routes("alice"):
            for name, key in cases:
                headers = {}
                if key is not None:
                    headers["maven-api-key"] = key
                r = cl.req(method, path, body, headers=headers, key=None)
                assert_unauthorized(self, r, "%s %s with %s" % (method, path, name))
                n += 1
        self.assertEqual(n, len(data_routes("alice")) * len(cases))
        self.assertEqual(self.state(), before)

    def test_another_accounts_key_cannot_reach_data_through_path_tricks(self):
        cl = self.node.client(self.bob)
        self.addCleanup(cl.close)
        for path in ("/v1/account/%s/ns1/s1/properties" % q("alice"),
                     "/v1/account/alice/ns1/s1/properties/",
                     "/v1/account/alice//ns1/s1/properties",
                     "/v1/account/alice/ns1/s1/properties?acc=bob",
                     "/v1/account/ALICE/ns1/s1/properties"):
            r = cl.get(path)
            self.assertIn(r.status, (400, 401, 404), "%s: %r" % (path, r))
            self.assertNotIn(SECRET_VALUE.encode(), r.body, path)

    def test_a_key_in_the_wrong_header_or_as_a_bearer_token_is_refused(self):
        cl = self.node.client()
        self.addCleanup(cl.close)
        for headers in ({"Authorization": "Bearer " + self.alice},
                        {"x-api-key": self.alice},
                        {"maven-api-key": self.alice.upper()}):
            r = cl.get("/v1/account/alice/ns1/s1/properties", headers=headers, key=None)
            assert_unauthorized(self, r, repr(headers))

    def test_an_account_key_is_not_the_admin_token(self):
        cl = self.node.client()
        self.addCleanup(cl.close)
        for path in ("/admin/v1/digest", "/admin/v1/backup", "/admin/v1/cluster"):
            r = cl.get(path, headers={"Authorization": "Bearer " + self.alice},
                       key=None)
            self.assertStatus(r, 401, "unauthorized")
        r = cl.put("/admin/v1/accounts/alice/key", None,
                   headers={"Authorization": "Bearer " + self.alice}, key=None)
        self.assertStatus(r, 401, "unauthorized")
        # alice's key still works: the refused rotation changed nothing.
        self.assertEqual(self.ac.get("/v1/account/alice/ns1/s1/properties").json(),
                         {"secret": SECRET_VALUE})


def files_under(root):
    for dirpath, _, names in os.walk(root):
        for name in names:
            yield os.path.join(dirpath, name)


class SecretsAtRest(harness.NodeTestCase):

    def test_the_raw_key_is_nowhere_in_logs_data_dir_snapshots_or_backups(self):
        node = harness.Node(args=["--log-level", "debug", "--snapshot-threshold", "4",
                                  "--snapshot-trailing", "2"])
        self.addCleanup(node.cleanup)
        self.nodes = [node]
        node.start()
        admin = node.admin()
        self.addCleanup(admin.close)
        token = node.admin_token()
        old = admin.create_account("acme")
        key = admin.create_account("acme")                   # rotated once
        cl = node.client(key)
        self.addCleanup(cl.close)
        # Use the keys: good requests, refused ones, and enough writes for
        # several snapshots.
        self.assertStatus(cl.post("/v1/account/acme", {"name": "ns"}), 204)
        for i in range(24):
            self.assertStatus(cl.put("/v1/account/acme/ns/s/properties/p%d" % i, str(i),
                                     headers={"X-Request-Id": "rid-%d" % i}), 204)
        self.assertStatus(cl.get("/v1/account/acme/ns/s/properties"), 200)
        self.assertStatus(cl.get("/v1/account/acme/ns/s/properties", key=old), 401)
        self.assertStatus(cl.get("/v1/account/acme/ns/s/properties", key=key + "0"), 401)
        backup = admin.get("/admin/v1/backup")
        self.assertEqual(backup.status, 200)
        # Wait until a snapshot file exists (the threshold is 4 entries).
        snaps = []
        for _ in range(100):
            snaps = [p for p in files_under(node.data_dir) if "snapshot" in os.path.basename(p)]
            if snaps:
                break
            time.sleep(0.05)
        self.assertTrue(snaps, "no snapshot in %s: %r" % (node.data_dir,
                                                         list(files_under(node.data_dir))))
        node.stop()

        secrets = {"new key": key.encode(), "revoked key": old.encode()}
        with open(node.log_path, "rb") as f:
            log = f.read()
        self.assertIn(b"route=", log)              # debug request lines were written
        for name, s in secrets.items():
            self.assertNotIn(s, log, "%s in the log" % name)
            self.assertNotIn(s, backup.body, "%s in the backup" % name)
        self.assertNotIn(token.encode(), log, "admin token in the log")
        # The hash is there, so bytes of the backup were really searched.
        self.assertIn(hashlib.sha256(key.encode()).digest(), backup.body)
        searched = 0
        for path in files_under(node.data_dir):
            with open(path, "rb") as f:
                data = f.read()
            searched += 1
            for name, s in secrets.items():
                self.assertNotIn(s, data, "%s in %s" % (name, path))
                self.assertNotIn(s.upper(), data, "%s in %s" % (name, path))
        self.assertGreater(searched, 2)


class ClusterAccess(harness.ClusterTestCase):

    def test_admin_routes_need_the_admin_token_on_every_node(self):
        c = self.start_cluster()
        admin_calls = [("GET", "/admin/v1/cluster", None),
                       ("GET", "/admin/v1/digest", None),
                       ("GET", "/admin/v1/backup", None),
                       ("PUT", "/admin/v1/accounts/acme/key", None),
                       ("POST", "/admin/v1/cluster/nodes",
                        {"id": 9, "raftAddress": "127.0.0.1:1",
                         "httpAddress": "127.0.0.1:2", "region": "z9"}),
                       ("DELETE", "/admin/v1/cluster/nodes/3", None),
                       ("POST", "/admin/v1/cluster/transfer", {})]
        creds = [("none", {}), ("wrong", {"Authorization": "Bearer wrong-" + c.token}),
                 ("no scheme", {"Authorization": c.token}),
                 ("api key", {"Authorization": "Bearer " + self.key}),
                 ("cluster secret", {"Authorization": "Bearer " + c.secret}),
                 ("token as api key", {"maven-api-key": c.token})]
        for x in c.nodes:
            cl = x.client()
            self.addCleanup(cl.close)
            for method, path, body in admin_calls:
                for name, hdrs in creds:
                    r = cl.req(method, path, body, headers=hdrs, key=None)
                    self.assertStatus(r, 401, "unauthorized")
        # Nothing changed: same members, same key, same leader.
        self.assertEqual(len(c.view(c.nodes[0])["nodes"]), 3)
        for x in c.nodes:
            r = self.client(x).get("/v1/account/acme", headers={"X-Context-Consistency": "stale"})
            self.assertEqual(r.status, 200, r)
        # With the token, every node answers.
        for x in c.nodes:
            self.assertEqual(c.admin(x).get("/admin/v1/digest").status, 200)

    def test_internal_routes_need_the_cluster_secret_and_forwarding_keeps_client_auth(self):
        c = self.start_cluster()
        leader = c.wait_leader()
        for x in c.nodes:
            cl = x.client()
            self.addCleanup(cl.close)
            for hdrs in ({}, {"X-Ctxd-Secret": "wrong-" + c.secret},
                         {"X-Ctxd-Secret": c.token},
                         {"Authorization": "Bearer " + c.token},
                         {"X-Ctxd-Secret": c.secret[:-1]}):
                h = dict(hdrs, **{"X-Ctxd-Method": "PUT",
                                  "X-Ctxd-Url": "/v1/account/acme/ns/s/properties/p"})
                r = cl.post("/internal/v1/forward", "1", headers=h, key=self.key)
                self.assertStatus(r, 401, "unauthorized")
        # With the secret but a wrong client key, the leader still refuses.
        cl = leader.client()
        self.addCleanup(cl.close)
        h = {"X-Ctxd-Secret": c.secret, "X-Ctxd-Method": "PUT",
             "X-Ctxd-Url": "/v1/account/acme/ns/s/properties/p"}
        r = cl.post("/internal/v1/forward", "1", headers=h, key="wrong")
        self.assertStatus(r, 401, "unauthorized")
        # With the secret and the key, the forwarded write is applied.
        r = cl.post("/internal/v1/forward", "1", headers=h, key=self.key)
        self.assertEqual(r.status, 204, r)
        # The read-index route answers the secret holder only.
        r = cl.get("/internal/v1/read-index", headers={"X-Ctxd-Secret": c.secret}, key=None)
        self.assertEqual(r.status, 200, r)
        # No write went through from the refused calls: only the one above.
        r = self.client(leader).get("/v1/account/acme/ns/s/properties")
        self.assertEqual(r.json(), {"p": 1})

    def test_a_key_rotation_takes_effect_on_every_node_once_applied(self):
        c = self.start_cluster()
        old = self.key
        for x in c.nodes:
            cl = x.client(old)
            self.addCleanup(cl.close)
            r = cl.get("/v1/account/acme", headers={"X-Context-Consistency": "stale"})
            self.assertEqual(r.status, 200, r)
        # Rotate through a follower (forwarded to the leader).
        leader = c.wait_leader()
        follower = c.followers(leader)[0]
        r = c.admin(follower).put("/admin/v1/accounts/acme/key", None)
        self.assertEqual(r.status, 201, r)
        new = r.json()["apiKey"]
        self.assertNotEqual(new, old)
        c.wait_applied(int(r.headers["x-context-index"]))
        for x in c.nodes:
            for level in ("stale", "leader", "linearizable"):
                h = {"X-Context-Consistency": level}
                cl_old = x.client(old)
                cl_new = x.client(new)
                try:
                    r = cl_old.get("/v1/account/acme", headers=h)
                    self.assertStatus(r, 401, "unauthorized")
                    r = cl_old.put("/v1/account/acme/ns/s/properties/p", "1")
                    self.assertStatus(r, 401, "unauthorized")
                    r = cl_new.get("/v1/account/acme", headers=h)
                    self.assertEqual(r.status, 200, (x.node_id, level, r))
                finally:
                    cl_old.close()
                    cl_new.close()
            cl = x.client(new)
            self.addCleanup(cl.close)
            r = cl.put("/v1/account/acme/ns/s/properties/n%d" % x.node_id, "1")
            self.assertEqual(r.status, 204, (x.node_id, r))


if __name__ == "__main__":
    harness.main()
