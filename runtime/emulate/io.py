"""IN/OUT/INS/OUTS (SDM vol. 1 §19). Unicorn never faults them (notes #1): its
IN/OUT hooks call `port_in`/`port_out` directly, counted as the #GP exits they
are on hardware. The Operation emulators below do the whole instruction, for
patch stubs that exit with an I/O Operation."""

from __future__ import annotations

from bt.operation import Imm, Operation, Reg
from runtime.context import Ctx


def _port(ctx: Ctx, operand: Reg | Imm) -> int:
    return ctx.read(operand) & 0xFFFF


def in_(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    dst, src = op.operands
    assert isinstance(dst, Reg) and isinstance(src, (Reg, Imm))
    size = ctx.size(dst)
    ctx.write(dst, ctx.bus.read(_port(ctx, src), size))
    return None


def out(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    dst, src = op.operands
    assert isinstance(dst, (Reg, Imm)) and isinstance(src, Reg)
    ctx.bus.write(_port(ctx, dst), ctx.size(src), ctx.read(src))
    return None


def _string(op: Operation, ctx: Ctx, inward: bool) -> None:
    size = {"b": 1, "w": 2, "d": 4}[op.mnemonic.rstrip()[-1]]
    cpu = ctx.cpu
    port = cpu.read_name("dx")
    step = -size if cpu.read_name("eflags") & (1 << 10) else size   # DF
    count = cpu.read_name("ecx") if op.rep else 1
    index = "edi" if inward else "esi"
    addr = cpu.read_name(index)
    for _ in range(count):
        if inward:
            ctx.mmu.write(addr, ctx.bus.read(port, size).to_bytes(size, "little"))
        else:
            ctx.bus.write(port, size, int.from_bytes(ctx.mmu.read(addr, size), "little"))
        addr = (addr + step) & 0xFFFFFFFF
    cpu.write_name(index, addr)
    if op.rep:
        cpu.write_name("ecx", 0)


def ins(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    _string(op, ctx, inward=True)
    return None


def outs(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    _string(op, ctx, inward=False)
    return None


EMULATORS = {"in": in_, "out": out, "ins": ins, "outs": outs}
