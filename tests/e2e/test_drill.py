"""End-to-end: a short failover drill of every scenario (cluster/drill).

Each test runs one scenario once on its own fresh cluster with a few seconds
of load (DURATION), then asserts what the drill checks: no acknowledged write
lost, every key linearizable (final reads on every node included), every
node at the same digest and index within 10 s of healing, no node dying on
its own. The network scenarios (partition-leader, partition-minority,
flapping, slow-network) need network namespaces (root, `ip netns add`):
without them they are skipped, and the skip says why. The whole file stays
well under ctest's 300 s timeout on a 2-core machine."""

import os
import sys
import types
import unittest

import harness

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "cluster"))

from drill_lib import checker, net, scenarios  # noqa: E402

DURATION = 5.0          # seconds of load per scenario
CLIENTS = 6             # concurrent clients
SEED = 20260101         # fixed, so a failure can be replayed

_NET = None


def netns():
    """(usable, why), probed once."""
    global _NET
    if _NET is None:
        _NET = net.probe()
    return _NET


class Drill(unittest.TestCase):

    def drill(self, name):
        needs_net = scenarios.SCENARIOS[name][1]
        use_net, why = netns()
        if needs_net and not use_net:
            self.skipTest("network namespaces unavailable (%s): %s not run" % (why, name))
        opts = types.SimpleNamespace(bin=harness.ctxd_path(), nodes=3, clients=CLIENTS,
                                     duration=DURATION, seed=SEED,
                                     budget=checker.DEFAULT_BUDGET, ctxd_args=[],
                                     keep=False)
        r = scenarios.run_scenario(name, opts, use_net, 1, lambda msg: None)
        sys.stderr.write("\n" + scenarios.table([r]) + "\n")
        msg = scenarios.details([r])
        self.assertEqual(r["errors"], [], msg)
        self.assertEqual(r["lost_writes"], 0, msg)
        self.assertEqual(r["linearizable"], "ok", msg)
        self.assertTrue(r["converged"], msg)
        self.assertGreater(r["ops"]["write"]["ok"], 0, msg)
        self.assertEqual(r["verdict"], "pass", msg)

    def test_killing_the_leader_loses_no_acknowledged_write(self):
        self.drill("leader-kill")

    def test_a_leadership_transfer_under_load_stays_linearizable(self):
        self.drill("leader-transfer")

    def test_killing_a_follower_loses_no_acknowledged_write(self):
        self.drill("follower-kill")

    def test_cutting_off_the_leader_stays_linearizable_and_converges(self):
        self.drill("partition-leader")

    def test_cutting_off_a_follower_stays_linearizable_and_converges(self):
        self.drill("partition-minority")

    def test_a_flapping_follower_stays_linearizable_and_converges(self):
        self.drill("flapping")

    def test_losing_a_whole_region_of_five_nodes_loses_nothing(self):
        self.drill("region-loss")

    def test_restarting_every_node_at_once_loses_no_acknowledged_write(self):
        self.drill("restart-all")

    def test_a_slow_follower_link_catches_up_and_converges(self):
        self.drill("slow-network")


if __name__ == "__main__":
    harness.main()
