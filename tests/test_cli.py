"""The thin CLI: help, unknown subcommands, error mapping."""

from __future__ import annotations

import subprocess
import sys

from bt.cli import main


def test_help_lists_every_subcommand(capsys):
    try:
        main(["--help"])
    except SystemExit as stop:
        assert stop.code == 0
    out = capsys.readouterr().out
    for name in ("scan", "patch", "run", "compare", "bench"):
        assert name in out


def test_no_subcommand_prints_help_and_exits_2(capsys):
    assert main([]) == 2


def test_python_dash_m_bt_works():
    proc = subprocess.run([sys.executable, "-m", "bt", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stdout.startswith("ring1 ")


def test_bad_flag_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, "-m", "bt", "--no-such-flag"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
