"""`bt bench`: benchmarks (scanner, trap cost, patch speedup, table watch cost), each a sub-command.

Each benchmark is a module with `add_parser(subparsers)` (its handler returns an exit
code). Adding one is one line in `BENCHMARKS`. Benchmarks measure and print figures
side by side in one run; they never fail on a missed target, they say so.
"""

from __future__ import annotations

import argparse
from typing import Any

from bt.cli import (
    bench_boot,
    bench_engine,
    bench_linux,
    bench_patch,
    bench_scan,
    bench_startup,
    bench_trap,
    bench_watch,
)

BENCHMARKS = (bench_scan, bench_trap, bench_patch, bench_engine, bench_boot, bench_startup, bench_watch,
              bench_linux)


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "bench",
        help="benchmarks (scanner, trap cost, patch speedup, start-up, table watch cost, Linux boot)",
        description="Benchmarks: each measures ring1 against a reference in the same run.")
    benches = p.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    for module in BENCHMARKS:
        module.add_parser(benches)
    p.set_defaults(handler=lambda args: _usage(p))


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2
