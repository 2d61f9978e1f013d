"""Run each kernel in each mode, in parallel worker processes, and build the comparison.

Runs are independent (each builds its own Unicorn machine from the kernel file), so
they go to a `ProcessPoolExecutor`: Unicorn and the VMM's Python hooks hold the GIL,
and processes are what lets several runs use several cores. Results come back as
`RunRecord`s, which are plain frozen data and pickle cheaply.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bt.errors import InputError
from bt.infile import Unreadable, read_input
from runtime.report import adapter
from runtime.report.kernel import KernelInfo, load_kernel
from runtime.report.model import TOP_SITES, Comparison, KernelComparison, compare_kernel
from runtime.report.record import BASELINE, DYNAMIC, STATIC, RunRecord
from runtime.report.repro import collect
from runtime.report.variant import Variant


@dataclass(frozen=True)
class CompareOptions:
    kernels: tuple[str, ...]
    static: bool = False
    jobs: int | None = None  # None: one process per run, up to the machine's CPUs
    top: int = TOP_SITES
    #: Options every run gets (the same for the baseline and the patched runs), as `bt run` takes them.
    run: Mapping[str, Any] = field(default_factory=dict)
    #: Kernel -> a file holding its known-good guest output (`--expect`).
    expect: Mapping[str, str] = field(default_factory=dict)
    #: More dynamic runs, each with its own patch options (`--variant`), after the others.
    variants: tuple[Variant, ...] = ()

    @property
    def modes(self) -> tuple[str, ...]:
        base = (BASELINE, DYNAMIC, STATIC) if self.static else (BASELINE, DYNAMIC)
        return base + tuple(v.name for v in self.variants)

    def tasks(self, path: str) -> list[RunTask]:
        """One run per mode of kernel `path`; a variant is a dynamic run with its options."""
        out = [RunTask(path, m, dict(self.run)) for m in self.modes if m in (BASELINE, DYNAMIC, STATIC)]
        out += [RunTask(path, v.name, v.run_options(self.run), DYNAMIC) for v in self.variants]
        return out


@dataclass(frozen=True)
class RunTask:
    kernel: str
    mode: str
    run: Mapping[str, Any]
    kind: str | None = None     # how the run patches when `mode` is a variant's name


#: Called as each run starts and ends: (task, record or None while it runs).
Progress = Callable[[RunTask, "RunRecord | None"], None]


def run_all(options: CompareOptions, command: Sequence[str], progress: Progress | None = None) -> Comparison:
    """Run every kernel in every mode and compare. Raises the first run's Ring1Error."""
    # Bad files fail before any run starts.
    kernels = {path: load_kernel(path) for path in options.kernels}
    references = {path: read_reference(ref) for path, ref in options.expect.items()}
    tasks = [t for path in options.kernels for t in options.tasks(path)]
    jobs = options.jobs or min(len(tasks), os.cpu_count() or 1)
    records: dict[tuple[str, str], RunRecord] = {}
    if jobs <= 1:
        for task in tasks:
            if progress:
                progress(task, None)
            records[(task.kernel, task.mode)] = adapter.run_once(task.kernel, task.mode, task.run, task.kind)
            if progress:
                progress(task, records[(task.kernel, task.mode)])
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            pending: dict[Future[RunRecord], RunTask] = {}
            for task in tasks:
                pending[pool.submit(adapter.run_once, task.kernel, task.mode, task.run, task.kind)] = task
                if progress:
                    progress(task, None)
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        task = pending.pop(future)
                        records[(task.kernel, task.mode)] = future.result()
                        if progress:
                            progress(task, records[(task.kernel, task.mode)])
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
    compared = tuple(
        compare_kernel(kernels[path], {m: records[(path, m)] for m in options.modes}, top=options.top,
                       reference=references.get(path))
        for path in options.kernels
    )
    variants = {"variants": {v.name: dict(v.options) for v in options.variants}} if options.variants else {}
    return Comparison(compared, collect(command, {"static": options.static, "top": options.top,
                                                  **options.run, **variants}))


# Recorded runs: one JSON file per kernel, {"kernel": KernelInfo, "runs": [RunRecord...]}.
# `bt compare --save-runs DIR` writes them; `bt compare --replay FILE...` renders from them.

def runs_file_name(kernel: str | Path) -> str:
    """The file `--save-runs DIR` writes a kernel's runs to, inside DIR."""
    return f"{Path(kernel).stem}.runs.json"


def runs_documents(comparison: Comparison) -> dict[str, str]:
    """File name -> contents, for each kernel's recorded runs."""
    out = {}
    for k in comparison.kernels:
        data = {"kernel": k.kernel.to_json(), "runs": [k.runs[m].to_json() for m in k.modes]}
        out[runs_file_name(k.kernel.path)] = json.dumps(data, indent=1) + "\n"
    return out


def save_runs(comparison: Comparison, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in runs_documents(comparison).items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


def load_runs(path: str | Path) -> tuple[KernelInfo, dict[str, RunRecord]]:
    try:
        data = json.loads(read_input(path).decode("utf-8"))
    except Unreadable as err:
        raise InputError(f"{path}: {err}") from None
    return KernelInfo.from_json(data["kernel"]), {r["mode"]: RunRecord.from_json(r) for r in data["runs"]}


def read_reference(path: str) -> tuple[str, bytes]:
    try:
        return path, read_input(path)
    except Unreadable as err:
        raise InputError(f"{path}: cannot read the expected output: {err}") from None


def replay(paths: Sequence[str], command: Sequence[str], top: int = TOP_SITES,
           expect: Mapping[str, str] | None = None) -> Comparison:
    compared: list[KernelComparison] = []
    options: dict[str, Any] = {}
    for p in paths:
        kernel, runs = load_runs(p)
        ref = (expect or {}).get(p)
        compared.append(compare_kernel(kernel, runs, top=top, reference=read_reference(ref) if ref else None))
        options = dict(runs[BASELINE].options) or options
    return Comparison(tuple(compared), collect(command, {"replayed": True, **options}))
