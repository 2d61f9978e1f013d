"""The patch-rule options `bt run`, `bt patch` and `bt compare` share, and how their
warnings are printed (one line each on stderr, never silent; patchmgr/registry.py)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from patchmgr.registry import RuleSet


def add(group: Any) -> None:
    """--disable-rule NAME and --disable-class CLASS, both repeatable."""
    group.add_argument("--disable-rule", action="append", default=[], metavar="NAME",
                       help="do not use this patch rule (repeatable; `bt patch --list-rules`): its sites "
                            "run as unpatched (trapping, or natively where they never fault)")
    group.add_argument("--disable-class", action="append", default=[], metavar="CLASS",
                       help="patch no instruction of this bt/isa.py class, whichever rule claims it "
                            "(repeatable; e.g. pushf)")


def load(args: argparse.Namespace) -> RuleSet:
    from patchmgr import registry

    return registry.load(args.disable_rule, disabled_classes=args.disable_class)


def warn(command: str, rules: RuleSet) -> None:
    for line in rules.warnings:
        print(f"bt {command}: warning: {line}", file=sys.stderr)


def describe(rules: RuleSet) -> list[str]:
    """`--list-rules`: each rule in the order rules are asked, its origin and version, and the
    classes it actually gets after precedence (built-ins first, first match wins)."""
    lines = []
    got = rules.assignment()
    for info in rules.infos:
        state = "" if info.enabled else "  (disabled)"
        origin = f"{info.origin} {info.version}"
        lines.append(f"{info.rule.name:18s} {origin:18s} {info.rule.description}{state}")
        a = got[info.rule.name]
        if info.enabled:
            lines.append(f"{'':18s} {'':18s} gets: {', '.join(sorted(a.gets)) or '(nothing)'}")
        if a.shadowed:
            taken = ", ".join(f"{c} (by {r})" for c, r in a.shadowed.items())
            lines.append(f"{'':18s} {'':18s} shadowed: {taken}")
    if rules.disabled_classes:
        lines.append(f"disabled classes: {', '.join(sorted(rules.disabled_classes))}")
    return lines
