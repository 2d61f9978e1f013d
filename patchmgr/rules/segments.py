"""CS and SS as the guest kernel sees them: RPL 0, not the RPL 1 ring compression gives.

MOV r,CS / MOV r,SS / PUSH CS / PUSH SS run silently at CPL 1 and show RPL 1
(Robin & Irvine); PATM stripped it. Patch code only ever runs while the guest kernel
does, at CPL 1, so the real selector's RPL is exactly 1 and `LEA r, [r - 1]` strips
it without touching EFLAGS (a MOV/AND would clobber them). 32-bit destinations are
zero-extended and PUSH with a 32-bit operand size pushes the zero-extended selector,
as QEMU (the reference) does. LAR/LSL/VERR/VERW judge descriptors by CPL 1 and are
left to the runtime's emulation through the one-byte INT3 replacement, as PATM did.
"""

from __future__ import annotations

from typing import ClassVar

from bt.operation import Mem, Operation, Reg
from patchmgr.rule import REG16, EmitContext, PatchCode, PatchRule, full_reg


class Segments(PatchRule):
    name: ClassVar[str] = "segments"
    description: ClassVar[str] = ("MOV r,CS/SS and PUSH CS/SS with the guest's RPL 0 inline; "
                                  "LAR/LSL/VERR/VERW int3")

    def emit(self, op: Operation, ctx: EmitContext) -> PatchCode | None:
        s0 = ctx.scratch(0)
        if op.cls == "mov_from_sreg":
            dst, src = op.operands
            assert isinstance(src, Reg)
            if isinstance(dst, Reg):
                full = full_reg(dst.name)
                return PatchCode(f"mov {dst.name}, {src.name}\nlea {dst.name}, [{full} - 1]")
            assert isinstance(dst, Mem)
            r = ctx.free_reg(op)
            return PatchCode(f"mov dword ptr [{s0:#x}], {r}\n"
                             f"mov {r}, {src.name}\n"
                             f"lea {r}, [{r} - 1]\n"
                             f"mov {ctx.mem(dst, size=2)}, {REG16[r]}\n"
                             f"mov {r}, dword ptr [{s0:#x}]")
        if op.cls == "push_sreg":
            (src,) = op.operands
            assert isinstance(src, Reg)
            push = "push eax" if op.length == 1 else "push ax"   # 0x66 prefix: a 2-byte push
            return PatchCode(f"mov dword ptr [{s0:#x}], eax\n"
                             f"mov eax, {src.name}\n"
                             f"lea eax, [eax - 1]\n"
                             f"{push}\n"
                             f"mov eax, dword ptr [{s0:#x}]")
        return None
