"""`bt bench watch`: the cost of one store into a write-monitored guest descriptor table
(a GDT slot the guest rewrites, as Linux's TLS slots on every context switch), against
the same store into an ordinary page, in one run (runtime/tablebench.py says how).

Wall-clock figures: they vary with the machine and its load; `--runs N` keeps the
fastest of N.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from bt.cli.args import positive_int

#: Linux i386's __switch_to: three TLS descriptors, two 4-byte stores each.
LINUX_STORES_PER_SWITCH = 6


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "watch", help="cost of a store into a write-monitored guest GDT (Linux's TLS slots)",
        description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--iters", type=positive_int, default=5_000, metavar="N",
                   help="loop iterations, two descriptor stores each (default 5000)")
    p.add_argument("--runs", type=positive_int, default=3, metavar="N",
                   help="keep the fastest of N runs (default 3)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from runtime.tablebench import watch_bench  # the VMM: when the benchmark runs

    best = min((watch_bench(args.iters) for _ in range(args.runs)), key=lambda r: r.us_per_store)
    if args.json:
        print(json.dumps({**asdict(best), "us_per_store": best.us_per_store}, indent=2))
        return 0
    print(f"store into a write-monitored GDT slot ({best.stores} stores, fastest of {args.runs}):")
    print(f"  {best.us_per_store:8.2f} µs per store, {best.us_per_store * LINUX_STORES_PER_SWITCH:.1f} µs "
          f"per Linux context switch ({LINUX_STORES_PER_SWITCH} TLS stores)")
    print(f"  loop storing into the GDT {best.gdt_s * 1000:9.1f} ms, "
          f"same loop into an unwatched page {best.base_s * 1000:7.1f} ms")
    return 0
