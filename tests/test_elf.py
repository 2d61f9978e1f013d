"""bt.elf: loading kernel ELFs, and the one-line errors for files ring1 cannot use."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from bt import elf
from bt.cli import main
from bt.errors import ElfError
from tests.scan_helpers import build_elf

ROOT = Path(__file__).resolve().parent.parent

SOURCE = """
.text
.globl _start
.type _start, @function
_start:
    cli
    call helper
    hlt
.size _start, . - _start
.type helper, @function
helper:
    ret
.size helper, . - helper
.data
value: .long 1
"""


def test_load_32(tmp_path):
    image = elf.load(build_elf(tmp_path, SOURCE))
    assert (image.bits, image.machine, image.entry) == (32, "i386", 0x100000)
    assert [s.name for s in image.executable_sections] == [".text"]
    assert any(s.executable and s.data[:1] == b"\xfa" for s in image.segments)
    names = {s.name: s for s in image.symbols}
    assert names["_start"].is_function and names["helper"].address == 0x100007
    assert image.symbolize(0x100001) == "_start+0x1"
    assert image.symbolize(0x100007) == "helper"
    assert image.symbolize(0x10) == "0x10"
    assert len(image.sha256) == 64


def test_load_64(tmp_path):
    image = elf.load(build_elf(tmp_path, SOURCE, bits=64))
    assert (image.bits, image.machine) == (64, "x86-64")


def _arm_elf() -> bytes:
    ident = b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)
    return ident + struct.pack("<HHIIIIIHHHHHH", 2, 40, 1, 0x8000, 52, 0, 0, 52, 32, 0, 40, 0, 0)


def _no_code(tmp_path: Path) -> Path:
    return build_elf(tmp_path, ".data\n.globl _start\n_start: .long 1\n", name="data")


BAD = {
    "missing": lambda tmp: tmp / "nope.elf",
    "not_elf": lambda tmp: _write(tmp / "text.elf", b"hello, world\n"),
    "empty": lambda tmp: _write(tmp / "empty.elf", b""),
    "truncated": lambda tmp: _write(tmp / "cut.elf", build_elf(tmp, SOURCE).read_bytes()[:300]),
    "arm": lambda tmp: _write(tmp / "arm.elf", _arm_elf()),
    "no_code": _no_code,
}
EXPECT = {"missing": "no such file", "not_elf": "not an ELF", "empty": "not an ELF", "truncated": "truncated",
          "arm": "not an x86 ELF (ARM)", "no_code": "no executable code"}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_raises_elf_error(tmp_path, case):
    path = BAD[case](tmp_path)
    with pytest.raises(ElfError) as err:
        elf.load(path)
    assert EXPECT[case] in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case):
    path = BAD[case](tmp_path)
    assert main(["scan", str(path)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and EXPECT[case] in lines[0] and "Traceback" not in err


def test_bad_input_from_the_shell(tmp_path):
    path = _write(tmp_path / "text.elf", b"hello, world\n")
    for argv in (["scan", str(path)], ["bench", "scan", str(path)]):
        proc = subprocess.run([sys.executable, "-m", "bt", *argv], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and "not an ELF" in proc.stderr


def test_without_section_headers_code_comes_from_segments(tmp_path):
    data = bytearray(build_elf(tmp_path, SOURCE).read_bytes())
    struct.pack_into("<I", data, 0x20, 0)             # e_shoff
    struct.pack_into("<HHH", data, 0x2E, 0, 0, 0)     # e_shentsize, e_shnum, e_shstrndx
    image = elf.load(_write(tmp_path / "nosections.elf", bytes(data)))
    (code,) = image.executable_sections
    assert code.name == "PT_LOAD@0x100000" and code.address == 0x100000
    assert bytes(image.section_bytes(code))[:1] == b"\xfa"


def test_corrupt_headers_give_elf_error_or_a_scan_and_print_nothing(tmp_path, capfd):
    """Mutated copies of a good kernel: the loader neither raises anything but ElfError, nor
    prints, nor makes the scanner fail."""
    import random

    from bt import scan

    good = (ROOT / "tests" / "data" / "scan" / "patchcases.elf").read_bytes()
    rng = random.Random(7)
    path = tmp_path / "mutant.elf"
    for _ in range(150):
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            data[rng.choice((rng.randrange(0x100), rng.randrange(len(data))))] = rng.randrange(256)
        path.write_bytes(bytes(data[:rng.randrange(len(data))] if rng.random() < 0.2 else data))
        try:
            scan.scan(elf.load(path))
        except ElfError:
            pass
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_one_name_per_address_in_every_report():
    """Issue 17: `bt run --stats` named sites after any symbol below them (an address in patch
    memory after the kernel's last symbol), `bt compare` after the function holding them."""
    from bt import layout
    from runtime.boot import load_boot_image
    from runtime.report.kernel import load_kernel

    zoo = Path(__file__).resolve().parent.parent / "samples" / "zoo" / "zoo.elf"
    image, info = load_boot_image(zoo), load_kernel(zoo)
    assert image.kernel is not None
    for sym in image.kernel.symbols:
        for address in (sym.address, sym.address + 1, sym.address + 7):
            assert image.symbolize(address) == info.describe(address), hex(address)
    for address in (layout.PATCH_BASE, layout.PATCH_BASE + 0x1234, layout.VMM_BASE + 8):
        assert image.symbolize(address) == info.describe(address) == f"{address:#x}"
