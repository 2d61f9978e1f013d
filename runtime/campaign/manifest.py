"""A campaign manifest: which kernels, which configurations, what to report (docs/campaign.md).

Manifests are TOML, read with the standard library's `tomllib`; YAML is not taken (it
would be a new dependency for the same tables). Every key is checked here, before
anything runs: an unknown key, a kernel glob that matches nothing or a bad value is one
line naming the manifest and the place, as `InputError` (exit 2). Paths in a manifest are
relative to the manifest's folder.
"""

from __future__ import annotations

import difflib
import glob
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bt.errors import InputError, UsageError
from runtime.campaign import matrix
from runtime.campaign.identity import sha256

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with tomli (a dependency there)
    import tomli as tomllib


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return value


def _positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{value!r} is not a positive integer")
    return value


def _positive_seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
        raise ValueError(f"{value!r} is not a positive number of seconds")
    return float(value)


#: Options of a kernel's runs, as `bt run` takes them (the run option's name in
#: `runtime.report.adapter.run_once`), allowed per kernel and in `[defaults]`.
RUN_OPTIONS: Mapping[str, tuple[Callable[[object], Any], str]] = {
    "cmdline": (_text, "the kernel's command line (after its name)"),
    "max_insns": (_positive_int, "stop a run after N guest instructions (deterministic)"),
    "timeout": (_positive_seconds, "stop a run after S wall-clock seconds (not deterministic)"),
}


@dataclass(frozen=True)
class FileInput:
    """An input file a run takes by path: it travels to the workers by content."""

    doc: str
    flag: str  # the `bt run` flag
    field: str  # the RunConfig field that takes it: the input exists when the field does
    many: bool  # a list of files (`--disk A --disk B`) or one


#: Input files by their run option (as `runtime.report.adapter.run_once` takes it). A guest
#: must never see where a worker keeps the file: a disk image and the keys typed are
#: content only. A multiboot module is not taken: the guest reads its path as the module's
#: string (QEMU's `-initrd "FILE ARGS"`), and a worker's path is its own.
FILE_INPUTS: Mapping[str, FileInput] = {
    "disk": FileInput("IDE disk images, master first", "bt run --disk", "disks", many=True),
    "keys": FileInput("a text file of keys typed on the PS/2 keyboard", "bt run --keys", "keys", many=False),
}
#: Inputs the issue names that a campaign cannot pass yet, and why.
NOT_YET = {"module": "a module's string is its path, which differs from worker to worker"}


def available_inputs() -> dict[str, FileInput]:
    """The file inputs this ring1's runs take (their RunConfig field exists)."""
    from runtime.config import RunConfig

    return {k: f for k, f in FILE_INPUTS.items() if f.field in RunConfig.__dataclass_fields__}

TOP_KEYS = ("campaign", "defaults", "kernels", "matrix", "report")
CAMPAIGN_KEYS = ("name", "description")
REPORT_KEYS = ("results", "json", "html", "top")
GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class KernelSpec:
    name: str  # unique in the campaign: the kernel's file stem unless the manifest names it
    path: Path
    run: Mapping[str, Any]  # run options given for it (or in [defaults])
    expect: Path | None = None  # its known-good guest output
    inputs: tuple[tuple[str, Path], ...] = ()  # (run option, file)


@dataclass(frozen=True)
class ReportSpec:
    results: Path | None = None
    json: Path | None = None
    html: Path | None = None
    top: int = 10


@dataclass(frozen=True)
class Manifest:
    path: Path
    sha256: str
    name: str
    description: str
    kernels: tuple[KernelSpec, ...]
    matrix: matrix.Matrix
    report: ReportSpec


class _Place:
    """Where in the manifest an error is: '<file>: [matrix] hot: ...'."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, where: str, message: str) -> InputError:
        return InputError(f"{self.path}: {where}: {message}")

    def keys(self, table: object, where: str, known: Iterable[str]) -> Mapping[str, Any]:
        if not isinstance(table, dict):
            raise self.error(where, f"expected a table, found {type(table).__name__}")
        known = tuple(known)
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                if where.startswith("kernels") and key in FILE_INPUTS:
                    raise self.error(where, f"{key!r}: this ring1 cannot give a run a {key} file yet "
                                            f"(`{FILE_INPUTS[key].flag}` does not exist)")
                if where.startswith("kernels") and key in NOT_YET:
                    raise self.error(where, f"{key!r}: a campaign cannot pass it yet: {NOT_YET[key]}")
                raise self.error(where, f"unknown key {key!r}{hint} (known: {', '.join(known)})")
        return table


def load(path: Path) -> Manifest:
    """Read and check a manifest. Raises InputError (one line) for anything wrong in it."""
    if path.suffix.lower() in (".yaml", ".yml"):
        raise InputError(f"{path}: YAML manifests are not read; write it in TOML (docs/campaign.md)")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror or err}") from err
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise InputError(f"{path}: not a TOML manifest: {err}") from err
    at = _Place(path)
    at.keys(doc, "top level", TOP_KEYS)
    base = path.parent
    head = at.keys(doc.get("campaign", {}), "[campaign]", CAMPAIGN_KEYS)
    name = _read(at, "[campaign] name", _text, head.get("name", path.stem))
    description = _read(at, "[campaign] description", _text, head.get("description", ""))
    defaults = _run_options(at, "[defaults]", at.keys(doc.get("defaults", {}), "[defaults]", RUN_OPTIONS))
    entries = doc.get("kernels")
    if not isinstance(entries, list) or not entries:
        raise at.error("kernels", "no kernels: add at least one [[kernels]] table with a path")
    kernels: list[KernelSpec] = []
    for i, entry in enumerate(entries):
        keys = ("path", "name", "expect", *RUN_OPTIONS, *available_inputs())
        kernels += _kernels(at, f"kernels[{i}]", at.keys(entry, f"kernels[{i}]", keys), base, defaults)
    seen: dict[str, Path] = {}
    for k in kernels:
        if k.name in seen:
            raise at.error("kernels", f"two kernels are called {k.name!r} ({seen[k.name]}, {k.path}): "
                                      "give one of them a name")
        seen[k.name] = k.path
    try:
        grid = matrix.read_matrix(at.keys(doc.get("matrix", {}), "[matrix]", matrix.MATRIX_KEYS))
    except ValueError as err:
        raise at.error("[matrix]", str(err)) from None
    _check_rules(at, grid)
    report = at.keys(doc.get("report", {}), "[report]", REPORT_KEYS)
    paths = {k: base / _read(at, f"[report] {k}", _text, report[k]) for k in ("results", "json", "html")
             if k in report}
    spec = ReportSpec(**paths, top=_read(at, "[report] top", _positive_int, report.get("top", 10)))
    return Manifest(path, sha256(raw), name, description, tuple(kernels), grid, spec)


def _read(at: _Place, where: str, read: Callable[[object], Any], value: object) -> Any:
    try:
        return read(value)
    except ValueError as err:
        raise at.error(where, str(err)) from None


def _run_options(at: _Place, where: str, table: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _read(at, f"{where} {k}", RUN_OPTIONS[k][0], v) for k, v in table.items() if k in RUN_OPTIONS}


def _expand(template: str, kernel: Path, base: Path) -> Path:
    """A per-kernel file: `{dir}` is the kernel's folder, `{stem}` its name without suffix;
    without `{dir}` the path is relative to the manifest's folder."""
    text = template.replace("{stem}", kernel.stem)
    if "{dir}" in text:
        return Path(os.path.normpath(text.replace("{dir}", str(kernel.parent))))
    return Path(os.path.normpath(base / text))


def _kernels(at: _Place, where: str, entry: Mapping[str, Any], base: Path,
             defaults: Mapping[str, Any]) -> list[KernelSpec]:
    if "path" not in entry:
        raise at.error(where, "no path (a kernel file, or a glob such as \"../*/*.elf\")")
    pattern = _read(at, f"{where} path", _text, entry["path"])
    if GLOB_CHARS & set(pattern):
        paths = [Path(os.path.normpath(p)) for p in sorted(glob.glob(str(base / pattern), recursive=True))]
        if not paths:
            raise at.error(f"{where} path", f"{pattern!r} matches no file (relative to {base})")
    else:
        paths = [Path(os.path.normpath(base / pattern))]
        if not paths[0].is_file():
            raise at.error(f"{where} path", f"{paths[0]}: no such file")
    if "name" in entry and len(paths) > 1:
        raise at.error(f"{where} name", f"the glob {pattern!r} matches {len(paths)} kernels; "
                                        "a name is for one")
    run = {**defaults, **_run_options(at, where, entry)}
    out = []
    for p in paths:
        expect = None
        if "expect" in entry:
            expect = _expand(_read(at, f"{where} expect", _text, entry["expect"]), p, base)
            if not expect.is_file():
                raise at.error(f"{where} expect", f"{expect}: no such file")
        inputs = []
        for option, kind in available_inputs().items():
            given = entry.get(option, [])
            files = given if isinstance(given, list) else [given]
            if not kind.many and len(files) > 1:
                raise at.error(f"{where} {option}", "one file, not a list")
            for f in files:
                file = _expand(_read(at, f"{where} {option}", _text, f), p, base)
                if not file.is_file():
                    raise at.error(f"{where} {option}", f"{file}: no such file")
                inputs.append((option, file))
        name = _read(at, f"{where} name", _text, entry.get("name", p.stem))
        out.append(KernelSpec(name, p, run, expect, tuple(inputs)))
    return out


def _check_rules(at: _Place, grid: matrix.Matrix) -> None:
    """Every rule named in `disable_rule` exists (`bt patch --list-rules`), and every class
    in `disable_class` is a row of bt/isa.py."""
    from patchmgr import registry

    def named(key: str) -> list[str]:
        return sorted({n for k, values in grid.axes if k == key for value in values for n in value})

    try:
        registry.load(named("disable_rule"))
    except UsageError as err:
        raise at.error("[matrix] disable_rule", str(err).removeprefix("--disable-rule: ")) from None
    try:
        registry.load(disabled_classes=named("disable_class"))
    except UsageError as err:
        raise at.error("[matrix] disable_class", str(err)) from None
