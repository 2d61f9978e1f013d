"""RDMSR/WRMSR on virtual MSRs (SDM vol. 4), and RDTSC. An MSR ring1 does not know raises
#GP(0) in the guest, as an unimplemented MSR does on hardware.

The time-stamp counter is virtual: it counts virtual ns (`Ctx.clock`, a 1 GHz invariant
TSC), so it agrees with the PIT and the local APIC timer, which count virtual time too, and
is the same on every run. RDTSC reads it because the real CR4.TSD makes every RDTSC fault
(runtime/machine.py); so does RDMSR of IA32_TIME_STAMP_COUNTER."""

from __future__ import annotations

from bt.operation import Operation
from runtime.context import Ctx, EmulationFault
from runtime.vcpu import MSR_TSC, MSR_UCODE_REV

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


def rdtsc(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    value = ctx.clock() // NS_PER_TSC
    ctx.cpu.write_name("eax", value & 0xFFFFFFFF)
    ctx.cpu.write_name("edx", (value >> 32) & 0xFFFFFFFF)
    return None


def wrmsr(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    index = ctx.cpu.read_name("ecx")
    value = (ctx.cpu.read_name("edx") << 32) | ctx.cpu.read_name("eax")
    if index not in ctx.vcpu.msr and index != MSR_TSC:
        raise EmulationFault(13, 0)
    if index == MSR_UCODE_REV:
        return None     # writing 0 asks the CPU to report the revision: it stays what it is
    ctx.vcpu.msr[index] = value
    return None


EMULATORS = {"rdmsr": rdmsr, "wrmsr": wrmsr, "rdtsc": rdtsc}
