"""The ring-3 kernel view: shadow page tables as a virtual TLB.

Under `bt run --guest-ring 3` the guest kernel runs at real CPL 3, where every access is a
user access (Intel SDM vol. 3 §4.6). Its supervisor pages must therefore be user pages in
the tables the CPU walks while it runs. The U/S bit is ANDed over both levels of 32-bit
paging, so the directory alone cannot grant it: the page-table level is shadowed too. This
is the shadow MMU of VMware's binary translator and of early KVM: a virtual TLB of shadow
entries in host memory the VMM owns (`bt.layout.VMM_RING3_PD`, `VMM_RING3_PT`: the VMM area,
write-protected against the guest like the rest of it, runtime/guard.py), filled one entry
at a time on the page fault the guest never sees, dropped on CR3 load (all) and INVLPG
(the 4 MiB of its address).

What a shadow leaf holds: the guest's frame, present, user, and writable where the guest
kernel at CPL 0 may write (both levels writable, or CR0.WP = 0: SDM §4.6) and the guest
already marked the page dirty. Accessed and dirty bits are the CPU's to set in the guest's
entries; here the VMM sets them, as runtime/shadowpd.py does for directory entries: A in
the guest's directory and table entries when it fills a leaf, D when the first write hits a
writable page the shadow kept read-only for that purpose. Shadow entries carry A and D
themselves, so the CPU's walker never writes these write-protected pages (a walker update
of a protected page is dropped, runtime/paging.py `vmm_page_table`).

A frame inside the VMM area (a hostile guest naming the VMM's physical pages) is mapped
supervisor-only: at CPL 3 the guest kernel cannot reach it, and its access is its own #PF.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bt import layout
from bt.errors import GuestStop
from runtime.shadowpd import FILLED, REPLACED, UNCHANGED, vmm_pde

PTE_P, PTE_W, PTE_U, PTE_A, PTE_D, PTE_PS = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80
ENTRIES = 1024
PAGES = layout.VMM_RING3_PT_PAGES
_VMM_END = layout.VMM_BASE + layout.VMM_SIZE


class KernelView:
    """The kernel view's shadow directory and its pool of shadow page tables."""

    def __init__(self, vmm: memoryview, ram: memoryview, area: Callable[[], layout.VmmArea],
                 wp: Callable[[], bool], pse: Callable[[], bool]) -> None:
        self._pd = np.frombuffer(vmm, dtype="<u4", count=ENTRIES,
                                 offset=layout.VMM_RING3_PD - layout.VMM_BASE)
        self._pool = np.frombuffer(vmm, dtype="<u4", count=ENTRIES * PAGES,
                                   offset=layout.VMM_RING3_PT - layout.VMM_BASE).reshape(PAGES, ENTRIES)
        self._ram = np.frombuffer(ram, dtype="<u4")
        self._area = area
        self._wp = wp                  # the guest's CR0.WP
        self._pse = pse                # the guest's CR4.PSE
        self._free = list(range(PAGES - 1, -1, -1))
        self._pt_of: dict[int, int] = {}   # directory index -> pool page
        self._vmm_index = -1
        #: Physical address of the guest's directory while guest paging is on.
        self.guest_pd: int | None = None
        #: Times the pool ran out and the whole view was dropped.
        self.resets = 0

    # -- the guest's tables ----------------------------------------------------------------------
    def _guest(self, phys: int) -> np.ndarray:
        if phys + 4 * ENTRIES > 4 * len(self._ram):
            raise GuestStop("page table outside guest RAM (--guest-ring 3)", detail=f"{phys:#010x}")
        return self._ram[phys >> 2:(phys >> 2) + ENTRIES]

    # -- keeping the view --------------------------------------------------------------------------
    def load(self, cr3: int) -> None:
        """A CR3 load (or paging turned on): drop every shadow entry."""
        self.guest_pd = cr3 & 0xFFFFF000
        self._clear()

    def unload(self) -> None:
        self.guest_pd = None

    def _clear(self) -> None:
        self._pd[:] = 0
        for page in self._pt_of.values():
            self._pool[page][:] = 0
            self._free.append(page)
        self._pt_of.clear()
        self._vmm_index = -1
        self.place_vmm()

    def place_vmm(self) -> bool:
        """The VMM's slot points at its page table, wherever the area is now; True if it moved."""
        index = self._area().pde_index
        if index == self._vmm_index:
            return False
        if self._vmm_index >= 0:
            self._pd[self._vmm_index] = 0
        self._drop(index)
        self._pd[index] = vmm_pde()
        self._vmm_index = index
        return True

    def invlpg(self, linear: int) -> bool:
        """INVLPG: drop the shadow of the 4 MiB around `linear` (its table's entries included,
        since the guest may have changed the directory entry too: SDM §4.10.4.1). True if
        anything was there."""
        index = (linear & 0xFFFFFFFF) >> 22
        if index == self._vmm_index or not self._pd[index] & PTE_P:
            return False
        self._drop(index)
        return True

    def _drop(self, index: int) -> None:
        self._pd[index] = 0
        page = self._pt_of.pop(index, None)
        if page is not None:
            self._pool[page][:] = 0
            self._free.append(page)

    # -- filling -----------------------------------------------------------------------------------
    def _leaf(self, pde: int, pte: int, frame: int) -> int:
        """The shadow of a guest leaf (module docstring)."""
        flags = PTE_P | PTE_A | PTE_D
        if self._kernel_writable(pde, pte) and pte & PTE_D:
            flags |= PTE_W
        if not layout.VMM_BASE <= frame < _VMM_END:
            flags |= PTE_U
        return frame | flags

    def _kernel_writable(self, pde: int, pte: int) -> bool:
        return bool(pde & pte & PTE_W) or not self._wp()

    def fault(self, linear: int) -> int:
        """A page fault at `linear` in the kernel view: fill or upgrade its shadow entry from
        the guest's (`FILLED`: nothing was there; `REPLACED`: an entry changed, flush the TLB);
        `UNCHANGED` means the guest's own tables refuse the access: the fault is the guest's."""
        if self.guest_pd is None:
            return UNCHANGED
        index = (linear & 0xFFFFFFFF) >> 22
        if index == self._vmm_index:
            return UNCHANGED
        gpd = self._guest(self.guest_pd)
        pde = int(gpd[index])
        if not pde & PTE_P:
            return UNCHANGED
        if not pde & PTE_A:
            pde |= PTE_A
            gpd[index] = pde                 # what the CPU writes into the guest's entry
        if pde & PTE_PS and self._pse():
            return self._fault_big(gpd, index, pde)
        gpt = self._guest(pde & 0xFFFFF000)
        slot = ((linear & 0xFFFFFFFF) >> 12) & 0x3FF
        pte = int(gpt[slot])
        if not pte & PTE_P:
            return UNCHANGED
        if not pte & PTE_A:
            pte |= PTE_A
            gpt[slot] = pte
        page = self._pt_of.get(index)
        replaced = False
        if page is None:
            if not self._free:
                # The pool is used up: start over (a TLB flush); the access faults again and
                # fills into an empty view.
                self.resets += 1
                self._clear()
                return REPLACED
            page = self._free.pop()
            self._pt_of[index] = page
            replaced = bool(self._pd[index] & PTE_P)     # a 4 MiB shadow entry was there
            # The directory level grants everything; the leaf decides (U and W are ANDed).
            self._pd[index] = (layout.VMM_RING3_PT + page * layout.PAGE_SIZE) | PTE_P | PTE_W | PTE_U | PTE_A
        table = self._pool[page]
        want = self._leaf(pde, pte, pte & 0xFFFFF000)
        now = int(table[slot])
        if now != want:
            table[slot] = want
            return REPLACED if (now & PTE_P or replaced) else FILLED
        if self._kernel_writable(pde, pte) and not pte & PTE_D:
            # Present, read-only in the shadow, writable for the guest: its first write.
            gpt[slot] = pte | PTE_D
            table[slot] = self._leaf(pde, pte | PTE_D, pte & 0xFFFFF000)
            return REPLACED
        return UNCHANGED

    def _fault_big(self, gpd: np.ndarray, index: int, pde: int) -> int:
        had_table = index in self._pt_of
        if had_table:
            self._drop(index)
        want = self._leaf(pde, pde, pde & 0xFFC00000) | PTE_PS
        now = int(self._pd[index])
        if now != want:
            self._pd[index] = want
            return REPLACED if (now & PTE_P or had_table) else FILLED
        if self._kernel_writable(pde, pde) and not pde & PTE_D:
            gpd[index] = pde | PTE_D
            self._pd[index] = self._leaf(pde, pde | PTE_D, pde & 0xFFC00000) | PTE_PS
            return REPLACED
        return UNCHANGED
