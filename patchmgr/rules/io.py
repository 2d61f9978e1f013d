"""IN/OUT/INS/OUTS: a hypercall to the device model with the operands pre-decoded.

On hardware each is a #GP exit at CPL 1 / IOPL 0 (the TSS bitmap denies every port);
Unicorn calls the I/O hook instead (notes/unicorn-ring1.md #1), and the runtime counts
that as the exit it would be. The patch makes it one cheap, pre-decoded exit; for
REP INS/OUTS one exit moves the whole string (the runtime's string emulator honours
DF, ECX and the guest's paging), where the unpatched CPU exits once per element.
"""

from __future__ import annotations

from typing import ClassVar

from bt.operation import Operation
from patchmgr.rule import EmitContext, PatchCode, PatchRule


class PortIo(PatchRule):
    name: ClassVar[str] = "io"
    description: ClassVar[str] = "IN/OUT/INS/OUTS: one pre-decoded exit to the device model"

    def emit(self, op: Operation, ctx: EmitContext) -> PatchCode | None:
        return ctx.hypercall(op)
