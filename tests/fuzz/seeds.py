#!/usr/bin/env python3
"""Write the seed corpora of the fuzz targets (tests/fuzz/corpus/TARGET/).

Run again after changing it: it rewrites every seed file it owns (named
seed-*) and leaves other files alone. The seeds are small, valid or nearly
valid inputs that reach each code path quickly; the keys and token match
fuzz_http_request.c."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
K1 = "fuzz-key-acc1"
K2 = "fuzz-key-acc2"
ADMIN = "fuzz-admin-token"


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def req(method, path, headers=(), body=b""):
    if isinstance(body, str):
        body = body.encode()
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: x"]
    lines += ["%s: %s" % h for h in headers]
    given = any(h[0].lower() == "content-length" for h in headers)
    if not given and (body or method in ("POST", "PATCH", "PUT")):
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def http_seeds():
    k1 = ("maven-api-key", K1)
    k2 = ("maven-api-key", K2)
    js = ("Content-Type", "application/json")
    adm = ("Authorization", "Bearer " + ADMIN)
    seeds = {
        "list": req("GET", "/v1/account/acc1", [k1]),
        "props": req("GET", "/v1/account/acc1/ns1/s1/properties", [k1]),
        "props-default": req("GET", "/v1/account/acc1/ns1/properties?consistency=stale", [k1]),
        "prop": req("GET", "/v1/account/acc1/ns1/s1/properties/b", [k1]),
        "include": req("GET", "/v1/account/acc1/ns1/s1/properties?include=a,b", [k1]),
        "session-ids": req("GET", "/v1/account/acc1/ns1/session-ids?page=0&perPage=2", [k1]),
        "session-props": req("GET", "/v1/account/acc1/ns1/session-properties", [k1]),
        "session-ttls": req("GET", "/v1/account/acc1/namespace/ns1/session", [k1]),
        "min-index": req("GET", "/v1/account/acc1/ns1/s1/properties",
                         [k1, ("X-Context-Min-Index", "999999")]),
        "other-key": req("GET", "/v1/account/acc1/ns1/s1/properties", [k2]),
        "acc2": req("GET", "/v1/account/acc2/ns2/s1/properties/secret", [k2]),
        "no-key": req("GET", "/v1/account/acc2/ns2/s1/properties"),
        "patch": req("PATCH", "/v1/account/acc1/ns1/s1/properties", [k1, js],
                     '{"a":1,"b":{"c":[true,null,"\\u00e9"]}}'),
        "patch-many": req("PATCH", "/v1/account/acc1/ns1/s1/properties", [k1, js],
                          '{"a":1,"b":2,"c":3,"d":4,"e":5}'),
        "put": req("PUT", "/v1/account/acc1/ns1/s1/properties/x", [k1, js,
                   ("If-Match", '"3"'), ("X-Request-Id", "r1")], "12345678901234567890"),
        "delete": req("DELETE", "/v1/account/acc1/ns1/s1/properties/a", [k1]),
        "ns-create": req("POST", "/v1/account/acc1?ttlSecond=60", [k1, js], '{"name":"n2"}'),
        "session-ttl": req("POST", "/v1/account/acc1/namespace/ns1/session?ttlSecond=5",
                           [k1, js], '{"sessionId":"s9"}'),
        "reserved": req("DELETE", "/v1/account/acc1/consumer", [k1]),
        "percent": req("GET", "/v1/account/acc1/ns1/s%201/properties/%C3%A9", [k1]),
        "admin-key": req("PUT", "/admin/v1/accounts/acc3/key", [adm]),
        "digest": req("GET", "/admin/v1/digest", [adm]),
        "cluster": req("GET", "/admin/v1/cluster", [adm]),
        "healthz": req("GET", "/healthz"),
        "readyz": req("GET", "/readyz"),
        "metrics": req("GET", "/metrics"),
        "internal": req("POST", "/internal/v1/forward", [("X-Ctxd-Secret", "s")], "{}"),
        "method": req("POST", "/healthz"),
        "chunked": (b"PATCH /v1/account/acc1/ns1/properties HTTP/1.1\r\nHost: x\r\n"
                    b"maven-api-key: " + K1.encode() +
                    b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n"),
        "expect": req("PUT", "/v1/account/acc1/ns1/properties/p",
                      [k1, js, ("Expect", "100-continue")], "true"),
        "pipeline": req("GET", "/healthz") + req("GET", "/v1/account/acc1", [k1]) +
                    req("GET", "/metrics", [("Connection", "close")]) + req("GET", "/healthz"),
        "too-large": req("PUT", "/v1/account/acc1/ns1/properties/p", [k1, js,
                         ("Content-Length", "99999")]),
        "deep": req("PUT", "/v1/account/acc1/ns1/properties/p", [k1, js], "[" * 70 + "]" * 70),
        "bad-http": b"GET / HTTP/1.1\r\nBad Header : x\r\n\r\n",
    }
    for name, data in seeds.items():
        write("http_request", name, data)


def field(b):
    if isinstance(b, str):
        b = b.encode()
    return struct.pack("<I", len(b)) + b


def record(op, *fields, flags=0, if_match=0, ttl=-1, rid=b"", tail=b""):
    out = struct.pack("<BBQq", op, flags, if_match, ttl) + field(rid)
    for f in fields:
        out += field(f)
    return out + tail


def entry(*records, time_ms=1614307598220):
    out = struct.pack("<BBHQI", ord("C"), 1, 0, time_ms, len(records))
    for r in records:
        out += struct.pack("<I", len(r)) + r
    return out


def command_seeds():
    h = bytes(range(32))
    recs = {
        "set-key": record(1, "acc1", h),
        "ns-put": record(2, "acc1", "ns1", ttl=60),
        "ns-delete": record(3, "acc1", "ns1"),
        "patch": record(4, "acc1", "ns1", "s1",
                        tail=struct.pack("<I", 2) + field("a") + field("1.1") +
                        field("b") + field('{"x":[1]}')),
        "prop-put": record(5, "acc1", "ns1", "s1", "p", '"v"', flags=1, if_match=0,
                           rid="req-1"),
        "prop-delete": record(6, "acc1", "ns1", "s1", "p"),
        "session-clear": record(7, "acc1", "ns1", "s1"),
        "session-ttl": record(8, "acc1", "ns1", "s1", ttl=5),
        "purge": record(9),
        "node-info": struct.pack("<BBQq", 10, 0, 0, -1) + field(b"") +
                     struct.pack("<Q", 2) + field("127.0.0.1:8081") + field("eu"),
    }
    for name, r in recs.items():
        write("command_decode", "rec-" + name, r)
        write("command_decode", "entry-" + name, entry(r))
    write("command_decode", "entry-batch",
          entry(recs["set-key"], recs["ns-put"], recs["patch"], recs["prop-put"],
                recs["session-ttl"], recs["prop-delete"], recs["purge"]))
    write("command_decode", "entry-empty", entry())


def json_seeds():
    seeds = {
        "object": '{"a":1,"b":[true,false,null],"c":{"d":"e"}}',
        "numbers": '[0,-0,1.5e10,-2E-3,12345678901234567890,1.1]',
        "strings": '["\\u00e9\\ud83d\\ude00","\\n\\t\\"\\\\\\/","\u00e9\U0001F600"]',
        "nul": '"a\\u0000b"',
        "dup": '{"a":1,"a":2}',
        "nested": "[" * 40 + "]" * 40,
        "space": ' \t\n{ "k" : [ 1 , 2 ] } \r\n',
        "scalar": "true",
        "bad-surrogate": '"\\ud800"',
        "bad-utf8": b'"\xc0\x80"',
        "big": "1e400",
        "key-nul": '{"\\u0000":1}',
    }
    for name, data in seeds.items():
        write("json", name, data)


def config_seeds():
    seeds = {
        "cluster": "--cluster\x001=127.0.0.1:9001@127.0.0.1:8001,2=127.0.0.1:9002@127.0.0.1:8002",
        "eq": "--id=3\x00--max-pending=4\x00--log-level\x00debug",
        "v6": "--cluster=1=[::1]:9001@[::1]:8001",
        "limits": "--max-connections\x0010\x00--request-timeout-ms\x00100\x00--max-body-bytes\x001",
        "bad": "--id\x000\x00--nope",
        "spec-dup": "1=a:1@b:2,1=c:3@d:4",
        "help": "--help",
    }
    for name, data in seeds.items():
        write("config", name, data)


if __name__ == "__main__":
    http_seeds()
    command_seeds()
    json_seeds()
    config_seeds()
