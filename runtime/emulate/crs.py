"""Control and debug registers: MOV CRn/DRn both ways, LMSW, CLTS, SMSW (SDM vol. 3 §2.5).

Reads return the virtual copies. Writes update the virtual copy and, for the
bits that change how the CPU translates (CR0.WP, CR4.PSE/PGE), the real
register (`real_paging`). The real CR3 always points at the shadow page directory, which
a guest CR3 load re-copies from the guest's, and the real CR0.PG is always set: with the
guest's paging off the shadow holds an identity map (runtime/shadowpd.py)."""

from __future__ import annotations

from bt.errors import GuestStop
from bt.operation import Operation, Reg
from runtime.context import Ctx, EmulationFault
from runtime.cpu import CR0, CR4, Cpu
from runtime.machine import CR4_TSD
from runtime.paging import CR0_PG
from runtime.vcpu import DR6_FIXED, DR7_FIXED

CR0_PE, CR0_TS, CR0_ET = 1 << 0, 1 << 3, 1 << 4
#: CR0 bits that reach the real CR0 (PE and PG always set: ring1 never leaves protected
#: mode, and the CPU always pages, on the shadow directory).
CR0_REAL = (1 << 16) | CR0_TS | (1 << 1) | (1 << 5)
#: CR4 bits that reach the real CR4: PSE, PGE, OSFXSR, OSXMMEXCPT, OSXSAVE (the CPU checks
#: the last three for the guest's own SSE and XSAVE instructions, and CPUID reports OSXSAVE).
CR4_PSE = 1 << 4
CR4_REAL = CR4_PSE | (1 << 7) | (1 << 9) | (1 << 10) | (1 << 18)


def real_paging(cpu: Cpu, cr0: int, cr4: int) -> None:
    """The real CR4 and CR0 for the guest's virtual ones (module docstring): CR4.PSE is
    forced on while the guest's paging is off, for the shadow's 4 MiB identity pages; CR4.TSD
    is always set, so that RDTSC faults and reads virtual time (runtime/machine.py)."""
    flat = not cr0 & CR0_PG
    cpu.write(CR4, (cr4 & CR4_REAL) | (CR4_PSE if flat else 0) | CR4_TSD)
    cpu.write(CR0, (cr0 & CR0_REAL) | CR0_PG | CR0_PE | CR0_ET)


def _cr_index(name: str) -> int:
    return int(name[2:])


def write_cr(ctx: Ctx, n: int, value: int) -> None:
    vcpu, cpu = ctx.vcpu, ctx.cpu
    value &= 0xFFFFFFFF
    if n == 0:
        if not value & CR0_PE:
            raise GuestStop("guest left protected mode (CR0.PE = 0)", cpu.read_name("eip"))
        vcpu.set_cr(0, value | CR0_ET)
        ctx.on_paging_change(None)     # the shadow directory, then the real CR3/CR4/CR0
    elif n == 2:
        vcpu.set_cr(2, value)
    elif n == 3:
        vcpu.set_cr(3, value)
        ctx.on_paging_change(None)     # re-copies the shadow directory; real CR3 stays on it
    elif n == 4:
        vcpu.set_cr(4, value)
        ctx.on_paging_change(None)
    else:
        raise EmulationFault(6, None)  # CR1, CR5-7: #UD


def mov_from_cr(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    dst, src = op.operands
    assert isinstance(src, Reg)
    n = _cr_index(src.name)
    if n not in (0, 2, 3, 4):
        raise EmulationFault(6, None)
    ctx.write(dst, ctx.vcpu.cr(n))
    return None


def mov_to_cr(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    dst, src = op.operands
    assert isinstance(dst, Reg)
    write_cr(ctx, _cr_index(dst.name), ctx.read(src))
    return None


def mov_from_dr(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    dst, src = op.operands
    assert isinstance(src, Reg)
    ctx.write(dst, ctx.vcpu.dr[_dr_index(src.name)])
    return None


def mov_to_dr(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    dst, src = op.operands
    assert isinstance(dst, Reg)
    # Virtual only: ring1 does not implement hardware breakpoints for the guest.
    n = _dr_index(dst.name)
    value = ctx.read(src)
    if n == 6:
        value = (value | DR6_FIXED) & 0xFFFFEFFF
    elif n == 7:
        value = (value | DR7_FIXED) & ~0xD800  # bits 11, 12, 14, 15 read as 0
    ctx.vcpu.dr[n] = value
    return None


def _dr_index(name: str) -> int:
    n = int(name[2:])
    if n in (4, 5):  # aliases of DR6/DR7 while CR4.DE = 0 (SDM §17.2.2)
        n += 2
    if n > 7:
        raise EmulationFault(6, None)
    return n


def lmsw(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    # SDM LMSW: loads PE, MP, EM, TS; cannot clear PE.
    low = ctx.read(op.operands[0], 2) & 0xF
    cr0 = ctx.vcpu.cr(0)
    write_cr(ctx, 0, (cr0 & ~0xE) | low | (cr0 & CR0_PE))
    return None


def clts(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    write_cr(ctx, 0, ctx.vcpu.cr(0) & ~CR0_TS)
    return None


def smsw(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    dst = op.operands[0]
    size = ctx.size(dst)
    ctx.write(dst, ctx.vcpu.cr(0) & (0xFFFF if size == 2 else 0xFFFFFFFF))
    return None


EMULATORS = {"mov_from_cr": mov_from_cr, "mov_to_cr": mov_to_cr, "mov_from_dr": mov_from_dr,
             "mov_to_dr": mov_to_dr, "lmsw": lmsw, "clts": clts, "smsw": smsw}
