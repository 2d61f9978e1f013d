"""Every patch rule ring1 knows: the built-ins, listed here, and third-party rules from
the entry-point group `ring1.patch_rules` (never names built from strings).

A plugin package declares, in its pyproject.toml,

    [project.entry-points."ring1.patch_rules"]
    vtsc = "ring1_vtsc:VirtualTsc"

where the object is a `patchmgr.rule.PatchRule` subclass taking no arguments.

Precedence: rules are asked in order, built-ins first (in `BUILTIN` order), then plugins
by entry-point name, and the first enabled rule whose `matches(op)` is true translates
`op`. A class claimed by two rules therefore goes to the earlier one; `assignment()` says
which classes each rule actually gets, and `bt patch --list-rules` shows it.

Nothing about a rule set is silent: a plugin that fails to load (import error, not a
PatchRule subclass, its constructor raises, a name already taken) is skipped with a
warning, so `bt run --no-patch` and `bt patch --list-rules` still work; a rule whose
`claims` names a class that is not a `bt.isa` row, or whose every class an earlier rule
takes (entirely shadowed), gets a warning. `warnings` holds them; the CLI prints them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from bt import __version__, isa
from bt.errors import UsageError
from bt.operation import Operation
from patchmgr.rule import PatchRule
from patchmgr.rules.crs import ControlRegisters
from patchmgr.rules.descriptor_tables import DescriptorTables
from patchmgr.rules.io import PortIo
from patchmgr.rules.iret import Iret
from patchmgr.rules.irqflags import IrqFlags
from patchmgr.rules.misc import Misc
from patchmgr.rules.msr import Msr
from patchmgr.rules.segments import Segments

ENTRY_POINT_GROUP = "ring1.patch_rules"
#: The distribution name shown for built-in rules.
BUILTIN_ORIGIN = "built-in"

#: The built-in rules, one per instruction family (the table's `rule` column names them).
BUILTIN: tuple[type[PatchRule], ...] = (
    IrqFlags, ControlRegisters, DescriptorTables, Segments, Iret, PortIo, Msr, Misc,
)


@dataclass(frozen=True)
class RuleInfo:
    rule: PatchRule
    origin: str           # "built-in" or the distribution that provides the entry point
    enabled: bool
    version: str = __version__   # of that distribution (ring1's own for a built-in)


@dataclass(frozen=True)
class Assignment:
    """What one rule gets after precedence: the classes it translates, and the classes it
    claims that an earlier enabled rule takes (class -> that rule's name)."""

    gets: frozenset[str]
    shadowed: dict[str, str]


@dataclass(frozen=True)
class RuleSet:
    """The rules of one run, in the order they are asked."""

    infos: tuple[RuleInfo, ...]
    #: Instruction classes no rule may translate (`--disable-class`): they run as unpatched.
    disabled_classes: frozenset[str] = frozenset()
    #: Plugins skipped, unknown claimed classes, shadowed rules: one line each.
    warnings: tuple[str, ...] = ()
    _enabled: tuple[PatchRule, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_enabled", tuple(i.rule for i in self.infos if i.enabled))

    def rule_for(self, op: Operation) -> PatchRule | None:
        if op.cls in self.disabled_classes:
            return None
        for rule in self._enabled:
            if rule.matches(op):
                return rule
        return None

    def handles(self, cls: str) -> bool:
        """True if an enabled rule translates instruction class `cls`."""
        return cls not in self.disabled_classes and any(cls in r.classes() for r in self._enabled)

    def assignment(self) -> dict[str, Assignment]:
        """Per rule name, the classes it gets once precedence and disabled classes are applied
        (a disabled rule gets none). A rule that overrides `matches` to take only some
        instructions of a class leaves the others to later rules; this counts whole classes."""
        taken: dict[str, str] = {}
        out: dict[str, Assignment] = {}
        for info in self.infos:
            mine = info.rule.classes() - self.disabled_classes
            if not info.enabled:
                out[info.rule.name] = Assignment(frozenset(), {})
                continue
            shadowed = {c: taken[c] for c in sorted(mine) if c in taken}
            gets = frozenset(c for c in mine if c not in taken)
            for c in gets:
                taken[c] = info.rule.name
            out[info.rule.name] = Assignment(gets, shadowed)
        return out

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(i.rule.name for i in self.infos)

    @property
    def enabled_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self._enabled)


@functools.cache
def _entry_points() -> tuple[Any, ...]:
    # Reading every installed distribution's metadata costs ~10-20 ms; a `bt run` asks twice
    # (the CLI's rule options, then the patch manager). Installed plugins do not change
    # while a process runs.
    return tuple(sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name))


def _plugins(warnings: list[str]) -> list[RuleInfo]:
    found: list[RuleInfo] = []
    for ep in _entry_points():
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        where = f"patch-rule plugin {ep.name!r} ({dist} {version})"
        try:
            obj = ep.load()
            if not (isinstance(obj, type) and issubclass(obj, PatchRule)):
                warnings.append(f"{where} is not a PatchRule subclass: skipped")
                continue
            rule = obj()
        except Exception as err:  # a broken plugin: name it, skip it, never hide it
            warnings.append(f"{where} failed to load: {type(err).__name__}: {err}: skipped")
            continue
        found.append(RuleInfo(rule, dist, True, version))
    return found


def load(disabled: Iterable[str] = (), extra: Sequence[PatchRule] = (),
         disabled_classes: Iterable[str] = ()) -> RuleSet:
    """Built-ins, then plugins, then `extra` (tests). `disabled` names rules and
    `disabled_classes` instruction classes; both must exist (UsageError otherwise)."""
    warnings: list[str] = []
    candidates = [RuleInfo(cls(), BUILTIN_ORIGIN, True) for cls in BUILTIN]
    candidates += _plugins(warnings)
    candidates += [RuleInfo(r, "extra", True) for r in extra]
    infos: list[RuleInfo] = []
    seen: dict[str, str] = {}
    for info in candidates:
        name = info.rule.name
        if name in seen:
            warnings.append(f"patch rule {name!r} from {info.origin} has the name of the rule from "
                            f"{seen[name]}: skipped")
            continue
        seen[name] = info.origin
        infos.append(info)
    off = set(disabled)
    unknown = off - set(seen)
    if unknown:
        raise UsageError(f"--disable-rule: no rule called {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(seen))})")
    classes = frozenset(disabled_classes)
    for name in sorted(classes):
        isa.by_name(name)                   # UnknownClassError (exit 2) for a class that is no row
    for info in infos:
        bad = sorted(info.rule.classes() - set(isa.NAMES))
        if bad:
            warnings.append(f"patch rule {info.rule.name!r} ({info.origin}) claims "
                            f"{', '.join(map(repr, bad))}, not an instruction class of bt/isa.py: "
                            "no instruction will match it")
    rules = RuleSet(tuple(RuleInfo(i.rule, i.origin, i.rule.name not in off, i.version) for i in infos),
                    classes)
    for info in rules.infos:
        got = rules.assignment()[info.rule.name]
        if info.enabled and not got.gets and got.shadowed:
            by = ", ".join(f"{c} -> {r}" for c, r in got.shadowed.items())
            warnings.append(f"patch rule {info.rule.name!r} ({info.origin}) is entirely shadowed: "
                            f"earlier rules take every class it claims ({by}); rules are asked "
                            "built-ins first, first match wins")
    return RuleSet(rules.infos, classes, tuple(warnings))
