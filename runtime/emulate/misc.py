"""HLT, cache and TLB maintenance, and the segment-inspection instructions.

HLT idles the virtual CPU until the next timer event in virtual time (the run
loop owns the clock). INVD/WBINVD are no-ops for an emulated cache. INVLPG drops
Unicorn's translations (its TLB follows the guest's page tables). LAR/LSL/VERR/
VERW are answered from the guest's own descriptors, as CPL 0 would see them,
for int3 patches that exit with them (they do not fault, so never trap)."""

from __future__ import annotations

from bt.operation import Operation
from runtime.context import Ctx
from runtime.segments import Descriptor

ZF = 1 << 6


def hlt(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    return ctx.on_halt(next_eip)


def nop(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    return None


def invlpg(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    ctx.on_paging_change()
    return None


def _set_zf(ctx: Ctx, on: bool) -> None:
    fl = ctx.cpu.read_name("eflags")
    ctx.cpu.write_name("eflags", (fl | ZF) if on else (fl & ~ZF))


def _visible(ctx: Ctx, sel: int) -> Descriptor | None:
    desc = ctx.gdt.guest_descriptor(sel)
    if desc is None or not desc.present:
        return None
    return desc


def lar(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    dst, src = op.operands
    desc = _visible(ctx, ctx.read(src, 2) & 0xFFFF)
    _set_zf(ctx, desc is not None)
    if desc is not None:
        ctx.write(dst, (desc.raw >> 32) & 0x00F0FF00)
    return None


def lsl(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    dst, src = op.operands
    desc = _visible(ctx, ctx.read(src, 2) & 0xFFFF)
    _set_zf(ctx, desc is not None)
    if desc is not None:
        ctx.write(dst, desc.limit)
    return None


def verr(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    desc = _visible(ctx, ctx.read(op.operands[0], 2) & 0xFFFF)
    ok = desc is not None and not desc.is_system and (not desc.is_code or bool(desc.type & 2))
    _set_zf(ctx, ok)
    return None


def verw(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    desc = _visible(ctx, ctx.read(op.operands[0], 2) & 0xFFFF)
    ok = desc is not None and not desc.is_system and not desc.is_code and bool(desc.type & 2)
    _set_zf(ctx, ok)
    return None


EMULATORS = {"hlt": hlt, "invd": nop, "wbinvd": nop, "wbnoinvd": nop, "invlpg": invlpg,
             "lar": lar, "lsl": lsl, "verr": verr, "verw": verw}
