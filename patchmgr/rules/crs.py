"""Control and debug registers: reads inline from the virtual copies, writes exit.

PATM translated MOV r,CRx into a load of the guest's virtual CR (PATMMovFromCRx...)
and left writes trapping, because CR0/CR3/CR4 writes change the shadow MMU (here: a
hypercall, which is the same exit without the #GP and without decoding). SMSW reads
the low word of the virtual CR0; with a 32-bit register destination it stores the
whole CR0, as QEMU (the reference) and P6-and-later CPUs do (SDM SMSW: "high-order 16
bits are undefined" on others). Debug-register accesses, LMSW and CLTS exit.
"""

from __future__ import annotations

from typing import ClassVar

from bt.operation import Mem, Operation, Reg
from patchmgr.rule import REG16, EmitContext, PatchCode, PatchRule, full_reg

_VIRTUAL_CRS = ("cr0", "cr2", "cr3", "cr4")


class ControlRegisters(PatchRule):
    name: ClassVar[str] = "crs"
    description: ClassVar[str] = "MOV r,CRn and SMSW from virtual CRs inline; CR/DR writes, LMSW, CLTS exit"

    def emit(self, op: Operation, ctx: EmitContext) -> PatchCode | None:
        if op.cls == "mov_from_cr":
            dst, src = op.operands
            if isinstance(dst, Reg) and isinstance(src, Reg) and src.name in _VIRTUAL_CRS:
                return PatchCode(f"mov {dst.name}, dword ptr [{ctx.state(src.name):#x}]")
            return ctx.hypercall(op)   # CR1, CR5-7: the runtime raises #UD as hardware does
        if op.cls == "smsw":
            return self._smsw(op, ctx)
        return ctx.hypercall(op)

    @staticmethod
    def _smsw(op: Operation, ctx: EmitContext) -> PatchCode:
        (dst,) = op.operands
        cr0 = ctx.state("cr0")
        if isinstance(dst, Reg):
            wide = full_reg(dst.name) == dst.name
            return PatchCode(f"mov {dst.name}, {'dword' if wide else 'word'} ptr [{cr0:#x}]")
        assert isinstance(dst, Mem)
        r = ctx.free_reg(op)
        s0 = ctx.scratch(0)
        return PatchCode(f"mov dword ptr [{s0:#x}], {r}\n"
                         f"mov {r}, dword ptr [{cr0:#x}]\n"
                         f"mov {ctx.mem(dst, size=2)}, {REG16[r]}\n"
                         f"mov {r}, dword ptr [{s0:#x}]")
