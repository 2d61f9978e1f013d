"""`bt run`: run a kernel in ring 1 on the VMM (runtime/vm.py).

Exit code: the guest's isa-debug-exit status `(V << 1) | 1` as QEMU reports it
(always odd), 0 if the guest ended without writing it, or ring1's own even codes
(bt/errors.py): 2 bad input, 4 the guest stopped (with EIP, reason and the last
exits on stderr), 8 an internal error.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO, cast

from bt.cli import devices, ruleopts
from bt.cli.args import positive_int, seconds
from bt.errors import GuestStop, InternalError, UsageError
from bt.outfile import Output, Outputs

if TYPE_CHECKING:
    # The VMM (Unicorn, Capstone, Keystone, NumPy) is imported by the command that runs it,
    # not by `bt` parsing its command line: every other subcommand and `--help` would pay it.
    from patchmgr.manager import PatchConfig, PatchManager
    from runtime.stats import RunStats
    from runtime.vm import Vm


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "run", help="run a kernel in ring 1 on the VMM",
        description="Boot a 32-bit ELF (multiboot v1 or plain) kernel at CPL 1 and run it to its end.")
    p.add_argument("kernel", type=Path,
                   help="the kernel: a multiboot or plain ELF, a Linux bzImage or vmlinux")
    p.add_argument("--cmdline", default="",
                   help="the command line: a multiboot kernel sees it after its path, Linux as it is; its "
                        "bytes reach the guest as given, UTF-8 or not, as under QEMU")
    p.add_argument("--initrd", type=Path, metavar="FILE", help="a Linux kernel's initrd (QEMU's -initrd)")
    p.add_argument("--serial", metavar="FILE",
                   help="write COM1 output to FILE instead of stdout (- is stdout; a device or FIFO "
                        "such as /dev/null is written in place)")
    p.add_argument("--max-insns", type=positive_int, metavar="N", help="stop after N guest instructions")
    p.add_argument("--timeout", type=seconds, metavar="S", help="stop after S wall-clock seconds")
    p.add_argument("--stats", action="store_true", help="print exit statistics and device counters to stderr")
    p.add_argument("--json", metavar="FILE", help="write the statistics as JSON to FILE")
    p.add_argument("--screen", metavar="FILE",
                   help="write the 80x25 text screen to FILE when the run ends, however it ends")
    machine = p.add_argument_group("the PC (QEMU's pc machine)")
    devices.add_arguments(machine)
    p.add_argument("--vmm-base", type=_slot, metavar="ADDR",
                   help="pin the VMM area at this 4 MiB-aligned linear address while guest paging is on "
                        "(default: it moves out of the guest's way)")
    rings = p.add_argument_group("the guest kernel's ring (issue 13)")
    rings.add_argument("--guest-ring", type=int, choices=(1, 3), default=1,
                       help="run the guest kernel in real ring 1 (default, raw mode) or deprivileged to "
                            "ring 3 for comparison (unpatched; runtime/ring3/)")
    rings.add_argument("--ring3", choices=("split", "flat"), default="split",
                       help="ring 3's paging views: split (kernel and user views, switched on every "
                            "transition) or flat (one view: guest user code reaches guest kernel memory)")
    patch = p.add_argument_group("patching (PATM)")
    patch.add_argument("--hot", type=positive_int, default=1, metavar="N",
                       help="patch a site once it trapped N times (default 1, as PATM)")
    patch.add_argument("--eager", action="store_true", help="patch every scanned site before the guest runs")
    patch.add_argument("--no-patch", action="store_true", help="pure trap-and-emulate: never patch")
    patch.add_argument("--leaks-only", action="store_true", help=ruleopts.LEAKS_ONLY_HELP)
    ruleopts.add(patch)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from runtime.config import RunConfig
    from runtime.terminal import Terminal
    from runtime.vm import Vm

    platform = devices.run_fields(args)
    # The terminal is the keyboard when stdin is one and no --keys script types instead.
    terminal = "keys" not in platform and Terminal.available()
    patch = _patch_config(args)
    # Outputs are checked (and their temporary files made) before the kernel is read. They are
    # written when the guest has run, however the run ended (its result, a stop, even a ring1
    # bug: they are what it did); bad input, a failed write or a second Ctrl-C leave the old files.
    inputs = [args.kernel, args.keys, args.initrd, *(args.disk or ()), *(m.path for m in platform["modules"])]
    if platform["disk_writable"]:
        _check_writable_disks(platform["disks"], inputs)
    with Outputs(inputs=inputs) as outputs:
        # An Output has the write/flush the UART calls; a write error there (a full disk, a
        # closed pipe) is an OutputError, exit 2, whether to a file or to stdout.
        sink = cast(BinaryIO, outputs.stream(args.serial or "-", "--serial"))
        report = outputs.document(args.json, "--json") if args.json else None
        screen = outputs.document(args.screen, "--screen") if args.screen else None
        config = RunConfig(kernel=args.kernel, cmdline=args.cmdline, max_insns=args.max_insns,
                           timeout=args.timeout, serial=sink, patch=patch, terminal=terminal,
                           vmm_base=args.vmm_base, initrd=args.initrd, guest_ring=args.guest_ring,
                           ring3_view=args.ring3, **platform)
        vm = Vm(config)
        if vm.patches is not None:
            ruleopts.warn("run", vm.patches.rules)
        try:
            with _interruptible(vm):
                result = vm.run()
        except (GuestStop, InternalError) as stop:
            sys.stdout.flush()
            last = stop.last_exits
            _write(vm, vm.stats, report, screen)
            outputs.commit()

            def show() -> None:     # after the error line (bt/cli/__init__.py)
                _print_last(vm, last)
                _report(args, vm, vm.stats)

            stop.report = show
            raise
        sys.stdout.flush()
        _write(vm, result.stats, report, screen)
        outputs.commit()
        _report(args, vm, result.stats)
        code = 0 if result.exit_status is None else result.exit_status & 0xFF
        print(f"bt run: {_explain(result.exit_status, code)}", file=sys.stderr)
        return code


def _explain(status: int | None, code: int) -> str:
    """What the exit code means: `bt run` exits as QEMU does with isa-debug-exit, so a guest
    that reports success (0) makes it exit 1, which a first-time user reads as a failure."""
    if status is None:
        return "the guest ended without writing the isa-debug-exit port: exit code 0"
    value = status >> 1
    meaning = "success" if value == 0 else "failure"
    return (f"guest status {value} ({meaning}), exit code {code}: (status << 1) | 1, as QEMU's "
            "isa-debug-exit reports it (0 = success is the convention of docs/writing-a-kernel.md)")


@contextmanager
def _interruptible(vm: Vm) -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM end the run cleanly: the run loop stops at the end of the
    current slice with GuestStop("interrupted (SIGINT)"), exit 4, and the usual stop report
    and statistics. A second signal gives up at once (KeyboardInterrupt, exit 130)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: object) -> None:
        if vm.interrupted is not None:
            raise KeyboardInterrupt
        vm.interrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _check_writable_disks(disks: tuple[Path, ...], inputs: list[Any]) -> None:
    """A disk the guest may write must not be the kernel, a module, the --keys file or the
    other disk: the guest would rewrite them under the run (bt/outfile.py's rule for outputs)."""

    def identity(path: Any) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    files = [identity(p) for p in inputs if p is not None]
    for disk in disks:
        if files.count(identity(disk)) > 1:          # the disk itself is one of the inputs
            raise UsageError(f"--disk {disk} --disk-writable: the same file as another input of this run")


def _slot(text: str) -> int:
    """`--vmm-base`: a 4 MiB-aligned linear address (hex or decimal), not slot 0."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an address") from None
    if value % (4 << 20) or not 0 < value < 1 << 32:
        raise argparse.ArgumentTypeError(f"{text}: the VMM area needs a 4 MiB-aligned slot above 0")
    return value


def _patch_config(args: argparse.Namespace) -> PatchConfig:
    """Always a patch manager: with --no-patch it makes no patch, but a kernel written by
    `bt patch` still needs its recorded patches served. (`bt audit` shares this and has no
    --leaks-only.)"""
    from patchmgr.manager import PatchConfig

    leaks_only = getattr(args, "leaks_only", False)
    if args.no_patch and args.eager:
        raise UsageError("--no-patch and --eager contradict each other")
    if args.no_patch and leaks_only:
        raise UsageError("--no-patch and --leaks-only contradict each other")
    ruleopts.load(args)          # an unknown rule or class is a usage error, before any work
    classes = ruleopts.leaks_only(args.disable_class) if leaks_only else tuple(args.disable_class)
    return PatchConfig(hot=args.hot, eager=args.eager, enabled=not args.no_patch,
                       disabled_rules=tuple(args.disable_rule), disabled_classes=classes)


def _report_patches(vm: Vm, m: PatchManager, out: TextIO) -> None:
    kinds = Counter(p.kind for p in m.patches.values())
    st = m.stats
    print(f"patches: {len(m.patches)} (jmp {kinds['jmp']}, int3 {kinds['int3']}), refused {len(m.refusals)}, "
          f"patch exits {st.exits}, self-modifying code: {st.smc_removed} removed, {st.smc_refreshed} "
          f"refreshed", file=out)
    if st.rescans:
        print(f"rewritten code scanned again before it ran: {st.rescans} times, {st.rescan_patched} "
              f"never-trapping sites patched in it", file=out)
    unscanned = m.unscanned_sites()
    if unscanned:
        states = Counter(u.status for u in unscanned)
        print(f"sites the scan never reached: {st.unscanned_total} ("
              + ", ".join(f"{n} {what}" for what, n in sorted(states.items())) + ")", file=out)
        for u in unscanned[:10]:
            print(f"  {u.site:#010x} {vm.symbolize(u.site):32s} {u.text:16s} {u.status}: {u.reason}",
                  file=out)


def _report_guard(stats: RunStats, out: TextIO) -> None:
    """Guest stores into the VMM area (patch memory included: runtime/guard.py), and a
    damaged virtual flags word in the state page the guest can write."""
    if stats.vmm_writes:
        where = ", ".join(f"{eip:#x} -> {addr:#x} ({region})" for eip, addr, _, region in stats.vmm_writers)
        more = ", ..." if stats.vmm_writes > len(stats.vmm_writers) else ""
        print(f"guest stores into the VMM area (dropped): {stats.vmm_writes}, from EIP {where}{more}",
              file=out)
    if stats.vflags_corrupted:
        words = ", ".join(f"{w:#010x}" for w in stats.vflags_bad)
        print(f"virtual flags word corrupted by the guest (repaired): {stats.vflags_corrupted} ({words})",
              file=out)
    for move in stats.vmm_moves:
        print(f"VMM area moved {move.old:#010x} -> {move.new:#010x} at guest EIP {move.eip:#x}: {move.why}",
              file=out)
    if stats.user_patch_steps:
        print(f"guest user code at patched windows, run from the guest's own bytes: "
              f"{stats.user_patch_steps} instructions", file=out)
    if stats.code_pages_seen:
        print(f"pages of code outside the ELF first run (scanned at CPL 1): {stats.code_pages_seen}",
              file=out)


def _print_last(vm: Vm, last: list[tuple[str, str, int]]) -> None:
    if not last:
        return
    print("last exits (oldest first):", file=sys.stderr)
    for kind, what, eip in last:
        print(f"  {kind:9s} {what:16s} at {eip:#010x} {vm.symbolize(eip)}", file=sys.stderr)


def _write(vm: Vm, stats: RunStats, report: Output | None, screen: Output | None) -> None:
    """--json and --screen into their temporary files (bt/outfile.py), before the commit."""
    if report is not None:
        report.write_text(json.dumps(stats.to_dict(vm.symbolize), indent=2) + "\n")
    if screen is not None:
        screen.write_text(vm.screen_text())


def _report(args: argparse.Namespace, vm: Vm, stats: RunStats) -> None:
    data = stats.to_dict(vm.symbolize)
    if not args.stats:
        return
    out = sys.stderr
    ex = data["exits"]
    print(f"exits: {data['total_exits']} (trap {ex['trap']}, io {ex['io']}, hypercall {ex['hypercall']}, "
          f"interrupt {ex['interrupt']}, paging {ex['paging']})", file=out)
    print(f"guest instructions: {stats.guest_insns}   virtual time: {stats.virtual_ns / 1e6:.3f} ms "
          f"(idle {stats.idle_ns / 1e6:.3f} ms)", file=out)
    if vm.patches is not None:
        _report_patches(vm, vm.patches, out)
    _report_guard(stats, out)
    if stats.ring3:
        print("ring 3: " + ", ".join(f"{k} {n}" for k, n in sorted(stats.ring3.items())), file=out)
    per = stats.vmm_ns / max(1, data["total_exits"]) / 1000
    print(f"time in VMM: {stats.vmm_ns / 1e6:.1f} ms of {stats.wall_ns / 1e6:.1f} ms "
          f"({per:.1f} µs per exit)", file=out)
    if stats.startup_ns:
        print(f"start-up: {stats.startup_ns / 1e6:.0f} ms from process start to the guest's first "
              "instruction", file=out)
    if data["unknown_ports"]:
        print("unassigned ports: " + ", ".join(f"{p} x{n}" for p, n in data["unknown_ports"].items()),
              file=out)
    counters = vm.devices.counters()
    print("devices: " + ", ".join(f"{k} {n}" for k, n in counters.items() if n), file=out)
    print("by class:", file=out)
    for cls, n in data["by_class"].items():
        print(f"  {cls:16s} {n:10d}", file=out)
    print("hottest sites:", file=out)
    for site in data["by_site"][:10]:
        print(f"  {site['address']:#010x} {site['symbol']:32s} {site['class'] or '-':14s} "
              f"{site['count']:10d}", file=out)
