"""`bt bench patch`: what patching buys on `irqsave`, measured in one run.

Four configurations of two sample kernels, each run `runs` times round-robin (so a
machine's changing load hits all alike) and the fastest run kept:

* `irqsave`, unpatched: pure trap-and-emulate (every CLI/STI traps; PUSHF/POPF run
  natively, leaking IF, as they would at CPL 1 on hardware);
* `irqsave`, patched (`bt run` default: each site patched on its first trap, the
  never-trapping ones before they run);
* `irqsave-pv`, the paravirtual twin (its flag operations are plain memory operations
  on a flags word: what a kernel rewritten for the VMM would do), under the same
  patching configuration as the patched `irqsave` (its port I/O gets patched too),
  and unpatched;
* both again with `--eager` (every site patched before the guest starts: the patched
  code's steady-state speed, without the cost of making patches while it runs).

Wall time is `Vm.run()` (the guest running, exits, and dynamic patching, which
happens while it runs); the VMM's set-up (ELF load, scan) is shown apart. Figures are
machine-dependent: printed, never asserted on. The guest's serial output of every
run is compared with the first, so a figure never comes from a run that went wrong.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path

from bt.errors import MismatchError
from patchmgr.manager import PatchConfig
from runtime.config import RunConfig
from runtime.vm import Vm

#: The per-config command line: the one tests/qemu.py boots the samples with.
CMDLINE = "iters=20000"


@dataclass(frozen=True)
class Config:
    name: str
    kernel: str
    patch: PatchConfig


@dataclass
class Measured:
    config: Config
    run_s: float = float("inf")
    setup_s: float = float("inf")
    traps: int = 0
    exits: int = 0
    hypercalls: int = 0
    guest_insns: int = 0
    patches: int = 0
    serial: bytes = b""
    #: Every run's time, in round order: rounds run the configurations back to back, so a
    #: ratio of two configurations within one round sees one state of a machine whose
    #: speed drifts (`paired`).
    runs_s: list[float] = field(default_factory=list)


def paired(a: Measured, b: Measured) -> list[float]:
    """a / b, round by round, sorted."""
    return sorted(x / y for x, y in zip(a.runs_s, b.runs_s, strict=True))


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def configs(samples: Path) -> list[Config]:
    def elf(name: str) -> str:
        return str(samples / name / f"{name}.elf")

    return [Config("irqsave unpatched", elf("irqsave"), PatchConfig(enabled=False)),
            Config("irqsave patched", elf("irqsave"), PatchConfig()),
            Config("irqsave-pv patched", elf("irqsave-pv"), PatchConfig()),
            Config("irqsave-pv unpatched", elf("irqsave-pv"), PatchConfig(enabled=False)),
            Config("irqsave eager", elf("irqsave"), PatchConfig(eager=True)),
            Config("irqsave-pv eager", elf("irqsave-pv"), PatchConfig(eager=True))]


def _once(c: Config, cmdline: str, m: Measured) -> None:
    serial = io.BytesIO()
    t0 = time.perf_counter()
    vm = Vm(RunConfig(kernel=Path(c.kernel), cmdline=cmdline, serial=serial, patch=c.patch))
    t1 = time.perf_counter()
    vm.run()
    t2 = time.perf_counter()
    if m.serial and serial.getvalue() != m.serial:
        raise MismatchError(f"{c.name}: guest output differs between two runs")
    m.serial = serial.getvalue()
    m.setup_s = min(m.setup_s, t1 - t0)
    m.runs_s.append(t2 - t1)
    if t2 - t1 < m.run_s:
        m.run_s = t2 - t1
        ex = vm.stats.exits
        m.traps, m.hypercalls = ex.get("trap", 0), ex.get("hypercall", 0)
        m.exits, m.guest_insns = vm.stats.total_exits, vm.stats.guest_insns
        m.patches = len(vm.patches.patches) if vm.patches is not None else 0


def measure(samples: Path, runs: int = 5, cmdline: str = CMDLINE) -> list[Measured]:
    cs = configs(samples)
    out = [Measured(c) for c in cs]
    for _ in range(runs):
        for c, m in zip(cs, out, strict=True):
            _once(c, cmdline, m)
    # irqsave's two runs (and irqsave-pv's) must print the same bytes, or patching changed
    # what the guest saw.
    for a, b in ((out[0], out[1]), (out[2], out[3]), (out[0], out[4]), (out[2], out[5])):
        if a.serial != b.serial:
            raise MismatchError(f"{a.config.name} and {b.config.name} print different output")
    return out
