"""Rule-set variants: more patched runs in one comparison, each with its own patch options.

`bt compare KERNEL --variant 'no-irqflags=--disable-rule irqflags' --variant 'hot100=--hot 100'`
adds a dynamic run named after each variant, beside `unpatched` and `dynamic`, so a
researcher sees in one report what a rule (or a class, or the patching threshold) is
worth: every table gets a column per variant, measured against the same baseline.

A variant is `NAME=OPTIONS`, OPTIONS written as for `bt run`: `--disable-rule NAME`,
`--disable-class CLASS` (both repeatable, added to the ones given to `bt compare`
itself), `--hot N`, `--eager`. NAME is lower-case letters, digits, `-` and `_`, and is
not `unpatched`, `dynamic` or `static`.
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bt.errors import UsageError
from runtime.report.record import MODES

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Variant:
    name: str
    #: Run options as `bt run` takes them: hot, eager, disable_rule, disable_class.
    options: Mapping[str, Any] = field(default_factory=dict)

    def run_options(self, base: Mapping[str, Any]) -> dict[str, Any]:
        """`base` (the comparison's own run options) with this variant's applied: its
        disabled rules and classes add to the base's, its --hot/--eager replace them."""
        out = dict(base)
        for key, value in self.options.items():
            if key in ("disable_rule", "disable_class"):
                out[key] = [*base.get(key, ()), *(v for v in value if v not in base.get(key, ()))]
            else:
                out[key] = value
        return out


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would exit(2): raise instead, one line
        raise UsageError(message)


def parse(spec: str) -> Variant:
    """`NAME=OPTIONS` -> Variant; UsageError with the reason otherwise."""
    name, sep, rest = spec.partition("=")
    name = name.strip()
    if not sep or not _NAME.match(name) or name in MODES:
        raise UsageError(f"--variant {spec!r}: write NAME=OPTIONS, NAME in [a-z0-9_-] and not "
                         f"{', '.join(MODES)} (e.g. --variant 'no-irqflags=--disable-rule irqflags')")
    p = _Parser(prog=f"--variant {name}", add_help=False)
    p.add_argument("--disable-rule", action="append", default=None)
    p.add_argument("--disable-class", action="append", default=None)
    p.add_argument("--hot", type=int)
    p.add_argument("--eager", action="store_true", default=None)
    try:
        args = p.parse_args(shlex.split(rest))
    except ValueError as err:
        raise UsageError(f"--variant {spec!r}: {err}") from err
    if args.hot is not None and args.hot < 1:
        raise UsageError(f"--variant {name}: --hot must be at least 1")
    options = {k: v for k, v in vars(args).items() if v is not None}
    if not options:
        raise UsageError(f"--variant {name}: no option given (it would repeat the dynamic run)")
    return Variant(name, options)
