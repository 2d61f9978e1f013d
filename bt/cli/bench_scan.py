"""`bt bench scan [KERNEL]`: the scanner against `objdump -d` on the same file, in one run.

Without KERNEL it scans a real x86-64 Linux vmlinux (cached, or fetched from Debian:
bt/cli/vmlinux.py). ring1's time covers what `bt scan --json` does: load the ELF,
sweep, descend, classify, check patch windows and build the JSON document. objdump's
covers `objdump -d -M intel KERNEL > /dev/null`. Targets (issue 3): ring1 no slower
than objdump (ratio <= 1.0) and under 1 GiB peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bt.cli.args import positive_int
from bt.errors import InputError

MEMORY_TARGET = 1 << 30


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "scan", help="scanner speed and memory against objdump -d on a Linux vmlinux",
        description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("kernel", metavar="KERNEL", nargs="?",
                   help="an ELF kernel (default: a cached or freshly fetched x86-64 vmlinux)")
    p.add_argument("--runs", type=positive_int, default=1, metavar="N",
                   help="time each side N times and report the fastest (default 1)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(handler=run)


def _kernel(arg: str | None) -> Path:
    if arg is not None:
        return Path(arg)
    from bt.cli import vmlinux  # the ELF reader (NumPy): only for the default kernel

    found = vmlinux.cached()
    if found is not None:
        return found
    print("no cached vmlinux: fetching one", file=sys.stderr)
    return vmlinux.fetch(lambda line: print(line, file=sys.stderr))


def _ring1(path: Path) -> dict[str, float | int]:
    from bt import elf, scan, scanreport  # NumPy, Capstone: when the benchmark runs

    t0 = time.perf_counter()
    image = elf.load(path)
    t1 = time.perf_counter()
    result = scan.scan(image)
    t2 = time.perf_counter()
    json.dumps(scanreport.to_json(result, result.sites))
    t3 = time.perf_counter()
    return {"seconds": t3 - t0, "load": t1 - t0, "scan": t2 - t1, "report": t3 - t2,
            "instructions": result.stats.instructions, "sites": len(result.sites),
            "code_bytes": result.stats.code_bytes, "bits": image.bits}


def _objdump(path: Path) -> dict[str, float | int]:
    # objdump's own peak memory is not reported: a child forked from this process inherits
    # its RSS high-water mark across exec (Linux), so getrusage would show ring1's figure.
    exe = shutil.which("objdump")
    if exe is None:
        raise InputError("objdump is not installed (Debian: binutils)")
    with open(os.devnull, "wb") as sink:
        t0 = time.perf_counter()
        proc = subprocess.run([exe, "-d", "-M", "intel", str(path)], stdout=sink, stderr=subprocess.PIPE,
                              check=False)
        seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise InputError(f"objdump -d {path} failed with exit code {proc.returncode}")
    return {"seconds": seconds}


def run(args: argparse.Namespace) -> int:
    path = _kernel(args.kernel)
    runs = args.runs
    ring1 = min((_ring1(path) for _ in range(runs)), key=lambda r: r["seconds"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    objdump = min((_objdump(path) for _ in range(runs)), key=lambda r: r["seconds"])
    ratio = ring1["seconds"] / objdump["seconds"]
    figures = {
        "kernel": str(path), "bits": ring1["bits"], "code_bytes": ring1["code_bytes"],
        "instructions": ring1["instructions"], "sites": ring1["sites"], "runs": runs,
        "ring1_seconds": round(ring1["seconds"], 3), "ring1_load_seconds": round(ring1["load"], 3),
        "ring1_scan_seconds": round(ring1["scan"], 3), "ring1_report_seconds": round(ring1["report"], 3),
        "instructions_per_second": round(ring1["instructions"] / ring1["seconds"]),
        "ring1_peak_bytes": peak, "objdump_seconds": round(objdump["seconds"], 3), "ratio": round(ratio, 3),
        "speed_target_met": ratio <= 1.0, "memory_target_met": peak < MEMORY_TARGET,
    }
    if args.json:
        print(json.dumps(figures, indent=1))
        return 0
    mib = 1 << 20
    print(f"kernel:      {path} (ELF{ring1['bits']}, {ring1['code_bytes']:,} code bytes, "
          f"{ring1['instructions']:,} instructions, {ring1['sites']:,} sites)")
    print(f"ring1 scan:  {ring1['seconds']:.2f} s  (load {ring1['load']:.2f} s, scan {ring1['scan']:.2f} s, "
          f"JSON {ring1['report']:.2f} s)  {figures['instructions_per_second']:,} instructions/s  "
          f"peak RSS {peak / mib:.0f} MiB")
    print(f"objdump -d:  {objdump['seconds']:.2f} s  (objdump -d -M intel, output to /dev/null)")
    best = f", fastest of {runs}" if runs > 1 else ""
    print(f"ratio ring1/objdump: {ratio:.2f}{best}  (target <= 1.0: {'met' if ratio <= 1.0 else 'MISSED'})")
    print(f"memory: {peak / mib:.0f} MiB (target < 1024 MiB: {'met' if peak < MEMORY_TARGET else 'MISSED'})")
    return 0
