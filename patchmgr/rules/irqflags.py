"""CLI, STI, PUSHF, POPF on the virtual EFLAGS word: the hottest sites of any kernel.

PATM recompiled exactly these (PATMCliReplacement, PATMStiReplacement,
PATMPushf32Replacement, PATMPopf32Replacement): they work on the virtual IF/IOPL in
the state block and never exit, except that STI and POPF exit when they set the
virtual IF while an interrupt is pending (the block checks `pending` before it
returns to guest code, see patchmgr/block.py).

Fidelity (SDM vol. 2, CLI/STI/PUSHF/POPF, at CPL 0): CLI and STI change no other
flag; PUSHF pushes the arithmetic flags with the *virtual* IF and IOPL; POPF loads
the arithmetic flags and, at CPL 0, IF and IOPL too. The real POPFD at CPL 1 / IOPL 0
loads every flag except IF and IOPL, which it silently keeps (real IF stays 1, real
IOPL stays 0, as ring1 requires), so the translation lets it run and copies IF/IOPL
into the virtual word.
"""

from __future__ import annotations

from typing import ClassVar

from bt import layout
from bt.operation import Operation
from patchmgr.rule import EFL_VIRTUAL, EmitContext, PatchCode, PatchRule


def _width(op: Operation) -> int:
    """PUSHFD/POPFD move 4 bytes; the 0x66-prefixed PUSHF/POPF move 2."""
    return 4 if op.mnemonic.endswith("d") else 2


class IrqFlags(PatchRule):
    name: ClassVar[str] = "irqflags"
    description: ClassVar[str] = "CLI/STI/PUSHF/POPF on the virtual IF and IOPL, inline (PATM)"

    def emit(self, op: Operation, ctx: EmitContext) -> PatchCode | None:
        vflags = ctx.state("vflags")
        s0, s1 = ctx.scratch(0), ctx.scratch(1)
        if op.cls == "cli":
            return PatchCode(ctx.flags_saved(f"and dword ptr [{vflags:#x}], {~0x200 & 0xFFFFFFFF:#x}"))
        if op.cls == "sti":
            return PatchCode(ctx.flags_saved(f"or dword ptr [{vflags:#x}], 0x200"), may_unmask=True)
        keep = ~EFL_VIRTUAL & 0xFFFFFFFF
        if op.cls == "pushf":
            # The bracket's own PUSHFD left the real EFLAGS image at the private stack's top.
            real = layout.state("pstack") + layout.state_field("pstack").size - 4
            body = (f"mov dword ptr [{s0:#x}], eax\n"
                    f"mov eax, dword ptr [{real:#x}]\n"
                    f"and eax, {keep:#x}\n"
                    f"mov dword ptr [{s1:#x}], eax\n"
                    f"mov eax, dword ptr [{vflags:#x}]\n"
                    f"and eax, {EFL_VIRTUAL:#x}\n"
                    f"or dword ptr [{s1:#x}], eax\n"
                    f"mov eax, dword ptr [{s0:#x}]")
            push = "push dword ptr" if _width(op) == 4 else "push word ptr"
            return PatchCode(ctx.flags_saved(body) + f"\n{push} [{s1:#x}]")
        if op.cls == "popf":
            load = ("mov eax, dword ptr [esp]" if _width(op) == 4 else "movzx eax, word ptr [esp]")
            pop = "popfd" if _width(op) == 4 else "popf"   # Keystone: POPF is the 16-bit form
            body = (f"mov eax, dword ptr [{s1:#x}]\n"
                    f"and eax, {EFL_VIRTUAL:#x}\n"
                    f"and dword ptr [{vflags:#x}], {keep:#x}\n"
                    f"or dword ptr [{vflags:#x}], eax")
            asm = (f"mov dword ptr [{s0:#x}], eax\n"
                   f"{load}\n"
                   f"mov dword ptr [{s1:#x}], eax\n"
                   f"{pop}\n"
                   + ctx.flags_saved(body) +
                   f"\nmov eax, dword ptr [{s0:#x}]")
            return PatchCode(asm, may_unmask=True)
        return None
