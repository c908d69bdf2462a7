"""cluster/bench --compare etcd: the same wrk workload against a 3-node ctxd
cluster and a 3-member etcd cluster, one after the other, on loopback.

ctxd: PUT /v1/account/bench/bench/sK/properties/p (one property per session,
100-byte JSON value, 10,000 sessions) and GET of that property (default
linearizable, or ?consistency=stale). etcd: POST /v3/kv/put and
POST /v3/kv/range (linearizable, or "serializable": true) of key kK.

Each run starts fresh servers in a temp dir, fills every key once, runs every
cell (workload x connections) for --duration seconds, and stops the servers.
With --runs N the table shows the median of each figure over N runs. A cell
with errors in any run gives no figure. CPU ms per request is utime+stime of
the three server processes over the cell, divided by its requests.
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


def run_ctxd(binary, conns, duration, threads, keys, vbytes):
    work = tempfile.mkdtemp(prefix="ctxd-cmp-")
    cl = None
    out = {}
    try:
        cl = bl.Ctxd(binary, 3, work)
        env = {"BENCH_KEY": cl.api_key(), "BENCH_ACC": bl.ACC, "BENCH_NS": bl.NS,
               "BENCH_SESSIONS": str(keys), "BENCH_VALUE_BYTES": str(vbytes)}
        leader = cl.leader_port()
        follower = [p for p in cl.ports if p != leader][0]
        bl.ctxd_fill(leader, env["BENCH_KEY"], keys, vbytes)
        for c in conns:
            for label, tgt, mode, cons, _, _, _ in WORKLOADS:
                port = leader if tgt == "leader" else follower
                e = dict(env, BENCH_CONSISTENCY=cons)
                out[(label, c)] = bl.measured(
                    cl.pids(), lambda: [bl.wrk(port, mode, c, threads, duration, e)])
                progress("ctxd", label, c, out[(label, c)])
    finally:
        if cl is not None:
            cl.stop()
        shutil.rmtree(work, ignore_errors=True)
    return out


def run_etcd(conns, duration, threads, keys, vbytes):
    work = tempfile.mkdtemp(prefix="etcd-cmp-")
    ec = None
    out = {}
    try:
        ec = bl.Etcd(work)
        env = {"BENCH_SESSIONS": str(keys), "BENCH_VALUE_BYTES": str(vbytes)}
        leader = ec.leader_port()
        follower = [p for p in ec.ports if p != leader][0]
        bl.etcd_fill(leader, keys, vbytes)
        for c in conns:
            for label, _, _, _, tgt, mode, ser in WORKLOADS:
                port = leader if tgt == "leader" else follower
                e = dict(env, BENCH_SERIALIZABLE="1" if ser else "0")
                out[(label, c)] = bl.measured(
                    ec.pids(), lambda: [bl.wrk(port, mode, c, threads, duration, e,
                                               lua=bl.ETCD_LUA)])
                progress("etcd", label, c, out[(label, c)])
    finally:
        if ec is not None:
            ec.stop()
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


def print_table(runs, conns):
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
          "median of %d run(s)" % len(runs))


def main(args):
    bl.which_or_setup("wrk")
    if not os.access("/usr/bin/etcd", os.X_OK):
        bl.which_or_setup("etcd")
    bl.raise_nofile()
    conns = [int(x) for x in (args.connections or "16,64,256").split(",")]
    duration = 3 if args.quick else args.duration
    binary = args.bin or bl.build()
    runs = []
    t0 = time.monotonic()
    for i in range(args.runs):
        sys.stderr.write("run %d/%d: ctxd\n" % (i + 1, args.runs))
        c = run_ctxd(binary, conns, duration, args.threads, args.sessions, args.value_bytes)
        sys.stderr.write("run %d/%d: etcd\n" % (i + 1, args.runs))
        e = run_etcd(conns, duration, args.threads, args.sessions, args.value_bytes)
        runs.append({"ctxd": c, "etcd": e})
    print_table(runs, conns)
    print("total %.0f s" % (time.monotonic() - t0))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{s: {"%s|%d" % k: v for k, v in r[s].items()} for s in r}
                       for r in runs], f, indent=1)
