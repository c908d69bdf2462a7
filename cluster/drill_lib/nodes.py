"""The ctxd processes of one drill cluster, and the HTTP calls the drill makes.

A `Cluster` of n nodes (ids 1..n, regions given round-robin) lives in one
temporary directory: admin.token and cluster.secret (mode 0600, shared by
every node), nodeI/data and nodeI/ctxd.log. With a `net.Net`, node I runs
inside its namespace (`ip netns exec`, which execs ctxd itself, so the pid we
hold is ctxd's) and listens on 10.77.S.I:8080 (HTTP) and :9080 (Raft);
without, on 127.0.0.1 with free ports.

Invariants: every process started is recorded in `procs` and killed by
`close()`; `kill(i)` is kill -9 and waits for the exit; `start(i)` reuses the
node's data dir (the --cluster spec only matters on first start); every HTTP
call has a timeout and every wait is bounded.
"""

import http.client
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time

HTTP_TIMEOUT_S = 3.0          # admin calls of the drill itself
READY_BUDGET_S = 30.0         # bound on a cluster becoming ready
KILL_WAIT_S = 10.0            # bound on a killed process exiting
HTTP_PORT = 8080              # in a namespace
RAFT_PORT = 9080              # in a namespace
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                     "runtime error:", "SUMMARY: UndefinedBehaviorSanitizer")


class ClusterError(Exception):
    """The cluster did not start or answer as expected."""


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def http_call(host, port, method, path, body=None, headers=None,
              timeout=HTTP_TIMEOUT_S):
    """(status, body bytes) or (None, error text). One connection per call."""
    try:
        c = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            h = dict(headers or {})
            data = None
            if body is not None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                h["Content-Type"] = "application/json"
            c.request(method, path, body=data, headers=h)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()
    except (OSError, http.client.HTTPException) as e:
        return None, str(e)


def write_secret(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


class Cluster:
    """n ctxd nodes for one drill run."""

    def __init__(self, binary, n, regions, net=None, extra=None, keep=False):
        self.binary = binary                    # ctxd path
        self.n = n                              # node count
        self.net = net                          # net.Net, or None for loopback
        self.extra = list(extra or [])          # flags for every node
        self.keep = keep                        # keep the directory on close
        self.dir = tempfile.mkdtemp(prefix="ctxd-drill-%d-" % os.getpid())
        self.token = secrets.token_hex(32)      # admin token
        self.token_file = os.path.join(self.dir, "admin.token")
        self.secret_file = os.path.join(self.dir, "cluster.secret")
        write_secret(self.token_file, self.token)
        write_secret(self.secret_file, secrets.token_hex(32))
        self.procs = {}                         # id -> Popen of the running process
        self.lock = threading.Lock()            # guards procs
        self.nodes = {}                         # id -> {host, http, raft, region, dir, log}
        for i in range(1, n + 1):
            if net is not None:
                host, hp, rp = net.addr(i), HTTP_PORT, RAFT_PORT
            else:
                host, hp, rp = "127.0.0.1", free_port(), free_port()
            nd = os.path.join(self.dir, "node%d" % i)
            os.makedirs(nd, mode=0o700)
            self.nodes[i] = {"host": host, "http": hp, "raft": rp,
                             "region": regions[(i - 1) % len(regions)],
                             "dir": nd, "log": os.path.join(nd, "ctxd.log")}
        self.spec = ",".join("%d=%s:%d@%s:%d" % (i, x["host"], x["raft"], x["host"], x["http"])
                             for i, x in sorted(self.nodes.items()))

    def ids(self):
        return sorted(self.nodes)

    def region_nodes(self):
        out = {}
        for i, x in sorted(self.nodes.items()):
            out.setdefault(x["region"], []).append(i)
        return out

    def start(self, i):
        x = self.nodes[i]
        argv = [self.binary, "--id", str(i), "--data-dir", os.path.join(x["dir"], "data"),
                "--http-addr", "%s:%d" % (x["host"], x["http"]),
                "--raft-addr", "%s:%d" % (x["host"], x["raft"]),
                "--region", x["region"], "--admin-token-file", self.token_file,
                "--cluster-secret-file", self.secret_file, "--cluster", self.spec]
        argv += self.extra
        if self.net is not None:
            argv = self.net.exec_prefix(i) + argv
        env = dict(os.environ)
        for k in ("CTXD_ADMIN_TOKEN", "CTXD_CLUSTER_SECRET", "CTXD_CLUSTER", "CTXD_JOIN"):
            env.pop(k, None)
        with open(x["log"], "ab") as log:
            log.write(("--- drill: start at %.3f\n" % time.monotonic()).encode())
            log.flush()
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 cwd=x["dir"], env=env, start_new_session=True)
        with self.lock:
            self.procs[i] = p

    def kill(self, i):
        """kill -9 node i (if running) and wait for it to exit."""
        with self.lock:
            p = self.procs.pop(i, None)
        if p is None:
            return
        if p.poll() is None:
            p.kill()
        try:
            p.wait(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            raise ClusterError("node %d (pid %d) survived SIGKILL" % (i, p.pid))

    def running(self):
        with self.lock:
            return sorted(i for i, p in self.procs.items() if p.poll() is None)

    def exited(self):
        """{id: exit code} of processes that ended without the drill killing them."""
        with self.lock:
            return {i: p.returncode for i, p in self.procs.items() if p.poll() is not None}

    def call(self, i, method, path, body=None, timeout=HTTP_TIMEOUT_S):
        x = self.nodes[i]
        return http_call(x["host"], x["http"], method, path, body,
                         {"Authorization": "Bearer " + self.token}, timeout)

    def json(self, i, method, path, body=None, timeout=HTTP_TIMEOUT_S):
        """(status, parsed JSON or None)."""
        st, raw = self.call(i, method, path, body, timeout)
        if st is None:
            return None, None
        try:
            return st, json.loads(raw)
        except ValueError:
            return st, None

    def view(self, i):
        st, doc = self.json(i, "GET", "/admin/v1/cluster")
        return doc if st == 200 and isinstance(doc, dict) else None

    def digest(self, i):
        st, doc = self.json(i, "GET", "/admin/v1/digest")
        return doc if st == 200 and isinstance(doc, dict) else None

    def digests(self, ids):
        """{id: digest doc or None}, fetched in parallel."""
        out = {}

        def one(i):
            out[i] = self.digest(i)
        ts = [threading.Thread(target=one, args=(i,)) for i in ids]
        for t in ts:
            t.start()
        for t in ts:
            t.join(HTTP_TIMEOUT_S + 2)
        return out

    def leader(self, among=None, budget=READY_BUDGET_S):
        """The leader id all of `among` (default: running nodes) agree on."""
        deadline = time.monotonic() + budget
        last = None
        while True:
            nodes = among if among is not None else self.running()
            views = [self.view(i) for i in nodes]
            last = views
            ids = {v.get("leader") if v else None for v in views}
            if len(ids) == 1:
                lid = ids.pop()
                if lid in nodes:
                    return lid
            if time.monotonic() > deadline:
                raise ClusterError("no agreed leader within %.0f s: %r" % (budget, last))
            time.sleep(0.1)

    def start_all(self, budget=READY_BUDGET_S):
        """Start every node; wait for /readyz everywhere, a leader, and every
        node registered with its region in every view."""
        for i in self.ids():
            self.start(i)
        self.wait_ready(self.ids(), budget)
        self.leader(budget=budget)
        deadline = time.monotonic() + budget
        want = {i: x["region"] for i, x in self.nodes.items()}
        while True:
            views = [self.view(i) for i in self.ids()]
            if all(v and {m.get("id"): m.get("region") for m in v.get("nodes") or []
                          if isinstance(m, dict)} == want for v in views):
                return
            if time.monotonic() > deadline:
                raise ClusterError("members not registered within %.0f s" % budget)
            time.sleep(0.1)

    def wait_ready(self, ids, budget=READY_BUDGET_S):
        deadline = time.monotonic() + budget
        pending = set(ids)
        while pending:
            for i in sorted(pending):
                with self.lock:
                    p = self.procs.get(i)
                if p is not None and p.poll() is not None:
                    raise ClusterError("node %d exited with %s; log %s"
                                       % (i, p.returncode, self.nodes[i]["log"]))
                x = self.nodes[i]
                st, _ = http_call(x["host"], x["http"], "GET", "/readyz", timeout=1.0)
                if st == 200:
                    pending.discard(i)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ClusterError("nodes %s not ready within %.0f s"
                                   % (sorted(pending), budget))
            time.sleep(0.1)

    def create_account(self, acc):
        """The API key of account acc (created through any node)."""
        for _ in range(50):
            for i in self.running():
                st, doc = self.json(i, "PUT", "/admin/v1/accounts/%s/key" % acc, timeout=5.0)
                if st in (200, 201) and isinstance(doc, dict) and doc.get("apiKey"):
                    return doc["apiKey"]
            time.sleep(0.2)
        raise ClusterError("cannot create account %s" % acc)

    def wait_key_everywhere(self, path, api_key, budget=READY_BUDGET_S):
        """Wait until every node accepts api_key (a GET of path answers
        anything but 401). A node checks keys against its own applied state,
        so a key just created may be refused by a node that has not applied
        its creation yet."""
        deadline = time.monotonic() + budget
        pending = set(self.ids())
        while pending:
            for i in sorted(pending):
                x = self.nodes[i]
                st, _ = http_call(x["host"], x["http"], "GET", path,
                                  headers={"maven-api-key": api_key}, timeout=2.0)
                if st is not None and st != 401:
                    pending.discard(i)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ClusterError("nodes %s still refuse the new API key after %.0f s"
                                   % (sorted(pending), budget))
            time.sleep(0.05)

    def sanitizer_reports(self):
        """{id: first sanitizer report line} of the nodes whose log has one
        (ASan/UBSan builds under fault are part of what a drill checks)."""
        out = {}
        for i, x in sorted(self.nodes.items()):
            try:
                with open(x["log"], "rb") as f:
                    text = f.read().decode("utf-8", "replace")
            except OSError:
                continue
            for line in text.splitlines():
                if any(m in line for m in SANITIZER_MARKERS):
                    out[i] = line.strip()
                    break
        return out

    def log_tail(self, i, lines=30):
        try:
            with open(self.nodes[i]["log"], "rb") as f:
                text = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def close(self):
        """Kill every process; remove the directory unless kept."""
        for i in list(self.procs):
            try:
                self.kill(i)
            except ClusterError:
                pass
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
