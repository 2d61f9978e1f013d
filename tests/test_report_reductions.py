"""Reductions computed by hand: the report's one derived figure checked against arithmetic
done here, not against goldens ring1 rendered itself (tests/golden/compare).

A patched run that exits more than the baseline (negative reduction; the text shows the
exits it added, "+N"), as often (zero), not at all (100%), and a row the baseline never
exited on (no reduction) each appear in the model, in the JSON, in the text report and in
the HTML exit map.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction

import pytest
from report_fixtures import FIXED_REPRO

from runtime.report import html, jsonout, svg, text
from runtime.report.kernel import Function, KernelInfo
from runtime.report.model import Comparison, compare_kernel
from runtime.report.record import RunRecord, Site, Timing

KERNEL = KernelInfo("k.elf", "0" * 64, (Function("grows", 0x1000, 0x10), Function("same", 0x1010, 0x10),
                                        Function("gone", 0x1020, 0x10), Function("new", 0x1030, 0x10)))
#: Exits per function: unpatched -> dynamic.
BY_FUNCTION = {"grows": (8, 12), "same": (10, 10), "gone": (4, 0), "new": (0, 3)}
#: The same exits by kind and class.
BY_KIND = {"unpatched": {"trap": 22}, "dynamic": {"trap": 10, "hypercall": 15}}
BY_CLASS = {"unpatched": {"cli": 12, "sti": 10}, "dynamic": {"cli": 3, "sti": 10, "pushf": 12}}

#: 1 - after / before, by hand.
EXPECTED = {
    ("function", "grows"): Fraction(-4, 8),     # 8 -> 12: -50%
    ("function", "same"): Fraction(0),          # 10 -> 10: 0%
    ("function", "gone"): Fraction(1),          # 4 -> 0: 100%
    ("function", "new"): None,                  # 0 -> 3: no baseline
    ("kind", "trap"): Fraction(12, 22),
    ("kind", "hypercall"): None,
    ("class", "cli"): Fraction(9, 12),
    ("class", "sti"): Fraction(0),
    ("class", "pushf"): None,
    ("total", "total"): Fraction(-3, 22),       # 22 -> 25
}


def _run(mode: str) -> RunRecord:
    i = 0 if mode == "unpatched" else 1
    sites = tuple(Site(f.start, "cli", "cli", "trap", BY_FUNCTION[f.name][i])
                  for f in KERNEL.functions if BY_FUNCTION[f.name][i])
    return RunRecord(mode, 1, "", b"ok\n", BY_KIND[mode], BY_CLASS[mode], sites, (), 100, Timing(1.0))


@pytest.fixture(scope="module")
def k():  # type: ignore[no-untyped-def]
    return compare_kernel(KERNEL, {m: _run(m) for m in ("unpatched", "dynamic")})


def _close(got: float | None, want: Fraction | None) -> bool:
    return got is None if want is None else got is not None and got == pytest.approx(float(want), abs=1e-12)


def test_the_model(k):  # type: ignore[no-untyped-def]
    rows = {("kind", r.key): r for r in k.by_kind} | {("class", r.key): r for r in k.by_class}
    rows |= {("total", "total"): k.total}
    for key, want in EXPECTED.items():
        got = (next(f for f in k.functions if f.name == key[1]).reduction("dynamic") if key[0] == "function"
               else rows[key].reduction("dynamic"))
        assert _close(got, want), (key, got, want)


def _added(key: tuple[str, str]) -> int:
    """Exits the patched run has beyond the baseline's, by hand."""
    counts = {("kind", "trap"): (22, 10), ("kind", "hypercall"): (0, 15), ("class", "cli"): (12, 3),
              ("class", "sti"): (10, 10), ("class", "pushf"): (0, 12), ("total", "total"): (22, 25)}[key]
    return max(0, counts[1] - counts[0])


def test_the_json(k):  # type: ignore[no-untyped-def]
    doc = json.loads(jsonout.dumps(Comparison((k,), FIXED_REPRO)))["kernels"][0]["exits"]
    rows = {("kind", r["kind"]): r for r in doc["by_kind"]}
    rows |= {("class", r["class"]): r for r in doc["by_class"]}
    rows[("total", "total")] = doc["total"]
    assert set(rows) == {key for key in EXPECTED if key[0] != "function"}
    for key, row in rows.items():
        assert _close(row["reduction"]["dynamic"], EXPECTED[key]), (key, row)
        assert row["added"]["dynamic"] == _added(key), (key, row)


def _shown(key: tuple[str, str]) -> str:
    """The text report's cell: the share removed, or "+N" when the patched run added exits."""
    if _added(key):
        return f"+{_added(key):,}"
    want = EXPECTED[key]
    return "-" if want is None else f"{float(want) * 100:.1f}%"


def test_the_text_report(k):  # type: ignore[no-untyped-def]
    out = text.render_plain(Comparison((k,), FIXED_REPRO))
    for key in EXPECTED:
        if key[0] == "function":
            continue
        line = next(ln for ln in out.splitlines() if re.match(rf"\s*{key[1]}\s", ln))
        assert line.split()[-1] == _shown(key), line


def test_the_html_exit_map(k, monkeypatch):  # type: ignore[no-untyped-def]
    tiles: list[svg.Tile] = []
    real = svg.treemap

    def spy(name: str, given: list[svg.Tile]) -> str:
        tiles.extend(given)
        return real(name, given)

    monkeypatch.setattr(svg, "treemap", spy)
    html.render(Comparison((k,), FIXED_REPRO))
    seen = {t.label: t.removed for t in tiles}
    for (what, key), want in EXPECTED.items():
        if what == "function":
            assert _close(seen[key], want), (key, seen[key], want)
