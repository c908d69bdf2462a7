"""cluster/bench --ab A B: two ctxd builds side by side, in pairs.

    cluster/bench --ab BIN_A BIN_B [--pairs 10] [--duration 5]
                  [--connections 16,64] [--threads 2] [--sessions 10000]
                  [--value-bytes 100] [--json FILE]

On a machine whose speed drifts by tens of percent within minutes, a
change of a few percent shows only when the two builds run next to each
other many times. For each connection count this runs --pairs pairs; a pair
is one run of each build, in alternating order (A B, B A, ...). A run is a
fresh 3-node cluster of that build (cluster/bench_lib.Ctxd), --sessions
sessions filled with one property each, then wrk PUTting one property of a
random session to the leader for --duration seconds. Per run it prints
writes/s, p99, CPU ms per write summed over the three nodes (/proc), and
commands per Raft entry (/metrics); then, per build, the medians, and per
pair the ratio B/A of writes/s and of CPU per write with their medians and
how many pairs B won. A run with errors gives no figure, and its pair is
left out of the ratios.
"""

import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_lib as bl  # noqa: E402


def counters(port):
    """(entries, commands) proposed by the node at port, from /metrics."""
    got = bl.metric_values(port, ("ctxd_raft_entries_total",
                                  "ctxd_raft_commands_total"))
    return (got.get("ctxd_raft_entries_total", 0.0),
            got.get("ctxd_raft_commands_total", 0.0))


def one_run(binary, conns, args):
    """One fresh 3-node cluster of binary; the PUT workload on its leader."""
    work = tempfile.mkdtemp(prefix="ctxd-ab-")
    cl = None
    try:
        cl, env, leader = bl.filled_cluster(binary, work, args.sessions,
                                            args.value_bytes)
        e0, c0 = counters(leader)
        r = bl.measured(cl.pids(), lambda: [bl.wrk(leader, "put", conns,
                                                   args.threads,
                                                   args.duration, env)])
        e1, c1 = counters(leader)
        r["per_entry"] = (c1 - c0) / (e1 - e0) if e1 > e0 else 0.0
        return r
    finally:
        if cl is not None:
            cl.stop()
        shutil.rmtree(work, ignore_errors=True)


def show(label, r):
    if r["errors"]:
        print("  %-2s errors %d: no figure" % (label, r["errors"]))
    else:
        print("  %-2s %9.0f writes/s  p99 %7.2f ms  CPU %.4f ms/write  "
              "%5.1f commands/entry" % (label, r["rps"], r["p99_ms"],
                                        r["cpu_ms"], r["per_entry"]))
    sys.stdout.flush()


def summary(conns, pairs):
    out = {"connections": conns, "pairs": []}
    good = [(a, b) for a, b in pairs if not a["errors"] and not b["errors"]]
    for label, idx in (("A", 0), ("B", 1)):
        runs = [p[idx] for p in good]
        if runs:
            print("  %s median: %.0f writes/s, CPU %.4f ms/write, %.1f "
                  "commands/entry" % (
                      label, statistics.median(r["rps"] for r in runs),
                      statistics.median(r["cpu_ms"] for r in runs),
                      statistics.median(r["per_entry"] for r in runs)))
    if good:
        rps = [b["rps"] / a["rps"] for a, b in good]
        cpu = [b["cpu_ms"] / a["cpu_ms"] for a, b in good if a["cpu_ms"]]
        print("  B/A writes/s per pair: %s; median %.3f, B ahead in %d of %d"
              % (" ".join("%.2f" % x for x in rps), statistics.median(rps),
                 sum(1 for x in rps if x > 1), len(rps)))
        if cpu:
            print("  B/A CPU per write per pair: %s; median %.3f" %
                  (" ".join("%.2f" % x for x in cpu), statistics.median(cpu)))
    out["pairs"] = [{"a": a, "b": b} for a, b in pairs]
    return out


def main(args):
    import json

    bl.which_or_setup("wrk")
    bl.raise_nofile()
    bin_a, bin_b = args.ab
    for b in (bin_a, bin_b):
        if not os.access(b, os.X_OK):
            sys.exit("bench --ab: %s is not an executable" % b)
    conns = [int(x) for x in (args.connections or "16,64").split(",")]
    print("A = %s\nB = %s" % (bin_a, bin_b))
    report = []
    for c in conns:
        print("%d connections, %d pairs of %d s runs" % (c, args.pairs,
                                                         args.duration))
        pairs = []
        for i in range(args.pairs):
            order = ("A", "B") if i % 2 == 0 else ("B", "A")
            got = {}
            for label in order:
                got[label] = one_run(bin_a if label == "A" else bin_b, c, args)
                show(label, got[label])
            pairs.append((got["A"], got["B"]))
        report.append(summary(c, pairs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"a": bin_a, "b": bin_b, "runs": report}, f, indent=1)
