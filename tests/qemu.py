"""The sample kernels and how QEMU, the reference, runs them.

One list (`SAMPLES`) and one command line (`qemu_command`), shared by
`test_samples_qemu.py` (QEMU against the golden files) and by the runtime's tests,
which run ring1 on the same kernels and compare with the same golden files.

A golden file (`samples/<name>/expected.serial`) holds the exact bytes QEMU's COM1
produced. Regenerate them after changing a sample:

    python -m tests.qemu --update            # every sample
    python -m tests.qemu --update zoo timer  # some
    RING1_UPDATE_GOLDEN=1 python3 -m pytest -q tests/test_samples_qemu.py

QEMU hands a multiboot kernel the command line "<kernel path> <append>"; the
samples skip that first word (see samples/common/cmdline.c), so the path does not
reach the output.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = ROOT / "samples"

#: The isa-debug-exit device: a guest write of V to port 0xF4 ends QEMU with (V << 1) | 1.
DEBUG_EXIT_PORT = 0xF4
#: Guest RAM, the same as ring1's default (bt.layout.RAM_DEFAULT).
RAM_MIB = 64
#: Wall-clock limit for one QEMU run; every sample finishes in well under a second.
TIMEOUT_S = 30.0
#: Set to 1 to make the tests rewrite the golden files instead of comparing.
UPDATE_ENV = "RING1_UPDATE_GOLDEN"


@dataclass(frozen=True)
class Sample:
    """One sample kernel: where it is, how it is booted, how it must end."""

    name: str
    cmdline: str
    #: The value the guest writes to the debug-exit port (0: all its checks passed).
    status: int = 0
    #: A second way to boot the same kernel, with its own golden file
    #: (`expected-<variant>.serial`); "" for the standard boot.
    variant: str = ""

    @property
    def key(self) -> str:
        return f"{self.name}:{self.variant}" if self.variant else self.name

    @property
    def elf(self) -> Path:
        return SAMPLES_DIR / self.name / f"{self.name}.elf"

    @property
    def golden(self) -> Path:
        suffix = f"-{self.variant}" if self.variant else ""
        return SAMPLES_DIR / self.name / f"expected{suffix}.serial"

    @property
    def exit_code(self) -> int:
        """The process exit code QEMU (and `bt run`) report for this guest."""
        return (self.status << 1) | 1

    def expected_serial(self) -> bytes:
        return self.golden.read_bytes()


SAMPLES: tuple[Sample, ...] = (
    Sample("hello", "mode=test greeting=hi"),
    Sample("irqsave", "iters=20000"),
    Sample("irqsave-pv", "iters=20000"),
    Sample("timer", ""),
    Sample("zoo", ""),
    Sample("usermode", ""),
)

SAMPLES_BY_NAME = {s.name: s for s in SAMPLES}

#: irqsave printing what its saved flags said about IF. Not in SAMPLES: unpatched
#: ring 1 shows the PUSHF leak here by design (PUSHF doesn't trap at CPL 1), so this
#: boot must equal QEMU only when the PUSHF/POPF sites run through patches.
IRQSAVE_CHECK_IF = Sample("irqsave", "iters=200 check_if=1", variant="check_if")

#: Every boot of the sample kernels with a golden file.
ALL_BOOTS: tuple[Sample, ...] = (*SAMPLES, IRQSAVE_CHECK_IF)

#: The attack and fidelity guests (samples/attacks, issue 11): one boot per group, each
#: with its golden file `expected-<group>.serial`. tests/test_attacks.py runs them under
#: ring1, unpatched and patched, against these goldens and the documented leaks.
ATTACK_GROUPS = ("selectors", "gates", "exceptions", "instructions", "user_patch", "user_patch_paged",
                 "pde", "smc", "iopl", "unscanned")
ATTACKS: tuple[Sample, ...] = tuple(Sample("attacks", f"test={g}", variant=g) for g in ATTACK_GROUPS)

#: Every boot with a golden file, for regenerating them.
GOLDEN_BOOTS: tuple[Sample, ...] = (*ALL_BOOTS, *ATTACKS)
ALL_BY_KEY = {s.key: s for s in GOLDEN_BOOTS}


def qemu_binary() -> str | None:
    """Path of qemu-system-i386, or None when it is not installed."""
    return shutil.which("qemu-system-i386")


def qemu_command(elf: Path, cmdline: str, serial_path: Path) -> list[str]:
    """The reference command line. TCG, not KVM: the guest must see the same CPU everywhere."""
    return [
        qemu_binary() or "qemu-system-i386",
        "-kernel", str(elf),
        "-append", cmdline,
        "-display", "none",
        "-monitor", "none",
        "-serial", f"file:{serial_path}",
        "-device", f"isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x04",
        "-no-reboot",
        "-m", str(RAM_MIB),
        "-accel", "tcg",
    ]


def run_qemu(elf: Path, cmdline: str, timeout: float = TIMEOUT_S) -> tuple[bytes, int]:
    """Boot `elf` under QEMU; return (bytes written to COM1, QEMU's exit code).

    Raises subprocess.TimeoutExpired (after killing QEMU) when the guest does not end.
    """
    with tempfile.TemporaryDirectory(prefix="ring1-qemu-") as tmp:
        serial = Path(tmp) / "serial.out"
        proc = subprocess.run(qemu_command(elf, cmdline, serial), stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=timeout, check=False)
        return (serial.read_bytes() if serial.exists() else b""), proc.returncode


def update_goldens(names: Sequence[str] = ()) -> list[str]:
    """Run the named samples (all when empty) under QEMU and rewrite their golden files."""
    chosen = [ALL_BY_KEY[n] for n in names] if names else list(GOLDEN_BOOTS)
    report = []
    for sample in chosen:
        serial, code = run_qemu(sample.elf, sample.cmdline)
        if code != sample.exit_code:
            report.append(f"{sample.key}: QEMU exited {code}, want {sample.exit_code}; golden not written")
            continue
        sample.golden.write_bytes(serial)
        report.append(f"{sample.key}: {len(serial)} bytes -> {sample.golden.relative_to(ROOT)}")
    return report


def update_requested() -> bool:
    return os.environ.get(UPDATE_ENV, "") not in ("", "0")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.qemu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", action="store_true", help="rewrite the golden files")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"samples to run (default: all of {', '.join(ALL_BY_KEY)})")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in ALL_BY_KEY]
    if unknown:
        parser.error(f"unknown sample(s): {', '.join(unknown)}")
    if qemu_binary() is None:
        print("qemu-system-i386 not found", file=sys.stderr)
        return 2
    if args.update:
        lines = update_goldens(args.names)
        print("\n".join(lines))
        return 1 if any("not written" in line for line in lines) else 0
    failed = 0
    for name in args.names or ALL_BY_KEY:
        sample = ALL_BY_KEY[name]
        serial, code = run_qemu(sample.elf, sample.cmdline)
        same = sample.golden.exists() and serial == sample.expected_serial()
        ok = same and code == sample.exit_code
        failed += not ok
        print(f"{name}: exit {code} (want {sample.exit_code}), serial {'matches' if same else 'DIFFERS'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
