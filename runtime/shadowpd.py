"""The shadow page directory: the one the CPU walks while guest paging is on.

The guest's page directory is the guest's: the VMM never writes into it (before, it
put its own entry there, which the guest could read back, copy, or overwrite to repoint
the VMM area at its own RAM). The real CR3 points at a page of the VMM area instead
(`bt.layout.VMM_SHADOW_PD`), write-protected like the rest of it (runtime/guard.py),
that holds the guest's 1024 entries as they are, but one: the VMM's 4 MiB slot, which
points at the VMM page table (`bt.layout.VMM_PT`). Page tables below the directory are
the guest's own, walked by the CPU in guest RAM: only the top level is shadowed, so
the guest's PTE updates take effect as on hardware and cost nothing.

Keeping the copy in step (what VirtualBox's PGM did for its shadow tables, at the top
level only):

* a CR3 load or CR0.PG turning on copies the whole directory (`load`);
* INVLPG re-copies the entry of its address (`sync`): after changing a present entry,
  the guest must flush, on hardware too (Intel SDM vol. 3 §4.10.4);
* an entry the guest made present later without flushing (a new page table: allowed on
  hardware, since nothing not-present is cached) is picked up by the page fault it
  causes here: the VMM re-copies it and restarts the instruction without the guest
  seeing a fault (`sync` again, from the #PF exit; counted as a "paging" exit).

A guest that maps the VMM's slot itself conflicts with the VMM: `conflict` says so, and
the runtime moves the VMM area to a free slot (runtime/relocate.py).

While the guest's paging is off the CPU still pages, on this same directory filled with an
identity map of 4 MiB pages, user and writable, but for the VMM's slot (`load_flat`). The
guest sees no difference (linear == physical, no protection), but the VMM's page table keeps
its rule there too: guest ring 3 can reach no VMM page but the trampoline, so it can neither
run patch code nor write the patch-writable state page (issue 11, item 2). Segment limits
could not do that: QEMU's TCG, hence Unicorn, checks none on data accesses.

Accessed and dirty bits, which the CPU would set in the guest's entries but sets in the
shadow's here: the shadow leaves out an entry the guest has not marked accessed, so that
the CPU's first use of it faults here; the VMM sets A in the guest's entry then, as the
CPU would, and copies it (`fault`). A writable 4 MiB page the guest has not marked dirty is
copied read-only, so the first write faults and sets D, when the guest runs with CR0.WP (a
read-only page stops supervisor writes only then); without WP, D is set with A on a
writable 4 MiB page. Once set, the bits stay set and the entry is copied as it is, so a
guest that does not clear them pays nothing after the first use.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bt import layout
from bt.errors import GuestStop

PTE_P, PTE_W, PTE_U, PTE_A, PTE_D, PTE_PS = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80
ENTRIES = 1024
#: What `ShadowPd.sync` did.
UNCHANGED, FILLED, REPLACED = 0, 1, 2


class ShadowPd:
    """The shadow page directory over the VMM's host memory and guest RAM."""

    def __init__(self, vmm: memoryview, ram: memoryview, area: Callable[[], layout.VmmArea],
                 wp: Callable[[], bool] = lambda: True) -> None:
        off = layout.VMM_SHADOW_PD - layout.VMM_BASE
        self._shadow = np.frombuffer(vmm, dtype="<u4", count=ENTRIES, offset=off)
        self._vmm_words = np.frombuffer(vmm, dtype="<u4")
        self._ram = np.frombuffer(ram, dtype="<u4")
        self._area = area
        self._wp = wp              # the guest's CR0.WP (module docstring: dirty bits)
        #: Physical address of the guest's directory (CR3 & ~0xFFF) while paging is on.
        self.guest_pd: int | None = None

    # -- the guest's directory -----------------------------------------------------------------
    def _guest(self, pd: int) -> np.ndarray:
        """The guest's directory at physical `pd` as 1024 words (guest RAM or, for a hostile
        guest, the VMM area: reading it gives the guest nothing it could not read anyway)."""
        if pd + 4 * ENTRIES <= 4 * len(self._ram):
            return self._ram[pd >> 2:(pd >> 2) + ENTRIES]
        if layout.VMM_BASE <= pd and pd + 4 * ENTRIES <= layout.VMM_BASE + layout.VMM_SIZE:
            at = (pd - layout.VMM_BASE) >> 2
            return self._vmm_words[at:at + ENTRIES]
        raise GuestStop("page directory outside guest RAM", detail=f"CR3 {pd:#010x}")

    def guest_entry(self, index: int) -> int:
        assert self.guest_pd is not None
        return int(self._guest(self.guest_pd)[index])

    def _mirror(self, entries: np.ndarray) -> np.ndarray:
        """What the shadow holds for guest entries (module docstring): nothing for an entry
        not present or not yet accessed; a writable 4 MiB page not yet dirty read-only (with
        CR0.WP) or with D (without)."""
        entries = np.asarray(entries, dtype=np.uint32)
        used = (entries & PTE_P != 0) & (entries & PTE_A != 0)
        out = np.where(used, entries, 0).astype(np.uint32)
        clean = (out & PTE_PS != 0) & (out & PTE_W != 0) & (out & PTE_D == 0)
        if self._wp():
            return np.where(clean, out & ~np.uint32(PTE_W), out).astype(np.uint32)
        return np.where(clean, out | PTE_D, out).astype(np.uint32)

    def _mirror_one(self, entry: int) -> int:
        """`_mirror` of one entry, without NumPy (an INVLPG's: 40,000 of them in a Linux boot,
        where NumPy's per-call cost on one element was most of the exit)."""
        entry &= 0xFFFFFFFF
        if not entry & PTE_P or not entry & PTE_A:
            return 0
        if entry & PTE_PS and entry & PTE_W and not entry & PTE_D:
            return entry & ~PTE_W & 0xFFFFFFFF if self._wp() else entry | PTE_D
        return entry

    # -- keeping the copy ----------------------------------------------------------------------
    def load(self, cr3: int) -> None:
        """Guest paging is on with directory `cr3`: copy it (the VMM slot aside)."""
        self.guest_pd = cr3 & 0xFFFFF000
        self._shadow[:] = self._mirror(self._guest(self.guest_pd))
        self._install_vmm()

    def load_flat(self) -> None:
        """Guest paging is off: the identity map (module docstring), the VMM's slot aside."""
        self.guest_pd = None
        self._shadow[:] = _FLAT
        self._install_vmm()

    def _install_vmm(self) -> None:
        self._shadow[self._area().pde_index] = vmm_pde()

    def _set(self, index: int, entry: int) -> int:
        old = int(self._shadow[index])
        if old == entry:
            return UNCHANGED
        self._shadow[index] = entry
        return REPLACED if old & PTE_P else FILLED

    def sync(self, linear: int) -> int:
        """INVLPG `linear`: re-copy the guest's entry for it. `UNCHANGED`, `FILLED` (the
        shadow's entry was not present: nothing of it can be in a TLB) or `REPLACED`. The VMM's
        own slot is never copied (a guest entry there is a `conflict`)."""
        if self.guest_pd is None:
            return UNCHANGED
        index = (linear & 0xFFFFFFFF) >> 22
        if index == self._area().pde_index:
            return UNCHANGED
        return self._set(index, self._mirror_one(self.guest_entry(index)))

    def fault(self, linear: int) -> int:
        """A page fault at `linear`: if the guest's entry allows more than the shadow's (first
        use: set A; first write to a clean 4 MiB page: set D; or an entry made present since
        the last copy), update both and say so; `UNCHANGED` means the fault is the guest's."""
        if self.guest_pd is None:
            return UNCHANGED
        index = (linear & 0xFFFFFFFF) >> 22
        if index == self._area().pde_index:
            return UNCHANGED
        guest = self._guest(self.guest_pd)
        entry = int(guest[index])
        if not entry & PTE_P:
            return self._set(index, 0)
        now = int(self._shadow[index])
        marked = entry | PTE_A
        if entry & PTE_PS and entry & PTE_W and not entry & PTE_D and now & PTE_P \
                and now | PTE_W == marked:
            marked |= PTE_D          # the first write to the page the shadow kept read-only
        if marked != entry:
            guest[index] = marked    # what the CPU writes into the guest's entry
        return self._set(index, self._mirror_one(marked))

    def conflict(self) -> bool:
        """The guest maps the slot the VMM area occupies (present entry there)."""
        return self.guest_pd is not None and bool(self.guest_entry(self._area().pde_index) & PTE_P)

    def move(self, old: layout.VmmArea, new: layout.VmmArea) -> None:
        """The VMM area moved from slot `old` to `new` (runtime/relocate.py): give the old
        slot back to the guest's entry and put the VMM's into the new one."""
        if self.guest_pd is None:
            self._shadow[old.pde_index] = _FLAT[old.pde_index]
            self._shadow[new.pde_index] = vmm_pde()
            return
        self._shadow[old.pde_index] = self._mirror_one(self.guest_entry(old.pde_index))
        self._shadow[new.pde_index] = vmm_pde()

    def free_slots(self) -> list[int]:
        """Page-directory indexes the guest leaves not present, highest first (slot 0, the
        null page's, excluded): where the VMM area may go."""
        assert self.guest_pd is not None
        free = np.flatnonzero((self._guest(self.guest_pd) & PTE_P) == 0)
        return [int(i) for i in free[::-1] if i != 0]


#: The identity map of 4 MiB pages for a guest with paging off (CR4.PSE is on in the real
#: CR4 then: runtime/emulate/crs.py `real_paging`).
_FLAT = ((np.arange(ENTRIES, dtype=np.uint32) << 22)
         | np.uint32(PTE_P | PTE_W | PTE_U | PTE_A | PTE_D | PTE_PS)).astype(np.uint32)


def vmm_pde() -> int:
    """The VMM slot's entry: the VMM page table, present, writable, user (the one user page,
    the ring 3 -> 1 trampoline, is reachable; every other VMM page is supervisor in `VMM_PT`)."""
    return layout.VMM_PT | PTE_P | PTE_W | PTE_U | PTE_A
