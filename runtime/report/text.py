"""The terminal report: rich tables, plain text when the output is not a terminal.

`rich.console.Console` drops colour and styles by itself when its file is not a
TTY, so the same code gives the terminal view and the text of the golden files.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterator
from typing import IO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from runtime.report import fmt
from runtime.report.model import Comparison, Counts, KernelComparison, host_cut
from runtime.report.record import BASELINE

#: Width used when the output is not a terminal, so that files and goldens don't
#: depend on the COLUMNS of whoever ran the command.
PLAIN_WIDTH = 120


def plain_console(file: IO[str] | None = None) -> Console:
    """A console for files and pipes: no colour, fixed width."""
    return Console(file=file, width=PLAIN_WIDTH, color_system=None, force_terminal=False,
                   highlight=False, emoji=False, soft_wrap=False)


def render(comparison: Comparison, console: Console) -> None:
    for renderable in describe(comparison):
        console.print(renderable)


def render_plain(comparison: Comparison) -> str:
    """The report as plain text: what a pipe or a file gets, and what golden files hold.
    Trailing blanks (rich pads table cells) are dropped so files diff cleanly."""
    buffer = io.StringIO()
    console = plain_console(buffer)
    # Variants (`--variant`) add runs, hence columns: widen rather than cut names short.
    runs = max((len(k.modes) for k in comparison.kernels), default=0)
    console.width = PLAIN_WIDTH + 28 * max(0, runs - 3)
    render(comparison, console)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def describe(comparison: Comparison) -> Iterator[RenderableType]:
    if len(comparison.kernels) > 1:
        yield describe_summary(comparison)
        yield ""
    for k in comparison.kernels:
        yield describe_kernel(k)
        yield ""
    yield describe_repro(comparison)


def _table(title: str, *columns: str, numeric_from: int = 1) -> Table:
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, title_style="bold", pad_edge=False)
    for i, c in enumerate(columns):
        t.add_column(c, justify="right" if i >= numeric_from else "left", no_wrap=i < numeric_from)
    return t


def _count_columns(k: KernelComparison) -> list[str]:
    cols = [BASELINE]
    for m in k.patched_modes:
        cols += [m, f"{m} reduction"]
    return cols


def _count_cells(row: Counts, k: KernelComparison) -> list[str]:
    cells = [fmt.count(row.before)]
    for m in k.patched_modes:
        cells += [fmt.count(row.counts[m]), fmt.change(row.counts, m)]
    return cells


def describe_summary(comparison: Comparison) -> Table:
    """One line per kernel: total exits before and after, speedup, and whether output matched."""
    modes = [m for m in comparison.kernels[0].patched_modes]
    for k in comparison.kernels[1:]:
        modes += [m for m in k.patched_modes if m not in modes]
    cols = ["kernel", "exits " + BASELINE]
    for m in modes:
        cols += [f"exits {m}", f"{m} reduction", f"{m} speedup"]
    t = _table(f"{len(comparison.kernels)} kernels", *cols, "output")
    for k in comparison.kernels:
        cells = [k.name, fmt.count(k.total.before)]
        for m in modes:
            if m in k.modes:
                cells += [fmt.count(k.total.counts[m]), fmt.change(k.total.counts, m),
                          fmt.factor(k.speedup(m))]
            else:
                cells += ["-", "-", "-"]
        # "not expected": the runs agree with each other, but not with --expect.
        cells.append("MISMATCH" if not k.agree else "same" if k.ok else "not expected")
        t.add_row(*cells, style=None if k.ok else "bold red")
    return t


def describe_kernel(k: KernelComparison) -> Group:
    parts: list[RenderableType] = [
        Text(f"{k.name}  {k.kernel.path}", style="bold"),
        Text(f"sha256 {k.kernel.sha256}"),
        describe_outcome(k),
        *([describe_reference(k)] if k.reference else []),
        describe_counts(k, "Exits by kind", "kind", k.by_kind, with_total=True),
        describe_counts(k, "Exits by instruction class", "class", k.by_class),
        describe_sites(k),
    ]
    parts += [describe_patches(k, m) for m in k.patched_modes]
    parts.append(describe_timing(k))
    return Group(*parts)


def describe_reference(k: KernelComparison) -> Text:
    ref = k.reference
    assert ref is not None
    good, bad = k.reference_split()
    line = f"Expected output ({ref.path}, {ref.size:,} bytes): "
    if not bad:
        return Text(line + "produced by every run.")
    return Text(line + f"produced by {', '.join(good) or 'no run'}; NOT by {', '.join(bad)}.",
                style="bold red")


def describe_outcome(k: KernelComparison) -> Text:
    base = k.runs[BASELINE]
    status = (f"exit status {base.exit_status}" if base.exit_status is not None
              else f"stopped: {base.stop_reason}")
    runs = ", ".join(k.modes)
    if k.agree and all(host_cut(k.runs[m]) for m in k.modes):
        shared = min(len(k.runs[m].serial) for m in k.modes)
        limit = base.stop_reason.split(": ", 1)[-1]
        return Text(f"Every run was cut by a limit, each where it had got to ({limit}); the guest "
                    f"output they share ({shared:,} bytes) is the same: {runs}.")
    if k.agree and k.linux_log:
        return Text(f"Same Linux boot log, compared line by line without printk's timestamps and the "
                    f"lines that measure time (bt/bootlog.py), and {status} in every run: {runs}.")
    if k.agree:
        return Text(f"Same guest output ({len(base.serial):,} bytes) and {status} in every run: {runs}.")
    lines = Text(f"MISMATCH: the runs disagree ({len(k.mismatches)} difference(s)); "
                 "the counts below compare runs that did not do the same work.\n", style="bold red")
    for mm in k.mismatches:
        lines.append(f"  {mm.mode}: {mm.what} differs\n"
                     f"    {BASELINE}: {mm.expected}\n    {mm.mode}: {mm.got}\n", style="red")
    return lines


def describe_counts(k: KernelComparison, title: str, what: str, rows: tuple[Counts, ...],
                    with_total: bool = False) -> Table:
    t = _table(title, what, *_count_columns(k))
    for row in rows:
        t.add_row(row.key, *_count_cells(row, k))
    if with_total:
        t.add_section()
        t.add_row("total", *_count_cells(k.total, k), style="bold")
    if not rows:
        t.add_row("(no exits)", *["" for _ in _count_columns(k)])
    return t


def describe_sites(k: KernelComparison) -> Table:
    title = f"Hot sites (top {len(k.sites)} of {k.site_count})"
    patch_cols = [f"patch {m}" for m in k.patched_modes]
    t = _table(title, "address", "symbol", "instruction", *k.modes, *patch_cols, numeric_from=3)
    for s in k.sites:
        t.add_row(fmt.address(s.address), s.symbol, s.text, *[fmt.count(s.counts[m]) for m in k.modes],
                  *[s.patch.get(m, "-") for m in k.patched_modes])
    return t


#: More patches than this (a Linux kernel has about 1,000): the terminal lists only the
#: refused and unpatched ones and those with a reason (an INT3 for a JMP), and counts the
#: active ones by rule (`_patch_exceptions`); the whole table is in --json and --html.
PATCH_ROWS = 200


def describe_patches(k: KernelComparison, mode: str) -> Table:
    patches = k.patches[mode]
    if len(patches) > PATCH_ROWS:
        return _patch_exceptions(k, mode)
    active = sum(1 for p in patches if p.status == "active")
    t = _table(f"Patch table ({mode}): {active} active of {len(patches)}",
               "address", "symbol", "instruction", "rule", "kind", "size", "status", "reason", numeric_from=5)
    t.columns[5].justify = "right"
    t.columns[6].justify = "left"
    t.columns[7].justify = "left"
    for p in patches:
        t.add_row(fmt.address(p.address), k.kernel.describe(p.address), p.text, p.rule, p.kind,
                  str(p.size), p.status, p.reason or "")
    if not patches:
        t.add_row("(no patches)", *[""] * 7)
    unscanned = sum(1 for p in patches if p.status == "unpatched")
    if unscanned:
        t.caption = (f"{unscanned} site(s) ran unpatched because the scan never reached them "
                     "(status unpatched)")
        t.caption_justify = "left"
    return t


def _patch_exceptions(k: KernelComparison, mode: str) -> Table:
    """A table too long for a terminal (`PATCH_ROWS`): the sites that were refused, ran
    unpatched or got an INT3 for a reason, each with it, and the active ones counted by rule."""
    patches = k.patches[mode]
    active = [p for p in patches if p.status == "active"]
    shown = [p for p in patches if p.status != "active" or p.reason]
    t = _table(f"Patch table ({mode}): {len(active)} active of {len(patches)}; the {len(shown)} "
               "refused, unpatched or with a reason", "address", "symbol", "instruction", "patch", "reason",
               numeric_from=4)
    t.columns[0].min_width = 10
    t.columns[3].min_width = 9
    t.columns[4].justify = "left"
    t.columns[1].max_width = 30
    t.columns[1].overflow = "ellipsis"
    t.columns[2].max_width = 20
    t.columns[2].overflow = "ellipsis"
    t.columns[4].min_width = 34
    for p in shown:
        t.add_row(fmt.address(p.address), k.kernel.describe(p.address), p.text,
                  p.kind if p.status == "active" else p.status, p.reason or "")
    by_rule = Counter(p.rule for p in active)
    t.caption = ("active by rule: " + ", ".join(f"{r} {n:,}" for r, n in by_rule.most_common())
                 + "; every row with its rule, kind and size: --json, --html")
    t.caption_justify = "left"
    return t


def describe_timing(k: KernelComparison) -> Table:
    t = _table("Time", "run", "wall", "in guest", "in VMM", "exits", "VMM per exit",
               "guest instructions (at least)", "speedup")
    for r in k.timings:
        t.add_row(r.mode, fmt.seconds(r.wall), fmt.seconds(r.guest), fmt.seconds(r.vmm), fmt.count(r.exits),
                  fmt.micros(r.us_per_exit), fmt.maybe_count(r.guest_instructions),
                  fmt.factor(k.speedup(r.mode)))
    return t


def describe_repro(comparison: Comparison) -> Table:
    r = comparison.repro
    t = Table(title="Reproducibility", title_justify="left", box=box.SIMPLE_HEAD, title_style="bold",
              show_header=False, pad_edge=False)
    t.add_column(no_wrap=True)
    t.add_column()
    t.add_row("ring1", r.ring1)
    t.add_row("python", r.python)
    t.add_row("platform", r.platform)
    for name, version in r.dependencies.items():
        t.add_row(name, version)
    t.add_row("command", "bt " + " ".join(r.command))
    for key, value in r.options.items():
        t.add_row(f"option {key}", str(value))
    for rule in r.rules:
        t.add_row(f"rule {rule['name']}", f"{rule['distribution']} {rule['version']}: "
                                          f"{', '.join(rule['classes']) or '(no class)'}")
    for warning in r.rule_warnings:
        t.add_row("rule warning", warning)
    for k in comparison.kernels:
        t.add_row(f"sha256 {k.name}", k.kernel.sha256)
    return t
