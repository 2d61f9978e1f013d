"""`bt bench startup`: `bt run`'s start-up (process start to the guest's first instruction)
for the bundled samples, beside the interpreter's and the engines' own import times, in one
run (runtime/startupbench.py says how).

Wall-clock figures: they vary with the machine and its load; medians of --runs rounds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bt.cli.args import positive_int, seconds
from bt.cli.bench_engine import fmt, progress

#: Issue 14's goal for the samples.
TARGET_S = 0.3


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "startup", help="bt run's start-up for the samples beside the interpreter's and engines' imports",
        description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("kernel", nargs="*", type=Path,
                   help="kernels to start (default: the samples hello, irqsave and timer)")
    p.add_argument("--runs", type=positive_int, default=5, metavar="N",
                   help="rounds, each starting every process once; medians printed (default 5)")
    p.add_argument("--timeout", type=seconds, default=60.0, metavar="S",
                   help="give up on a process after S seconds (default 60)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from runtime import startupbench

    kernels = list(args.kernel) or startupbench.sample_kernels()
    rows = startupbench.measure(kernels, args.runs, args.timeout, progress=progress)
    if sys.stderr.isatty():
        print("\r\x1b[K", end="", file=sys.stderr)
    doc = {"runs": args.runs, "interpreter": sys.executable,
           "bytecode_cached": startupbench.bytecode_cached(), "target_s": TARGET_S,
           "rows": [r.to_dict() for r in rows]}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    cached = "yes" if doc["bytecode_cached"] else "no"
    print(f"process start to the guest's first instruction, median of {args.runs} rounds "
          f"({doc['interpreter']}; ring1's modules byte-compiled: {cached})")
    print(f"{'process':34s} {'process s':>10s} {'start-up s':>11s}")
    for r in doc["rows"]:
        print(f"{r['name']:34s} {fmt(r['process_s'], '.3f'):>10s} {fmt(r['startup_s'], '.3f'):>11s}")
    worst = max((r["startup_s"] for r in doc["rows"] if r["startup_s"] is not None), default=None)
    if worst is not None:
        verdict = "meets" if worst <= TARGET_S else "misses"
        print(f"slowest start-up {worst:.3f} s: {verdict} the {TARGET_S} s goal (issue 14)")
    return 0
