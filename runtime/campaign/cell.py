"""One cell of a campaign: one run of one kernel in one configuration, on a worker.

What travels to the worker is a `CellSpec` (plain data) and the bytes of the kernel and
of each input file, checked against their hashes there; no path of the machine that
planned the campaign is ever opened on the worker. The worker writes the files into a
private temporary folder under their own names, runs them with
`runtime.report.adapter.run_once` (the run `bt compare` makes) and sends back a
`CellOutcome`: the `RunRecord`, or one line saying why the cell could not run.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bt.errors import InternalError, Ring1Error, UsageError
from runtime.campaign import identity
from runtime.report.record import RunRecord


@dataclass(frozen=True)
class InputRef:
    """An input file a run takes by path (a disk image, a module): its option and content."""

    option: str  # the run option that gets the file's path, as `bt run` names it
    name: str  # the file's own name
    sha256: str
    many: bool = True  # the option takes a list of paths (`--disk A --disk B`), else one path


@dataclass(frozen=True)
class CellSpec:
    key: str
    kernel: str  # the kernel's file name: written under it, and the name the guest sees
    kernel_sha256: str
    mode: str  # runtime.report.record mode
    options: Mapping[str, Any]  # run options for run_once
    repeat: int
    build: Mapping[str, str]  # the ring1 build the campaign was planned with
    inputs: tuple[InputRef, ...] = ()


@dataclass(frozen=True)
class CellOutcome:
    key: str
    record: RunRecord | None
    error: str = ""  # one line, when the cell could not run
    exit_code: int = 0  # the error's exit code (bt/errors.py)
    detail: str = ""  # the worker's traceback of an unexpected error
    worker: str = ""  # host:pid of the process that ran it
    attempts: int = 1  # times the cell was sent to a worker (a lost worker costs one)

    @property
    def ok(self) -> bool:
        return self.record is not None


def _safe_name(name: str) -> str:
    # The name comes from the planner, but a worker never writes outside its own folder.
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UsageError(f"{name!r} is not a plain file name")
    return name


def _check(blob: bytes, sha256: str, what: str) -> None:
    if identity.sha256(blob) != sha256:
        raise InternalError(f"{what} arrived with sha256 {identity.sha256(blob)[:16]}..., "
                            f"not {sha256[:16]}...")


def run_cell(spec: CellSpec, kernel: bytes, inputs: Sequence[bytes] = ()) -> CellOutcome:
    """Run one cell in this process (a worker); `inputs` are the bytes of `spec.inputs`, in
    order. Never raises for a failed run: the outcome says what went wrong, so every
    executor reports failures the same way."""
    from runtime.report import adapter

    worker = f"{socket.gethostname()}:{os.getpid()}"
    data = list(inputs)
    try:
        differences = identity.build_differences(identity.build(), spec.build)
        if differences:
            raise UsageError(f"worker {worker} runs another ring1 build than the campaign "
                             f"({'; '.join(differences)}): install the same ring1 everywhere")
        _check(kernel, spec.kernel_sha256, f"kernel {spec.kernel}")
        if len(data) != len(spec.inputs):
            raise InternalError(f"{len(data)} input file(s) arrived for {len(spec.inputs)}")
        with tempfile.TemporaryDirectory(prefix="ring1-cell-") as tmp:
            folder = Path(tmp)
            path = folder / _safe_name(spec.kernel)
            path.write_bytes(kernel)
            options = dict(spec.options)
            for i, (ref, blob) in enumerate(zip(spec.inputs, data, strict=True)):
                _check(blob, ref.sha256, f"input {ref.name}")
                # Each input in its own folder: two inputs may share a name.
                where = folder / f"input{i}"
                where.mkdir()
                (where / _safe_name(ref.name)).write_bytes(blob)
                if ref.many:
                    options.setdefault(ref.option, []).append(str(where / ref.name))
                else:
                    options[ref.option] = str(where / ref.name)
            record = adapter.run_once(str(path), spec.mode, options)
        # The record keeps the options as planned, not this worker's temporary paths.
        record = dataclasses.replace(record, options=dict(spec.options))
        return CellOutcome(spec.key, record, worker=worker)
    except Ring1Error as err:
        return CellOutcome(spec.key, None, error=str(err), exit_code=err.exit_code,
                           detail=traceback.format_exc(), worker=worker)
    except Exception as err:  # a bug in ring1: one line here, the trace for --traceback
        return CellOutcome(spec.key, None, error=f"internal error: {type(err).__name__}: {err}",
                           exit_code=8, detail=traceback.format_exc(), worker=worker)
