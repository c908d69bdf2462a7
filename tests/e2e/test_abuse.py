"""Limits that hold under abuse (docs/security.md), against real nodes on
loopback:

- connection cap (--max-connections): over it, new connections are closed
  quickly while the existing clients keep being served;
- slowloris (--request-timeout-ms), idle connections (--idle-timeout-ms),
  and clients that never read their responses (--max-write-bytes,
  --max-pipeline): closed or paused, memory bounded, others served;
- 431 (--max-header-bytes), 413 without reading the body
  (--max-body-bytes), JSON depth, properties per PATCH
  (--max-patch-properties), property name and session id length, session
  document size (413 document_too_large);
- a full proposal queue (--max-pending): 429 with Retry-After, never
  another 5xx, and everything works afterwards;
- 2,000 concurrent connections plus a stream of abusive requests at one
  node while a well-behaved client keeps working: every one of its requests
  succeeds and the node's RSS stays under a bound (see RSS_PER_CONN_KB).

Every loop is bounded in count and time; every socket is closed.
"""

import json
import resource
import selectors
import socket
import threading
import time

import harness
from harness import request_bytes

REQUEST_TIMEOUT_MS = 500
IDLE_TIMEOUT_MS = 1500
MAX_HEADER = 4096
MAX_BODY = 65536
MAX_PATCH = 10
MAX_PIPELINE = 8
MAX_WRITE = 65536
# ASan keeps freed blocks in a quarantine (256 MB by default), which VmRSS
# would count as growth: keep it small so RSS reflects live memory.
ASAN_SMALL = {"ASAN_OPTIONS": "detect_leaks=1:quarantine_size_mb=16"}


def served(node, key, path):
    """A fresh client gets a health answer and a write, quickly; returns
    the time it took."""
    c = node.client(key, timeout=5)
    try:
        t0 = time.monotonic()
        r = c.get("/healthz")
        assert r.status == 200, r
        r = c.put(path, "1")
        assert r.status == 204, r
        return time.monotonic() - t0
    finally:
        c.close()


class Limits(harness.SharedNodeTestCase):
    """One node with small limits, shared by the tests of this class."""

    node_args = [
        "--request-timeout-ms", str(REQUEST_TIMEOUT_MS),
        "--idle-timeout-ms", str(IDLE_TIMEOUT_MS),
        "--max-header-bytes", str(MAX_HEADER),
        "--max-body-bytes", str(MAX_BODY),
        "--max-patch-properties", str(MAX_PATCH),
        "--max-pipeline", str(MAX_PIPELINE),
        "--max-write-bytes", str(MAX_WRITE)]
    node_env = ASAN_SMALL
    account = "abuse"

    def setUp(self):
        self.raws = []
        self.addCleanup(lambda: [r.close() for r in self.raws])


    def test_metrics_scraped_in_a_burst_are_rate_limited_with_429(self):
        # A scrape needs no key and costs the loop real work: a burst of
        # pipelined scrapes gets 429 with Retry-After past the first few.
        raw = self.node.raw(timeout=10)
        self.raws.append(raw)
        raw.send(request_bytes("GET", "/metrics") * 60)
        statuses = [raw.response().status for _ in range(60)]
        self.assertIn(200, statuses)
        self.assertIn(429, statuses)
        self.assertLessEqual(statuses.count(200), 30, statuses)
        time.sleep(1.5)
        c = self.node.client()
        self.addCleanup(c.close)
        self.assertEqual(c.get("/metrics").status, 200)

    def raw(self, timeout=5.0):
        r = self.node.raw(timeout=timeout)
        self.raws.append(r)
        return r

    def client(self):
        c = self.node.client(self.key)
        self.addCleanup(c.close)
        return c

    def ok(self):
        return served(self.node, self.key, "/v1/account/abuse/ns/probe/properties/p")

    # -- timeouts -------------------------------------------------------------

    def test_slowloris_connections_are_closed_by_the_request_timeout(self):
        slow = [self.raw() for _ in range(40)]
        for r in slow:
            r.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        t0 = time.monotonic()
        open_ = list(slow)
        # One more byte per connection every 100 ms: never a whole request.
        for _ in range(60):
            if not open_ or time.monotonic() - t0 > 6.0:
                break
            still = []
            for r in open_:
                try:
                    r.send(b"a")
                    if not r.wait_closed(0.001):
                        still.append(r)
                except OSError:
                    pass            # reset: closed by the node
            open_ = still
            self.assertLess(self.ok(), 2.0)
            time.sleep(0.1)
        took = time.monotonic() - t0
        self.assertEqual(open_, [], "%d slowloris connections still open after %.1f s"
                         % (len(open_), took))
        self.assertLess(took, REQUEST_TIMEOUT_MS / 1000.0 + 3.0)
        for r in slow:
            self.assertNotIn(b"HTTP/1.1 200", r.buf)

    def test_idle_connections_are_closed_by_the_idle_timeout(self):
        idle = [self.raw() for _ in range(40)]
        for r in idle[:20]:
            r.send(request_bytes("GET", "/healthz"))
            self.assertEqual(r.response().status, 200)
        # The other 20 never send a byte.
        t0 = time.monotonic()
        for r in idle:
            self.assertTrue(r.wait_closed(IDLE_TIMEOUT_MS / 1000.0 + 3.0 -
                                          (time.monotonic() - t0)),
                            "idle connection kept open")
        self.assertGreater(time.monotonic() - t0, IDLE_TIMEOUT_MS / 1000.0 * 0.5)
        self.assertLess(self.ok(), 2.0)

    def test_clients_that_never_read_their_responses_keep_memory_bounded(self):
        c = self.client()
        value = '"' + "v" * 60000 + '"'
        self.assertEqual(c.put("/v1/account/abuse/ns/big/properties/v", value).status, 204)
        base = self.node.rss_kb()
        one = request_bytes("GET", "/v1/account/abuse/ns/big/properties/v",
                            api_key=self.key)
        floods = []
        for _ in range(8):
            s = socket.create_connection(("127.0.0.1", self.node.http_port), timeout=5)
            self.addCleanup(s.close)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.setblocking(False)
            floods.append(s)
        sent = 0
        peak = base
        deadline = time.monotonic() + 3.0
        for _ in range(100000):
            if time.monotonic() > deadline:
                break
            for s in floods:
                try:
                    sent += s.send(one * 16)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    pass
            peak = max(peak, self.node.rss_kb())
            time.sleep(0.005)
        for _ in range(5):
            self.assertLess(self.ok(), 2.0)
        peak = max(peak, self.node.rss_kb())
        self.assertGreater(sent, len(one) * 8 * MAX_PIPELINE)
        # Per flooding connection the node holds at most MAX_PIPELINE queued
        # requests, their responses (60 KB each) and MAX_WRITE unsent bytes:
        # about 1 MB; 8 of them, plus the ASan quarantine (16 MB): 48 MB is
        # a generous bound. Without the bounds, the 3 s flood (hundreds of
        # MB of responses) would grow the node far beyond it.
        self.assertLess(peak - base, 48 * 1024,
                        "VmRSS grew %d KiB (base %d KiB) after %d bytes of unread GETs"
                        % (peak - base, base, sent))
        for s in floods:
            s.close()
        self.assertLess(self.ok(), 2.0)

    # -- request size limits ---------------------------------------------------

    def test_headers_over_the_limit_are_431_on_every_connection(self):
        for i in range(20):
            r = self.raw()
            r.send(request_bytes("GET", "/healthz",
                                 headers={"X-Big-%d" % i: "h" * MAX_HEADER}))
            self.assertStatus(r.response(), 431, "headers_too_large")
            self.assertTrue(r.wait_closed(3.0))
        self.assertLess(self.ok(), 2.0)

    def test_a_body_over_the_limit_is_413_before_it_is_read(self):
        for _ in range(5):
            r = self.raw()
            head = ("PUT /v1/account/abuse/ns/s/properties/p HTTP/1.1\r\nHost: x\r\n"
                    "maven-api-key: %s\r\nContent-Type: application/json\r\n"
                    "Content-Length: %d\r\n\r\n" % (self.key, 100 * 1024 * 1024)).encode()
            r.send(head + b'"' + b"x" * 1000)
            t0 = time.monotonic()
            self.assertStatus(r.response(), 413, "body_too_large")
            self.assertLess(time.monotonic() - t0, 2.0)
            self.assertTrue(r.wait_closed(5.0), "connection kept open after 413")
        self.assertEqual(self.client().get("/v1/account/abuse/ns/s/properties/p").status, 404)

    def test_json_nested_deeper_than_64_levels_is_400_too_deep(self):
        c = self.client()
        path = "/v1/account/abuse/ns/deep/properties/p"
        self.assertStatus(c.put(path, "[" * 65 + "]" * 65), 400, "too_deep")
        self.assertStatus(c.put(path, "{\"a\":" * 65 + "1" + "}" * 65), 400, "too_deep")
        # Deep nesting far past the limit costs no more than the limit.
        self.assertStatus(c.put(path, "[" * 30000), 400, "too_deep")
        self.assertEqual(c.put(path, "[" * 64 + "]" * 64).status, 204)

    def test_more_properties_than_the_patch_limit_is_400_and_changes_nothing(self):
        c = self.client()
        path = "/v1/account/abuse/ns/many/properties"
        body = {"p%d" % i: i for i in range(MAX_PATCH + 1)}
        self.assertStatus(c.patch(path, body), 400, "too_many_properties")
        r = c.get(path)
        self.assertIn(r.status, (200, 404), r)      # 404: the namespace is new
        if r.status == 200:
            self.assertEqual(r.json(), {})
        body = {"p%d" % i: i for i in range(MAX_PATCH)}
        self.assertEqual(c.patch(path, body).status, 204)
        self.assertEqual(len(c.get(path).json()), MAX_PATCH)

    def test_property_names_and_session_ids_over_256_bytes_are_400_bad_name(self):
        c = self.client()
        ok_name = "n" * 256
        bad_name = "n" * 257
        self.assertStatus(c.put("/v1/account/abuse/ns/s/properties/" + bad_name, "1"),
                          400, "bad_name")
        self.assertStatus(c.patch("/v1/account/abuse/ns/s/properties", {bad_name: 1}),
                          400, "bad_name")
        self.assertStatus(c.put("/v1/account/abuse/ns/%s/properties/p" % bad_name, "1"),
                          400, "bad_name")
        self.assertStatus(c.get("/v1/account/abuse/ns/%s/properties" % bad_name),
                          400, "bad_name")
        self.assertEqual(c.put("/v1/account/abuse/ns/s/properties/" + ok_name, "1").status,
                         204)
        self.assertEqual(c.put("/v1/account/abuse/ns/%s/properties/p" % ok_name, "1").status,
                         204)

    def test_a_session_document_over_800000_bytes_is_413_and_changes_nothing(self):
        c = self.client()
        base = "/v1/account/abuse/ns/doc/properties/"
        chunk = '"' + "d" * 59998 + '"'          # 60,000 bytes of JSON text
        for i in range(13):                     # 780,000 bytes so far
            self.assertEqual(c.put(base + "p%02d" % i, chunk).status, 204)
        r = c.put(base + "p13", chunk)
        self.assertStatus(r, 413, "document_too_large")
        self.assertEqual(c.get(base + "p13").status, 404)
        r = c.patch(base[:-1], {"q1": "x" * 15000, "q2": "y" * 15000})
        self.assertStatus(r, 413, "document_too_large")
        doc = c.get(base[:-1]).json()
        self.assertEqual(sorted(doc), ["p%02d" % i for i in range(13)])


class ConnectionCap(harness.NodeTestCase):

    def test_connections_over_the_cap_are_closed_quickly_and_held_ones_served(self):
        node = harness.Node(args=["--max-connections", "16"])
        self.nodes = [node]
        self.addCleanup(node.cleanup)
        node.start()
        held = []
        self.addCleanup(lambda: [r.close() for r in held])
        for _ in range(16):
            r = node.raw()
            held.append(r)
            r.send(request_bytes("GET", "/healthz"))
            self.assertEqual(r.response().status, 200)
        extra = []
        self.addCleanup(lambda: [r.close() for r in extra])
        for i in range(50):
            try:
                r = node.raw(timeout=3)
            except OSError:
                continue            # refused outright: also within the cap
            extra.append(r)
            try:
                r.send(request_bytes("GET", "/healthz"))
            except OSError:
                pass
            if i % 10 == 0:
                for h in held:
                    h.send(request_bytes("GET", "/healthz"))
                    self.assertEqual(h.response().status, 200)
        t0 = time.monotonic()
        for r in extra:
            self.assertTrue(r.wait_closed(max(0.1, 3.0 - (time.monotonic() - t0))),
                            "connection over the cap kept open")
            self.assertNotIn(b"HTTP/1.1 200", r.buf)
        self.assertLess(time.monotonic() - t0, 3.0)
        for h in held:
            h.send(request_bytes("GET", "/healthz"))
            self.assertEqual(h.response().status, 200)
        # A freed slot is usable again.
        held.pop().close()
        self.assertTrue(harness.wait_served(node),
                        "a freed connection slot was not reusable")
        node.stop()


class Overload(harness.NodeTestCase):

    def test_a_full_proposal_queue_answers_429_with_retry_after_and_recovers(self):
        node = harness.Node(args=["--max-pending", "2"])
        self.nodes = [node]
        self.addCleanup(node.cleanup)
        node.start()
        admin = node.admin()
        self.addCleanup(admin.close)
        key = admin.create_account("flood")
        conns, per_conn = 40, 10
        results = []
        lock = threading.Lock()
        start = threading.Barrier(conns)

        def flood(ci):
            r = harness.RawConn(node.http_port, timeout=20)
            try:
                batch = b"".join(
                    request_bytes("PATCH", "/v1/account/flood/ns/c%d/properties" % ci,
                                  {"p%d" % j: j}, api_key=key)
                    for j in range(per_conn))
                start.wait(timeout=20)
                r.send(batch)
                got = []
                for j in range(per_conn):
                    resp = r.response()
                    got.append((ci, j, resp))
                with lock:
                    results.extend(got)
            finally:
                r.close()

        threads = [threading.Thread(target=flood, args=(i,)) for i in range(conns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        self.assertFalse(any(t.is_alive() for t in threads), "flood threads stuck")
        self.assertEqual(len(results), conns * per_conn)
        statuses = {}
        for _, _, resp in results:
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
            self.assertIn(resp.status, (204, 429), resp)
            if resp.status == 429:
                self.assertEqual(resp.headers.get("retry-after"), "1", resp)
                self.assertEqual(resp.json()["code"], "overloaded", resp)
        self.assertGreater(statuses.get(429, 0), 0, statuses)
        self.assertGreater(statuses.get(204, 0), 0, statuses)
        # After the flood: every acknowledged write is there, the refused
        # ones are not, and the node takes writes again.
        c = node.client(key)
        self.addCleanup(c.close)
        for ci in range(conns):
            r = c.get("/v1/account/flood/ns/c%d/properties" % ci)
            have = r.json() if r.status == 200 else {}
            want = {"p%d" % j: j for (i, j, resp) in results
                    if i == ci and resp.status == 204}
            self.assertEqual(have, want, "connection %d" % ci)
        for i in range(20):
            self.assertEqual(c.put("/v1/account/flood/ns/after/properties/p%d" % i,
                                   str(i)).status, 204)
        probe = node.client()
        self.addCleanup(probe.close)
        self.assertEqual(probe.get("/readyz").status, 200)
        node.stop()


def raise_nofile(want):
    """Raise this process's open-file limit (inherited by the nodes it
    starts) to at least want, within the hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def exchange(socks, data, budget):
    """Send data on every socket and read one whole response from each (all
    at once, with a selector). Returns {sock: status}; a socket closed or
    not answered within budget seconds maps to None."""
    sel = selectors.DefaultSelector()
    bufs = {}
    for s in socks:
        s.sendall(data)
        bufs[s] = b""
        sel.register(s, selectors.EVENT_READ)
    status = {s: None for s in socks}
    pending = set(socks)
    deadline = time.monotonic() + budget
    for _ in range(1000000):
        left = deadline - time.monotonic()
        if not pending or left <= 0:
            break
        for key, _ in sel.select(timeout=min(left, 0.5)):
            s = key.fileobj
            try:
                chunk = s.recv(65536)
            except (BlockingIOError, socket.timeout):
                continue
            except OSError:
                chunk = b""
            if not chunk:
                sel.unregister(s)
                pending.discard(s)
                continue
            bufs[s] += chunk
            head, sep, body = bufs[s].partition(b"\r\n\r\n")
            if not sep:
                continue
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            if len(body) >= length:
                status[s] = int(head.split(b" ")[1])
                bufs[s] = body[length:]
                sel.unregister(s)
                pending.discard(s)
    sel.close()
    return status


# Per connection the node holds a struct http_conn (parser, buffers, two
# libuv handles: under 2 KiB) and a socket; with ASan's redzones and
# allocator granularity, 16 KiB each is generous. On top: the ASan
# quarantine (16 MB), the in-flight abusive requests (at most ABUSERS
# connections × (64 KiB read buffer + 64 KiB body) ≈ 4 MB) and the good
# client's data (a few hundred small properties): 40 MB covers them.
N_CONNS = 2000
RSS_PER_CONN_KB = 16
RSS_FIXED_KB = 40 * 1024
ABUSERS = 16


class ManyConnections(harness.NodeTestCase):

    def test_2000_connections_and_abuse_while_a_good_client_keeps_working(self):
        limit = raise_nofile(N_CONNS + 1000)
        self.assertGreaterEqual(limit, N_CONNS + 200, "RLIMIT_NOFILE too low")
        node = harness.Node(args=["--max-connections", str(N_CONNS + 500),
                                  "--max-body-bytes", "65536",
                                  "--request-timeout-ms", "1000",
                                  "--idle-timeout-ms", "60000",
                                  # The good client's requests must all
                                  # succeed; on a loaded CI machine an fsync
                                  # can stall for seconds, so give commits
                                  # and read barriers more than the default.
                                  "--read-timeout-ms", "20000",
                                  "--write-timeout-ms", "20000"], env=ASAN_SMALL)
        self.nodes = [node]
        self.addCleanup(node.cleanup)
        node.start()
        admin = node.admin()
        self.addCleanup(admin.close)
        good_key = admin.create_account("good")
        bad_key = admin.create_account("bad")
        base = node.rss_kb()

        socks = []
        self.addCleanup(lambda: [s.close() for s in socks])
        for _ in range(N_CONNS):
            s = socket.create_connection(("127.0.0.1", node.http_port), timeout=10)
            socks.append(s)
        st = exchange(socks, request_bytes("GET", "/healthz"), 60)
        self.assertEqual(sum(1 for v in st.values() if v == 200), N_CONNS)

        stop = threading.Event()
        peak = [base]
        abuse_counts = {}
        errors = []

        def sample_rss():
            for _ in range(2000):
                if stop.is_set():
                    return
                peak[0] = max(peak[0], node.rss_kb())
                time.sleep(0.05)

        def abuse(worker):
            patterns = [
                # slowloris: a partial header, then nothing
                lambda: b"GET /healthz HTTP/1.1\r\nX-Slow: ",
                # oversized header
                lambda: request_bytes("GET", "/healthz", headers={"X-Big": "h" * 20000}),
                # a huge announced body
                lambda: (b"PUT /v1/account/bad/ns/s/properties/p HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\n"
                         b"Content-Length: 999999999\r\n\r\n" + b"x" * 4096),
                # garbage
                lambda: b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 50,
                # wrong keys, deep JSON, too many properties, bad names
                lambda: request_bytes("GET", "/v1/account/good/ns/s/properties",
                                      api_key="wrong"),
                lambda: request_bytes("GET", "/v1/account/good/ns/s/properties",
                                      api_key=bad_key),
                lambda: request_bytes("PUT", "/v1/account/bad/ns/s/properties/p",
                                      "[" * 5000, api_key=bad_key),
                lambda: request_bytes("PATCH", "/v1/account/bad/ns/s/properties",
                                      {"p%d" % i: i for i in range(2000)}, api_key=bad_key),
                lambda: request_bytes("PUT", "/v1/account/bad/ns/%s/properties/p" % ("s" * 300),
                                      "1", api_key=bad_key),
                # pipelined reads it never collects
                lambda: request_bytes("GET", "/metrics") * 64,
            ]
            i = 0
            for _ in range(100000):
                if stop.is_set():
                    return
                p = patterns[(worker + i) % len(patterns)]
                i += 1
                try:
                    s = socket.create_connection(("127.0.0.1", node.http_port), timeout=2)
                    try:
                        s.sendall(p())
                        s.settimeout(0.2)
                        try:
                            s.recv(512)
                        except (socket.timeout, OSError):
                            pass
                    finally:
                        s.close()
                except OSError:
                    pass
                abuse_counts[worker] = abuse_counts.get(worker, 0) + 1

        threads = [threading.Thread(target=sample_rss)]
        threads += [threading.Thread(target=abuse, args=(w,)) for w in range(ABUSERS)]
        for t in threads:
            t.start()
        good = node.client(good_key, timeout=10)
        self.addCleanup(good.close)
        ops = 0
        try:
            t0 = time.monotonic()
            # At least 300 operations, and on until the abusers have made
            # over 100 connections (bounded: 3,000 operations or 20 s).
            for i in range(3000):
                if i > 50 and time.monotonic() - t0 > 20:
                    break
                if i >= 300 and sum(list(abuse_counts.values())) > 100:
                    break
                path = "/v1/account/good/ns/s%d/properties" % (i % 7)
                r = good.patch(path, {"k%d" % i: i, "v": "x" * 100})
                if r.status != 204:
                    errors.append(("patch", i, r))
                r = good.get(path + "/k%d" % i)
                if r.status != 200 or r.body != str(i).encode():
                    errors.append(("get", i, r))
                ops += 2
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        self.assertEqual(errors, [], "the good client saw failures")
        self.assertGreaterEqual(ops, 100)
        self.assertGreater(sum(abuse_counts.values()), 100, abuse_counts)
        # The 2,000 connections are still served.
        st = exchange(socks, request_bytes("GET", "/healthz"), 60)
        self.assertEqual(sum(1 for v in st.values() if v == 200), N_CONNS)
        peak[0] = max(peak[0], node.rss_kb())
        bound = base + N_CONNS * RSS_PER_CONN_KB + RSS_FIXED_KB
        self.assertLess(peak[0], bound,
                        "VmRSS peak %d KiB over the bound %d KiB (base %d KiB)"
                        % (peak[0], bound, base))
        sys_report = "good ops %d, abusive connections %d, RSS base %d KiB peak %d KiB" % (
            ops, sum(abuse_counts.values()), base, peak[0])
        print("\n" + sys_report)
        for s in socks:
            s.close()
        node.stop()


if __name__ == "__main__":
    harness.main()
