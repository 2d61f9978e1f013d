"""Write monitoring of the guest's GDT and LDT (VirtualBox SELM's write handlers), and of
its page directory (`DirectoryWatch`).

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

Cost: one hook call per guest store into those pages, for every store, also to other data
that shares a page with the table. `RunStats.table_writes` counts them; `bt bench watch`
measures one (5.8 µs against 0.1 µs for a store to an unwatched page, measured on the
shared 2-core development machine: about 35 µs per Linux context switch, which stores its
three TLS descriptors as six words).
"""

from __future__ import annotations

from collections.abc import Callable
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

    def refresh(self, around: int | None = None) -> None:
        """Watch the pages where the tables are now (module docstring). `around`: the address
        of an INVLPG, which changes translations only in its 4 MiB (the shadow directory's
        entry is copied again whole): nothing to do unless a table lies there."""
        if around is not None:
            lo = around & 0xFFC00000
            if not any(base < lo + 0x400000 and lo < base + size for _ldt, base, size in self._ranges()):
                return
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


class DirectoryWatch:
    """Write monitoring of the guest's current page directory (VirtualBox PGM monitored the
    guest's paging structures the same way).

    The CPU walks a shadow of the directory (runtime/shadowpd.py), copied on CR3 loads and
    INVLPG. On hardware a directory entry the guest makes present takes effect at once
    (nothing not-present is cached), and the entry for the 4 MiB slot the VMM area occupies
    is the guest's to use: so a store into the directory is made, then each entry it touched
    is copied into the shadow (`on_entry`), and a present entry in the VMM's slot moves the
    VMM area away before the guest's next instruction (runtime/relocate.py) instead of at the
    next #PF, INVLPG or slice end (issue 11, item 3). Cost: one hook call per store into the
    directory's page; kernels write their directory when they map a new page table, rarely
    next to hot data (a directory is a page of its own)."""

    def __init__(self, guard: VmmGuard, on_entry: Callable[[int], None]) -> None:
        self.guard = guard
        self.on_entry = on_entry
        self.page: int | None = None
        #: Stores into the directory seen.
        self.writes = 0

    def follow(self, pd: int | None, ram_size: int) -> None:
        """The guest's directory is at physical `pd` now (None: paging off)."""
        if pd is not None and pd + _PAGE > ram_size:
            pd = None              # not guest RAM: nothing the guest could write there anyway
        if pd == self.page:
            return
        if self.page is not None:
            self.guard.unwatch(self.page, self)
        self.page = pd
        if pd is not None:
            self.guard.watch(pd, self)

    def before_store(self, phys: int, size: int) -> None:
        return None

    def after_store(self, phys: int, size: int) -> None:
        if self.page is None or phys & _MASK != self.page:
            return
        self.writes += 1
        first = (phys & (_PAGE - 1)) >> 2
        last = min(((phys & (_PAGE - 1)) + size - 1) >> 2, 1023)
        for index in range(first, last + 1):
            self.on_entry(index)
