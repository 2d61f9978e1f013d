"""Argument parsing shared by every `bt` command: one-line errors and checked numbers.

argparse prints its usage block and exits on a bad argument; `Parser.error` raises
`ArgumentError` instead, which `bt.cli.main` prints as one line (`bt run: error: ...`)
and maps to exit 2, like every other usage error.

Options whose value is optional (`bt scan --json[=FILE]`) take it only after `=`, as
GNU getopt_long does for optional arguments: argparse would otherwise take the next
word, so `bt scan --json A.elf B.elf` wrote B's scan over A.elf. Such options are listed
in `Parser.equals_only`; a bare occurrence gets the option's constant.

Numbers are checked where they are parsed (`positive_int`, `seconds`...), so every
command that has `--max-insns` or `--runs` refuses 0 the same way.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any, NoReturn

from bt.errors import UsageError


class ArgumentError(UsageError):
    """A bad command line, as argparse found it. `prog` is the (sub)command: "bt run"."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors, no abbreviated options (`--js` is not `--json`: an
    abbreviation that later became ambiguous would change meaning), and `equals_only`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        #: option -> the value a bare occurrence stands for (see the module docstring).
        self.equals_only: dict[str, str] = {}
        # The deepest (sub)command parsed names itself, so that an unknown word after
        # `bt run KERNEL` is reported by `bt run`, not by `bt`.
        self.set_defaults(prog_=self.prog)

    def parse_args(self, args: Sequence[str] | None = None,     # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            raise ArgumentError(getattr(ns, "prog_", self.prog), f"unrecognized arguments: {' '.join(extra)} "
                                f"(see {getattr(ns, 'prog_', self.prog)} --help)")
        return ns

    def error(self, message: str) -> NoReturn:
        raise ArgumentError(self.prog, f"{message} (see {self.prog} --help)")

    def parse_known_args(self, args: Sequence[str] | None = None,   # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        if args is not None and self.equals_only:
            args = _attach(list(args), self.equals_only)
        return super().parse_known_args(args, namespace)


def _attach(args: list[str], bare: dict[str, str]) -> list[str]:
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        out.append(f"{arg}={bare[arg]}" if arg in bare else arg)
    return out


def positive_int(text: str) -> int:
    """An integer >= 1 (`--max-insns`, `--runs`, `--hot`, `--jobs`...)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def count(text: str) -> int:
    """An integer >= 0 (`--limit`)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def finite(text: str) -> float:
    """A finite number (`--key-delay`: inf overflowed into exit 8, nan into a ValueError)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
    return value


def seconds(text: str) -> float:
    """A finite number of seconds > 0 (`--timeout`): 0, negative, nan and inf are refused
    (nan compared false with every deadline, so it meant no timeout at all)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text!r}")
    return value
