"""Shared helpers for the report tests: recorded runs, fixed reproducibility, JSON paths."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from runtime.report.kernel import KernelInfo
from runtime.report.model import Comparison, KernelComparison, compare_kernel
from runtime.report.record import RunRecord
from runtime.report.repro import Reproducibility

DATA = Path(__file__).resolve().parent / "data" / "compare"
DOC = Path(__file__).resolve().parent.parent / "docs" / "compare-json.md"

#: Fixed stand-in for the reproducibility block, so goldens don't depend on the machine.
FIXED_REPRO = Reproducibility(
    ring1="<version>", python="<python>", platform="<platform>",
    dependencies={"unicorn": "<version>", "capstone": "<version>"},
    command=("compare", "<kernel>"), options={"hot": 1},
    rules=({"name": "irqflags", "distribution": "built-in", "version": "<version>",
            "classes": ["cli", "popf", "pushf", "sti"]},),
    rule_warnings=("<a warning of the rule loader>",),
)

#: Object fields whose keys are names (runs, distributions, options), not fixed field names.
NAMED_KEYS = {"runs": "<mode>", "counts": "<mode>", "reduction": "<mode>", "added": "<mode>",
              "patch": "<mode>", "matches": "<mode>", "patches": "<mode>", "dependencies": "<dist>",
              "options": "<option>"}


def recorded_names() -> list[str]:
    """Kernels with recorded runs: `synthetic` (hand-made, for unit tests) and the samples."""
    return sorted(p.name.removesuffix(".runs.json") for p in DATA.glob("*.runs.json"))


def load_recorded(name: str) -> tuple[KernelInfo, dict[str, RunRecord]]:
    data = json.loads((DATA / f"{name}.runs.json").read_text())
    return KernelInfo.from_json(data["kernel"]), {r["mode"]: RunRecord.from_json(r) for r in data["runs"]}


def kernel_comparison(name: str) -> KernelComparison:
    kernel, runs = load_recorded(name)
    return compare_kernel(kernel, runs)


def comparison(*names: str) -> Comparison:
    return Comparison(tuple(kernel_comparison(n) for n in names), FIXED_REPRO)


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def paths(value: Any, prefix: str = "", parent: str = "") -> dict[str, set[str]]:
    """Every field path in a JSON document (`kernels[].runs.<mode>.wall_s`) with the types seen there."""
    out: dict[str, set[str]] = {}
    if prefix:
        out.setdefault(prefix, set()).add(json_type(value))
    if isinstance(value, dict):
        for key, item in value.items():
            name = NAMED_KEYS.get(parent, key) if parent in NAMED_KEYS else key
            for p, types in paths(item, f"{prefix}.{name}" if prefix else name, key).items():
                out.setdefault(p, set()).update(types)
    elif isinstance(value, list):
        for item in value:
            for p, types in paths(item, f"{prefix}[]", parent).items():
                out.setdefault(p, set()).update(types)
    return out


def documented() -> dict[str, set[str]]:
    """The field table of docs/compare-json.md: path -> allowed JSON types."""
    fields = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\| `([^`]+)` \| ([a-z ]+) \|", line)
        if m:
            fields[m.group(1)] = set(m.group(2).split(" or "))
    return fields
