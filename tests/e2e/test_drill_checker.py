"""The drill checker (cluster/drill_lib/checker.py) on histories, no cluster.

Hand-written histories: stale reads, lost writes, reads of values never
written or of deleted values must be flagged; concurrent writes read in
either order and unknown writes that did or did not happen must pass.
Generated histories: a register simulated with random op durations around
each linearization point is always accepted; the same history with one read
made stale is always flagged."""

import os
import random
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "cluster"))

from drill_lib import checker  # noqa: E402
from drill_lib.checker import Op  # noqa: E402

K = "p0"


def w(value, start, end, outcome="ok", kind="put", key=K):
    return Op(key, kind, value, start, end, outcome, node=1, client=0)


def d(start, end, outcome="ok", key=K):
    return Op(key, "delete", None, start, end, outcome, node=1, client=0)


def r(value, start, end, key=K, client=0):
    return Op(key, "read", value, start, end, "ok", node=1, client=client)


def final(value, t, key=K):
    return Op(key, "read", value, t, t + 0.01, "ok", node=1, client="final")


def verdict(ops):
    return checker.check_history(ops)["verdict"]


class HandWritten(unittest.TestCase):

    def test_sequential_writes_and_reads_are_linearizable(self):
        h = [w("a", 0, 1), r("a", 2, 3), w("b", 4, 5), r("b", 6, 7), d(8, 9),
             r(None, 10, 11), final(None, 20)]
        self.assertEqual(verdict(h), "ok")

    def test_a_stale_read_after_a_newer_write_completed_is_flagged(self):
        h = [w("a", 0, 1), w("b", 2, 3), r("a", 4, 5)]
        res = checker.check_history(h)
        self.assertEqual(res["verdict"], "violation")
        self.assertEqual(res["violations"], 1)
        self.assertTrue(res["keys"][K]["detail"])

    def test_a_lost_acknowledged_write_is_flagged_by_the_final_read(self):
        h = [w("a", 0, 1), w("b", 2, 3), final("a", 10)]
        res = checker.check_history(h)
        self.assertEqual(res["verdict"], "violation")
        self.assertEqual([x["value"] for x in res["lost_writes"]], ["b"])

    def test_a_write_missing_from_one_node_final_read_is_flagged(self):
        h = [w("a", 0, 1), w("b", 2, 3), final("b", 10), final("a", 10.1)]
        self.assertEqual(verdict(h), "violation")

    def test_a_read_of_a_value_never_written_is_flagged(self):
        h = [w("a", 0, 1), r("zzz", 2, 3)]
        res = checker.check_history(h)
        self.assertEqual(res["verdict"], "violation")
        self.assertIn("never written", res["keys"][K]["detail"][0])

    def test_a_read_of_a_failed_write_is_flagged(self):
        h = [w("a", 0, 1, outcome="failed"), r("a", 2, 3)]
        self.assertEqual(verdict(h), "violation")

    def test_a_read_of_a_deleted_value_after_the_delete_completed_is_flagged(self):
        h = [w("a", 0, 1), d(2, 3), r("a", 4, 5)]
        self.assertEqual(verdict(h), "violation")

    def test_a_read_absent_before_any_write_is_linearizable(self):
        h = [r(None, 0, 1), w("a", 2, 3), r("a", 4, 5)]
        self.assertEqual(verdict(h), "ok")

    def test_concurrent_writes_read_in_either_order_are_linearizable(self):
        base = [w("a", 0, 5), w("b", 1, 6)]
        self.assertEqual(verdict(base + [r("a", 7, 8), final("a", 20)]), "ok")
        self.assertEqual(verdict(base + [r("b", 7, 8), final("b", 20)]), "ok")

    def test_reads_during_concurrent_writes_may_see_old_or_new_values(self):
        h = [w("a", 0, 1), w("b", 2, 10), r("a", 3, 4), r("b", 5, 6),
             r("b", 11, 12)]
        self.assertEqual(verdict(h), "ok")

    def test_two_reads_flipping_back_to_an_older_value_are_flagged(self):
        h = [w("a", 0, 1), w("b", 2, 10), r("b", 3, 4), r("a", 5, 6)]
        self.assertEqual(verdict(h), "violation")

    def test_an_unknown_write_that_took_effect_is_linearizable(self):
        h = [w("a", 0, 1), w("b", 2, 3, outcome="unknown"), r("b", 10, 11),
             final("b", 20)]
        self.assertEqual(verdict(h), "ok")

    def test_an_unknown_write_that_never_took_effect_is_linearizable(self):
        h = [w("a", 0, 1), w("b", 2, 3, outcome="unknown"), r("a", 10, 11),
             final("a", 20)]
        self.assertEqual(verdict(h), "ok")

    def test_an_unknown_write_may_take_effect_long_after_its_client_gave_up(self):
        h = [w("a", 0, 1), w("b", 2, 3, outcome="unknown"), r("a", 10, 11),
             r("b", 12, 13), final("b", 20)]
        self.assertEqual(verdict(h), "ok")

    def test_an_unknown_delete_may_or_may_not_take_effect(self):
        h1 = [w("a", 0, 1), d(2, 3, outcome="unknown"), r(None, 5, 6)]
        h2 = [w("a", 0, 1), d(2, 3, outcome="unknown"), r("a", 5, 6)]
        self.assertEqual(verdict(h1), "ok")
        self.assertEqual(verdict(h2), "ok")

    def test_an_unknown_write_cannot_take_effect_before_it_started(self):
        h = [w("a", 0, 1), r("b", 2, 3), w("b", 4, 5, outcome="unknown")]
        self.assertEqual(verdict(h), "violation")

    def test_an_overwritten_acknowledged_write_is_not_lost(self):
        h = [w("a", 0, 1), w("b", 2, 3), d(4, 5), final(None, 10)]
        res = checker.check_history(h)
        self.assertEqual(res["verdict"], "ok")
        self.assertEqual(res["lost_writes"], [])

    def test_keys_are_checked_independently(self):
        h = [w("a", 0, 1, key="p0"), w("x", 0, 1, key="p1"), r("a", 2, 3, key="p0"),
             r("x", 2, 3, key="p1"), w("b", 4, 5, key="p0"), r("a", 6, 7, key="p0")]
        res = checker.check_history(h)
        self.assertEqual(res["keys"]["p0"]["verdict"], "violation")
        self.assertEqual(res["keys"]["p1"]["verdict"], "ok")

    def test_an_exhausted_search_budget_answers_unknown_not_ok(self):
        h = [w("v%d" % i, 0, 100) for i in range(12)] + \
            [r("v%d" % i, 101 + i, 101.5 + i) for i in range(3)]
        res = checker.check_history(h, budget=5)
        self.assertEqual(res["verdict"], "unknown")

    def test_the_checker_does_not_change_the_history(self):
        h = [w("a", 0, 1), w("b", 2, 3, outcome="unknown"), r("a", 4, 5)]
        before = [o.to_dict() for o in h]
        checker.check_history(h)
        self.assertEqual([o.to_dict() for o in h], before)


class Availability(unittest.TestCase):

    def test_the_longest_gap_and_first_write_after_the_fault_are_measured(self):
        h = [w("a", 0, 1), w("b", 1.5, 2), w("c", 3, 6), w("d", 6.5, 7)]
        for o, n in zip(h, (1, 1, 2, 1)):
            o.node = n
        a = checker.availability(h, 0.0, 8.0, fault_at=2.5, survivors={1})
        self.assertAlmostEqual(a["longest_gap_s"], 4.0)
        self.assertAlmostEqual(a["first_write_after_fault_s"], 4.5)


def generate(rng, n_ops, n_clients=6, p_unknown=0.1, p_failed=0.05):
    """A linearizable history of one register: each of n_clients runs ops
    one after the other, with random durations; each op takes effect at a
    random point between its start and end (the register is simulated in
    the order of those points); unknown writes take effect or not at random;
    failed writes never do."""
    free = [rng.uniform(0.0, 0.05) for _ in range(n_clients)]
    planned = []
    for i in range(n_ops):
        c = min(range(n_clients), key=lambda k: free[k])
        start = free[c] + rng.uniform(0.0, 0.01)
        end = start + rng.uniform(0.001, 0.2)
        free[c] = end
        planned.append((rng.uniform(start, end), start, end, c, i))
    planned.sort()
    ops = []
    state = None
    t_end = 0.0
    for point, start, end, c, i in planned:
        t_end = max(t_end, end)
        x = rng.random()
        if x < 0.45:
            ops.append(Op(K, "read", state, start, end, "ok", node=1, client=c))
            continue
        kind = "delete" if x < 0.55 else rng.choice(("put", "patch"))
        value = None if kind == "delete" else "c%d-%d" % (c, i)
        y = rng.random()
        if y < p_failed:
            ops.append(Op(K, kind, value, start, end, "failed", node=1, client=c))
        elif y < p_failed + p_unknown:
            if rng.random() < 0.5:
                state = value
            ops.append(Op(K, kind, value, start, end, "unknown", node=1, client=c))
        else:
            state = value
            ops.append(Op(K, kind, value, start, end, "ok", node=1, client=c))
    t = t_end + 1.0
    ops.sort(key=lambda o: o.start)
    ops.append(Op(K, "read", state, t, t + 0.01, "ok", node=1, client="final"))
    return ops


def make_stale(rng, ops):
    """Corrupt one read so that it returns a value certainly overwritten
    before the read began; None when the history has no such read."""
    acked = [o for o in ops if o.is_write and o.outcome == "ok" and o.value is not None]
    candidates = []
    for rd in ops:
        if rd.kind != "read" or rd.client == "final":
            continue
        for a in acked:
            if a.value == rd.value:
                continue
            later = [b for b in acked if b is not a and b.start > a.end
                     and b.end < rd.start]
            if later and a.end < rd.start:
                candidates.append((rd, a))
                break
    if not candidates:
        return None
    rd, a = rng.choice(candidates)
    rd.value = a.value
    return ops


class Generated(unittest.TestCase):

    def test_generated_linearizable_histories_are_accepted(self):
        rng = random.Random(1234)
        for _ in range(60):
            h = generate(rng, rng.randrange(20, 400))
            res = checker.check_history(h)
            self.assertEqual(res["verdict"], "ok", res)

    def test_a_long_generated_history_is_checked_within_the_budget(self):
        rng = random.Random(99)
        h = generate(rng, 5000, n_clients=8)
        self.assertEqual(checker.check_history(h)["verdict"], "ok")

    def test_generated_histories_with_one_stale_read_are_flagged(self):
        rng = random.Random(4321)
        flagged = 0
        for _ in range(60):
            h = make_stale(rng, generate(rng, rng.randrange(20, 300)))
            if h is None:
                continue
            self.assertEqual(checker.check_history(h)["verdict"], "violation")
            flagged += 1
        self.assertGreater(flagged, 40)

    def test_generated_histories_with_one_read_of_an_unwritten_value_are_flagged(self):
        rng = random.Random(77)
        for _ in range(30):
            h = generate(rng, rng.randrange(20, 300))
            reads = [o for o in h if o.kind == "read" and o.client != "final"]
            rng.choice(reads).value = "never-written"
            self.assertEqual(checker.check_history(h)["verdict"], "violation")

    def test_generated_histories_with_a_dropped_acknowledged_write_are_flagged(self):
        rng = random.Random(5)
        flagged = 0
        for _ in range(40):
            h = generate(rng, rng.randrange(20, 300), p_unknown=0.0)
            fin = h[-1]
            acked = [o for o in h if o.is_write and o.outcome == "ok"]
            last = max(acked, key=lambda o: o.end, default=None)
            if last is None or last.value is None:
                continue
            others = [o for o in acked if o.value is not None
                      and o.value != last.value and o.end < last.start]
            if not others:
                continue
            fin.value = others[-1].value
            self.assertEqual(checker.check_history(h)["verdict"], "violation")
            flagged += 1
        self.assertGreater(flagged, 10)


if __name__ == "__main__":
    # ctest passes --ctxd PATH to every e2e file; this one needs no binary.
    argv = [a for i, a in enumerate(sys.argv)
            if a != "--ctxd" and (i == 0 or sys.argv[i - 1] != "--ctxd")
            and not a.startswith("--ctxd=")]
    unittest.main(verbosity=2, argv=argv)
