"""cluster/bench --growth: how ctxd's cost grows, for one node and for a
3-node cluster, on loopback.

Every node runs with --snapshot-threshold 4096 (default 8192) so that the
write cells take snapshots at the measured size. For each topology:

  value size   PUT / GET of one property per session at 64 connections, to the
               leader: 100 B and 10 KB values over 10,000 sessions, 100 KB
               values over 1,000 sessions (100 MB either way)
  connections  PUT / GET of 100 B values over 10,000 sessions at 16, 64, 256
               and 1,024 connections (the open-file limit is raised)
  pause (10k)  the longest GET /healthz latency seen by a client on its own
               connection, back to back, while 4 connections PUT in rounds of
               the cell time until a snapshot is logged ("snapshot taken");
               measured first, on the 10,000 sessions alone
  data size    a fresh cluster filled with --big-props properties (default
               1,000,000) of 100 B: PATCHes of 500 properties, 5,000
               properties per session (550 KB of the 800,000-byte document
               limit); fill time, RSS per node, PUT / GET at 64 connections
               over all those properties, the snapshot pause as above, the
               time a restart takes to answer /readyz again (the single node,
               or a follower), and the time a new node takes to join (--join)
               and reach the leader's applied index (ctxd_raft_applied_index
               in /metrics)

A cell with errors gives no figure. Every wait is bounded.
"""

import http.client
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time

import bench_lib as bl

SNAP_THRESHOLD = 4096
PROPS_PER_SESSION = 5000
SNAP_RE = re.compile(r"snapshot taken")


class Pinger(threading.Thread):
    """GET /healthz back to back on one kept-alive connection; records the
    longest latency (and gap between answers) while it runs."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.halt = threading.Event()
        self.max_ms = 0.0
        self.count = 0
        self.failures = 0

    def run(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        last = time.monotonic()
        while not self.halt.is_set():
            t0 = time.monotonic()
            try:
                c.request("GET", "/healthz")
                r = c.getresponse()
                r.read()
                if r.status != 200:
                    self.failures += 1
            except (OSError, http.client.HTTPException):
                self.failures += 1
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            t1 = time.monotonic()
            self.max_ms = max(self.max_ms, (t1 - t0) * 1000, (t1 - last) * 1000)
            last = t1
            self.count += 1
        c.close()


def snapshots(cl, hold=False):
    """Snapshots logged so far over all nodes and the largest; with hold,
    also the longest time one held the event loop (loop_ms, the fork)."""
    n = 0
    sizes = []
    holds = []
    for nid in cl.procs:
        try:
            with open(cl.log_path(nid), errors="replace") as f:
                for line in f:
                    if SNAP_RE.search(line):
                        n += 1
                        m = re.search(r"bytes=(\d+)", line)
                        if m:
                            sizes.append(int(m.group(1)))
                        m = re.search(r"loop_ms=([0-9.]+)", line)
                        if m:
                            holds.append(float(m.group(1)))
        except OSError:
            pass
    if hold:
        return n, (max(sizes) if sizes else 0), (max(holds) if holds else 0.0)
    return n, (max(sizes) if sizes else 0)


TURN_RE = re.compile(r'^ctxd_event_loop_turn_seconds_bucket\{le="([^"]+)"\} (\S+)$')


def loop_turns(port):
    """The node's event loop turn histogram: {upper bound: cumulative count}."""
    out = {}
    for line in bl.metrics_text(port).splitlines():
        m = TURN_RE.match(line)
        if m:
            out[float(m.group(1))] = float(m.group(2))
    return out


def turns_window(before, after):
    """From two scrapes of one node: (upper bound in ms of the longest turn
    in between, turns over 100 ms in between)."""
    bounds = sorted(after)
    if not bounds or set(before) != set(after):
        return None, None
    diff = {b: after[b] - before[b] for b in bounds}
    total = diff[bounds[-1]]
    longest = next(b for b in bounds if diff[b] == total)
    over = total - diff.get(0.1, total)
    return longest * 1000, int(over)


def fig(r):
    if r["errors"]:
        return {"errors": r["errors"]}
    return {"rps": round(r["rps"]), "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
            "p999_ms": r["p999_ms"], "cpu_ms": round(r["cpu_ms"], 4)}


def show(topo, what, r):
    if "errors" in r:
        line = "%-8s %-34s errors %d (no figure)" % (topo, what, r["errors"])
    else:
        line = "%-8s %-34s %9d req/s  p50 %8.2f  p99 %8.2f ms  cpu %.3f ms" % (
            topo, what, r["rps"], r["p50_ms"], r["p99_ms"], r["cpu_ms"])
    print(line)
    sys.stdout.flush()


def cell(cl, port, mode, conns, duration, env, threads=2):
    return fig(bl.measured(cl.pids(), lambda: [bl.wrk(port, mode, conns, threads,
                                                      duration, env, timeout_s=10)]))


def pause(cl, leader, duration, env, budget=90):
    """Longest /healthz latency while 4 connections PUT, in rounds of
    `duration` seconds until at least one snapshot is logged (or budget)."""
    before, _ = snapshots(cl)
    turns0 = {port: loop_turns(port) for port in cl.ports}
    p = Pinger(leader)
    p.start()
    reqs = 0
    secs = 0.0
    errors = 0
    end = time.monotonic() + budget
    while True:
        r = bl.collect([bl.wrk(leader, "put", 4, 1, duration, env, timeout_s=10)])
        reqs += r["requests"]
        secs += duration
        errors += r["errors"]
        time.sleep(0.5)
        if snapshots(cl)[0] > before or time.monotonic() > end:
            break
    p.halt.set()
    p.join(15)
    after, size, hold = snapshots(cl, hold=True)
    longest, over = 0.0, 0
    per_node = []  # (node id, longest turn's bound in ms, turns over 100 ms)
    for i, port in enumerate(cl.ports):
        lo, ov = turns_window(turns0[port], loop_turns(port))
        if lo is None:
            longest, over = None, None
            break
        longest, over = max(longest, lo), over + ov
        per_node.append((i + 1, lo, ov))
    return {"healthz_max_ms": round(p.max_ms, 1), "healthz_requests": p.count,
            "healthz_failures": p.failures, "snapshots": after - before,
            "snapshot_bytes": size, "put_rps": round(reqs / secs), "put_errors": errors,
            "loop_turn_max_le_ms": longest, "loop_turns_over_100ms": over,
            "loop_turns_per_node": per_node, "leader_node": cl.ports.index(leader) + 1,
            "snapshot_loop_ms_max": hold}


def show_pause(topo, what, x):
    print("%-8s %-34s longest /healthz %7.1f ms over %d requests; %d snapshot(s) "
          "(largest %.1f MB) under %d PUT/s" % (
              topo, what, x["healthz_max_ms"], x["healthz_requests"], x["snapshots"],
              x["snapshot_bytes"] / 1e6, x["put_rps"]))
    print("%-8s %-34s longest loop turn <= %s ms (%s turns > 100 ms, all nodes); "
          "snapshot held the loop <= %.1f ms" % (
              topo, "", x["loop_turn_max_le_ms"], x["loop_turns_over_100ms"],
              x["snapshot_loop_ms_max"]))
    if x.get("loop_turns_over_100ms"):
        print("%-8s %-34s per node (id:longest turn <= ms:turns > 100 ms): %s; leader %d" % (
            topo, "", " ".join("%d:%g:%d" % t for t in x["loop_turns_per_node"]),
            x["leader_node"]))
    sys.stdout.flush()


def env_for(key, ns, sessions, vbytes, props=1):
    return {"BENCH_KEY": key, "BENCH_ACC": bl.ACC, "BENCH_NS": ns,
            "BENCH_SESSIONS": str(sessions), "BENCH_VALUE_BYTES": str(vbytes),
            "BENCH_PROPS": str(props)}


def small(binary, nodes, duration, conns_list):
    """Value size, connections and the snapshot pause at 10,000 sessions."""
    topo = "%d node%s" % (nodes, "s" if nodes > 1 else "")
    out = {}
    work = tempfile.mkdtemp(prefix="ctxd-growth-")
    cl = None
    try:
        cl = bl.Ctxd(binary, nodes, work, log_level="info",
                     extra=["--snapshot-threshold", str(SNAP_THRESHOLD)])
        key = cl.api_key()
        leader = cl.leader_port()
        bl.ctxd_fill(leader, key, 10000, 100, ns="v100")
        env = env_for(key, "v100", 10000, 100)
        what = "snapshot pause, 10k props"
        out[what] = pause(cl, leader, max(duration, 10), env)
        show_pause(topo, what, out[what])
        for c in conns_list:
            for mode, label in (("put", "write"), ("getprop", "read")):
                what = "%s 100 B, %d conns" % (label, c)
                out[what] = cell(cl, leader, mode, c, duration, env)
                show(topo, what, out[what])
        for vbytes, sessions, ns in ((100, 10000, "v100"), (10240, 10000, "v10k"),
                                     (102400, 1000, "v100k")):
            if ns != "v100":
                bl.ctxd_fill(leader, key, sessions, vbytes, ns=ns)
            env = env_for(key, ns, sessions, vbytes)
            for mode, label in (("put", "write"), ("getprop", "read")):
                what = "%s %d B x %d, 64 conns" % (label, vbytes, sessions)
                out[what] = cell(cl, leader, mode, 64, duration, env)
                show(topo, what, out[what])
    finally:
        if cl is not None:
            cl.stop()
        shutil.rmtree(work, ignore_errors=True)
    return out


def big(binary, nodes, duration, props):
    """Fill, RSS, throughput, snapshot pause, restart and join at props."""
    topo = "%d node%s" % (nodes, "s" if nodes > 1 else "")
    out = {}
    work = tempfile.mkdtemp(prefix="ctxd-growth-big-")
    cl = None
    sessions = max(1, props // PROPS_PER_SESSION)
    per = min(props, PROPS_PER_SESSION)
    label = "%dk props" % (sessions * per // 1000)
    try:
        cl = bl.Ctxd(binary, nodes, work, log_level="info",
                     extra=["--snapshot-threshold", str(SNAP_THRESHOLD)])
        key = cl.api_key()
        leader = cl.leader_port()
        t0 = time.monotonic()
        bl.ctxd_fill(leader, key, sessions, 100, props=per, batch=500, conc=8)
        fill_s = time.monotonic() - t0
        out["fill " + label] = {"seconds": round(fill_s, 1),
                                "props_per_s": round(sessions * per / fill_s)}
        print("%-8s %-34s %.1f s (%d properties/s)" % (topo, "fill " + label, fill_s,
                                                       sessions * per / fill_s))
        # Let followers apply everything before RSS is read.
        li = cl.applied_index(leader)
        end = time.monotonic() + 120
        while time.monotonic() < end and any(cl.applied_index(p) != li for p in cl.ports):
            time.sleep(0.2)
        rss = [round(bl.rss_kib(pid) / 1024.0, 1) for pid in cl.pids()]
        out["rss MiB " + label] = rss
        print("%-8s %-34s %s MiB" % (topo, "RSS per node, " + label,
                                     " / ".join("%.0f" % x for x in rss)))
        env = env_for(key, bl.NS, sessions, 100, per)
        for mode, lab in (("put", "write"), ("getprop", "read")):
            what = "%s 100 B, %s, 64 conns" % (lab, label)
            out[what] = cell(cl, leader, mode, 64, duration, env)
            show(topo, what, out[what])
        what = "snapshot pause, " + label
        out[what] = pause(cl, leader, max(duration, 10), env)
        show_pause(topo, what, out[what])
        sys.stdout.flush()
        # Restart: the single node, or a follower.
        nid = 1
        if nodes > 1:
            nid = [i for i in cl.procs if cl.port_of(i) != leader][0]
        t0 = time.monotonic()
        bl.stop_proc(cl.procs[nid], grace=60)
        stop_s = time.monotonic() - t0
        t0 = time.monotonic()
        cl.start(nid)
        bl.wait_ready([cl.port_of(nid)], budget=600)
        ready_s = time.monotonic() - t0
        out["restart " + label] = {"stop_s": round(stop_s, 2), "ready_s": round(ready_s, 2)}
        print("%-8s %-34s stop %.2f s, start to /readyz %.2f s" % (
            topo, "restart %s, %s" % ("node" if nodes == 1 else "follower", label),
            stop_s, ready_s))
        sys.stdout.flush()
        # Join a new node and wait until it has the leader's applied index.
        # The log must have been compacted past its start, so that the new
        # node catches up by snapshot: write until one was taken (bounded).
        leader = cl.leader_port()
        end = time.monotonic() + 120
        while snapshots(cl)[0] == 0 and time.monotonic() < end:
            bl.collect([bl.wrk(leader, "put", 16, 1, 5, env, timeout_s=10)])
        li = cl.applied_index(leader)
        newid = len(cl.ports) + 1
        t0 = time.monotonic()
        cl.join(newid, leader)
        ni = None
        end = time.monotonic() + 600
        while time.monotonic() < end:
            ni = cl.applied_index(cl.port_of(newid))
            if ni is not None and ni >= li and ni == cl.applied_index(leader):
                break
            time.sleep(0.1)
        join_s = time.monotonic() - t0
        caught = ni is not None and ni >= li
        installs = 0
        try:
            with open(cl.log_path(newid), errors="replace") as f:
                installs = sum(1 for line in f if "snapshot restored" in line)
        except OSError:
            pass
        out["join " + label] = {"seconds": round(join_s, 2), "caught_up": caught,
                                "snapshots_restored": installs}
        print("%-8s %-34s %s in %.2f s (%d snapshot(s) restored)" % (
            topo, "join + catch up, " + label,
            "caught up" if caught else "NOT caught up", join_s, installs))
        sys.stdout.flush()
    finally:
        if cl is not None:
            cl.stop()
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(args):
    bl.which_or_setup("wrk")
    bl.raise_nofile()
    duration = 3 if args.quick else args.duration
    conns_list = [int(x) for x in (args.connections or "16,64,256,1024").split(",")]
    binary = args.bin or bl.build()
    nodes_list = [args.nodes] if args.nodes else [1, 3]
    res = {}
    t0 = time.monotonic()
    for n in nodes_list:
        res["%d" % n] = {"small": small(binary, n, duration, conns_list),
                         "big": big(binary, n, duration, args.big_props)}
    print("total %.0f s" % (time.monotonic() - t0))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
