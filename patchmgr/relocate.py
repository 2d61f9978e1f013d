"""Moving guest instructions into a patch block (PATM's "displaced" instructions).

In 32-bit code only branches are position-dependent (there is no EIP-relative data
addressing outside 64-bit mode, SDM vol. 2 §2.2.1.6), plus every instruction that
pushes its own EIP. So a displaced instruction is copied byte for byte unless it is

* a relative JMP: re-assembled against its absolute guest target;
* a Jcc, LOOP/LOOPcc or JECXZ: the same test jumping over a near JMP to the guest
  target. LOOP and JECXZ only have a rel8, which cannot reach guest code from patch
  memory; and a Jcc rel32 from patch memory (0xFFE00000 up) to guest code needs the
  32-bit EIP wrap-around that hardware does and Unicorn 2.1.4 does not do for Jcc
  (QEMU's translator masks the target of JMP/CALL rel32 to 32 bits but not of Jcc:
  the guest would continue at 0x1_0002_0008), while JMP rel32 wraps correctly;
* a near CALL (relative or indirect): `PUSH <guest return address>; JMP target`, so the
  guest never finds a patch address on its stack; it ends the window, so that return
  address is guest code;
* RET, a near indirect JMP, a far JMP: copied, and they end the window.

Refused (`CannotMove`): software interrupts, UD2, far CALL (direct, or FF /3 through memory,
which Capstone names a plain CALL), SYSENTER/SYSCALL (each
pushes or hands out an EIP, which would be a patch address), an indirect CALL through
ESP (the PUSH would move its operand), and any sensitive instruction no rule
translates (it must keep trapping at its guest address).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from capstone import CS_GRP_CALL, CS_GRP_INT, CS_GRP_IRET, CS_GRP_JUMP, CS_GRP_RET
from capstone import x86_const as x

from bt import isa

if TYPE_CHECKING:
    from capstone import CsInsn


class CannotMove(Exception):
    """This instruction cannot run from patch memory; `str()` is the reason."""


@dataclass(frozen=True)
class Displaced:
    """A guest instruction as it runs in the patch block: `asm` text, or `raw` bytes copied."""

    asm: str = ""
    raw: bytes = b""
    ends_window: bool = False


_LOOPS = {x.X86_INS_LOOP, x.X86_INS_LOOPE, x.X86_INS_LOOPNE, x.X86_INS_JECXZ, x.X86_INS_JCXZ}
_REFUSED = {
    x.X86_INS_UD2: "UD2 raises #UD with a patch EIP",
    x.X86_INS_SYSENTER: "SYSENTER leaves with no way back to the block",
    x.X86_INS_SYSCALL: "SYSCALL saves a patch EIP",
    x.X86_INS_LCALL: "a far CALL pushes a patch return address",
}


def _target(insn: CsInsn) -> int:
    op = insn.operands[0]
    if op.type != x.X86_OP_IMM:
        raise CannotMove(f"{insn.mnemonic}: relative target expected")
    return int(op.imm) & 0xFFFFFFFF


def relocate(insn: CsInsn, label: str) -> Displaced:
    """How guest instruction `insn` (Capstone, detail on) runs inside a patch block.
    `label` is a unique stem for any labels the rewrite needs."""
    if insn.id in _REFUSED:
        raise CannotMove(_REFUSED[insn.id])
    if insn.group(CS_GRP_INT) or insn.group(CS_GRP_IRET):
        raise CannotMove(f"{insn.mnemonic} would push a patch EIP")
    nxt = insn.address + insn.size
    if insn.id in _LOOPS or (insn.group(CS_GRP_JUMP) and insn.id not in (x.X86_INS_JMP, x.X86_INS_LJMP)):
        t = _target(insn)
        return Displaced(asm=f"{insn.mnemonic} {label}_take\njmp {label}_skip\n"
                             f"{label}_take: jmp {t:#x}\n{label}_skip:")
    far = isa.classify(insn)
    if far is not None and far.name == "far_call":
        # FF /3: Capstone calls it a near CALL ("call ptr [edi]"); it pushes CS:EIP.
        raise CannotMove(_REFUSED[x.X86_INS_LCALL])
    if far is not None and far.name == "far_jmp":
        return Displaced(raw=bytes(insn.bytes), ends_window=True)
    if insn.group(CS_GRP_CALL):
        op = insn.operands[0]
        if op.type == x.X86_OP_IMM:
            return Displaced(asm=f"push {nxt:#x}\njmp {_target(insn):#x}", ends_window=True)
        if op.type == x.X86_OP_MEM and x.X86_REG_ESP in (op.mem.base, op.mem.index):
            raise CannotMove("indirect CALL through ESP")
        text = insn.op_str
        return Displaced(asm=f"push {nxt:#x}\njmp {text}", ends_window=True)
    if insn.group(CS_GRP_JUMP):
        op = insn.operands[0]
        if op.type == x.X86_OP_IMM and insn.id != x.X86_INS_LJMP:
            uncond = insn.id == x.X86_INS_JMP
            return Displaced(asm=f"{insn.mnemonic} {_target(insn):#x}", ends_window=uncond)
        return Displaced(raw=bytes(insn.bytes), ends_window=True)
    if insn.group(CS_GRP_RET):
        return Displaced(raw=bytes(insn.bytes), ends_window=True)
    return Displaced(raw=bytes(insn.bytes))
