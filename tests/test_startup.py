"""Start-up (issue 14): `bt` parses its command line without importing the VMM. Every
subcommand's heavy imports (Unicorn, Capstone, Keystone, NumPy, the runtime) happen in the
command that uses them, so `bt --help`, `bt scan`'s errors or `bt bench boot` never pay for
`bt run`'s. What is imported is checked here (in a fresh interpreter); how long it takes
is measured by `bt run --stats` ("start-up"), never asserted."""

from __future__ import annotations

import json
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



def test_bench_startup_json(capsys: pytest.CaptureFixture[str]):
    """`bt bench startup`: every floor and the kernel's `bt run` measured, with the start-up
    `bt run` reports itself; the figures' shape only, never their size."""
    from bt.cli import main

    hello = ROOT / "samples" / "hello" / "hello.elf"
    assert main(["bench", "startup", str(hello), "--runs", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in doc["rows"]}
    assert next(iter(rows)) == "python -c pass" and "bt run hello.elf" in rows
    assert all(r["process_s"] > 0 for r in rows.values())
    assert rows["bt run hello.elf"]["startup_s"] > 0 and rows["python -c pass"]["startup_s"] is None
    assert isinstance(doc["bytecode_cached"], bool)


def test_bench_startup_a_missing_kernel(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from bt.cli import main

    assert main(["bench", "startup", str(tmp_path / "nope.elf"), "--runs", "1"]) == 2
    assert "no such file" in capsys.readouterr().err
