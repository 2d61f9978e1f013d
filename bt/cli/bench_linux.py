"""`bt bench linux`: Debian's 32-bit kernel booted to its milestones (issue 15) under ring1
patched, ring1 unpatched (`--leaks-only`: pure trap-and-emulate deadlocks Linux, PUSHF reads
the real IF) and QEMU TCG, one run each, one after the other; wall-clock and CPU seconds
and the ratios to QEMU.

Milestone 1: `console=ttyS0` to the root-fs panic ("VFS: Unable to mount root fs");
milestone 2: samples/linux/initramfs.cpio.gz's init prints a line, reads /proc/cmdline and
ends the machine through isa-debug-exit. Every command line has `nokaslr` (the patch
manager scans the kernel where it is linked), `panic=-1` (a panic reboots, which ends
ring1's run and QEMU's under -no-reboot) and `cryptomgr.notests` (`CMDLINE`). Each run's
output must show its milestone, or the figure is marked as not reached. Figures vary with
the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bt.errors import InputError

ROOT = Path(__file__).resolve().parent.parent.parent
INITRAMFS = ROOT / "samples" / "linux" / "initramfs.cpio.gz"
#: `cryptomgr.notests`: the crypto self-tests' Diffie-Hellman is 3.7 G of the kernel's 4.0 G
#: instructions to the root-fs panic (docs/linux.md), under ring1 and QEMU alike.
CMDLINE = "console=ttyS0 nokaslr panic=-1 cryptomgr.notests"
RAM_MIB = 128
#: What each milestone's output must show.
MARKS = {1: b"Kernel panic - not syncing: VFS: Unable to mount root fs",
         2: b"ring1-init: powering off"}
MODES = ("patched", "unpatched", "qemu")


@dataclass(frozen=True)
class Run:
    milestone: int
    mode: str
    wall_s: float
    cpu_s: float
    reached: bool
    exit_code: int


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "linux", help="Linux to its milestones: ring1 patched, unpatched and QEMU TCG",
        description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("kernel", nargs="?", type=Path,
                   help="a bzImage (default: Debian's linux-image-6.1.0-*-686, cached or fetched)")
    p.add_argument("--milestone", type=int, choices=(1, 2), action="append",
                   help="only this milestone (repeatable; default both)")
    p.add_argument("--mode", choices=MODES, action="append", help="only this mode (repeatable; default all)")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                   help="give up on one run after S wall-clock seconds (default 3600)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from bt.cli import linuxkernel  # the ELF reader (NumPy): when the benchmark runs

    kernel = args.kernel or linuxkernel.kernel(lambda line: print(line, file=sys.stderr))
    if not Path(kernel).is_file():
        raise InputError(f"{kernel}: no such file")
    modes = args.mode or list(MODES)
    if "qemu" in modes and shutil.which("qemu-system-i386") is None:
        raise InputError("qemu-system-i386 is not installed (Debian: apt-get install qemu-system-x86)")
    runs = []
    for milestone in args.milestone or [1, 2]:
        for mode in modes:
            print(f"milestone {milestone}, {mode} ...", file=sys.stderr, flush=True)
            runs.append(_one(Path(kernel), milestone, mode, args.timeout))
    if args.json:
        print(json.dumps({"kernel": str(kernel), "runs": [asdict(r) for r in runs]}, indent=2))
    else:
        _print(Path(kernel), runs)
    return 0


def _command(kernel: Path, milestone: int, mode: str, serial: Path, icount: bool = False) -> list[str]:
    """The run's command line. `icount`: QEMU's guest clock from its instruction count, not the
    host's (the reference test: on a loaded host, QEMU's default clock lets the kernel see RCU
    stalls, a failed timer check, a TSC its watchdog marks unstable; measured)."""
    initrd = ["-initrd" if mode == "qemu" else "--initrd", str(INITRAMFS)] if milestone == 2 else []
    if mode == "qemu":
        # The machine ring1 gives: no ACPI tables, isa-debug-exit at 0xF4; TCG, one CPU.
        clock = ["-icount", "shift=3,sleep=off"] if icount else []
        return ["qemu-system-i386", "-machine", "pc,acpi=off", *clock, "-m", str(RAM_MIB),
                "-kernel", str(kernel), "-append", CMDLINE, *initrd, "-display", "none", "-monitor", "none",
                "-no-reboot", "-serial", f"file:{serial}",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
    from importlib.metadata import entry_points

    extra = ["--leaks-only"] if mode == "unpatched" else []
    if any(ep.name == "vtsc" for ep in entry_points(group="ring1.patch_rules")):
        extra += ["--disable-rule", "vtsc"]   # its counter does not follow virtual time
    return [sys.executable, "-m", "bt", "run", str(kernel), "--cmdline", CMDLINE, *initrd,
            "--ram", str(RAM_MIB), "--serial", str(serial), *extra]


def _one(kernel: Path, milestone: int, mode: str, timeout: float) -> Run:
    with tempfile.TemporaryDirectory(prefix="ring1-bench-linux-") as tmp:
        serial = Path(tmp) / "serial"
        cmd = _command(kernel, milestone, mode, serial)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=timeout, check=False)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = -1
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        out = serial.read_bytes() if serial.exists() else b""
    return Run(milestone, mode, round(wall, 2), round(cpu, 2), MARKS[milestone] in out, code)


def _print(kernel: Path, runs: list[Run]) -> None:
    print(f"Linux milestones, {kernel.name}, --ram {RAM_MIB}, command line {CMDLINE!r} (one run each):")
    print(f"  {'milestone':>9}  {'mode':<10} {'wall s':>9} {'CPU s':>9} {'x QEMU (CPU)':>13}  reached")
    for r in runs:
        qemu = next((q for q in runs if q.milestone == r.milestone and q.mode == "qemu"), None)
        ratio = f"{r.cpu_s / qemu.cpu_s:12.1f}x" if qemu and qemu.cpu_s > 0 and r.mode != "qemu" else ""
        print(f"  {r.milestone:>9}  {r.mode:<10} {r.wall_s:9.1f} {r.cpu_s:9.1f} {ratio:>13}  "
              f"{'yes' if r.reached else f'NO (exit {r.exit_code})'}")
