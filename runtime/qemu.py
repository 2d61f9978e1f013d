"""QEMU, the reference: the command line ring1 compares with, and one run of it.

`qemu-system-i386` (Debian package qemu-system-x86) boots the same multiboot kernels
`bt run` does. The command is the one the tests compare serial output with
(tests/qemu.py): TCG, not KVM, so the guest sees the same CPU everywhere; COM1 to a
file; the isa-debug-exit device at port 0xF4 (a guest write of V ends QEMU with
(V << 1) | 1); ring1's default RAM; no reboot on a triple fault.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bt.layout import RAM_DEFAULT, MiB

#: The isa-debug-exit device: a guest write of V to port 0xF4 ends QEMU with (V << 1) | 1.
DEBUG_EXIT_PORT = 0xF4
#: Guest RAM, the same as ring1's default.
RAM_MIB = RAM_DEFAULT // MiB


def qemu_binary() -> str | None:
    """Path of qemu-system-i386, or None when it is not installed."""
    return shutil.which("qemu-system-i386")


def qemu_version() -> str | None:
    """"7.2.x" as `qemu-system-i386 --version` says it, or None without QEMU."""
    binary = qemu_binary()
    if binary is None:
        return None
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    words = out.split()
    return words[3] if len(words) > 3 and words[:3] == ["QEMU", "emulator", "version"] else None


def _opt(value: str) -> str:
    """A value inside a QEMU key=value option list: a comma is written twice."""
    return value.replace(",", ",,")


def qemu_command(elf: Path, cmdline: str, serial_path: Path, *,
                 modules: Sequence[tuple[Path, str]] = (), disk: Path | None = None,
                 disks: Sequence[Path] = (), qmp: Path | None = None, ram_mib: int = RAM_MIB) -> list[str]:
    """The reference command line.

    `modules` are multiboot modules (file, arguments): QEMU passes each one the string
    "<file> <arguments>", and takes the file name up to the first space, so a module's
    path must not contain one. `disk` is the primary IDE master, `disks` the master then
    the slave (`bt run --disk` order); neither is ever written (snapshot=on). `qmp` is the
    path of a QMP socket to create.
    """
    cmd = [
        qemu_binary() or "qemu-system-i386",
        "-kernel", str(elf),
        "-append", cmdline,
    ]
    if modules:
        if any(" " in str(path) for path, _ in modules):
            raise ValueError("a multiboot module's path must not contain a space")
        cmd += ["-initrd", ",".join(_opt(f"{path} {args}".rstrip()) for path, args in modules)]
    for index, image in enumerate([disk] if disk is not None else list(disks)):
        cmd += ["-drive", f"file={_opt(str(image))},format=raw,if=ide,index={index},snapshot=on"]
    if qmp is not None:
        cmd += ["-qmp", f"unix:{_opt(str(qmp))},server=on,wait=off"]
    return [*cmd,
            "-display", "none",
            "-monitor", "none",
            "-serial", f"file:{serial_path}",
            "-device", f"isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x04",
            "-no-reboot",
            "-m", str(ram_mib),
            "-accel", "tcg",
            ]


@dataclass(frozen=True)
class QemuRun:
    serial: bytes        #: what COM1 received
    returncode: int      #: QEMU's exit status ((V << 1) | 1 after isa-debug-exit)
    seconds: float       #: the whole process, start-up included


def run_qemu(elf: Path, cmdline: str, timeout: float = 30.0) -> QemuRun:
    """Boot `elf` under QEMU to its end. Raises subprocess.TimeoutExpired (after killing
    QEMU) when the guest does not end within `timeout` seconds."""
    with tempfile.TemporaryDirectory(prefix="ring1-qemu-") as tmp:
        serial = Path(tmp) / "serial.out"
        t0 = time.perf_counter()
        proc = subprocess.run(qemu_command(elf, cmdline, serial), stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=timeout, check=False)
        seconds = time.perf_counter() - t0
        return QemuRun(serial.read_bytes() if serial.exists() else b"", proc.returncode, seconds)
