"""`bt bench boot`: wall time from process start to an OS's shell prompt, under QEMU TCG and
under ring1 (patched, eager, unpatched), measured side by side in one run.

Every configuration is a process started the same way, its guest's serial output read
every 2 ms (QEMU's from its serial file, ring1's from its stdout) until the prompt
appears; the time from the process's start to then is the figure. QEMU is then killed;
ring1 gets SIGINT, which ends its run cleanly and writes its `--json` (exits and guest
instructions, counted up to that stop, a few milliseconds after the prompt). The serial
bytes up to the prompt must be the same in every configuration; a configuration that
does not reach the prompt is reported with why, not timed.

The targets: the bundled mini-OS (samples/minios: a multiboot module, a disk, its prompt
`sh$ `), and xv6 when the user gives a built xv6-public tree (`kernel`, `xv6.img`,
`fs.img`): its sources and binaries are not ring1's to ship.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bt.errors import InputError
from runtime import qemu

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
POLL_S = 0.002
RING1 = {"ring1 patched": [], "ring1 eager": ["--eager"], "ring1 unpatched": ["--no-patch"]}
QEMU = "QEMU TCG"


@dataclass(frozen=True)
class BootTarget:
    name: str
    kernel: Path
    prompt: bytes                 #: the serial bytes that end the boot (first occurrence)
    cmdline: str = ""
    modules: tuple[tuple[Path, str], ...] = ()
    disks: tuple[Path, ...] = ()
    ram_mib: int = 128


def minios() -> BootTarget:
    folder = SAMPLES / "minios"
    return BootTarget("minios", folder / "minios.elf", b"sh$ ", modules=((folder / "sh.bin", "motd=motd"),),
                      disks=(folder / "disk.img",))


def xv6(folder: Path) -> BootTarget:
    files = [folder / "kernel", folder / "xv6.img", folder / "fs.img"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(f"{folder}: not a built xv6 tree (missing {', '.join(missing)}; run make there)")
    # xv6's kernel uses memory up to its PHYSTOP (224 MiB); xv6's own Makefile gives QEMU 512.
    return BootTarget("xv6", files[0], b"init: starting sh\n$ ", disks=tuple(files[1:]), ram_mib=512)


@dataclass(frozen=True)
class Boot:
    """One boot of one configuration."""

    seconds: float | None         #: process start to the prompt; None: not reached
    serial: bytes                 #: serial output up to and including the prompt
    why: str = ""                 #: why the prompt was not reached
    exits: int | None = None      #: ring1: exits counted up to its stop just after the prompt
    guest_insns: int | None = None
    startup_s: float | None = None


@dataclass
class Config:
    name: str
    boot: Callable[[], Boot]
    boots: list[Boot] = field(default_factory=list)

    @property
    def seconds(self) -> list[float]:
        return [b.seconds for b in self.boots if b.seconds is not None]


def _watch(proc: subprocess.Popen[bytes], output: Callable[[], bytes], prompt: bytes, t0: float,
           timeout: float) -> tuple[float | None, bytes, str]:
    """Poll the guest's serial output until `prompt` appears, the process ends or `timeout`
    passes."""
    while True:
        data = output()
        at = data.find(prompt)
        if at >= 0:
            return time.perf_counter() - t0, data[:at + len(prompt)], ""
        if proc.poll() is not None:
            time.sleep(POLL_S)
            data = output()
            if prompt in data:
                continue
            err = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace").strip()
            return None, data, (err.splitlines()[0] if err else f"exited with {proc.returncode}")
        if time.perf_counter() - t0 > timeout:
            return None, data, f"no prompt within {timeout:.0f} s"
        time.sleep(POLL_S)


class _Drain:
    """Reads a pipe on a thread, so that the guest never blocks on a full pipe and the
    output so far can be polled."""

    def __init__(self, pipe: Any) -> None:
        self.data = bytearray()
        self._pipe = pipe
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while chunk := os.read(self._pipe.fileno(), 65536):
            self.data += chunk

    def __call__(self) -> bytes:
        return bytes(self.data)


def _end(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def boot_qemu(target: BootTarget, timeout: float) -> Boot:
    with tempfile.TemporaryDirectory(prefix="ring1-boot-") as tmp:
        serial = Path(tmp) / "serial"
        cmd = qemu.qemu_command(target.kernel, target.cmdline, serial, modules=target.modules,
                                disks=target.disks, ram_mib=target.ram_mib)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            seconds, data, why = _watch(proc, lambda: serial.read_bytes() if serial.exists() else b"",
                                        target.prompt, t0, timeout)
        finally:
            _end(proc, signal.SIGKILL)
        return Boot(seconds, data, why)


def ring1_command(target: BootTarget, stats: Path, flags: Sequence[str]) -> list[str]:
    """`bt run` with the guest's serial output on stdout: `--serial FILE` is an output
    written whole when the run ends (bt/outfile.py), too late to watch."""
    cmd = [sys.executable, "-m", "bt", "run", str(target.kernel), "--cmdline", target.cmdline,
           "--json", str(stats), "--ram", str(target.ram_mib), *flags]
    for path, args in target.modules:
        cmd += ["--module", f"{path},{args}" if args else str(path)]
    for disk in target.disks:
        cmd += ["--disk", str(disk)]
    return cmd


def boot_ring1(target: BootTarget, flags: Sequence[str], timeout: float) -> Boot:
    with tempfile.TemporaryDirectory(prefix="ring1-boot-") as tmp:
        stats = Path(tmp) / "stats.json"
        t0 = time.perf_counter()
        proc = subprocess.Popen(ring1_command(target, stats, flags), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            seconds, data, why = _watch(proc, _Drain(proc.stdout), target.prompt, t0, timeout)
        finally:
            _end(proc, signal.SIGINT)
        doc = json.loads(stats.read_text()) if stats.exists() else {}
    startup = doc.get("startup_ns")
    return Boot(seconds, data, why, doc.get("total_exits"), doc.get("guest_insns"),
                startup / 1e9 if startup else None)


def configs(target: BootTarget, timeout: float, with_qemu: bool) -> list[Config]:
    out = [Config(QEMU, lambda: boot_qemu(target, timeout))] if with_qemu else []
    for name, flags in RING1.items():
        out.append(Config(name, lambda f=flags: boot_ring1(target, f, timeout)))  # type: ignore[misc]
    return out


def measure(target: BootTarget, runs: int, timeout: float = 120.0,
            progress: Callable[[str], None] | None = None) -> list[Config]:
    """`runs` rounds, each booting every configuration once (round robin: a change in the
    machine's load hits every configuration alike)."""
    cs = configs(target, timeout, qemu.qemu_binary() is not None)
    for r in range(runs):
        for c in cs:
            if progress is not None:
                progress(f"{target.name}: round {r + 1}/{runs}: {c.name}")
            c.boots.append(c.boot())
    return cs


def mismatches(cs: list[Config]) -> list[str]:
    """Configurations whose serial output up to the prompt differs from the first one's."""
    reached = [(c.name, b.serial) for c in cs for b in c.boots if b.seconds is not None]
    if not reached:
        return []
    first = reached[0][1]
    return sorted({name for name, serial in reached if serial != first})

