"""The sample kernels and how QEMU, the reference, runs them.

One list (`SAMPLES`) and one command line (`qemu_command`), shared by
`test_samples_qemu.py` (QEMU against the golden files) and by the runtime's tests,
which run ring1 on the same kernels and compare with the same golden files.

A golden file (`samples/<name>/expected.serial`) holds the exact bytes QEMU's COM1
produced. Regenerate them after changing a sample:

    python -m tests.qemu --update            # every sample
    python -m tests.qemu --update zoo timer  # some
    RING1_UPDATE_GOLDEN=1 python3 -m pytest -q tests/test_samples_qemu.py

QEMU hands a multiboot kernel the command line "<kernel path> <append>"; the
samples skip that first word (see samples/common/cmdline.c), so the path does not
reach the output.

A sample OS (`MINIOS`, not in `SAMPLES`: it needs a module, a disk and typed keys,
which the serial-only tests do not give) is booted with QMP (`run_qemu_os`): keys
from its keys file are typed at its prompts, and the 80x25 text screen is read
from VGA memory once the OS says on serial that its screen is final. Its goldens
are `expected.serial` and `expected.screen` (`decode_screen`'s format).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime import qemu
from runtime.qemu import qemu_binary, qemu_command

ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = ROOT / "samples"

#: Wall-clock limit for one QEMU run; every sample finishes in well under a second.
TIMEOUT_S = 30.0
#: Set to 1 to make the tests rewrite the golden files instead of comparing.
UPDATE_ENV = "RING1_UPDATE_GOLDEN"


@dataclass(frozen=True)
class Sample:
    """One sample kernel: where it is, how it is booted, how it must end."""

    name: str
    cmdline: str
    #: The value the guest writes to the debug-exit port (0: all its checks passed).
    status: int = 0
    #: A second way to boot the same kernel, with its own golden file
    #: (`expected-<variant>.serial`); "" for the standard boot.
    variant: str = ""

    @property
    def key(self) -> str:
        return f"{self.name}:{self.variant}" if self.variant else self.name

    @property
    def elf(self) -> Path:
        return SAMPLES_DIR / self.name / f"{self.name}.elf"

    @property
    def golden(self) -> Path:
        suffix = f"-{self.variant}" if self.variant else ""
        return SAMPLES_DIR / self.name / f"expected{suffix}.serial"

    @property
    def exit_code(self) -> int:
        """The process exit code QEMU (and `bt run`) report for this guest."""
        return (self.status << 1) | 1

    def expected_serial(self) -> bytes:
        return self.golden.read_bytes()


SAMPLES: tuple[Sample, ...] = (
    Sample("hello", "mode=test greeting=hi"),
    Sample("irqsave", "iters=20000"),
    Sample("irqsave-pv", "iters=20000"),
    Sample("timer", ""),
    Sample("zoo", ""),
    Sample("usermode", ""),
    Sample("higherhalf", "iters=2000"),
)

SAMPLES_BY_NAME = {s.name: s for s in SAMPLES}

#: irqsave printing what its saved flags said about IF. Not in SAMPLES: unpatched
#: ring 1 shows the PUSHF leak here by design (PUSHF doesn't trap at CPL 1), so this
#: boot must equal QEMU only when the PUSHF/POPF sites run through patches.
IRQSAVE_CHECK_IF = Sample("irqsave", "iters=200 check_if=1", variant="check_if")

#: Every boot of the sample kernels with a golden file.
ALL_BOOTS: tuple[Sample, ...] = (*SAMPLES, IRQSAVE_CHECK_IF)

#: The attack and fidelity guests (samples/attacks, issue 11): one boot per group, each
#: with its golden file `expected-<group>.serial`. tests/test_attacks.py runs them under
#: ring1, unpatched and patched, against these goldens and the documented leaks.
ATTACK_GROUPS = ("selectors", "gates", "exceptions", "instructions", "user_patch", "user_patch_paged",
                 "pde", "smc", "iopl", "unscanned")
ATTACKS: tuple[Sample, ...] = tuple(Sample("attacks", f"test={g}", variant=g) for g in ATTACK_GROUPS)

#: Every boot with a golden file, for regenerating them.
GOLDEN_BOOTS: tuple[Sample, ...] = (*ALL_BOOTS, *ATTACKS)
ALL_BY_KEY = {s.key: s for s in GOLDEN_BOOTS}


def run_qemu(elf: Path, cmdline: str, timeout: float = TIMEOUT_S) -> tuple[bytes, int]:
    """Boot `elf` under QEMU; return (bytes written to COM1, QEMU's exit code).

    Raises subprocess.TimeoutExpired (after killing QEMU) when the guest does not end.
    """
    run = qemu.run_qemu(elf, cmdline, timeout)
    return run.serial, run.returncode


#: The CGA/VGA text buffer: 80x25 cells of (character, attribute) bytes.
VGA_TEXT = 0xB8000
SCREEN_COLS, SCREEN_ROWS = 80, 25
#: Wall-clock limit for one interactive OS run (boot, every typed line, power off).
OS_TIMEOUT_S = 120.0
#: How often the harness looks at the serial output while it waits.
POLL_S = 0.005


#: Code page 437 as the screen shows it: 0x01-0x1F and 0x7F are pictures (smileys,
#: arrows, the house), not control characters as in Python's "cp437" codec; NUL is a space.
CP437_GLYPHS = (" ☺☻♥♦♣♠•◘○◙♂♀♪♫☼►◄↕‼¶§▬↨↑↓→←∟↔▲▼" + bytes(range(0x20, 0x7F)).decode("ascii") + "⌂"
                + bytes(range(0x80, 0x100)).decode("cp437"))


def decode_screen(raw: bytes) -> str:
    """The screen format shared with `bt run --screen`: 25 lines, each the 80
    characters of a row decoded as code page 437 glyphs (`CP437_GLYPHS`, NUL shown as
    a space) with trailing spaces stripped, each line ending with "\n". `raw` is the
    4000 bytes at 0xB8000: the capture assumes the CRTC start address is 0 (minios
    never moves it)."""
    if len(raw) != SCREEN_COLS * SCREEN_ROWS * 2:
        raise ValueError(f"a text screen is {SCREEN_COLS * SCREEN_ROWS * 2} bytes, not {len(raw)}")
    chars = "".join(CP437_GLYPHS[b] for b in raw[0::2])
    return "".join(chars[r * SCREEN_COLS:(r + 1) * SCREEN_COLS].rstrip(" ") + "\n"
                   for r in range(SCREEN_ROWS))


@dataclass(frozen=True)
class OsSample:
    """A sample OS: booted with multiboot modules and a disk, driven by typed keys.

    The keys file is text, one character per key, "\n" = Enter (the format `bt run
    --keys` takes). Each of its lines but the last is typed once the OS has shown
    `prompt` one more time; the last line is typed after the OS printed
    `final_marker` on serial and the screen was read, and it ends the run. The OS must
    print the marker after its last write to the screen (on serial only, say): the
    harness reads the screen as soon as the marker is complete.
    """

    name: str
    #: (file in the sample's folder, its arguments): QEMU's -initrd "file args,...".
    modules: tuple[tuple[str, str], ...]
    disk: str
    prompt: bytes
    final_marker: bytes
    keys_file: str = "keys.txt"
    cmdline: str = ""
    status: int = 0

    @property
    def key(self) -> str:
        return self.name

    @property
    def folder(self) -> Path:
        return SAMPLES_DIR / self.name

    @property
    def elf(self) -> Path:
        return self.folder / f"{self.name}.elf"

    @property
    def module_paths(self) -> tuple[tuple[Path, str], ...]:
        return tuple((self.folder / file, args) for file, args in self.modules)

    @property
    def disk_path(self) -> Path:
        return self.folder / self.disk

    @property
    def keys_path(self) -> Path:
        return self.folder / self.keys_file

    @property
    def golden(self) -> Path:
        return self.folder / "expected.serial"

    @property
    def golden_screen(self) -> Path:
        return self.folder / "expected.screen"

    @property
    def exit_code(self) -> int:
        return (self.status << 1) | 1

    def keys(self) -> str:
        return self.keys_path.read_text(encoding="ascii")

    def expected_serial(self) -> bytes:
        return self.golden.read_bytes()

    def expected_screen(self) -> str:
        return self.golden_screen.read_text(encoding="utf-8")


MINIOS = OsSample("minios", modules=(("sh.bin", "motd=motd"),), disk="disk.img",
                  prompt=b"sh$ ", final_marker=b"minios: screen final\n")
OS_SAMPLES: tuple[OsSample, ...] = (MINIOS,)
OS_BY_NAME = {s.name: s for s in OS_SAMPLES}


class QemuError(RuntimeError):
    """QEMU or the guest did not do what the harness waited for."""


class QmpClosed(QemuError):
    """QEMU closed the QMP connection (it exits, for instance)."""


#: Characters of a keys file -> (QEMU qcode, with Shift). US layout, as the guests assume.
_UNSHIFTED = {**{c: c for c in "abcdefghijklmnopqrstuvwxyz0123456789"},
              " ": "spc", "\n": "ret", "\t": "tab", "-": "minus", "=": "equal", "[": "bracket_left",
              "]": "bracket_right", ";": "semicolon", "'": "apostrophe", "`": "grave_accent",
              "\\": "backslash", ",": "comma", ".": "dot", "/": "slash"}
KEY_QCODES: dict[str, tuple[str, bool]] = {
    **{c: (q, False) for c, q in _UNSHIFTED.items()},
    **{c.upper(): (c, True) for c in "abcdefghijklmnopqrstuvwxyz"},
    **{c: (_UNSHIFTED[base], True) for c, base in zip('!@#$%^&*()_+{}:"~|<>?', "1234567890-=[];'`\\,./",
                                                         strict=True)},
}


class Qmp:
    """A QMP client: one JSON object per line over QEMU's unix socket (QEMU's
    docs/interop/qmp-spec.txt): the greeting, qmp_capabilities, then commands;
    asynchronous events between replies are skipped."""

    def __init__(self, path: Path, deadline: float) -> None:
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise QemuError(f"no QMP socket at {path}") from None
                time.sleep(POLL_S)
        sock.settimeout(max(1.0, deadline - time.monotonic()))
        self._sock = sock
        self._file = sock.makefile("rwb")
        self._read()                                    # {"QMP": {"version": ...}}
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        try:
            line = self._file.readline()
        except ConnectionError:
            line = b""
        if not line:
            raise QmpClosed("QEMU closed the QMP connection")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def execute(self, command: str, **arguments: Any) -> Any:
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        try:
            self._file.write(json.dumps(message).encode() + b"\n")
            self._file.flush()
        except ConnectionError:
            raise QmpClosed("QEMU closed the QMP connection") from None
        while True:
            reply = self._read()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise QemuError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")

    def type_key(self, char: str) -> None:
        """Press and release the key for `char` (with Shift when it needs it)."""
        if char not in KEY_QCODES:
            raise QemuError(f"no key for {char!r}")
        qcode, shift = KEY_QCODES[char]

        def event(code: str, down: bool) -> dict[str, Any]:
            return {"type": "key", "data": {"down": down, "key": {"type": "qcode", "data": code}}}

        events = [event(qcode, True), event(qcode, False)]
        if shift:
            events = [event("shift", True), *events, event("shift", False)]
        self.execute("input-send-event", events=events)

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass                        # a write buffer QEMU can no longer take
        self._sock.close()


@dataclass(frozen=True)
class OsRun:
    serial: bytes
    screen: str
    exit_code: int


def run_qemu_os(sample: OsSample, timeout: float = OS_TIMEOUT_S) -> OsRun:
    """Boot a sample OS under QEMU, type its keys and read its final screen.

    Each key is typed after the previous one's echo appeared on serial (the guest
    took it), so the harness never outruns the PS/2 controller's small queue.
    Raises QemuError (after killing QEMU) when the guest does not get where the
    keys file expects it to go within `timeout`.
    """
    lines = sample.keys().splitlines(keepends=True)
    if len(lines) < 2:
        raise QemuError(f"{sample.keys_path}: needs the lines typed at prompts and a last line")
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="ring1-qemu-") as tmp_name:
        tmp = Path(tmp_name)
        serial, screen_raw = tmp / "serial.out", tmp / "screen.bin"
        modules = []
        for i, (path, args) in enumerate(sample.module_paths):
            link = tmp / f"module{i}-{path.name.replace(' ', '_')}"    # no space in the path QEMU sees
            link.symlink_to(path.resolve())
            modules.append((link, args))
        cmd = qemu_command(sample.elf, sample.cmdline, serial, modules=modules, disk=sample.disk_path,
                           qmp=tmp / "qmp.sock")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

        def output() -> bytes:
            return serial.read_bytes() if serial.exists() else b""

        def wait_for(what: str, done: Callable[[bytes], bool]) -> None:
            while not done(output()):
                if proc.poll() is not None:
                    raise QemuError(f"QEMU exited {proc.returncode} waiting for {what}; "
                                    f"serial ends {output()[-300:]!r}")
                if time.monotonic() > deadline:
                    raise QemuError(f"timed out waiting for {what}; serial ends {output()[-300:]!r}")
                time.sleep(POLL_S)

        qmp = None
        try:
            qmp = Qmp(tmp / "qmp.sock", deadline)
            for n, line in enumerate(lines[:-1], start=1):
                wait_for(f"prompt {n}", lambda out, n=n: out.count(sample.prompt) >= n)
                for i, char in enumerate(line):
                    qmp.type_key(char)
                    if char != "\n":
                        echo = sample.prompt + line[:i + 1].encode()
                        wait_for(f"the echo of {line[:i + 1]!r}", lambda out, echo=echo: out.endswith(echo))
            wait_for("the final-screen marker", lambda out: sample.final_marker in out)
            qmp.execute("pmemsave", val=VGA_TEXT, size=SCREEN_COLS * SCREEN_ROWS * 2,
                        filename=str(screen_raw))
            try:
                for char in lines[-1]:
                    qmp.type_key(char)
            except QmpClosed:
                pass                    # the guest powered off before QEMU answered the last key
            qmp.close()
            qmp = None
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise QemuError(f"QEMU did not exit after the last key; "
                            f"serial ends {output()[-300:]!r}") from None
        finally:
            if qmp is not None:
                qmp.close()
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        return OsRun(output(), decode_screen(screen_raw.read_bytes()), proc.returncode)


def _known() -> list[str]:
    return [*ALL_BY_KEY, *OS_BY_NAME]


def write_os_goldens(sample: OsSample, run: OsRun) -> str:
    sample.golden.write_bytes(run.serial)
    sample.golden_screen.write_text(run.screen, encoding="utf-8")
    return (f"{sample.key}: {len(run.serial)} bytes -> {sample.golden.relative_to(ROOT)}, "
            f"screen -> {sample.golden_screen.relative_to(ROOT)}")


def update_goldens(names: Sequence[str] = ()) -> list[str]:
    """Run the named samples (all when empty) under QEMU and rewrite their golden files."""
    report = []
    for name in names or _known():
        if name in OS_BY_NAME:
            os_sample = OS_BY_NAME[name]
            try:
                run = run_qemu_os(os_sample)
            except QemuError as err:
                report.append(f"{name}: {err}; goldens not written")
                continue
            if run.exit_code != os_sample.exit_code:
                report.append(f"{name}: QEMU exited {run.exit_code}, want {os_sample.exit_code}; "
                              "goldens not written")
                continue
            report.append(write_os_goldens(os_sample, run))
            continue
        sample = ALL_BY_KEY[name]
        serial, code = run_qemu(sample.elf, sample.cmdline)
        if code != sample.exit_code:
            report.append(f"{sample.key}: QEMU exited {code}, want {sample.exit_code}; golden not written")
            continue
        sample.golden.write_bytes(serial)
        report.append(f"{sample.key}: {len(serial)} bytes -> {sample.golden.relative_to(ROOT)}")
    return report


def update_requested() -> bool:
    return os.environ.get(UPDATE_ENV, "") not in ("", "0")


def _compare(name: str) -> bool:
    """Run one sample under QEMU, print how it compares with its goldens."""
    if name in OS_BY_NAME:
        os_sample = OS_BY_NAME[name]
        try:
            run = run_qemu_os(os_sample)
        except QemuError as err:
            print(f"{name}: {err}")
            return False
        same = os_sample.golden.exists() and run.serial == os_sample.expected_serial()
        same_screen = os_sample.golden_screen.exists() and run.screen == os_sample.expected_screen()
        print(f"{name}: exit {run.exit_code} (want {os_sample.exit_code}), "
              f"serial {'matches' if same else 'DIFFERS'}, screen {'matches' if same_screen else 'DIFFERS'}")
        return same and same_screen and run.exit_code == os_sample.exit_code
    sample = ALL_BY_KEY[name]
    serial, code = run_qemu(sample.elf, sample.cmdline)
    same = sample.golden.exists() and serial == sample.expected_serial()
    print(f"{name}: exit {code} (want {sample.exit_code}), serial {'matches' if same else 'DIFFERS'}")
    return same and code == sample.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.qemu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", action="store_true", help="rewrite the golden files")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"samples to run (default: all of {', '.join(_known())})")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in _known()]
    if unknown:
        parser.error(f"unknown sample(s): {', '.join(unknown)}")
    if qemu_binary() is None:
        print("qemu-system-i386 not found", file=sys.stderr)
        return 2
    if args.update:
        lines = update_goldens(args.names)
        print("\n".join(lines))
        return 1 if any("not written" in line for line in lines) else 0
    failed = sum(not _compare(name) for name in args.names or _known())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
