"""cluster/bench --slow-disk: writes on a disk held slow on purpose.

    cluster/bench --slow-disk [--limits 4194304:0,0:600,0:0] [--bin PATH]
                  [--bin-b PATH] [--runs 1] [--duration 20]
                  [--connections 64] [--sessions 10000] [--value-bytes 100]

The machine's own disk changes speed by itself (docs/performance.md, "the
disk's two states"); this puts a chosen limit on it instead. Each limit is
BYTES_PER_S:IOS_PER_S of writes (0: no limit on that one), applied with the
blkio controller (cgroup v1, blkio.throttle.*; or io.max under cgroup v2)
to every thread of the three ctxd processes, for the disk that holds the
data directories (/var/tmp). For each limit and run, each binary (--bin,
then --bin-b when given, in alternating order) gets a fresh 3-node cluster
of --sessions sessions, wrk PUTs one property of a random session to the
leader for --duration seconds, and the run prints writes/s, p50/p99/p99.9
and, per node, how many of its open log segments still hold unwritten
extents (consensus/prealloc.c writes them with zeros while the disk keeps
up). A run with errors gives no figure. Needs root and a blkio or io
controller; it says so and stops otherwise. The limit is removed (the
group deleted) when the run ends, whatever happened.
"""

import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_lib as bl  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "tests", "e2e"))

V1 = "/sys/fs/cgroup/blkio"
V2 = "/sys/fs/cgroup"
WORK = "/var/tmp"


def whole_disk(path):
    """major:minor of the disk (not the partition) that holds path."""
    st = os.stat(path)
    dev = "%d:%d" % (os.major(st.st_dev), os.minor(st.st_dev))
    sysdir = os.path.realpath("/sys/dev/block/" + dev)
    if os.path.exists(os.path.join(sysdir, "partition")):
        with open(os.path.join(os.path.dirname(sysdir), "dev")) as f:
            dev = f.read().strip()
    return dev


class Throttle:
    """A blkio (v1) or io (v2) group with write limits on one disk."""

    def __init__(self, dev, bps, iops):
        self.path = None
        name = "ctxd-bench-slow-disk-%d" % os.getpid()
        if os.path.isfile(os.path.join(V1, "blkio.throttle.write_bps_device")):
            self.path = os.path.join(V1, name)
            os.mkdir(self.path)
            self.v1 = True
            self._write("blkio.throttle.write_bps_device", "%s %d" % (dev, bps))
            self._write("blkio.throttle.write_iops_device", "%s %d" % (dev, iops))
        elif "io" in self._controllers():
            self.path = os.path.join(V2, name)
            os.mkdir(self.path)
            self.v1 = False
            self._write("io.max", "%s wbps=%s wiops=%s" % (
                dev, bps or "max", iops or "max"))
        else:
            sys.exit("bench --slow-disk: no blkio (cgroup v1) or io (cgroup "
                     "v2) controller here")

    @staticmethod
    def _controllers():
        try:
            with open(os.path.join(V2, "cgroup.subtree_control")) as f:
                return f.read().split()
        except OSError:
            return []

    def _write(self, name, text):
        with open(os.path.join(self.path, name), "w") as f:
            f.write(text)

    def add(self, pid):
        self._write("cgroup.procs", str(pid))

    def remove(self):
        if self.path is None:
            return
        # Back to the root group, then away with this one.
        root = V1 if self.v1 else V2
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                pids = f.read().split()
        except OSError:
            pids = []
        for pid in pids:
            try:
                with open(os.path.join(root, "cgroup.procs"), "w") as f:
                    f.write(pid)
            except OSError:
                pass
        try:
            os.rmdir(self.path)
        except OSError as e:
            print("bench --slow-disk: could not remove %s: %s" % (self.path, e))
        self.path = None


def segments(work):
    """Per node: how many open segments there are, and how many of them
    hold unwritten extents (None when FIEMAP cannot tell)."""
    from test_node import unwritten_extents
    out = []
    for nid in (1, 2, 3):
        d = os.path.join(work, "node%d" % nid, "data", "raft")
        opened = [os.path.join(d, f) for f in sorted(os.listdir(d))
                  if f.startswith("open-")]
        found = [unwritten_extents(p) for p in opened]
        if any(x is None for x in found):
            out.append((len(opened), None))
        else:
            out.append((len(opened), sum(1 for x in found if x > 0)))
    return out


def one_run(binary, dev, bps, iops, args):
    work = tempfile.mkdtemp(prefix="ctxd-slow-disk-", dir=WORK)
    cl = None
    th = None
    try:
        cl, env, leader = bl.filled_cluster(binary, work, args.sessions,
                                            args.value_bytes)
        th = Throttle(dev, bps, iops)
        for pid in cl.pids():
            th.add(pid)
        conns = int((args.connections or "64").split(",")[0])
        r = bl.measured(cl.pids(), lambda: [bl.wrk(leader, "put", conns,
                                                   args.threads,
                                                   args.duration, env)])
        r["segments"] = segments(work)
        return r
    finally:
        if th is not None:
            th.remove()
        if cl is not None:
            cl.stop()
        shutil.rmtree(work, ignore_errors=True)


def show(label, r):
    segs = " ".join("%s/%d" % ("?" if u is None else u, n)
                    for n, u in r["segments"])
    if r["errors"]:
        print("  %-2s errors %d: no figure; unwritten/open segments %s"
              % (label, r["errors"], segs))
    else:
        print("  %-2s %7.0f writes/s  p50 %6.2f  p99 %8.2f  p99.9 %8.2f ms  "
              "unwritten/open segments per node %s"
              % (label, r["rps"], r["p50_ms"], r["p99_ms"], r["p999_ms"], segs))
    sys.stdout.flush()


def main(args):
    import json

    if os.geteuid() != 0:
        sys.exit("bench --slow-disk: needs root (cgroup limits)")
    bl.which_or_setup("wrk")
    bl.raise_nofile()
    bins = [("A", args.bin or bl.build())]
    if args.bin_b:
        bins.append(("B", args.bin_b))
    for _, b in bins:
        if not os.access(b, os.X_OK):
            sys.exit("bench --slow-disk: %s is not an executable" % b)
    limits = []
    for item in (args.limits or "4194304:0,0:600,0:0").split(","):
        bps, _, iops = item.partition(":")
        limits.append((int(bps), int(iops or 0)))
    dev = whole_disk(WORK)
    for label, b in bins:
        print("%s = %s" % (label, b))
    print("disk %s (holds %s)" % (dev, WORK))
    report = []
    for bps, iops in limits:
        print("limit: %s bytes/s, %s writes/s" % (bps or "no limit",
                                                   iops or "no limit"))
        for i in range(args.runs):
            order = bins if i % 2 == 0 else list(reversed(bins))
            for label, b in order:
                r = one_run(b, dev, bps, iops, args)
                show(label, r)
                report.append({"bin": b, "bps": bps, "iops": iops, "run": i,
                               "result": r})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
