"""`bt bench engine`: one kernel under QEMU TCG, on the engine floor and under ring1
(unpatched, patched, eager), side by side in one run.

Every configuration runs as its own process, round-robin for `runs` rounds (a
machine whose speed drifts hits all alike), and two times are kept per run:

* *process*: the whole process, start-up included, as a user waits for it (the only
  time QEMU has);
* *guest*: the guest's run alone: `emu_start` on the floor (runtime/floor.py), the
  run loop under ring1 (`wall_ns` of `bt run --json`: exits, emulation and dynamic
  patching included, loading and scanning not).

Besides the floor, the floor with a C block hook that does nothing ("floor + block
hook"): what Unicorn itself charges for any exact per-block instruction count, ring1's
block clock included (runtime/clock.py), so that ring1's own share is seen apart.

Ratios are medians of per-round ratios. Every run's serial output must equal the
first's, and QEMU's where QEMU is installed: a figure never comes from a run that
went wrong. Figures are machine-dependent: printed, never asserted on.

The per-store probe (runtime/floor.py `store_cost`) says what the installed Unicorn
charges for a guest store beside a load: Unicorn 2.1.4 sends every store through its
soft-MMU slow path (fixed upstream in PR #2337, in no release yet). `newest_unicorn`
asks PyPI which release is the newest, so the bench says when one exists to try.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bt.errors import InputError, MismatchError
from runtime import qemu
from runtime.floor import StoreCost, store_cost

#: The QEMU configuration's name; the others run Python.
QEMU = "QEMU TCG"
FLOOR = "engine floor"
HOOKED = "floor + block hook"
RING1 = {"ring1 unpatched": ["--no-patch"], "ring1 patched": [], "ring1 eager": ["--eager"]}
PYPI = "https://pypi.org/pypi/unicorn/json"


@dataclass(frozen=True)
class Outcome:
    """One run of one configuration."""

    serial: bytes
    status: int | None          #: what the guest wrote to isa-debug-exit, None without it
    guest_s: float | None = None
    exits: int | None = None
    startup_s: float | None = None      #: ring1: process start to the guest's first instruction


@dataclass
class Config:
    name: str
    run: Callable[[], Outcome]
    process_s: list[float] = field(default_factory=list)
    guest_s: list[float] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)
    startup_s: list[float] = field(default_factory=list)


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def per_round(a: list[float], b: list[float]) -> float | None:
    """Median of a[i] / b[i]; None when either side has no figure."""
    if not a or len(a) != len(b):
        return None
    return median([x / y for x, y in zip(a, b, strict=True)])


def _python(args: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, *args], capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def _floor(kernel: Path, cmdline: str, timeout: float, hooked: bool = False) -> Outcome:
    proc = _python(["-m", "runtime.floor", str(kernel), "--cmdline", cmdline,
                    *(["--block-hook"] if hooked else [])], timeout)
    if proc.returncode != 0:
        why = proc.stderr.decode(errors="replace").strip().splitlines()
        raise InputError(f"the engine floor could not run {kernel}: {why[-1] if why else proc.returncode}")
    out = json.loads(proc.stdout)
    return Outcome(bytes.fromhex(out["serial"]), out["status"], out["seconds"], 0)


def _ring1(kernel: Path, cmdline: str, flags: list[str], timeout: float) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="ring1-bench-") as tmp:
        stats = Path(tmp) / "stats.json"
        proc = _python(["-m", "bt", "run", str(kernel), "--cmdline", cmdline, "--json", str(stats),
                        *flags], timeout)
        if not stats.exists():
            why = proc.stderr.decode(errors="replace").strip().splitlines()
            raise InputError(f"bt run {' '.join(flags)} {kernel} failed: "
                             f"{why[0] if why else proc.returncode}")
        doc = json.loads(stats.read_text())
    status = proc.returncode >> 1 if proc.returncode & 1 else None
    return Outcome(proc.stdout, status, doc["wall_ns"] / 1e9, int(doc["total_exits"]),
                   doc["startup_ns"] / 1e9 if doc.get("startup_ns") else None)


def _qemu(kernel: Path, cmdline: str, timeout: float) -> Outcome:
    run = qemu.run_qemu(kernel, cmdline, timeout)
    return Outcome(run.serial, run.returncode >> 1 if run.returncode & 1 else None)


def configs(kernel: Path, cmdline: str, timeout: float, with_qemu: bool) -> list[Config]:
    out = []
    if with_qemu:
        out.append(Config(QEMU, lambda: _qemu(kernel, cmdline, timeout)))
    out.append(Config(FLOOR, lambda: _floor(kernel, cmdline, timeout)))
    from runtime.clock import native_module

    if native_module() is not None:
        out.append(Config(HOOKED, lambda: _floor(kernel, cmdline, timeout, hooked=True)))
    for name, flags in RING1.items():
        out.append(Config(name, lambda f=flags: _ring1(kernel, cmdline, f, timeout)))  # type: ignore[misc]
    return out


@dataclass(frozen=True)
class EngineBench:
    kernel: str
    cmdline: str
    runs: int
    configs: list[Config]
    store: StoreCost
    unicorn: str
    newest_unicorn: str | None
    qemu_version: str | None

    def get(self, name: str) -> Config | None:
        return next((c for c in self.configs if c.name == name), None)


def measure(kernel: Path, cmdline: str, runs: int, timeout: float = 600.0,
            progress: Callable[[str], None] | None = None) -> EngineBench:
    import unicorn

    cs = configs(kernel, cmdline, timeout, qemu.qemu_binary() is not None)
    first: bytes | None = None
    for r in range(runs):
        for c in cs:
            if progress is not None:
                progress(f"round {r + 1}/{runs}: {c.name}")
            t0 = time.perf_counter()
            out = c.run()
            c.process_s.append(time.perf_counter() - t0)
            if out.guest_s is not None:
                c.guest_s.append(out.guest_s)
            if out.exits is not None:
                c.exits.append(out.exits)
            if out.startup_s is not None:
                c.startup_s.append(out.startup_s)
            if out.status is None:
                raise MismatchError(f"{c.name}: {kernel} ended without isa-debug-exit; the bench needs a "
                                    "kernel that runs to its end on its own (no timer, disk or keyboard)")
            if first is None:
                first = out.serial
            elif out.serial != first:
                raise MismatchError(f"{c.name} printed other output than {cs[0].name} on the same kernel")
    if progress is not None:
        progress("the installed Unicorn's cost per store")
    store = min((store_cost() for _ in range(3)), key=lambda s: s.per_store_ns)
    return EngineBench(str(kernel), cmdline, runs, cs, store, unicorn.__version__, newest_unicorn(),
                       qemu.qemu_version())


def newest_unicorn(timeout: float = 3.0) -> str | None:
    """The newest Unicorn release on PyPI, or None when PyPI cannot be asked."""
    try:
        with urllib.request.urlopen(PYPI, timeout=timeout) as reply:
            return str(json.load(reply)["info"]["version"])
    except (OSError, ValueError, KeyError):
        return None
