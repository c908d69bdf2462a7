"""End-to-end: GET /admin/v1/backup and `ctxd --restore FILE`.

A backup is a SQLite file of the state at one applied index (X-Context-Index)
that the sqlite3 shell opens; restoring it starts a new cluster (node 1 with
--restore, then a second node joins empty) that holds exactly the data of the
backup — every session, namespace, TTL and API key (keys are stored hashed,
so the original key works) — and none of the writes made after it; its log
continues after the backup's index. Writes keep succeeding while a backup is
taken and streamed. --restore refuses a data dir with state, a file that is
not a backup, and --join."""

import os
import shutil
import sqlite3
import subprocess
import threading
import time

import harness
from harness import Cluster, Node, NodeTestCase

NS = "/v1/account/acme/ns1"
SESSIONS = ["s%d" % i for i in range(6)]


def write_file(path, data):
    with open(path, "wb") as f:
        f.write(data)


class Backup(NodeTestCase):

    def setUp(self):
        self.nodes = []
        self.clusters = []

    def tearDown(self):
        for c in self.clusters:
            c.cleanup()
        for n in self.nodes:
            n.cleanup()

    def start_node(self, args=None):
        n = Node(args=args)
        self.nodes.append(n)
        n.start()
        return n

    def seed(self, node):
        """Two accounts, a namespace with a TTL, sessions with properties and
        one session TTL. Returns (admin, acme key, beta key)."""
        admin = node.admin()
        key = admin.create_account("acme")
        key_b = admin.create_account("beta")
        c = node.client(key)
        self.assertStatus(c.post("/v1/account/acme?ttlSecond=3600",
                                 {"name": "ns1"}), 204)
        self.assertStatus(c.post("/v1/account/acme", {"name": "ns2"}), 204)
        for i, sid in enumerate(SESSIONS):
            self.assertStatus(c.patch(NS + "/%s/properties" % sid,
                                      {"n": i, "text": "v\u00e9%d" % i,
                                       "exact": 1.1, "big": 12345678901234567890,
                                       "nested": {"a": [1, 2, {"b": None}]}}),
                              204)
        self.assertStatus(c.post("/v1/account/acme/namespace/ns1/session"
                                 "?ttlSecond=600", {"sessionId": "s0"}), 204)
        self.assertStatus(c.put(NS + "/properties/own", "\"namespace prop\""), 204)
        cb = node.client(key_b)
        self.assertStatus(cb.patch("/v1/account/beta/nsb/x/properties",
                                   {"k": "v"}), 204)
        return admin, key, key_b

    def state_of(self, node, key, key_b):
        """Everything a client can read, as comparable values."""
        c = node.client(key)
        out = {}
        r = c.get("/v1/account/acme")
        self.assertStatus(r, 200)
        out["namespaces"] = [(d["name"], d.get("ttlSecond")) for d in r.json()]
        r = c.get(NS + "/session-ids")
        self.assertStatus(r, 200)
        out["ids"] = r.json()
        for sid in out["ids"]:
            r = c.get(NS + "/%s/properties" % sid)
            self.assertStatus(r, 200)
            out["s:" + sid] = (r.body, r.headers.get("etag"))
        r = c.get("/v1/account/acme/namespace/ns1/session")
        self.assertStatus(r, 200)
        out["ttls"] = [(d["sessionId"], d["ttlSecond"]) for d in r.json()]
        r = node.client(key_b).get("/v1/account/beta/nsb/x/properties")
        self.assertStatus(r, 200)
        out["beta"] = r.body
        return out

    def take_backup(self, node, path):
        admin = node.admin()
        try:
            r = admin.get("/admin/v1/backup")
        finally:
            admin.close()
        self.assertStatus(r, 200)
        self.assertEqual(r.headers.get("content-type"), "application/vnd.sqlite3")
        self.assertTrue(r.body.startswith(b"SQLite format 3\x00"), r.body[:32])
        self.assertEqual(int(r.headers["content-length"]), len(r.body))
        write_file(path, r.body)
        return int(r.headers["x-context-index"])

    # -------------------------------------------------------------------

    def test_the_backup_file_opens_with_sqlite3_and_has_the_tables(self):
        n = self.start_node()
        self.seed(n)
        path = os.path.join(n.tmp, "backup.db")
        index = self.take_backup(n, path)
        self.assertGreater(index, 0)
        props = 6 * 5 + 1 + 1
        shell = shutil.which("sqlite3")
        if shell is not None:
            out = subprocess.run([shell, path, "select count(*) from properties"],
                                 capture_output=True, timeout=30, check=True)
            self.assertEqual(out.stdout.decode().strip(), str(props))
        db = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
        try:
            tables = {r[0] for r in db.execute(
                "select name from sqlite_schema where type = 'table'")}
            self.assertLessEqual({"accounts", "namespaces", "sessions",
                                  "properties", "requests", "nodes", "meta"},
                                 tables)
            self.assertEqual(db.execute("pragma integrity_check").fetchone()[0], "ok")
            self.assertEqual(db.execute("select count(*) from properties")
                             .fetchone()[0], props)
            self.assertEqual(db.execute("select v from meta where k = 'applied_index'")
                             .fetchone(), (index,))
        finally:
            db.close()
        n.stop()

    def test_a_restored_cluster_has_exactly_the_data_of_the_backup(self):
        src = self.start_node()
        admin, key, key_b = self.seed(src)
        before = self.state_of(src, key, key_b)
        path = os.path.join(src.tmp, "backup.db")
        index = self.take_backup(src, path)

        # Later writes, which the restored cluster must not have.
        c = src.client(key)
        self.assertStatus(c.patch(NS + "/late/properties", {"late": True}), 204)
        self.assertStatus(c.patch(NS + "/s1/properties", {"n": "changed"}), 204)
        self.assertStatus(c.delete(NS + "/s2/properties/text"), 204)
        self.assertStatus(c.post("/v1/account/acme", {"name": "ns3"}), 204)
        new_key_b = admin.create_account("beta")   # rotation after the backup
        src.stop()

        cl = Cluster(n=1)
        self.clusters.append(cl)
        n1 = cl.nodes[0]
        self.nodes.append(n1)
        n1.args = n1.args + ["--restore", path]
        n1.start()
        self.assertIn("start=restore", n1.log_text())
        restored = self.state_of(n1, key, key_b)
        self.assertEqual(restored, before)
        self.assertStatus(n1.client(new_key_b).get(
            "/v1/account/beta/nsb/x/properties"), 401)

        # The log continues after the backup's index.
        r = n1.client(key).patch(NS + "/after/properties", {"a": 1})
        self.assertStatus(r, 204)
        self.assertGreater(int(r.headers["x-context-index"]), index)
        self.assertStatus(n1.client(key).delete(NS + "/after/properties"), 204)

        # A second node joins empty and gets the same data.
        n2 = cl.add_joining(2, join_via=n1)
        self.nodes.append(n2)
        cl.wait_registered([n1, n2])
        cl.wait_converged([n1, n2])
        self.assertEqual(self.state_of(n2, key, key_b), before)
        self.assertStatus(n2.client(new_key_b).get(
            "/v1/account/beta/nsb/x/properties"), 401)

        # A restart of the first node (without --restore) keeps it all.
        n1.args = [a for a in n1.args if a not in ("--restore", path)]
        n1.restart()
        self.assertIn("start=restart", n1.log_text())
        cl.wait_leader()
        self.assertEqual(self.state_of(n1, key, key_b), before)
        cl.wait_converged([n1, n2])
        n2.stop()
        n1.stop()

    def test_writes_keep_succeeding_while_a_backup_streams(self):
        n = self.start_node()
        admin = n.admin()
        key = admin.create_account("acme")
        admin.close()
        c = n.client(key)
        big = "x" * 20000
        for i in range(40):     # about 24 MB of state
            body = {"p%d" % j: big for j in range(30)}
            self.assertStatus(c.patch(NS + "/big%d/properties" % i, body), 204)

        stop = threading.Event()
        results = []

        def writer():
            w = n.client(key)
            i = 0
            while not stop.is_set():
                t0 = time.monotonic()
                r = w.patch(NS + "/w/properties", {"i": i})
                results.append((r.status, time.monotonic() - t0))
                i += 1
            w.close()

        t = threading.Thread(target=writer)
        t.start()
        try:
            time.sleep(0.2)
            for k in range(3):
                path = os.path.join(n.tmp, "b%d.db" % k)
                index = self.take_backup(n, path)
                db = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
                try:
                    self.assertEqual(db.execute("pragma integrity_check")
                                     .fetchone()[0], "ok")
                    self.assertEqual(db.execute(
                        "select v from meta where k = 'applied_index'").fetchone(),
                        (index,))
                    self.assertGreaterEqual(db.execute(
                        "select count(*) from properties").fetchone()[0], 40 * 30)
                finally:
                    db.close()
            time.sleep(0.2)
        finally:
            stop.set()
            t.join(30)
        self.assertGreater(len(results), 10)
        self.assertEqual({s for s, _ in results}, {204}, results[:20])
        self.assertLess(max(d for _, d in results), 5.0)
        n.stop()

    def test_restore_is_refused_into_a_data_dir_with_state(self):
        src = self.start_node()
        self.seed(src)
        path = os.path.join(src.tmp, "backup.db")
        self.take_backup(src, path)
        src.stop()
        # The source's own data dir holds Raft state.
        src.spawn(src.base_args() + ["--restore", path])
        self.assertNotEqual(src.wait_exit(), 0)
        self.assertIn("needs an empty data dir", src.log_text())

    def test_restore_refuses_a_file_that_is_not_a_backup_and_join(self):
        n = Node()
        self.nodes.append(n)
        os.makedirs(n.tmp, exist_ok=True)
        bad = os.path.join(n.tmp, "bad.db")
        write_file(bad, b"SQLite format 3\x00" + b"\x00" * 5000)
        n.spawn(n.base_args() + ["--restore", bad])
        self.assertNotEqual(n.wait_exit(), 0)
        self.assertIn("not a valid ctxd backup", n.log_text())
        other = os.path.join(n.tmp, "other.db")
        db = sqlite3.connect(other)
        db.execute("create table t(x)")
        db.commit()
        db.close()
        n.spawn(n.base_args() + ["--restore", other])
        self.assertNotEqual(n.wait_exit(), 0)
        n.spawn(n.base_args() + ["--restore", bad, "--join", "127.0.0.1:1",
                                 "--cluster-secret-file", bad])
        self.assertNotEqual(n.wait_exit(), 0)
        self.assertIn("cannot be used with --join", n.log_text())
        self.assertFalse(os.path.exists(os.path.join(n.data_dir, "raft"))
                         and os.listdir(os.path.join(n.data_dir, "raft")))


if __name__ == "__main__":
    harness.main()
