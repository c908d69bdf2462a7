"""Shared pieces of cluster/bench: ctxd and etcd clusters on loopback, runs
of the load generator (wrk, or ctxd_load from tests/bench/load.c), CPU
accounting from /proc, and table printing.

Invariants: every server this module starts is started in its own process
group and is stopped (SIGTERM, then SIGKILL after a bound) by stop(); every
wait is bounded; every load run is bounded by its -d duration and a timeout
on collecting its output. Addresses are loopback only (127.0.0.1).
"""

import base64
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LUA = os.path.join(ROOT, "cluster", "bench.lua")
ETCD_LUA = os.path.join(ROOT, "cluster", "bench_etcd.lua")
ACC, NS = "bench", "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
RESULT = re.compile(r"RESULT (.*)")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def port_range_free(ports):
    try:
        for p in ports:
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", p))
            finally:
                s.close()
        return True
    except OSError:
        return False


def free_base(n, offset=1000):
    """A port P such that P..P+n-1 and P+offset..P+offset+n-1 are free."""
    for _ in range(200):
        base = free_port()
        if base + offset + n >= 65535:
            continue
        if port_range_free(list(range(base, base + n)) +
                           list(range(base + offset, base + offset + n))):
            return base
    sys.exit("bench: no free port range")


def call(port, method, path, body=None, headers=None, timeout=5.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def wait_ready(ports, path="/readyz", budget=30.0):
    end = time.monotonic() + budget
    while time.monotonic() < end:
        ok = 0
        for p in ports:
            try:
                if call(p, "GET", path, timeout=1.0)[0] == 200:
                    ok += 1
            except (OSError, http.client.HTTPException):
                pass
        if ok == len(ports):
            return
        time.sleep(0.1)
    sys.exit("bench: nodes not ready in %.0f s" % budget)


def build():
    out = subprocess.run([os.path.join(ROOT, "cluster", "build")],
                         env=dict(os.environ,
                                  CTXD_BUILD_DIR=os.path.join(ROOT, "build-release")),
                         stdout=subprocess.PIPE, check=True, text=True)
    return os.path.join(out.stdout.strip().splitlines()[-1], "ctxd")


def raise_nofile(n=65536):
    """Raise the open-file limit (inherited by wrk and the servers)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(n, hard) if hard != resource.RLIM_INFINITY else n
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def cpu_ticks(pids):
    """utime + stime of the given processes, in clock ticks."""
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
    return total


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def stop_proc(proc, grace=20.0):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def metrics_text(port, timeout=10.0):
    """A node's GET /metrics (no key needed), or "" when it does not answer
    200."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", "/metrics")
        r = c.getresponse()
        body = r.read()
        return body.decode("utf-8", "replace") if r.status == 200 else ""
    except (OSError, http.client.HTTPException):
        return ""
    finally:
        c.close()


def metric_values(port, names):
    """{name: value} of the node's unlabelled /metrics samples in names
    (absent ones left out)."""
    out = {}
    for line in metrics_text(port).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in names:
            out[parts[0]] = float(parts[1])
    return out


class Ctxd:
    """N ctxd nodes started here (each in its own session), ids 1..N."""

    def __init__(self, binary, nodes, work, extra=(), log_level="warn"):
        self.binary = binary
        self.work = work
        self.nodes = nodes
        self.extra = list(extra)
        self.log_level = log_level
        self.token = "bench-admin-token"
        self.secret = "bench-cluster-secret"
        base = free_base(nodes)
        self.ports = [base + i for i in range(nodes)]
        self.raft = [base + 1000 + i for i in range(nodes)]
        self.spec = ",".join("%d=127.0.0.1:%d@127.0.0.1:%d" % (i + 1, self.raft[i], self.ports[i])
                             for i in range(nodes))
        self.procs = {}
        for i in range(nodes):
            self.start(i + 1)
        wait_ready(self.ports)

    def argv(self, nid):
        i = nid - 1
        a = [self.binary, "--id", str(nid),
             "--data-dir", os.path.join(self.work, "node%d" % nid, "data"),
             "--http-addr", "127.0.0.1:%d" % self.ports[i],
             "--raft-addr", "127.0.0.1:%d" % self.raft[i],
             "--log-level", self.log_level]
        if self.nodes > 1:
            a += ["--cluster", self.spec]
        return a + self.extra

    def log_path(self, nid):
        return os.path.join(self.work, "node%d" % nid, "ctxd.log")

    def start(self, nid, argv=None):
        os.makedirs(os.path.join(self.work, "node%d" % nid), exist_ok=True)
        env = dict(os.environ, CTXD_ADMIN_TOKEN=self.token,
                   CTXD_CLUSTER_SECRET=self.secret)
        env.pop("CTXD_ADMIN_TOKEN_FILE", None)
        env.pop("CTXD_CLUSTER_SECRET_FILE", None)
        with open(self.log_path(nid), "ab") as log:
            self.procs[nid] = subprocess.Popen(
                argv or self.argv(nid), stdin=subprocess.DEVNULL, stdout=log,
                stderr=log, env=env, start_new_session=True)

    def port_of(self, nid):
        return self.ports[nid - 1]

    def pids(self):
        return [p.pid for p in self.procs.values() if p.poll() is None]

    def admin(self, port, method, path, body=None, timeout=5.0):
        return call(port, method, path, body=body, timeout=timeout,
                    headers={"Authorization": "Bearer " + self.token})

    def leader_port(self):
        for p in self.ports:
            try:
                st, body = self.admin(p, "GET", "/admin/v1/cluster")
            except (OSError, http.client.HTTPException):
                continue
            if st != 200:
                continue
            doc = json.loads(body)
            for n in doc.get("nodes", []):
                if n["id"] == doc.get("leader"):
                    return int(n["httpAddress"].rsplit(":", 1)[1])
        sys.exit("bench: no ctxd leader")

    def api_key(self):
        st, body = self.admin(self.ports[0], "PUT", "/admin/v1/accounts/%s/key" % ACC)
        if st != 201:
            sys.exit("bench: cannot create key: %d %r" % (st, body))
        key = json.loads(body)["apiKey"]
        # A follower learns the key once the write is applied there.
        end = time.monotonic() + 10
        for p in self.ports:
            while time.monotonic() < end:
                st, _ = call(p, "GET", "/v1/account/%s" % ACC,
                             headers={"maven-api-key": key})
                if st == 200:
                    break
                time.sleep(0.05)
        return key

    def join(self, nid, via_port):
        """Start node nid with an empty data dir, admitted through via_port."""
        base = free_base(1)
        self.ports.append(base)
        self.raft.append(base + 1000)
        assert len(self.ports) == nid
        argv = [self.binary, "--id", str(nid),
                "--data-dir", os.path.join(self.work, "node%d" % nid, "data"),
                "--http-addr", "127.0.0.1:%d" % base,
                "--raft-addr", "127.0.0.1:%d" % (base + 1000),
                "--log-level", self.log_level,
                "--join", "127.0.0.1:%d" % via_port] + self.extra
        self.start(nid, argv)

    def applied_index(self, port):
        """The node's applied index from /metrics (cheap at any data size,
        unlike the digest, which hashes every row), or None."""
        v = metric_values(port, ("ctxd_raft_applied_index",))
        return int(v["ctxd_raft_applied_index"]) if v else None

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            stop_proc(p)


class Etcd:
    """A 3-member (or N) etcd cluster from /usr/bin/etcd, default settings."""

    def __init__(self, work, members=3, binary="/usr/bin/etcd"):
        if not os.access(binary, os.X_OK):
            sys.exit("bench: %s missing (cluster/setup --bench installs etcd-server)" % binary)
        self.work = work
        base = free_base(members)
        self.ports = [base + i for i in range(members)]
        self.peer = [base + 1000 + i for i in range(members)]
        init = ",".join("m%d=http://127.0.0.1:%d" % (i + 1, self.peer[i])
                        for i in range(members))
        self.procs = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        for i in range(members):
            d = os.path.join(work, "etcd%d" % (i + 1))
            os.makedirs(d, exist_ok=True)
            argv = [binary, "--name", "m%d" % (i + 1), "--data-dir", os.path.join(d, "data"),
                    "--listen-client-urls", "http://127.0.0.1:%d" % self.ports[i],
                    "--advertise-client-urls", "http://127.0.0.1:%d" % self.ports[i],
                    "--listen-peer-urls", "http://127.0.0.1:%d" % self.peer[i],
                    "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % self.peer[i],
                    "--initial-cluster", init, "--initial-cluster-state", "new",
                    "--initial-cluster-token", "ctxd-bench"]
            with open(os.path.join(d, "etcd.log"), "ab") as log:
                self.procs.append(subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    env=env, cwd=d, start_new_session=True))
        wait_ready(self.ports, path="/health", budget=60.0)

    def pids(self):
        return [p.pid for p in self.procs if p.poll() is None]

    def leader_port(self):
        end = time.monotonic() + 20
        while time.monotonic() < end:
            for p in self.ports:
                try:
                    st, body = call(p, "POST", "/v3/maintenance/status", body=b"{}")
                except (OSError, http.client.HTTPException):
                    continue
                if st != 200:
                    continue
                doc = json.loads(body)
                if doc.get("leader") and doc["leader"] == doc["header"].get("member_id"):
                    return p
            time.sleep(0.2)
        sys.exit("bench: no etcd leader")

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            stop_proc(p)


def b64(s):
    return base64.b64encode(s.encode()).decode()


def wrk(port, mode, conns, threads, duration, env, lua=LUA, timeout_s=5):
    """Start one wrk; collect() reads its RESULT line."""
    cmd = ["wrk", "-t%d" % max(1, min(threads, conns)), "-c%d" % conns,
           "-d%ds" % duration, "--timeout", "%ds" % timeout_s, "-s", lua,
           "http://127.0.0.1:%d" % port]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, BENCH_MODE=mode, **env))


def http_request(port, method, path, headers, body=None):
    """One request as wrk.format writes it (Host, the headers, and
    Content-Length when there is a body), as bytes."""
    h = {"Host": "127.0.0.1:%d" % port}
    h.update(headers)
    data = body.encode() if body is not None else b""
    if body is not None:
        h["Content-Length"] = str(len(data))
    head = "%s %s HTTP/1.1\r\n" % (method, path)
    head += "".join("%s: %s\r\n" % kv for kv in h.items())
    return head.encode() + b"\r\n" + data


def ctxd_requests(port, key, mode, sessions, vbytes, consistency=""):
    """The distinct requests of bench.lua's put (PUT of property p) or
    getprop (GET of it, with ?consistency= when given) over sessions
    s0..s(N-1)."""
    value = '"' + "v" * (vbytes - 2) + '"'
    hdrs = {"maven-api-key": key, "Content-Type": "application/json"}
    suffix = "?consistency=" + consistency if consistency else ""
    out = []
    for s in range(sessions):
        path = "/v1/account/%s/%s/s%d/properties/p" % (ACC, NS, s)
        if mode == "put":
            out.append(http_request(port, "PUT", path, hdrs, value))
        elif mode == "getprop":
            out.append(http_request(port, "GET", path + suffix, hdrs))
        else:
            raise ValueError("ctxd_load has no mode %r" % mode)
    return out


def etcd_requests(port, mode, keys, vbytes, serializable=False):
    """The distinct requests of bench_etcd.lua's put and range."""
    value = base64.b64encode(b"v" * vbytes).decode()
    hdrs = {"Content-Type": "application/json"}
    extra = ',"serializable":true' if serializable else ""
    out = []
    for i in range(keys):
        if mode == "put":
            out.append(http_request(port, "POST", "/v3/kv/put", hdrs,
                                    '{"key":"%s","value":"%s"}' % (b64("k%d" % i), value)))
        elif mode == "range":
            out.append(http_request(port, "POST", "/v3/kv/range", hdrs,
                                    '{"key":"%s"%s}' % (b64("k%d" % i), extra)))
        else:
            raise ValueError("ctxd_load has no etcd mode %r" % mode)
    return out


def write_requests(path, requests):
    """The request file of ctxd_load: each request's length, a newline and
    the request."""
    with open(path, "wb") as f:
        for r in requests:
            f.write(b"%d\n" % len(r))
            f.write(r)
    return path


def load_binary():
    """ctxd_load of the release build (tests/bench/load.c), built if needed."""
    path = os.path.join(ROOT, "build-release", "ctxd_load")
    if not os.access(path, os.X_OK):
        build()
    return path


def load(port, reqfile, conns, threads, duration, timeout_s=5):
    """Start one ctxd_load on reqfile; collect() reads its RESULT line."""
    cmd = [load_binary(), "-c%d" % conns, "-t%d" % max(1, min(threads, conns)),
           "-d%d" % duration, "-T%d" % timeout_s, reqfile, "127.0.0.1", str(port)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def collect(procs, wait=900):
    total = {"rps": 0.0, "p50_ms": 0.0, "p99_ms": 0.0, "p999_ms": 0.0,
             "errors": 0, "requests": 0}
    for p in procs:
        try:
            out, _ = p.communicate(timeout=wait)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        m = RESULT.search(out or "")
        if not m:
            total["errors"] += 1
            continue
        kv = dict(x.split("=") for x in m.group(1).split())
        total["rps"] += float(kv["rps"])
        total["requests"] += int(kv["requests"])
        total["errors"] += int(kv["errors"])
        # Percentiles of a sum of runs: report the worst run's (conservative).
        for k in ("p50_ms", "p99_ms", "p999_ms"):
            total[k] = max(total[k], float(kv.get(k, 0)))
    return total


def measured(pids, start):
    """Run the wrk processes start() returns; add CPU ms per request."""
    t0 = cpu_ticks(pids)
    r = collect(start())
    t1 = cpu_ticks(pids)
    r["cpu_ms"] = ((t1 - t0) * 1000.0 / CLK_TCK / r["requests"]) if r["requests"] else 0.0
    return r


def median_result(results):
    """Median of each figure over runs; None when any run had errors."""
    if not results or any(r["errors"] for r in results):
        return None
    return {k: statistics.median(r[k] for r in results)
            for k in ("rps", "p50_ms", "p99_ms", "p999_ms", "cpu_ms")}


def which_or_setup(tool):
    if shutil.which(tool) is None:
        subprocess.run([os.path.join(ROOT, "cluster", "setup"), "--bench"], check=True)


def fill(port, requests, conc=16, timeout=30.0):
    """Send every (method, path, body, headers) once over conc kept-alive
    connections; exit on any answer that is not 2xx."""
    import threading
    lock = threading.Lock()
    it = iter(requests)
    failures = []

    def worker():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            while not failures:
                with lock:
                    item = next(it, None)
                if item is None:
                    return
                method, path, body, headers = item
                for attempt in range(3):
                    try:
                        c.request(method, path, body=body, headers=headers)
                        r = c.getresponse()
                        r.read()
                        if r.status // 100 != 2:
                            failures.append("%s %s: %d" % (method, path, r.status))
                        break
                    except (OSError, http.client.HTTPException) as e:
                        c.close()
                        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                        if attempt == 2:
                            failures.append("%s %s: %s" % (method, path, e))
        finally:
            c.close()

    threads = [threading.Thread(target=worker) for _ in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        sys.exit("bench: fill failed: %s" % failures[0])


def filled_cluster(binary, work, sessions, vbytes):
    """A fresh 3-node cluster of binary under work, filled with sessions
    sessions of one vbytes property each: (cluster, wrk env, leader port).
    The caller stops the cluster, also when this raises."""
    cl = Ctxd(binary, 3, work)
    try:
        env = {"BENCH_KEY": cl.api_key(), "BENCH_ACC": ACC, "BENCH_NS": NS,
               "BENCH_SESSIONS": str(sessions), "BENCH_VALUE_BYTES": str(vbytes)}
        leader = cl.leader_port()
        ctxd_fill(leader, env["BENCH_KEY"], sessions, vbytes)
    except BaseException:
        cl.stop()
        raise
    return cl, env, leader


def ctxd_fill(port, key, sessions, vbytes, props=1, batch=500, conc=16, ns=NS):
    """Every session s0..s(N-1) gets properties p (props=1) or p0..p(props-1),
    batch properties per PATCH."""
    value = '"' + "v" * (vbytes - 2) + '"'
    hdrs = {"maven-api-key": key, "Content-Type": "application/json"}

    def gen():
        for s in range(sessions):
            path = "/v1/account/%s/%s/s%d/properties" % (ACC, ns, s)
            if props <= 1:
                yield "PATCH", path, '{"p":%s}' % value, hdrs
                continue
            for b in range(0, props, batch):
                body = "{" + ",".join('"p%d":%s' % (j, value)
                                      for j in range(b, min(props, b + batch))) + "}"
                yield "PATCH", path, body, hdrs
    fill(port, gen(), conc)


def etcd_fill(port, keys, vbytes, conc=16):
    value = base64.b64encode(b"v" * vbytes).decode()
    hdrs = {"Content-Type": "application/json"}
    fill(port, (("POST", "/v3/kv/put", '{"key":"%s","value":"%s"}' % (b64("k%d" % i), value),
                 hdrs) for i in range(keys)), conc)
