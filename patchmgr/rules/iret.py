"""IRET: the return from an interrupt or exception, within the kernel or to user mode.

At CPL 1 a guest IRET either faults (its frame holds the guest's RPL-0 CS) or
silently keeps the real IF/IOPL (Robin & Irvine). The runtime's IRET emulation fixes
the RPL, loads the virtual IF/IOPL from the frame, switches stacks for a return to
ring 3 and delivers a pending interrupt if the new IF allows it; the patch carries the
pre-decoded IRET to it as a hypercall, so the #GP and the Capstone decode are gone.
IRET never falls through, so it ends its patch window.
"""

from __future__ import annotations

from typing import ClassVar

from bt.operation import Operation
from patchmgr.rule import EmitContext, PatchCode, PatchRule


class Iret(PatchRule):
    name: ClassVar[str] = "iret"
    description: ClassVar[str] = "IRET within the kernel and to user mode: one pre-decoded exit"

    def emit(self, op: Operation, ctx: EmitContext) -> PatchCode | None:
        return PatchCode("int3", exits=(op,), ends_window=True, may_unmask=True)
