"""The drill checker: is a recorded client history correct?

A history is a list of `Op`s. Each op touched one key (a property of one
session) and is one of
  write   PUT or PATCH of `value` (a unique text), or DELETE (`value` None),
  read    a GET that returned `value` (None: the property was absent),
with its start and end times (monotonic seconds, as the client saw them) and
its outcome:
  ok       the server acknowledged it (a write took effect exactly once,
           somewhere between start and end; a read saw `value`);
  failed   it certainly had no effect (503, 429, nothing sent); failed reads
           carry no information and are ignored;
  unknown  a write that may or may not have taken effect, at any time after
           its start (it is modelled with end = +infinity).

Checks:
  1. Linearizability per key (P-compositionality: a history is linearizable
     iff each key's sub-history is), for a register with delete whose initial
     state is absent. Search: Wing & Gong's backtracking over the call/return
     list as refined by Lowe (lift the op out of the list once linearized),
     with memoization on (set of linearized ops, register state). An
     unknown PUT/PATCH whose value some read saw took effect before the first
     such read ended (values are unique); one whose value no read saw is
     dropped (it may as well never have happened). An unknown delete is
     "lazy": it is linearized only when a read of absent needs it, choosing
     the candidate that started last (see _latest_lazy), so pending unknown
     deletes do not multiply the search. The search is bounded by a step
     budget; past it the verdict is "unknown", never a pass.
  2. Lost writes: the caller adds the final reads (every key, every node,
     after healing) as ok reads that start after every other op ended, so an
     acknowledged write that was neither the final value nor overwritten by a
     later or concurrent write makes the key non-linearizable. `lost_writes`
     also names the acknowledged writes that are certainly lost: the final
     value's writers all ended before the write started.
  3. Availability: the longest gap between acknowledged writes, and the time
     from a fault to the first acknowledged write started after it.

Invariants: the checker never mutates the ops it is given; every verdict is
one of "ok", "violation", "unknown"; a violation carries a short excerpt of
the history around the op that could not be linearized.
"""

import math

INF = math.inf
DEFAULT_BUDGET = 2000000     # search steps per key before the verdict is "unknown"
EXCERPT_OPS = 12             # ops shown around a violation


class Op:
    """One client operation on one key."""

    __slots__ = ("id", "key", "kind", "value", "start", "end", "outcome",
                 "node", "client")

    def __init__(self, key, kind, value, start, end, outcome, node=None,
                 client=None, id=None):
        self.id = id              # position in the history (set by the recorder)
        self.key = key            # the property the op touched
        self.kind = kind          # "put", "patch", "delete" or "read"
        self.value = value        # text written or read; None = absent / delete
        self.start = start        # monotonic seconds when the request began
        self.end = end            # monotonic seconds when the answer came
        self.outcome = outcome    # "ok", "failed" or "unknown"
        self.node = node          # the node id the client talked to
        self.client = client      # the client thread number

    @property
    def is_write(self):
        return self.kind != "read"

    def to_dict(self):
        return {"id": self.id, "key": self.key, "kind": self.kind,
                "value": self.value, "start": round(self.start, 6),
                "end": None if self.end == INF else round(self.end, 6),
                "outcome": self.outcome, "node": self.node,
                "client": self.client}

    def describe(self, t0=0.0):
        end = "inf" if self.end == INF else "%.3f" % (self.end - t0)
        return "%-6s %-7s %-14s [%.3f, %s] node %s client %s" % (
            self.kind, self.outcome, repr(self.value), self.start - t0, end,
            self.node, self.client)


class _Entry:
    """A call or return event in Lowe's doubly linked list."""

    __slots__ = ("op", "idx", "is_call", "match", "prev", "next", "time")

    def __init__(self, op, idx, is_call, time):
        self.op = op              # the Op
        self.idx = idx            # bit index of the op in the linearized set
        self.is_call = is_call    # True: call event; False: return event
        self.match = None         # call: its return entry
        self.prev = None          # previous entry (the head sentinel at the front)
        self.next = None          # next entry, None at the end
        self.time = time          # event time, for ordering


def _relevant(ops):
    """The ops of one key the search needs, as (op, start, end): ok reads, ok
    writes, unknown deletes (end = +inf) and unknown PUT/PATCHes whose value
    some read saw (end = the end of the first such read: values are unique,
    so it took effect before that read). An unknown PUT/PATCH whose value no
    read saw is dropped: removing it from any valid linearization leaves one
    valid (no read lies between it and the next write), so it may be assumed
    never to have happened."""
    first_read_end = {}
    for o in ops:
        if o.kind == "read" and o.outcome == "ok":
            first_read_end[o.value] = min(o.end, first_read_end.get(o.value, INF))
    out = []
    for o in ops:
        if o.outcome == "failed":
            continue
        if o.kind == "read":
            if o.outcome == "ok":
                out.append((o, o.start, o.end))
            continue
        if o.outcome == "unknown":
            if o.kind == "delete":
                out.append((o, o.start, INF))
            elif o.value in first_read_end:
                # Values are unique: a read saw it, so it took effect, and
                # before the first read of it ended.
                out.append((o, o.start, max(o.start, first_read_end[o.value])))
            continue
        elif o.outcome == "ok":
            out.append((o, o.start, o.end))
    return out


def _excerpt(ops, blocking, t0):
    """Lines describing the op that could not be linearized and the ops that
    overlap or closely precede it."""
    if blocking is None:
        return []
    near = [o for o in ops if o.outcome != "failed" and o.start <= blocking.end
            and (o.end >= blocking.start - 1.0)]
    near.sort(key=lambda o: o.start)
    if len(near) > EXCERPT_OPS:
        i = near.index(blocking) if blocking in near else 0
        lo = max(0, min(i - EXCERPT_OPS // 2, len(near) - EXCERPT_OPS))
        near = near[lo:lo + EXCERPT_OPS]
    lines = ["cannot linearize: " + blocking.describe(t0)]
    lines += ["  " + o.describe(t0) for o in near if o is not blocking]
    return lines


def _latest_lazy(entry, lazy):
    """The pending unknown delete that may take effect just before the read
    at `entry` and started last, or None.

    Candidates: lazy calls before `entry` in the list, and after it up to
    the first return entry (a delete that started while the read was running
    and after no unlinearized op ended). Every entry before the first return
    is a call, so each candidate may be linearized now. The one that started
    last is the canonical choice: one that started earlier can do in the
    future whatever it could (fewer ops ended before it started), so using
    the latest loses no linearization."""
    e = entry.next
    found = None
    while e is not None and e.is_call:
        if e.idx in lazy:
            found = e
        e = e.next
    if found is not None:
        return found
    e = entry.prev
    while e is not None and e.op is not None:
        if e.is_call and e.idx in lazy:
            return e
        e = e.prev
    return None


def check_key(ops, budget=DEFAULT_BUDGET, t0=None):
    """Linearizability of one key's history for a register with delete.

    Returns {"verdict": "ok"|"violation"|"unknown", "ops": N, "steps": N,
    "detail": [lines]}."""
    rel = _relevant(ops)
    if t0 is None:
        t0 = min((o.start for o in ops), default=0.0)
    result = {"verdict": "ok", "ops": len(rel), "steps": 0, "detail": []}

    written = {o.value for o, _, _ in rel if o.kind != "read"}
    written.add(None)
    for o, _, _ in rel:
        if o.kind == "read" and o.value not in written:
            result["verdict"] = "violation"
            result["detail"] = (["read of a value never written (or only by failed "
                                 "writes): %r" % (o.value,)]
                                + _excerpt(ops, o, t0))
            return result

    events = []
    entries = []
    for idx, (o, s, e) in enumerate(rel):
        call = _Entry(o, idx, True, s)
        ret = _Entry(o, idx, False, e)
        call.match = ret
        entries.append(call)
        # Sort key: time, then calls before returns at equal times (the two
        # ops are then concurrent, the more permissive reading).
        events.append((s, 0, idx, call))
        events.append((e, 1, idx, ret))
    events.sort(key=lambda t: (t[0], t[1], t[2]))
    head = _Entry(None, -1, False, -INF)
    prev = head
    for _, _, _, ent in events:
        prev.next = ent
        ent.prev = prev
        prev = ent

    def lift(c):
        c.prev.next = c.next
        if c.next is not None:
            c.next.prev = c.prev
        r = c.match
        r.prev.next = r.next
        if r.next is not None:
            r.next.prev = r.prev

    def unlift(c):
        r = c.match
        r.prev.next = r
        if r.next is not None:
            r.next.prev = r
        c.prev.next = c
        if c.next is not None:
            c.next.prev = c

    lazy = {idx for idx, (o, _, e) in enumerate(rel) if e == INF}
    remaining = len(rel) - len(lazy)
    state = None
    linearized = 0
    depth = 0
    best_depth = -1
    blocking = None
    cache = set()
    stack = []
    steps = 0
    entry = head.next
    while remaining > 0:
        steps += 1
        if steps > budget:
            result["verdict"] = "unknown"
            result["steps"] = steps
            result["detail"] = ["search budget of %d steps exceeded" % budget]
            return result
        if entry.is_call:
            o = entry.op
            chosen = entry
            if entry.idx in lazy:
                ok = False
            elif o.kind == "read":
                ok = (o.value == state)
                new_state = state
                if not ok and o.value is None:
                    # Take effect now: the pending unknown delete that
                    # started last; the read is retried after it.
                    chosen = _latest_lazy(entry, lazy)
                    ok = chosen is not None
                    new_state = None
            else:
                ok = True
                new_state = o.value
            if ok:
                bit = 1 << chosen.idx
                key = (linearized | bit, new_state)
                if key not in cache:
                    cache.add(key)
                    # Backtracking resumes after the entry scanned now
                    # (the read, when a lazy delete was chosen for it).
                    stack.append((chosen, state, entry))
                    state = new_state
                    linearized |= bit
                    depth += 1
                    if chosen.idx not in lazy:
                        remaining -= 1
                    lift(chosen)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            # A return event before its op was linearized: backtrack.
            if depth > best_depth:
                best_depth = depth
                blocking = entry.op
            if not stack:
                result["verdict"] = "violation"
                result["steps"] = steps
                result["detail"] = _excerpt(ops, blocking, t0)
                return result
            c, state, scanned = stack.pop()
            linearized &= ~(1 << c.idx)
            depth -= 1
            if c.idx not in lazy:
                remaining += 1
            unlift(c)
            entry = scanned.next
    result["steps"] = steps
    return result


def lost_writes(ops):
    """Acknowledged writes certainly lost, per the final reads.

    `ops` is one key's history including its final reads (kind "read",
    client "final"). A write w acknowledged (ok) is certainly lost when some
    final read saw a value whose every possible writer (the writes of that
    value, ok or unknown; for absent, every delete and the initial state)
    ended before w started: w then had to be overwritten by something after
    it, yet the final state predates it."""
    finals = [o for o in ops if o.client == "final" and o.kind == "read"
              and o.outcome == "ok"]
    if not finals:
        return []
    writes = [o for o in ops if o.is_write and o.outcome != "failed"]
    lost = []
    for w in writes:
        if w.outcome != "ok":
            continue
        for f in finals:
            if f.value == w.value:
                continue
            writers = [x for x in writes if x.value == f.value and x is not w]
            end = max((INF if x.outcome == "unknown" else x.end for x in writers),
                      default=-INF)
            if end < w.start:
                lost.append(w)
                break
    return lost


def by_key(ops):
    keys = {}
    for o in ops:
        keys.setdefault(o.key, []).append(o)
    return keys


def check_history(ops, budget=DEFAULT_BUDGET):
    """Every check of one history (final reads included).

    Returns {"verdict": "ok"|"violation"|"unknown", "keys": {key: check_key
    result}, "lost_writes": [op dicts], "violations": N}."""
    t0 = min((o.start for o in ops), default=0.0)
    out = {"verdict": "ok", "keys": {}, "lost_writes": [], "violations": 0}
    unknown = False
    for key, kops in sorted(by_key(ops).items()):
        r = check_key(kops, budget, t0)
        out["keys"][key] = r
        if r["verdict"] == "violation":
            out["violations"] += 1
        elif r["verdict"] == "unknown":
            unknown = True
        out["lost_writes"] += [o.to_dict() for o in lost_writes(kops)]
    if out["violations"] or out["lost_writes"]:
        out["verdict"] = "violation"
    elif unknown:
        out["verdict"] = "unknown"
    return out


def availability(ops, t_begin, t_end, fault_at=None, survivors=None):
    """Availability figures from the acknowledged writes in [t_begin, t_end].

    Returns {"longest_gap_s": longest time with no acknowledged write (the
    window edges count as gap ends), "first_write_after_fault_s": time from
    fault_at to the end of the first acknowledged write started at or after
    it on a node of `survivors` (None: any node), or None}."""
    acks = sorted(o.end for o in ops if o.is_write and o.outcome == "ok"
                  and o.client != "final" and t_begin <= o.end <= t_end)
    points = [t_begin] + acks + [t_end]
    gap = max((b - a for a, b in zip(points, points[1:])), default=0.0)
    first = None
    if fault_at is not None:
        after = [o.end - fault_at for o in ops
                 if o.is_write and o.outcome == "ok" and o.client != "final"
                 and o.start >= fault_at
                 and (survivors is None or o.node in survivors)]
        first = min(after) if after else None
    return {"longest_gap_s": gap, "first_write_after_fault_s": first}
