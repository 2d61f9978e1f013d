"""A decoded instruction as the VMM emulates it: class, length and operands.

The trap path decodes a faulting instruction with Capstone into an `Operation`;
a hypercall stub carries an `Operation` decoded once, when the patch was made
("pre-decoded operands, no Capstone on the way", as PATM's hypercalls did). The
runtime executes both the same way, so there is one emulation per class.

Register names are Capstone's lower-case names ("eax", "cr3", "dr7", "cs", "ax").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from capstone import CsInsn


@dataclass(frozen=True)
class Reg:
    name: str


@dataclass(frozen=True)
class Imm:
    value: int


@dataclass(frozen=True)
class Mem:
    """A memory operand: seg:[base + index*scale + disp], `size` bytes wide."""

    size: int
    base: str | None = None
    index: str | None = None
    scale: int = 1
    disp: int = 0
    seg: str | None = None


Operand = Union[Reg, Imm, Mem]  # noqa: UP007 -- kept as a runtime alias for isinstance checks


@dataclass(frozen=True)
class Operation:
    """One instruction, decoded. `cls` names its row in `bt.isa` (None: not sensitive)."""

    cls: str | None
    address: int
    length: int
    mnemonic: str
    operands: tuple[Operand, ...]
    text: str
    rep: bool = False

    @property
    def next_address(self) -> int:
        return self.address + self.length


def operands_of(insn: CsInsn) -> tuple[Operand, ...]:
    """Operands of a Capstone instruction decoded with `detail = True`."""
    from capstone import x86_const as x

    out: list[Operand] = []
    for op in insn.operands:
        if op.type == x.X86_OP_REG:
            out.append(Reg(insn.reg_name(op.reg)))
        elif op.type == x.X86_OP_IMM:
            out.append(Imm(op.imm))
        elif op.type == x.X86_OP_MEM:
            m = op.mem
            out.append(Mem(
                size=op.size,
                base=insn.reg_name(m.base) if m.base else None,
                index=insn.reg_name(m.index) if m.index else None,
                scale=m.scale,
                disp=m.disp,
                seg=insn.reg_name(m.segment) if m.segment else None,
            ))
    return tuple(out)


def from_capstone(insn: CsInsn, cls: str | None) -> Operation:
    from capstone import x86_const as x

    rep = any(p in (x.X86_PREFIX_REP, x.X86_PREFIX_REPNE) for p in insn.prefix)
    return Operation(
        cls=cls,
        address=insn.address,
        length=insn.size,
        mnemonic=insn.mnemonic,
        operands=operands_of(insn),
        text=f"{insn.mnemonic} {insn.op_str}".strip(),
        rep=rep,
    )
