"""Fault scenarios, the run of one scenario, and the report.

Timeline of one run (D = duration, t = 0 when the workload starts):
  0        workload starts on a fresh cluster (fresh session, absent keys)
  0.3 D    fault injected (the time is the fault time)
  0.6 D    healed (restart-all restarts 1 s after the kill instead)
  0.8 D    workload stops; every op in flight ends (bounded)
  then     digests polled on every node until all are equal at the same
           index: "converged" when that happens within 10 s of healing
           (the time is measured, and polled on up to 30 s to report it)
  then     final linearizable reads of every key on every node, checker.
The verdict of a run is "pass" only when the history is linearizable (final
reads included, so no acknowledged write is lost), the digests converged
within 10 s, no node died on its own and no node log holds a sanitizer
report. A checker search that exceeds its
budget makes the run "inconclusive", never a pass.

Invariants: the cluster and the network of a run are torn down on every
path (try/finally); faults are healed before the teardown; every wait is
bounded.
"""

import random
import time

from . import checker
from .net import Net
from .nodes import Cluster
from .workload import Target, Workload, final_reads

CONVERGE_BOUND_S = 10.0       # healed cluster must converge within this
CONVERGE_MEASURE_S = 30.0     # keep polling this long to report the time
FAULT_AT = 0.3                # fractions of the duration
HEAL_AT = 0.6
STOP_AT = 0.8
KEYS = ["p%d" % i for i in range(5)]
ACCOUNT = "drill"
NAMESPACE = "drill"

# name -> (nodes forced, needs network namespaces)
SCENARIOS = {
    "leader-kill": (None, False),
    "leader-transfer": (None, False),
    "follower-kill": (None, False),
    "partition-leader": (None, True),
    "partition-minority": (None, True),
    "flapping": (None, True),
    "region-loss": (5, False),
    "restart-all": (None, False),
    "slow-network": (None, True),
}
ORDER = list(SCENARIOS)
REGIONS = ["z1", "z2", "z3"]


class Fault:
    """One injected fault: what was done, to whom, and how to heal it."""

    def __init__(self, what, nodes, heal, hold=None, during=None):
        self.what = what            # text for the report
        self.nodes = set(nodes)     # faulted nodes (not survivors)
        self.heal_fn = heal         # callable healing the fault
        self.hold = hold            # seconds before healing, None: until 0.6 D
        self.during = during        # callable(until) run while the fault holds
        self.at = None              # monotonic time of the injection


def kill_many(cluster, ids):
    """kill -9 every node of ids at once."""
    with cluster.lock:
        procs = [(i, cluster.procs.get(i)) for i in ids]
    for _, p in procs:
        if p is not None and p.poll() is None:
            p.kill()
    for i, _ in procs:
        cluster.kill(i)


def inject(name, cluster, net, rng):
    """Inject scenario `name`; returns its Fault (with .at set)."""
    lid = cluster.leader()
    followers = [i for i in cluster.ids() if i != lid]
    f = rng.choice(followers) if followers else lid
    t = time.monotonic()
    if name == "leader-kill":
        cluster.kill(lid)
        fault = Fault("kill -9 leader %d" % lid, [lid], lambda: cluster.start(lid))
    elif name == "follower-kill":
        cluster.kill(f)
        fault = Fault("kill -9 follower %d" % f, [f], lambda: cluster.start(f))
    elif name == "leader-transfer":
        st, doc = cluster.json(lid, "POST", "/admin/v1/cluster/transfer", {}, timeout=15.0)
        new = doc.get("leader") if isinstance(doc, dict) else None
        fault = Fault("transfer from leader %d: %s -> %s" % (lid, st, new), [],
                      lambda: None)
    elif name == "partition-leader":
        net.cut(lid)
        fault = Fault("cut off leader %d" % lid, [lid], lambda: net.heal(lid))
    elif name == "partition-minority":
        net.cut(f)
        fault = Fault("cut off follower %d" % f, [f], lambda: net.heal(f))
    elif name == "flapping":
        state = {"cuts": 0}

        def flap(until):
            while time.monotonic() < until:
                net.cut(f)
                state["cuts"] += 1
                time.sleep(min(rng.uniform(0.3, 1.0), max(0.0, until - time.monotonic())))
                net.heal(f)
                time.sleep(min(rng.uniform(0.3, 1.0), max(0.0, until - time.monotonic())))
        fault = Fault("follower %d cut and reconnected repeatedly" % f, [f],
                      lambda: net.heal(f), during=flap)
        fault.state = state
    elif name == "region-loss":
        regions = cluster.region_nodes()
        pairs = [r for r, ids in sorted(regions.items()) if len(ids) == 2]
        mine = cluster.nodes[lid]["region"]
        region = mine if mine in pairs else pairs[0]
        ids = regions[region]
        kill_many(cluster, ids)

        def back():
            for i in ids:
                cluster.start(i)
        fault = Fault("kill -9 region %s (nodes %s; leader was %d)"
                      % (region, ",".join(map(str, ids)), lid), ids, back)
    elif name == "restart-all":
        ids = cluster.ids()
        kill_many(cluster, ids)

        def back():
            for i in ids:
                cluster.start(i)
        fault = Fault("kill -9 every node, restart 1 s later", [], back, hold=1.0)
    elif name == "slow-network":
        method = net.slow(f)
        fault = Fault("slow link on follower %d (%s)" % (f, method), [f],
                      lambda: net.unslow(f))
    else:
        raise ValueError("unknown scenario %s" % name)
    # The fault holds from the moment the action returned (ip link set down
    # takes a few ms); a transfer counts from its request, since the cluster
    # is disturbed while it runs.
    fault.at = t if name == "leader-transfer" else time.monotonic()
    return fault


def sleep_until(t):
    d = t - time.monotonic()
    if d > 0:
        time.sleep(d)


def wait_converged(cluster, since):
    """(seconds after `since` when every node reported the same index and
    sha256, or None; last digests)."""
    deadline = since + CONVERGE_MEASURE_S
    last = None
    while time.monotonic() < deadline:
        docs = cluster.digests(cluster.ids())
        last = docs
        pairs = {(d.get("index"), d.get("sha256")) if d else None for d in docs.values()}
        if len(pairs) == 1 and None not in pairs:
            return time.monotonic() - since, docs
        time.sleep(0.1)
    return None, last


def outcome_counts(ops):
    out = {"write": {"ok": 0, "failed": 0, "unknown": 0},
           "read": {"ok": 0, "failed": 0, "unknown": 0}}
    seen = set()
    for o in ops:
        if o.client == "final":
            continue
        # A PATCH of two keys is one operation recorded twice.
        k = (o.client, o.start, o.kind)
        if k in seen:
            continue
        seen.add(k)
        out["read" if o.kind == "read" else "write"][o.outcome] += 1
    return out


def run_scenario(name, opts, use_net, run_no, log):
    """Run one scenario once; returns its result dict (see report)."""
    forced, _ = SCENARIOS[name]
    n = forced or opts.nodes
    rng = random.Random(opts.seed * 7919 + run_no * 31 + ORDER.index(name))
    res = {"scenario": name, "run": run_no, "nodes": n,
           "network": "netns" if use_net else "loopback", "verdict": "error",
           "errors": []}
    net = Net(n) if use_net else None
    cluster = None
    fault = None
    try:
        if net is not None:
            net.setup()
        cluster = Cluster(opts.bin, n, REGIONS, net=net, extra=opts.ctxd_args,
                          keep=opts.keep)
        res["dir"] = cluster.dir
        cluster.start_all()
        api_key = cluster.create_account(ACCOUNT)
        target = Target(api_key, ACCOUNT, NAMESPACE,
                        "%s-%d-%d" % (name, run_no, int(time.time())), KEYS,
                        getattr(opts, "read_consistency", None))
        t_key = time.monotonic()
        cluster.wait_key_everywhere(target.prop(KEYS[0]), api_key)
        res["key_visible_everywhere_s"] = time.monotonic() - t_key
        wl = Workload(cluster, target, opts.clients, rng.randrange(1 << 30))
        d = opts.duration
        t0 = time.monotonic()
        wl.start()
        sleep_until(t0 + FAULT_AT * d)
        fault = inject(name, cluster, net, rng)
        res["fault"] = fault.what
        log("  %s: %s at %.2f s" % (name, fault.what, fault.at - t0))
        heal_t = fault.at + fault.hold if fault.hold is not None else t0 + HEAL_AT * d
        if fault.during is not None:
            fault.during(heal_t)
        sleep_until(heal_t)
        healed = time.monotonic()
        fault.heal_fn()
        fault.heal_fn = None
        log("  %s: healed at %.2f s" % (name, healed - t0))
        sleep_until(max(t0 + STOP_AT * d, healed + 1.0))
        stuck = wl.stop()
        t_end = time.monotonic()
        if stuck:
            res["errors"].append("clients %s did not stop" % stuck)
        dead = cluster.exited()
        if dead:
            res["errors"].append("nodes exited on their own: %r" % dead)
        conv, docs = wait_converged(cluster, healed)
        res["converge_s"] = conv
        # The load runs on after healing; settle = convergence after it stopped.
        res["settle_s"] = None if conv is None else max(0.0, conv - (t_end - healed))
        res["converged"] = conv is not None and conv <= CONVERGE_BOUND_S
        res["digests"] = {str(i): d for i, d in (docs or {}).items()}
        fin, failures = final_reads(cluster, target, cluster.ids())
        if failures:
            res["errors"].append("final reads failed: %s" % "; ".join(failures[:5]))
        san = cluster.sanitizer_reports()
        if san:
            res["errors"].append("sanitizer reports: %r" % san)
        ops = wl.rec.ops + fin
        chk = checker.check_history(ops, opts.budget)
        survivors = set(cluster.ids()) - fault.nodes
        av = checker.availability(wl.rec.ops, t0, t_end, fault.at, survivors)
        res.update({
            "ops": outcome_counts(wl.rec.ops),
            "answers": {str(k): v for k, v in sorted(wl.rec.statuses.items(),
                                                     key=lambda kv: str(kv[0]))},
            "longest_unavailable_s": av["longest_gap_s"],
            "first_write_after_fault_s": av["first_write_after_fault_s"],
            "fault_at_s": fault.at - t0, "healed_at_s": healed - t0,
            "lost_writes": len(chk["lost_writes"]),
            "lost_write_examples": chk["lost_writes"][:5],
            "linearizable": chk["verdict"],
            "keys": {k: {"verdict": r["verdict"], "ops": r["ops"], "steps": r["steps"],
                         "detail": r["detail"]} for k, r in chk["keys"].items()},
        })
        if chk["verdict"] == "violation" or not res["converged"] or res["errors"]:
            res["verdict"] = "FAIL"
        elif chk["verdict"] == "unknown":
            res["verdict"] = "inconclusive"
        else:
            res["verdict"] = "pass"
        if res["verdict"] != "pass":
            res["log_tails"] = {str(i): cluster.log_tail(i, 15) for i in cluster.ids()}
    except Exception as e:  # any failed step (cluster, ip/tc, HTTP) fails the run
        res["errors"].append("%s: %s" % (type(e).__name__, e))
        res["verdict"] = "FAIL"
        if cluster is not None:
            res["log_tails"] = {str(i): cluster.log_tail(i, 15) for i in cluster.ids()}
    finally:
        try:
            if fault is not None and fault.heal_fn is not None:
                try:
                    fault.heal_fn()
                except Exception as e:  # teardown goes on; the run already failed
                    res["errors"].append("heal on teardown: %s" % e)
        finally:
            if cluster is not None:
                if res["verdict"] in ("FAIL", "inconclusive"):
                    cluster.keep = True
                cluster.close()
            if net is not None:
                net.close()
    return res


def fmt_s(x):
    return "-" if x is None else "%.2f" % x


def table(results):
    """The report table, one line per run."""
    head = ("%-19s %3s %-8s %-20s %-13s %7s %7s %4s %-12s %-20s %s"
            % ("scenario", "run", "net", "writes ok/fail/unk", "reads ok/fail",
               "unavail", "1st-wr", "lost", "linearizable", "converged s/settle s",
               "verdict"))
    lines = [head, "-" * len(head)]
    for r in results:
        if "ops" not in r:
            lines.append("%-19s %3d %-8s %s: %s" % (r["scenario"], r["run"],
                                                     r["network"], r["verdict"],
                                                     "; ".join(r["errors"])))
            continue
        w, rd = r["ops"]["write"], r["ops"]["read"]
        conv = ("%s %s/%s" % ("yes" if r["converged"] else "NO",
                              fmt_s(r.get("converge_s")), fmt_s(r.get("settle_s"))))
        lines.append("%-19s %3d %-8s %-20s %-13s %7s %7s %4d %-12s %-20s %s"
                     % (r["scenario"], r["run"], r["network"],
                        "%d/%d/%d" % (w["ok"], w["failed"], w["unknown"]),
                        "%d/%d" % (rd["ok"], rd["failed"]),
                        fmt_s(r["longest_unavailable_s"]),
                        fmt_s(r["first_write_after_fault_s"]), r["lost_writes"],
                        r["linearizable"], conv, r["verdict"]))
    return "\n".join(lines)


def details(results):
    """Text for the runs that did not pass: violations, errors, log tails."""
    out = []
    for r in results:
        if r["verdict"] == "pass":
            continue
        out.append("== %s run %d: %s (dir %s)" % (r["scenario"], r["run"], r["verdict"],
                                                 r.get("dir")))
        for e in r["errors"]:
            out.append("  error: " + e)
        for k, kr in sorted((r.get("keys") or {}).items()):
            if kr["verdict"] != "ok":
                out.append("  key %s: %s" % (k, kr["verdict"]))
                out += ["    " + line for line in kr["detail"]]
        for w in r.get("lost_write_examples") or []:
            out.append("  lost write: %r" % (w,))
        if r.get("digests") and not r.get("converged"):
            out.append("  digests: %r" % (r["digests"],))
        for i, tail in sorted((r.get("log_tails") or {}).items()):
            out.append("  -- node %s log tail:" % i)
            out += ["    " + line for line in tail.splitlines()]
    return "\n".join(out)


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def summary(results):
    """Per scenario: runs, passes, medians of the time figures."""
    out = {}
    for r in results:
        s = out.setdefault(r["scenario"], {"runs": 0, "pass": 0, "lost_writes": 0,
                                           "violations": 0, "_first": [], "_conv": [],
                                           "_gap": [], "_settle": []})
        s["runs"] += 1
        s["pass"] += r["verdict"] == "pass"
        s["lost_writes"] += r.get("lost_writes", 0)
        s["violations"] += r.get("linearizable") == "violation"
        s["_first"].append(r.get("first_write_after_fault_s"))
        s["_conv"].append(r.get("converge_s"))
        s["_gap"].append(r.get("longest_unavailable_s"))
        s["_settle"].append(r.get("settle_s"))
    for s in out.values():
        s["median_first_write_after_fault_s"] = median(s.pop("_first"))
        s["median_converge_s"] = median(s.pop("_conv"))
        s["median_longest_unavailable_s"] = median(s.pop("_gap"))
        s["median_settle_s"] = median(s.pop("_settle"))
    return out


def summary_table(summ):
    lines = ["%-19s %4s %4s %4s %10s %12s %12s %12s %12s"
             % ("scenario", "runs", "pass", "lost", "violations", "med 1st-wr",
                "med unavail", "med converge", "med settle")]
    for name, s in summ.items():
        lines.append("%-19s %4d %4d %4d %10d %12s %12s %12s %12s"
                     % (name, s["runs"], s["pass"], s["lost_writes"], s["violations"],
                        fmt_s(s["median_first_write_after_fault_s"]),
                        fmt_s(s["median_longest_unavailable_s"]),
                        fmt_s(s["median_converge_s"]), fmt_s(s["median_settle_s"])))
    return "\n".join(lines)
