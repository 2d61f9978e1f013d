"""Moving the VMM area when the guest maps its slot (VirtualBox PGM's mapping conflicts).

The VMM area (bt/layout.py) occupies one 4 MiB slot of the guest's linear space while
guest paging is on, at home (the top slot, 0xFFC00000) to begin with. Guests map the top
of the address space too: xv6 maps 0xFE000000-4 GiB for its local and I/O APIC, Linux
its fixmap. When the guest's page directory has a present entry in the VMM's slot, the
VMM moves to the highest slot the guest leaves empty and carries on; only when there is
none does the run stop. While guest paging is off the area must be at home (linear ==
physical there).

What holds a linear VMM address and moves with it:

* the CPU's registers: GDTR, IDTR, TR (its hidden base) and LDTR, and EIP/ESP when the CPU
  is in VMM code or on a VMM stack at that moment (runtime/machine.py `move_to`,
  runtime/segments.py `moved`);
* descriptors the VMM wrote: its TSS and LDT descriptors, its call gate's offset, the TSS's
  ring-0 stack pointer;
* the shadow page directory's VMM entry (runtime/shadowpd.py `move`);
* patch code: every block is re-made at the same offset of patch memory, and every guest
  JMP into it re-pointed (patchmgr/manager.py `relocate`), so an EIP inside a block is
  simply shifted.

Physical addresses never change, so nothing is copied. Unicorn's TLB and translated
code are flushed, and the current slice ends (its `until` address was the old one).
Each move is counted with its reason in `RunStats.vmm_moves` (`bt run --stats/--json`).
A user can pin the slot with `bt run --vmm-base ADDR`: the area goes there once the
guest turns paging on and never moves again; a guest that maps it stops the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from unicorn import UcError
from unicorn import unicorn_const as uconst

from bt import layout
from bt.errors import GuestStop, InternalError
from runtime.cpu import EIP, ESP
from runtime.shadowpd import ShadowPd
from runtime.stats import VmmMove

if TYPE_CHECKING:
    from runtime.machine import Machine
    from runtime.patching import Patcher
    from runtime.segments import ShadowGdt
    from runtime.stats import RunStats


class Relocator:
    def __init__(self, m: Machine, shadow: ShadowPd, gdt: ShadowGdt, stats: RunStats,
                 patcher: Callable[[], Patcher], pinned: int | None = None) -> None:
        self.m = m
        self.shadow = shadow
        self.gdt = gdt
        self.stats = stats
        self._patcher = patcher
        #: `--vmm-base`: the slot the area takes while guest paging is on, and keeps.
        self.pinned = None if pinned is None else layout.VmmArea(pinned)
        #: Bumped on every move, so that code holding a linear VMM address across a call
        #: that may move the area can tell (runtime/traps.py `execute`).
        self.epoch = 0

    def check(self, why: str) -> None:
        """The guest's paging just changed (or a slice ended): put the area where it may
        be. `why` names the event, for the report."""
        area = self.m.vmm
        if self.shadow.guest_pd is None:
            if area != layout.HOME:
                self.move(layout.HOME, f"{why}: guest paging is off, linear == physical")
            return
        if self.pinned is not None:
            if self.shadow.guest_entry(self.pinned.pde_index) & 1:
                raise GuestStop("the guest maps the VMM area's pinned slot (--vmm-base)",
                                detail=f"page-directory entry {self.pinned.pde_index} "
                                       f"({self.pinned.base:#010x}) is present")
            if area != self.pinned:
                self.move(self.pinned, f"{why}: pinned by --vmm-base")
            return
        if not self.shadow.conflict():
            return
        slots = self.shadow.free_slots()
        if not slots:
            raise GuestStop("no free 4 MiB slot in the guest's linear space for the VMM area",
                            detail=f"the guest's page directory maps all of it, {area.base:#010x} included")
        self.move(layout.VmmArea(slots[0] << 22), f"{why}: the guest maps {area.base:#010x}")

    def move(self, new: layout.VmmArea, why: str) -> None:
        m, cpu = self.m, self.m.cpu
        old = m.vmm
        if new == old:
            return
        patcher = self._patcher()
        eip, esp = cpu.read(EIP), cpu.read(ESP)
        guest_eip = patcher.to_guest_eip(eip)
        m.move_to(new)
        self.gdt.moved()
        self.shadow.move(old, new)
        patcher.relocate(new)
        self.epoch += 1
        if old.contains(eip):
            now = self.follow(eip, old)
            if old.in_patch_memory(eip) and patcher.to_guest_eip(now) == now:
                # The block holding EIP could not be re-made (never seen; patchmgr/manager.py
                # `relocate`): go on at the guest instruction it stood for.
                now = guest_eip
            cpu.write(EIP, now)
        if old.contains(esp):
            cpu.write(ESP, self.follow(esp, old))
        try:
            m.uc.ctl(uconst.UC_CTL_TLB_FLUSH, uconst.UC_CTL_IO_WRITE)
            m.uc.ctl(uconst.UC_CTL_TB_FLUSH, uconst.UC_CTL_IO_WRITE)
        except UcError as err:
            raise InternalError(f"TLB flush after moving the VMM area failed: {err}") from err
        m.uc.emu_stop()
        self.stats.vmm_moves.append(VmmMove(old.base, new.base, why, guest_eip))

    def follow(self, address: int, before: layout.VmmArea) -> int:
        """Where `address`, a linear address in the area as it was at `before`, is now."""
        if before.contains(address):
            return self.m.vmm.linear(before.home(address))
        return address
