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
from patchmgr.rule import REG16, EmitContext, PatchCode, PatchRule


def _width(op: Operation) -> int:
    """PUSHFD/POPFD move 4 bytes; the 0x66-prefixed PUSHF/POPF move 2."""
    return 4 if op.mnemonic.endswith("d") else 2


class IrqFlags(PatchRule):
    name: ClassVar[str] = "irqflags"
    description: ClassVar[str] = "CLI/STI/PUSHF/POPF on the virtual IF and IOPL, inline (PATM)"

    def emit(self, op: Operation, ctx: EmitContext) -> PatchCode | None:
        # Byte 1 of the virtual flags word holds IF alone (bt/layout.py), so CLI and STI are
        # one byte store; PUSHF/POPF convert its aligned low word (IF and IOPL) through
        # flag-free tables (patchmgr/tables.py).
        vf = ctx.state("vflags")
        vf1 = vf + 1
        s0 = ctx.scratch(0)
        if op.cls in ("cli", "sti"):
            return PatchCode(f"mov byte ptr [{vf1:#x}], {0 if op.cls == 'cli' else 0x02:#x}",
                             may_unmask=op.cls == "sti", shadow=op.cls == "sti", may_mask=op.cls == "cli")
        if op.cls == "pushf":
            # The real PUSHF image has IF = 1 and IOPL = 0 (ring1 keeps them so); its byte 1
            # is replaced by the guest's view through two tables: the virtual word's low 16
            # bits pick a 256-byte row (pushf_rows), the real byte indexes it (pushf_merge).
            # One register; before POP r32 (save_flags) that register, so no scratch store.
            push = "pushfd" if _width(op) == 4 else "pushf"   # Keystone: PUSHF is the 16-bit form
            rows, merge = ctx.table("pushf_rows"), ctx.table("pushf_merge")

            def merged(r: str, low: str) -> str:
                return (f"{push}\n"
                        f"movzx {r}, word ptr [{vf:#x}]\n"
                        f"mov {r}, dword ptr [{rows:#x} + {r} * 4]\n"
                        f"mov {low}, byte ptr [esp + 1]\n"
                        f"mov {low}, byte ptr [{merge:#x} + {r}]\n"
                        f"mov byte ptr [esp + 1], {low}")
            before_pop = tuple((r, merged(r, r[1] + "l")) for r in ("eax", "ebx", "ecx", "edx")) \
                if _width(op) == 4 else ()
            return PatchCode(f"mov dword ptr [{s0:#x}], eax\n" + merged("eax", "al") +
                             f"\nmov eax, dword ptr [{s0:#x}]", before_pop=before_pop)
        if op.cls == "popf":
            pop = "popfd" if _width(op) == 4 else "popf"      # Keystone: POPF is the 16-bit form
            word = ctx.table("popf_word")
            # After PUSH r32 (restore_flags) the popped value is r's: r is free until the
            # POPF, then reloaded from the stack, and no scratch store is needed.
            after_push = tuple((r, f"movzx {r}, byte ptr [esp + 1]\n"
                                   f"movzx {r}, word ptr [{word:#x} + {r} * 2]\n"
                                   f"mov word ptr [{vf:#x}], {REG16[r]}\n"
                                   f"mov {r}, dword ptr [esp]\n"
                                   f"{pop}")
                               for r in REG16 if r != "esp") \
                if _width(op) == 4 else ()
            return PatchCode(f"mov dword ptr [{s0:#x}], eax\n"
                             "movzx eax, byte ptr [esp + 1]\n"
                             f"movzx eax, word ptr [{word:#x} + eax * 2]\n"
                             f"{pop}\n"
                             f"mov word ptr [{vf:#x}], ax\n"
                             f"mov eax, dword ptr [{s0:#x}]", may_unmask=True, may_mask=True,
                             after_push=after_push)
        return None
