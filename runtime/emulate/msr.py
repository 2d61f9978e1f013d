"""RDMSR/WRMSR on virtual MSRs (SDM vol. 4). An MSR ring1 does not know raises
#GP(0) in the guest, as an unimplemented MSR does on hardware."""

from __future__ import annotations

from bt.operation import Operation
from runtime.context import Ctx, EmulationFault
from runtime.vcpu import MSR_TSC

NS_PER_TSC = 1  # the virtual TSC counts virtual ns (a 1 GHz invariant TSC)


def rdmsr(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    index = ctx.cpu.read_name("ecx")
    if index == MSR_TSC:
        value = ctx.clock() // NS_PER_TSC
    elif index in ctx.vcpu.msr:
        value = ctx.vcpu.msr[index]
    else:
        raise EmulationFault(13, 0)
    ctx.cpu.write_name("eax", value & 0xFFFFFFFF)
    ctx.cpu.write_name("edx", (value >> 32) & 0xFFFFFFFF)
    return None


def wrmsr(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    index = ctx.cpu.read_name("ecx")
    value = (ctx.cpu.read_name("edx") << 32) | ctx.cpu.read_name("eax")
    if index not in ctx.vcpu.msr and index != MSR_TSC:
        raise EmulationFault(13, 0)
    ctx.vcpu.msr[index] = value
    return None


EMULATORS = {"rdmsr": rdmsr, "wrmsr": wrmsr}
