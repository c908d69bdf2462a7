"""End-to-end: GET /metrics and the log lines.

A node serves known traffic; its /metrics answer is parsed line by line by a
strict parser of the Prometheus text exposition format 0.0.4 written here
(HELP/TYPE lines, metric and label name grammar, label value escapes, float
values with +Inf/-Inf/NaN, no duplicate series, TYPE before samples,
histograms with cumulative non-decreasing buckets in increasing le order, a
+Inf bucket equal to _count, and a _sum). Then the counters must have moved
exactly as the traffic says, the raft gauges must be sane for a single node
and for a follower of a 3-node cluster, and the state gauges must match what
was written. Request log lines (--log-level debug) carry method, route
template, status, duration and request id, and never a key, a token or a
value."""

import math
import re
import socket
import time

import harness
from harness import Cluster, Node, NodeTestCase

PROPS = "/v1/account/{acc}/{ns}[/{sid}]/properties"
PROP = "/v1/account/{acc}/{ns}[/{sid}]/properties/{prop}"
NS = "/v1/account/acme/ns1"

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
FLOAT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class FormatError(AssertionError):
    pass


def parse_value(text, where):
    if text in ("+Inf", "Inf"):
        return math.inf
    if text == "-Inf":
        return -math.inf
    if text == "NaN":
        return math.nan
    if not FLOAT.fullmatch(text):
        raise FormatError("%s: bad value %r" % (where, text))
    return float(text)


def parse_labels(text, i, where):
    """Parse {a="b",...} starting at text[i] == '{'; return (dict, next i)."""
    labels = {}
    i += 1
    while True:
        if i < len(text) and text[i] == "}":
            return labels, i + 1
        m = LABEL_NAME.match(text, i)
        if not m:
            raise FormatError("%s: bad label name at %d" % (where, i))
        name = m.group(0)
        i = m.end()
        if text[i:i + 2] != '="':
            raise FormatError("%s: expected =\" after %s" % (where, name))
        i += 2
        value = []
        while True:
            if i >= len(text):
                raise FormatError("%s: unterminated label value" % where)
            c = text[i]
            if c == "\\":
                nxt = text[i + 1:i + 2]
                if nxt == "\\":
                    value.append("\\")
                elif nxt == '"':
                    value.append('"')
                elif nxt == "n":
                    value.append("\n")
                else:
                    raise FormatError("%s: bad escape \\%s" % (where, nxt))
                i += 2
            elif c == '"':
                i += 1
                break
            elif c == "\n":
                raise FormatError("%s: raw newline in label value" % where)
            else:
                value.append(c)
                i += 1
        if name in labels:
            raise FormatError("%s: label %s twice" % (where, name))
        labels[name] = "".join(value)
        if i < len(text) and text[i] == ",":
            i += 1
        elif i < len(text) and text[i] == "}":
            continue
        else:
            raise FormatError("%s: expected , or } at %d" % (where, i))


def family_of(name, types):
    if name in types:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[:-len(suffix)] if name.endswith(suffix) else None
        if base and types.get(base) in ("histogram", "summary"):
            return base
    return None


def parse_exposition(text):
    """Strictly parse text; return (types, helps, samples) where samples maps
    (name, frozenset(labels.items())) to value."""
    if not text.endswith("\n"):
        raise FormatError("exposition does not end with a newline")
    types, helps, samples = {}, {}, {}
    seen_samples_of = set()
    for n, line in enumerate(text[:-1].split("\n"), 1):
        where = "line %d %r" % (n, line)
        if line == "":
            raise FormatError("%s: empty line" % where)
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                if not METRIC_NAME.fullmatch(parts[2]):
                    raise FormatError("%s: bad metric name" % where)
                if parts[1] == "HELP":
                    if parts[2] in helps:
                        raise FormatError("%s: second HELP" % where)
                    help_text = parts[3] if len(parts) == 4 else ""
                    if re.search(r"\\[^\\n]", help_text.replace("\\\\", "")):
                        raise FormatError("%s: bad escape in HELP" % where)
                    helps[parts[2]] = help_text
                else:
                    if len(parts) != 4 or parts[3] not in TYPES:
                        raise FormatError("%s: bad TYPE" % where)
                    if parts[2] in types or parts[2] in seen_samples_of:
                        raise FormatError("%s: TYPE repeated or after samples"
                                          % where)
                    types[parts[2]] = parts[3]
            continue
        m = METRIC_NAME.match(line)
        if not m:
            raise FormatError("%s: bad metric name" % where)
        name = m.group(0)
        i = m.end()
        labels = {}
        if i < len(line) and line[i] == "{":
            labels, i = parse_labels(line, i, where)
        if line[i:i + 1] != " ":
            raise FormatError("%s: expected a space before the value" % where)
        fields = line[i + 1:].split(" ")
        if len(fields) not in (1, 2):
            raise FormatError("%s: expected value [timestamp]" % where)
        value = parse_value(fields[0], where)
        if len(fields) == 2 and not re.fullmatch(r"-?\d+", fields[1]):
            raise FormatError("%s: bad timestamp" % where)
        fam = family_of(name, types)
        if fam is None:
            raise FormatError("%s: sample without a TYPE" % where)
        seen_samples_of.add(fam)
        if types[fam] == "counter" and not (value >= 0):
            raise FormatError("%s: negative counter" % where)
        key = (name, frozenset(labels.items()))
        if key in samples:
            raise FormatError("%s: duplicate series" % where)
        samples[key] = value
        if name.endswith("_bucket") and types[fam] == "histogram":
            if "le" not in labels:
                raise FormatError("%s: bucket without le" % where)
            parse_value(labels["le"], where)
    check_histograms(types, samples)
    return types, helps, samples


def check_histograms(types, samples):
    for fam, t in types.items():
        if t != "histogram":
            continue
        series = {}
        for (name, labels), v in samples.items():
            if name == fam + "_bucket":
                d = dict(labels)
                le = d.pop("le")
                series.setdefault(frozenset(d.items()), []).append(
                    (parse_value(le, fam), v))
        for labels, buckets in series.items():
            buckets.sort()
            counts = [v for _, v in buckets]
            if counts != sorted(counts):
                raise FormatError("%s%s: buckets not cumulative" % (fam, dict(labels)))
            if buckets[-1][0] != math.inf:
                raise FormatError("%s%s: no +Inf bucket" % (fam, dict(labels)))
            count = samples.get((fam + "_count", labels))
            if count != buckets[-1][1]:
                raise FormatError("%s%s: +Inf bucket %r != _count %r"
                                  % (fam, dict(labels), buckets[-1][1], count))
            if (fam + "_sum", labels) not in samples:
                raise FormatError("%s%s: no _sum" % (fam, dict(labels)))


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


class ParserSelfTest(NodeTestCase):
    """The parser itself must refuse what the format forbids."""

    def test_the_parser_refuses_malformed_expositions(self):
        good = ('# HELP a_total x \\\\ y\\n\n# TYPE a_total counter\n'
                'a_total{l="q\\"\\\\\\n"} 1\n'
                '# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\n'
                'h_sum 3\nh_count 2\n')
        types, _, samples = parse_exposition(good)
        self.assertEqual(value(samples, "a_total", l='q"\\\n'), 1)
        bad = [
            "a 1",                                       # no newline
            "a 1\n",                                     # no TYPE
            "# TYPE a gauge\na{l=\"x\\t\"} 1\n",         # bad escape
            "# TYPE a gauge\na{l=x} 1\n",                # unquoted
            "# TYPE a gauge\na 1\na 2\n",                # duplicate
            "# TYPE a gauge\na one\n",                   # bad value
            "# TYPE 1a gauge\n",                         # bad name
            "# TYPE a counter\na -1\n",                  # negative counter
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n"
            "h_sum 1\nh_count 1\n",                      # not cumulative
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\n"
            "h_sum 1\nh_count 2\n",                      # +Inf != count
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
        ]
        for text in bad:
            with self.assertRaises(FormatError, msg=repr(text)):
                parse_exposition(text)


class Metrics(NodeTestCase):

    def setUp(self):
        self.nodes = []
        self.cluster = None

    def tearDown(self):
        if self.cluster is not None:
            self.cluster.cleanup()
        for n in self.nodes:
            n.cleanup()

    def scrape(self, node):
        c = node.client()
        try:
            r = c.get("/metrics")
        finally:
            c.close()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.headers.get("content-type"),
                         "text/plain; version=0.0.4")
        return parse_exposition(r.text())

    def test_counters_move_exactly_as_the_traffic_says(self):
        n = Node(args=["--max-body-bytes", "4096", "--log-level", "debug"])
        self.nodes.append(n)
        n.start()
        admin = n.admin()
        key = admin.create_account("acme")
        admin.close()
        c = n.client(key)
        patches = 0
        for i in range(5):
            self.assertStatus(c.patch(NS + "/s%d/properties" % i, {"a": i, "b": "x"}), 204)
            patches += 1
        self.assertStatus(c.patch(NS + "/properties", {"own": 1}), 204)
        self.assertStatus(c.patch(NS + "/s0/properties", {"c": 3}), 204)
        patches += 2
        # 4xx on the same route: malformed JSON, wrong key, missing key.
        self.assertStatus(c.patch(NS + "/s0/properties", "{bad"), 400)
        self.assertStatus(c.patch(NS + "/s0/properties", {"a": 1}, key="wrong"), 401)
        self.assertStatus(c.patch(NS + "/s0/properties", {"a": 1}, key=None), 401)
        self.assertStatus(c.get(NS + "/s0/properties/nope"), 404)
        # Read twice: the second is answered from the read cache.
        for _ in range(2):
            r = c.get(NS + "/s0/properties/a")
            self.assertStatus(r, 200)
            self.assertEqual(r.body, b"0")
        self.assertStatus(c.get(NS + "/s0/properties"), 200)
        # Refused by the HTTP layer: one 413 and one request that is not HTTP.
        self.assertStatus(c.patch(NS + "/s0/properties", {"big": "x" * 8000}), 413)
        c.close()
        raw = socket.create_connection(("127.0.0.1", n.http_port), timeout=5)
        raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        self.assertTrue(raw.recv(4096).startswith(b"HTTP/1.1 400"))
        raw.close()

        types, helps, s = self.scrape(n)
        self.assertEqual(set(types), set(helps))
        self.assertEqual(value(s, "ctxd_http_requests_total", route=PROPS,
                               method="PATCH", code="2xx"), patches)
        self.assertEqual(value(s, "ctxd_http_requests_total", route=PROPS,
                               method="PATCH", code="4xx"), 3)
        self.assertEqual(value(s, "ctxd_http_requests_total", route=PROPS,
                               method="GET", code="2xx"), 1)
        self.assertEqual(value(s, "ctxd_http_requests_total", route=PROP,
                               method="GET", code="4xx"), 1)
        self.assertEqual(value(s, "ctxd_http_requests_total", route=PROP,
                               method="GET", code="2xx"), 2)
        self.assertEqual(value(s, "ctxd_property_reads_total"), 3)
        self.assertEqual(value(s, "ctxd_property_reads_cached_total"), 1)
        self.assertEqual(value(s, "ctxd_http_requests_total",
                               route="/admin/v1/accounts/{acc}/key",
                               method="PUT", code="2xx"), 1)
        self.assertEqual(value(s, "ctxd_http_request_duration_seconds_count",
                               route=PROPS), patches + 3 + 1)
        self.assertEqual(value(s, "ctxd_http_errors_total",
                               code="malformed_json", status="400"), 1)
        self.assertEqual(value(s, "ctxd_http_errors_total",
                               code="unauthorized", status="401"), 2)
        self.assertEqual(value(s, "ctxd_http_requests_rejected_total",
                               reason="body_too_large"), 1)
        self.assertEqual(value(s, "ctxd_http_requests_rejected_total",
                               reason="bad_request"), 1)
        self.assertEqual(value(s, "ctxd_raft_proposal_duration_seconds_count"),
                         patches + 1)   # the PATCHes and the key
        # Route labels are templates: no account, namespace or session id.
        for (name, labels) in s:
            for k, v in labels:
                if k == "route":
                    self.assertNotRegex(v, r"acme|ns1|/s\d")
        # Raft and state gauges of a single node.
        self.assertEqual(value(s, "ctxd_raft_leader"), 1)
        self.assertEqual(value(s, "ctxd_raft_leader_id"), 1)
        self.assertEqual(value(s, "ctxd_raft_state", state="leader"), 1)
        self.assertEqual(value(s, "ctxd_raft_state", state="follower"), 0)
        self.assertEqual(value(s, "ctxd_raft_applied_index"),
                         value(s, "ctxd_raft_commit_index"))
        self.assertGreaterEqual(value(s, "ctxd_raft_last_index"),
                                value(s, "ctxd_raft_commit_index"))
        self.assertGreaterEqual(value(s, "ctxd_raft_term"), 1)
        self.assertEqual(value(s, "ctxd_raft_proposals_pending"), 0)
        self.assertGreaterEqual(value(s, "ctxd_raft_commands_total"), patches + 1)
        self.assertGreaterEqual(value(s, "ctxd_raft_commands_per_entry"), 1)
        self.assertEqual(value(s, "ctxd_accounts"), 1)
        self.assertEqual(value(s, "ctxd_namespaces"), 1)
        self.assertEqual(value(s, "ctxd_sessions"), 6)
        self.assertEqual(value(s, "ctxd_properties"), 5 * 2 + 1 + 1)
        self.assertGreater(value(s, "ctxd_database_bytes"), 0)
        self.assertGreater(value(s, "process_resident_memory_bytes"), 1 << 20)
        self.assertGreater(value(s, "process_open_fds"), 3)
        self.assertGreater(value(s, "ctxd_http_received_bytes_total"), 1000)
        self.assertGreater(value(s, "ctxd_http_sent_bytes_total"), 1000)
        self.assertGreaterEqual(value(s, "ctxd_http_connections_open"), 1)
        self.assertGreaterEqual(value(s, "ctxd_http_connections_accepted_total"), 4)

        # Event loop turns: measured from the first turn, the longest is a
        # real duration and no longer than all turns together.
        turns = value(s, "ctxd_event_loop_turn_seconds_count")
        self.assertGreater(turns, 10)
        longest = value(s, "ctxd_event_loop_turn_max_seconds")
        self.assertGreater(longest, 0)
        self.assertLessEqual(longest, value(s, "ctxd_event_loop_turn_seconds_sum"))
        self.assertLess(longest, 10)

        # A second scrape: counters never go down; the first scrape counted.
        _, _, s2 = self.scrape(n)
        for (name, labels), v in s.items():
            fam = family_of(name, types)
            if types[fam] == "counter" or name.endswith(("_count", "_bucket")):
                self.assertGreaterEqual(s2[(name, labels)], v, name)
        self.assertEqual(value(s2, "ctxd_http_requests_total", route="/metrics",
                               method="GET", code="2xx"), 1)

        # The request log lines.
        log = n.log_text()
        line = [l for l in log.splitlines() if 'msg="request"' in l
                and "method=PATCH" in l and "status=204" in l][0]
        self.assertRegex(line, r'^ts=\S+Z level=debug node=1 msg="request" '
                               r'method=PATCH route="%s" status=204 '
                               r'duration_ms=\d+ request_id=""$'
                         % re.escape(PROPS))
        n.stop()

    def test_request_lines_carry_the_request_id_and_no_key_token_or_value(self):
        n = Node(args=["--log-level", "debug"])
        self.nodes.append(n)
        n.start()
        admin = n.admin()
        key = admin.create_account("acme")
        admin.close()
        c = n.client(key)
        secret_value = "SECRET-VALUE-%d" % time.time_ns()
        self.assertStatus(c.patch(NS + "/sess-id-xyz/properties",
                                  {"prop-name-q": secret_value},
                                  headers={"X-REQUEST-ID": "rid-42"}), 204)
        self.assertStatus(c.get(NS + "/sess-id-xyz/properties/prop-name-q"), 200)
        c.close()
        n.stop()
        log = n.log_text()
        lines = [l for l in log.splitlines() if l.startswith("ts=")]
        for l in lines:
            self.assertRegex(l, r'^ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z '
                                r'level=(debug|info|warn|error) node=1 msg="')
        self.assertTrue(any('method=PATCH route="%s" status=204' % PROPS in l
                            and 'request_id="rid-42"' in l for l in lines), log)
        self.assertTrue(any('method=GET route="%s" status=200' % PROP in l
                            for l in lines), log)
        for needle in (key, n.admin_token(), secret_value, "sess-id-xyz",
                       "prop-name-q"):
            self.assertNotIn(needle, log)

    def test_a_follower_reports_leader_0_and_the_leader_id(self):
        self.cluster = cl = Cluster(n=3)
        self.nodes = cl.nodes
        cl.start()
        leader = cl.wait_leader()
        for f in cl.followers(leader):
            _, _, s = self.scrape(f)
            self.assertEqual(value(s, "ctxd_raft_leader"), 0)
            self.assertEqual(value(s, "ctxd_raft_leader_id"), leader.node_id)
            self.assertEqual(value(s, "ctxd_raft_state", state="follower"), 1)
            self.assertEqual(value(s, "ctxd_raft_state", state="leader"), 0)
        _, _, s = self.scrape(leader)
        self.assertEqual(value(s, "ctxd_raft_leader"), 1)
        self.assertEqual(value(s, "ctxd_raft_leader_id"), leader.node_id)
        for x in cl.nodes:
            x.stop()


if __name__ == "__main__":
    harness.main()
