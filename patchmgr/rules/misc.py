"""HLT, INVLPG, INVD, WBINVD, WBNOINVD: exits the runtime emulates (each traps unpatched).

CPUID is not here: it runs natively (bt/isa.py says why), since a hypercall would turn
an instruction that never exits into one that always does.

HLT must resume in guest code: the interrupt that ends it is delivered before the next
guest instruction runs (SDM HLT), and an interrupt is never delivered inside patch code
(its frame would show a patch address), so HLT ends its patch window and the exit
resumes at the guest address after it.
"""

from __future__ import annotations

from typing import ClassVar

from bt.operation import Operation
from patchmgr.rule import EmitContext, PatchCode, PatchRule


class Misc(PatchRule):
    name: ClassVar[str] = "misc"
    description: ClassVar[str] = "HLT, INVLPG, INVD, WBINVD: one pre-decoded exit"

    def emit(self, op: Operation, ctx: EmitContext) -> PatchCode | None:
        if op.cls == "hlt":
            return PatchCode("int3", exits=(op,), ends_window=True)
        return ctx.hypercall(op)
