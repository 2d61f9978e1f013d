"""`bt compare --rings`: one kernel four ways, ring 3 split, ring 3 flat, ring 1, ring 1 patched.

The measured answer to issue 13's question: what running the guest kernel in ring 1 instead
of ring 3 saves, and what it costs in isolation. Each way runs in this process, one after the
other (wall times are not taken while another run competes for the CPU), and reports:

* the guest's output and exit status, compared with ring 1 unpatched and with `--expect`
  (QEMU's output where known). Ring 3 flat may differ on purpose: its guest user code can read
  guest kernel memory that QEMU refuses (its row says so; it does not make the command fail);
* exits by kind, ring 3's extra exits by cause (bounces of system calls, IRQs, exceptions
  and IRETs to user mode; view switches; view faults), TLB flushes, guest instructions, wall
  time and time in the VMM;
* what the guest could reach at the end (runtime/ring3/probe.py): supervisor pages of the
  guest readable from its user mode, VMM pages readable and writable by its kernel.

JSON: `to_json`, schema `ring1.compare-rings/1`, documented in docs/compare-rings.md; HTML:
`render_html`.
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "ring1.compare-rings/1"
#: (name, guest ring, ring-3 view, patched), in report order.
WAYS: tuple[tuple[str, int, str, bool], ...] = (
    ("ring3-split", 3, "split", False),
    ("ring3-flat", 3, "flat", False),
    ("ring1", 1, "split", False),
    ("ring1-patched", 1, "split", True),
)
#: The run every other one is compared with.
REFERENCE = "ring1"
#: The way whose output may differ from the reference by design (module docstring).
MAY_DIFFER = "ring3-flat"
_RING3_CAUSES = ("bounce syscall", "bounce irq", "bounce exception", "bounce iret to user",
                 "view switches", "view faults")


@dataclass
class RingRun:
    way: str
    serial: bytes
    exit_status: int | None
    stop_reason: str
    exits: dict[str, int]
    total_exits: int
    ring3: dict[str, int]
    tlb_flushes: int
    guest_insns: int
    wall_ns: int
    vmm_ns: int
    reach: dict[str, Any]


@dataclass
class KernelRings:
    kernel: str
    runs: dict[str, RingRun] = field(default_factory=dict)
    expect: bytes | None = None

    def same(self, way: str) -> bool:
        """Output and exit status as the reference run's (and as --expect's output)."""
        run, ref = self.runs[way], self.runs[REFERENCE]
        return (run.serial, run.exit_status, run.stop_reason) == (
            ref.serial, ref.exit_status, ref.stop_reason)

    def expected(self, way: str) -> bool | None:
        return None if self.expect is None else self.runs[way].serial == self.expect

    @property
    def agree(self) -> bool:
        """Every way but the flat one printed what the reference printed (and --expect)."""
        return all(self.same(w) and self.expected(w) is not False
                   for w in self.runs if w != MAY_DIFFER)


def run_way(kernel: str, way: str, options: Mapping[str, Any]) -> RingRun:
    """One run of `kernel` (options as `bt compare` forwards them: cmdline, max_insns, hot and
    the platform's, runtime/report/adapter.py `platform_fields`)."""
    from bt.errors import GuestStop
    from patchmgr.manager import PatchConfig
    from runtime.config import RunConfig
    from runtime.report.adapter import platform_fields
    from runtime.ring3 import probe
    from runtime.vm import Vm

    _name, ring, view, patched = next(w for w in WAYS if w[0] == way)
    serial = io.BytesIO()
    config = RunConfig(kernel=Path(kernel), cmdline=options.get("cmdline") or "",
                       max_insns=options.get("max_insns"), timeout=options.get("timeout"), serial=serial,
                       patch=PatchConfig(hot=options.get("hot") or 1) if patched else None,
                       guest_ring=ring, ring3_view=view, fast_exits=False, **platform_fields(options))
    # Every way takes its exits through the same Python path: the fast exits (runtime/fastexit.py)
    # exist for ring 1 only, and would make its wall and VMM times shorter for a reason that
    # is not the ring.
    vm = Vm(config)
    stop_reason = ""
    exit_status: int | None = None
    t0 = time.perf_counter_ns()
    try:
        exit_status = vm.run().exit_status
    except GuestStop as stop:
        stop_reason = str(stop)
    wall = time.perf_counter_ns() - t0
    st = vm.stats
    exits = dict(st.exits)
    return RingRun(way=way, serial=serial.getvalue(), exit_status=exit_status, stop_reason=stop_reason,
                   exits={k: exits.get(k, 0) for k in ("trap", "io", "hypercall", "interrupt", "paging")},
                   total_exits=st.exit_count, ring3=dict(sorted(st.ring3.items())),
                   tlb_flushes=st.tlb_flushes, guest_insns=st.guest_insns, wall_ns=wall,
                   vmm_ns=st.vmm_ns, reach=probe.reach(vm))


def compare(kernels: Sequence[str], options: Mapping[str, Any],
            expect: Mapping[str, bytes] | None = None) -> list[KernelRings]:
    out = []
    for kernel in kernels:
        k = KernelRings(kernel, expect=(expect or {}).get(kernel))
        for way, *_rest in WAYS:
            k.runs[way] = run_way(kernel, way, options)
        out.append(k)
    return out


# -- outputs ---------------------------------------------------------------------------------------
def to_json(results: Sequence[KernelRings], command: Sequence[str]) -> dict[str, Any]:
    kernels = []
    for k in results:
        runs = {}
        for way, r in k.runs.items():
            runs[way] = {
                "output_same_as_ring1": k.same(way), "output_as_expected": k.expected(way),
                "exit_status": r.exit_status, "stop_reason": r.stop_reason,
                "exits": r.exits, "total_exits": r.total_exits, "ring3": r.ring3,
                "tlb_flushes": r.tlb_flushes, "guest_insns": r.guest_insns,
                "wall_ns": r.wall_ns, "vmm_ns": r.vmm_ns, "reach": r.reach,
            }
        kernels.append({"kernel": k.kernel, "agree": k.agree, "runs": runs})
    return {"schema": SCHEMA, "command": list(command), "ways": [w[0] for w in WAYS], "kernels": kernels}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def rows(k: KernelRings) -> list[tuple[str, list[str]]]:
    """The report's rows for one kernel: (label, one cell per way), shared by text and HTML."""
    ways = [w[0] for w in WAYS]
    out: list[tuple[str, list[str]]] = []

    def row(label: str, values: Sequence[Any]) -> None:
        out.append((label, [_cell(v) for v in values]))

    row("output as ring1", ["same" if k.same(w) else "DIFFERS" for w in ways])
    if k.expect is not None:
        row("output as --expect", ["yes" if k.expected(w) else "NO" for w in ways])
    row("exit status", [k.runs[w].exit_status if not k.runs[w].stop_reason else "stop" for w in ways])
    row("exits", [k.runs[w].total_exits for w in ways])
    for kind in ("trap", "io", "hypercall", "interrupt", "paging"):
        row(f"  {kind}", [k.runs[w].exits[kind] for w in ways])
    for cause in _RING3_CAUSES:
        row(f"  ring 3: {cause}", [k.runs[w].ring3.get(cause, 0) if w.startswith("ring3") else None
                                   for w in ways])
    row("TLB flushes", [k.runs[w].tlb_flushes for w in ways])
    row("guest instructions", [k.runs[w].guest_insns for w in ways])
    row("wall time (ms)", [f"{k.runs[w].wall_ns / 1e6:.1f}" for w in ways])
    row("time in VMM (ms)", [f"{k.runs[w].vmm_ns / 1e6:.1f}" for w in ways])
    row("user reads kernel pages", [k.runs[w].reach["user_reads_kernel_pages"] for w in ways])
    row("kernel reads VMM pages", [k.runs[w].reach["kernel_reads_vmm_pages"] for w in ways])
    row("kernel writes VMM pages", [k.runs[w].reach["kernel_writes_vmm_pages"] for w in ways])
    return out


def notes(k: KernelRings) -> list[str]:
    out = [f"{w} stopped: {r.stop_reason}" for w, r in k.runs.items() if r.stop_reason]
    if not k.same(MAY_DIFFER) and k.agree:
        out.append(f"{MAY_DIFFER} differs from ring1: its guest user code reaches guest kernel memory "
                   "(see 'user reads kernel pages')")
    return out


def render_text(results: Sequence[KernelRings]) -> str:
    lines: list[str] = []
    width = 15
    for k in results:
        lines.append(f"bt compare --rings: {k.kernel}")
        lines.append(f"{'':28s}" + "".join(f"{w[0]:>{width}s}" for w in WAYS))
        for label, cells in rows(k):
            lines.append(f"{label:28s}" + "".join(f"{c:>{width}s}" for c in cells))
        lines += [f"  {n}" for n in notes(k)]
        lines.append("")
    return "\n".join(lines)


def render_html(results: Sequence[KernelRings]) -> str:
    """A self-contained page (no script, no external resource) with the same tables."""
    from html import escape

    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>bt compare --rings</title><style>"
             "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
             "td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}td:first-child{text-align:left;"
             "white-space:pre}.bad{color:#b00;font-weight:bold}</style></head><body>",
             "<h1>ring 3 against ring 1 (<code>bt compare --rings</code>)</h1>"]
    for k in results:
        parts.append(f"<h2>{escape(k.kernel)}</h2><table><tr><th></th>"
                     + "".join(f"<th>{escape(w[0])}</th>" for w in WAYS) + "</tr>")
        for label, cells in rows(k):
            tds = "".join(f'<td class="bad">{escape(c)}</td>' if c in ("DIFFERS", "NO", "stop")
                          else f"<td>{escape(c)}</td>" for c in cells)
            parts.append(f"<tr><td>{escape(label)}</td>{tds}</tr>")
        parts.append("</table>")
        parts += [f"<p>{escape(n)}</p>" for n in notes(k)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
