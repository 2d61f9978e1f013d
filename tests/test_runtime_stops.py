"""`bt run` on bad input and misbehaving guests: each a clean stop with the guest
EIP and the reason, the documented exit code, one error line, no traceback."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from runtime_guest import asm

from bt.cli import main

LOAD = 0x100000


def tiny_elf(code: bytes, path: Path) -> Path:
    """A plain (non-multiboot) ELF32 i386 executable: one PT_LOAD R+X segment at 1 MiB."""
    ehdr_size, phdr_size = 52, 32
    offset = ehdr_size + phdr_size
    ehdr = struct.pack("<4sBBBBB7sHHIIIIIHHHHHH", b"\x7fELF", 1, 1, 1, 0, 0, bytes(7),
                       2, 3, 1, LOAD, ehdr_size, 0, 0, ehdr_size, phdr_size, 1, 40, 0, 0)
    phdr = struct.pack("<IIIIIIII", 1, offset, LOAD, LOAD, len(code), len(code), 5, 0x1000)
    path.write_bytes(ehdr + phdr + code)
    return path


def _bt_run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["run", *args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_not_an_elf_is_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a kernel\n")
    code, err = _bt_run(capsys, str(bad))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "not an ELF" in err


@pytest.mark.parametrize("name, src, reason", [
    ("unmapped", "mov eax, 0x20000000\njmp eax\n", "jump into unmapped memory"),
    ("triple", "xor ecx, ecx\ndiv ecx\n", "triple fault"),
    ("opcode", "nop\nud2\n", "unknown opcode"),
])
def test_guest_failures_stop_cleanly_with_eip_and_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        name: str, src: str, reason: str):
    elf = tiny_elf(asm(src, LOAD), tmp_path / f"{name}.elf")
    code, err = _bt_run(capsys, str(elf))
    assert code == 4
    first = err.splitlines()[-1] if "last exits" not in err else err.splitlines()[0]
    assert reason in err and "EIP 0x" in err, err
    assert first.startswith("bt run: error: guest stopped") or "last exits" in err


def test_endless_loop_ends_at_max_insns(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    elf = tiny_elf(asm("spin:\njmp spin\n", LOAD), tmp_path / "loop.elf")
    code, err = _bt_run(capsys, str(elf), "--max-insns", "100000")
    assert code == 4
    assert "instruction budget exhausted" in err and f"EIP {LOAD:#010x}" in err


def test_endless_loop_ends_at_timeout(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    elf = tiny_elf(asm("spin:\njmp spin\n", LOAD), tmp_path / "loop.elf")
    code, err = _bt_run(capsys, str(elf), "--timeout", "0.3")
    assert code == 4
    assert "timeout" in err


def test_guest_exit_status_is_qemus(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    elf = tiny_elf(asm("mov eax, 0x21\nout 0xf4, eax\n", LOAD), tmp_path / "exit.elf")
    code, _err = _bt_run(capsys, str(elf))
    assert code == (0x21 << 1) | 1


def test_stats_are_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    elf = tiny_elf(asm("cli\nsti\nmov eax, 0\nout 0xf4, eax\n", LOAD), tmp_path / "stats.elf")
    out_json = tmp_path / "stats.json"
    code, err = _bt_run(capsys, str(elf), "--no-patch", "--stats", "--json", str(out_json))
    assert code == 1
    assert "exits: 3 (trap 2, io 1" in err
    assert '"cli": 1' in out_json.read_text()


def test_an_internal_error_in_a_hook_is_a_clean_stop(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch):
    from runtime.emulate import EMULATORS

    def broken(op, ctx, next_eip):  # type: ignore[no-untyped-def]
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(EMULATORS, "cli", broken)
    elf = tiny_elf(asm("nop\ncli\nhlt\n", LOAD), tmp_path / "bug.elf")
    code, err = _bt_run(capsys, str(elf), "--no-patch")
    assert code == 8
    assert "ZeroDivisionError: a bug (guest EIP 0x00100001)" in err and "last exits" in err


def test_a_halt_no_interrupt_can_end_stops():
    """IRQ0 taken once and never acknowledged (no EOI), the PIT still running, the guest
    halts again with IF = 1: the VMM slept from timer event to timer event for ever (found
    by tests/fuzz.py). On hardware the machine would hang; the run stops with a diagnosis."""
    from runtime_guest import kernel, run
    from test_runtime_deliver import PIC_PIT_SETUP

    from bt.errors import GuestStop

    _, result = run(kernel(PIC_PIT_SETUP + "sti\nspin:\nhlt\njmp spin\n",
                           handlers={0x20: ("iretd\n", 0, False)}))
    assert isinstance(result, GuestStop) and "no interrupt arrives" in str(result)
