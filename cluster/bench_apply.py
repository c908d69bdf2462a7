"""cluster/bench --apply-cost: instructions per applied write (callgrind).

    cluster/bench --apply-cost [--per-entry 1,8,32] [--sessions 10000]
                  [--json FILE]

Runs tests/bench/apply_cost.c (built as build-release/apply_cost) under
valgrind's callgrind, counting only inside storage_apply, with 100 and 300
entries of PER_ENTRY PUTs of one 100-byte property in random sessions of
--sessions. The difference of the two counts over the 200 extra entries is
the cost of one entry, and over their writes the cost of one write: the
fill, start-up and the encoding of the commands cancel out. Instruction
counts repeat from run to run, where times on this machine do not, so this
is how a change to apply is judged before any side-by-side run.
"""

import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_lib as bl  # noqa: E402

LOW, HIGH = 100, 300


def collected(binary, entries, per, sessions):
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--toggle-collect=storage_apply",
         "--callgrind-out-file=/dev/null", binary, str(entries), str(per),
         str(sessions)],
        capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        sys.exit("bench --apply-cost: %s failed:\n%s" % (binary, out.stderr))
    m = re.search(r"Collected : (\d+)", out.stderr)
    if m is None:
        sys.exit("bench --apply-cost: no count from callgrind:\n" + out.stderr)
    return int(m.group(1))


def main(args):
    import json

    if shutil.which("valgrind") is None:
        sys.exit("bench --apply-cost needs valgrind (Debian package valgrind)")
    if args.bin:
        binary = os.path.join(os.path.dirname(os.path.abspath(args.bin)),
                              "apply_cost")
    else:
        binary = os.path.join(os.path.dirname(bl.build()), "apply_cost")
    if not os.access(binary, os.X_OK):
        sys.exit("bench --apply-cost: no %s (cmake --build ... --target "
                 "apply_cost)" % binary)
    pers = [int(x) for x in (args.per_entry or "1,8,32").split(",")]
    rows = []
    print("%-10s %16s %16s" % ("per entry", "instr/entry", "instr/write"))
    for per in pers:
        lo = collected(binary, LOW, per, args.sessions)
        hi = collected(binary, HIGH, per, args.sessions)
        entry = (hi - lo) / float(HIGH - LOW)
        rows.append({"per_entry": per, "entry": entry, "write": entry / per})
        print("%-10d %16.0f %16.0f" % (per, entry, entry / per))
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"binary": binary, "sessions": args.sessions,
                       "rows": rows}, f, indent=1)
