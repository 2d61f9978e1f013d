"""Bounded memory for any input (issue 12): `bt run` checks a kernel's layout before it
allocates anything for it, every command stays under the documented ceiling for inputs up
to 64 MiB (docs/robustness.md), and a host that cannot give Unicorn its memory is exit 2,
never a status a guest could have written. Each command runs in a child process under an
address-space limit (RLIMIT_AS), the way a runaway allocation is caught."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "samples" / "hello" / "hello.elf"
MiB = 1 << 20
#: The ceiling docs/robustness.md states for inputs up to 64 MiB (guest RAM up to 128 MiB).
CEILING = 1024 * MiB


def _bt_limited(limit: int, *argv: object) -> subprocess.CompletedProcess[str]:
    """`bt ARGV` in a child process whose address space is limited to `limit` bytes."""
    code = ("import resource, sys\n"
            f"resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n"
            "from bt.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    return subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)


def _hello_with(tmp_path: Path, name: str, edit: object) -> Path:
    data = bytearray(HELLO.read_bytes())
    edit(data)           # type: ignore[operator]
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return path


BSS_PHDR = 52 + 32        # hello's second program header: its .bss (p_filesz 0)


@pytest.mark.parametrize("memsz", [0x7FFFFFFF, 0xFFFFF000, 0x3F00000])
def test_a_huge_p_memsz_is_refused_before_it_is_allocated(tmp_path: Path, memsz: int) -> None:
    kernel = _hello_with(tmp_path, "bss.elf", lambda d: struct.pack_into("<I", d, BSS_PHDR + 20, memsz))
    proc = _bt_limited(CEILING, "run", kernel)
    assert proc.returncode == 2, proc.stderr
    assert "outside guest RAM" in proc.stderr or "VMM area" in proc.stderr


def test_a_huge_aout_kludge_bss_is_refused_before_it_is_allocated(tmp_path: Path) -> None:
    def kludge(d: bytearray) -> None:
        at = d.index(struct.pack("<I", 0x1BADB002))
        flags = 0x10003
        struct.pack_into("<8I", d, at, 0x1BADB002, flags, -(0x1BADB002 + flags) & 0xFFFFFFFF,
                         0x100000, 0x100000, 0, 0xF0000000, 0x100010)
    proc = _bt_limited(CEILING, "run", _hello_with(tmp_path, "aout.elf", kludge))
    assert proc.returncode == 2 and "outside guest RAM" in proc.stderr, proc.stderr


def test_overlapping_segments_are_refused(tmp_path: Path) -> None:
    """QEMU refuses overlapping segments ("Some ROM regions are overlapping"); so does bt run."""
    def duplicate(d: bytearray) -> None:
        d[BSS_PHDR:BSS_PHDR + 32] = d[52:84]
    kernel = _hello_with(tmp_path, "dup.elf", duplicate)
    proc = _bt_limited(CEILING, "run", kernel)
    assert proc.returncode == 2 and "overlap in guest memory" in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """64 MiB inputs: hello with 63 MiB of data loaded at 1 MiB + 64 KiB... and hello whose
    symbol table claims every byte of 64 MiB (entry size 1: a general ELF library allocated
    7 GB for it)."""
    folder = tmp_path_factory.mktemp("big")
    src = HELLO.read_bytes()
    size = 64 * MiB - 0x3000
    data = bytearray(src.ljust(0x3000, b"\0")) + bytes([0x5A]) * size
    struct.pack_into("<8I", data, BSS_PHDR, 1, 0x3000, 0x200000, 0x200000, size, size, 6, 0x1000)
    (folder / "data64.elf").write_bytes(bytes(data))
    garbage = bytearray(src) + bytes(64 * MiB - len(src))
    shoff, = struct.unpack_from("<I", garbage, 32)
    shnum, = struct.unpack_from("<H", garbage, 48)
    for i in range(shnum):
        at = shoff + 40 * i
        if struct.unpack_from("<I", garbage, at + 4)[0] == 2:          # SHT_SYMTAB
            struct.pack_into("<II", garbage, at + 16, 0, len(garbage))
            struct.pack_into("<I", garbage, at + 36, 1)
    (folder / "symtab64.elf").write_bytes(bytes(garbage))
    return {"data": folder / "data64.elf", "symtab": folder / "symtab64.elf"}


@pytest.mark.parametrize("which", ["data", "symtab"])
@pytest.mark.parametrize("command", ["scan", "patch", "run"])
def test_64_mib_inputs_stay_under_the_ceiling(tmp_path: Path, big: dict[str, Path], which: str,
                                              command: str) -> None:
    kernel = big[which]
    extra = {"scan": [], "patch": ["-o", tmp_path / "p.elf"],
             "run": ["--ram", "128", "--max-insns", "200000"]}[command]
    proc = _bt_limited(CEILING, command, kernel, *extra)
    assert proc.returncode in ((0,) if command != "run" else (1, 4)), proc.stderr
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr.replace("guest stopped", "")


def test_too_little_memory_for_the_run_is_exit_2_not_a_guest_status(tmp_path: Path) -> None:
    """Unicorn calls exit(1) when it cannot map its translation buffer; ring1 checks first."""
    proc = _bt_limited(400 * MiB, "run", HELLO, "--ram", "1024")
    assert proc.returncode == 2, proc.stderr
    assert "not enough memory" in proc.stderr and "Could not allocate" not in proc.stderr


def test_the_translation_buffer_is_sized() -> None:
    """An engine reserves TCG_BUFFER (32 MiB) for translated code, not Unicorn's 1 GiB."""
    code = ("from runtime.machine import Machine\n"
            "def vm(): return int(open('/proc/self/statm').read().split()[0]) * 4096\n"
            "before = vm(); m = Machine(2 << 20); print(vm() - before)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True)
    grown = int(proc.stdout)
    assert grown < 256 * MiB, f"{grown >> 20} MiB of address space for one engine"


def test_every_engine_is_made_with_a_sized_buffer() -> None:
    """Unicorn's default buffer is 1 GiB per engine: an engine made anywhere but
    runtime/engine.py (two scratch engines of a new module did) breaks the ceiling above."""
    import re

    made = re.compile(r"\bUc\(\s*UC_ARCH")
    offenders = [str(p.relative_to(ROOT)) for folder in ("bt", "patchmgr", "runtime")
                 for p in (ROOT / folder).rglob("*.py")
                 if p.name != "engine.py" and made.search(p.read_text())]
    assert not offenders, f"make engines with runtime.engine.new_engine: {offenders}"
