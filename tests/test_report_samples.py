"""`bt compare` on the bundled samples, for real: runs them unpatched and patched.

Each sample's runs are recorded in tests/data/compare/<name>.runs.json, from which
tests/test_report_golden.py renders the golden text and JSON. Here a fresh
comparison must agree with the recording in everything that does not depend on
the machine (counts, sites, patches, output, exit status; not times). After a
deliberate change (a new sample build, a runtime change that alters counts),
`RING1_UPDATE_GOLDEN=1 python3 -m pytest tests/test_report_samples.py tests/test_report_golden.py`
re-records the runs and rewrites the goldens; review the diff before committing.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from report_fixtures import DATA

from runtime.report import adapter, runner
from runtime.report.record import RunRecord, Timing

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ("hello", "irqsave", "irqsave-pv", "timer", "zoo", "usermode")
UPDATE = os.environ.get("RING1_UPDATE_GOLDEN") == "1"
#: Static patching joins the recording when `bt patch` works; until then the dynamic run is compared.
STATIC = adapter.unavailable(static=True) is None

pytestmark = pytest.mark.skipif(adapter.unavailable(static=False) is not None,
                                reason=f"{adapter.unavailable(static=False)}")


def _stable(r: RunRecord) -> RunRecord:
    """The parts of a run that must be the same on every machine."""
    return dataclasses.replace(r, timing=Timing(wall=0.0))


@pytest.fixture(scope="module")
def fresh(request):
    """All samples compared once for the module, in parallel, from the repository root."""
    kernels = tuple(f"samples/{n}/{n}.elf" for n in SAMPLES)
    old = Path.cwd()
    os.chdir(ROOT)  # kernel paths in recordings are relative to the repository
    try:
        options = runner.CompareOptions(kernels=kernels, static=STATIC)
        return runner.run_all(options, ["compare", *kernels])
    finally:
        os.chdir(old)


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_agrees_with_its_recording(fresh, name):
    k = next(k for k in fresh.kernels if k.name == name)
    assert k.ok, f"{name}: patched and unpatched runs disagree: {k.mismatches}"
    if UPDATE:
        runner.save_runs(dataclasses.replace(fresh, kernels=(k,)), DATA)
        return
    recorded_kernel, recorded = runner.load_runs(DATA / f"{name}.runs.json")
    assert recorded_kernel.sha256 == k.kernel.sha256, f"{name}.elf changed: re-record (see module docstring)"
    assert set(recorded) == set(k.runs)
    for mode, run in k.runs.items():
        assert _stable(run) == _stable(recorded[mode]), f"{name} {mode}: counts differ from the recording"


def test_patching_removes_exits_from_irqsave(fresh):
    k = next(k for k in fresh.kernels if k.name == "irqsave")
    assert k.total.reduction("dynamic") is not None and k.total.reduction("dynamic") > 0.5
    assert any(p.status == "active" for p in k.patches["dynamic"])
