"""The platform probes (tests/data/platform/*.c, tests/data/pcprobe.S) under QEMU and ring1.

Each probe prints over COM1 what it sees of the PC: QEMU's output is the golden file
(`tests/data/platform/<name>.qemu.txt`), ring1 must print the same bytes, unpatched and
patched. Disk images and module files are made here, the same every time. Keys are typed
under QEMU through QMP `send-key` once the probe prints its prompt (`Probe.keys`), and under
ring1 with `--keys` (the same text).

Regenerate the goldens: `RING1_UPDATE_GOLDEN=1 python3 -m pytest -q tests/test_platform_qemu.py`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from qemu import qemu_binary

from bt.errors import GuestStop
from patchmgr.manager import PatchConfig
from runtime.boot import BootModule
from runtime.config import RunConfig
from runtime.qemu import DEBUG_EXIT_PORT
from runtime.vm import Vm

DATA = Path(__file__).resolve().parent / "data"
PLATFORM = DATA / "platform"
TIMEOUT_S = 60.0
#: QMP key names of the characters the probes type (others: the character itself).
QCODES = {"\n": "ret", " ": "spc", "-": "minus", ".": "dot", "/": "slash"}


def disk_image(seed: str, sectors: int) -> bytes:
    """A raw disk whose every sector is different and recognisable."""
    out = bytearray()
    for n in range(sectors):
        out += (hashlib.sha256(f"{seed}:{n}".encode()).digest() * 16)[:512]
    return bytes(out)


def make_disks(tmp: Path) -> tuple[Path, Path]:
    master, slave = tmp / "ide0.img", tmp / "ide1.img"
    master.write_bytes(disk_image("master", 2048))
    slave.write_bytes(disk_image("slave", 100))
    return master, slave


def make_modules(tmp: Path) -> tuple[BootModule, ...]:
    (tmp / "moda.bin").write_bytes(b"MODULE-A-DATA\n")
    (tmp / "modb.bin").write_bytes(disk_image("module", 10)[:5000])
    return BootModule("moda.bin", "arg1 arg2"), BootModule("modb.bin")


@dataclass(frozen=True)
class Probe:
    name: str
    elf: Path
    disks: bool = False
    modules: bool = False
    cmdline: str = ""
    #: (prompt the probe prints, text typed after it), in order.
    keys: tuple[tuple[str, str], ...] = ()
    golden: Path = field(default=Path())

    @property
    def key_text(self) -> str:
        return "".join(text for _, text in self.keys)


def probe(name: str, **kw: object) -> Probe:
    return Probe(name, PLATFORM / f"{name}.elf", golden=PLATFORM / f"{name}.qemu.txt", **kw)  # type: ignore[arg-type]


PROBES: tuple[Probe, ...] = (
    probe("apic"),
    probe("ide", disks=True),
    probe("kbd", keys=(("keys?", "aZ1 -\n"), ("keys2?", "b\n"))),
    probe("procs"),
)


def qemu_args(p: Probe, tmp: Path, serial: Path) -> list[str]:
    cmd = [qemu_binary() or "qemu-system-i386", "-kernel", str(p.elf), "-append", p.cmdline,
           "-display", "none", "-serial", f"file:{serial}",
           "-device", f"isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x04", "-no-reboot",
           "-m", "64", "-accel", "tcg"]
    if p.disks:
        for index, disk in enumerate(make_disks(tmp)):
            cmd += ["-drive", f"file={disk},format=raw,if=ide,index={index},snapshot=on"]
    if p.modules:
        cmd += ["-initrd", ",".join(m.cmdline for m in make_modules(tmp))]
    return cmd


def run_qemu_probe(p: Probe, tmp: Path) -> bytes:
    """QEMU's serial output for the probe; keys typed through QMP at its prompts."""
    serial = tmp / f"{p.name}.qemu.out"
    cmd = qemu_args(p, tmp, serial)
    if not p.keys:
        subprocess.run([*cmd, "-monitor", "none"], cwd=tmp, stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=TIMEOUT_S, check=False)
        return serial.read_bytes()
    sock = tmp / "qmp.sock"
    proc = subprocess.Popen([*cmd, "-qmp", f"unix:{sock},server=on,wait=off"], cwd=tmp,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _type_keys(sock, serial, p.keys)
        proc.wait(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return serial.read_bytes()


def _type_keys(sock: Path, serial: Path, keys: tuple[tuple[str, str], ...]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not sock.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("QEMU's QMP socket never appeared")
        time.sleep(0.05)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        f = s.makefile("rw")

        def execute(command: dict[str, object]) -> None:
            f.write(json.dumps(command) + "\n")
            f.flush()
            while True:
                reply = json.loads(f.readline())
                if "return" in reply or "error" in reply:
                    return

        f.readline()                     # the greeting
        execute({"execute": "qmp_capabilities"})
        for prompt, text in keys:
            while prompt.encode() not in (serial.read_bytes() if serial.exists() else b""):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the probe never printed {prompt!r}")
                time.sleep(0.05)
            for ch in text:
                names = [QCODES.get(ch, ch.lower())]
                if ch.isupper():
                    names.insert(0, "shift")
                execute({"execute": "send-key",
                         "arguments": {"keys": [{"type": "qcode", "data": n} for n in names]}})
                time.sleep(0.02)


def run_ring1_probe(p: Probe, tmp: Path, patched: bool) -> bytes:
    """ring1's serial output for the probe (cwd must be `tmp` for modules, see the tests)."""
    serial = io.BytesIO()
    disks = make_disks(tmp) if p.disks else ()
    modules = make_modules(tmp) if p.modules else ()
    config = RunConfig(kernel=p.elf, cmdline=p.cmdline, serial=serial, max_insns=200_000_000,
                       patch=PatchConfig() if patched else PatchConfig(enabled=False), disks=disks,
                       modules=modules, keys=p.key_text)
    vm = Vm(config)
    try:
        vm.run()
    except GuestStop as stop:
        return serial.getvalue() + f"\n[ring1 stop: {stop}]\n".encode()
    return serial.getvalue()


def update_requested() -> bool:
    return os.environ.get("RING1_UPDATE_GOLDEN", "") not in ("", "0")
