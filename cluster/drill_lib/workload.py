"""The drill workload: concurrent clients that record every operation.

Each client thread loops until stopped: it picks a node at random, an
operation (PUT 30 %, PATCH 20 %, GET 40 %, DELETE 10 %) and one of a few
properties of one session (so that clients collide), sends it, and records
an `checker.Op` per property touched (a PATCH of two properties records two
writes with the same times). Every written value is unique ("cC-N": client C,
its Nth write). Reads use the default consistency (linearizable) unless the
drill asks for another level (to show the checker catching stale reads).

Outcome of a write, as the client can know it:
  204                                   ok
  503, 429, or no connection made       failed (certainly not applied)
  504, timeout or connection lost after
  sending, any other answer             unknown
An unknown write is retried once, with the same X-REQUEST-ID, on another
node: a 204 makes the op ok (end = the retry's end); anything else leaves it
unknown. A read is ok with a 200 (the value) or a 404 property_not_found /
namespace_not_found (absent); anything else makes it failed (no information).

Invariants: every request has a connect timeout and a response timeout, so
each op ends in bounded time; the recorder appends under a lock; clients
stop at the first check of the stop flag after it is set.
"""

import http.client
import json
import random
import socket
import threading
import time
import uuid

from .checker import Op

CONNECT_TIMEOUT_S = 1.0       # making a connection
REQUEST_TIMEOUT_S = 2.0       # waiting for an answer once sent: short, so
                              # that a request stuck on a cut-off leader does not
                              # hide the new leader from its client for long
BACKOFF_S = 0.05              # pause after an op that did not succeed
THINK_MAX_S = 0.004           # pause between ops, uniform in [0, this]


class Recorder:
    """The history, appended by every client."""

    def __init__(self):
        self.lock = threading.Lock()    # guards ops and statuses
        self.ops = []                   # checker.Op, in order of recording
        self.statuses = {}              # answer (status or exception name) -> count

    def add(self, ops):
        with self.lock:
            for o in ops:
                o.id = len(self.ops)
                self.ops.append(o)

    def count(self, what):
        with self.lock:
            self.statuses[what] = self.statuses.get(what, 0) + 1


class Target:
    """Where the clients write: account, namespace, session, properties."""

    def __init__(self, api_key, acc, ns, sid, keys, consistency=None):
        self.api_key = api_key          # the account's maven-api-key
        self.acc = acc                  # account id
        self.ns = ns                    # namespace
        self.sid = sid                  # session id (fresh per run)
        self.keys = list(keys)          # property names
        self.consistency = consistency  # workload reads: None = default (linearizable)

    def props(self):
        return "/v1/account/%s/%s/%s/properties" % (self.acc, self.ns, self.sid)

    def prop(self, key):
        return self.props() + "/" + key

    def read_path(self, key):
        """The workload's GET of key (final reads always use the default)."""
        if self.consistency is None:
            return self.prop(key)
        return self.prop(key) + "?consistency=" + self.consistency


class Conns:
    """One keep-alive connection per node for one client."""

    def __init__(self, cluster):
        self.cluster = cluster          # nodes.Cluster (host and port of each node)
        self.conns = {}                 # node id -> HTTPConnection

    def drop(self, node):
        c = self.conns.pop(node, None)
        if c is not None:
            c.close()

    def close(self):
        for node in list(self.conns):
            self.drop(node)

    def send(self, node, method, path, body, headers):
        """("sent", status, body) | ("refused", what, None) |
        ("lost", what, None): lost means the request may have been sent."""
        c = self.conns.get(node)
        if c is None:
            x = self.cluster.nodes[node]
            c = http.client.HTTPConnection(x["host"], x["http"], timeout=CONNECT_TIMEOUT_S)
            try:
                c.connect()
                c.sock.settimeout(REQUEST_TIMEOUT_S)
            except OSError as e:
                c.close()
                return "refused", type(e).__name__, None
            self.conns[node] = c
        try:
            c.request(method, path, body=body, headers=headers)
            r = c.getresponse()
            data = r.read()
        except (OSError, http.client.HTTPException) as e:
            self.drop(node)
            return "lost", type(e).__name__, None
        if r.will_close:
            self.drop(node)
        return "sent", r.status, data


def classify_write(how, status):
    if how == "refused":
        return "failed"
    if how == "lost":
        return "unknown"
    if status == 204:
        return "ok"
    if status in (503, 429):
        return "failed"
    return "unknown"


def read_value(how, status, data):
    """(outcome, value) of a GET of one property."""
    if how != "sent":
        return "failed", None
    if status == 200:
        try:
            return "ok", json.loads(data)
        except ValueError:
            return "ok", "<unparsable %r>" % data[:40]
    if status == 404:
        try:
            code = json.loads(data).get("code")
        except (ValueError, AttributeError):
            code = None
        if code in ("property_not_found", "namespace_not_found"):
            return "ok", None
    return "failed", None


class Client(threading.Thread):
    """One workload client."""

    def __init__(self, cid, cluster, target, recorder, stop, seed):
        super().__init__(daemon=True)
        self.cid = cid                  # client number
        self.cluster = cluster          # nodes.Cluster
        self.target = target            # Target
        self.rec = recorder             # Recorder
        self.stop_flag = stop           # threading.Event: stop after this op
        self.rng = random.Random(seed)  # this client's choices
        self.n = 0                      # values written so far
        self.conns = Conns(cluster)     # keep-alive connections

    def value(self):
        self.n += 1
        return "c%d-%d" % (self.cid, self.n)

    def headers(self, rid=None, data=None):
        h = {"maven-api-key": self.target.api_key}
        if rid is not None:
            h["X-REQUEST-ID"] = rid
        if data is not None:
            h["Content-Type"] = "application/json"
        return h

    def note(self, how, status):
        self.rec.count(status if how == "sent" else how + ":" + str(status))

    def write(self, node, method, path, body):
        """(outcome, node answered, end time) after at most one retry."""
        rid = uuid.uuid4().hex
        data = None if body is None else json.dumps(body).encode()
        how, st, _ = self.conns.send(node, method, path, data, self.headers(rid, data))
        self.note(how, st)
        outcome = classify_write(how, st)
        if outcome == "unknown":
            others = [i for i in self.cluster.ids() if i != node]
            if others:
                node = self.rng.choice(others)
                how, st, _ = self.conns.send(node, method, path, data,
                                             self.headers(rid, data))
                self.note(how, st)
                if classify_write(how, st) == "ok":
                    outcome = "ok"
        return outcome, node, time.monotonic()

    def one(self):
        ids = self.cluster.ids()
        node = self.rng.choice(ids)
        x = self.rng.random()
        t = self.target
        start = time.monotonic()
        if x < 0.4:
            key = self.rng.choice(t.keys)
            how, st, data = self.conns.send(node, "GET", t.read_path(key), None,
                                            self.headers())
            self.note(how, st)
            outcome, value = read_value(how, st, data)
            ops = [Op(key, "read", value, start, time.monotonic(), outcome, node, self.cid)]
        elif x < 0.7:
            key = self.rng.choice(t.keys)
            v = self.value()
            outcome, n2, end = self.write(node, "PUT", t.prop(key), v)
            ops = [Op(key, "put", v, start, end, outcome, n2, self.cid)]
        elif x < 0.9:
            keys = self.rng.sample(t.keys, self.rng.choice((1, 2)))
            body = {k: self.value() for k in keys}
            outcome, n2, end = self.write(node, "PATCH", t.props(), body)
            ops = [Op(k, "patch", v, start, end, outcome, n2, self.cid)
                   for k, v in body.items()]
        else:
            key = self.rng.choice(t.keys)
            outcome, n2, end = self.write(node, "DELETE", t.prop(key), None)
            ops = [Op(key, "delete", None, start, end, outcome, n2, self.cid)]
        self.rec.add(ops)
        return outcome

    def run(self):
        try:
            while not self.stop_flag.is_set():
                if self.one() != "ok":
                    time.sleep(BACKOFF_S)
                else:
                    time.sleep(self.rng.uniform(0.0, THINK_MAX_S))
        finally:
            self.conns.close()


class Workload:
    """n clients over every node of a cluster."""

    def __init__(self, cluster, target, n_clients, seed):
        self.rec = Recorder()
        self.stop_flag = threading.Event()
        self.clients = [Client(c, cluster, target, self.rec, self.stop_flag,
                               seed * 1000 + c) for c in range(n_clients)]

    def start(self):
        for c in self.clients:
            c.start()

    def stop(self):
        """Stop every client and wait (bounded) for its op in flight."""
        self.stop_flag.set()
        deadline = time.monotonic() + 2 * (CONNECT_TIMEOUT_S + REQUEST_TIMEOUT_S) + 5
        for c in self.clients:
            c.join(max(0.1, deadline - time.monotonic()))
        return [c.cid for c in self.clients if c.is_alive()]


def final_reads(cluster, target, nodes, attempts=20):
    """Linearizable reads of every property on every node, after healing;
    returns (ops, failures). Each read is retried (bounded) until it answers."""
    ops = []
    failures = []
    for node in nodes:
        conns = Conns(cluster)
        try:
            for key in target.keys:
                for k in range(attempts):
                    start = time.monotonic()
                    how, st, data = conns.send(node, "GET", target.prop(key), None,
                                               {"maven-api-key": target.api_key})
                    outcome, value = read_value(how, st, data)
                    if outcome == "ok":
                        ops.append(Op(key, "read", value, start, time.monotonic(), "ok",
                                      node, "final"))
                        break
                    if k == attempts - 1:
                        failures.append("node %d %s: %s %s" % (node, key, how, st))
                    time.sleep(0.2)
        finally:
            conns.close()
    return ops, failures
