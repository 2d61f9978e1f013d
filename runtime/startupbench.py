"""`bt bench startup`: how long `bt run` takes from process start to the guest's first
instruction, beside the floors under it, in one run (issue 14).

Every figure is a fresh process of this interpreter (`sys.executable`), round-robin for
`runs` rounds, medians printed:

* the floors: the interpreter alone (`python -c pass`), then the interpreter importing each
  engine ring1 needs (Unicorn, Capstone, Keystone, NumPy), one at a time;
* `bt run KERNEL --max-insns 1 --json FILE` for each kernel: the process's wall time and
  the start-up `bt run` measures itself (`startup_ns`: process start, as the kernel
  recorded it, to the guest's first instruction; runtime/stats.py `process_age_ns`).

Whether ring1's own modules have bytecode caches is printed too: without them (an editable
install run with PYTHONDONTWRITEBYTECODE=1) every run compiles its ~120 modules again.
Figures are machine-dependent: printed, never asserted on.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bt.errors import InputError
from runtime.enginebench import median

ROOT = Path(__file__).resolve().parent.parent
#: The bundled samples measured by default.
SAMPLES = ("hello", "irqsave", "timer")
#: Floor name -> the code `python -c` runs.
FLOORS = {"python -c pass": "pass", "+ import unicorn": "import unicorn",
          "+ import capstone": "import capstone", "+ import keystone": "import keystone",
          "+ import numpy": "import numpy"}


@dataclass
class Row:
    name: str
    process_s: list[float] = field(default_factory=list)
    startup_s: list[float] = field(default_factory=list)     #: `bt run` only

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "process_s": median(self.process_s),
                "startup_s": median(self.startup_s) if self.startup_s else None}


def sample_kernels() -> list[Path]:
    return [ROOT / "samples" / name / f"{name}.elf" for name in SAMPLES]


def bytecode_cached() -> bool:
    """Whether ring1's modules have .pyc files an import would use (checked on one)."""
    source = ROOT / "bt" / "cli" / "__init__.py"
    return Path(importlib.util.cache_from_source(str(source))).exists()


def _timed(args: list[str], timeout: float) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0, proc


def _floor(row: Row, code: str, timeout: float) -> None:
    seconds, proc = _timed(["-c", code], timeout)
    if proc.returncode != 0:
        raise InputError(f"python -c {code!r} failed: {proc.stderr.decode(errors='replace').strip()}")
    row.process_s.append(seconds)


def _bt_run(row: Row, kernel: Path, timeout: float) -> None:
    with tempfile.TemporaryDirectory(prefix="ring1-startup-") as tmp:
        stats = Path(tmp) / "stats.json"
        seconds, proc = _timed(["-m", "bt", "run", str(kernel), "--max-insns", "1", "--serial", "/dev/null",
                                "--json", str(stats)], timeout)
        if not stats.exists():
            why = proc.stderr.decode(errors="replace").strip().splitlines()
            raise InputError(f"bt run {kernel} failed: {why[-1] if why else proc.returncode}")
        doc = json.loads(stats.read_text())
    row.process_s.append(seconds)
    if doc.get("startup_ns"):
        row.startup_s.append(doc["startup_ns"] / 1e9)


def measure(kernels: list[Path], runs: int, timeout: float = 60.0,
            progress: Callable[[str], None] = lambda _: None) -> list[Row]:
    for k in kernels:
        if not k.is_file():
            raise InputError(f"{k}: no such file")
    rows = [Row(name) for name in FLOORS] + [Row(f"bt run {k.name}") for k in kernels]
    for r in range(runs):
        for row, code in zip(rows, FLOORS.values(), strict=False):
            progress(f"round {r + 1}/{runs}: {row.name}")
            _floor(row, code, timeout)
        for row, kernel in zip(rows[len(FLOORS):], kernels, strict=True):
            progress(f"round {r + 1}/{runs}: {row.name}")
            _bt_run(row, kernel, timeout)
    return rows
