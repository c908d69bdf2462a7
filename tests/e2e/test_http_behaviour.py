"""End-to-end: HTTP/1.1 connection behaviour of one node.

Keep-alive, pipelining (answers in order), chunked request bodies, the
request timeout for a client that stalls mid-request, the idle timeout, and a
client that pipelines without ever reading (the node keeps serving others
with bounded memory). The node runs with --request-timeout-ms 500 and
--idle-timeout-ms 1500 so that the timeouts can be observed quickly."""

import socket
import threading
import time

import harness
from harness import NodeTestCase, request_bytes

REQUEST_TIMEOUT_MS = 500
IDLE_TIMEOUT_MS = 1500
RSS_LIMIT_KB = 300 * 1024


class HttpBehaviour(harness.SharedNodeTestCase):
    node_args = ["--request-timeout-ms", str(REQUEST_TIMEOUT_MS),
                 "--idle-timeout-ms", str(IDLE_TIMEOUT_MS)]
    # A small ASan quarantine, so that VmRSS reflects live memory (freed
    # blocks otherwise stay resident, up to 256 MB by default).
    node_env = {"ASAN_OPTIONS": "detect_leaks=1:quarantine_size_mb=32"}
    account = "http"

    def setUp(self):
        self.raws = []
        self.addCleanup(self.close_raws)

    def close_raws(self):
        for r in self.raws:
            r.close()

    def raw(self, timeout=5.0):
        r = self.node.raw(timeout=timeout)
        self.raws.append(r)
        return r

    def path(self, sid, prop=None):
        p = "/v1/account/http/ns/%s/properties" % sid
        return p + ("/" + prop if prop else "")

    def served(self):
        """A fresh client is answered (and quickly)."""
        c = self.node.client(self.key, timeout=5)
        try:
            t0 = time.monotonic()
            r = c.get("/healthz")
            self.assertEqual(r.status, 200)
            r = c.put(self.path("probe", "p"), 1)
            self.assertEqual(r.status, 204, "%r" % (r,))
            return time.monotonic() - t0
        finally:
            c.close()

    def test_many_requests_are_served_on_one_kept_alive_connection(self):
        raw = self.raw()
        for i in range(200):
            if i % 2 == 0:
                raw.send(request_bytes("PUT", self.path("ka", "p"), i, api_key=self.key))
                self.assertEqual(raw.response().status, 204)
            else:
                raw.send(request_bytes("GET", self.path("ka", "p"), api_key=self.key))
                r = raw.response()
                self.assertEqual((r.status, r.body), (200, str(i - 1).encode()))
        self.assertFalse(raw.eof)
        # The same with http.client: the socket is never replaced.
        c = self.node.client(self.key)
        try:
            c.get("/healthz")
            sock = c.conn.sock
            for _ in range(100):
                self.assertEqual(c.get(self.path("ka", "p")).status, 200)
                self.assertIs(c.conn.sock, sock)
        finally:
            c.close()

    def pipeline(self, n):
        raw = self.raw()
        reqs = b""
        for i in range(n):
            reqs += request_bytes("PUT", self.path("pl%d" % n, "p%d" % i), {"i": i},
                                  api_key=self.key)
        for i in range(n):
            reqs += request_bytes("GET", self.path("pl%d" % n, "p%d" % i), api_key=self.key)
        reqs += request_bytes("GET", "/nope")
        raw.send(reqs)
        rs = raw.responses(2 * n + 1)
        idx = []
        for i in range(n):
            self.assertEqual(rs[i].status, 204, "%r" % (rs[i],))
            idx.append(int(rs[i].headers["x-context-index"]))
        # Writes queued in one loop turn share one Raft entry (consensus.h),
        # so pipelined writes may share an index; it never goes backwards.
        self.assertEqual(idx, sorted(idx))
        for i in range(n):
            r = rs[n + i]
            self.assertEqual((r.status, r.json()), (200, {"i": i}))
        self.assertEqual(rs[-1].status, 404)
        # The connection still works afterwards.
        raw.send(request_bytes("GET", "/healthz"))
        self.assertEqual(raw.response().status, 200)

    def test_two_pipelined_requests_are_answered_in_order(self):
        self.pipeline(1)
        raw = self.raw()
        raw.send(request_bytes("GET", "/healthz") + request_bytes("GET", "/nope"))
        a, b = raw.responses(2)
        self.assertEqual((a.status, b.status), (200, 404))

    def test_ten_pipelined_requests_are_answered_in_order(self):
        self.pipeline(5)
        self.pipeline(10)

    def test_pipelined_requests_sent_byte_by_byte_are_answered(self):
        raw = self.raw()
        data = (request_bytes("PUT", self.path("bb", "p"), [1, "two"], api_key=self.key)
                + request_bytes("GET", self.path("bb", "p"), api_key=self.key))
        for i in range(len(data)):
            raw.send(data[i:i + 1])
        a, b = raw.responses(2)
        self.assertEqual(a.status, 204)
        self.assertEqual((b.status, b.body), (200, b'[1, "two"]'))

    def test_chunked_request_body_patch_works(self):
        raw = self.raw()
        body = b'{"alpha": "one", "beta": [1, 2, 3], "gamma": {"x": null}}'
        chunks = [body[0:5], body[5:6], body[6:30], body[30:]]
        msg = ("PATCH %s HTTP/1.1\r\nHost: x\r\nmaven-api-key: %s\r\n"
               "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
               % (self.path("chunked"), self.key)).encode()
        for ch in chunks:
            msg += b"%x\r\n" % len(ch) + ch + b"\r\n"
        msg += b"0\r\n\r\n"
        raw.send(msg[:50])
        time.sleep(0.05)
        raw.send(msg[50:])
        r = raw.response()
        self.assertEqual(r.status, 204, "%r" % (r,))
        raw.send(request_bytes("GET", self.path("chunked"), api_key=self.key))
        r = raw.response()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json(), {"alpha": "one", "beta": [1, 2, 3], "gamma": {"x": None}})
        # http.client's own chunked encoding too.
        c = self.node.client(self.key)
        try:
            r = c.req("PUT", self.path("chunked", "delta"), iter([b'{"k"', b': [true', b"]}"]))
            self.assertEqual(r.status, 204, "%r" % (r,))
            self.assertEqual(c.get(self.path("chunked", "delta")).body, b'{"k": [true]}')
        finally:
            c.close()

    def test_client_that_stalls_mid_request_is_disconnected_after_the_request_timeout(self):
        stalled_head = self.raw(timeout=10)
        stalled_head.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        stalled_body = self.raw(timeout=10)
        stalled_body.send(("PATCH %s HTTP/1.1\r\nHost: x\r\nmaven-api-key: %s\r\n"
                           "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\""
                           % (self.path("slow"), self.key)).encode())
        t0 = time.monotonic()
        # Meanwhile other clients are served promptly.
        for _ in range(5):
            self.assertLess(self.served(), 1.0)
        self.assertTrue(stalled_head.wait_closed(5.0), "stalled header never disconnected")
        self.assertTrue(stalled_body.wait_closed(5.0), "stalled body never disconnected")
        elapsed = time.monotonic() - t0
        self.assertGreater(elapsed, REQUEST_TIMEOUT_MS / 1000.0 * 0.8)
        self.assertLess(elapsed, 5.0)
        # If anything was sent before closing, it is a complete error response.
        for s in (stalled_head, stalled_body):
            if s.buf:
                self.assertRegex(s.buf, rb"^HTTP/1\.1 (408|400) ")
        c = self.node.client(self.key)
        try:
            self.assertEqual(c.get(self.path("slow", "a")).status, 404)
        finally:
            c.close()

    def test_idle_connection_is_closed_after_the_idle_timeout(self):
        raw = self.raw(timeout=10)
        raw.send(request_bytes("GET", "/healthz"))
        self.assertEqual(raw.response().status, 200)
        t0 = time.monotonic()
        # Still open well before the idle timeout.
        time.sleep(IDLE_TIMEOUT_MS / 1000.0 / 3)
        raw.send(request_bytes("GET", "/healthz"))
        self.assertEqual(raw.response().status, 200)
        t0 = time.monotonic()
        self.assertTrue(raw.wait_closed(IDLE_TIMEOUT_MS / 1000.0 + 5.0),
                        "idle connection never closed")
        elapsed = time.monotonic() - t0
        self.assertGreater(elapsed, IDLE_TIMEOUT_MS / 1000.0 * 0.8)
        self.assertEqual(raw.buf, b"", "bytes sent on an idle close: %r" % raw.buf[:200])

    def test_connection_close_is_honoured(self):
        raw = self.raw()
        raw.send(request_bytes("GET", "/healthz", close=True))
        self.assertEqual(raw.response().status, 200)
        self.assertTrue(raw.wait_closed(3.0))
        raw = self.raw()
        raw.send(b"GET /healthz HTTP/1.0\r\n\r\n")
        self.assertEqual(raw.response().status, 200)
        self.assertTrue(raw.wait_closed(3.0))

    def test_client_that_pipelines_and_never_reads_does_not_starve_others(self):
        big = '"' + "z" * 200000 + '"'
        c = self.node.client(self.key)
        self.assertEqual(c.put(self.path("flood", "big"), big).status, 204)
        c.close()
        base_rss = self.node.rss_kb()
        flood = socket.create_connection(("127.0.0.1", self.node.http_port), timeout=5)
        self.addCleanup(flood.close)
        flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        flood.setblocking(False)
        one = request_bytes("GET", self.path("flood", "big"), api_key=self.key)
        sent = 0
        stop = threading.Event()
        max_rss = [base_rss]
        latencies = []

        def watch():
            for _ in range(400):
                if stop.is_set():
                    return
                max_rss[0] = max(max_rss[0], self.node.rss_kb())
                time.sleep(0.05)

        w = threading.Thread(target=watch)
        w.start()
        try:
            deadline = time.monotonic() + 4.0
            blocked_since = None
            for _ in range(1000000):
                now = time.monotonic()
                if now > deadline:
                    break
                try:
                    n = flood.send(one * 20)
                    sent += n
                    blocked_since = None
                except (BlockingIOError, InterruptedError):
                    if blocked_since is None:
                        blocked_since = now
                    elif now - blocked_since > 1.0:
                        break       # the node stopped reading from us: good
                    time.sleep(0.01)
                except (ConnectionResetError, BrokenPipeError):
                    break           # the node gave up on us: also fine
            for _ in range(10):
                latencies.append(self.served())
        finally:
            stop.set()
            w.join(timeout=30)
        max_rss[0] = max(max_rss[0], self.node.rss_kb())
        self.assertGreater(sent, len(one) * 10)
        self.assertLess(max(latencies), 2.0, "others served slowly: %r" % latencies)
        self.assertLess(max_rss[0], RSS_LIMIT_KB,
                        "VmRSS %d KiB (base %d KiB) after %d bytes of pipelined GETs"
                        % (max_rss[0], base_rss, sent))
        flood.close()
        self.assertLess(self.served(), 2.0)

    def test_many_connections_at_once_are_served(self):
        raws = [self.raw() for _ in range(100)]
        for r in raws:
            r.send(request_bytes("GET", "/healthz"))
        for r in raws:
            self.assertEqual(r.response().status, 200)


class ConnectionLimit(NodeTestCase):
    nodes = []

    def test_connections_over_max_connections_are_refused_and_others_served(self):
        node = harness.Node(args=["--max-connections", "4"])
        self.nodes = [node]
        self.addCleanup(node.cleanup)
        node.start()
        held = []
        self.addCleanup(lambda: [r.close() for r in held])
        for _ in range(4):
            r = node.raw()
            held.append(r)
            r.send(request_bytes("GET", "/healthz"))
            self.assertEqual(r.response().status, 200)
        extra = node.raw()
        held.append(extra)
        try:
            extra.send(request_bytes("GET", "/healthz"))
        except OSError:
            pass
        self.assertTrue(extra.wait_closed(3.0), "connection over the limit kept open")
        if extra.buf:
            self.assertRegex(extra.buf, rb"^HTTP/1\.1 (429|503) ")
        # The held connections still work, and a freed slot can be reused.
        for r in held[:4]:
            r.send(request_bytes("GET", "/healthz"))
            self.assertEqual(r.response().status, 200)
        held[0].close()
        self.assertTrue(harness.wait_served(node),
                        "a freed connection slot was not reusable")
        node.stop()


if __name__ == "__main__":
    harness.main()
