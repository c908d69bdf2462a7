"""Shared helpers for the ctxd end-to-end tests (Python 3 standard library only).

The tests start real `ctxd` processes on loopback ports and talk HTTP to them.
This module gives them:

- `ctxd_path()`: the binary under test, from `--ctxd PATH` (stripped from
  sys.argv by `main()`), else env CTXD_BIN, else build/ctxd.
- `free_port()`: a port picked by binding 127.0.0.1:0.
- `Node`: one ctxd process with its own temporary directory (data dir and log
  file), started with stderr to the log, stopped with SIGTERM (exit 0 is
  asserted, and the log must hold no sanitizer report), killed with SIGKILL,
  restarted on the same data dir and ports.
- `Client`: a keep-alive HTTP client (one http.client connection) whose
  `req()` returns `Resp(status, headers, body)` with lower-case header names.
- `RawConn`: a raw socket for malformed, pipelined, chunked or slow requests,
  with a small HTTP/1.1 response reader.
- admin helpers: read the admin token, create or rotate an account's key.
- `NodeTestCase`: a unittest.TestCase that prints the log tail of every node
  it knows about when a test fails or errors.

Invariants: every network call has a timeout, every wait loop is bounded in
both iterations and time, and every process started here is stopped or
killed, and its directory removed, by `Node.cleanup()`.
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse

HTTP_TIMEOUT = 10.0        # seconds, every HTTP call
READY_BUDGET = 20.0        # seconds to become ready after start
STOP_BUDGET = 20.0         # seconds to exit after SIGTERM
LOG_TAIL_LINES = 60        # lines of a node's log shown on failure

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                     "runtime error:", "SUMMARY: UndefinedBehaviorSanitizer")

_CTXD = None


def _strip_ctxd_arg():
    """Remove `--ctxd PATH` / `--ctxd=PATH` from sys.argv, return PATH or None."""
    found = None
    out = [sys.argv[0]]
    args = sys.argv[1:]
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--ctxd" and i + 1 < len(args):
            found = args[i + 1]
            i += 2
            continue
        if a.startswith("--ctxd="):
            found = a[len("--ctxd="):]
            i += 1
            continue
        out.append(a)
        i += 1
    sys.argv[:] = out
    return found


def ctxd_path():
    """Absolute path of the ctxd binary under test."""
    global _CTXD
    if _CTXD is None:
        p = _strip_ctxd_arg() or os.environ.get("CTXD_BIN") or "build/ctxd"
        if not os.path.isabs(p) and not os.path.exists(p):
            root = os.path.dirname(os.path.dirname(os.path.dirname(
                os.path.abspath(__file__))))
            p = os.path.join(root, p)
        _CTXD = os.path.abspath(p)
    return _CTXD


def main():
    """Entry point of every test file: take --ctxd, then run unittest.

    unittest.main() exits non-zero when any test fails."""
    ctxd_path()
    unittest.main(verbosity=2)


_ports_given = set()


def free_port():
    """A TCP port that was free on 127.0.0.1 a moment ago, never the same one
    twice in this process (the kernel may hand a just-closed port out again,
    and two nodes of one cluster must not share one)."""
    for _ in range(100):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if port not in _ports_given:
            _ports_given.add(port)
            return port
    raise RuntimeError("no fresh free port after 100 tries")


def q(segment):
    """Percent-encode one path segment (every reserved byte encoded)."""
    if isinstance(segment, str):
        segment = segment.encode("utf-8")
    return urllib.parse.quote(segment, safe="")


def sanitizer_report(text):
    """The first sanitizer report line in text, or None."""
    for line in text.splitlines():
        for m in SANITIZER_MARKERS:
            if m in line:
                return line
    return None


class Node:
    """One ctxd process with its own temporary directory.

    The data dir is TMP/data and stderr goes to TMP/node.log (appended across
    restarts, each start preceded by a marker line). Ports are chosen once and
    kept across restarts, because the Raft address is part of the stored
    cluster configuration."""

    def __init__(self, node_id=1, args=None, env=None, data_dir=None):
        self.tmp = tempfile.mkdtemp(prefix="ctxd-e2e-")
        self.node_id = node_id
        self.data_dir = data_dir or os.path.join(self.tmp, "data")
        self.http_port = free_port()
        self.raft_port = free_port()
        self.log_path = os.path.join(self.tmp, "node.log")
        self.args = list(args or [])
        self.env = dict(env or {})
        self.proc = None
        self.starts = 0

    # -- process control -------------------------------------------------

    def base_args(self):
        return ["--id", str(self.node_id), "--data-dir", self.data_dir,
                "--http-addr", "127.0.0.1:%d" % self.http_port,
                "--raft-addr", "127.0.0.1:%d" % self.raft_port]

    def spawn(self, argv, env=None):
        """Start ctxd with exactly argv (after the binary) and env additions."""
        full_env = dict(os.environ)
        full_env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
        full_env.update(env or {})
        with open(self.log_path, "ab") as log:
            log.write(("=== e2e: start %d: %s\n" % (self.starts, " ".join(argv)))
                      .encode())
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen([ctxd_path()] + list(argv),
                                         stdin=subprocess.DEVNULL, cwd=self.tmp,
                                         stdout=log, stderr=log, env=full_env)
        finally:
            log.close()
        self.starts += 1
        return self.proc

    def start(self, extra_args=None, env=None, wait=True):
        """Start the node (args given at construction plus extra_args)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        if extra_args is not None:
            self.args = list(extra_args)
        if env is not None:
            self.env = dict(env)
        self.spawn(self.base_args() + self.args, self.env)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, budget=READY_BUDGET):
        """Poll GET /readyz until 200; fail at once if the process exits."""
        deadline = time.monotonic() + budget
        last = None
        for _ in range(int(budget / 0.05) + 1):
            if self.proc.poll() is not None:
                raise AssertionError("ctxd exited with %s before ready\n%s"
                                     % (self.proc.returncode, self.log_tail()))
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.http_port,
                                               timeout=2)
                c.request("GET", "/readyz")
                r = c.getresponse()
                r.read()
                c.close()
                last = r.status
                if r.status == 200:
                    return
            except (OSError, http.client.HTTPException) as e:
                last = repr(e)
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        raise AssertionError("ctxd not ready after %.0f s (last: %s)\n%s"
                             % (budget, last, self.log_tail()))

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, budget=STOP_BUDGET):
        """Wait for the process to exit; return its code (kill on timeout)."""
        try:
            return self.proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError("ctxd did not exit within %.0f s\n%s"
                                 % (budget, self.log_tail()))

    def stop(self, sig=signal.SIGTERM, check=True):
        """Graceful stop; asserts exit 0 and no sanitizer report."""
        if not self.running():
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        rc = self.wait_exit()
        if check:
            if rc != 0:
                raise AssertionError("ctxd exited %s after %s\n%s"
                                     % (rc, signal.Signals(sig).name,
                                        self.log_tail()))
            self.assert_no_sanitizer_report()
        return rc

    def kill9(self):
        if self.running():
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self, extra_args=None, env=None, wait=True, graceful=True):
        if graceful:
            self.stop()
        else:
            self.kill9()
        return self.start(extra_args, env, wait)

    def cleanup(self):
        """Kill the process if still running and remove the directory."""
        try:
            self.kill9()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- files -----------------------------------------------------------

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=LOG_TAIL_LINES):
        lines = self.log_text().splitlines()
        return "---- %s (last %d lines) ----\n%s\n----" % (
            self.log_path, min(n, len(lines)), "\n".join(lines[-n:]))

    def assert_no_sanitizer_report(self):
        line = sanitizer_report(self.log_text())
        if line:
            raise AssertionError("sanitizer report in node log: %s\n%s"
                                 % (line, self.log_tail(200)))

    def token_path(self):
        return os.path.join(self.data_dir, "admin.token")

    def admin_token(self):
        with open(self.token_path(), "r") as f:
            return f.read().strip()

    # -- clients ---------------------------------------------------------

    def client(self, api_key=None, timeout=HTTP_TIMEOUT):
        return Client(self.http_port, api_key=api_key, timeout=timeout)

    def admin(self, token=None):
        return Admin(self.http_port, token if token is not None
                     else self.admin_token())

    def raw(self, timeout=5.0):
        return RawConn(self.http_port, timeout=timeout)

    def rss_kb(self):
        """VmRSS of the process in KiB (from /proc)."""
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS for pid %d" % self.proc.pid)


class Resp(tuple):
    """(status, headers, body): headers is a dict with lower-case names."""

    def __new__(cls, status, headers, body):
        return tuple.__new__(cls, (status, headers, body))

    status = property(lambda self: self[0])
    headers = property(lambda self: self[1])
    body = property(lambda self: self[2])

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def text(self):
        return self.body.decode("utf-8")

    def __repr__(self):
        return "Resp(%d, %r, %r)" % (self.status, self.headers, self.body[:300])


def encode_body(body):
    """None → None; bytes or an iterator of bytes as is; str → UTF-8;
    anything else → JSON text."""
    if body is None or isinstance(body, bytes) or hasattr(body, "__next__"):
        return body     # an iterator is sent chunked by http.client
    if isinstance(body, str):
        return body.encode("utf-8")
    return json.dumps(body).encode("utf-8")


class Client:
    """Keep-alive HTTP/1.1 client: one http.client connection, reopened only
    when the server closed it."""

    def __init__(self, port, api_key=None, timeout=HTTP_TIMEOUT, host="127.0.0.1"):
        self.host = host
        self.port = port
        self.api_key = api_key
        self.timeout = timeout
        self.conn = None
        self.used = False   # the current connection has served a request

    def close(self):
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        self.used = False

    def _connect(self):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port,
                                                   timeout=self.timeout)
            self.used = False
        return self.conn

    def req(self, method, path, body=None, headers=None, key=True,
            content_type="application/json"):
        """Send one request; return Resp(status, headers, body).

        body: None, bytes, str or a JSON-able object. A Content-Type of
        content_type is added when there is a body (content_type=None: none).
        key: True → this client's api key; None/False → no key; a str → that
        key. headers: extra headers (they win)."""
        data = encode_body(body)
        h = {}
        if data is not None and content_type is not None:
            h["Content-Type"] = content_type
        if key is True and self.api_key is not None:
            h["maven-api-key"] = self.api_key
        elif isinstance(key, str):
            h["maven-api-key"] = key
        h.update(headers or {})
        # Retry once only when a reused keep-alive connection turned out to
        # be closed by the server before it read anything (as urllib3 does).
        for attempt in range(2):
            conn = self._connect()
            reused = self.used
            try:
                conn.request(method, path, body=data, headers=h)
                r = conn.getresponse()
                payload = r.read()
            except (http.client.RemoteDisconnected, BrokenPipeError,
                    ConnectionResetError) as e:
                self.close()
                if reused and attempt == 0:
                    continue
                raise e
            except BaseException:
                self.close()
                raise
            self.used = True
            hdrs = {}
            for k, v in r.getheaders():
                k = k.lower()
                hdrs[k] = v if k not in hdrs else hdrs[k] + ", " + v
            if r.will_close:
                self.close()
            return Resp(r.status, hdrs, payload)
        raise AssertionError("unreachable")

    def get(self, path, **kw):
        return self.req("GET", path, **kw)

    def put(self, path, body, **kw):
        return self.req("PUT", path, body, **kw)

    def patch(self, path, body, **kw):
        return self.req("PATCH", path, body, **kw)

    def post(self, path, body, **kw):
        return self.req("POST", path, body, **kw)

    def delete(self, path, **kw):
        return self.req("DELETE", path, **kw)


class Admin(Client):
    """Client that sends `Authorization: Bearer <token>` on every call."""

    def __init__(self, port, token, timeout=HTTP_TIMEOUT):
        super().__init__(port, timeout=timeout)
        self.token = token

    def req(self, method, path, body=None, headers=None, **kw):
        h = {"Authorization": "Bearer " + self.token}
        h.update(headers or {})
        return super().req(method, path, body, headers=h, **kw)

    def create_account(self, acc):
        """Create or rotate acc's API key (PUT /admin/v1/accounts/{acc}/key,
        201 asserted); return the key."""
        r = self.put("/admin/v1/accounts/%s/key" % acc, None)
        if r.status != 201:
            raise AssertionError("PUT key for %s: %r" % (acc, r))
        doc = r.json()
        if doc.get("accountId") != acc or not isinstance(doc.get("apiKey"), str):
            raise AssertionError("PUT key for %s: body %r" % (acc, doc))
        return doc["apiKey"]


def create_account(node, acc):
    """Create (or rotate) account acc on node with an admin client of its
    own, closed after; return the API key."""
    admin = node.admin()
    try:
        return admin.create_account(acc)
    finally:
        admin.close()


class RawConn:
    """A raw TCP connection to a node, with a minimal HTTP/1.1 response reader."""

    def __init__(self, port, timeout=5.0, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.eof = False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def _fill(self):
        """Read more bytes into buf; False on EOF (or reset)."""
        if self.eof:
            return False
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def _read_until(self, sep, limit=1 << 20):
        for _ in range(100000):
            i = self.buf.find(sep)
            if i >= 0:
                out = self.buf[:i]
                self.buf = self.buf[i + len(sep):]
                return out
            if len(self.buf) > limit:
                raise AssertionError("no %r within %d bytes" % (sep, limit))
            if not self._fill():
                raise EOFError("connection closed; partial: %r" % self.buf[:200])
        raise AssertionError("read loop bound reached")

    def _read_n(self, n):
        for _ in range(100000):
            if len(self.buf) >= n:
                out = self.buf[:n]
                self.buf = self.buf[n:]
                return out
            if not self._fill():
                raise EOFError("connection closed in body")
        raise AssertionError("read loop bound reached")

    def response(self):
        """Read one response; return Resp. Raises EOFError if closed first."""
        head = self._read_until(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        m = re.match(rb"HTTP/1\.[01] (\d{3})", lines[0])
        if not m:
            raise AssertionError("bad status line %r" % lines[0])
        status = int(m.group(1))
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            k = k.decode("latin-1").strip().lower()
            v = v.decode("latin-1").strip()
            hdrs[k] = v if k not in hdrs else hdrs[k] + ", " + v
        if "transfer-encoding" in hdrs and "chunked" in hdrs["transfer-encoding"].lower():
            body = b""
            for _ in range(1000000):
                size = int(self._read_until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    self._read_until(b"\r\n")
                    break
                body += self._read_n(size)
                self._read_until(b"\r\n")
        elif "content-length" in hdrs:
            body = self._read_n(int(hdrs["content-length"]))
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:
            while self._fill():
                pass
            body, self.buf = self.buf, b""
        return Resp(status, hdrs, body)

    def responses(self, n):
        return [self.response() for _ in range(n)]

    def wait_closed(self, budget):
        """True if the server closes the connection within budget seconds
        (any bytes it sends first, e.g. a 408, are kept in buf)."""
        deadline = time.monotonic() + budget
        for _ in range(100000):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                if not self._fill():
                    return True
            except socket.timeout:
                return False
        return False


def request_bytes(method, path, body=None, headers=None, api_key=None,
                  content_type="application/json", close=False):
    """Serialize one HTTP/1.1 request (Content-Length framing)."""
    data = encode_body(body)
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1"]
    if api_key:
        lines.append("maven-api-key: " + api_key)
    if data is not None:
        if content_type:
            lines.append("Content-Type: " + content_type)
        lines.append("Content-Length: %d" % len(data))
    for k, v in (headers or {}).items():
        lines.append("%s: %s" % (k, v))
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + (data or b"")


def raw_members(text):
    """Parse a JSON object's text; return {name: exact text of its value}.

    Used to check that values come back byte-identical inside an object."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    dec = json.JSONDecoder()
    ws = " \t\r\n"
    i = 0
    n = len(text)

    def skip(k):
        while k < n and text[k] in ws:
            k += 1
        return k

    i = skip(i)
    if i >= n or text[i] != "{":
        raise ValueError("not an object: %r" % text[:80])
    i = skip(i + 1)
    out = {}
    if i < n and text[i] == "}":
        return out
    for _ in range(n):
        name, i = dec.raw_decode(text, i)
        if not isinstance(name, str):
            raise ValueError("bad member name")
        i = skip(i)
        if text[i] != ":":
            raise ValueError("expected ':' at %d" % i)
        i = skip(i + 1)
        _, end = dec.raw_decode(text, i)
        if name in out:
            raise ValueError("duplicate member %r in response" % name)
        out[name] = text[i:end]
        i = skip(end)
        if text[i] == "}":
            return out
        if text[i] != ",":
            raise ValueError("expected ',' at %d" % i)
        i = skip(i + 1)
    raise ValueError("unterminated object")


def wait_served(node, tries=50, pause=0.05):
    """True once a new connection to node gets 200 from /healthz (bounded:
    a just-freed connection slot may take a moment to be released)."""
    for _ in range(tries):
        try:
            c = node.client(timeout=2)
            try:
                if c.get("/healthz").status == 200:
                    return True
            finally:
                c.close()
        except OSError:
            pass
        time.sleep(pause)
    return False


class NodeTestCase(unittest.TestCase):
    """TestCase that prints the log tail of its nodes when a test fails.

    Subclasses list their nodes in `self.nodes` (per test) or `cls.nodes`
    (per class)."""

    nodes = []

    def run(self, result=None):
        if result is None:
            result = self.defaultTestResult()
        before = len(result.failures) + len(result.errors)
        out = super().run(result)
        if len(result.failures) + len(result.errors) > before:
            for node in list(getattr(self, "nodes", [])):
                sys.stderr.write("\n%s: %s\n" % (self.id(), node.log_tail()))
        return out

    # -- assertions shared by the test files --------------------------------

    def assertStatus(self, resp, status, code=None):
        """resp has this status; for errors, a JSON body with this code and a
        non-empty message."""
        self.assertEqual(resp.status, status, "unexpected response %r" % (resp,))
        if code is not None:
            self.assertError(resp, code)

    def assertError(self, resp, code):
        try:
            doc = resp.json()
        except (ValueError, UnicodeDecodeError):
            self.fail("error body is not JSON: %r" % (resp,))
        self.assertIsInstance(doc, dict, "error body %r" % (resp,))
        if isinstance(code, (set, frozenset, tuple, list)):
            self.assertIn(doc.get("code"), code, "error body %r" % (resp,))
        else:
            self.assertEqual(doc.get("code"), code, "error body %r" % (resp,))
        self.assertIsInstance(doc.get("message"), str, "error body %r" % (resp,))
        self.assertTrue(doc.get("message"), "empty message in %r" % (resp,))
        self.assertTrue(resp.headers.get("content-type", "").startswith(
            "application/json"), "error content type in %r" % (resp,))


# -- region clusters (used by tests/e2e/test_cluster*.py) ---------------------

CLUSTER_READY_BUDGET = 30.0   # seconds for a whole cluster to become ready
CONVERGE_BUDGET = 10.0        # seconds for replicas to reach one digest


class SharedNodeTestCase(NodeTestCase):
    """One node for all the tests of a class, started once.

    Subclasses set `node_args` / `node_env` (flags and environment of the
    node) and, optionally, `account` to get `cls.key` for that account and
    `keep_admin = True` to keep `cls.admin` open for the tests."""

    node_args = []
    node_env = None
    account = None
    keep_admin = False

    @classmethod
    def setUpClass(cls):
        cls.node = Node(args=list(cls.node_args), env=cls.node_env)
        cls.nodes = [cls.node]
        cls.admin = None
        try:
            cls.node.start()
            cls.admin = cls.node.admin()
            if cls.account is not None:
                cls.key = cls.admin.create_account(cls.account)
            if not cls.keep_admin:
                cls.admin.close()
                cls.admin = None
        except BaseException:
            print(cls.node.log_tail())
            cls.node.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.admin is not None:
                cls.admin.close()
            cls.node.stop()
        finally:
            cls.node.cleanup()


def get_json(client, path, **kw):
    """GET path with client; return the decoded JSON of a 200 answer, else None.
    Connection errors also give None (the node may be down or restarting)."""
    try:
        r = client.get(path, **kw)
    except (OSError, http.client.HTTPException):
        return None
    if r.status != 200:
        return None
    try:
        return r.json()
    except ValueError:
        return None


class Cluster:
    """N ctxd nodes of one region cluster, each a `Node` with its own
    directory and ports, sharing an admin token file and a cluster secret file
    kept in the cluster's own temporary directory.

    Node i (1-based) has id i and region regions[(i-1) % len(regions)]; the
    static `--cluster` spec lists every initial member. `extra` args go to
    every node. Nodes added later (`add_joining`) start with `--join`.
    Invariant: `cleanup()` kills every node it made and removes every
    directory."""

    def __init__(self, n=3, regions=("z1", "z2", "z3"), extra=None):
        self.tmp = tempfile.mkdtemp(prefix="ctxd-e2e-cluster-")
        self.token = "e2e-admin-" + os.urandom(16).hex()
        self.secret = "e2e-secret-" + os.urandom(16).hex()
        self.token_file = os.path.join(self.tmp, "admin.token")
        self.secret_file = os.path.join(self.tmp, "cluster.secret")
        for path, text in ((self.token_file, self.token),
                           (self.secret_file, self.secret)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, (text + "\n").encode())
            finally:
                os.close(fd)
        self.extra = list(extra or [])
        self.regions = list(regions)
        self.nodes = [Node(node_id=i) for i in range(1, n + 1)]
        self.spec = ",".join("%d=127.0.0.1:%d@127.0.0.1:%d"
                             % (x.node_id, x.raft_port, x.http_port)
                             for x in self.nodes)
        for x in self.nodes:
            x.region = self.region_of(x.node_id)
            x.args = self.common_args(x) + ["--cluster", self.spec]
        self._admins = []

    def region_of(self, node_id):
        return self.regions[(node_id - 1) % len(self.regions)]

    def common_args(self, node):
        return ["--region", node.region, "--admin-token-file", self.token_file,
                "--cluster-secret-file", self.secret_file] + self.extra

    # -- process control ---------------------------------------------------

    def start(self, budget=CLUSTER_READY_BUDGET):
        """Start every node at once (a quorum is needed to elect a leader),
        then wait until each one's /readyz is 200."""
        for x in self.nodes:
            x.start(wait=False)
        for x in self.nodes:
            x.wait_ready(budget)
        self.wait_registered(self.nodes, budget)
        return self

    def wait_registered(self, nodes, budget=CLUSTER_READY_BUDGET):
        """Each node registers its HTTP address and region through the leader
        once it is up: wait until every node's view lists every node of
        `nodes` with its region."""
        want = {x.node_id: x.region for x in nodes}
        deadline = time.monotonic() + budget
        last = None
        for _ in range(int(budget / 0.05) + 1):
            views = [self.view(x) for x in nodes]
            last = views
            if all(isinstance(v, dict) and {m.get("id"): m.get("region")
                                             for m in v.get("nodes") or []
                                             if isinstance(m, dict)} == want
                   for v in views):
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        raise AssertionError("members not registered with their regions within "
                             "%.0f s: %r" % (budget, last))

    def add_joining(self, node_id, join_via, region=None, extra=None, wait=True):
        """A new node with an empty data dir that joins through join_via."""
        x = Node(node_id=node_id)
        x.region = region or self.region_of(node_id)
        x.args = (self.common_args(x) + list(extra or [])
                  + ["--join", "127.0.0.1:%d" % join_via.http_port])
        self.nodes.append(x)
        x.start(wait=wait, extra_args=None)
        return x

    def node(self, node_id):
        for x in self.nodes:
            if x.node_id == node_id:
                return x
        raise KeyError(node_id)

    def running(self):
        return [x for x in self.nodes if x.running()]

    def cleanup(self):
        for a in self._admins:
            a.close()
        try:
            for x in self.nodes:
                x.cleanup()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- clients -------------------------------------------------------------

    def admin(self, node):
        """An Admin client of node with the cluster's token (closed by
        cleanup())."""
        a = Admin(node.http_port, self.token)
        self._admins.append(a)
        return a

    def view(self, node):
        """node's GET /admin/v1/cluster document, or None."""
        a = Admin(node.http_port, self.token, timeout=3.0)
        try:
            return get_json(a, "/admin/v1/cluster")
        finally:
            a.close()

    def digest(self, node):
        """node's GET /admin/v1/digest document, or None."""
        a = Admin(node.http_port, self.token, timeout=3.0)
        try:
            return get_json(a, "/admin/v1/digest")
        finally:
            a.close()

    def wait_leader(self, budget=CLUSTER_READY_BUDGET, among=None):
        """Poll /admin/v1/cluster on the running nodes (or `among`) until all
        name the same leader, which is one of them; return that Node."""
        deadline = time.monotonic() + budget
        last = None
        for _ in range(int(budget / 0.1) + 1):
            nodes = among if among is not None else self.running()
            views = [self.view(x) for x in nodes]
            last = views
            ids = {v.get("leader") if isinstance(v, dict) else None for v in views}
            if len(ids) == 1:
                lid = ids.pop()
                for x in nodes:
                    if x.node_id == lid:
                        return x
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        raise AssertionError("no agreed leader within %.0f s; views: %r" % (budget, last))

    def followers(self, leader):
        return [x for x in self.running() if x is not leader]

    def wait_applied(self, index, nodes=None, budget=CONVERGE_BUDGET):
        """Wait until every node (running ones by default) has applied index."""
        deadline = time.monotonic() + budget
        last = None
        for _ in range(int(budget / 0.05) + 1):
            docs = [self.digest(x) for x in (nodes or self.running())]
            last = docs
            if all(isinstance(d, dict) and isinstance(d.get("index"), int)
                   and d["index"] >= index for d in docs):
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        raise AssertionError("index %d not applied everywhere within %.0f s: %r"
                             % (index, budget, last))

    def wait_converged(self, nodes=None, budget=CONVERGE_BUDGET):
        """Poll /admin/v1/digest on every node (running ones by default) until
        all report the same index and SHA-256; return (index, sha256)."""
        deadline = time.monotonic() + budget
        last = None
        for _ in range(int(budget / 0.1) + 1):
            docs = [self.digest(x) for x in (nodes or self.running())]
            last = docs
            if all(isinstance(d, dict) for d in docs):
                pairs = {(d.get("index"), d.get("sha256")) for d in docs}
                if len(pairs) == 1:
                    return pairs.pop()
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        raise AssertionError("replicas not converged within %.0f s: %r" % (budget, last))


class ClusterTestCase(NodeTestCase):
    """A test that starts its own region cluster (`start_cluster`). After the
    test, every running node must reach the same digest at the same index,
    then stop gracefully (exit 0, no sanitizer report)."""

    ACCOUNT = "acme"

    def run(self, result=None):
        """Run the test; on failure print the log tail of every cluster node,
        and only then remove the cluster's directories."""
        if result is None:
            result = self.defaultTestResult()
        before = len(result.failures) + len(result.errors)
        try:
            out = unittest.TestCase.run(self, result)
            if len(result.failures) + len(result.errors) > before:
                for node in list(getattr(self, "nodes", [])):
                    sys.stderr.write("\n%s: %s\n" % (self.id(), node.log_tail()))
        finally:
            if getattr(self, "cluster", None) is not None:
                self.cluster.cleanup()
        return out

    def setUp(self):
        self.nodes = []
        self.cluster = None
        self.key = None

    def start_cluster(self, n=3, regions=("z1", "z2", "z3"), extra=None):
        c = Cluster(n, regions, extra)
        self.cluster = c         # cleaned up by run()
        self.nodes = c.nodes     # the same list: joined nodes show up too
        self.cluster_started = False
        c.start()
        leader = c.wait_leader()
        r = c.admin(leader).put("/admin/v1/accounts/%s/key" % self.ACCOUNT, None)
        if r.status != 201:
            raise AssertionError("PUT key on the leader: %r" % (r,))
        self.key = r.json()["apiKey"]
        # The key must be applied on every node before it is used there.
        idx = r.headers.get("x-context-index")
        if idx is not None and idx.isdigit():
            c.wait_applied(int(idx))
        else:
            c.wait_converged()
        self.cluster_started = True
        return c

    def client(self, node, timeout=HTTP_TIMEOUT):
        cl = node.client(self.key, timeout=timeout)
        self.addCleanup(cl.close)
        return cl

    def tearDown(self):
        c = self.cluster
        if c is None or not getattr(self, "cluster_started", False):
            return
        running = c.running()
        if running:
            c.wait_converged(running)
        for x in running:
            x.stop()
