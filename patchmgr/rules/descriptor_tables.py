"""GDTR, IDTR, LDTR, TR: stores inline from the virtual copies, loads exit.

SGDT/SIDT/SLDT/STR run silently at CPL 1 and would reveal the VMM's own tables
(Robin & Irvine); PATM read the guest's values from its state instead. The state
block keeps GDTR/IDTR exactly as SGDT stores them (limit, then the 32-bit base: SDM
SGDT, "16 or 32 bits operand size: 6 bytes"), so the translation is a copy. SLDT/STR
to a 32-bit register zero-extend the selector (SDM: P6 family and later). Loads change
what the VMM shadows (SELM), so they are hypercalls.
"""

from __future__ import annotations

from typing import ClassVar

from bt.operation import Mem, Operation, Reg
from patchmgr.rule import REG16, EmitContext, PatchCode, PatchRule, full_reg

_FIELD = {"sgdt": "gdtr", "sidt": "idtr", "sldt": "ldtr", "str": "tr"}


class DescriptorTables(PatchRule):
    name: ClassVar[str] = "descriptor_tables"
    description: ClassVar[str] = "SGDT/SIDT/SLDT/STR from virtual registers inline; LGDT/LIDT/LLDT/LTR exit"

    def emit(self, op: Operation, ctx: EmitContext) -> PatchCode | None:
        if op.cls not in _FIELD:
            return ctx.hypercall(op)
        src = ctx.state(_FIELD[op.cls])
        (dst,) = op.operands
        s0 = ctx.scratch(0)
        if op.cls in ("sgdt", "sidt"):
            assert isinstance(dst, Mem)
            r = ctx.free_reg(op)
            return PatchCode(f"mov dword ptr [{s0:#x}], {r}\n"
                             f"mov {r}, dword ptr [{src:#x}]\n"
                             f"mov {ctx.mem(dst, size=4)}, {r}\n"
                             f"mov {r}, dword ptr [{src + 4:#x}]\n"
                             f"mov {ctx.mem(dst, extra=4, size=2)}, {REG16[r]}\n"
                             f"mov {r}, dword ptr [{s0:#x}]")
        if isinstance(dst, Reg):
            if full_reg(dst.name) == dst.name:
                return PatchCode(f"movzx {dst.name}, word ptr [{src:#x}]")
            return PatchCode(f"mov {dst.name}, word ptr [{src:#x}]")
        assert isinstance(dst, Mem)
        r = ctx.free_reg(op)
        return PatchCode(f"mov dword ptr [{s0:#x}], {r}\n"
                         f"mov {REG16[r]}, word ptr [{src:#x}]\n"
                         f"mov {ctx.mem(dst, size=2)}, {REG16[r]}\n"
                         f"mov {r}, dword ptr [{s0:#x}]")
