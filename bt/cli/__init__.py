"""The `bt` command line: parses arguments, calls the library, prints.

This package is the application layer above `bt`, `patchmgr` and `runtime`; it is
the only part of `bt` allowed to import the other two (tests/test_layers.py checks).
Each subcommand lives in its own module with `add_parser(subparsers)`; the module's
`run(args)` returns an exit code or raises a `Ring1Error`.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from bt import __version__
from bt.cli import audit, bench, campaign, compare, patch, run, scan
from bt.errors import Ring1Error

COMMANDS = (scan, patch, run, compare, audit, campaign, bench)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit 2): the usage is one `--help` away.
    Subcommand parsers are of the same class (argparse makes them with `type(self)`)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bt",
        description="ring1: scan, patch and run 32-bit x86 kernels in ring 1 (raw-mode VMM on Unicorn).",
    )
    parser.add_argument("--version", action="version", version=f"ring1 {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show a Python traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --traceback is accepted anywhere on the line, before or after the subcommand.
    want_traceback = "--traceback" in argv
    argv = [a for a in argv if a != "--traceback"]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.traceback = want_traceback
    if args.command is None:
        parser.print_help()
        return 2
    try:
        code: int = args.handler(args)
        return code
    except Ring1Error as err:
        if args.traceback:
            traceback.print_exc()
        print(f"bt {args.command}: error: {err}", file=sys.stderr)
        if err.report is not None:
            err.report()
        return err.exit_code
    except KeyboardInterrupt:
        print(f"bt {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug: one line unless asked, never silent
        if args.traceback:
            traceback.print_exc()
        print(f"bt {args.command}: internal error: {type(err).__name__}: {err} "
              "(rerun with --traceback and report it)", file=sys.stderr)
        return 8
