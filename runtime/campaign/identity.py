"""What makes two runs the same run: content hashes, the ring1 build, the cell key.

A cell is stored under a hash of everything its result depends on: the kernel's bytes
(not its path), the name the guest sees on its command line, the run mode and options,
the repeat number, and the build of ring1 that runs it. The build is ring1's version and
a hash of its source (a changed ring1 never reuses another one's results), the versions
of the libraries that make the CPU model, the decoder, the assembler and the ELF reader,
and the patch-rule plugins loaded. A worker checks that its own build is the one the
campaign was planned with before it runs anything.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import bt
from bt.errors import InputError

#: The cell file format; part of every key, so a new format never reads an old file.
CELL_FORMAT = "ring1.campaign-cell/1"
#: Distributions whose version changes what a run measures (runtime.report.repro lists the
#: same ones, plus the report's own renderers, which do not touch a run).
RUN_DEPENDENCIES = ("unicorn", "capstone", "keystone-engine", "lief")
#: Packages whose source makes a run.
SOURCE_PACKAGES = ("bt", "patchmgr", "runtime")
#: Source that only reads or shows results, never runs a cell: a change there (a report's
#: wording) keeps the stored cells. `runtime/report/adapter.py`, `record.py` and `kernel.py`
#: and `runtime/campaign/cell.py` and this module make a cell's result, so they count.
#: (tests/test_campaign_units.py checks that each entry still exists.)
NOT_RUN_SOURCE = (
    "bt/cli/",
    "runtime/report/fmt.py", "runtime/report/html.py", "runtime/report/jsonout.py",
    "runtime/report/model.py", "runtime/report/repro.py", "runtime/report/runner.py",
    "runtime/report/svg.py", "runtime/report/text.py", "runtime/report/templates/",
    "runtime/campaign/executors.py", "runtime/campaign/html.py", "runtime/campaign/jsonout.py",
    "runtime/campaign/manifest.py", "runtime/campaign/matrix.py", "runtime/campaign/model.py",
    "runtime/campaign/plan.py", "runtime/campaign/runner.py", "runtime/campaign/store.py",
    "runtime/campaign/text.py", "runtime/campaign/templates/",
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Blob:
    """A file's content and hash: what travels to a worker instead of a path."""

    name: str  # the file's own name, without its folder
    sha256: str
    data: bytes = b""

    @classmethod
    def read(cls, path: Path) -> Blob:
        try:
            data = path.read_bytes()
        except OSError as err:
            raise InputError(f"{path}: cannot read: {err.strerror or err}") from err
        return cls(path.name, sha256(data), data)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def source_root() -> Path:
    return Path(bt.__file__).resolve().parent.parent


def source_hash() -> str:
    """SHA-256 over the Python source that makes a run (file names and contents, sorted)."""
    root = source_root()
    h = hashlib.sha256()
    for package in SOURCE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel.startswith(NOT_RUN_SOURCE) or "__pycache__" in rel:
                continue
            h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@functools.cache
def build() -> Mapping[str, str]:
    """This process's ring1 build, as the cell key and the worker check use it."""
    from patchmgr import registry

    plugins = sorted(f"{i.rule.name} ({i.origin} {_version(i.origin)})"
                     for i in registry.load().infos if i.origin != "built-in")
    return {
        "ring1": bt.__version__,
        "source": source_hash()[:16],
        **{d: _version(d) for d in RUN_DEPENDENCIES},
        "plugins": ", ".join(plugins) or "none",
    }


def build_differences(mine: Mapping[str, str], theirs: Mapping[str, str]) -> list[str]:
    """What differs between two builds, one "name: a here, b there" per entry."""
    return [f"{k}: {mine.get(k, '-')} here, {theirs.get(k, '-')} in the campaign"
            for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]


def cell_key(*, kernel_sha256: str, mode: str, options: Mapping[str, Any], repeat: int,
             build: Mapping[str, str], inputs: Mapping[str, str] | None = None) -> str:
    """The hash a cell is stored under. `options` holds every run option, the name the
    guest sees included; `inputs` maps each further input file (none yet) to its hash."""
    identity = {"format": CELL_FORMAT, "kernel": kernel_sha256, "inputs": dict(inputs or {}),
                "mode": mode, "options": dict(options), "repeat": repeat, "build": dict(build)}
    return sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode())
