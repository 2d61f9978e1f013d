"""Golden files for the text and JSON reports, rendered from recorded runs.

The recorded runs (tests/data/compare/*.json) are fixed, and the reproducibility
block is replaced by a fixed stand-in, so the goldens are the same on every
machine. `RING1_UPDATE_GOLDEN=1 python3 -m pytest tests/test_report_golden.py`
rewrites them; review the diff before committing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from report_fixtures import comparison, recorded_names

from runtime.report import jsonout, text

GOLDEN = Path(__file__).resolve().parent / "golden" / "compare"
UPDATE = os.environ.get("RING1_UPDATE_GOLDEN") == "1"
RECORDED = recorded_names()


def check_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        return
    assert path.exists(), f"no golden {path.name}; run with RING1_UPDATE_GOLDEN=1 to create it"
    expected = path.read_text()
    assert actual == expected, f"{path.name} differs from the golden (RING1_UPDATE_GOLDEN=1 to update)"


@pytest.mark.parametrize("name", RECORDED)
def test_text_report(name):
    check_golden(f"{name}.txt", text.render_plain(comparison(name)))


@pytest.mark.parametrize("name", RECORDED)
def test_json_report(name):
    check_golden(f"{name}.json", jsonout.dumps(comparison(name)))


def test_several_kernels_give_one_summary_table():
    out = text.render_plain(comparison(*RECORDED, *RECORDED[:1]))
    assert f"{len(RECORDED) + 1} kernels" in out.splitlines()[0]
