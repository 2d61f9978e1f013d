"""The thin CLI: help, unknown subcommands, error mapping."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bt.cli import main

SUBCOMMANDS = ("scan", "patch", "run", "compare", "bench")


def _bt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bt", *args], capture_output=True, text=True)


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: bt ")
    listed = out.split("COMMAND", 2)[-1]
    for name in SUBCOMMANDS:
        assert f"\n    {name} " in listed, name


def test_no_subcommand_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]):
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out.startswith("usage: bt ") and all(f"\n    {name} " in out for name in SUBCOMMANDS)
    assert err == ""


def test_python_dash_m_bt_works():
    proc = _bt("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("ring1 ")


@pytest.mark.parametrize("args, what", [
    (("--no-such-flag",), "unrecognized arguments: --no-such-flag"),
    (("run",), "the following arguments are required: kernel"),
    (("run", "k.elf", "--ram", "lots"), "argument --ram: invalid int value: 'lots'"),
    (("frobnicate",), "invalid choice: 'frobnicate'"),
])
def test_bad_flag_is_one_line_and_exit_2(args: tuple[str, ...], what: str):
    proc = _bt(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("bt") and ": error: " in lines[0] and what in lines[0]
