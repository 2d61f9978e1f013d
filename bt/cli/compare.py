"""`bt compare`: run unpatched and patched and report what patching changed.

Parses arguments, shows progress, and writes the three outputs; the runs, the
model and the renderers live in `runtime.report`.

Exit code: 0 when every patched run gave the baseline's guest output and exit
status (and, with --expect, every run gave the expected output); 6 when not
(the report is still written, with the difference shown as MISMATCH); 2 for bad
input, or when patching is not available to compare against.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bt.cli import devices, ruleopts
from bt.cli.args import positive_int
from bt.errors import GuestStop, InputError, MismatchError, UsageError
from bt.outfile import Output, Outputs

if TYPE_CHECKING:
    from runtime.report.model import Comparison

#: Options forwarded to every run, as `bt run` takes them (runtime/report/adapter.py turns
#: them into RunConfig fields). --disk-writable is not one: runs would share the writes.
RUN_OPTIONS = ("cmdline", "hot", "eager", "max_insns", "ram", "module", "disk", "keys", "key_delay", "initrd",
               "baseline")


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "compare", help="run unpatched and patched and report what patching changed",
        description="Run each KERNEL under trap-and-emulate and with patching (dynamic; with --static "
                    "also the statically patched ELF), check that guest output and exit status match, "
                    "and report exits by kind and class, hot sites, patches and timings.")
    p.add_argument("kernels", nargs="+", metavar="KERNEL", help="kernel ELF(s) to compare")
    p.add_argument("--static", action="store_true", help="also run the ELF patched by `bt patch`")
    p.add_argument("--rings", action="store_true",
                   help="instead: run each KERNEL four ways, ring 3 split, ring 3 flat, ring 1, ring 1 "
                        "patched, and report exits by cause, TLB flushes, wall time and what the guest "
                        "could reach (docs/compare-rings.md; --json: ring1.compare-rings/1; --html)")
    p.add_argument("--jobs", "-j", type=positive_int, default=None, metavar="N",
                   help="runs in parallel (default: one per run, up to the number of CPUs)")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON (ring1.compare/1)")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML report")
    p.add_argument("--top", type=positive_int, default=10, metavar="N", help="hot sites to list (default 10)")
    p.add_argument("--expect", action="append", default=None, metavar="FILE",
                   help="the guest output known to be right (e.g. QEMU's), once per KERNEL in order: "
                        "the report says which runs produced it")
    run = p.add_argument_group("run options (the same for every run)")
    run.add_argument("--cmdline", default=None, help="kernel command line")
    run.add_argument("--hot", type=positive_int, default=1, metavar="N",
                     help="dynamic run: patch a site once it trapped N times (default 1, as PATM)")
    run.add_argument("--eager", action="store_true", default=None,
                     help="dynamic run: patch every scanned site before the guest runs")
    run.add_argument("--max-insns", type=positive_int, default=None, metavar="N",
                     help="stop a run after N guest instructions")
    ruleopts.add(run)
    run.add_argument("--variant", action="append", default=[], metavar="NAME=OPTIONS",
                     help="one more dynamic run, called NAME, with its own patch options written as for "
                          "`bt run` (--disable-rule, --disable-class, --hot, --eager), side by side with the "
                          "others, e.g. --variant 'no-irqflags=--disable-rule irqflags' (repeatable)")
    devices.add_arguments(run, ram_default=None, writable=False)
    run.add_argument("--initrd", default=None, metavar="FILE",
                     help="a Linux kernel's initrd (QEMU's -initrd)")
    run.add_argument("--baseline", choices=("trap", "leaks"), default=None,
                     help="the unpatched run: pure trap-and-emulate (trap, the default), or with the "
                          "never-faulting leaks patched (leaks: `bt run --leaks-only`), for kernels that "
                          "cannot run with their leaks")
    rec = p.add_argument_group("recorded runs")
    rec.add_argument("--save-runs", metavar="DIR",
                     help="also save each kernel's measured runs to DIR/NAME.runs.json")
    rec.add_argument("--replay", action="store_true",
                     help="KERNEL arguments are files saved by --save-runs: render them without running")
    p.set_defaults(handler=run_compare)


def _command(args: argparse.Namespace) -> list[str]:
    """The command line, rebuilt from the parsed options in a canonical order."""
    out = ["compare", *args.kernels]
    for flag in ("static", "replay", "eager"):
        if getattr(args, flag):
            out.append(f"--{flag}")
    for name in ("jobs", "top", *RUN_OPTIONS, "json", "html", "save_runs"):
        value = getattr(args, name)
        if isinstance(value, list):
            for item in value:
                out += [f"--{name.replace('_', '-')}", str(item)]
        elif value is not None and not isinstance(value, bool):
            out += [f"--{name.replace('_', '-')}", str(value)]
    for ref in args.expect or ():
        out += ["--expect", ref]
    for flag in ("disable_rule", "disable_class", "variant"):
        for value in getattr(args, flag):
            out += [f"--{flag.replace('_', '-')}", value]
    return out


@contextmanager
def _progress(total: int) -> Iterator[Any]:
    """A live progress display on a terminal (stderr), one line per finished run otherwise."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

    from runtime.report import fmt

    console = Console(stderr=True)
    if not console.is_terminal:
        def plain(task: Any, record: Any) -> None:
            if record is not None:
                print(f"bt compare: ran {Path(task.kernel).stem} {task.mode} "
                      f"({fmt.seconds(record.timing.wall)}, {fmt.count(record.total_exits)} exits)",
                      file=sys.stderr)
        yield plain
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=console, transient=True) as progress:
        overall = progress.add_task("runs", total=total)
        running: set[str] = set()

        def update(task: Any, record: Any) -> None:
            name = f"{Path(task.kernel).stem} {task.mode}"
            if record is None:
                running.add(name)
            else:
                running.discard(name)
                progress.advance(overall)
                progress.console.print(f"[green]done[/] {name}: {fmt.seconds(record.timing.wall)}, "
                                       f"{fmt.count(record.total_exits)} exits")
            progress.update(overall, description="running " + (", ".join(sorted(running)) or "-"))
        yield update


def run_compare(args: argparse.Namespace) -> int:
    from runtime.report import html, jsonout, text
    from runtime.report.runner import runs_documents

    command = _command(args)
    if args.expect is not None and len(args.expect) != len(args.kernels):
        raise UsageError(f"--expect given {len(args.expect)} time(s) for {len(args.kernels)} kernel(s): "
                         "give one expected output per KERNEL, in the same order")
    if args.rings:
        return _compare_rings(args, [*command, "--rings"])
    # Every output is checked (its temporary file made) before the first run, and all of
    # them are renamed into place together at the end (bt/outfile.py): a bad --html never
    # leaves a fresh --json beside an old report.
    if not args.replay:
        from runtime.report import adapter

        reason = adapter.unavailable(static=args.static)
        if reason:
            print(f"bt compare: cannot compare unpatched and patched runs: {reason}", file=sys.stderr)
            return 2
    run_options, variants = _run_options(args)      # usage errors before any output or run
    inputs = [*args.kernels, *(args.expect or ()), args.keys, args.initrd, *(args.disk or ()),
              *(spec.split(",", 1)[0] for spec in args.module or ())]
    with Outputs(inputs=inputs) as outputs:
        json_out = outputs.document(args.json, "--json") if args.json else None
        html_out = outputs.document(args.html, "--html") if args.html else None
        runs_out = _runs_outputs(outputs, args) if args.save_runs and not args.replay else {}
        comparison = _compare(args, command, run_options, variants)
        if runs_out:
            for name, content in runs_documents(comparison).items():
                runs_out[name].write_text(content)
        if json_out is not None:
            json_out.write_text(jsonout.dumps(comparison))
        if html_out is not None:
            html_out.write_text(html.render(comparison))
        outputs.commit()
    if sys.stdout.isatty():
        from rich.console import Console

        text.render(comparison, Console())
    else:
        sys.stdout.write(text.render_plain(comparison))
    sys.stdout.flush()
    if not comparison.agree:
        bad = [k.name for k in comparison.kernels if not k.agree]
        raise MismatchError(f"patched and unpatched runs disagree for {', '.join(bad)} "
                            "(guest output or exit status differ; see MISMATCH above)")
    if not comparison.ok:
        bad = [k.name for k in comparison.kernels if not k.ok]
        raise MismatchError(f"not every run produced the expected output for {', '.join(bad)} "
                            "(see --expect above)")
    # The runs agree, but agreeing on an abnormal stop is still a stop: say so, exit 4.
    stopped = sorted({f"{k.name}: {r.stop_reason}" for k in comparison.kernels
                      for r in k.runs.values() if r.stop_reason})
    if stopped:
        raise GuestStop("every run stopped the same abnormal way", detail="; ".join(stopped))
    return 0


def _runs_outputs(outputs: Outputs, args: argparse.Namespace) -> dict[str, Output]:
    """DIR/NAME.runs.json for every kernel, declared now: two kernels of one name would
    write the same file."""
    from runtime.report.runner import runs_file_name

    folder = outputs.folder(args.save_runs, "--save-runs")
    out: dict[str, Output] = {}
    for kernel in args.kernels:
        name = runs_file_name(kernel)
        if name in out:
            raise UsageError(f"--save-runs: two kernels would both be saved as {folder / name}")
        out[name] = outputs.document(folder / name, "--save-runs")
    return out


def _run_options(args: argparse.Namespace) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """The options every run gets, and the --variant runs (checked: a bad rule name or a
    variant named twice is a usage error now)."""
    if args.replay:
        return {}, ()
    devices.run_fields(args)         # bad files and values fail before any run starts
    if args.initrd is not None and not Path(args.initrd).is_file():
        raise InputError(f"{args.initrd}: no such file (--initrd)")
    run_options = {k: getattr(args, k) for k in RUN_OPTIONS if getattr(args, k) is not None}
    run_options.update({k: v for k in ("disable_rule", "disable_class") if (v := getattr(args, k))})
    return run_options, _variants(args.variant, run_options)


def _compare(args: argparse.Namespace, command: list[str], run_options: dict[str, Any],
             variants: tuple[Any, ...]) -> Comparison:
    from runtime.report import runner

    expect = dict(zip(args.kernels, args.expect or (), strict=False))
    if args.replay:
        try:
            return runner.replay(args.kernels, command, top=args.top, expect=expect)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise InputError(f"cannot replay recorded runs: {type(err).__name__}: {err}") from err
    options = runner.CompareOptions(
        kernels=tuple(args.kernels), static=args.static, jobs=args.jobs, top=args.top, expect=expect,
        run=run_options, variants=variants)
    with _progress(len(options.kernels) * len(options.modes)) as progress:
        return runner.run_all(options, command, progress)


def _variants(specs: list[str], base: dict[str, Any]) -> tuple[Any, ...]:
    """Parse every --variant and check its rule names before any run starts; print what
    loading the rules warned about once (the runs load them again, silently)."""
    from patchmgr import registry
    from runtime.report import variant

    parsed = tuple(variant.parse(s) for s in specs)
    names = [v.name for v in parsed]
    if len(set(names)) != len(names):
        raise UsageError(f"--variant: a name given twice ({', '.join(sorted(names))})")
    for options in [base, *(v.run_options(base) for v in parsed)]:
        rules = registry.load(options.get("disable_rule", ()),
                              disabled_classes=options.get("disable_class", ()))
    ruleopts.warn("compare", rules)
    return parsed


def _compare_rings(args: argparse.Namespace, command: list[str]) -> int:
    """`bt compare --rings` (runtime/report/rings.py): the four ways, text and --json."""
    import json

    from runtime.report import rings

    for flag in ("static", "replay", "save_runs"):
        if getattr(args, flag):
            raise UsageError(f"--rings does not take --{flag.replace('_', '-')} (not done yet)")
    if args.variant:
        raise UsageError("--rings does not take --variant")
    run_options, _variants = _run_options(args)
    inputs = [*args.kernels, *(args.expect or ()), args.keys, *(args.disk or ()),
              *(spec.split(",", 1)[0] for spec in args.module or ())]
    expect = {k: Path(e).read_bytes() for k, e in zip(args.kernels, args.expect or (), strict=False)}
    with Outputs(inputs=inputs) as outputs:
        json_out = outputs.document(args.json, "--json") if args.json else None
        html_out = outputs.document(args.html, "--html") if args.html else None
        results = rings.compare(args.kernels, run_options, expect)
        if json_out is not None:
            json_out.write_text(json.dumps(rings.to_json(results, command), indent=2) + "\n")
        if html_out is not None:
            html_out.write_text(rings.render_html(results))
        outputs.commit()
    sys.stdout.write(rings.render_text(results))
    sys.stdout.flush()
    bad = [k.kernel for k in results if not k.agree]
    if bad:
        raise MismatchError(f"ring 3 split, ring 1 and ring 1 patched do not all print the same for "
                            f"{', '.join(bad)} (or not what --expect says)")
    return 0
