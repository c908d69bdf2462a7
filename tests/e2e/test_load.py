"""End-to-end: ctxd_load, the load generator of cluster/bench --compare
(tests/bench/load.c).

Its figures are only worth something if it counts right, so it is run
against a real node and against small servers written here that answer
slowly, in pieces, with chunked bodies, with errors, with garbage, by
closing the connection, or never. Every run is bounded by -n (requests)
and -d (seconds), and every fake server by a socket timeout."""

import os
import re
import socket
import subprocess
import sys
import threading
import time

import harness
from harness import Node, NodeTestCase

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "cluster"))
import bench_lib  # noqa: E402

RESULT = re.compile(r"^RESULT (.*)$", re.M)
ERRORS = re.compile(r"^errors: (.*)$", re.M)


def load_path():
    return os.path.join(os.path.dirname(os.path.abspath(harness.ctxd_path())), "ctxd_load")


# Requests and request files are made by the bench's own writers, so these
# tests cover what cluster/bench hands ctxd_load.
request = bench_lib.http_request
write_file = bench_lib.write_requests


def run(args, budget=60.0):
    """Run ctxd_load; return (exit status, {RESULT fields}, {error kinds},
    stdout+stderr)."""
    p = subprocess.run([load_path()] + [str(a) for a in args], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=budget)
    out = p.stdout + p.stderr
    res, errs = {}, {}
    m = RESULT.search(p.stdout)
    if m:
        res = {k: float(v) for k, v in (x.split("=") for x in m.group(1).split())}
    m = ERRORS.search(p.stderr)
    if m:
        errs = {k: int(v) for k, v in (x.split("=") for x in m.group(1).split())}
    return p.returncode, res, errs, out


class FakeServer:
    """A TCP server on 127.0.0.1 whose handler(conn, request bytes) answers
    each request read (a request is everything up to a blank line, with no
    body). Threads end when the client closes or after the socket timeout."""

    def __init__(self, handler):
        self.handler = handler
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = False
        self.accepted = 0
        self.threads = []
        self.thread = threading.Thread(target=self.accept_loop, daemon=True)
        self.thread.start()

    def accept_loop(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted += 1
            t = threading.Thread(target=self.serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def serve(self, conn):
        conn.settimeout(10.0)
        buf = b""
        try:
            while not self.stop:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                req, buf = buf.split(b"\r\n\r\n", 1)
                if self.handler(conn, req) is False:
                    return
        except OSError:
            return
        finally:
            conn.close()

    def close(self):
        self.stop = True
        self.sock.close()
        self.thread.join(5)
        for t in self.threads:
            t.join(12)


def ok_response(body=b"{}", extra=b""):
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + extra +
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


class TestLoadAgainstANode(NodeTestCase):
    """Against a real ctxd node: what it counts is what the node served."""

    @classmethod
    def setUpClass(cls):
        cls.node = Node()
        cls.nodes = [cls.node]
        try:
            cls.node.start()
            cls.key = harness.create_account(cls.node, "acme")
            c = cls.node.client(api_key=cls.key)
            for s in range(20):
                r = c.put("/v1/account/acme/ns1/s%d/properties/p" % s, '"v%d"' % s)
                assert r.status in (200, 201, 204), r
            c.close()
        except BaseException:
            cls.node.cleanup()
            raise
        cls.dir = cls.node.tmp

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()
        cls.node.cleanup()

    def reads(self):
        c = self.node.client()
        r = c.get("/metrics")
        c.close()
        self.assertEqual(r.status, 200)
        m = re.search(r"^ctxd_property_reads_total (\d+)$", r.text(), re.M)
        self.assertIsNotNone(m)
        return int(m.group(1))

    def assertPercentilesOrdered(self, res, out):
        """0 < p50 <= p99 <= p99.9 <= the slowest request."""
        self.assertTrue(0 < res["p50_ms"] <= res["p99_ms"] <= res["p999_ms"]
                        <= res["max_ms"], out)

    def test_it_counts_exactly_the_requests_the_node_served(self):
        port = self.node.http_port
        f = write_file(os.path.join(self.dir, "gets"), [
            request(port, "GET", "/v1/account/acme/ns1/s%d/properties/p?consistency=stale" % s,
                    {"maven-api-key": self.key}) for s in range(20)])
        before = self.reads()
        rc, res, errs, out = run(["-n", 3000, "-c", 8, "-t", 2, "-d", 60, f, "127.0.0.1", port])
        self.assertEqual(rc, 0, out)
        self.assertEqual(res["requests"], 3000, out)
        self.assertEqual(res["errors"], 0, out)
        self.assertEqual(sum(errs.values()), 0, out)
        self.assertEqual(self.reads() - before, 3000)
        self.assertGreater(res["rps"], 0)
        self.assertPercentilesOrdered(res, out)

    def test_no_percentile_is_above_the_slowest_request(self):
        # With one request every percentile falls in the bucket of the one
        # latency; that bucket's middle lies above it about half the time,
        # so 24 runs catch an unclamped percentile but for 1 in 2^24.
        port = self.node.http_port
        f = write_file(os.path.join(self.dir, "one"), [
            request(port, "GET", "/v1/account/acme/ns1/s1/properties/p?consistency=stale",
                    {"maven-api-key": self.key})])
        for _ in range(24):
            rc, res, _, out = run(["-n", 1, "-c", 1, "-t", 1, "-d", 60, f, "127.0.0.1", port])
            self.assertEqual((rc, res["requests"], res["errors"]), (0, 1, 0), out)
            self.assertPercentilesOrdered(res, out)

    def test_an_answer_that_is_not_2xx_is_an_error(self):
        port = self.node.http_port
        f = write_file(os.path.join(self.dir, "badkey"), [
            request(port, "GET", "/v1/account/acme/ns1/s1/properties/p",
                    {"maven-api-key": "0" * 64})])
        rc, res, errs, out = run(["-n", 200, "-c", 4, "-t", 1, "-d", 60, f, "127.0.0.1", port])
        self.assertEqual(rc, 0, out)
        self.assertEqual(res["requests"], 200, out)
        self.assertEqual(res["errors"], 200, out)
        self.assertEqual(errs["status"], 200, out)

    def test_a_write_file_spreads_over_its_requests(self):
        port = self.node.http_port
        f = write_file(os.path.join(self.dir, "puts"), [
            request(port, "PUT", "/v1/account/acme/ns2/w%d/properties/p" % s,
                    {"maven-api-key": self.key, "Content-Type": "application/json"},
                    '"x"') for s in range(4)])
        rc, res, _, out = run(["-n", 400, "-c", 4, "-d", 60, f, "127.0.0.1", port])
        self.assertEqual((rc, res["requests"], res["errors"]), (0, 400, 0), out)
        c = self.node.client(api_key=self.key)
        # 400 picks among 4 requests: each is picked (all miss: 0.75^400).
        for s in range(4):
            self.assertEqual(c.get("/v1/account/acme/ns2/w%d/properties/p" % s).status, 200)
        c.close()


class TestLoadAgainstFakeServers(NodeTestCase):
    """Against servers written here: how each odd answer is counted."""

    def setUp(self):
        self.servers = []
        self.dir = __import__("tempfile").mkdtemp(prefix="ctxd-load-")

    def tearDown(self):
        for s in self.servers:
            s.close()
        __import__("shutil").rmtree(self.dir, ignore_errors=True)

    def serve(self, handler):
        s = FakeServer(handler)
        self.servers.append(s)
        return s

    def file(self, port, n=3):
        return write_file(os.path.join(self.dir, "r"), [
            request(port, "GET", "/x%d" % i, {}) for i in range(n)])

    def test_a_slow_answer_in_pieces_and_chunks_is_one_request_with_its_latency(self):
        def handler(conn, req):
            head = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            conn.sendall(head + b"5\r\nhel")
            time.sleep(0.05)
            conn.sendall(b"lo\r\n0\r\n\r\n")
        s = self.serve(handler)
        rc, res, _, out = run(["-n", 20, "-c", 2, "-d", 60, self.file(s.port), "127.0.0.1",
                               s.port])
        self.assertEqual((rc, res["requests"], res["errors"]), (0, 20, 0), out)
        self.assertGreaterEqual(res["p50_ms"], 45.0, out)

    def test_a_server_that_closes_after_each_answer_is_reconnected_without_errors(self):
        def handler(conn, req):
            conn.sendall(ok_response(extra=b"Connection: close\r\n"))
            return False
        s = self.serve(handler)
        rc, res, _, out = run(["-n", 50, "-c", 2, "-d", 60, self.file(s.port), "127.0.0.1",
                               s.port])
        self.assertEqual((rc, res["requests"], res["errors"]), (0, 50, 0), out)
        self.assertGreaterEqual(s.accepted, 50)

    def test_a_server_that_never_answers_gives_timeouts_and_the_run_ends(self):
        s = self.serve(lambda conn, req: time.sleep(4))
        t0 = time.monotonic()
        rc, res, errs, out = run(["-c", 3, "-d", 2, "-T", 1, self.file(s.port), "127.0.0.1",
                                  s.port])
        self.assertLess(time.monotonic() - t0, 8.0)
        self.assertEqual(rc, 0, out)
        self.assertEqual(res["requests"], 0, out)
        self.assertGreaterEqual(errs["timeout"], 3, out)
        self.assertEqual(res["errors"], sum(errs.values()), out)

    def test_garbage_and_a_broken_connection_are_errors(self):
        def garbage(conn, req):
            conn.sendall(b"this is not HTTP\r\n\r\n")
        s = self.serve(garbage)
        rc, res, errs, out = run(["-n", 10, "-c", 1, "-d", 3, self.file(s.port), "127.0.0.1",
                                  s.port])
        self.assertEqual(rc, 0, out)
        self.assertGreaterEqual(errs["parse"], 1, out)
        self.assertEqual(res["requests"], 0, out)

        def hang_up(conn, req):
            return False
        s2 = self.serve(hang_up)
        rc, res, errs, out = run(["-n", 10, "-c", 1, "-d", 3, self.file(s2.port), "127.0.0.1",
                                  s2.port])
        self.assertEqual(rc, 0, out)
        self.assertGreaterEqual(errs["read"], 1, out)
        self.assertEqual(res["requests"], 0, out)

    def test_a_refused_connection_is_an_error(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nothing listens there now
        rc, res, errs, out = run(["-c", 2, "-d", 1, self.file(port), "127.0.0.1", port])
        self.assertEqual(rc, 0, out)
        self.assertGreaterEqual(errs["connect"], 2, out)
        self.assertEqual(res["requests"], 0, out)


class TestLoadRefuses(NodeTestCase):
    """Bad arguments and bad request files: exit 2 and a reason, no run."""

    def setUp(self):
        self.dir = __import__("tempfile").mkdtemp(prefix="ctxd-load-")

    def tearDown(self):
        __import__("shutil").rmtree(self.dir, ignore_errors=True)

    def raw_file(self, data):
        path = os.path.join(self.dir, "f")
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_a_host_outside_loopback(self):
        f = self.raw_file(b"4\nGET ")
        for host in ("10.0.0.1", "8.8.8.8", "0.0.0.0", "localhost", "128.0.0.1"):
            rc, res, _, out = run(["-d", 1, f, host, 80])
            self.assertEqual(rc, 2, out)
            self.assertIn("127.0.0.0/8", out)
            self.assertEqual(res, {})

    def test_bad_request_files(self):
        cases = [
            (b"", "no requests"),
            (b"5\nGET", "past the end"),
            (b"0\n", "is 0"),
            (b"x\nGET /", "expected a length"),
            (b"3GET", "expected a length"),
            (b"2000000\n" + b"G" * 2000000, "over"),
            (b"3\nabc4\nabc", "past the end"),
        ]
        for data, why in cases:
            rc, res, _, out = run(["-d", 1, self.raw_file(data), "127.0.0.1", 80])
            self.assertEqual(rc, 2, (data[:20], out))
            self.assertIn(why, out, data[:20])
            self.assertEqual(res, {})
        rc, _, _, out = run(["-d", 1, os.path.join(self.dir, "absent"), "127.0.0.1", 80])
        self.assertEqual(rc, 2, out)

    def test_bad_arguments(self):
        f = self.raw_file(b"4\nGET ")
        for args in (["-c", 0], ["-c", "x"], ["-t", 0], ["-d", -1], ["-n", "1e3"],
                     ["-T", 0], ["-q", 1], ["-c", 99999]):
            rc, _, _, out = run(args + [f, "127.0.0.1", 80])
            self.assertEqual(rc, 2, (args, out))
            self.assertIn("usage", out)
        rc, _, _, out = run([f, "127.0.0.1"])
        self.assertEqual(rc, 2, out)
        rc, _, _, out = run([f, "127.0.0.1", 70000])
        self.assertEqual(rc, 2, out)


if __name__ == "__main__":
    harness.main()
