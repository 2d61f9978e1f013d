"""Run a planned campaign: reuse the stored cells, run the others, store each as it finishes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from runtime.campaign.cell import CellOutcome, CellSpec
from runtime.campaign.executors import Executor, run_cells
from runtime.campaign.identity import Blob
from runtime.campaign.model import CellCounts
from runtime.campaign.plan import Plan
from runtime.campaign.store import ResultStore
from runtime.report.record import RunRecord


class Progress(Protocol):
    def begin(self, to_run: int, reused: int) -> None: ...

    def started(self, spec: CellSpec) -> None: ...

    def finished(self, spec: CellSpec, outcome: CellOutcome) -> None: ...


@dataclass(frozen=True)
class Execution:
    records: dict[str, RunRecord]  # every finished cell, stored before or run now
    failures: dict[str, CellOutcome]
    counts: CellCounts
    executor: str  # where the cells of this invocation ran ("" when none had to)


def pending(plan: Plan, store: ResultStore) -> tuple[dict[str, RunRecord], list[CellSpec]]:
    """The cells already stored, and the others in the order they run."""
    stored = {key: cell.record for key, cell in store.load_all(plan.cells).items()}
    order = list(dict.fromkeys(s.key for s in plan.slots))
    return stored, [plan.cells[k] for k in order if k not in stored]


def execute(plan: Plan, store: ResultStore, make_executor: Callable[[], Executor],
            progress: Progress) -> Execution:
    store.open()
    records, todo = pending(plan, store)
    reused = len(records)
    progress.begin(len(todo), reused)
    failures: dict[str, CellOutcome] = {}
    if not todo:
        return Execution(records, failures, CellCounts(len(plan.cells), reused, 0, 0), "")

    def files(spec: CellSpec) -> tuple[Blob, Sequence[Blob]]:
        owner = plan.owner(spec.key)
        return owner.blob, owner.inputs

    def finished(spec: CellSpec, outcome: CellOutcome) -> None:
        if outcome.record is not None:
            store.save(spec, plan.owner(spec.key).info, outcome)
            records[spec.key] = outcome.record
        else:
            failures[spec.key] = outcome
        progress.finished(spec, outcome)

    executor = make_executor()
    try:
        run_cells(todo, files, executor, progress.started, finished)
    except BaseException:
        executor.close(cancel=True)
        raise
    executor.close(cancel=False)
    ran = len(todo) - len(failures)
    return Execution(records, failures, CellCounts(len(plan.cells), reused, ran, len(failures)),
                     executor.description)
