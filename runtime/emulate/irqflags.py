"""CLI, STI, PUSHF, POPF on the virtual IF/IOPL (SDM vol. 2: CLI, STI, PUSHF, POPF).

CLI/STI trap at CPL 1 with IOPL 0. PUSHF/POPF never trap (the leak patching
fixes); they are emulated here when a patch stub exits with them."""

from __future__ import annotations

from bt.operation import Operation
from runtime.context import Ctx
from runtime.paging import PageFault
from runtime.vcpu import IF, VIRTUAL_FLAGS

#: EFLAGS bits POPF may change at CPL 0 (SDM POPF: all but VM, RF, VIP, VIF, reserved).
POPF_MASK = 0x00247FD5


def cli(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    ctx.vcpu.set_vif(False)
    return None


def sti(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    ctx.vcpu.set_vif(True)
    # An IRQ that waited for IF = 1 comes now. Also when IF already was 1: patch
    # code sets the virtual IF inline and exits with STI only when an IRQ waits.
    if not ctx.irq_waiting():
        return None
    window = ctx.window_of(op.address)
    if window is not None and window[0] <= next_eip < window[1]:
        # This trap just patched the STI and the next instruction is in the same block, whose
        # code looks for the interrupt after STI's shadow instruction (patchmgr/block.py):
        # tell it one waits.
        ctx.vcpu.pending = 1
        return None
    if ctx.in_patch(next_eip):
        # The next instruction runs in another patch block: the run loop never delivers in
        # patch code, and a CLI later in that block could take the window away. So now, one
        # instruction before STI's shadow ends.
        return ctx.on_vif_set(next_eip)
    # STI's one-instruction interrupt shadow (SDM STI): the interrupt comes after the next
    # instruction. In the idiom "STI; HLT" the HLT starts and the interrupt then wakes it,
    # so the handler returns after it; any other instruction runs first (the run loop).
    try:
        if ctx.mmu.read(next_eip, 1) == b"\xf4":
            return ctx.on_vif_set(next_eip + 1)
    except PageFault:
        pass
    ctx.irq_shadow()
    return None


def pushf(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    ctx.push32(ctx.vcpu.guest_eflags(ctx.cpu.read_name("eflags")) & ~0x30000)  # RF, VM read as 0
    return None


def popf(op: Operation, ctx: Ctx, next_eip: int) -> int | None:
    value = ctx.pop32()
    real = ctx.cpu.read_name("eflags")
    ctx.cpu.write_name("eflags", (real & ~POPF_MASK | (value & POPF_MASK) & ~VIRTUAL_FLAGS) | IF)
    ctx.vcpu.vflags = (ctx.vcpu.vflags & ~VIRTUAL_FLAGS) | (value & VIRTUAL_FLAGS)
    if value & IF:
        return ctx.on_vif_set(next_eip)
    return None


EMULATORS = {"cli": cli, "sti": sti, "pushf": pushf, "popf": popf}
