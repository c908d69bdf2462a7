"""cluster/bench --load-ab: the two load generators side by side, on each
system.

    cluster/bench --load-ab [--pairs 4] [--duration 5] [--connections 64]
                  [--sessions 10000] [--value-bytes 100] [--bin PATH]

What a load generator costs shows in the figures it gives: on two shared
cores the client's CPU is taken from the servers'. This starts a filled
3-node ctxd cluster and a filled 3-member etcd cluster (the sides of
cluster/bench --compare), and on each, for every workload of --compare,
runs --pairs pairs: wrk (two threads, the Lua scripts) and ctxd_load (one
thread, the same requests from a file), in alternating order. Per run it
prints requests/s, p99 and the server CPU per request; per workload and
system, the ratio ctxd_load/wrk of requests/s in each pair and its median.
A run with errors gives no figure, and its pair is left out.
"""

import os
import shutil
import statistics
import sys
import tempfile

import bench_compare as bc
import bench_lib as bl


def main(args):
    bl.which_or_setup("wrk")
    if not os.access("/usr/bin/etcd", os.X_OK):
        bl.which_or_setup("etcd")
    bl.load_binary()
    bl.raise_nofile()
    conns = int((args.connections or "64").split(",")[0])
    binary = args.bin or bl.build()
    work = tempfile.mkdtemp(prefix="loadab-")
    sides = []
    try:
        sides.append(bc.CtxdSide(binary, os.path.join(work, "ctxd"), args.sessions,
                                 args.value_bytes))
        sides.append(bc.EtcdSide(os.path.join(work, "etcd"), args.sessions,
                                 args.value_bytes))
        summary = []
        for w in bc.WORKLOADS:
            for side in sides:
                ratios = []
                for i in range(args.pairs):
                    order = ("wrk", "ctxd_load") if i % 2 == 0 else ("ctxd_load", "wrk")
                    got = {}
                    for gen in order:
                        got[gen] = r = side.cell(w, conns, 2 if gen == "wrk" else 1,
                                                 args.duration, gen)
                        bc.progress(side.name, w[0] + " " + gen[:4], conns, r)
                    if not got["wrk"]["errors"] and not got["ctxd_load"]["errors"]:
                        ratios.append(got["ctxd_load"]["rps"] / got["wrk"]["rps"])
                summary.append((w[0], side.name, ratios))
        print("%-20s %-5s  %s" % ("workload", "", "ctxd_load/wrk requests/s per pair (median)"))
        for label, name, ratios in summary:
            med = "%.3f" % statistics.median(ratios) if ratios else "-"
            print("%-20s %-5s  %s (%s)" % (label, name,
                                           " ".join("%.2f" % x for x in ratios), med))
    finally:
        for side in sides:
            side.cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
