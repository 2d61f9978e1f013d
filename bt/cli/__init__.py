"""The `bt` command line: parses arguments, calls the library, prints.

This package is the application layer above `bt`, `patchmgr` and `runtime`; it is
the only part of `bt` allowed to import the other two (tests/test_layers.py checks).
Each subcommand lives in its own module with `add_parser(subparsers)`; the module's
`run(args)` returns an exit code or raises a `Ring1Error`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence

from bt import __version__
from bt.cli import audit, bench, campaign, compare, linuxkernel, patch, run, scan
from bt.cli.args import ArgumentError, Parser
from bt.errors import Ring1Error

COMMANDS = (scan, patch, run, compare, audit, campaign, bench, linuxkernel)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
    # A file name or command line that is not UTF-8 arrives as surrogate escapes; printing it
    # gives its bytes back rather than a UnicodeEncodeError (stderr already escapes them).
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="surrogateescape")
    # --traceback is accepted anywhere on the line, before or after the subcommand.
    want_traceback = "--traceback" in argv
    argv = [a for a in argv if a != "--traceback"]
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except ArgumentError as err:
        print(f"{err.prog}: error: {err}", file=sys.stderr)
        return err.exit_code
    args.traceback = want_traceback
    if args.command is None:
        parser.print_help()
        return 2
    try:
        with _sigterm_as_interrupt():
            code: int = args.handler(args)
        return code
    except Ring1Error as err:
        if args.traceback:
            traceback.print_exc()
        if isinstance(err.__cause__, BrokenPipeError):
            _drop_stdout()
        print(f"bt {args.command}: error: {err}", file=sys.stderr)
        if err.report is not None:
            err.report()
        return err.exit_code
    except KeyboardInterrupt:
        print(f"bt {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`bt scan K | head`): not ring1's bug, not the guest's
        # status.
        _drop_stdout()
        print(f"bt {args.command}: error: standard output was closed (broken pipe)", file=sys.stderr)
        return 2
    except MemoryError:
        if args.traceback:
            traceback.print_exc()
        print(f"bt {args.command}: error: out of memory (the host's limit, ulimit -v, or its RAM)",
              file=sys.stderr)
        return 2
    except Exception as err:  # a bug: one line unless asked, never silent
        if args.traceback:
            traceback.print_exc()
        print(f"bt {args.command}: internal error: {type(err).__name__}: {err} "
              "(rerun with --traceback and report it)", file=sys.stderr)
        return 8


def _drop_stdout() -> None:
    """Send what is left for a closed stdout to /dev/null: the interpreter flushes stdout at
    exit, and would report the broken pipe a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends a command as Ctrl-C does (exit 130), through the same cleanup: the
    temporary files of its outputs go (bt/outfile.py). `bt run` catches both signals
    itself while the guest runs, to stop it cleanly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
