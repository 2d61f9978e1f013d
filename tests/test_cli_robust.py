"""The CLI under careless or hostile use (issue 12): one line and exit 2 for every usage
error, outputs checked before any work, and no file lost. One test per class of failure
the issue lists."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bt.cli import main

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "samples" / "hello" / "hello.elf"
OLD = b"an existing file\n"


def _bt(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    return code, err


def _one_error_line(err: str, command: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bt {command}: error:"), err


def _no_temporaries(folder: Path) -> None:
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# ---- argparse: one line, exit 2 -------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["run"], ["run", str(HELLO), "--bogus"], ["scan"], ["run", str(HELLO), "--ram", "lots"],
    ["compare"], ["bench", "scan", "--runs", "x"], ["run", str(HELLO), "--js", "x"],
])
def test_argparse_errors_are_one_line(argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "bt", *argv], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 2
    _one_error_line(proc.stderr, " ".join(argv[:2]) if argv[0] == "bench" else argv[0])
    assert "usage:" not in proc.stderr


# ---- numbers -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["run", HELLO, "--timeout", "-5"], ["run", HELLO, "--timeout", "0"], ["run", HELLO, "--timeout", "nan"],
    ["run", HELLO, "--timeout", "inf"], ["run", HELLO, "--max-insns", "0"], ["run", HELLO, "--hot", "0"],
    ["compare", HELLO, "--max-insns", "0"], ["compare", HELLO, "--jobs", "0"],
    ["compare", HELLO, "--top", "-1"], ["bench", "scan", HELLO, "--runs", "0"],
    ["bench", "patch", "--runs", "0"], ["bench", "trap", "--runs", "0"],
    ["scan", HELLO, "--limit", "-1"], ["run", HELLO, "--ram", "1"], ["run", HELLO, "--key-delay", "1e400"],
    ["run", HELLO, "--key-delay", "nan"], ["compare", HELLO, "--key-delay", "inf"],
])
def test_bad_numbers_are_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[object]) -> None:
    code, err = _bt(capsys, *argv)
    assert code == 2
    _one_error_line(err, " ".join(map(str, argv[:2])) if argv[0] == "bench" else str(argv[0]))


def test_a_command_line_that_is_not_utf8_reaches_the_guest_as_bytes(tmp_path: Path) -> None:
    """QEMU passes -append's bytes through; so does --cmdline (argv arrives as surrogates)."""
    from qemu import run_qemu
    from requires import require_tool

    serial = tmp_path / "serial"
    arg = os.fsdecode(b"k=\xff\xfe mode=\xc3")
    assert main(["run", str(HELLO), "--cmdline", arg, "--serial", str(serial)]) == 1
    assert b"k=\xff\xfe" in serial.read_bytes()
    require_tool("qemu")
    assert run_qemu(HELLO, arg) == (serial.read_bytes(), 1)


# ---- outputs: checked before any work ------------------------------------------------------------

@pytest.mark.parametrize("option", ["--serial", "--json"])
@pytest.mark.parametrize("where, why", [
    ("DIR", "is a directory"), ("DIR/missing/x", "no folder"), ("/proc/self/x", "cannot write in"),
    ("/dev/null", None), ("/dev/full", None),
])
def test_bad_run_outputs_fail_before_the_guest_runs(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                    option: str, where: str, why: str | None) -> None:
    path = where.replace("DIR", str(tmp_path))
    code, err = _bt(capsys, "run", HELLO, option, path)
    if option == "--serial" and path == "/dev/null":
        assert code == 1                    # a stream may be a device: the guest's output is discarded
        return
    assert code == 2
    _one_error_line(err, "run")
    assert why is None or why in err
    assert capsys.readouterr().out == ""    # the guest never ran
    _no_temporaries(tmp_path)


def test_serial_to_stdout_by_name(capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(HELLO), "--serial", "/dev/stdout"]) == 1
    assert "hello: bye" in capfd.readouterr().out


# ---- files lost ------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [[], ["--hot", "0"], ["--eager", "--no-patch"], ["--disable-rule", "nope"]])
def test_a_failed_run_keeps_existing_outputs(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                             extra: list[str]) -> None:
    bad = tmp_path / "bad.elf"
    bad.write_text("not a kernel")
    serial, stats = tmp_path / "serial.txt", tmp_path / "stats.json"
    serial.write_bytes(OLD)
    stats.write_bytes(OLD)
    kernel = HELLO if extra else bad
    code, err = _bt(capsys, "run", kernel, *extra, "--serial", serial, "--json", stats)
    assert code == 2
    _one_error_line(err, "run")
    assert serial.read_bytes() == OLD and stats.read_bytes() == OLD
    _no_temporaries(tmp_path)


def test_a_guest_stop_still_writes_the_outputs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    serial, stats = tmp_path / "serial.txt", tmp_path / "stats.json"
    serial.write_bytes(OLD)
    code, _ = _bt(capsys, "run", HELLO, "--max-insns", "20000", "--serial", serial, "--json", stats)
    assert code == 4
    assert serial.read_bytes().startswith(b"hello: ring1") and stats.read_text().startswith("{")


def test_scan_json_never_takes_the_next_word(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    a, b = tmp_path / "A.elf", tmp_path / "B.elf"
    a.write_bytes(HELLO.read_bytes())
    b.write_bytes(HELLO.read_bytes())
    code, err = _bt(capsys, "scan", "--json", a, b)
    assert code == 2 and "unrecognized arguments" in err
    assert a.read_bytes() == HELLO.read_bytes()
    out = tmp_path / "scan.json"
    assert main(["scan", str(a), f"--json={out}"]) == 0 and out.read_text().startswith("{")
    assert main(["scan", str(a), "--json"]) == 0 and capsys.readouterr().out.startswith("{")


def test_patch_refuses_its_input_and_devices_as_output(capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path) -> None:
    kernel = tmp_path / "k.elf"
    kernel.write_bytes(HELLO.read_bytes())
    for out, why in ((kernel, "is the input"), ("/dev/null", "not a regular file"), (tmp_path, "directory")):
        code, err = _bt(capsys, "patch", kernel, "-o", out)
        assert code == 2 and why in err
        _one_error_line(err, "patch")
    assert kernel.read_bytes() == HELLO.read_bytes()
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    _no_temporaries(tmp_path)


def test_compare_outputs_are_all_or_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    report.write_bytes(OLD)
    code, err = _bt(capsys, "compare", HELLO, "--json", report, "--html", tmp_path / "no" / "r.html")
    assert code == 2 and "no folder" in err
    assert report.read_bytes() == OLD
    existing = tmp_path / "runs"
    existing.write_bytes(OLD)
    code, err = _bt(capsys, "compare", HELLO, "--save-runs", existing)
    assert code == 2 and "not a folder" in err
    _no_temporaries(tmp_path)


# ---- inputs that never end, readers that go away --------------------------------------------------

DEVICE_INPUTS = [["scan", "/dev/zero"], ["run", "/dev/urandom"], ["patch", "/dev/zero", "-o", "X"],
                 ["compare", HELLO, "--expect", "/dev/zero"]]


@pytest.mark.parametrize("argv", DEVICE_INPUTS)
def test_a_device_as_input_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                      argv: list[object]) -> None:
    """Reading /dev/zero whole never ends: refused, one line, before anything is read."""
    code, err = _bt(capsys, *[str(tmp_path / "out.elf") if a == "X" else a for a in argv])
    assert code == 2 and "device" in err
    _one_error_line(err, str(argv[0]))


@pytest.mark.parametrize("argv", [["run", str(HELLO)], ["scan", str(ROOT / "samples/usermode/usermode.elf"),
                                                        "--all-sites", "--json"]])
def test_a_closed_stdout_is_exit_2_and_one_line(argv: list[str]) -> None:
    """`bt ... | head -1`: the pipe closes under the guest's output or the JSON."""
    proc = subprocess.run(f"{sys.executable} -m bt {' '.join(argv)} | head -c 1 >/dev/null; "
                          "echo ${PIPESTATUS[0]} >&2", shell=True, executable="/bin/bash",
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    *lines, status = proc.stderr.strip().splitlines()
    assert status in ("0", "2"), proc.stderr       # 0 when everything fitted in the pipe before it closed
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    if status == "2":
        assert lines == [f"bt {argv[0]}: error: standard output: cannot write: Broken pipe"] or \
            lines == [f"bt {argv[0]}: error: standard output was closed (broken pipe)"], lines


def test_file_names_that_are_not_utf8(tmp_path: Path) -> None:
    """Such a name arrives as surrogate escapes; echoing it was a UnicodeEncodeError (exit 8)
    under a UTF-8 locale. Now its bytes are printed back."""
    out = tmp_path / os.fsdecode(b"w\xff.elf")
    # strict, as under a UTF-8 locale such as en_US.UTF-8 (C.UTF-8 escapes already)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8:strict")
    proc = subprocess.run([sys.executable, "-m", "bt", "patch", str(HELLO), "-o", str(out)],
                          capture_output=True, env=env)
    assert proc.returncode == 0 and out.exists(), proc.stderr
    assert proc.stdout.startswith(os.fsencode(out) + b": ")


def test_sigterm_leaves_no_temporary_file_and_the_old_output(tmp_path: Path) -> None:
    """SIGTERM ends `bt compare` as Ctrl-C does (exit 130): its outputs' temporary files go,
    the existing report stays (`bt run` stops the guest cleanly instead: test_runtime_stops)."""
    import signal
    import time

    from runtime_guest import asm
    from test_runtime_stops import LOAD, _running, tiny_elf

    spin = tiny_elf(asm("spin:\ninc eax\njmp spin\n", LOAD), tmp_path / "spin.elf")
    report = tmp_path / "r.json"
    report.write_bytes(OLD)
    proc = subprocess.Popen([sys.executable, "-m", "bt", "compare", str(spin), "--jobs", "1", "--json",
                             str(report), "--max-insns", "2000000000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.monotonic() + 60
    while not _running(proc) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert report.read_bytes() == OLD
    _no_temporaries(tmp_path)
