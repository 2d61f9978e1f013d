"""The configurations a campaign runs every kernel in: the dimensions of its matrix.

One table, `DIMENSIONS`, says what each `[matrix]` key of a manifest may hold, for which
patching modes it means anything, how it reads in a label and which run options it
becomes. Manifest checks, the list of configurations, labels, cell keys and reports all
read the table, so a new run option (`bt run --guest-ring 3`, when it exists) is one more
row here and nothing else.

A configuration that does not use a dimension (the hot threshold of an eager or static
run, the disabled rules of an unpatched run) takes its default, so two entries of the
matrix that make the same run are one configuration, and run once.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runtime.report.record import BASELINE, DYNAMIC, STATIC

#: Patching modes a manifest names, and what `runtime.report.adapter.run_once` makes of
#: each: its run mode and the run options the mode adds.
MODES: Mapping[str, tuple[str, Mapping[str, Any]]] = {
    "none": (BASELINE, {}),            # trap-and-emulate only (`bt run --no-patch`): the baseline
    "dynamic": (DYNAMIC, {}),          # patch a site once it trapped `hot` times (PATM)
    "eager": (DYNAMIC, {"eager": True}),  # patch every scanned site before the guest runs
    "static": (STATIC, {}),            # the ELF as `bt patch` rewrites it
}
NONE = "none"
ALL_MODES = frozenset(MODES)
PATCHED = frozenset(MODES) - {NONE}


def _mode(value: object) -> str:
    if not isinstance(value, str) or value not in MODES:
        raise ValueError(f"{value!r} is not a patching mode ({', '.join(MODES)})")
    return value


def _hot(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{value!r} is not a hot threshold (an integer, at least 1)")
    return value


def _names(what: str) -> Callable[[object], tuple[str, ...]]:
    def read(value: object) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ValueError(f"{value!r} is not a list of {what}")
        return tuple(sorted(set(value)))
    return read


@dataclass(frozen=True)
class Dimension:
    """One key of `[matrix]`: a list of values, one configuration per value."""

    key: str
    doc: str
    #: The value a configuration gets when the manifest leaves the key out, or when its
    #: patching mode does not use the dimension.
    default: Any
    #: One manifest value -> its canonical (hashable) form; ValueError with a message if bad.
    read: Callable[[object], Any]
    #: The patching modes the dimension means anything for.
    modes: frozenset[str]
    #: The value in a configuration's label ("hot=4"); "" to leave it out.
    show: Callable[[Any], str]
    #: The run options (as `bt run` takes them, see `run_once`) the value becomes.
    options: Callable[[Any], Mapping[str, Any]]
    #: A value is itself a list (so the key holds a list of lists).
    list_valued: bool = False


DIMENSIONS: tuple[Dimension, ...] = (
    Dimension("mode", "patching mode: none (the baseline), dynamic, eager, static", "dynamic", _mode,
              ALL_MODES, lambda v: "unpatched" if v == NONE else v, lambda v: MODES[v][1]),
    Dimension("hot", "dynamic patching: patch a site once it trapped N times (`bt run --hot N`)", 1, _hot,
              frozenset({"dynamic"}), lambda v: f"hot={v}", lambda v: {"hot": v}),
    Dimension("disable_rule", "patch rules left out (`bt run --disable-rule NAME`), one list per "
              "configuration", (), _names("rule names"), PATCHED, lambda v: " ".join(f"-{r}" for r in v),
              lambda v: {"disable_rule": list(v)} if v else {}, list_valued=True),
    Dimension("disable_class", "instruction classes left trapping whatever rule claims them "
              "(`bt run --disable-class CLS`), one list per configuration", (), _names("class names"),
              PATCHED, lambda v: " ".join(f"-class:{c}" for c in v),
              lambda v: {"disable_class": list(v)} if v else {}, list_valued=True),
)
BY_KEY = {d.key: d for d in DIMENSIONS}
#: `[matrix]` keys that are not dimensions.
REPEATS = "repeats"
MATRIX_KEYS = (*BY_KEY, REPEATS)


@dataclass(frozen=True)
class Config:
    """One configuration: a value for every dimension, in table order."""

    values: tuple[tuple[str, Any], ...]

    def __getitem__(self, key: str) -> Any:
        return dict(self.values)[key]

    @property
    def mode(self) -> str:
        return str(self["mode"])

    @property
    def is_baseline(self) -> bool:
        return self.mode == NONE

    def run(self) -> tuple[str, dict[str, Any]]:
        """The run mode and the run options of this configuration (a dimension its mode does
        not use adds none: the run takes `bt run`'s default)."""
        options: dict[str, Any] = {}
        for d in DIMENSIONS:
            if self.mode in d.modes:
                options.update(d.options(self[d.key]))
        return MODES[self.mode][0], options

    def baseline(self) -> Config:
        """The unpatched configuration this one is measured against: patching off, every
        dimension that applies to unpatched runs (none yet besides the mode) kept."""
        return normalized({**dict(self.values), "mode": NONE})

    def label(self, shown: Iterable[str] = ()) -> str:
        """"dynamic hot=4 -irqflags": the mode, then each dimension in `shown` that the mode uses."""
        keep = set(shown)
        parts = [d.show(self[d.key]) for d in DIMENSIONS
                 if d.key == "mode" or (d.key in keep and self.mode in d.modes)]
        return " ".join(p for p in parts if p)

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.values}


def normalized(values: Mapping[str, Any]) -> Config:
    """A configuration from one value per dimension; a dimension its mode does not use gets
    its default, so equal runs are equal configurations."""
    mode = values["mode"]
    return Config(tuple((d.key, values[d.key] if mode in d.modes else d.default) for d in DIMENSIONS))


@dataclass(frozen=True)
class Matrix:
    #: Each dimension with the values the manifest listed (its default alone when it listed none).
    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    repeats: int = 1

    def configs(self) -> tuple[Config, ...]:
        """Every configuration once: the baselines first (each patched configuration needs the
        unpatched run it is measured against, listed or not), then the matrix in order."""
        keys = [k for k, _ in self.axes]
        product = [normalized(dict(zip(keys, combo, strict=True)))
                   for combo in itertools.product(*(values for _, values in self.axes))]
        out: list[Config] = []
        for c in [c.baseline() for c in product] + product:
            if c not in out:
                out.append(c)
        return tuple(out)

    @property
    def varying(self) -> tuple[str, ...]:
        """Dimensions a label must show: those with several values, or a value not the default."""
        return tuple(k for k, values in self.axes
                     if len(values) > 1 or any(v != BY_KEY[k].default for v in values))

    def to_json(self) -> dict[str, Any]:
        return {**{k: [list(v) if isinstance(v, tuple) else v for v in values] for k, values in self.axes},
                REPEATS: self.repeats}


def read_matrix(table: Mapping[str, Any]) -> Matrix:
    """The `[matrix]` table of a manifest. Raises ValueError("key: why") for a bad entry;
    unknown keys are the caller's to refuse (it knows where the table is)."""
    axes = []
    for d in DIMENSIONS:
        if d.key not in table:
            axes.append((d.key, (d.default,)))
            continue
        raw = table[d.key]
        # A scalar dimension takes one value or a list; a list-valued one always a list of lists.
        items: Sequence[object]
        if d.list_valued:
            if not (isinstance(raw, list) and all(isinstance(r, list) for r in raw)):
                raise ValueError(f"{d.key}: {raw!r}: give a list of lists, one per configuration, "
                                 f'e.g. {d.key} = [[], ["irqflags"]]')
            items = raw
        else:
            items = raw if isinstance(raw, list) else [raw]
        if not items:
            raise ValueError(f"{d.key}: the list is empty (leave the key out for the default)")
        values: list[Any] = []
        for item in items:
            try:
                value = d.read(item)
            except ValueError as err:
                raise ValueError(f"{d.key}: {err}") from None
            if value not in values:
                values.append(value)
        axes.append((d.key, tuple(values)))
    repeats = table.get(REPEATS, 1)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"{REPEATS}: {repeats!r} is not a number of runs per cell (an integer, at least 1)")
    return Matrix(tuple(axes), repeats)
