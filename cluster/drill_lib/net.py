"""Network plumbing of a drill: one network namespace per node, a bridge.

Layout for drill process PID (names carry the pid, so leftovers of a dead
drill are recognised by `cleanup_leftovers` and live drills are left alone):
  namespace  ctxd-PID-I          node I's host; `lo` up, `ctxdPIDnI` = 10.77.S.I/24
  veth pair  ctxdPIDhI <-> ctxdPIDnI   host side enslaved to the bridge
  bridge     ctxdPIDbr           in the root namespace, 10.77.S.254/24
The /24 (S picked so no local address already uses it) exists only on the
bridge and inside the namespaces: no route sends it anywhere else, so no
drill traffic leaves the machine. Clients in the root namespace reach every
node through the bridge.

Faults: `cut(i)` sets the host side of node I's veth down (the node is cut
off from everyone, clients included, both directions); `heal(i)` sets it up.
`slow(i)` adds latency on both ends of that veth: tc netem delay when the
kernel has netem, else a tbf rate limit (queueing delay), and says which;
`unslow(i)` removes the qdiscs.

Invariants: every object made is recorded before the next one is made;
`close()` removes all of them (deleting a namespace destroys its veth end,
and with it the pair) and is safe to call twice; every command has a timeout.
"""

import os
import re
import subprocess

CMD_TIMEOUT_S = 10.0          # bound on one ip/tc command
PREFIX = "ctxd"
LINK_RE = re.compile(r"^ctxd(\d+)(br|h\d+|n\d+)$")
NS_RE = re.compile(r"^ctxd-(\d+)-(\d+)$")
NETEM_DELAY = ["netem", "delay", "100ms", "50ms"]             # preferred slow link
TBF_LIMIT = ["tbf", "rate", "256kbit", "burst", "16kb", "latency", "400ms"]


class NetError(Exception):
    """An ip or tc command failed."""


def run(argv, check=True):
    """Run one command; (returncode, combined output)."""
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=CMD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        if check:
            raise NetError("%s: %s" % (" ".join(argv), e))
        return 1, str(e)
    out = p.stdout.decode("utf-8", "replace").strip()
    if check and p.returncode != 0:
        raise NetError("%s: exit %d: %s" % (" ".join(argv), p.returncode, out))
    return p.returncode, out


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def probe():
    """(True, "") when this process may create network namespaces, else
    (False, why)."""
    if os.geteuid() != 0:
        return False, "not root"
    name = "%s-%d-probe" % (PREFIX, os.getpid())
    rc, out = run(["ip", "netns", "add", name], check=False)
    if rc != 0:
        return False, "ip netns add failed: %s" % out
    run(["ip", "netns", "del", name], check=False)
    return True, ""


def cleanup_leftovers():
    """Remove namespaces and links of drills whose process is gone (killing
    the processes still running inside those namespaces). Returns the names
    removed."""
    removed = []
    _, out = run(["ip", "netns", "list"], check=False)
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = NS_RE.match(name)
        if not m or pid_alive(int(m.group(1))):
            continue
        _, pids = run(["ip", "netns", "pids", name], check=False)
        for p in pids.split():
            if p.isdigit():
                try:
                    os.kill(int(p), 9)
                except OSError:
                    pass
        run(["ip", "netns", "del", name], check=False)
        removed.append(name)
    _, out = run(["ip", "-o", "link", "show"], check=False)
    for line in out.splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        m = LINK_RE.match(name)
        if not m or pid_alive(int(m.group(1))):
            continue
        rc, _ = run(["ip", "link", "del", name], check=False)
        if rc == 0:
            removed.append(name)
    return removed


def pick_subnet():
    """A 10.77.S.0/24 no local address or route uses; S in 1..250."""
    _, out = run(["ip", "-4", "-o", "addr", "show"], check=False)
    _, routes = run(["ip", "-4", "route", "show"], check=False)
    used = set(re.findall(r"10\.77\.(\d+)\.", out + "\n" + routes))
    start = os.getpid() % 250
    for k in range(250):
        s = (start + k) % 250 + 1
        if str(s) not in used:
            return s
    raise NetError("no free 10.77.S.0/24 subnet")


class Net:
    """The namespaces, veths and bridge of one drill cluster of n nodes."""

    def __init__(self, n):
        self.n = n                              # number of nodes
        self.pid = os.getpid()                  # in every name
        self.subnet = None                      # S of 10.77.S.0/24
        self.bridge = "%s%dbr" % (PREFIX, self.pid)
        self.namespaces = []                    # made, in order
        self.links = []                         # host-side links made (and the bridge)
        self.slowed = set()                     # node numbers with a qdisc
        self.slow_method = None                 # "netem" or "tbf" once slow() ran

    def ns(self, i):
        return "%s-%d-%d" % (PREFIX, self.pid, i)

    def host_if(self, i):
        return "%s%dh%d" % (PREFIX, self.pid, i)

    def node_if(self, i):
        return "%s%dn%d" % (PREFIX, self.pid, i)

    def addr(self, i):
        return "10.77.%d.%d" % (self.subnet, i)

    def setup(self):
        """Make everything; on failure, remove what was made and raise."""
        try:
            self.subnet = pick_subnet()
            run(["ip", "link", "add", self.bridge, "type", "bridge"])
            self.links.append(self.bridge)
            run(["ip", "addr", "add", "10.77.%d.254/24" % self.subnet, "dev", self.bridge])
            run(["ip", "link", "set", self.bridge, "up"])
            for i in range(1, self.n + 1):
                ns = self.ns(i)
                run(["ip", "netns", "add", ns])
                self.namespaces.append(ns)
                run(["ip", "link", "add", self.host_if(i), "type", "veth", "peer",
                     "name", self.node_if(i), "netns", ns])
                self.links.append(self.host_if(i))
                run(["ip", "link", "set", self.host_if(i), "master", self.bridge])
                run(["ip", "link", "set", self.host_if(i), "up"])
                run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"])
                run(["ip", "netns", "exec", ns, "ip", "addr", "add",
                     "%s/24" % self.addr(i), "dev", self.node_if(i)])
                run(["ip", "netns", "exec", ns, "ip", "link", "set", self.node_if(i), "up"])
        except Exception:
            self.close()
            raise

    def exec_prefix(self, i):
        """argv prefix running a command inside node i's namespace."""
        return ["ip", "netns", "exec", self.ns(i)]

    def cut(self, i):
        run(["ip", "link", "set", self.host_if(i), "down"])

    def heal(self, i):
        run(["ip", "link", "set", self.host_if(i), "up"])

    def _qdisc(self, i, spec):
        run(["tc", "qdisc", "replace", "dev", self.host_if(i), "root"] + spec)
        run(self.exec_prefix(i) + ["tc", "qdisc", "replace", "dev", self.node_if(i),
                                   "root"] + spec)

    def slow(self, i):
        """Latency on node i's link, both directions; returns the method."""
        self.slowed.add(i)
        try:
            self._qdisc(i, NETEM_DELAY)
            self.slow_method = "netem delay 100ms +-50ms"
        except NetError:
            self._qdisc(i, TBF_LIMIT)
            self.slow_method = "tbf 256kbit (no netem in this kernel)"
        return self.slow_method

    def unslow(self, i):
        run(["tc", "qdisc", "del", "dev", self.host_if(i), "root"], check=False)
        run(self.exec_prefix(i) + ["tc", "qdisc", "del", "dev", self.node_if(i), "root"],
            check=False)
        self.slowed.discard(i)

    def close(self):
        """Remove every qdisc, namespace, veth and the bridge made here."""
        for i in sorted(self.slowed):
            self.unslow(i)
        for ns in self.namespaces:
            run(["ip", "netns", "del", ns], check=False)
        self.namespaces = []
        for link in reversed(self.links):
            rc, _ = run(["ip", "link", "show", link], check=False)
            if rc == 0:
                run(["ip", "link", "del", link], check=False)
        self.links = []
