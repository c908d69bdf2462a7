"""End-to-end: the local cluster tools cluster/up, cluster/status, cluster/down.

up starts 3 nodes on a free --base-port with the binary under test, status
shows one leader and equal digests on every node, up refuses a directory with
a running cluster, down stops exactly the recorded processes (and never a pid
that is not a ctxd of that directory)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import harness

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL_TIMEOUT = 90.0       # seconds for one tool run


def base_port_free(n):
    """A base port P with P..P+n-1 and P+1000..P+1000+n-1 free a moment ago."""
    for _ in range(200):
        p = harness.free_port()
        if p + 1000 + n > 65535:
            continue
        s = []
        ok = True
        for port in list(range(p, p + n)) + list(range(p + 1000, p + 1000 + n)):
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                ok = False
            s.append(sock)
        for sock in s:
            sock.close()
        if ok:
            return p
    raise AssertionError("no free base port found")


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            st = f.read()
    except OSError:
        return False
    return st[st.rfind(b")") + 2:st.rfind(b")") + 3] != b"Z"


class ClusterTools(harness.NodeTestCase):

    def setUp(self):
        self.nodes = []
        self.dir = os.path.join(tempfile.mkdtemp(prefix="ctxd-e2e-tools-"), "cl")
        self.addCleanup(shutil.rmtree, os.path.dirname(self.dir), True)
        self.addCleanup(self.kill_leftovers)

    def kill_leftovers(self):
        """Kill any ctxd still running from self.dir (only if the test failed
        before down)."""
        for pid in self.pids():
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if os.path.basename(args[0]) == b"ctxd" and any(
                    a.startswith(self.dir.encode()) for a in args):
                os.kill(pid, signal.SIGKILL)

    def pids(self):
        try:
            with open(os.path.join(self.dir, "pids")) as f:
                return [int(line.split()[1]) for line in f if line.strip()]
        except OSError:
            return []

    def tool(self, name, *args):
        p = subprocess.run([os.path.join(ROOT, "cluster", name)] + list(args),
                           stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=TOOL_TIMEOUT)
        return p.returncode, p.stdout.decode("utf-8", "replace"), \
            p.stderr.decode("utf-8", "replace")

    def log_tails(self):
        out = []
        for i in (1, 2, 3):
            path = os.path.join(self.dir, "node%d" % i, "ctxd.log")
            try:
                with open(path, "rb") as f:
                    lines = f.read().decode("utf-8", "replace").splitlines()
            except OSError:
                continue
            out.append("---- %s ----\n%s" % (path, "\n".join(lines[-30:])))
        return "\n".join(out)

    def status_rows(self):
        rc, out, err = self.tool("status", "--dir", self.dir)
        rows = [line.split() for line in out.splitlines()[1:] if line.strip()]
        return rc, rows, out + err

    def test_up_status_down_run_a_local_cluster(self):
        base = base_port_free(3)
        rc, out, err = self.tool("up", "3", "--regions", "z1,z2,z3", "--dir", self.dir,
                                 "--base-port", str(base), "--bin", harness.ctxd_path())
        self.assertEqual(rc, 0, out + err + self.log_tails())
        for i in range(3):
            self.assertIn("127.0.0.1:%d" % (base + i), out)
            self.assertIn("127.0.0.1:%d" % (base + 1000 + i), out)
        self.assertRegex(out, r"leader:\s+[123]\b", out)
        for name in ("admin.token", "cluster.secret"):
            mode = os.stat(os.path.join(self.dir, name)).st_mode & 0o777
            self.assertEqual(mode, 0o600, name)
        pids = self.pids()
        self.assertEqual(len(pids), 3)
        self.assertTrue(all(alive(p) for p in pids))

        # status: one leader, every node a voter, equal digests at equal index.
        deadline = time.monotonic() + 10.0
        rows, text = None, ""
        for _ in range(100):
            rc, rows, text = self.status_rows()
            if rc == 0 and len({(r[6], r[7]) for r in rows}) == 1 and \
                    "None" not in [r[1] for r in rows]:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(rc, 0, text + self.log_tails())
        self.assertEqual([r[0] for r in rows], ["1", "2", "3"], text)
        self.assertEqual([r[1] for r in rows], ["z1", "z2", "z3"], text)
        self.assertEqual([r[4] for r in rows].count("yes"), 1, text)
        self.assertEqual({r[3] for r in rows}, {"voter"}, text)
        self.assertEqual(len({(r[6], r[7]) for r in rows}), 1, text)

        # A second up on the same directory is refused and starts nothing.
        rc, out, err = self.tool("up", "3", "--dir", self.dir, "--base-port", str(base),
                                 "--bin", harness.ctxd_path())
        self.assertNotEqual(rc, 0, out + err)
        self.assertIn("running", err)
        self.assertEqual(self.pids(), pids)

        rc, out, err = self.tool("down", "--dir", self.dir)
        self.assertEqual(rc, 0, out + err)
        self.assertFalse(any(alive(p) for p in pids), pids)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "pids")))
        for i in (1, 2, 3):
            with open(os.path.join(self.dir, "node%d" % i, "ctxd.log"), "rb") as f:
                log = f.read().decode("utf-8", "replace")
            self.assertIsNone(harness.sanitizer_report(log), log[-3000:])
        rc, _, text = self.status_rows()
        self.assertNotEqual(rc, 0, text)
        rc, out, err = self.tool("down", "--dir", self.dir)
        self.assertEqual(rc, 0, out + err)

    def test_down_never_signals_a_pid_that_is_not_a_ctxd_of_its_dir(self):
        os.makedirs(self.dir)
        other = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
        self.addCleanup(other.wait, 10)
        self.addCleanup(other.kill)
        with open(os.path.join(self.dir, "pids"), "w") as f:
            f.write("1 %d\n" % other.pid)
        rc, out, err = self.tool("down", "--dir", self.dir)
        self.assertEqual(rc, 0, out + err)
        self.assertIsNone(other.poll())
        self.assertTrue(alive(other.pid))

    def test_up_refuses_a_non_empty_directory_it_did_not_make(self):
        os.makedirs(self.dir)
        with open(os.path.join(self.dir, "precious.txt"), "w") as f:
            f.write("keep me\n")
        rc, out, err = self.tool("up", "1", "--dir", self.dir, "--base-port",
                                 str(base_port_free(1)), "--bin", harness.ctxd_path())
        self.assertNotEqual(rc, 0, out + err)
        self.assertTrue(os.path.exists(os.path.join(self.dir, "precious.txt")))
        self.assertEqual(self.pids(), [])


if __name__ == "__main__":
    sys.exit(harness.main())
