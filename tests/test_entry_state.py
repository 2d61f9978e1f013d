"""The machine state a kernel finds at its entry point, under QEMU (the reference) and ring1:
what docs/writing-a-kernel.md states, measured.

`tests/data/entryprobe.S` prints one `name value` line per register, control register,
descriptor-table register, PIC register and the PIT's channel-0 status, read first thing
at entry. `tests/data/entryprobe.qemu.txt` is what it printed under the reference command
line (tests/qemu.py); RING1_UPDATE_GOLDEN=1 rewrites it. The multiboot specification
(0.6.96 §3.2) defines only some of these; ring1 must agree with QEMU on those, and the
others are documented where they differ.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from qemu import qemu_binary, run_qemu, update_requested

from patchmgr.manager import PatchConfig
from runtime.config import RunConfig
from runtime.vm import Vm
from tests.test_boot import build

DATA = Path(__file__).resolve().parent / "data"
GOLDEN = DATA / "entryprobe.qemu.txt"
SCRIPT = """ENTRY(_start)
SECTIONS {
    . = 0x100000;
    .text : { *(.multiboot) *(.text) }
    .rodata : { *(.rodata) }
    .data ALIGN(4096) : { *(.data) }
    .bss : { *(.bss) }
}
"""
#: What the multiboot spec defines, or the firmware state ring1 reproduces (runtime/devices/
#: standard.py): the same under ring1 as under QEMU.
SAME = ("eax", "ebx", "cr0", "cr2", "cr3", "cr4", "ldtr", "pic.master.imr", "pic.slave.imr",
        "pic.master.isr", "pit.ch0.status")


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("as") is None or shutil.which("ld") is None:
        pytest.skip("GNU as/ld not installed")
    source = (DATA / "entryprobe.S").read_text()
    return build(tmp_path_factory.mktemp("entry"), "entryprobe.elf", source, SCRIPT)


def _parse(text: str) -> dict[str, int]:
    return {name: int(value, 16) for name, value in (line.split() for line in text.splitlines())}


def test_qemu_prints_the_recorded_state(probe: Path) -> None:
    if qemu_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("qemu-system-i386 is required under CI")
        pytest.skip("qemu-system-i386 not installed")
    serial, code = run_qemu(probe, "")
    assert code == 1
    if update_requested():
        GOLDEN.write_bytes(serial)
    assert serial == GOLDEN.read_bytes()


@pytest.mark.parametrize("patched", [False, True], ids=["unpatched", "patched"])
def test_ring1_entry_state(probe: Path, patched: bool) -> None:
    out = io.BytesIO()
    vm = Vm(RunConfig(kernel=probe, serial=out, patch=PatchConfig(enabled=patched)))
    assert vm.run().exit_status == 1
    ring1, qemu = _parse(out.getvalue().decode()), _parse(GOLDEN.read_text())
    assert set(ring1) == set(qemu)
    assert {k: ring1[k] for k in SAME} == {k: qemu[k] for k in SAME}
    assert qemu["eflags"] & 0x200 == 0                                     # IF clear (spec)
    # What docs/writing-a-kernel.md says of the rest under ring1:
    assert ring1["esp"] == 0x7000 and qemu["esp"] == 0x6F08
    assert ring1["pic.master.irr"] == 0 and qemu["pic.master.irr"] == 0x10
    if patched:
        # Patched, the segment registers show RPL 0 and the descriptor-table registers the
        # guest's own (virtual, empty until it loads them); unpatched they leak the VMM's.
        assert ring1["eflags"] & 0x200 == 0                               # the virtual IF
        assert ring1["cs"] & 3 == 0 and ring1["ss"] & 3 == 0 and ring1["tr"] == qemu["tr"] == 0
        tables = (ring1["gdtr.limit"], ring1["gdtr.base"], ring1["idtr.limit"], ring1["idtr.base"])
        assert tables == (0, 0, 0, 0)
    else:
        assert ring1["eflags"] & 0x200 and ring1["cs"] & 3 == 1 and ring1["tr"] != 0   # the leaks
