"""End-to-end: a 3-node region cluster losing nodes.

kill -9 of the leader under a stream of writes (election, resumption, no
acknowledged write lost, the old leader catches up), no quorum (503 with
Retry-After, /readyz 503), exactly-once retries across a failover, and a node
that was down across snapshots catching up by snapshot. Each test starts its
own cluster; after each one every running node must reach the same digest at
the same index (harness.ClusterTestCase)."""

import sys
import threading
import time

import harness
from harness import ClusterTestCase

NS = "/v1/account/acme/ns1"
RESUME_BUDGET = 8.0      # seconds from kill -9 of the leader to a new 204
RETRY_BUDGET = 20.0      # seconds to retry a write across a failover


class Writer(threading.Thread):
    """Writes PUT NS/s{tid}/properties/k{i} = i to one node until stopped;
    records each acknowledged i with the times the request was sent and its
    204 received."""

    def __init__(self, tid, node, key):
        super().__init__(daemon=True)
        self.tid = tid
        self.node = node
        self.key = key
        self.stop = threading.Event()
        self.acked = []          # (i, monotonic send time, monotonic 204 time)
        self.other = {}          # status or exception name -> count

    def run(self):
        cl = harness.Client(self.node.http_port, api_key=self.key, timeout=8.0)
        i = 0
        try:
            for _ in range(100000):
                if self.stop.is_set():
                    break
                i += 1
                sent = time.monotonic()
                try:
                    r = cl.put(NS + "/s%d/properties/k%d" % (self.tid, i), str(i))
                    st = r.status
                except (OSError, harness.http.client.HTTPException) as e:
                    cl.close()
                    st = type(e).__name__
                if st == 204:
                    self.acked.append((i, sent, time.monotonic()))
                else:
                    self.other[st] = self.other.get(st, 0) + 1
                    time.sleep(0.05)
        finally:
            cl.close()


class ClusterFailover(ClusterTestCase):

    def test_killing_the_leader_under_writes_loses_no_acknowledged_write(self):
        c = self.start_cluster(extra=["--write-timeout-ms", "3000"])
        old = c.wait_leader()
        writers = [Writer(t, c.nodes[t % 3], self.key) for t in range(6)]
        for w in writers:
            w.start()
        try:
            time.sleep(1.5)
            self.assertTrue(all(w.acked for w in writers),
                            "a writer got no 204 before the kill: %r"
                            % [(w.tid, w.other) for w in writers])
            killed_at = time.monotonic()
            old.kill9()
            survivors = [x for x in c.nodes if x is not old]
            resumed = None
            for _ in range(int(RESUME_BUDGET / 0.05) + 1):
                # A write sent after the kill and acknowledged by a survivor.
                late = [t for w in writers if w.node is not old
                        for _, sent, t in w.acked if sent > killed_at]
                if late:
                    resumed = min(late) - killed_at
                    break
                if time.monotonic() - killed_at > RESUME_BUDGET:
                    break
                time.sleep(0.05)
            self.assertIsNotNone(resumed, "no write acknowledged on the survivors within "
                                 "%.0f s of the kill: %r" % (RESUME_BUDGET,
                                                            [(w.tid, w.other) for w in writers]))
            time.sleep(1.0)
        finally:
            for w in writers:
                w.stop.set()
            for w in writers:
                w.join(15)
        sys.stderr.write("\n  writes resumed %.2f s after kill -9 of the leader; acked %d\n"
                         % (resumed, sum(len(w.acked) for w in writers)))
        new = c.wait_leader(among=survivors)
        self.assertIsNot(new, old)
        c.wait_converged(survivors)
        for x in survivors:
            cl = self.client(x)
            for w in writers:
                r = cl.get(NS + "/s%d/properties?consistency=stale" % w.tid)
                self.assertStatus(r, 200)
                doc = r.json()
                for i, _, _ in w.acked:
                    self.assertEqual(doc.get("k%d" % i), i,
                                     "node %d lost acknowledged write s%d/k%d"
                                     % (x.node_id, w.tid, i))
        old.start()
        c.wait_leader()
        c.wait_converged()

    def test_without_a_quorum_writes_and_reads_answer_503_with_retry_after(self):
        c = self.start_cluster(extra=["--write-timeout-ms", "2000", "--read-timeout-ms", "2000"])
        leader = c.wait_leader()
        survivor = c.followers(leader)[0]
        cl = self.client(survivor, timeout=10.0)
        r = cl.put(NS + "/s1/properties/p", "1")
        self.assertStatus(r, 204)
        # The survivor must hold the write before the others go.
        c.wait_applied(int(r.headers["x-context-index"]), [survivor])
        dead = [x for x in c.nodes if x is not survivor]
        for x in dead:
            x.kill9()
        deadline = time.monotonic() + 10.0
        r = None
        for _ in range(200):
            r = cl.get("/readyz")
            if r.status == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertStatus(r, 503)
        for method, path, body in (("PUT", NS + "/s1/properties/p", "2"),
                                   ("PATCH", NS + "/s1/properties", {"q": 1}),
                                   ("GET", NS + "/s1/properties/p", None),
                                   ("GET", NS + "/s1/properties?consistency=leader", None)):
            t = time.monotonic()
            r = cl.req(method, path, body)
            took = time.monotonic() - t
            self.assertStatus(r, 503, "unavailable")
            self.assertEqual(r.headers.get("retry-after"), "1", "%s %s: %r" % (method, path, r))
            self.assertLess(took, 2.5, "%s %s took %.1f s" % (method, path, took))
        r = cl.get(NS + "/s1/properties/p?consistency=stale")
        self.assertStatus(r, 200)
        self.assertEqual(r.body, b"1")
        for x in dead:
            x.start(wait=False)
        for x in dead:
            x.wait_ready()
        c.wait_leader()
        self.assertStatus(cl.put(NS + "/s1/properties/p", "3"), 204)
        self.assertEqual(self.client(dead[0]).get(NS + "/s1/properties/p").body, b"3")

    def test_a_retried_request_id_is_applied_once_across_a_failover(self):
        c = self.start_cluster(extra=["--write-timeout-ms", "3000"])
        leader = c.wait_leader()
        other = c.followers(leader)[0]
        path = NS + "/s1/properties/once"
        rid = {"X-REQUEST-ID": "e2e-failover-rid-1"}
        raw = leader.raw()
        try:
            raw.send(harness.request_bytes("PUT", path, '"first"', headers=rid,
                                           api_key=self.key))
            leader.kill9()
        finally:
            raw.close()
        cl = self.client(other, timeout=10.0)
        deadline = time.monotonic() + RETRY_BUDGET
        seen = []
        r = None
        for _ in range(1000):
            r = cl.put(path, '"first"', headers=rid)
            if r.status == 204:
                break
            seen.append(r.status)
            self.assertIn(r.status, (503, 504), "retry answered %r" % (r,))
            self.assertTrue(time.monotonic() < deadline,
                            "no 204 within %.0f s: %r" % (RETRY_BUDGET, seen))
            time.sleep(0.2)
        self.assertStatus(r, 204)
        idx = r.headers.get("x-context-index")
        self.assertTrue(idx and idx.isdigit(), "%r" % (r,))
        third = [x for x in c.nodes if x is not leader and x is not other][0]
        r2 = self.client(third).put(path, '"first"', headers=rid)
        self.assertStatus(r2, 204)
        self.assertEqual(r2.headers.get("x-context-index"), idx, "%r" % (r2,))
        r3 = cl.put(path, '"second"', headers=rid)
        self.assertStatus(r3, 204)
        self.assertEqual(r3.headers.get("x-context-index"), idx, "%r" % (r3,))
        r = self.client(third).get(path)
        self.assertStatus(r, 200)
        self.assertEqual(r.body, b'"first"')
        leader.start()
        c.wait_converged()
        self.assertEqual(self.client(leader).get(path + "?consistency=stale").body,
                         b'"first"')

    def test_a_node_down_across_snapshots_catches_up_by_snapshot(self):
        c = self.start_cluster(extra=["--snapshot-threshold", "32", "--snapshot-trailing", "8"])
        leader = c.wait_leader()
        lagger = c.followers(leader)[-1]
        lagger.stop()
        live = [x for x in c.nodes if x is not lagger]
        clients = [self.client(x) for x in live]
        for i in range(300):
            r = clients[i % 2].put(NS + "/s%d/properties/k%d" % (i % 7, i), str(i))
            self.assertStatus(r, 204)
        marker = len(lagger.log_text())
        lagger.start()
        index, _ = c.wait_converged(budget=20.0)
        self.assertGreaterEqual(index, 300)
        cl = self.client(lagger)
        for i in (0, 150, 299):
            r = cl.get(NS + "/s%d/properties/k%d?consistency=stale" % (i % 7, i))
            self.assertStatus(r, 200)
            self.assertEqual(r.body, str(i).encode())
        if "snapshot" not in lagger.log_text()[marker:].lower():
            sys.stderr.write("\n  note: node %d's log does not mention a snapshot after "
                             "restart\n" % lagger.node_id)


if __name__ == "__main__":
    harness.main()
