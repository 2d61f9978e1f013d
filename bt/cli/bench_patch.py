"""`bt bench patch`: irqsave unpatched vs patched (speedup, #GP exits removed) and
patched irqsave vs its paravirtual twin irqsave-pv (target: <= 1.2), in one run
(runtime/patchbench.py says how)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bt.cli.args import positive_int

PV_TARGET = 1.2
SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "patch", help="patched vs unpatched irqsave, and vs its paravirtual twin",
        description=__doc__)
    p.add_argument("--runs", type=positive_int, default=9, metavar="N",
                   help="rounds: each runs every configuration once (default 9)")
    p.add_argument("--samples", type=Path, default=SAMPLES, help="the samples folder")
    p.add_argument("--cmdline", default="iters=20000", help="the kernels' command line")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from runtime.patchbench import measure, median, paired

    un, pa, pv, pv_un, ea, pv_ea = measure(args.samples, args.runs, args.cmdline)
    speedup = un.run_s / pa.run_s
    # The verdict takes the median of the per-round ratios: on a machine whose speed drifts
    # between rounds (a shared VM) the fastest runs of two configurations may come from
    # different rounds, and their ratio then measures the drift as much as ring1.
    rounds, rounds_eager = paired(pa, pv), paired(ea, pv_ea)
    ratio, ratio_eager = median(rounds), median(rounds_eager)
    removed = 1 - pa.traps / un.traps if un.traps else 0.0
    if args.json:
        rows: dict[str, dict[str, Any]] = {
            m.config.name: {"run_s": m.run_s, "runs_s": m.runs_s, "setup_s": m.setup_s, "traps": m.traps,
                            "hypercalls": m.hypercalls, "exits": m.exits,
                            "guest_insns": m.guest_insns, "patches": m.patches}
            for m in (un, pa, pv, pv_un, ea, pv_ea)}
        print(json.dumps({"configs": rows, "speedup": speedup, "pv_ratio": ratio,
                          "pv_ratio_rounds": rounds, "pv_ratio_fastest": pa.run_s / pv.run_s,
                          "pv_ratio_eager": ratio_eager, "pv_ratio_eager_rounds": rounds_eager,
                          "pv_target": PV_TARGET, "gp_exits_removed": removed}, indent=2))
        return 0
    print(f"{'configuration':22s} {'run ms':>9s} {'setup ms':>9s} {'#GP traps':>10s} {'exits':>8s} "
          f"{'hypercalls':>10s} {'guest insns':>12s} {'patches':>8s}")
    for m in (un, pa, pv, pv_un, ea, pv_ea):
        print(f"{m.config.name:22s} {m.run_s * 1000:9.1f} {m.setup_s * 1000:9.1f} {m.traps:10d} "
              f"{m.exits:8d} {m.hypercalls:10d} {m.guest_insns:12d} {m.patches:8d}")
    print(f"(fastest of {args.runs} rounds each; guest output identical across all runs)")
    print(f"irqsave speedup, unpatched / patched:        {speedup:6.2f}x")
    print(f"irqsave #GP exits removed by patching:       {removed * 100:7.3f}%  ({un.traps} -> {pa.traps})")
    verdict = "meets" if ratio <= PV_TARGET else "misses"
    print(f"patched irqsave / irqsave-pv (patched):      {ratio:6.2f}   "
          f"({verdict} the <= {PV_TARGET} target; median of {len(rounds)} rounds, "
          f"range {rounds[0]:.2f}-{rounds[-1]:.2f}; fastest / fastest {pa.run_s / pv.run_s:.2f})")
    print(f"patched irqsave / irqsave-pv (unpatched):    {pa.run_s / pv_un.run_s:6.2f}   (fastest / fastest)")
    print(f"with --eager: speedup {un.run_s / ea.run_s:6.2f}x, irqsave / irqsave-pv {ratio_eager:6.2f} "
          f"(median of rounds, range {rounds_eager[0]:.2f}-{rounds_eager[-1]:.2f})")
    return 0
