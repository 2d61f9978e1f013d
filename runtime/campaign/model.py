"""The campaign report as frozen data: kernels x configurations, built from the stored cells.

Each entry (one kernel in one configuration) holds its runs, one per repeat. Exit counts
are the guest's (the same in every repeat, or the entry is flagged); times are the wall
time each run measured, shown as the median with the spread over the repeats. An entry
is measured against the baseline of its kernel (the same kernel unpatched) through the
comparison `bt compare` builds (`runtime.report.model.compare_kernel`), which is also the
entry's drill-down report.

An entry is flagged when its guest output or exit status differs from the baseline's or
from the kernel's expected output, when its repeats disagree, or when a run failed; a
flagged entry, or one whose baseline is flagged, is shown but left out of every total.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from runtime.campaign.cell import CellOutcome
from runtime.campaign.matrix import Config
from runtime.campaign.plan import Plan
from runtime.report.model import KernelComparison, compare_kernel
from runtime.report.record import BASELINE, RunRecord
from runtime.report.repro import Reproducibility


@dataclass(frozen=True)
class Spread:
    """Measured values of one figure over the repeats of an entry."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    @property
    def relative(self) -> float:
        """(highest - lowest) / median: 0.05 means the repeats lie within 5% of each other."""
        return (self.high - self.low) / self.median if self.median else 0.0


@dataclass(frozen=True)
class Flag:
    """Why an entry is left out of the totals."""

    what: str  # "serial", "exit status", "repeats", "failed", "baseline"
    against: str  # "baseline", "expected", "" (the entry itself)
    detail: str

    def __str__(self) -> str:
        if self.what == "failed":
            return f"failed: {self.detail}"
        if self.what == "repeats":
            return f"repeats disagree: {self.detail}"
        if self.what == "baseline":
            return f"baseline flagged: {self.detail}"
        return f"{self.what} differs from the {self.against}: {self.detail}"


@dataclass(frozen=True)
class Entry:
    kernel: str
    config: Config
    config_id: str
    runs: tuple[RunRecord, ...]  # finished repeats, in repeat order
    failures: tuple[CellOutcome, ...]
    keys: tuple[str, ...]  # the cell of each repeat
    flags: tuple[Flag, ...]
    comparison: KernelComparison | None  # against the baseline: the drill-down
    baseline: Entry | None  # None for a baseline entry

    @property
    def repeats(self) -> int:
        return len(self.keys)

    @property
    def representative(self) -> RunRecord | None:
        """The run with the median wall time (the lower one of an even count): its counts are
        every repeat's, and it is the run the drill-down report shows."""
        if not self.runs:
            return None
        ordered = sorted(self.runs, key=lambda r: r.timing.wall)
        return ordered[(len(ordered) - 1) // 2]

    @property
    def clean(self) -> bool:
        """Complete and unflagged, and so is its baseline: the entry may go into a total."""
        return not self.flags and bool(self.runs) and (self.baseline is None or self.baseline.clean)

    @property
    def exits(self) -> int | None:
        r = self.representative
        return None if r is None else r.total_exits

    @property
    def wall(self) -> Spread | None:
        return Spread(tuple(r.timing.wall for r in self.runs)) if self.runs else None

    @property
    def exits_removed(self) -> int | None:
        """Baseline exits minus this entry's (negative: patching added exits)."""
        if self.baseline is None or self.exits is None or self.baseline.exits is None:
            return None
        return self.baseline.exits - self.exits

    @property
    def reduction(self) -> float | None:
        removed = self.exits_removed
        if removed is None or self.baseline is None or not self.baseline.exits:
            return None
        return removed / self.baseline.exits

    @property
    def speedup(self) -> float | None:
        """Median baseline wall time over median wall time."""
        if self.baseline is None or self.wall is None or self.baseline.wall is None or not self.wall.median:
            return None
        return self.baseline.wall.median / self.wall.median

    @property
    def speedup_range(self) -> tuple[float, float] | None:
        """The least and the most speedup any pair of repeats shows."""
        if self.baseline is None or self.wall is None or self.baseline.wall is None or not self.wall.low:
            return None
        return self.baseline.wall.low / self.wall.high, self.baseline.wall.high / self.wall.low

    @property
    def stopped(self) -> str:
        """The abnormal stop every run of the entry ended with ("" when the guest exited)."""
        r = self.representative
        return r.stop_reason if r is not None else ""


@dataclass(frozen=True)
class KernelRow:
    name: str
    path: str
    sha256: str
    expect: str | None  # path of its expected output
    entries: tuple[Entry, ...]  # one per configuration, in configuration order

    def entry(self, config_id: str) -> Entry:
        return next(e for e in self.entries if e.config_id == config_id)


@dataclass(frozen=True)
class Total:
    """One configuration over every kernel whose entry is clean."""

    config_id: str
    kernels: tuple[str, ...]  # kernels counted
    left_out: tuple[str, ...]  # kernels flagged or failed: never averaged in
    exits_before: int
    exits_after: int
    speedups: tuple[float, ...]

    @property
    def reduction(self) -> float | None:
        return 1 - self.exits_after / self.exits_before if self.exits_before else None

    @property
    def speedup_geomean(self) -> float | None:
        if not self.speedups:
            return None
        return math.exp(sum(math.log(s) for s in self.speedups) / len(self.speedups))


@dataclass(frozen=True)
class ConfigInfo:
    id: str
    config: Config
    label: str

    @property
    def is_baseline(self) -> bool:
        return self.config.is_baseline


@dataclass(frozen=True)
class CellCounts:
    planned: int  # distinct cells the campaign needs
    reused: int  # found in the results folder
    ran: int  # run by this invocation
    failed: int


@dataclass(frozen=True)
class CampaignReport:
    name: str
    description: str
    manifest: str
    manifest_sha256: str
    results: str  # the results folder
    repeats: int
    configs: tuple[ConfigInfo, ...]
    kernels: tuple[KernelRow, ...]
    totals: tuple[Total, ...]
    cells: CellCounts
    build: Mapping[str, str]
    executor: str  # where this invocation ran its cells
    repro: Reproducibility

    @property
    def entries(self) -> tuple[Entry, ...]:
        return tuple(e for k in self.kernels for e in k.entries)

    @property
    def flagged(self) -> tuple[Entry, ...]:
        return tuple(e for e in self.entries if e.flags)

    @property
    def failures(self) -> tuple[tuple[Entry, CellOutcome], ...]:
        return tuple((e, f) for e in self.entries for f in e.failures)

    @property
    def ok(self) -> bool:
        return not self.flagged

    def timing_spread(self) -> list[tuple[float, Entry]]:
        """Every entry with several runs, with its relative wall-time spread, widest first."""
        out = [(e.wall.relative, e) for e in self.entries if e.wall is not None and len(e.runs) > 1]
        return sorted(out, key=lambda p: -p[0])


def _repeat_difference(runs: Sequence[RunRecord]) -> str:
    first = runs[0]
    what = []
    if any(r.serial != first.serial for r in runs):
        what.append("guest output")
    if any((r.exit_status, r.stop_reason) != (first.exit_status, first.stop_reason) for r in runs):
        what.append("exit status")
    if any((r.exits_by_kind, r.exits_by_class) != (first.exits_by_kind, first.exits_by_class) for r in runs):
        what.append("exit counts")
    return ", ".join(what)


def _difference(want: bytes, got: bytes, name: str) -> str:
    """Where two guest outputs part: "byte 33: expected b'rpl: 0', got b'rpl: 1'"."""
    pairs = enumerate(zip(want, got, strict=False))
    at = next((i for i, (a, b) in pairs if a != b), min(len(want), len(got)))
    start = max(0, at - 8)
    return f"byte {at}: {name} {want[start:at + 8]!r}, got {got[start:at + 8]!r}"


def _entry(plan: Plan, kernel: str, config: Config, records: Mapping[str, RunRecord],
           failures: Mapping[str, CellOutcome], baseline: Entry | None) -> Entry:
    keys = tuple(s.key for s in plan.slots if s.kernel == kernel and s.config == config)
    runs = tuple(records[k] for k in keys if k in records)
    failed = tuple(failures[k] for k in keys if k in failures)
    flags: list[Flag] = []
    if failed:
        flags.append(Flag("failed", "", f"{len(failed)} of {len(keys)} runs: {failed[0].error}"))
    elif len(runs) < len(keys):
        flags.append(Flag("failed", "", f"{len(keys) - len(runs)} of {len(keys)} runs have no result"))
    if len(runs) > 1 and _repeat_difference(runs):
        flags.append(Flag("repeats", "", f"the {len(runs)} runs differ in {_repeat_difference(runs)}"))
    planned = plan.kernel(kernel)
    comparison = None
    rep = sorted(runs, key=lambda r: r.timing.wall)[(len(runs) - 1) // 2] if runs else None
    base = baseline.representative if baseline is not None else rep
    if rep is not None and base is not None:
        pair = {BASELINE: base} if baseline is None else {BASELINE: base, rep.mode: rep}
        comparison = compare_kernel(planned.info, pair, top=plan.manifest.report.top,
                                    reference=planned.expect)
        for m in comparison.mismatches:
            detail = (_difference(base.serial, rep.serial, "baseline") if m.what == "serial"
                      else f"baseline {m.expected}, got {m.got}")
            flags.append(Flag(m.what, "baseline", detail))
        if planned.expect is not None and rep.serial != planned.expect[1]:
            flags.append(Flag("serial", "expected", _difference(planned.expect[1], rep.serial, "expected")))
    if baseline is not None and baseline.flags:
        flags.append(Flag("baseline", "", "; ".join(str(f) for f in baseline.flags)))
    return Entry(kernel, config, plan.config_id(config), runs, failed, keys, tuple(flags), comparison,
                 baseline)


def build_report(plan: Plan, records: Mapping[str, RunRecord], failures: Mapping[str, CellOutcome], *,
                 results: str, cells: CellCounts, executor: str, repro: Reproducibility) -> CampaignReport:
    configs = tuple(ConfigInfo(plan.config_id(c), c, plan.label(c)) for c in plan.configs)
    rows = []
    for k in plan.kernels:
        baselines: dict[Config, Entry] = {}
        entries = []
        for c in plan.configs:
            if c.is_baseline:
                baselines[c] = _entry(plan, k.name, c, records, failures, None)
                entries.append(baselines[c])
            else:
                # Matrix.configs lists every configuration's baseline before it.
                entries.append(_entry(plan, k.name, c, records, failures, baselines[c.baseline()]))
        rows.append(KernelRow(k.name, str(k.spec.path), k.blob.sha256,
                              str(k.spec.expect) if k.spec.expect else None, tuple(entries)))
    totals = []
    for info in configs:
        if info.is_baseline:
            continue
        mine = [row.entry(info.id) for row in rows]
        counted = [e for e in mine if e.clean]
        totals.append(Total(
            info.id, tuple(e.kernel for e in counted), tuple(e.kernel for e in mine if not e.clean),
            sum(e.baseline.exits or 0 for e in counted if e.baseline is not None),
            sum(e.exits or 0 for e in counted),
            tuple(s for s in (e.speedup for e in counted) if s)))
    m = plan.manifest
    return CampaignReport(m.name, m.description, str(m.path), m.sha256, results, m.matrix.repeats, configs,
                          tuple(rows), tuple(totals), cells, plan.build, executor, repro)
