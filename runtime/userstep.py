"""Guest user code (ring 3) that reaches patched guest-kernel code runs the guest's own bytes.

Patches are the guest kernel's (VirtualBox PATM patched ring-0 code only): a patch block
works on the guest kernel's virtual CPU state and its exits are emulated with the guest
kernel's privileges. Guest user code can still reach a patched address, whenever the guest
maps kernel code user-accessible (a flat U/S = 1 identity map, common in small kernels) or
shares a page of it with ring 3: it then meets a JMP into patch memory or an INT3
replacement instead of what the guest wrote. On hardware that user runs the guest's
instruction at CPL 3, where a privileged one faults #GP(0) in the guest kernel's handler and
an unprivileged one (PUSHF, CPUID...) just runs. Emulating the patch's exit for it instead
would do kernel work for a user process (issue 11, item 2): a WRMSR, a CR3 load, an OUT to
the debug-exit port, on a path its kernel never offered.

So the VMM never lets ring 3 run patch code or take a patch exit. It notices ring 3 at a
patched window in three ways, all of them exits that happen anyway:

* the INT3 of an INT3 replacement, raised at CPL 3 (a software interrupt, `exit_at` is
  never asked);
* the #PF of a fetch in patch memory at CPL 3, after the window's JMP (the VMM's pages are
  supervisor-only: runtime/paging.py `vmm_page_table`);
* a slice that starts at CPL 3 inside a window (an IRET or an interrupt frame returning
  there).

Then the window gets the guest's bytes back (`Patcher.lift`), the CPU runs exactly one
instruction at CPL 3 (a one-instruction slice: it faults or not as on hardware, and a fault
goes to the guest kernel through its IDT like any ring-3 fault), and the patch goes back
(`Patcher.relay`) before anything else runs. Nothing is intercepted before the CPU sees it:
the CPU runs the guest's instruction at the guest's CPL.

Left as it is (documented in docs/threat-model.md): ring 3 jumping into the *middle* of a
patch's 5-byte JMP runs the JMP's tail bytes as code, at CPL 3, before anything notices,
and a user alias (another linear address) of patched kernel code reaches patch memory at
an offset the VMM cannot map back to a guest instruction (then it is a #PF at that address).
"""

from __future__ import annotations

from collections.abc import Callable

from runtime.context import Ctx
from runtime.cpu import EIP
from runtime.patching import Patcher

VEC_BP = 3


class UserSteps:
    def __init__(self, ctx: Ctx, patcher: Callable[[], Patcher]) -> None:
        self.ctx = ctx
        self._patcher = patcher
        #: The window lifted for the current one-instruction slice (an address inside it).
        self.lifted: int | None = None

    def user_at_patch(self, eip: int, vector: int, soft: bool) -> bool:
        """An exception at CPL 3 (`eip` as the hook saw it): if it only happened because ring
        3 met a patch, continue at the guest instruction the patch stands for, which the next
        slice runs from the guest's own bytes (`begin`); True then."""
        patcher = self._patcher()
        area = self.ctx.m.vmm
        if soft and vector == VEC_BP:
            guest = eip - 1                       # the INT3 replacement itself
        elif area.in_patch_memory(eip):
            guest = patcher.to_guest_eip(eip)     # past the window's JMP
            if guest == eip:
                return False                      # no block holds it: the fault is what it is
        else:
            return False
        if patcher.window_at(guest) is None:
            return False
        self.ctx.cpu.write(EIP, guest)
        self.ctx.m.uc.emu_stop()
        return True

    def begin(self, pc: int, cpl: int) -> bool:
        """Before a slice at `pc`: True if ring 3 is at a patched window, which is lifted for
        a one-instruction slice."""
        if cpl != 3:
            return False
        patcher = self._patcher()
        if patcher.window_at(pc) is None:
            return False
        patcher.lift(pc)
        self.lifted = pc
        self.ctx.stats.user_patch_steps += 1
        return True

    def end(self) -> None:
        """After the slice: the patch back in place."""
        if self.lifted is not None:
            at, self.lifted = self.lifted, None
            self._patcher().relay(at)
