"""`bt audit`: run a kernel in ring 1 (or deprivileged to ring 3, --guest-ring 3) and report
what of the VMM it could reach, learn and change at the end of the run or after N guest
instructions (runtime/audit).

Exit code: 0 when the audit is written at the end of the run or at `--at-insns`; 4 when
the guest stopped for another reason, Ctrl-C included (the audit of that point is still written, after the
stop's one-line diagnosis); 2 bad input; 8 an internal error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from bt.cli import devices, ruleopts
from bt.cli.args import positive_int, seconds
from bt.cli.run import _interruptible, _patch_config, _slot
from bt.errors import GuestStop
from bt.outfile import Outputs

if TYPE_CHECKING:       # the VMM is imported when the command runs (bt/cli/run.py says why)
    from runtime.audit import Audit

_BUDGET = "instruction budget exhausted"


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "audit",
        help="what a guest kernel in ring 1 (or ring 3) can reach, learn and change of the VMM",
        description="Run KERNEL as `bt run` does and report, at the end of the run or after --at-insns "
        "guest instructions: the VMM structures mapped in the guest's linear space and their "
        "protection from guest ring 1 and ring 3 (from the run's page tables), the host values "
        "the sensitive instructions give the guest unpatched and patched (each executed at that "
        "point), and the run's VMM guard events, with how VirtualBox, VMware and Xen handled each.",
    )
    p.add_argument("kernel", type=Path, help="the kernel ELF")
    p.add_argument(
        "--at-insns",
        type=positive_int,
        metavar="N",
        help="audit after N guest instructions (default: at the end)",
    )
    p.add_argument("--json", metavar="FILE", help="write the audit as JSON (ring1.audit/1)")
    p.add_argument("--cmdline", default="", help="multiboot command line (after the kernel path)")
    p.add_argument(
        "--serial", metavar="FILE", help="write the guest's COM1 output to FILE (default: discarded)"
    )
    p.add_argument("--timeout", type=seconds, metavar="S", help="stop after S wall-clock seconds")
    machine = p.add_argument_group("the PC (QEMU's pc machine)")
    devices.add_arguments(machine, writable=False)  # the guest's disk writes stay in memory
    p.add_argument("--vmm-base", type=_slot, metavar="ADDR", help="pin the VMM area (as bt run)")
    rings = p.add_argument_group("the guest kernel's ring, as bt run")
    rings.add_argument(
        "--guest-ring",
        type=int,
        choices=(1, 3),
        default=1,
        help="audit the guest kernel in ring 1 (default) or deprivileged to ring 3 "
        "(unpatched; its probes run at CPL 3)",
    )
    rings.add_argument(
        "--ring3",
        choices=("split", "flat"),
        default="split",
        help="ring 3's paging views: split (default) or flat",
    )
    patch = p.add_argument_group("patching (PATM), as bt run")
    patch.add_argument(
        "--hot", type=positive_int, default=1, metavar="N", help="patch a site once it trapped N times"
    )
    patch.add_argument("--eager", action="store_true", help="patch every scanned site before the guest runs")
    patch.add_argument("--no-patch", action="store_true", help="pure trap-and-emulate: never patch")
    ruleopts.add(patch)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from runtime.audit import take
    from runtime.config import RunConfig
    from runtime.vm import Vm

    platform = devices.run_fields(args)
    patch = _patch_config(args)
    inputs = [args.kernel, args.keys, *(args.disk or ()), *(m.path for m in platform["modules"])]
    # Outputs are checked before the kernel is read and written whole (bt/outfile.py).
    with Outputs(inputs=inputs) as outputs:
        sink = cast(BinaryIO, outputs.stream(args.serial, "--serial")) if args.serial else None
        report = outputs.document(args.json, "--json") if args.json else None
        config = RunConfig(
            kernel=args.kernel,
            cmdline=args.cmdline,
            max_insns=args.at_insns,
            timeout=args.timeout,
            serial=sink,
            patch=patch,
            vmm_base=args.vmm_base,
            guest_ring=args.guest_ring,
            ring3_view=args.ring3,
            **platform,
        )
        vm = Vm(config)
        if vm.patches is not None:
            ruleopts.warn("audit", vm.patches.rules)
        stop: GuestStop | None = None
        try:
            with _interruptible(vm):  # Ctrl-C ends the run where it is: audited there (exit 4)
                status = vm.run().exit_status
            ended = "end of the run: " + (
                f"guest status {status >> 1} (isa-debug-exit)"
                if status is not None
                else "the guest ended without isa-debug-exit"
            )
        except GuestStop as err:
            if args.at_insns is not None and err.reason.startswith(_BUDGET):
                ended = f"after --at-insns {args.at_insns}"
            else:
                stop = err
                ended = f"the guest stopped: {err}"
        audit = take(vm, ended)
        if report is not None:
            report.write_text(json.dumps(audit.to_dict(), indent=2) + "\n")
        outputs.commit()
    if stop is None:
        _show(audit)
        return 0

    stop.report = lambda: _show(audit)  # after the stop's error line (bt/cli/__init__.py)
    raise stop


def _show(audit: Audit) -> None:
    """Rich tables on a terminal, plain text otherwise (as bt compare)."""
    from runtime.audit.text import render, render_rich

    if sys.stdout.isatty():
        from rich.console import Console

        render_rich(audit, Console())
    else:
        sys.stdout.write(render(audit))
    sys.stdout.flush()
