"""RDMSR and WRMSR: the VMM keeps virtual MSRs, so both exit, ECX already decoded as the operand."""

from __future__ import annotations

from typing import ClassVar

from bt.operation import Operation
from patchmgr.rule import EmitContext, PatchCode, PatchRule


class Msr(PatchRule):
    name: ClassVar[str] = "msr"
    description: ClassVar[str] = "RDMSR/WRMSR: one pre-decoded exit"

    def emit(self, op: Operation, ctx: EmitContext) -> PatchCode | None:
        return ctx.hypercall(op)
