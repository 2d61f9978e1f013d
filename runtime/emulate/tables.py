"""Descriptor tables: LGDT LIDT LLDT LTR and SGDT SIDT SLDT STR (SDM vol. 3 §2.4).

The real GDTR/IDTR/TR never change: LGDT resyncs the shadow GDT (VirtualBox
SELM), LIDT only records where the guest's IDT is (runtime/deliver.py reads it),
LTR records the guest's TSS, whose ss0:esp0 the VMM copies into its own TSS on
each user -> kernel transition. The S* forms return the virtual values."""

from __future__ import annotations

import struct

from bt.operation import Mem, Operation
from runtime.context import Ctx, EmulationFault
from runtime.segments import TYPE_TSS_AVAIL, TYPE_TSS_BUSY


def _table_operand(op: Operation) -> Mem:
    m = op.operands[0]
    if not isinstance(m, Mem):
        raise EmulationFault(6, None)  # LGDT with a register operand is #UD
    return m


def lgdt(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    limit, base = struct.unpack("<HI", ctx.mmu.read(ctx.address(_table_operand(op)), 6))
    ctx.vcpu.set_table("gdtr", base, limit)
    ctx.gdt.load(base, limit)
    return None


def lidt(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    limit, base = struct.unpack("<HI", ctx.mmu.read(ctx.address(_table_operand(op)), 6))
    ctx.vcpu.set_table("idtr", base, limit)
    return None


def lldt(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    sel = ctx.read(op.operands[0], 2) & 0xFFFF
    if sel & 4 or not ctx.gdt.load_ldt(sel):
        raise EmulationFault(13, sel & ~3)
    ctx.vcpu.ldtr = sel
    return None


def ltr(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    sel = ctx.read(op.operands[0], 2) & 0xFFFF
    desc = ctx.gdt.guest_descriptor(sel)
    if desc is None or not desc.is_system or desc.type != TYPE_TSS_AVAIL or not desc.present:
        raise EmulationFault(13, sel & ~3)
    # SDM LTR: marks the descriptor busy, in the guest's own GDT.
    index = sel & ~7
    base, _limit = ctx.vcpu.table("gdtr")
    ctx.mmu.write(base + index, desc.with_access((desc.access & ~0xF) | TYPE_TSS_BUSY).to_bytes())
    ctx.vcpu.tr = sel
    return None


def sgdt(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    base, limit = ctx.vcpu.table("gdtr")
    ctx.mmu.write(ctx.address(_table_operand(op)), struct.pack("<HI", limit, base))
    return None


def sidt(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    base, limit = ctx.vcpu.table("idtr")
    ctx.mmu.write(ctx.address(_table_operand(op)), struct.pack("<HI", limit, base))
    return None


def sldt(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    dst = op.operands[0]
    ctx.write(dst, ctx.vcpu.ldtr, ctx.size(dst) if not isinstance(dst, Mem) else 2)
    return None


def str_(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    dst = op.operands[0]
    ctx.write(dst, ctx.vcpu.tr, ctx.size(dst) if not isinstance(dst, Mem) else 2)
    return None


EMULATORS = {"lgdt": lgdt, "lidt": lidt, "lldt": lldt, "ltr": ltr, "sgdt": sgdt, "sidt": sidt,
             "sldt": sldt, "str": str_}
