"""Where cells run: local worker processes, or a Dask cluster through its concurrent.futures executor.

Both give `concurrent.futures.Future`s of `CellOutcome`s, and `run_cells` drives either
the same way: it keeps as many cells in flight as the executor has workers (so "running"
in the progress display is what runs, and an interrupt has little to cancel), hands each
outcome to the caller as it arrives, and sends a cell whose worker was lost once more.

Local workers are spawned (not forked: the parent may hold threads, e.g. the progress
display's) in their own session, so the terminal's Ctrl-C reaches only `bt campaign`,
which then stops them; a run in a worker is never interrupted halfway into a result.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Any, Protocol

from bt.errors import UsageError
from runtime.campaign.cell import CellOutcome, CellSpec, run_cell
from runtime.campaign.identity import Blob

#: Times a cell is sent to a worker before its loss counts as a failure.
MAX_ATTEMPTS = 2


class Executor(Protocol):
    description: str

    def slots(self) -> int:
        """Cells that can run at once."""
        ...

    def submit(self, spec: CellSpec, kernel: Blob, inputs: Sequence[Blob]) -> Future[CellOutcome]: ...

    def lost(self, spec: CellSpec, err: BaseException) -> None:
        """A cell's future failed without an outcome (its worker died): repair what it needs."""
        ...

    def close(self, cancel: bool) -> None: ...


def _detach() -> None:
    """Worker start-up: leave the terminal's process group, so Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.setsid()


class LocalExecutor:
    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self.description = f"local, {jobs} worker process{'es' if jobs > 1 else ''}"
        self.pool = self._pool()

    def _pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.jobs, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_detach)

    def slots(self) -> int:
        return self.jobs

    def submit(self, spec: CellSpec, kernel: Blob, inputs: Sequence[Blob]) -> Future[CellOutcome]:
        data = [b.data for b in inputs]
        try:
            return self.pool.submit(run_cell, spec, kernel.data, data)
        except BrokenProcessPool:  # a worker died (killed, out of memory): start a fresh pool
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._pool()
            return self.pool.submit(run_cell, spec, kernel.data, data)

    def lost(self, spec: CellSpec, err: BaseException) -> None:
        pass  # the next submit replaces a broken pool

    def close(self, cancel: bool) -> None:
        if cancel:
            # Stop the workers now rather than after their current cell (its result would be
            # dropped anyway). ProcessPoolExecutor has no public way before Python 3.14.
            terminate = getattr(self.pool, "terminate_workers", None)
            if terminate is not None:
                terminate()
            else:
                for process in list(getattr(self.pool, "_processes", {}).values()):
                    process.terminate()
        self.pool.shutdown(wait=True, cancel_futures=cancel)


class DaskExecutor:
    """Cells on a Dask distributed cluster, through `Client.get_executor()`. Kernels and
    inputs go to the cluster once each by content (`Client.scatter`, keyed by hash)."""

    def __init__(self, address: str) -> None:
        try:
            from distributed import Client
        except ImportError as err:
            raise UsageError("--dask needs Dask's distributed package: pip install 'ring1[dask]'") from err
        try:
            # How long to try: Dask's own setting (distributed.comm.timeouts.connect, 30 s unless
            # DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT says otherwise).
            self.client = Client(address, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as err:
            raise UsageError(f"--dask {address}: cannot reach the scheduler: {err}") from err
        self.address = address
        self.executor = self.client.get_executor(pure=False)
        self._shipped: dict[str, Any] = {}
        self._slots, self._asked = 1, float("-inf")
        workers = len(self.client.nthreads())
        self.description = f"dask {address}, {workers} worker{'s' if workers != 1 else ''} at start"

    def slots(self) -> int:
        # Workers may join or leave while the campaign runs; ask the scheduler at most once a second.
        now = time.monotonic()
        if now - self._asked >= 1.0:
            self._slots = max(1, sum(self.client.nthreads().values()))
            self._asked = now
        return self._slots

    def _ship(self, blob: Blob) -> Any:
        if blob.sha256 not in self._shipped:
            self._shipped[blob.sha256] = self.client.scatter(blob.data, hash=True)
        return self._shipped[blob.sha256]

    def submit(self, spec: CellSpec, kernel: Blob, inputs: Sequence[Blob]) -> Future[CellOutcome]:
        return self.executor.submit(run_cell, spec, self._ship(kernel), [self._ship(b) for b in inputs])

    def lost(self, spec: CellSpec, err: BaseException) -> None:
        # The worker holding a scattered kernel may be the one that died: scatter again.
        self._shipped.pop(spec.kernel_sha256, None)
        for ref in spec.inputs:
            self._shipped.pop(ref.sha256, None)

    def close(self, cancel: bool) -> None:
        try:
            self.executor.shutdown(wait=not cancel)
        finally:
            self.client.close()


def run_cells(specs: Sequence[CellSpec], files: Callable[[CellSpec], tuple[Blob, Sequence[Blob]]],
              executor: Executor, started: Callable[[CellSpec], None],
              finished: Callable[[CellSpec, CellOutcome], None]) -> None:
    """Run every cell; call `started` as each is sent (again if it is sent again) and
    `finished` with its outcome, in this thread. The caller closes the executor: with
    `cancel=True` when this raises (KeyboardInterrupt included)."""
    queue: deque[tuple[CellSpec, int]] = deque((s, 1) for s in specs)
    flight: dict[Future[CellOutcome], tuple[CellSpec, int]] = {}

    def fill() -> None:
        while queue and len(flight) < executor.slots():
            spec, attempt = queue.popleft()
            kernel, inputs = files(spec)
            flight[executor.submit(spec, kernel, inputs)] = (spec, attempt)
            started(spec)

    while queue or flight:
        fill()
        done, _ = wait(flight, return_when=FIRST_COMPLETED)
        outcomes = []
        for future in done:
            spec, attempt = flight.pop(future)
            try:
                outcomes.append((spec, replace(future.result(), attempts=attempt)))
            except Exception as err:  # no outcome: the worker or the connection was lost
                executor.lost(spec, err)
                if attempt < MAX_ATTEMPTS:
                    queue.appendleft((spec, attempt + 1))
                    continue
                why = (str(err).splitlines() or [""])[0]
                outcomes.append((spec, CellOutcome(spec.key, None, error=f"lost {attempt} times, last: "
                                                   f"{type(err).__name__}: {why}", exit_code=8,
                                                   attempts=attempt)))
        fill()  # keep the workers busy while the finished cells are stored
        for spec, outcome in outcomes:
            finished(spec, outcome)
