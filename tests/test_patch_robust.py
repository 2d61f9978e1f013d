"""`bt patch` on every kernel `bt run` runs, and `bt run` on whatever `bt patch` writes
(issue 12): one test per class of failure the issue found."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest
from requires import require_tool, unavailable
from runtime_guest import asm

from bt.cli import main

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "samples" / "hello" / "hello.elf"
LOAD = 0x100000
PT_LOAD, PT_GNU_STACK = 1, 0x6474E551


def elf32(path: Path, segments: list[tuple[int, int, bytes, int]], entry: int, stack: bool = False) -> Path:
    """A plain ELF32 i386 executable, no sections: (vaddr, paddr, bytes, p_flags) segments,
    each at its own page of the file, and a PT_GNU_STACK entry if `stack`."""
    phnum = len(segments) + stack
    out = bytearray(struct.pack("<4sBBBBB7sHHIIIIIHHHHHH", b"\x7fELF", 1, 1, 1, 0, 0, bytes(7), 2, 3, 1,
                                entry, 52, 0, 0, 52, 32, phnum, 40, 0, 0))
    body = bytearray()
    for i, (vaddr, paddr, data, flags) in enumerate(segments):
        off = 0x1000 * (i + 1)
        out += struct.pack("<8I", PT_LOAD, off, vaddr, paddr, len(data), len(data), flags, 0x1000)
        body += bytes(off - 0x1000 - len(body)) + data
    if stack:
        out += struct.pack("<8I", PT_GNU_STACK, 0, 0, 0, 0, 0, 6, 16)
    path.write_bytes(bytes(out.ljust(0x1000, b"\0") + body))
    return path


def _bt(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "internal error" not in err, err
    return code, out, err


def _same_run(capsys: pytest.CaptureFixture[str], kernel: Path, patched: Path, *args: str) -> str:
    """Both run with the same result and serial output; the patched one's --stats text."""
    code, out, _ = _bt(capsys, "run", kernel, *args)
    code2, out2, err2 = _bt(capsys, "run", patched, "--stats", *args)
    assert (code2, out2) == (code, out)
    return err2


# ---- sites near the end of their segment -------------------------------------------------------------

def test_a_site_in_the_last_bytes_of_its_segment(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """bt patch read 16 bytes at every site: one within 16 bytes of its segment's end was
    "not in a loadable segment's file bytes" (exit 8). No PT_GNU_STACK here either."""
    code = asm("mov dx, 0x3f8\nmov al, 0x41\nout dx, al\nmov al, 0x0a\nout dx, al\nmov al, 3\nout 0xf4, al\n"
               "cli\nhlt\n", LOAD)
    kernel = elf32(tmp_path / "end.elf", [(LOAD, LOAD, code, 5)], LOAD)
    out = tmp_path / "end.patched.elf"
    rc, text, _ = _bt(capsys, "patch", kernel, "-o", out)
    assert rc == 0 and "0 refused" in text
    stats = _same_run(capsys, kernel, out)
    assert "patches: " in stats and "(jmp 0, int3 0)" not in stats


@pytest.fixture(scope="module")
def gcc_static(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain `gcc -m32 -static` ELF (no 32-bit libc here: -nostdlib, our own _start)."""
    gcc = require_tool("gcc")
    folder = tmp_path_factory.mktemp("gcc")
    (folder / "k.c").write_text(
        "static void outb(unsigned short p, unsigned char v) { __asm__ volatile(\"outb %0, %1\" :: \"a\"(v), "
        "\"Nd\"(p)); }\n"
        "void _start(void) {\n"
        "    for (const char *s = \"gcc -m32 -static\\n\"; *s; s++) outb(0x3f8, *s);\n"
        "    outb(0xf4, 2);\n"
        "    __asm__ volatile(\"cli; hlt\");\n"
        "}\n")
    proc = subprocess.run([gcc, "-m32", "-static", "-nostdlib", "-fno-pic", "-fno-stack-protector", "-O2",
                           "-o", str(folder / "k.elf"), str(folder / "k.c")], capture_output=True, text=True)
    if proc.returncode != 0:
        unavailable(f"gcc -m32 cannot link here: {proc.stderr.strip()[:200]}")
    return folder / "k.elf"


def test_a_gcc_m32_static_elf(capsys: pytest.CaptureFixture[str], tmp_path: Path, gcc_static: Path) -> None:
    out = tmp_path / "k.patched.elf"
    rc, text, _ = _bt(capsys, "patch", gcc_static, "-o", out)
    assert rc == 0 and "0 refused" in text
    # Linked at 0x8048000 (128 MiB): it needs more than the default 64 MiB of RAM, patched or not.
    assert _bt(capsys, "run", out)[0] == 2
    _same_run(capsys, gcc_static, out, "--ram", "256")
    assert _bt(capsys, "run", gcc_static, "--ram", "256")[1] == "gcc -m32 -static\n"


# ---- what bt patch writes, bt run runs ------------------------------------------------------------------

def test_code_linked_high_and_loaded_low(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """p_vaddr != p_paddr: bt run reads kernel code where the program headers load it, and so
    does bt patch; the patches are found where the run adopts them."""
    # The loader enters at the entry's physical address (paging is off), as QEMU does.
    code = asm("cli\nmov al, 5\nout 0xf4, al\nhlt\n", 0xC0100000)
    kernel = elf32(tmp_path / "split.elf", [(0xC0100000, LOAD, code, 5)], 0xC0100000, stack=True)
    out = tmp_path / "split.patched.elf"
    rc, text, _ = _bt(capsys, "patch", kernel, "-o", out)
    assert rc == 0 and "0 refused" in text and "left to run-time" not in text
    _same_run(capsys, kernel, out)


@pytest.mark.parametrize("e_type", [0, 1, 4, 0xFE00, 0xFFFF])
def test_an_unknown_e_type(capsys: pytest.CaptureFixture[str], tmp_path: Path, e_type: int) -> None:
    """LIEF's writer died of SIGABRT on these; QEMU ignores e_type, so do bt run and bt patch."""
    data = bytearray(HELLO.read_bytes())
    struct.pack_into("<H", data, 16, e_type)
    kernel = tmp_path / "k.elf"
    kernel.write_bytes(bytes(data))
    out = tmp_path / "p.elf"
    assert _bt(capsys, "patch", kernel, "-o", out)[0] == 0
    _same_run(capsys, kernel, out)


def test_a_garbage_section_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Section headers that say nothing sane (LIEF's writer reserved over 6 GiB for one):
    the loader's program headers are all bt run and bt patch need."""
    data = bytearray(HELLO.read_bytes())
    shoff, = struct.unpack_from("<I", data, 32)
    shnum, = struct.unpack_from("<H", data, 48)
    for i in range(1, shnum):
        struct.pack_into("<IIIIII", data, shoff + 40 * i, 0xFFFF, 2, 0, 0, 0, 0x7FFFFFF0)
    kernel = tmp_path / "k.elf"
    kernel.write_bytes(bytes(data))
    out = tmp_path / "p.elf"
    assert _bt(capsys, "patch", kernel, "-o", out)[0] == 0
    _same_run(capsys, kernel, out)


@pytest.mark.parametrize("forge, why", [
    ("shift", "disagrees"), ("kind", "has kind"), ("cls", "unknown class"),
    ("base", "outside the patch segment"), ("site", "not a 32-bit address"),
])
def test_a_forged_patch_record_is_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path, forge: str,
                                            why: str) -> None:
    """The record is read from the file: whatever it claims, bt run says exit 2, not 8."""
    patched = tmp_path / "p.elf"
    assert _bt(capsys, "patch", HELLO, "-o", patched)[0] == 0
    raw = patched.read_bytes()
    at = raw.index(b'{"version":')
    rec, size = json.JSONDecoder().raw_decode(raw[at:].decode("latin-1"))
    first = next(p for p in rec["patches"] if p["kind"] == "jmp")
    if forge == "shift":            # a well-formed window one byte off: no JMP there
        first["site"] += 1
        first["start"] += 1
        first["end"] += 1
        for chunk in first["block"]["chunks"]:
            chunk[1] += 1
    elif forge == "kind":
        first["kind"] = "jmq"
    elif forge == "cls":
        first["op"]["cls"] = first["op"]["cls"][::-1]
    elif forge == "base":
        rec["patch_base"] -= 0x10000
        rec["patch_top"] -= 0x10000
    else:
        first["site"] = -1
    new = json.dumps(rec, separators=(",", ":")).encode()
    assert len(new) <= size, "the forgery must fit the record's section"
    forged = tmp_path / "forged.elf"
    # The record section keeps its size: the forged JSON padded with spaces (JSON allows them).
    forged.write_bytes(raw[:at] + new.ljust(size, b" ") + raw[at + size:])
    rc, _, err = _bt(capsys, "run", forged)
    assert rc == 2 and why in err, err


def test_a_disagreement_is_ring1s_bug_and_writes_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """bt patch checks its output the way bt run will read it, before writing: if they ever
    disagree, that is exit 8, and no file."""
    from patchmgr import static
    from runtime import staticpatch

    def lost_record(image, rules, places, to_phys):            # type: ignore[no-untyped-def]
        good = static.patch_image(image, rules, places, to_phys)
        return static.StaticOutput(image.raw, good.result)

    monkeypatch.setattr(staticpatch, "patch_image", lost_record)
    out = tmp_path / "p.elf"
    assert main(["patch", str(HELLO), "-o", str(out)]) == 8
    assert "without its patch record" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_kernel_bt_run_refuses_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """patchcases.elf's first PT_LOAD (its ELF headers) sits at 0xff000, in the PC's BIOS
    area: bt run refuses it, and bt patch says the same rather than write what cannot run."""
    kernel = ROOT / "tests" / "data" / "scan" / "patchcases.elf"
    rc, _, err = _bt(capsys, "run", kernel)
    rc2, _, err2 = _bt(capsys, "patch", kernel, "-o", tmp_path / "p.elf")
    assert rc == rc2 == 2
    assert err.split(": ", 2)[2] == err2.split(": ", 2)[2]
