"""`bt scan`: find privileged and sensitive instructions in an ELF kernel (CSAM)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bt.cli.args import Parser, count
from bt.outfile import STDOUT, Outputs

DEFAULT_TEXT_LIMIT = 50
PROGRESS_BYTES = 1 << 20        # show a progress bar for more code than this


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "scan", help="find privileged and sensitive instructions in an ELF kernel (CSAM)",
        description="Scan an x86 ELF kernel (32- or 64-bit): recursive descent from the entry point "
                    "and every function symbol, plus a linear sweep for unreached bytes. Prints a "
                    "summary per instruction class and the sites with their patchability. "
                    "JSON schema: docs/scan-json.md.")
    p.add_argument("kernel", metavar="KERNEL", help="the kernel ELF file")
    p.add_argument("--json", metavar="FILE",
                   help="write the ring1.scan/1 JSON document to stdout, or with --json=FILE to FILE "
                        "(the file name only after '=': a following word is never taken for it)")
    assert isinstance(p, Parser)
    p.equals_only["--json"] = STDOUT
    p.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME",
                   help="only sites of this class, category or patch rule (repeatable; e.g. cli, "
                        "privileged, irqflags)")
    p.add_argument("--symbol", metavar="PATTERN", help="only sites whose symbol matches this glob")
    limit = p.add_mutually_exclusive_group()
    limit.add_argument("--all-sites", action="store_true", help="list every site")
    limit.add_argument("--limit", type=count, metavar="N",
                       help=f"list at most N sites (text default {DEFAULT_TEXT_LIMIT}, JSON default all)")
    p.set_defaults(handler=run)


def check_classes(names: list[str]) -> None:
    from bt import isa  # Capstone: imported by the command that uses it (bt/cli/run.py)

    groups = {c.value for c in isa.Category} | {c.rule for c in isa.CLASSES if c.rule}
    for name in names:
        if name not in groups:
            isa.by_name(name)           # raises UnknownClassError (a UsageError: exit 2)


def run(args: argparse.Namespace) -> int:
    from bt import elf, scan, scanreport

    check_classes(args.classes)
    with Outputs(inputs=[args.kernel]) as outputs:
        report = outputs.document(args.json, "--json", dash=True) if args.json is not None else None
        image = elf.load(args.kernel)
        with _progress(sum(s.size for s in image.executable_sections)) as progress:
            result = scan.scan(image, progress)
        sites = scan.select(result.sites, args.classes, args.symbol)
        if report is not None:
            limit = None if args.all_sites else args.limit
            doc = scanreport.to_json(result, sites, classes=args.classes, symbol=args.symbol, limit=limit)
            report.write_text(json.dumps(doc, indent=1) + "\n")
        else:
            limit = None if args.all_sites else (DEFAULT_TEXT_LIMIT if args.limit is None else args.limit)
            sys.stdout.write(scanreport.describe(result, sites, limit=limit))
        outputs.commit()
    return 0


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar on stderr for long scans when stderr is a terminal; nothing otherwise."""
    if total < PROGRESS_BYTES or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("decoding"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("scan", total=total)

        def update(done: int, _total: int) -> None:
            bar.update(task, completed=done)

        yield update
