"""Start-up (issue 14): `bt` parses its command line without importing the VMM. Every
subcommand's heavy imports (Unicorn, Capstone, Keystone, NumPy, the runtime) happen in the
command that uses them, so `bt --help`, `bt scan`'s errors or `bt bench boot` never pay for
`bt run`'s. What is imported is checked here (in a fresh interpreter); how long it takes
is measured by `bt run --stats` ("start-up"), never asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("numpy", "unicorn", "capstone", "keystone", "runtime.vm", "patchmgr.manager", "bt.elf")


def _imported_after(code: str) -> list[str]:
    probe = (f"import sys\n{code}\n"
             f"print('imported:', *(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr.splitlines()[-1].split()[1:]


def test_importing_the_cli_imports_no_engine():
    assert _imported_after("import bt.cli") == []


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["bench", "trap", "--help"],
                                  ["scan", "--help"], ["audit", "--help"]])
def test_help_imports_no_engine(argv: list[str]):
    code = f"from bt.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    assert _imported_after(code) == []

