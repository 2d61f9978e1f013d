"""The comparison: what patching changed for each kernel, as frozen data.

Built once from measured runs (`RunRecord`s); renderers only read it. Every number
here is either a measured count or time, or arithmetic on them (sums, ratios);
a figure a run did not measure stays None and renderers say "not measured".
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from bt import bootlog
from runtime.report.kernel import Function, KernelInfo
from runtime.report.record import BASELINE, MODES, Patch, RunRecord
from runtime.report.repro import Reproducibility
from runtime.stats import EXIT_KINDS

#: Sites shown in the hot-site table unless asked otherwise.
TOP_SITES = 10
#: The exit map groups addresses outside every function symbol under this name.
NO_SYMBOL = "(no symbol)"


@dataclass(frozen=True)
class Counts:
    """One row of counts: `counts[mode]` for each run of the comparison."""

    key: str
    counts: Mapping[str, int]

    @property
    def before(self) -> int:
        return self.counts[BASELINE]

    def reduction(self, mode: str) -> float | None:
        """Share of the baseline's exits that `mode` removed (1.0: all; negative: more exits)."""
        if self.before == 0:
            return None
        return 1.0 - self.counts[mode] / self.before

    def added(self, mode: str) -> int:
        """Exits `mode` has beyond the baseline's (0 when it has as many or fewer)."""
        return max(0, self.counts[mode] - self.before)


@dataclass(frozen=True)
class SiteRow:
    """A hot site: one guest address, its exits in each run and how it was patched."""

    address: int
    symbol: str
    cls: str
    text: str
    counts: Mapping[str, int]
    patch: Mapping[str, str]  # mode -> "kind (status)", "" when no patch was recorded there


@dataclass(frozen=True)
class FunctionRow:
    """Exits over one function of the kernel (the exit map)."""

    name: str
    start: int
    size: int
    counts: Mapping[str, int]

    def reduction(self, mode: str) -> float | None:
        return Counts(self.name, self.counts).reduction(mode)


@dataclass(frozen=True)
class RunTiming:
    """Timings of one run, and what follows from them."""

    mode: str
    wall: float
    guest: float | None
    vmm: float | None
    exits: int
    guest_instructions: int | None

    @property
    def us_per_exit(self) -> float | None:
        """VMM time per exit, in µs: what one exit costs here."""
        if self.vmm is None or self.exits == 0:
            return None
        return self.vmm / self.exits * 1e6


@dataclass(frozen=True)
class Mismatch:
    """Two runs that must agree did not: `what` is "serial" or "exit status"."""

    mode: str
    what: str
    expected: str
    got: str


@dataclass(frozen=True)
class Reference:
    """Guest output known to be right (QEMU's, for the samples), and which runs produced it.
    Tells, when runs disagree, which of them is wrong."""

    path: str
    sha256: str
    size: int
    matches: Mapping[str, bool]  # mode -> the run's serial output equals the reference


@dataclass(frozen=True)
class KernelComparison:
    kernel: KernelInfo
    modes: tuple[str, ...]
    runs: Mapping[str, RunRecord]
    by_kind: tuple[Counts, ...]
    by_class: tuple[Counts, ...]
    total: Counts
    sites: tuple[SiteRow, ...]
    site_count: int  # sites with exits in any run; `sites` holds the hottest of them
    functions: tuple[FunctionRow, ...]
    patches: Mapping[str, tuple[Patch, ...]]  # patched mode -> its patch table
    timings: tuple[RunTiming, ...]
    mismatches: tuple[Mismatch, ...]
    reference: Reference | None = None
    #: The runs' serial output was compared as Linux boot logs: without printk's timestamps
    #: and the lines that measure time (bt/bootlog.py `TIMING`), which every exit moves.
    linux_log: bool = False

    @property
    def name(self) -> str:
        return self.kernel.name

    def reference_split(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """With a reference: (runs that produced the expected output, runs that did not)."""
        if self.reference is None:
            return (), ()
        matches = self.reference.matches
        return tuple(m for m in self.modes if matches[m]), tuple(m for m in self.modes if not matches[m])

    @property
    def patched_modes(self) -> tuple[str, ...]:
        return tuple(m for m in self.modes if m != BASELINE)

    @property
    def agree(self) -> bool:
        """The patched runs gave the baseline's output and exit status."""
        return not self.mismatches

    @property
    def ok(self) -> bool:
        """The runs agree and, with a reference, every run produced the expected output."""
        return self.agree and not self.reference_split()[1]

    def speedup(self, mode: str) -> float | None:
        """Wall time of the baseline over wall time of `mode`."""
        t = {r.mode: r.wall for r in self.timings}
        if not t.get(mode):
            return None
        return t[BASELINE] / t[mode]


@dataclass(frozen=True)
class Comparison:
    kernels: tuple[KernelComparison, ...]
    repro: Reproducibility

    @property
    def ok(self) -> bool:
        return all(k.ok for k in self.kernels)

    @property
    def agree(self) -> bool:
        return all(k.agree for k in self.kernels)


def compare_kernel(kernel: KernelInfo, runs: Mapping[str, RunRecord], top: int = TOP_SITES,
                   reference: tuple[str, bytes] | None = None) -> KernelComparison:
    """Build one kernel's comparison from its runs (the baseline and one or two patched),
    and check each run's output against `reference` (path, bytes) when one is given."""
    if BASELINE not in runs:
        raise ValueError("a comparison needs the unpatched run")
    # The three kinds of run in their fixed order, then variants (`--variant`) as given.
    modes = tuple(m for m in MODES if m in runs) + tuple(m for m in runs if m not in MODES)
    by_kind = _rows(runs, modes, lambda r: r.exits_by_kind, order=EXIT_KINDS)
    by_class = _rows(runs, modes, lambda r: r.exits_by_class)
    total = Counts("total", {m: runs[m].total_exits for m in modes})
    all_sites = _site_rows(kernel, runs, modes)
    linux_log = _linux_log(runs, modes)
    return KernelComparison(
        kernel=kernel,
        modes=modes,
        runs=dict(runs),
        by_kind=by_kind,
        by_class=by_class,
        total=total,
        sites=tuple(all_sites[:top]),
        site_count=len(all_sites),
        functions=_function_rows(kernel, runs, modes),
        patches={m: tuple(sorted(runs[m].patches, key=lambda p: p.address)) for m in modes if m != BASELINE},
        timings=tuple(RunTiming(m, runs[m].timing.wall, runs[m].timing.guest, runs[m].timing.vmm,
                                runs[m].total_exits, runs[m].guest_instructions) for m in modes),
        mismatches=_mismatches(runs, modes, linux_log),
        linux_log=linux_log,
        reference=None if reference is None else Reference(
            reference[0], hashlib.sha256(reference[1]).hexdigest(), len(reference[1]),
            {m: runs[m].serial == reference[1] for m in modes}),
    )


def _rows(runs: Mapping[str, RunRecord], modes: tuple[str, ...],
          pick: Callable[[RunRecord], Mapping[str, int]], order: Iterable[str] = ()) -> tuple[Counts, ...]:
    keys: set[str] = set()
    for m in modes:
        keys.update(k for k, v in pick(runs[m]).items() if v)
    fixed = [k for k in order if k in keys]
    # Unordered keys (instruction classes) go hottest first, then by name for stable output.
    rest = sorted(keys - set(fixed), key=lambda k: (-pick(runs[BASELINE]).get(k, 0), k))
    return tuple(Counts(k, {m: pick(runs[m]).get(k, 0) for m in modes}) for k in fixed + rest)


def _site_rows(kernel: KernelInfo, runs: Mapping[str, RunRecord], modes: tuple[str, ...]) -> list[SiteRow]:
    counts: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(modes, 0))
    what: dict[int, tuple[str, str]] = {}
    for m in modes:
        for s in runs[m].sites:
            counts[s.address][m] += s.count
            # The baseline names the instruction as it trapped; a patched run may see an INT3 or a stub.
            if s.address not in what or m == BASELINE:
                what[s.address] = (s.cls, s.text)
    patches: dict[int, dict[str, str]] = defaultdict(dict)
    for m in modes:
        for p in runs[m].patches:
            patches[p.address][m] = f"{p.kind} ({p.status})" if p.status != "active" else p.kind
            if p.address in what and not what[p.address][1] and p.text:
                what[p.address] = (what[p.address][0], p.text)
        # A site inside another patch's window is rewritten by that patch.
        for p in runs[m].patches:
            if p.status == "active":
                for a in counts:
                    if a != p.address and a in p.window and m not in patches[a]:
                        patches[a][m] = f"in {p.kind} at {kernel.describe(p.address)}"
    rows = [SiteRow(a, kernel.describe(a), what[a][0], what[a][1], c, dict(patches.get(a, {})))
            for a, c in counts.items()]
    rows.sort(key=lambda r: (-r.counts[BASELINE], -sum(r.counts.values()), r.address))
    return rows


def _function_rows(kernel: KernelInfo, runs: Mapping[str, RunRecord],
                   modes: tuple[str, ...]) -> tuple[FunctionRow, ...]:
    per: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(modes, 0))
    where: dict[str, Function] = {}
    for m in modes:
        for s in runs[m].sites:
            f = kernel.function_at(s.address)
            name = f.name if f else NO_SYMBOL
            if f:
                where[name] = f
            per[name][m] += s.count
    rows = [FunctionRow(n, where[n].start if n in where else 0, where[n].size if n in where else 0, c)
            for n, c in per.items() if any(c.values())]
    rows.sort(key=lambda r: (-r.counts[BASELINE], -sum(r.counts.values()), r.name))
    return tuple(rows)


#: Stops ring1 makes itself, at a limit the user gave (or Ctrl-C), not the guest's. A kernel
#: that never ends by itself (an OS at its shell prompt) is run to such a limit, and each run
#: is cut wherever it got to: patched code runs other instructions than trapping code, so the
#: two runs stop at different EIPs, one maybe a few lines of output further on.
HOST_CUTS = ("instruction budget exhausted (--max-insns)", "wall-clock timeout (--timeout)",
             ": interrupted (")


def host_cut(r: RunRecord) -> bool:
    """The run was stopped by one of ring1's limits (`HOST_CUTS`), not by the guest."""
    return r.exit_status is None and any(cut in r.stop_reason for cut in HOST_CUTS)


def _mismatches(runs: Mapping[str, RunRecord], modes: tuple[str, ...],
                linux_log: bool) -> tuple[Mismatch, ...]:
    base = runs[BASELINE]
    out = []
    for m in modes:
        if m == BASELINE:
            continue
        r = runs[m]
        # Two runs both cut by a limit agree when one's output is the start of the other's;
        # where each was cut is not compared.
        cut = host_cut(base) and host_cut(r)
        shorter = min(len(base.serial), len(r.serial)) if cut else None
        if linux_log and not cut:
            parted = bootlog.first_difference(base.serial, r.serial)
            if parted is not None:
                line, a, b = parted
                where = f"line {line}" if line else "printed from another thread"
                out.append(Mismatch(m, "serial", f"{where}: {a[:60]!r}", f"{where}: {b[:60]!r}"))
        elif base.serial[:shorter] != r.serial[:shorter]:
            at = _first_difference(base.serial, r.serial)
            out.append(Mismatch(m, "serial", _excerpt(base.serial, at), _excerpt(r.serial, at)))
        if not cut and (r.exit_status, r.stop_reason) != (base.exit_status, base.stop_reason):
            out.append(Mismatch(m, "exit status", _status(base), _status(r)))
    return tuple(out)


def _linux_log(runs: Mapping[str, RunRecord], modes: tuple[str, ...]) -> bool:
    """Every run's output is a Linux boot log that is not byte for byte the baseline's."""
    base = runs[BASELINE].serial
    return (all(bootlog.is_linux(runs[m].serial) for m in modes)
            and any(runs[m].serial != base for m in modes))


def _first_difference(a: bytes, b: bytes) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def _excerpt(data: bytes, at: int, width: int = 40) -> str:
    start = max(0, at - width // 2)
    chunk = data[start:start + width]
    return f"byte {at} of {len(data)}: {chunk!r}"


def _status(r: RunRecord) -> str:
    if r.exit_status is None:
        return f"stopped: {r.stop_reason}"
    return str(r.exit_status)
