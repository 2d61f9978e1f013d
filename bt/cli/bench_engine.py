"""`bt bench engine [KERNEL]`: QEMU TCG, the engine floor (the kernel on bare Unicorn at
CPL 0, no VMM) and ring1 unpatched, patched and eager on the same kernel and command
line, in one run, with the ratios; and what the installed Unicorn charges per guest
store (runtime/enginebench.py says how).

Target (issue 14): ring1 patched within 1.3x of the engine floor (guest time); start-up
(process start to the guest's first instruction) printed for each ring1 run.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bt.cli.args import positive_int

FLOOR_TARGET = 1.3
SAMPLES = Path(__file__).resolve().parents[2] / "samples"
DEFAULT_KERNEL = SAMPLES / "irqsave" / "irqsave.elf"


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "engine", help="QEMU vs the bare-Unicorn floor vs ring1 (unpatched, patched, eager)",
        description=__doc__)
    p.add_argument("kernel", type=Path, nargs="?", default=DEFAULT_KERNEL,
                   help="a multiboot kernel that ends by itself with isa-debug-exit "
                        "(default: samples/irqsave/irqsave.elf)")
    p.add_argument("--cmdline", default="iters=200000",
                   help="the kernel's command line (default iters=200000)")
    p.add_argument("--runs", type=positive_int, default=3, metavar="N",
                   help="rounds, each running every configuration once; medians are printed (default 3)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from runtime.enginebench import FLOOR, HOOKED, QEMU, measure, median, per_round

    bench = measure(args.kernel, args.cmdline, args.runs, progress=progress)
    if sys.stderr.isatty():
        print("\r\x1b[K", end="", file=sys.stderr)
    floor, qemu, hooked = bench.get(FLOOR), bench.get(QEMU), bench.get(HOOKED)
    assert floor is not None
    rows = []
    for c in bench.configs:
        rows.append({
            "name": c.name, "process_s": median(c.process_s), "process_runs_s": c.process_s,
            "guest_s": median(c.guest_s) if c.guest_s else None, "guest_runs_s": c.guest_s,
            "exits": int(median([float(e) for e in c.exits])) if c.exits else None,
            "startup_s": median(c.startup_s) if c.startup_s else None, "startup_runs_s": c.startup_s,
            "guest_vs_floor": per_round(c.guest_s, floor.guest_s),
            "guest_vs_hooked_floor": per_round(c.guest_s, hooked.guest_s) if hooked is not None else None,
            "process_vs_qemu": per_round(c.process_s, qemu.process_s) if qemu is not None else None,
        })
    if args.json:
        print(json.dumps({"kernel": bench.kernel, "cmdline": bench.cmdline, "runs": bench.runs,
                          "configs": rows, "floor_target": FLOOR_TARGET,
                          "store": {**asdict(bench.store), "per_store_ns": bench.store.per_store_ns,
                                    "per_load_ns": bench.store.per_load_ns},
                          "unicorn": bench.unicorn, "newest_unicorn": bench.newest_unicorn,
                          "qemu": bench.qemu_version}, indent=2))
        return 0
    _print(bench, rows, qemu is not None)
    return 0


def progress(what: str) -> None:
    """One line of progress on a terminal's stderr, overwritten by the next."""
    if sys.stderr.isatty():
        print(f"\r\x1b[K{what}", end="", file=sys.stderr, flush=True)


def fmt(v: float | int | None, spec: str, suffix: str = "") -> str:
    """A figure for a table cell; "-" where there is none."""
    return "-" if v is None else format(v, spec) + suffix


def _print(bench: Any, rows: list[dict[str, Any]], with_qemu: bool) -> None:
    print(f"{bench.kernel} {bench.cmdline}: median of {bench.runs} rounds, "
          "guest output identical in every run" + ("" if with_qemu else " (QEMU not installed)"))
    print(f"{'configuration':18s} {'process s':>10s} {'guest s':>9s} {'exits':>9s} {'guest/floor':>12s} "
          f"{'process/QEMU':>13s} {'start-up s':>10s}")
    for r in rows:
        print(f"{r['name']:18s} {r['process_s']:10.3f} {fmt(r['guest_s'], '.3f'):>9s} "
              f"{fmt(r['exits'], 'd'):>9s} {fmt(r['guest_vs_floor'], '.2f', 'x'):>12s} "
              f"{fmt(r['process_vs_qemu'], '.2f', 'x'):>13s} {fmt(r['startup_s'], '.3f'):>10s}")
    patched = next(r for r in rows if r["name"] == "ring1 patched")
    ratio = patched["guest_vs_floor"]
    verdict = "meets" if ratio <= FLOOR_TARGET else "misses"
    print(f"ring1 patched / engine floor (guest time): {ratio:.2f}x ({verdict} the {FLOOR_TARGET}x target)")
    hooked = patched["guest_vs_hooked_floor"]
    if hooked is not None:
        print(f"ring1 patched / floor + block hook (guest time): {hooked:.2f}x (the block hook alone is "
              "Unicorn's charge for any exact per-block count, ring1's block clock included)")
    print("process: the whole process, start-up included; guest: the guest's run alone "
          "(floor: emu_start; ring1: the run loop with its exits and dynamic patching); start-up: "
          "process start to the guest's first instruction (`bt run --stats`)")
    s = bench.store
    print(f"Unicorn {bench.unicorn}: a guest store costs {s.per_store_ns:.1f} ns, a load "
          f"{s.per_load_ns:.1f} ns (bare engine, one word; loop overhead of {s.empty_ns:.1f} ns taken out)")
    newest = bench.newest_unicorn
    if newest is None:
        print("newest Unicorn on PyPI: unknown (PyPI could not be reached)")
    elif newest == bench.unicorn:
        print(f"Unicorn {newest} is the newest release on PyPI: none has the store fix "
              "(Unicorn PR #2337) yet")
    else:
        print(f"Unicorn {newest} is on PyPI (ring1 is tested with {bench.unicorn}): install it in a "
              "virtual environment and rerun this bench; a release with the store fix (Unicorn PR #2337) "
              "shows a store cost near the load cost")
