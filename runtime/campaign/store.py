"""The results folder: one file per finished cell, written whole or not at all.

`RESULTS/cells/KEY.json` holds what `bt compare --save-runs` writes for a kernel
(`{"kernel": ..., "runs": [...]}`, so `bt compare --replay` reads a baseline cell as it
is) and a `cell` block: the key, the run's mode, options and repeat, the ring1 build, and
the worker that ran it. A file is written to a temporary name in the same folder and
renamed into place (rename is atomic within a file system), so an interrupted campaign
leaves whole cells and at most some `.tmp` files, which the next run removes. Cells that
failed are not stored: a rerun tries them again.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bt.errors import InputError
from runtime.campaign.cell import CellOutcome, CellSpec
from runtime.campaign.identity import CELL_FORMAT
from runtime.report.kernel import KernelInfo
from runtime.report.record import RunRecord

TMP_SUFFIX = ".tmp"


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` whole or not at all (a temporary file beside it, then rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class StoredCell:
    key: str
    record: RunRecord
    worker: str


class ResultStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cells = root / "cells"
        #: Cell files that could not be read (damaged by hand, or another format): run again.
        self.unreadable: list[Path] = []

    def open(self) -> None:
        """Create the folder and remove what an interrupted run left half-written."""
        try:
            self.cells.mkdir(parents=True, exist_ok=True)
            for stale in self.cells.glob(f".*{TMP_SUFFIX}"):
                stale.unlink()
        except OSError as err:
            raise InputError(f"{self.root}: cannot use it as the results folder: "
                             f"{err.strerror or err}") from err

    def path(self, key: str) -> Path:
        return self.cells / f"{key}.json"

    def load(self, key: str) -> StoredCell | None:
        path = self.path(key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            cell = data["cell"]
            if cell["format"] != CELL_FORMAT or cell["key"] != key:
                raise ValueError("not this cell")
            return StoredCell(key, RunRecord.from_json(data["runs"][0]), cell.get("worker", ""))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            self.unreadable.append(path)
            return None

    def save(self, spec: CellSpec, kernel: KernelInfo, outcome: CellOutcome) -> Path:
        assert outcome.record is not None
        data: dict[str, Any] = {
            "kernel": kernel.to_json(),
            "runs": [outcome.record.to_json()],
            "cell": {"format": CELL_FORMAT, "key": spec.key, "kernel_sha256": spec.kernel_sha256,
                     "kernel_name": spec.kernel, "mode": spec.mode, "options": dict(spec.options),
                     "inputs": [vars(i) for i in spec.inputs], "repeat": spec.repeat,
                     "build": dict(spec.build), "worker": outcome.worker},
        }
        path = self.path(spec.key)
        try:
            write_atomic(path, json.dumps(data, indent=1) + "\n")
        except OSError as err:
            raise InputError(f"{path}: cannot write: {err.strerror or err}") from err
        return path

    def load_all(self, keys: Iterable[str]) -> dict[str, StoredCell]:
        found = {}
        for key in keys:
            cell = self.load(key)
            if cell is not None:
                found[key] = cell
        return found
