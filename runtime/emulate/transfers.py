"""IRET, far RET and segment loads that fault because of ring compression.

The guest believes it runs in ring 0, so it uses RPL-0 selectors. At CPL 1:

* MOV SS / POP SS / LSS with an RPL-0 selector fault (SDM MOV: SS needs RPL ==
  CPL); the VMM loads the same selector with RPL 1 (its shadow descriptor has
  DPL 1).
* IRET and far RET to an RPL-0 CS are "returns to a more privileged level" and
  fault; the VMM pops the frame itself and continues at CS|1. For IRET this is
  also where the virtual IF/IOPL come back from the frame (an IRET at CPL 1 would
  keep the real ones, the raw-mode leak).
* Far JMP/CALL and loads of DS/ES/FS/GS succeed natively against the DPL-1
  shadow; if one faults the shadow may be stale (the guest wrote its GDT after
  LGDT): the trap handler resyncs it and re-executes (runtime/traps.py).

IRET and far RET back to ring 3 do not fault (outward returns are allowed at
CPL 1), so they reach this module only from patch stubs (hypercalls): the VMM
then lets the CPU do the outward return with a real IRETD/RETF in VMM code.
"""

from __future__ import annotations

import struct

from bt import layout
from bt.errors import GuestStop
from bt.operation import Imm, Mem, Operation, Reg
from runtime import machine
from runtime.context import HANDLED, Ctx, EmulationFault
from runtime.cpu import EFLAGS, SS
from runtime.vcpu import IF, MSR_SYSENTER_CS, VIRTUAL_FLAGS

#: EFLAGS.VM and EFLAGS.NT.
VM, NT = 1 << 17, 1 << 14
#: EFLAGS bits an IRET at CPL 0 restores (SDM IRET: all but VIP, VIF, VM from a 32-bit frame).
IRET_MASK = 0x00257FD5


def _kernel_cs(ctx: Ctx, sel: int) -> int:
    """The real CS for a return to the guest's ring 0 (SDM IRET/RET "return to same privilege
    level" at CPL 0): #GP(0) for a null selector, #GP(selector) for one that is not code of DPL
    0 (conforming: DPL <= 0), #NP(selector) if not present. RPL 1 passes as 0, as for SS
    (`load_ss`)."""
    if not sel & 0xFFFC:
        raise EmulationFault(13, 0)
    desc = ctx.gdt.guest_descriptor(sel)
    if desc is None or not desc.is_code or desc.dpl != 0:
        raise EmulationFault(13, sel & 0xFFFC)
    if not desc.present:
        raise EmulationFault(11, sel & 0xFFFC)
    return (sel & ~3) | ctx.gdt.ring     # the real ring of the guest kernel: 1 (or 3)


def _ring3_unsupported(ctx: Ctx, what: str) -> None:
    """Under --guest-ring 3 a return to user mode is the VMM's to make (runtime/ring3/):
    IRET through its INT3 sites; the rest is not done yet and stops cleanly."""
    if ctx.gdt.ring == 3:
        raise GuestStop(f"{what} to user mode under --guest-ring 3 is not supported yet",
                        ctx.cpu.read_name("eip"))


def _check_user_frame(ctx: Ctx, cs: int, ss: int) -> None:
    """The checks the real IRETD/RETF will make, done first so that a bad frame is
    the guest's #GP at its own instruction rather than a fault in VMM code."""
    code = ctx.gdt.guest_descriptor(cs)
    if code is None or not code.present or not code.is_code or code.dpl != 3:
        raise EmulationFault(13, cs & ~3)
    data = ctx.gdt.guest_descriptor(ss)
    if data is None or not data.present or data.is_code or data.is_system or data.dpl != 3 \
            or ss & 3 != 3 or not data.type & 2:
        raise EmulationFault(13, ss & ~3)


def load_ss(ctx: Ctx, sel: int) -> None:
    """MOV/POP/LSS to SS at the guest's CPL 0 (SDM vol. 2 MOV "IF SS is loaded"): a null
    selector #GP(0); outside the table, not a writable data segment, RPL or DPL not the
    CPL #GP(selector); not present #SS(selector). RPL 1 passes as RPL 0: the guest may have
    read its SS back (MOV r,SS shows RPL 1 unpatched) and load that value again."""
    if not sel & 0xFFFC:
        raise EmulationFault(13, 0)
    desc = ctx.gdt.guest_descriptor(sel)
    if desc is None or desc.is_code or desc.is_system or not desc.type & 2 \
            or sel & 3 not in (0, ctx.gdt.ring) or desc.dpl != 0:
        raise EmulationFault(13, sel & 0xFFFC)
    if not desc.present:
        raise EmulationFault(12, sel & 0xFFFC)
    ctx.cpu.write(SS, (sel & ~3) | ctx.gdt.ring)


def iret(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    cpu, vcpu = ctx.cpu, ctx.vcpu
    esp = cpu.read_name("esp")
    raw = ctx.mmu.read(esp, 12)
    eip = int.from_bytes(raw[0:4], "little")
    cs = int.from_bytes(raw[4:8], "little") & 0xFFFF
    flags = int.from_bytes(raw[8:12], "little")
    if flags & VM:
        # At CPL 0 an IRET whose frame sets VM enters virtual-8086 mode (SDM IRET
        # "RETURN-TO-VIRTUAL-8086-MODE"); ring1 has no virtual-8086 support.
        raise GuestStop("virtual-8086 mode is not supported", op.address, "IRET with EFLAGS.VM")
    if cpu.read(EFLAGS) & NT:
        # A nested-task return (SDM IRET "TASK-RETURN"): a hardware task switch.
        raise GuestStop("IRET with EFLAGS.NT (a task return) is not supported", op.address)
    if cs & 3 == 3:
        # Back to user mode: the CPU itself pops the frame with a real IRETD in VMM
        # code (an IRET at CPL 1 to ring 3 is legal; only the CPU may lower CPL).
        # The virtual IF/IOPL follow the frame; in ring 3 the real ones rule.
        _ring3_unsupported(ctx, "an IRET the scanner did not see")
        _check_user_frame(ctx, cs, int.from_bytes(ctx.mmu.read(esp + 16, 4), "little") & 0xFFFF)
        vcpu.vflags = (vcpu.vflags & ~VIRTUAL_FLAGS) | (flags & VIRTUAL_FLAGS)
        vcpu.user_flags = True
        return ctx.m.linear(machine.IRET_OUT)
    real_cs = _kernel_cs(ctx, cs)
    cpu.write_name("esp", esp + 12)
    real = cpu.read(EFLAGS)
    cpu.write(EFLAGS, ((real & ~IRET_MASK) | (flags & IRET_MASK) & ~VIRTUAL_FLAGS) | IF | 0x2)
    vcpu.vflags = (vcpu.vflags & ~VIRTUAL_FLAGS) | (flags & VIRTUAL_FLAGS)
    ctx.m.load_cs(real_cs)
    if flags & IF:
        cpu.write_name("eip", eip)
        if ctx.on_vif_set(eip) is not None:
            return HANDLED
    return eip


def far_ret(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    cpu = ctx.cpu
    esp = cpu.read_name("esp")
    raw = ctx.mmu.read(esp, 8)
    eip = int.from_bytes(raw[0:4], "little")
    cs = int.from_bytes(raw[4:8], "little") & 0xFFFF
    if cs & 3 == 3:
        _ring3_unsupported(ctx, "a far RET")
        if op.operands:   # RETF imm16 to ring 3: not used by 32-bit kernels
            raise EmulationFault(13, cs & ~3)
        _check_user_frame(ctx, cs, int.from_bytes(ctx.mmu.read(esp + 12, 4), "little") & 0xFFFF)
        ctx.vcpu.user_flags = True          # RETF keeps EFLAGS: user mode has the kernel's
        return ctx.m.linear(machine.RETF_OUT)
    real_cs = _kernel_cs(ctx, cs)
    extra = op.operands[0].value if op.operands and isinstance(op.operands[0], Imm) else 0
    cpu.write_name("esp", esp + 8 + extra)
    ctx.m.load_cs(real_cs)
    return eip


def mov_to_sreg(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    dst, src = op.operands
    assert isinstance(dst, Reg)
    sel = ctx.read(src, 2) & 0xFFFF
    if dst.name == "ss":
        load_ss(ctx, sel)
    else:
        ctx.cpu.write_name(dst.name, sel)
    return None


def pop_sreg(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    cpu = ctx.cpu
    esp = cpu.read_name("esp")
    sel = int.from_bytes(ctx.mmu.read(esp, 2), "little")
    load_ss(ctx, sel)
    cpu.write_name("esp", esp + 4)
    return None


def lss(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    dst, src = op.operands
    assert isinstance(src, Mem)
    raw = ctx.mmu.read(ctx.address(src), 6)
    load_ss(ctx, int.from_bytes(raw[4:6], "little"))
    ctx.write(dst, int.from_bytes(raw[0:4], "little"))
    return None


def push_sreg(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    # For patch stubs: the guest sees RPL 0 where the real selector has RPL 1.
    (src,) = op.operands
    assert isinstance(src, Reg)
    sel = ctx.cpu.read_name(src.name)
    ctx.push32(sel & ~3 if sel & 3 == 1 else sel)
    return None


def mov_from_sreg(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    dst, src = op.operands
    assert isinstance(src, Reg)
    sel = ctx.cpu.read_name(src.name)
    ctx.write(dst, sel & ~3 if sel & 3 == 1 else sel)
    return None


def sysexit(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    """SYSEXIT (SDM): to ring 3 at SYSENTER_CS+16:EDX with SYSENTER_CS+24:ECX. The
    CPU makes the outward change: an IRETD frame on the VMM's ring-1 stack."""
    _ring3_unsupported(ctx, "SYSEXIT")
    base = ctx.vcpu.msr[MSR_SYSENTER_CS] & 0xFFFC
    if not base:
        raise EmulationFault(13, 0)
    cpu = ctx.cpu
    cs, ss = (base + 16) | 3, (base + 24) | 3
    _check_user_frame(ctx, cs, ss)
    frame = struct.pack("<5I", cpu.read_name("edx"), cs, cpu.read(EFLAGS) | IF, cpu.read_name("ecx"), ss)
    top = layout.VMM_STACK1_TOP - len(frame)
    cpu.phys_write(top, frame)           # the VMM's stack: home address, supervisor only
    cpu.write_name("esp", ctx.m.linear(top))
    ctx.vcpu.user_flags = True           # SYSEXIT keeps EFLAGS: user mode has the kernel's
    return ctx.m.linear(machine.IRET_OUT)


EMULATORS = {"iret": iret, "sysexit": sysexit, "far_ret": far_ret, "mov_to_sreg": mov_to_sreg,
             "pop_sreg": pop_sreg, "lss": lss, "push_sreg": push_sreg, "mov_from_sreg": mov_from_sreg}
