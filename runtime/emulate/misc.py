"""HLT, cache and TLB maintenance, and the segment-inspection instructions.

HLT idles the virtual CPU until the next timer event in virtual time (the run
loop owns the clock). INVD/WBINVD are no-ops for an emulated cache. INVLPG drops
Unicorn's translations (its TLB follows the guest's page tables). LAR/LSL/VERR/
VERW are answered from the guest's own descriptors, as CPL 0 would see them,
for int3 patches that exit with them (they do not fault, so never trap)."""

from __future__ import annotations

import functools

from unicorn import x86_const as ux

from bt import layout
from bt.operation import Mem, Operation
from runtime.context import Ctx, EmulationFault
from runtime.engine import SCRATCH_TCG_BUFFER, new_engine
from runtime.segments import Descriptor

ZF = 1 << 6


def hlt(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    return ctx.on_halt(next_eip)


def nop(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    return None


def invlpg(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    (target,) = op.operands
    ctx.on_paging_change(ctx.address(target) if isinstance(target, Mem) else None)
    return None


def _set_zf(ctx: Ctx, on: bool) -> None:
    fl = ctx.cpu.read_name("eflags")
    ctx.cpu.write_name("eflags", (fl | ZF) if on else (fl & ~ZF))


def _visible(ctx: Ctx, sel: int) -> Descriptor | None:
    desc = ctx.gdt.guest_descriptor(sel)
    if desc is None or not desc.present:
        return None
    # The CPU sets the accessed bit when it loads a segment, in the descriptor it
    # read: the shadow. The guest's copy would have it on hardware (SDM §3.4.5.1).
    table = layout.VMM_LDT if sel & 4 else layout.VMM_GDT
    shadow = Descriptor.from_bytes(ctx.cpu.phys_read(table + (sel & ~7), 8))
    if not desc.is_system and not desc.is_code and shadow.access & 1:   # as QEMU: data only
        desc = desc.with_access(desc.access | 1)
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


@functools.cache
def _host_cpuid(leaf: int, subleaf: int) -> tuple[int, int, int, int]:
    """What CPUID returns natively on this CPU model: run it once in a scratch
    engine (the guest would see the same by executing it; patch stubs exit with it)."""
    uc = new_engine(SCRATCH_TCG_BUFFER)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, b"\x0f\xa2")                       # cpuid
    uc.reg_write(ux.UC_X86_REG_EAX, leaf)
    uc.reg_write(ux.UC_X86_REG_ECX, subleaf)
    uc.emu_start(0x1000, 0x1002)
    regs = (ux.UC_X86_REG_EAX, ux.UC_X86_REG_EBX, ux.UC_X86_REG_ECX, ux.UC_X86_REG_EDX)
    a, b, c, d = (uc.reg_read(r) & 0xFFFFFFFF for r in regs)
    return a, b, c, d


def guest_cpuid(leaf: int, subleaf: int, cr4: int) -> tuple[int, int, int, int]:
    """What CPUID answers the guest: the CPU model's values, with CPUID.1:ECX.OSXSAVE
    mirroring the guest's CR4.OSXSAVE (SDM CPUID), not the scratch engine's."""
    a, b, c, d = _host_cpuid(leaf, subleaf)
    if leaf == 1:
        c = (c & ~CPUID1_OSXSAVE) | (CPUID1_OSXSAVE if cr4 & CR4_OSXSAVE else 0)
    return a, b, c, d


def cpuid(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    cpu = ctx.cpu
    a, b, c, d = guest_cpuid(cpu.read_name("eax"), cpu.read_name("ecx"), ctx.vcpu.cr(4))
    for name, value in (("eax", a), ("ebx", b), ("ecx", c), ("edx", d)):
        cpu.write_name(name, value)
    return None


#: CPUID feature bits (SDM vol. 2 CPUID, tables 3-10 and 3-8) the emulated instructions check.
CPUID1_MONITOR, CPUID1_XSAVE, CPUID1_OSXSAVE = 1 << 3, 1 << 26, 1 << 27
CPUID7_INVPCID, CPUID7_SMAP = 1 << 10, 1 << 20
CR4_OSXSAVE = 1 << 18


def has(leaf: int, reg: int, bit: int) -> bool:
    """Whether ring1's own CPUID (the one the guest reads, `cpuid`) reports a feature: an
    instruction it reports absent is #UD, as on the CPU it describes (and under QEMU)."""
    return bool(_host_cpuid(leaf, 0)[reg] & bit)


def _require(leaf: int, reg: int, bit: int) -> None:
    if not has(leaf, reg, bit):
        raise EmulationFault(6, None)


EMULATORS["cpuid"] = cpuid


# -- instructions Unicorn 2.1.4 does not implement (it stops with UC_ERR_INSN_INVALID;
#    runtime/vm.py hands them here when the guest runs them at CPL 1) ---------------------------------

AC = 1 << 18


def xsetbv(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    # SDM XSETBV: #UD unless XSAVE exists and CR4.OSXSAVE is set; XCR[ECX] = EDX:EAX; only
    # XCR0 exists and bit 0 (x87) must stay set.
    _require(1, 2, CPUID1_XSAVE)
    if not ctx.vcpu.cr(4) & CR4_OSXSAVE:
        raise EmulationFault(6, None)
    cpu = ctx.cpu
    value = (cpu.read_name("edx") << 32) | cpu.read_name("eax")
    if cpu.read_name("ecx") != 0 or not value & 1:
        raise EmulationFault(13, 0)
    ctx.vcpu.msr[XCR0] = value
    return None


def rdpmc(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    # The guest's CPL is 0, where RDPMC passes its privilege check; ring1 has no performance
    # counters, and QEMU (helper_rdpmc) raises #UD there for the same reason.
    raise EmulationFault(6, None)


def monitor_mwait(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    # #UD where CPUID.1:ECX.MONITOR says they are absent; else MONITOR arms nothing ring1
    # could see and MWAIT waits for an interrupt like HLT.
    _require(1, 2, CPUID1_MONITOR)
    return ctx.on_halt(next_eip) if op.mnemonic == "mwait" else None


def stac_clac(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    _require(7, 1, CPUID7_SMAP)
    fl = ctx.cpu.read_name("eflags")
    ctx.cpu.write_name("eflags", (fl | AC) if op.mnemonic == "stac" else (fl & ~AC))
    return None


def invpcid(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    _require(7, 1, CPUID7_INVPCID)
    ctx.on_paging_change(None)
    return None


#: Not an MSR: XCR0 is kept with the virtual MSRs under a key no MSR uses.
XCR0 = -1

EMULATORS.update({"xsetbv": xsetbv, "rdpmc": rdpmc, "monitor_mwait": monitor_mwait,
                  "stac_clac": stac_clac, "invpcid": invpcid})
