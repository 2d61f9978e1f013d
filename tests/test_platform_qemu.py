"""The PC platform against QEMU, the reference: probe kernels print what they see and ring1
must print what QEMU printed (tests/platform_qemu.py).

* `tests/data/pcprobe.S`: what a multiboot kernel finds at entry: the BIOS data area, the
  EBDA, the MP floating pointer and table, the local and I/O APIC registers, the CRTC
  registers, the VGA/i8042/IDE ports, the text screen, and the multiboot modules; once with
  two modules, once with two disks. Only the BIOS tick count (0x46C) may differ: QEMU's
  counts host time (runtime/firmware.py).
* `tests/data/platform/{apic,ide,kbd}.c`: the devices driven as a kernel drives them.

The ring1 side runs always (the goldens are committed); the live QEMU side skips without
qemu-system-i386, except under CI=true, where it fails.
"""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from platform_qemu import (
    DATA,
    PROBES,
    Probe,
    make_modules,
    run_qemu_probe,
    run_ring1_probe,
    update_requested,
)
from qemu import qemu_binary

TOOLS = shutil.which("as") and shutil.which("ld")
#: The BIOS data area line of pcprobe and the bytes of the timer tick count in it.
BDA_LINE = "R 00000400 00000100 "
TICKS = slice(len(BDA_LINE) + 2 * 0x6C, len(BDA_LINE) + 2 * 0x70)


def need_qemu() -> None:
    if qemu_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("qemu-system-i386 is required under CI")
        pytest.skip("qemu-system-i386 not installed (Debian: qemu-system-x86)")


def same(got: bytes, want: bytes, what: str) -> None:
    if got != want:
        diff = difflib.unified_diff(want.decode(errors="replace").splitlines(),
                                    got.decode(errors="replace").splitlines(), "qemu", "ring1", lineterm="")
        pytest.fail(f"{what} differs:\n" + "\n".join(list(diff)[:60]))


def mask_ticks(text: bytes) -> bytes:
    lines = text.decode().split("\n")
    for i, line in enumerate(lines):
        if line.startswith(BDA_LINE):
            lines[i] = line[:TICKS.start] + "x" * 8 + line[TICKS.stop:]
    return "\n".join(lines).encode()


# -- probes built here: pcprobe ---------------------------------------------------------------

@pytest.fixture(scope="module")
def pcprobe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not TOOLS:
        pytest.skip("GNU as/ld not installed")
    tmp = tmp_path_factory.mktemp("pcprobe")
    subprocess.run(["as", "--32", str(DATA / "pcprobe.S"), "-o", str(tmp / "pcprobe.o")], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-z", "noexecstack", "-T", str(DATA / "mbprobe.ld"), "-o",
                    str(tmp / "pcprobe.elf"), str(tmp / "pcprobe.o")], check=True)
    return tmp / "pcprobe.elf"


PC_CONFIGS = {"modules": dict(modules=True, cmdline="x=1"), "disks": dict(disks=True)}


def pc_probe(elf: Path, config: str) -> Probe:
    # Relative names: the kernel and the modules see the names they were given on the command line.
    return Probe(f"pcprobe-{config}", Path(elf.name), golden=DATA / f"pcprobe.qemu-{config}.txt",
                 **PC_CONFIGS[config])  # type: ignore[arg-type]


@pytest.mark.parametrize("config", sorted(PC_CONFIGS))
@pytest.mark.parametrize("patched", [False, True], ids=["unpatched", "patched"])
def test_pcprobe_ring1_matches_golden(pcprobe: Path, config: str, patched: bool,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(pcprobe.parent)
    p = pc_probe(pcprobe, config)
    same(mask_ticks(run_ring1_probe(p, pcprobe.parent, patched)), mask_ticks(p.golden.read_bytes()), p.name)


@pytest.mark.parametrize("config", sorted(PC_CONFIGS))
def test_pcprobe_qemu_matches_golden(pcprobe: Path, config: str) -> None:
    need_qemu()
    p = pc_probe(pcprobe, config)
    out = run_qemu_probe(p, pcprobe.parent)
    if update_requested():
        p.golden.write_bytes(out)
        pytest.skip(f"golden rewritten: {p.golden}")
    same(mask_ticks(out), mask_ticks(p.golden.read_bytes()), p.name)


def test_pcprobe_modules_are_what_qemu_loads(pcprobe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The module lines of the golden: list, strings, contents (a direct check of the loader)."""
    monkeypatch.chdir(pcprobe.parent)
    modules = make_modules(pcprobe.parent)
    text = (DATA / "pcprobe.qemu-modules.txt").read_text()
    assert "6d6f64612e62696e2061726731206172673200" in text          # "moda.bin arg1 arg2\0"
    assert "4d4f44554c452d412d444154410a" in text                    # moda.bin's bytes
    assert len(modules) == 2


# -- committed probes: apic, ide, kbd ---------------------------------------------------------

@pytest.mark.parametrize("p", PROBES, ids=[p.name for p in PROBES])
@pytest.mark.parametrize("patched", [False, True], ids=["unpatched", "patched"])
def test_probe_ring1_matches_golden(p: Probe, patched: bool, tmp_path: Path) -> None:
    same(run_ring1_probe(p, tmp_path, patched), p.golden.read_bytes(), p.name)


@pytest.mark.parametrize("p", PROBES, ids=[p.name for p in PROBES])
def test_probe_qemu_matches_golden(p: Probe, tmp_path: Path) -> None:
    need_qemu()
    out = run_qemu_probe(p, tmp_path)
    if update_requested():
        p.golden.write_bytes(out)
        pytest.skip(f"golden rewritten: {p.golden}")
    same(out, p.golden.read_bytes(), p.name)
