"""`bt bench boot`: boot-to-prompt wall time of the bundled mini-OS (and of xv6, given a
built xv6-public tree with --xv6 DIR) under QEMU TCG and ring1 patched, eager and
unpatched, in one run, with the ratios (runtime/bootbench.py says how it is measured).

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
from bt.errors import MismatchError


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "boot", help="boot-to-prompt time of the mini-OS (and xv6) under QEMU and ring1",
        description=__doc__)
    p.add_argument("--xv6", type=Path, metavar="DIR",
                   help="also boot xv6 from this built xv6-public tree (kernel, xv6.img, fs.img)")
    p.add_argument("--no-minios", action="store_true", help="skip the bundled mini-OS")
    p.add_argument("--runs", type=positive_int, default=3, metavar="N",
                   help="rounds, each booting every configuration once; medians printed (default 3)")
    p.add_argument("--timeout", type=seconds, default=60.0, metavar="S",
                   help="give up on a boot that shows no prompt after S seconds (default 60)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from runtime import bootbench

    targets = [] if args.no_minios else [bootbench.minios()]
    if args.xv6 is not None:
        targets.append(bootbench.xv6(args.xv6))
    if not targets:
        print("bt bench boot: nothing to boot (--no-minios without --xv6)", file=sys.stderr)
        return 2

    report = []
    for target in targets:
        cs = bootbench.measure(target, args.runs, args.timeout, progress=progress)
        differ = bootbench.mismatches(cs)
        if differ:
            raise MismatchError(f"{target.name}: {', '.join(differ)} printed other output before the "
                                f"prompt than {cs[0].name}")
        report.append(_rows(target, cs))
    if sys.stderr.isatty():
        print("\r\x1b[K", end="", file=sys.stderr)
    if args.json:
        print(json.dumps({"runs": args.runs, "targets": report}, indent=2))
    else:
        for doc in report:
            _print(doc, args.runs)
    return 0


def _median(xs: list[float]) -> float | None:
    from runtime.enginebench import median

    return median(xs) if xs else None


def _rows(target: Any, cs: list[Any]) -> dict[str, Any]:
    from runtime.bootbench import QEMU

    qemu = next((c for c in cs if c.name == QEMU), None)
    rows = []
    for c in cs:
        seconds = c.seconds
        ratio = None
        if qemu is not None and len(seconds) == len(c.boots) and len(qemu.seconds) == len(qemu.boots):
            ratio = _median([a / b for a, b in zip(seconds, qemu.seconds, strict=True)])
        last = c.boots[-1]
        rows.append({"name": c.name, "seconds": _median(seconds), "runs_s": [b.seconds for b in c.boots],
                     "vs_qemu": ratio, "exits": last.exits, "guest_insns": last.guest_insns,
                     "startup_s": _median([b.startup_s for b in c.boots if b.startup_s is not None]),
                     "failed": next((b.why for b in c.boots if b.seconds is None), None)})
    return {"target": target.name, "kernel": str(target.kernel),
            "prompt": target.prompt.decode(errors="replace"), "configs": rows}


def _print(doc: dict[str, Any], runs: int) -> None:
    print(f"{doc['target']}: process start to the prompt {doc['prompt']!r} on serial, median of {runs} "
          "rounds; serial output up to it identical in every configuration that reached it")
    print(f"{'configuration':18s} {'to prompt s':>12s} {'vs QEMU':>8s} {'start-up s':>11s} {'exits':>9s} "
          f"{'guest insns':>12s}")
    for r in doc["configs"]:
        if r["failed"] is not None:
            print(f"{r['name']:18s} did not reach the prompt: {r['failed']}")
            continue
        print(f"{r['name']:18s} {fmt(r['seconds'], '.3f'):>12s} {fmt(r['vs_qemu'], '.2f', 'x'):>8s} "
              f"{fmt(r['startup_s'], '.3f'):>11s} {fmt(r['exits'], ',d'):>9s} "
              f"{fmt(r['guest_insns'], ',d'):>12s}")
    print("start-up: process start to the guest's first instruction; exits and guest instructions are "
          "ring1's, counted until it was stopped just after the prompt")
