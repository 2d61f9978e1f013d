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

from bt.operation import Operation
from patchmgr.rule import EmitContext, PatchCode, PatchRule


def _width(op: Operation) -> int:
    """PUSHFD/POPFD move 4 bytes; the 0x66-prefixed PUSHF/POPF move 2."""
    return 4 if op.mnemonic.endswith("d") else 2


class IrqFlags(PatchRule):
    name: ClassVar[str] = "irqflags"
    description: ClassVar[str] = "CLI/STI/PUSHF/POPF on the virtual IF and IOPL, inline (PATM)"

    def emit(self, op: Operation, ctx: EmitContext) -> PatchCode | None:
        # Byte 1 of the virtual flags word holds IF alone, byte 2 IOPL (bt/layout.py), so
        # CLI and STI are one byte store; PUSHF/POPF convert through flag-free tables
        # (patchmgr/tables.py).
        vf1 = ctx.state("vflags") + 1
        s0, s1 = ctx.scratch(0), ctx.scratch(1)
        if op.cls in ("cli", "sti"):
            return PatchCode(f"mov byte ptr [{vf1:#x}], {0 if op.cls == 'cli' else 0x02:#x}",
                             may_unmask=op.cls == "sti")
        if op.cls == "pushf":
            # The real PUSHF image has IF = 1 and IOPL = 0 (ring1 keeps them so), so
            # its byte 1 minus 0x02 plus the virtual IF/IOPL bits is the guest's view:
            # disjoint bits, so LEA adds them without a flag change.
            push = "pushfd" if _width(op) == 4 else "pushf"   # Keystone: PUSHF is the 16-bit form
            return PatchCode(f"{push}\n"
                             f"mov dword ptr [{s0:#x}], eax\n"
                             f"mov dword ptr [{s1:#x}], ecx\n"
                             f"movzx ecx, word ptr [{vf1:#x}]\n"
                             f"movzx ecx, byte ptr [{ctx.table('pushf_bits'):#x} + ecx]\n"
                             "movzx eax, byte ptr [esp + 1]\n"
                             f"lea eax, [eax + ecx - {0x02:#x}]\n"
                             "mov byte ptr [esp + 1], al\n"
                             f"mov ecx, dword ptr [{s1:#x}]\n"
                             f"mov eax, dword ptr [{s0:#x}]")
        if op.cls == "popf":
            pop = "popfd" if _width(op) == 4 else "popf"      # Keystone: POPF is the 16-bit form
            return PatchCode(f"mov dword ptr [{s0:#x}], eax\n"
                             "movzx eax, byte ptr [esp + 1]\n"
                             f"movzx eax, word ptr [{ctx.table('popf_word'):#x} + eax * 2]\n"
                             f"{pop}\n"
                             f"mov word ptr [{vf1:#x}], ax\n"
                             f"mov eax, dword ptr [{s0:#x}]", may_unmask=True)
        return None
