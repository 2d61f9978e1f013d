"""Every patch rule ring1 knows: the built-ins, listed here, and third-party rules from
the entry-point group `ring1.patch_rules` (never names built from strings).

A plugin package declares, in its pyproject.toml,

    [project.entry-points."ring1.patch_rules"]
    vtsc = "ring1_vtsc:VirtualTsc"

where the object is a `patchmgr.rule.PatchRule` subclass taking no arguments. Rules
are asked in order, built-ins first, and the first whose `matches(op)` is true
translates `op`; a plugin that reuses a built-in's name is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from bt.errors import PatchError, UsageError
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

#: The built-in rules, one per instruction family (the table's `rule` column names them).
BUILTIN: tuple[type[PatchRule], ...] = (
    IrqFlags, ControlRegisters, DescriptorTables, Segments, Iret, PortIo, Msr, Misc,
)


@dataclass(frozen=True)
class RuleInfo:
    rule: PatchRule
    origin: str           # "built-in" or the distribution that provides the entry point
    enabled: bool


@dataclass(frozen=True)
class RuleSet:
    """The rules of one run, in the order they are asked."""

    infos: tuple[RuleInfo, ...]
    _enabled: tuple[PatchRule, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_enabled", tuple(i.rule for i in self.infos if i.enabled))

    def rule_for(self, op: Operation) -> PatchRule | None:
        for rule in self._enabled:
            if rule.matches(op):
                return rule
        return None

    def handles(self, cls: str) -> bool:
        """True if an enabled rule translates instruction class `cls`."""
        return any(cls in r.classes() for r in self._enabled)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(i.rule.name for i in self.infos)

    @property
    def enabled_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self._enabled)


def _plugins() -> list[tuple[PatchRule, str]]:
    found: list[tuple[PatchRule, str]] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = ep.dist.name if ep.dist is not None else "?"
        try:
            obj = ep.load()
        except Exception as err:  # a broken plugin: name it, never hide it
            raise PatchError(f"patch-rule plugin {ep.name!r} ({dist}) failed to load: {err}") from err
        if not (isinstance(obj, type) and issubclass(obj, PatchRule)):
            raise PatchError(f"patch-rule plugin {ep.name!r} ({dist}) is not a PatchRule subclass")
        found.append((obj(), dist))
    return found


def load(disabled: Iterable[str] = (), extra: Sequence[PatchRule] = ()) -> RuleSet:
    """Built-ins, then plugins, then `extra` (tests); `disabled` names must exist."""
    pairs: list[tuple[PatchRule, str]] = [(cls(), "built-in") for cls in BUILTIN]
    pairs += _plugins()
    pairs += [(r, "extra") for r in extra]
    seen: set[str] = set()
    for rule, origin in pairs:
        if rule.name in seen:
            raise PatchError(f"two patch rules are called {rule.name!r} (the second from {origin})")
        seen.add(rule.name)
    off = set(disabled)
    unknown = off - seen
    if unknown:
        raise UsageError(f"--disable-rule: no rule called {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(seen))})")
    return RuleSet(tuple(RuleInfo(r, o, r.name not in off) for r, o in pairs))
