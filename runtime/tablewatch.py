"""Write monitoring of the guest's GDT and LDT (VirtualBox SELM's write handlers).

The CPU runs on shadows of the guest's descriptor tables (runtime/segments.py). A guest
may rewrite a descriptor it already loaded and reload the segment: Linux i386 writes its
TLS descriptors into the GDT on every context switch and then loads GS from them. On
hardware the next load reads the new descriptor; with a stale shadow it would read the
old one, with no fault to tell (issue 11, item 12). So the physical pages holding the
guest's GDT and LDT are write-monitored through the VMM guard (runtime/guard.py `watch`):
a store there is made, then the descriptors it touched are shadowed again before the
guest's next instruction. The VMM's own stores into those pages on the guest's behalf (an
emulated LTR setting the busy bit, an emulated REP INS) reach the same watcher
(runtime/paging.py `Mmu.write`).

Which pages: the physical pages under the linear ranges [GDTR.base, +limit] and the LDT's,
through the guest's page tables now; recomputed after LGDT, LLDT, a change of the LDT's
descriptor and every change of the guest's paging (CR3/CR0/CR4 loads, INVLPG). A table
page the guest does not map is not watched (nothing loads descriptors from it).

Cost: one hook call per guest store into those pages (a few µs), for every store, also to
other data that shares a page with the table. `RunStats.table_writes` counts them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bt import layout
from runtime.paging import Mmu, PageFault

if TYPE_CHECKING:
    from runtime.guard import VmmGuard
    from runtime.segments import ShadowGdt
    from runtime.stats import RunStats

_PAGE = layout.PAGE_SIZE
_MASK = ~(_PAGE - 1)


class TableWatch:
    """Watches the pages of the guest's GDT and LDT for one VM (module docstring)."""

    def __init__(self, guard: VmmGuard, gdt: ShadowGdt, mmu: Mmu, stats: RunStats,
                 ram_size: int) -> None:
        self.guard = guard
        self.gdt = gdt
        self.mmu = mmu
        self.stats = stats
        self.ram_size = ram_size
        #: Physical page -> [(is the LDT, the table's byte offset at the page's start)].
        self._pages: dict[int, list[tuple[bool, int]]] = {}
        gdt.on_tables = self.refresh

    def _ranges(self) -> list[tuple[bool, int, int]]:
        gdt = self.gdt
        out = [(False, gdt.guest_base, gdt.guest_limit + 1)]
        if gdt.ldt_selector and gdt.ldt_synced:
            out.append((True, gdt.ldt_base, gdt.ldt_limit + 1))
        return out

    def refresh(self) -> None:
        """Watch the pages where the tables are now (module docstring)."""
        pages: dict[int, list[tuple[bool, int]]] = {}
        for ldt, base, size in self._ranges():
            first = base & _MASK
            for linear in range(first, base + size, _PAGE):
                try:
                    phys = self.mmu.translate(linear & 0xFFFFFFFF) & _MASK
                except PageFault:
                    continue
                if phys + _PAGE > self.ram_size:
                    continue        # not guest RAM (the VMM area, a hole): nothing to watch
                pages.setdefault(phys, []).append((ldt, linear - base))
        for page in self._pages.keys() - pages.keys():
            self.guard.unwatch(page, self)
        for page in pages.keys() - self._pages.keys():
            self.guard.watch(page, self)
        self._pages = pages

    def before_store(self, phys: int, size: int) -> None:
        return None

    def after_store(self, phys: int, size: int) -> None:
        self.stats.table_writes += 1
        for ldt, start in self._pages.get(phys & _MASK, ()):
            offset = start + (phys & (_PAGE - 1))
            end = offset + size
            limit = (self.gdt.ldt_limit if ldt else self.gdt.guest_limit) + 1
            if end <= 0 or offset >= limit:
                continue
            self.gdt.write_seen(ldt, max(offset, 0), min(end, limit) - max(offset, 0))
