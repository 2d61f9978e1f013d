"""The platform in the run loop and on the command line: MMIO exits, the APIC timer waking a
HLT, `bt run --module/--disk/--keys/--screen` (checked before the run, the screen written
however the run ends, disk images never modified), `bt compare` passing them to every run."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
import runtime_guest as guest
from platform_qemu import PLATFORM, make_disks

from bt.cli import main
from runtime.config import RunConfig
from runtime.vm import Vm

LAPIC = 0xFEE00000
SPURIOUS_ON = f"mov dword ptr [{LAPIC + 0xF0:#x}], 0x1ff\n"
MASK_PIC = "mov al, 0xff\nout 0x21, al\nout 0xa1, al\n"


def run_raw(image: guest.RawImage, max_insns: int = 2_000_000) -> Vm:
    vm = Vm(RunConfig(kernel=Path("<test>"), serial=io.BytesIO(), max_insns=max_insns), image=image)
    result = vm.run()
    assert result.exit_status == 1
    return vm


def test_mmio_eoi_store_delivers_the_next_interrupt_right_after_it() -> None:
    """A self-IPI of the same priority class waits behind the one in service; the EOI store
    (a plain MOV to the LAPIC) ends the slice, so it comes in after that MOV: the frame's EIP
    is the next instruction, not a slice later (runtime/mmio.py)."""
    handler41 = (f"sti\nmov dword ptr [{LAPIC + 0x300:#x}], 0x40040\n"      # self IPI, vector 0x40
                 f"mov dword ptr [{LAPIC + 0xB0:#x}], 0\nafter_eoi: nop\nnop\niretd\n")
    handler40 = (f"mov eax, [esp]\nmov [{guest.RESULTS:#x}], eax\n"
                 f"mov dword ptr [{LAPIC + 0xB0:#x}], 0\niretd\n")
    src = (MASK_PIC + SPURIOUS_ON + f"mov dword ptr [{LAPIC + 0x300:#x}], 0x40041\n"
           "sti\nnop\nnop\ncli\n" + guest.exit_with(0))
    image = guest.kernel(src, handlers={0x41: (handler41, 0, False), 0x40: (handler40, 0, False)})
    vm = run_raw(image)
    (eip,) = guest.words(vm, guest.RESULTS, 1)
    handler = guest.HANDLERS + 0x41 * 0x100
    code = guest.asm(handler41, handler)
    assert eip == handler + code.index(b"\x90")               # the first NOP: right after the EOI MOV
    assert vm.stats.by_class["mmio"] >= 4


def test_hlt_wakes_on_the_apic_timer() -> None:
    handler = (f"inc dword ptr [{guest.RESULTS:#x}]\nmov dword ptr [{LAPIC + 0xB0:#x}], 0\niretd\n")
    src = (MASK_PIC + SPURIOUS_ON + f"mov dword ptr [{LAPIC + 0x3E0:#x}], 0xb\n"
           f"mov dword ptr [{LAPIC + 0x320:#x}], 0x20030\nmov dword ptr [{LAPIC + 0x380:#x}], 1000000\n"
           f"sti\nwait: hlt\ncmp dword ptr [{guest.RESULTS:#x}], 3\njb wait\ncli\n" + guest.exit_with(0))
    vm = run_raw(guest.kernel(src, handlers={0x30: (handler, 0, False)}))
    assert guest.words(vm, guest.RESULTS, 1) == (3,)
    assert vm.stats.idle_ns > 2_000_000                       # three periods of 1 ms, slept through


# -- bt run ---------------------------------------------------------------------------------------

def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize(("args", "message"), [
    (["--disk", "no-such.img"], "no-such.img: no such file (--disk)"),
    (["--disk", "{a}", "--disk", "{a}", "--disk", "{a}"], "the primary IDE channel has 2 drives"),
    (["--disk-writable"], "--disk-writable without --disk"),
    (["--module", "no-such.bin,x=1"], "no-such.bin: no such file (--module)"),
    (["--keys", "{keys}"], "characters no key of a US keyboard types"),
    (["--key-delay", "-1", "--keys", "{ok}"], "--key-delay must not be negative"),
    (["--ram", "1"], "--ram 1: between 2 and 3072 MiB"),
])
def test_bad_platform_flags_are_one_line_exit_2(args: list[str], message: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.img").write_bytes(bytes(1024))
    (tmp_path / "keys.txt").write_text("ok\u00e9\n")
    (tmp_path / "ok.txt").write_text("ok\n")
    values = {"a": str(tmp_path / "a.img"), "keys": str(tmp_path / "keys.txt"),
              "ok": str(tmp_path / "ok.txt")}
    args = [a.format(**values) for a in args]
    assert main(["run", str(PLATFORM / "apic.elf"), *args]) == 2
    assert message in one_line_error(capsys)


def test_screen_is_written_when_the_budget_ends_the_run(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    screen = tmp_path / "screen.txt"
    assert main(["run", str(PLATFORM / "apic.elf"), "--max-insns", "1000", "--screen", str(screen),
                 "--serial", str(tmp_path / "serial")]) == 4
    lines = screen.read_text(encoding="utf-8").split("\n")
    assert len(lines) == 26 and lines[0].startswith("SeaBIOS") and lines[7] == "Booting from ROM..."
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]     # no temporary file left


def test_disk_images_are_never_modified(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The ide probe writes LBA 5 and reads it back: the guest sees its write, the file does not."""
    master, slave = make_disks(tmp_path)
    before = hashlib.sha256(master.read_bytes()).hexdigest()
    serial = tmp_path / "serial"
    assert main(["run", str(PLATFORM / "ide.elf"), "--disk", str(master), "--disk", str(slave),
                 "--serial", str(serial), "--stats"]) == 1
    assert "3412351236123712" in serial.read_text()
    assert hashlib.sha256(master.read_bytes()).hexdigest() == before
    assert "ide.0.sectors_written 1" in capsys.readouterr().err


def test_disk_writable_writes_through(tmp_path: Path) -> None:
    master, slave = make_disks(tmp_path)
    assert main(["run", str(PLATFORM / "ide.elf"), "--disk", str(master), "--disk", str(slave),
                 "--disk-writable", "--serial", str(tmp_path / "serial")]) == 1
    assert master.read_bytes()[5 * 512:5 * 512 + 4] == bytes.fromhex("34123512")


def test_compare_passes_the_platform_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("aZ1 -\nb\n")
    assert main(["compare", str(PLATFORM / "kbd.elf"), "--keys", str(keys), "--jobs", "1",
                 "--expect", str(PLATFORM / "kbd.qemu.txt")]) == 0
    out = capsys.readouterr().out
    assert "--keys" in out or "kbd" in out


# -- the terminal as the keyboard ---------------------------------------------------------------

def test_terminal_mode_is_restored() -> None:
    import os
    import pty
    import termios

    from runtime.terminal import Terminal

    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "r", closefd=False) as stream:
            before = termios.tcgetattr(slave)
            term = Terminal(stream)
            assert Terminal.available(stream)
            term.open()
            assert termios.tcgetattr(slave)[3] & termios.ICANON == 0     # cbreak: no line editing
            os.write(master, b"x")
            assert term.read(1.0) == "x"
            term.close()
            assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_terminal_types_into_the_guest() -> None:
    """`bt run` with stdin a terminal (a pty here): what is typed reaches the guest's keyboard."""
    import os
    import pty
    import select
    import sys
    import time

    pid, fd = pty.fork()
    if pid == 0:                                              # the child: bt run on the pty
        os.execvp(sys.executable, [sys.executable, "-m", "bt", "run", str(PLATFORM / "kbd.elf"),
                                   "--timeout", "60"])
    out = b""
    deadline = time.monotonic() + 60

    def until(marker: bytes) -> None:
        nonlocal out
        while marker not in out and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    out += os.read(fd, 4096)
                except OSError:
                    return
    until(b"keys?")
    os.write(fd, b"aZ1 -\n")
    until(b"keys2?")
    os.write(fd, b"b\n")
    until(b"f0 5a\r\n")
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 1
    assert b"codes: 1e 9e 2a 2c ac aa 02 82 39 b9 0c 8c 1c 9c" in out
    assert b"codes: 32 f0 32 5a f0 5a" in out


def test_ctrl_c_while_the_guest_waits_for_a_key(tmp_path: Path) -> None:
    """Ctrl-C on the terminal (SIGINT: the terminal keeps ISIG) stops a guest sleeping in HLT for
    a key: a clean stop, exit 4, and the screen written."""
    import os
    import pty
    import select
    import sys
    import time

    screen = tmp_path / "screen.txt"
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(sys.executable, [sys.executable, "-m", "bt", "run", str(PLATFORM / "kbd.elf"),
                                   "--timeout", "60", "--screen", str(screen)])
    out = b""
    deadline = time.monotonic() + 60
    while b"keys?" not in out and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            out += os.read(fd, 4096)
    time.sleep(0.5)
    os.write(fd, b"\x03")
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                out += os.read(fd, 4096)
            except OSError:
                break
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 4
    assert b"interrupted (SIGINT)" in out
    assert screen.read_text().startswith("SeaBIOS")
