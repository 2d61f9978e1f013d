"""The JSON report has exactly the fields docs/compare-json.md documents, with their types."""

from __future__ import annotations

import dataclasses
import json

from report_fixtures import comparison, documented, kernel_comparison, load_recorded, paths

from runtime.report import jsonout
from runtime.report.model import Comparison, compare_kernel


def _with_mismatch() -> Comparison:
    kernel, runs = load_recorded("synthetic")
    runs["dynamic"] = dataclasses.replace(runs["dynamic"], serial=b"something else\n", exit_status=3)
    return Comparison((compare_kernel(kernel, runs),), comparison("synthetic").repro)


def _with_reference() -> Comparison:
    kernel, runs = load_recorded("synthetic")
    k = compare_kernel(kernel, runs, reference=("expected.serial", runs["unpatched"].serial))
    return Comparison((k,), comparison("synthetic").repro)


def _outputs() -> list[dict]:
    return [jsonout.to_json(c) for c in (comparison("synthetic"), _with_mismatch(), _with_reference())]


def test_reference_says_which_runs_produced_it():
    kernel, runs = load_recorded("synthetic")
    k = compare_kernel(kernel, runs, reference=("expected.serial", b"something else"))
    assert k.reference is not None and k.reference.matches == {"unpatched": False, "dynamic": False}
    assert k.reference_split() == ((), ("unpatched", "dynamic"))
    data = jsonout.to_json(_with_reference())["kernels"][0]["reference"]
    assert data["matches"] == {"unpatched": True, "dynamic": True}


def test_every_field_is_documented_with_its_type():
    doc = documented()
    for out in _outputs():
        for path, types in paths(out).items():
            assert path in doc, f"{path} is not documented in docs/compare-json.md"
            if "any" not in doc[path]:
                assert types <= doc[path], f"{path}: {types} not in documented {doc[path]}"


def test_every_documented_field_is_produced():
    seen: set[str] = set()
    for out in _outputs():
        seen |= set(paths(out))
    missing = set(documented()) - seen
    assert not missing, f"documented but never produced: {sorted(missing)}"


def test_schema_version_and_round_trip():
    text = jsonout.dumps(comparison("synthetic"))
    data = json.loads(text)
    assert data["schema"] == jsonout.SCHEMA == "ring1.compare/1"
    assert data["ok"] is True


def test_mismatch_is_reported_and_not_ok():
    data = jsonout.to_json(_with_mismatch())
    assert data["ok"] is False
    whats = {m["what"] for m in data["kernels"][0]["mismatches"]}
    assert whats == {"serial", "exit status"}


def test_reduction_is_null_without_baseline_exits():
    k = kernel_comparison("synthetic")
    hypercall = next(r for r in k.by_kind if r.key == "hypercall")
    assert hypercall.before == 0 and hypercall.reduction("dynamic") is None
