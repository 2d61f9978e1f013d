"""The campaign's terminal summary: kernels x configurations, rich tables or plain text.

As `runtime.report.text` does, one description serves the terminal (colours) and files
and pipes (plain, fixed width, via `plain_console`).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from runtime.campaign.model import CampaignReport, Entry, Total
from runtime.report import fmt
from runtime.report.text import plain_console


def removed(e: Entry | Total) -> str:
    """Share of the baseline's exits removed; "+N" when the configuration added N exits."""
    if isinstance(e, Total):
        added = e.exits_after - e.exits_before
        return f"+{fmt.count(added)}" if added > 0 else fmt.reduction(e.reduction)
    if e.exits_removed is not None and e.exits_removed < 0:
        return f"+{fmt.count(-e.exits_removed)}"
    return fmt.reduction(e.reduction)


def speedup(e: Entry) -> str:
    rng = e.speedup_range
    if e.speedup is None or rng is None:
        return "-"
    if len(e.runs) < 2 and e.baseline is not None and len(e.baseline.runs) < 2:
        return fmt.factor(e.speedup)
    return f"{fmt.factor(e.speedup)}\n{rng[0]:.2g}-{rng[1]:.2g}"


def status(e: Entry) -> str:
    """What stands in a table cell instead of figures that must not be read as results."""
    own = [f for f in e.flags if f.what != "baseline"]
    if any(f.what == "failed" for f in own):
        return "FAILED"
    if own:
        return "MISMATCH"
    if e.flags and e.baseline is not None:
        return f"baseline {status(e.baseline)}"
    return ""


def render(report: CampaignReport, console: Console) -> None:
    for renderable in describe(report):
        console.print(renderable)


def render_plain(report: CampaignReport) -> str:
    buffer = io.StringIO()
    render(report, plain_console(buffer))
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def _line(line: str) -> Text:
    """A line that is not wrapped: a file or a log keeps it whole, one finding per line."""
    return Text(line, no_wrap=True, overflow="ignore")


def _table(title: str, first: str) -> Table:
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, title_style="bold", pad_edge=False)
    t.add_column(first, no_wrap=True)
    return t


def describe(r: CampaignReport) -> Iterator[RenderableType]:
    c = r.cells
    yield Text(f"ring1 campaign {r.name}: {len(r.kernels)} kernel(s) x {len(r.configs)} configuration(s), "
               f"{r.repeats} run(s) each", style="bold")
    if r.description:
        yield Text(r.description)
    ran = f" on {r.executor}" if r.executor else ""
    yield Text(f"cells: {c.planned} in {r.results} ({c.reused} reused, {c.ran} run now{ran}, "
               f"{c.failed} failed)")
    yield ""
    configs = _table("Configurations", "id")
    configs.add_column("configuration")
    configs.add_column("measured against")
    for info in r.configs:
        base = "-" if info.is_baseline else next(
            (b.id for b in r.configs if b.config == info.config.baseline()), "-")
        configs.add_row(info.id, Text(info.label + (" (baseline)" if info.is_baseline else "")), base)
    yield configs
    patched = [i for i in r.configs if not i.is_baseline]
    totals = {t.config_id: t for t in r.totals}

    exits = _table("Exits removed (share of the baseline's exits; +N: exits added)", "kernel")
    exits.add_column("baseline exits", justify="right")
    for info in patched:
        exits.add_column(info.id, justify="right")
    for k in r.kernels:
        first = k.entries[0] if k.entries and k.entries[0].baseline is None else None
        exits.add_row(Text(k.name), fmt.count(first.exits) if first and first.exits is not None else "-",
                      *(status(k.entry(i.id)) or removed(k.entry(i.id)) for i in patched))
    if len(r.kernels) > 1:
        exits.add_row(Text("all (clean)", style="bold"), "",
                      *(f"{removed(totals[i.id])} ({len(totals[i.id].kernels)})" for i in patched))
    yield exits

    times = _table(f"Speedup (median wall time of the baseline / of the configuration; below it, the "
                   f"least and the most any pair of runs shows, {r.repeats} run(s) each)", "kernel")
    for info in patched:
        times.add_column(info.id, justify="right", overflow="fold")
    for k in r.kernels:
        times.add_row(Text(k.name), *(status(k.entry(i.id)) or speedup(k.entry(i.id)) for i in patched))
    if len(r.kernels) > 1:
        times.add_row(Text("geomean (clean)", style="bold"),
                      *(fmt.factor(totals[i.id].speedup_geomean) for i in patched))
    yield times

    if r.flagged:
        yield Text("Flagged (shown above, left out of every total)", style="bold red")
        for e in r.flagged:
            for f in e.flags:
                if f.what != "baseline":
                    yield _line(f"  {e.kernel} {e.config_id}: {f}")
        yield ""
    if r.failures:
        yield Text("Failed cells (not stored: a rerun tries them again)", style="bold red")
        for e, failure in r.failures:
            yield _line(f"  {e.kernel} {e.config_id}: {failure.error} (worker {failure.worker or '?'})")
        yield ""
    stops = sorted({f"{e.kernel} {e.config_id}: {e.stopped}" for e in r.entries if e.stopped})
    if stops:
        yield Text("Runs that ended in an abnormal stop", style="bold")
        for line in stops:
            yield _line(f"  {line}")
        yield ""
    yield Text(describe_timing(r))
    yield Text(f"build: ring1 {r.build.get('ring1')} (source {r.build.get('source')}), "
               f"unicorn {r.build.get('unicorn')}, plugins: {r.build.get('plugins')}")
    yield Text(f"manifest: {r.manifest} (sha256 {r.manifest_sha256[:16]}...)")


def describe_timing(r: CampaignReport) -> str:
    spreads = r.timing_spread()
    if not spreads:
        return (f"Timings: wall time of each run, {r.repeats} run(s) per cell: no spread to show "
                "(use repeats > 1 in [matrix])")
    values = sorted(s for s, _ in spreads)
    median = values[len(values) // 2]
    worst, e = spreads[0]
    return (f"Timings: wall time of each run, {r.repeats} runs per cell; spread (slowest - fastest) / "
            f"median: median {median:.0%}, widest {worst:.0%} ({e.kernel} {e.config_id})")
