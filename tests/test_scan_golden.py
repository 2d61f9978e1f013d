"""Golden files for `bt scan` (text and --json). RING1_UPDATE_GOLDEN=1 rewrites them.

tests/data/scan/patchcases.elf is committed next to its source, so its golden files
only change when the scanner's output does. The sample kernels are rebuilt by their
own owners; a sample golden whose recorded sha256 no longer matches the ELF is skipped
with a note (rerun with RING1_UPDATE_GOLDEN=1 after checking the new output).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bt.cli import main
from bt.scanreport import SCHEMA

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "scan"
UPDATE = os.environ.get("RING1_UPDATE_GOLDEN") == "1"
KERNELS = {
    "patchcases": ("tests/data/scan/patchcases.elf", False),
    "farflow": ("tests/data/scan/farflow.elf", False),
    "hello": ("samples/hello/hello.elf", True),
}


def _run(capsys, argv: list[str]) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("kind", ["json", "txt"])
def test_golden(monkeypatch, capsys, name, kind):
    rel, is_sample = KERNELS[name]
    monkeypatch.chdir(ROOT)                      # paths in the output stay relative
    argv = ["scan", rel, "--all-sites"] + (["--json"] if kind == "json" else [])
    out = _run(capsys, argv)
    golden = GOLDEN / f"{name}.{kind}"
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(out)
        return
    assert golden.exists(), f"no golden file {golden}: run with RING1_UPDATE_GOLDEN=1"
    if is_sample:
        recorded = json.loads((GOLDEN / f"{name}.json").read_text())["kernel"]["sha256"]
        current = json.loads(_run(capsys, ["scan", rel, "--json"]))["kernel"]["sha256"]
        if recorded != current:
            pytest.skip(f"{rel} was rebuilt since its golden file: check `bt scan {rel}` and rerun "
                        "with RING1_UPDATE_GOLDEN=1")
    assert out == golden.read_text(), f"bt {' '.join(argv)} differs from {golden} (RING1_UPDATE_GOLDEN=1)"


def test_json_schema_shape(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    doc = json.loads(_run(capsys, ["scan", KERNELS["patchcases"][0], "--json", "--class", "cli"]))
    assert doc["schema"] == SCHEMA
    assert set(doc) == {"schema", "kernel", "code", "filter", "summary", "site_count", "sites", "unreached"}
    assert doc["code"]["jump_tables"] == 0 and doc["code"]["padding_bytes"] >= 0
    assert doc["filter"] == {"classes": ["cli"], "symbol": None, "limit": None}
    assert {s["class"] for s in doc["sites"]} == {"cli"} and doc["site_count"] == len(doc["sites"])
    site = doc["sites"][0]
    assert set(site) == {"address", "size", "bytes", "text", "class", "category", "symbol", "reached",
                         "patch", "reason"}
    assert site["patch"] in ("jump", "int3", "trap-only")


def test_json_to_file_and_limit(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "scan.json"
    assert _run(capsys, ["scan", KERNELS["patchcases"][0], f"--json={out}", "--limit", "2"]) == ""
    doc = json.loads(out.read_text())
    assert len(doc["sites"]) == 2 and doc["site_count"] > 2


def test_bad_class_is_a_usage_error(capsys):
    assert main(["scan", str(ROOT / KERNELS["patchcases"][0]), "--class", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown instruction class 'nope'" in err
