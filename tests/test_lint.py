"""Lint and type check are part of the test command, so CI and developers run them alike."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from requires import require_tool, unavailable

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_clean():
    ruff = require_tool("ruff")
    proc = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_clean():
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    if "No module named mypy" in proc.stderr:
        unavailable("mypy not installed (pip install -e '.[test]')")
    assert proc.returncode == 0, proc.stdout + proc.stderr
