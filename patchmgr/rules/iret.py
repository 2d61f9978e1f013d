"""IRET: the return from an interrupt or exception, within the kernel or to user mode.

At CPL 1 a guest IRET either faults (its frame holds the guest's RPL-0 CS, which at
CPL 1 means "return to a more privileged level") or silently keeps the real IF/IOPL
(Robin & Irvine). PATM's IRET replacement fixed both in place, and so does this rule
for the common case, a 32-bit IRET back into the kernel: it copies the frame's IF and
IOPL into the virtual flags word, turns the frame's RPL-0 CS into the ring-1 shadow
selector ring compression gives the kernel (same index, RPL 1: runtime/segments.py),
and lets the CPU's own IRETD pop EIP, CS and EFLAGS (at CPL 1 it keeps the real IF = 1
and IOPL = 0, SDM IRET operation). EFLAGS may be clobbered on the way: IRET reloads
them from the frame.

It exits instead, with the pre-decoded IRET for the runtime to emulate, when the frame
returns to ring 3 (the runtime does the outward return and its bookkeeping) or to
virtual-8086 mode, when the
frame sets IF while an interrupt is pending (the runtime delivers it right after the
return, as hardware would), and when the return EIP lies inside a patched window (a
fault taken in displaced code is reported there; the runtime resumes it in the patch
block: the interior bitmap of patchmgr/tables.py says so without a lookup).
IRET never falls through, so it ends its window.
"""

from __future__ import annotations

from typing import ClassVar

from bt.operation import Operation
from patchmgr import tables
from patchmgr.rule import EmitContext, PatchCode, PatchRule


class Iret(PatchRule):
    name: ClassVar[str] = "iret"
    description: ClassVar[str] = ("IRET to the kernel inline (virtual IF/IOPL, RPL fixed); "
                                  "to user mode or with an IRQ pending: one pre-decoded exit")

    def emit(self, op: Operation, ctx: EmitContext) -> PatchCode | None:
        if op.mnemonic != "iretd":          # 16-bit IRET: rare, left to the runtime
            return PatchCode("int3", exits=(op,), ends_window=True, may_unmask=True)
        s0 = ctx.scratch(0)
        vf, pending = ctx.state("vflags"), ctx.state("pending")
        out, go = ctx.label("iret_exit"), ctx.label("iret_go")
        return PatchCode(
            "test byte ptr [esp + 4], 3\n"            # frame CS RPL != 0: to user mode
            f"jnz {out}\n"
            "test byte ptr [esp + 10], 2\n"           # frame VM (EFLAGS bit 17): the runtime's
            f"jnz {out}\n"
            "test byte ptr [esp + 9], 2\n"            # frame IF (EFLAGS bit 9)
            f"jz {go}\n"
            f"cmp dword ptr [{pending:#x}], 0\n"
            f"jne {out}\n"
            f"{go}:\n"
            f"mov dword ptr [{s0:#x}], eax\n"
            "mov eax, dword ptr [esp]\n"              # the return EIP: inside a patched window?
            f"and eax, {tables.INTERIOR_SPAN - 1:#x}\n"
            f"bt dword ptr [{ctx.table('interior'):#x}], eax\n"
            f"mov eax, dword ptr [{s0:#x}]\n"
            f"jc {out}\n"                            # then the runtime resumes it in the block
            f"mov dword ptr [{s0:#x}], eax\n"
            "movzx eax, byte ptr [esp + 9]\n"
            f"movzx eax, word ptr [{ctx.table('popf_word'):#x} + eax * 2]\n"
            f"mov word ptr [{vf:#x}], ax\n"
            f"mov eax, dword ptr [{s0:#x}]\n"
            "or dword ptr [esp + 4], 1\n"
            "iretd\n"
            f"{out}:\n"
            "int3",
            exits=(op,), ends_window=True, may_unmask=True)
