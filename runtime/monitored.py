"""CSAM's monitored pages: the kernel ELF's code pages, write-monitored while patching; a
written page loses its execute permission and is scanned again before it next runs.

The static scan sees the kernel as its ELF holds it. Linux rewrites its own code at boot
(alternatives, paravirt patching: inline PUSHF/POPF where the scan saw indirect calls), and
those never trap, so PATM's "patch a site when it traps" never sees them (patchmgr/rescan.py).
runtime/codewatch.py covers guest code *outside* the ELF's executable segments; this module
covers the code inside them. Both go through the guard, which owns every page's rights
(runtime/guard.py):

* a monitored page is watched (`VmmGuard.watch`); a guest store there reaches
  `after_store`, which records the written range and asks for the slice to end at the next
  block boundary (`stop_soon`). Nothing about the page's rights or Unicorn's translations
  changes inside the store's hook: doing so makes Unicorn 2.1.4 restart the store (a
  read-modify-write done twice) or crash (measured: SIGSEGV in helper_le_stl_mmu, when
  dropping translations refills the TLB entry the store is using);
* between slices (`end_of_slice`) a written page's translations are dropped and its execute
  permission taken (`VmmGuard.forbid_exec`), and with it every monitored page of its aligned
  64 KiB group (`GROUP`): Unicorn never merges the regions a page-rights change splits, and
  each new region costs more the more there are (runtime/guard.py `_protect`). Page by
  page, Linux's boot left 2,400 regions and spent 56 s of 100 in those splits; by group it
  takes one extra fetch stop for each group page that runs before the group is given back;
* the guest's next fetch from any of them ends the slice in runtime/codewatch.py's fetch
  hook, whose `resume` hands the page here first (`fetch_fault`): the group's written ranges
  are rescanned by the patch manager and its pages may run again.

A bzImage's kernel is monitored only once guest paging is on (`monitor_when_paged`): its
decompressor writes every one of those pages first, with paging off.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from bt import layout
from runtime.paging import CR0_PG, PageFault

if TYPE_CHECKING:
    from patchmgr.manager import PatchManager

_PAGE = layout.PAGE_SIZE
_MASK = ~(_PAGE - 1)


class KernelCodeMonitor:
    #: A monitored page written this often without running in between stops being monitored:
    #: code the guest freed and now uses as data (Linux's init text after boot), whose every
    #: store would otherwise be a fault.
    MONITOR_WRITES = 1024
    #: Pages whose execute permission is taken and given back together (module docstring).
    GROUP = 16

    def __init__(self, vm: Any, phys: Callable[[int], int], manager: Callable[[], PatchManager | None],
                 drop: Callable[[int, int, int], None]) -> None:
        self.vm = vm
        self.uc = vm.machine.uc
        self._phys = phys                 # guest address -> physical (the kernel's ELF)
        self._manager = manager
        self._drop = drop                 # (address, size, physical): written code's translations
        self.monitored: set[int] = set()
        self._linear: dict[int, int] = {}              # monitored physical page -> its linear page
        #: Written (address, size) ranges not yet rescanned, per page written since it last ran.
        self._dirty: dict[int, list[tuple[int, int]]] = {}
        self._writes: Counter[int] = Counter()
        self._revoke_later: set[int] = set()
        self._unmonitor_later: set[int] = set()
        #: Monitored pages without their execute permission now (written, not yet run again).
        self.revoked: set[int] = set()
        #: Monitored pages given up on (written `MONITOR_WRITES` times without running).
        self.unmonitored = 0
        #: Code ranges to monitor once guest paging is on (`monitor_when_paged`).
        self._pending: list[tuple[int, int]] = []
        self._group_mask = ~(self.GROUP * _PAGE - 1)

    def monitor(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Write-monitor the kernel's code pages (`ranges` of guest addresses and sizes)."""
        pages: dict[int, int] = {}
        for start, size in ranges:
            for linear in range(start & _MASK, start + size, _PAGE):
                phys = self._phys(linear) & _MASK
                if phys + _PAGE <= self.vm.machine.ram_size:
                    pages[phys] = linear
        fresh = [p for p in sorted(pages) if p not in self.monitored]
        for phys in fresh:
            self.monitored.add(phys)
            self._linear[phys] = pages[phys]
        self.vm.guard.watch_pages(fresh, self)

    def monitor_when_paged(self, ranges: Iterable[tuple[int, int]]) -> None:
        """`monitor` once guest paging is on: a bzImage's kernel is not in memory before its
        decompressor has written it there (and that code runs with paging off, which the
        kernel turns on only after). Monitoring from the start would fault on every store of
        the decompression and give up on every page (`MONITOR_WRITES`)."""
        self._pending = list(ranges)

    # -- the guard's PageWatcher ----------------------------------------------------------------
    def before_store(self, phys: int, size: int) -> None:
        return None

    def after_store(self, phys: int, size: int) -> None:
        page = phys & _MASK
        if page not in self.monitored:
            return
        address = self._linear[page] | (phys & (_PAGE - 1))
        dirty = self._dirty.setdefault(page, [])
        if not dirty and page not in self.revoked:
            self._revoke_later.add(page)
        dirty.append((address, size))
        self._writes[page] += 1
        if self._writes[page] > self.MONITOR_WRITES:
            self._unmonitor_later.add(page)
        if page not in self.revoked:
            self._drop(address, size, phys)

    # -- between slices -------------------------------------------------------------------------
    def end_of_slice(self) -> None:
        """Written monitored pages lose their execute permission, pages written too often stop
        being monitored (`after_store`); monitoring starts when guest paging is first on."""
        if self._pending and self.vm.vcpu.paging_regs()[0] & CR0_PG:
            pending, self._pending = self._pending, []
            self.monitor(pending)
        for page in self._unmonitor_later:
            if page in self.monitored:
                self._unmonitor(page)
        self._unmonitor_later.clear()
        pages, self._revoke_later = self._revoke_later, set()
        revoke: set[int] = set()
        for page in pages:
            if page in self._dirty and page in self.monitored and page not in self.revoked:
                revoke.update(p for p in self._group(page) if p in self.monitored and p not in self.revoked)
        if revoke:
            # Every translation from the pages first: a block chained to one of them would
            # skip the permission check.
            for page in sorted(revoke):
                self._drop_page(page)
            self.vm.guard.forbid_exec_pages(sorted(revoke))
            self.revoked |= revoke

    def _group(self, page: int) -> range:
        """The pages of `page`'s aligned group (`GROUP`)."""
        first = page & self._group_mask
        return range(first, first + self.GROUP * _PAGE, _PAGE)

    def _drop_page(self, page: int) -> None:
        """Drop Unicorn's translations of physical page `page`, through a linear address
        that maps it now (the kernel's, or the physical one while paging is off)."""
        from unicorn import unicorn_const as uconst

        for candidate in (self._linear[page], page):
            try:
                if int(self.vm.mmu.translate(candidate, fetch=True)) == page:
                    self.uc.ctl_remove_cache(candidate, candidate + _PAGE)
                    return
            except PageFault:
                continue
        self.uc.ctl(uconst.UC_CTL_TB_FLUSH, uconst.UC_CTL_IO_WRITE)

    def _unmonitor(self, page: int) -> None:
        self.monitored.discard(page)
        self._dirty.pop(page, None)
        self._revoke_later.discard(page)
        self._writes.pop(page, None)
        self.unmonitored += 1
        if page in self.revoked:
            self.revoked.discard(page)
            self.vm.guard.allow_exec(page)
        self.vm.guard.unwatch(page, self)

    def fetch_fault(self, page: int) -> bool:
        """The guest fetched from `page`, which had no execute permission (runtime/codewatch.py
        `resume`): if it is a rewritten monitored page, have the patch manager rescan what was
        written, give the page its permission back and say True (the guest goes on at EIP,
        which never ran); False: not one of this module's."""
        if page not in self.revoked:
            return False
        pages = [p for p in self._group(page) if p in self.revoked]
        ranges = [r for p in pages for r in self._dirty.pop(p, [])]
        for p in pages:
            self._writes[p] = 0
        self.revoked.difference_update(pages)
        self.vm.guard.allow_exec_pages(pages)
        manager = self._manager()
        if manager is not None and ranges:
            manager.rescan(ranges)
        return True
