"""`bt campaign MANIFEST`: many kernels x many configurations, one report (docs/campaign.md).

Parses arguments, shows progress and writes the outputs; the manifest, the cells, the
executors and the report live in `runtime.campaign`.

Exit code: 0 when every cell ran and every run gave its baseline's guest output and exit
status (and the expected output, where the manifest names one); 6 when a run did not (the
report is still written, the run flagged); 4 when runs agree on an abnormal stop; for
cells that could not run, the worst of their errors' codes (8 for a bug in ring1 or a
lost worker, 2 for a worker with another ring1 build); 2 for a bad manifest or file;
130 when interrupted (every finished cell is stored: run it again to go on).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bt.errors import GuestStop, InputError, InternalError, MismatchError, Ring1Error, UsageError


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "campaign", help="run many kernels in many configurations and report them together",
        description="Run every kernel of a TOML manifest in every configuration of its matrix (patching "
                    "mode, --hot, disabled rules and classes, repeats), store each run as it finishes, "
                    "and report exits removed, speedups and mismatches for all of them (docs/campaign.md).")
    p.add_argument("manifest", type=Path, metavar="MANIFEST", help="the campaign manifest (TOML)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--jobs", "-j", type=int, default=None, metavar="N",
                       help="local worker processes (default: one per CPU)")
    where.add_argument("--dask", metavar="ADDRESS",
                       help="run the cells on a Dask cluster, e.g. tcp://scheduler:8786 "
                            "(pip install 'ring1[dask]')")
    p.add_argument("--results", type=Path, metavar="DIR",
                   help="the results folder (default: the manifest's [report] results, else ./NAME.results)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the report as JSON (ring1.campaign/1)")
    p.add_argument("--html", type=Path, metavar="FILE",
                   help="write a self-contained HTML report (each kernel's compare reports go to "
                        "FILE-kernels/ beside it)")
    p.add_argument("--plan", action="store_true",
                   help="list the configurations and how many cells are stored and left to run; run nothing")
    p.set_defaults(handler=run_campaign)


class _Progress:
    """Cells done, running and failed, with an ETA: a live bar on a terminal (stderr), one
    plain line per finished cell otherwise (CI logs)."""

    def __init__(self, describe: Any, live: Any = None) -> None:
        self.describe = describe
        self.live = live  # (rich Progress, task id) on a terminal
        self.to_run = 0
        self.done = 0
        self.failed = 0
        self.running: dict[str, str] = {}
        self.start = time.monotonic()

    def begin(self, to_run: int, reused: int) -> None:
        self.to_run = to_run
        self.start = time.monotonic()
        line = f"bt campaign: {to_run} cell(s) to run, {reused} reused from the results folder"
        if self.live:
            progress, task = self.live
            progress.update(task, total=to_run)
            progress.console.print(line.removeprefix("bt campaign: "))
        else:
            print(line, file=sys.stderr, flush=True)

    def started(self, spec: Any) -> None:
        self.running[spec.key] = self.describe(spec.key)
        self._update()

    def finished(self, spec: Any, outcome: Any) -> None:
        from runtime.report import fmt

        self.running.pop(spec.key, None)
        self.done += 1
        name = self.describe(spec.key)
        if outcome.record is None:
            self.failed += 1
            what = f"FAILED {name}: {outcome.error}"
        else:
            r = outcome.record
            what = f"{name}: {fmt.seconds(r.timing.wall)}, {fmt.count(r.total_exits)} exits"
        if self.live:
            progress, task = self.live
            progress.advance(task)
            if outcome.record is None:
                progress.console.print(f"[red]{what}[/]", markup=True, highlight=False)
        else:
            print(f"bt campaign: [{self.done}/{self.to_run}] {what} ({len(self.running)} running, "
                  f"{self.failed} failed, ETA {self._eta()})", file=sys.stderr, flush=True)
        self._update()

    def _eta(self) -> str:
        if not self.done:
            return "-"
        left = (time.monotonic() - self.start) / self.done * (self.to_run - self.done)
        return f"{int(left) // 60}m{int(left) % 60:02d}s"

    def _update(self) -> None:
        if self.live:
            progress, task = self.live
            # The cells running now, in what room the bar and the counts leave on the line.
            room = progress.console.width - 95
            names = ", ".join(sorted(self.running.values()))
            if len(names) > room:
                names = names[:max(room - 3, 0)] + "..." if room > 12 else ""
            progress.update(task, description=f"running {len(self.running)}, failed {self.failed}",
                            names=names)


@contextmanager
def _progress(describe: Any) -> Iterator[_Progress]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    if not console.is_terminal:
        yield _Progress(describe)
        return
    with Progress(SpinnerColumn(), TextColumn("cells"), BarColumn(bar_width=24), MofNCompleteColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(), TextColumn("ETA"),
                  TimeRemainingColumn(), TextColumn("[dim]{task.fields[names]}"),
                  console=console, transient=True) as progress:
        task = progress.add_task("running 0, failed 0", total=None, names="")
        yield _Progress(describe, (progress, task))


def _command(args: argparse.Namespace) -> list[str]:
    out = ["campaign", str(args.manifest)]
    for name in ("jobs", "dask", "results", "json", "html"):
        value = getattr(args, name)
        if value is not None:
            out += [f"--{name}", str(value)]
    return out


def _check_output(path: Path | None, what: str) -> None:
    """Before anything runs: an output that cannot be written is one line, not a lost campaign."""
    if path is None:
        return
    if not path.parent.is_dir():
        raise UsageError(f"{what} {path}: the folder {path.parent} does not exist")
    if path.is_dir():
        raise UsageError(f"{what} {path}: is a folder")


def run_campaign(args: argparse.Namespace) -> int:
    from runtime.campaign import executors, html, jsonout, manifest, model, runner, text
    from runtime.campaign.plan import make_plan
    from runtime.campaign.store import ResultStore, write_atomic
    from runtime.report import adapter
    from runtime.report.repro import collect

    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    m = manifest.load(args.manifest)
    results = args.results or m.report.results or Path(f"{m.path.stem}.results")
    json_out = args.json or m.report.json
    html_out = args.html or m.report.html
    _check_output(json_out, "--json")
    _check_output(html_out, "--html")
    reason = adapter.unavailable(static=any(c.mode == "static" for c in m.matrix.configs()))
    if reason:
        raise UsageError(f"cannot run the campaign: {reason}")
    plan = make_plan(m)
    store = ResultStore(results)

    if args.plan:
        stored, todo = runner.pending(plan, store)
        for c in plan.configs:
            print(f"{plan.config_id(c):>4}  {plan.label(c)}{' (baseline)' if c.is_baseline else ''}")
        print(f"{len(plan.kernels)} kernel(s) x {len(plan.configs)} configuration(s) x {m.matrix.repeats} "
              f"run(s): {len(plan.cells)} cell(s), {len(stored)} stored in {results}, {len(todo)} to run")
        return 0

    def make() -> executors.Executor:
        if args.dask:
            return executors.DaskExecutor(args.dask)
        return executors.LocalExecutor(args.jobs or os.cpu_count() or 1)

    with _progress(plan.describe) as progress:
        done = runner.execute(plan, store, make, progress)
    for path in store.unreadable:
        print(f"bt campaign: {path}: unreadable cell file, ran the cell again", file=sys.stderr)
    report = model.build_report(plan, done.records, done.failures, results=str(results), cells=done.counts,
                                executor=done.executor, repro=collect(_command(args), {}))
    try:
        if json_out:
            write_atomic(json_out, jsonout.dumps(report))
        if html_out:
            html.write(report, html_out)
    except OSError as err:
        raise InputError(f"cannot write the report: {err}") from err
    if sys.stdout.isatty():
        from rich.console import Console

        text.render(report, Console())
    else:
        sys.stdout.write(text.render_plain(report))
    sys.stdout.flush()
    return _verdict(report)


def _verdict(report: Any) -> int:
    if report.failures:
        code = max(f.exit_code for _, f in report.failures)
        error: type[Ring1Error] = {2: UsageError, 8: InternalError}.get(code, InternalError)
        raise error(f"{len(report.failures)} cell(s) could not run (see 'Failed cells' above); "
                    "run the campaign again to retry them")
    if not report.ok:
        raise MismatchError(f"{len(report.flagged)} kernel/configuration pair(s) flagged: their runs did not "
                            "give the same guest output or exit status (see 'Flagged' above)")
    stops = sorted({e.stopped for e in report.entries if e.stopped})
    if stops:
        raise GuestStop("every run of a kernel stopped the same abnormal way", detail="; ".join(stops))
    return 0
