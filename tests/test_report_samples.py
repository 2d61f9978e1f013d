"""`bt compare` on the bundled samples, for real: each runs unpatched, patched
dynamically and (when `bt patch` works) statically patched.

The runs are also recorded in tests/data/compare/<name>.runs.json, from which
tests/test_report_golden.py renders the golden text and JSON; recordings are a
snapshot of real runs, so goldens don't move when the VMM's counts do. To take a
new snapshot (after a sample or the VMM changed what it measures):
`RING1_UPDATE_GOLDEN=1 python3 -m pytest tests/test_report_samples.py tests/test_report_golden.py`,
then review the diff before committing.

Here a fresh comparison of every sample must hold what doesn't depend on the
exact counts of today's VMM: the three outputs are produced, the JSON has only
documented fields, kernels without a known raw-mode leak give the same output
patched and unpatched, and patching removes most of irqsave's exits.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from report_fixtures import DATA, documented, load_recorded, paths

from runtime.report import html, jsonout, runner, text

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ("hello", "irqsave", "irqsave-pv", "timer", "zoo", "usermode")
#: Samples whose output trap-and-emulate alone gets right. timer and zoo print the RPL
#: of CS/SS, which an unpatched ring-1 guest sees as 1 (a raw-mode leak patching hides).
AGREE = ("hello", "irqsave", "irqsave-pv")
UPDATE = os.environ.get("RING1_UPDATE_GOLDEN") == "1"

@pytest.fixture(scope="module")
def fresh():
    """All samples compared once for the module, in parallel, from the repository root."""
    kernels = tuple(f"samples/{n}/{n}.elf" for n in SAMPLES)
    old = Path.cwd()
    os.chdir(ROOT)  # kernel paths in recordings are relative to the repository
    try:
        # hot=1 as `bt compare` runs by default.
        options = runner.CompareOptions(kernels=kernels, static=True, run={"hot": 1})
        return runner.run_all(options, ["compare", *kernels])
    finally:
        os.chdir(old)


def _kernel(fresh, name):
    return next(k for k in fresh.kernels if k.name == name)


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_gives_the_three_outputs(fresh, name):
    k = _kernel(fresh, name)
    one = dataclasses.replace(fresh, kernels=(k,))
    if UPDATE:
        runner.save_runs(one, DATA)
    assert k.modes == ("unpatched", "dynamic", "static")
    assert "Exits by kind" in text.render_plain(one)
    doc = documented()
    for path in paths(jsonout.to_json(one)):
        assert path in doc, path
    assert f'data-chart="{name}-by-class"' in html.render(one)


@pytest.mark.parametrize("name", AGREE)
def test_runs_agree(fresh, name):
    k = _kernel(fresh, name)
    assert k.ok, f"{name}: patched and unpatched runs disagree: {k.mismatches}"


def test_leaks_of_trap_and_emulate_are_reported_as_mismatches(fresh):
    k = _kernel(fresh, "zoo")
    assert not k.agree and "serial" in {m.what for m in k.mismatches}


def test_patching_removes_most_exits_from_irqsave(fresh):
    k = _kernel(fresh, "irqsave")
    for mode in k.patched_modes:
        reduction = k.total.reduction(mode)
        assert reduction is not None and reduction > 0.5, (mode, reduction)
        assert any(p.status == "active" for p in k.patches[mode])


def _measured(r):  # type: ignore[no-untyped-def]
    """What a run measured that must be the same on every run (virtual time: no wall clock)."""
    return {"exit_status": r.exit_status, "stop_reason": r.stop_reason, "serial": r.serial,
            "exits_by_kind": dict(r.exits_by_kind), "exits_by_class": dict(r.exits_by_class),
            "sites": sorted((s.address, s.kind, s.cls, s.count) for s in r.sites),
            "guest_instructions": r.guest_instructions,
            "patches": sorted((p.address, p.rule, p.kind, p.size, p.status) for p in r.patches)}


@pytest.mark.parametrize("name", SAMPLES)
def test_recorded_runs_are_what_a_fresh_run_gives(fresh, name):
    """The recordings behind the compare goldens (tests/data/compare) were made by ring1
    itself; a fresh run of the same kernel must measure exactly what they hold, or the
    goldens show figures today's VMM no longer produces (re-record: see the module doc)."""
    if UPDATE:
        return
    k = _kernel(fresh, name)
    kernel, recorded = load_recorded(name)
    assert kernel.sha256 == k.kernel.sha256, f"{name}: the recording is of another build of the kernel"
    assert tuple(recorded) == k.modes
    for mode in k.modes:
        assert _measured(recorded[mode]) == _measured(k.runs[mode]), f"{name} ({mode}): recording is stale"
