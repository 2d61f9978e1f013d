"""`bt run` on bad input and misbehaving guests: each a clean stop with the guest
EIP and the reason, the documented exit code, one error line, no traceback."""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
import time
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


@pytest.mark.parametrize("name, src, eip, reason, last", [
    ("unmapped", "mov eax, 0x20000000\njmp eax\n", 0x20000000, "jump into unmapped memory", []),
    ("triple", "xor ecx, ecx\ndiv ecx\n", LOAD + 2, "triple fault", ["interrupt vector 0 at 0x00100002"]),
    ("opcode", "nop\nud2\n", LOAD + 1, "unknown opcode", []),
])
def test_guest_failures_stop_cleanly_with_eip_and_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        name: str, src: str, eip: int, reason: str,
                                                        last: list[str]):
    elf = tiny_elf(asm(src, LOAD), tmp_path / f"{name}.elf")
    code, err = _bt_run(capsys, str(elf))
    assert code == 4
    lines = err.splitlines()
    # The error line first, with the guest EIP and the reason; then what the VMM did last.
    assert lines[0].startswith(f"bt run: error: guest stopped at EIP {eip:#010x}: {reason}"), err
    if last:
        assert lines[1] == "last exits (oldest first):"
        assert [" ".join(line.split()[:-1]) for line in lines[2:]] == last
    else:
        assert len(lines) == 1, err


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


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_and_sigterm_end_the_run_cleanly(tmp_path: Path, sig: signal.Signals):
    """Issue 17: a signal stops the run at the end of a slice with the usual stop report
    and statistics: exit 4, "interrupted (SIGINT)", the JSON written, no traceback."""
    elf = tiny_elf(asm("spin:\ninc eax\njmp spin\n", LOAD), tmp_path / "spin.elf")
    out_json = tmp_path / "spin.json"
    proc = subprocess.Popen([sys.executable, "-m", "bt", "run", str(elf), "--stats", "--json", str(out_json)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _running(proc) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 4, err
    assert f"interrupted ({sig.name})" in err and "EIP 0x0010000" in err
    assert "Traceback" not in err and "guest instructions:" in err      # --stats printed
    assert json.loads(out_json.read_text())["guest_insns"] > 0


def _running(proc: subprocess.Popen[str]) -> bool:
    """The child has got as far as running the guest (its Python is up, the kernel loaded)."""
    try:
        stat = Path(f"/proc/{proc.pid}/stat").read_text().split()
    except OSError:
        return False
    return int(stat[13]) + int(stat[14]) > 150       # utime + stime in clock ticks: 1.5 s of CPU


def test_the_exit_status_is_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    elf = tiny_elf(asm("mov eax, 0\nout 0xf4, eax\n", LOAD), tmp_path / "ok.elf")
    code, err = _bt_run(capsys, str(elf))
    assert code == 1 and "guest status 0 (success), exit code 1" in err
    elf = tiny_elf(asm("mov eax, 2\nout 0xf4, eax\n", LOAD), tmp_path / "bad.elf")
    code, err = _bt_run(capsys, str(elf))
    assert code == 5 and "guest status 2 (failure), exit code 5" in err


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


@pytest.mark.parametrize("entry", [0x20000000, 0xE3AF4FF2, 0x80000000])
def test_an_entry_point_where_nothing_is_stops_at_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     entry: int):
    """A bad e_entry: the first IRETD lands there and the fetch fails; a stop at the entry
    (exit 4), not "BOOT could not enter ring 1" (exit 8; found by tests/fuzz.py)."""
    elf = tiny_elf(asm("hlt\n", LOAD), tmp_path / "entry.elf")
    data = bytearray(elf.read_bytes())
    struct.pack_into("<I", data, 24, entry)
    elf.write_bytes(bytes(data))
    code, err = _bt_run(capsys, str(elf))
    assert code == 4 and f"EIP {entry:#010x}" in err and "unmapped" in err, err
