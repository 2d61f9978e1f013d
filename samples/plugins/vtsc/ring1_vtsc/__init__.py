"""RDTSC as a read of a virtual time-stamp counter (an example ring1 patch rule).

The counter lives in the state block (`EmitContext.data`), is 0 at boot and advances
by `STEP` on every read, so it is monotonic like the real TSC (SDM RDTSC) and
deterministic, unlike the host's. The 64-bit increment needs ADD/ADC, which change
the arithmetic flags RDTSC leaves alone, so it runs inside `ctx.flags_saved`.
"""

from __future__ import annotations

from typing import ClassVar

from bt.operation import Operation
from patchmgr.rule import EmitContext, PatchCode, PatchRule

#: Virtual cycles per RDTSC: about what a few dozen instructions cost on a real CPU.
STEP = 4096


class VirtualTsc(PatchRule):
    name: ClassVar[str] = "vtsc"
    description: ClassVar[str] = "RDTSC reads a virtual TSC (+4096 per read, the same every run)"
    claims: ClassVar[frozenset[str] | None] = frozenset({"rdtsc"})

    def emit(self, op: Operation, ctx: EmitContext) -> PatchCode | None:
        tsc = ctx.data("vtsc", 8)
        bump = ctx.flags_saved(f"add dword ptr [{tsc:#x}], {STEP}\n"
                               f"adc dword ptr [{tsc + 4:#x}], 0")
        return PatchCode(f"{bump}\n"
                         f"mov eax, dword ptr [{tsc:#x}]\n"
                         f"mov edx, dword ptr [{tsc + 4:#x}]")
