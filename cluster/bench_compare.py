"""cluster/bench --compare etcd: the same workload against a 3-node ctxd
cluster and a 3-member etcd cluster, one after the other, on loopback.

ctxd: PUT /v1/account/bench/bench/sK/properties/p (one property per session,
100-byte JSON value, 10,000 sessions) and GET of that property (default
linearizable, or ?consistency=stale). etcd: POST /v3/kv/put and
POST /v3/kv/range (linearizable, or "serializable": true) of key kK.

Each run starts fresh servers in a temp dir, fills every key once, runs every
cell (workload x connections) for --duration seconds, and stops the servers.
By default a run does every cell on ctxd, then every cell on etcd. With
--paired both clusters are up together and each cell runs on one system and
right after on the other (ctxd first in odd runs, etcd first in even ones),
so a slow spell of a shared machine hits both sides of a cell; the idle
cluster's CPU while the other runs is printed.
With --runs N the table shows the median of each figure over N runs. A cell
with errors in any run gives no figure. CPU ms per request is utime+stime of
the three server processes over the cell, divided by its requests.

The load generator (--load) is ctxd_load (tests/bench/load.c), one thread
by default, or wrk (two threads by default) with cluster/bench.lua and
bench_etcd.lua. Either sends the same requests to both systems: ctxd_load
reads them from a file written here (bench_lib.ctxd_requests and
etcd_requests: the request line, headers and body the Lua scripts format)
and picks one at random per request, as the scripts do.
"""

import json
import os
import shutil
import sys
import tempfile
import time

import bench_lib as bl

# (label, ctxd target, ctxd mode, ctxd consistency, etcd target, etcd mode, serializable)
WORKLOADS = [
    ("write leader", "leader", "put", "", "leader", "put", False),
    ("write follower", "follower", "put", "", "follower", "put", False),
    ("read leader", "leader", "getprop", "", "leader", "range", False),
    ("read follower", "follower", "getprop", "", "follower", "range", False),
    ("stale read follower", "follower", "getprop", "stale", "follower", "range", True),
]


class Side:
    """A filled 3-member cluster of one system and how to run one cell on
    it. A subclass gives its name, the environment of its wrk script
    (base_env), how to fill it (fill) and a workload's target, mode, extra
    environment and script (parts)."""

    def __init__(self, cluster, work, keys, vbytes):
        self.cluster = cluster
        self.work = work
        self.keys = keys
        self.vbytes = vbytes
        self.files = {}  # (workload label, port): ctxd_load request file
        try:
            self.env = self.base_env(keys, vbytes)
            self.leader = cluster.leader_port()
            self.follower = [p for p in cluster.ports if p != self.leader][0]
            self.fill(keys, vbytes)
        except BaseException:
            cluster.stop()
            raise

    def pids(self):
        return self.cluster.pids()

    def cell(self, workload, c, threads, duration, gen):
        tgt, mode, extra, lua = self.parts(workload)
        port = self.leader if tgt == "leader" else self.follower
        if gen == "wrk":
            e = dict(self.env, **extra)
            return bl.measured(self.pids(), lambda: [bl.wrk(port, mode, c, threads, duration,
                                                            e, lua=lua)])
        key = (workload[0], port)
        if key not in self.files:
            self.files[key] = bl.write_requests(
                os.path.join(self.work, "requests-%d" % len(self.files)),
                self.requests(workload, port))
        f = self.files[key]
        return bl.measured(self.pids(), lambda: [bl.load(port, f, c, threads, duration)])


class CtxdSide(Side):
    name = "ctxd"

    def __init__(self, binary, work, keys, vbytes):
        super().__init__(bl.Ctxd(binary, 3, work), work, keys, vbytes)

    def base_env(self, keys, vbytes):
        return {"BENCH_KEY": self.cluster.api_key(), "BENCH_ACC": bl.ACC,
                "BENCH_NS": bl.NS, "BENCH_SESSIONS": str(keys),
                "BENCH_VALUE_BYTES": str(vbytes)}

    def fill(self, keys, vbytes):
        bl.ctxd_fill(self.leader, self.env["BENCH_KEY"], keys, vbytes)

    def parts(self, workload):
        _, tgt, mode, cons, _, _, _ = workload
        return tgt, mode, {"BENCH_CONSISTENCY": cons}, bl.LUA

    def requests(self, workload, port):
        _, _, mode, cons, _, _, _ = workload
        return bl.ctxd_requests(port, self.env["BENCH_KEY"], mode, self.keys, self.vbytes,
                                cons)


class EtcdSide(Side):
    name = "etcd"

    def __init__(self, work, keys, vbytes):
        super().__init__(bl.Etcd(work), work, keys, vbytes)

    def base_env(self, keys, vbytes):
        return {"BENCH_SESSIONS": str(keys), "BENCH_VALUE_BYTES": str(vbytes)}

    def fill(self, keys, vbytes):
        bl.etcd_fill(self.leader, keys, vbytes)

    def parts(self, workload):
        _, _, _, _, tgt, mode, ser = workload
        return tgt, mode, {"BENCH_SERIALIZABLE": "1" if ser else "0"}, bl.ETCD_LUA

    def requests(self, workload, port):
        _, _, _, _, _, mode, ser = workload
        return bl.etcd_requests(port, mode, self.keys, self.vbytes, ser)


def run_sides(makers, conns, duration, threads, gen):
    """Start the sides (each maker takes a work dir and returns a side),
    then run every cell on each side in turn: a side alone runs all its
    cells; two sides (--paired) run each cell on one and at once on the
    other, in the order given, so that a slow spell of the machine, which
    lasts about a minute here, falls on both figures of a cell instead of
    on one system's whole run. The side not measured idles meanwhile; its
    CPU is added up and printed."""
    work = tempfile.mkdtemp(prefix="cmp-")
    sides = []
    out = {}
    idle = {}  # side name: [ticks, seconds]
    try:
        for i, make in enumerate(makers):
            sides.append(make(os.path.join(work, str(i))))
            out[sides[-1].name] = {}
            idle[sides[-1].name] = [0, 0.0]
        for c in conns:
            for w in WORKLOADS:
                for side in sides:
                    others = [o for o in sides if o is not side]
                    t0 = [bl.cpu_ticks(o.pids()) for o in others]
                    w0 = time.monotonic()
                    r = out[side.name][(w[0], c)] = side.cell(w, c, threads, duration, gen)
                    for o, t in zip(others, t0):
                        idle[o.name][0] += bl.cpu_ticks(o.pids()) - t
                        idle[o.name][1] += time.monotonic() - w0
                    progress(side.name, w[0], c, r)
        if len(sides) > 1:
            for name, (ticks, secs) in idle.items():
                sys.stderr.write("  idle %s: %.1f %% of one core while the other ran\n"
                                 % (name, 100.0 * ticks / bl.CLK_TCK / max(secs, 1e-9)))
    finally:
        for side in sides:
            side.cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    return out


def progress(system, label, c, r):
    sys.stderr.write("  %-5s %-20s %4d  %8.0f req/s  p99 %7.2f ms  cpu %.3f ms  errors %d\n"
                     % (system, label, c, r["rps"], r["p99_ms"], r["cpu_ms"], r["errors"]))
    sys.stderr.flush()


def fmt(m, k, f):
    return (f % m[k]) if m is not None else "-"


def ratio(a, b, k):
    if a is None or b is None or not b[k]:
        return "-"
    return "%.2f" % (a[k] / b[k])


def print_table(runs, conns, gen):
    print("%-20s %5s | %-44s | %-44s | %s" % (
        "", "", "ctxd (3 nodes)", "etcd 3.4 (3 members)", "ctxd/etcd"))
    print("%-20s %5s | %9s %7s %7s %8s %8s | %9s %7s %7s %8s %8s | %6s %6s %6s" % (
        "workload", "conns", "req/s", "p50", "p99", "p99.9", "cpu ms",
        "req/s", "p50", "p99", "p99.9", "cpu ms", "req/s", "p99", "cpu"))
    for c in conns:
        for label, *_ in WORKLOADS:
            a = bl.median_result([r["ctxd"][(label, c)] for r in runs])
            b = bl.median_result([r["etcd"][(label, c)] for r in runs])
            cells = []
            for m in (a, b):
                cells += [fmt(m, "rps", "%.0f"), fmt(m, "p50_ms", "%.2f"),
                          fmt(m, "p99_ms", "%.2f"), fmt(m, "p999_ms", "%.2f"),
                          fmt(m, "cpu_ms", "%.3f")]
            print("%-20s %5d | %9s %7s %7s %8s %8s | %9s %7s %7s %8s %8s | %6s %6s %6s" % (
                (label, c) + tuple(cells) +
                (ratio(a, b, "rps"), ratio(a, b, "p99_ms"), ratio(a, b, "cpu_ms"))))
    errs = [(s, k) for r in runs for s in ("ctxd", "etcd") for k, v in r[s].items()
            if v["errors"]]
    for s, (label, c) in errs:
        print("errors: %s %s %d connections (no figure)" % (s, label, c))
    print("latencies in ms; cpu ms = server CPU (utime+stime, 3 processes) per request; "
          "median of %d run(s); load generator %s" % (len(runs), gen))


def main(args):
    gen = args.load or "ctxd_load"
    threads = args.threads or (2 if gen == "wrk" else 1)
    if gen == "wrk":
        bl.which_or_setup("wrk")
    else:
        bl.load_binary()
    if not os.access("/usr/bin/etcd", os.X_OK):
        bl.which_or_setup("etcd")
    bl.raise_nofile()
    conns = [int(x) for x in (args.connections or "16,64,256").split(",")]
    duration = 3 if args.quick else args.duration
    binary = args.bin or bl.build()
    runs = []
    t0 = time.monotonic()

    def ctxd(work):
        return CtxdSide(binary, work, args.sessions, args.value_bytes)

    def etcd(work):
        return EtcdSide(work, args.sessions, args.value_bytes)

    for i in range(args.runs):
        if args.paired:
            makers = [ctxd, etcd] if i % 2 == 0 else [etcd, ctxd]
            sys.stderr.write("run %d/%d: paired, %s first in each cell\n"
                             % (i + 1, args.runs, "ctxd" if i % 2 == 0 else "etcd"))
            runs.append(run_sides(makers, conns, duration, threads, gen))
            continue
        r = {}
        for make in (ctxd, etcd):
            sys.stderr.write("run %d/%d: %s\n" % (i + 1, args.runs, make.__name__))
            r.update(run_sides([make], conns, duration, threads, gen))
        runs.append(r)
    print_table(runs, conns, gen)
    print("total %.0f s" % (time.monotonic() - t0))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{s: {"%s|%d" % k: v for k, v in r[s].items()} for s in r}
                       for r in runs], f, indent=1)
