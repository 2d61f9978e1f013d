"""The VMM area guard: guest stores into the VMM's pages are dropped, counted, reported.

The VMM area (bt/layout.py) must be reachable from guest ring 1, because patch code runs
there and reads the state block without exiting; ring 3 is kept out by the VMM's page
table (U/S = 0). Reachable is not writable: `install` write-protects every page of the
area in Unicorn (`mem_protect` read + exec) except the state block's patch-writable page,
and one UC_HOOK_MEM_WRITE_PROT hook gets the stores that hit a protected page. Page
protection costs nothing until a store hits such a page: a UC_HOOK_MEM_WRITE hook, even
one, would put every guest store on Unicorn's slow path (runtime/patching.py measured it).
The VMM's own writes go to the host memory behind the area (runtime/cpu.py `phys_write`,
through the mmap Unicorn was given), never through Unicorn's store path, so they are not
affected.

A hooked store is one of:

* the CPU working for the VMM: a store at CPL 0, which only the VMM's own BOOT code runs
  (its LTR sets the busy bit of the real TSS descriptor in the GDT, SDM vol. 3 §7.2.4):
  made by the hook;
* the CPU's implicit update of a descriptor's accessed bit in the real GDT or LDT when a
  data segment register is loaded (SDM vol. 3 §3.4.5.1; Unicorn 2.1.4 does it in
  helper_load_seg, not for CS loads): a 4-byte store to the high word of a present
  code/data descriptor that changes nothing but that bit. Made by the hook, so that the
  shadows behave as they did unprotected (each descriptor costs one hook call per
  resync). Installing the shadows with the bit already set would spare those calls, but
  an unpatched LAR runs natively at CPL 1 and reads the shadow: it would show the bit
  set on descriptors the guest never loaded. A guest store that does exactly this is
  indistinguishable from the CPU's and harmless;
* anything else: the guest's. Dropped and counted in `RunStats.vmm_writes`, the first 16
  kept in `RunStats.vmm_writers` as (guest EIP, address, size, region), patch memory
  included.

Unicorn 2.1.4 hands the hook the *physical* address of the store (measured: a guest page
table that maps a low linear page onto a VMM page is caught, and reported, at the VMM
address), so the guard decides by physical address and the guest cannot dodge it through
an alias; in the VMM area physical == linear.

Watched guest RAM pages
-----------------------
Some guest RAM pages are write-monitored too (`watch`): the pages of patched kernel code
(the patch manager's self-modifying-code watch, runtime/patching.py) and the pages of the
guest's GDT and LDT (runtime/tablewatch.py, VirtualBox's SELM). They are write-protected in
Unicorn, and a guest store there reaches the same hook, which tells each `PageWatcher` of
the page before (`before_store`: the patch manager takes a patch out) and after
(`after_store`: a descriptor is re-shadowed) it makes the store. The VMM's own stores into
guest memory on the guest's behalf (an emulated REP INS, a frame push, LTR's busy bit:
runtime/paging.py `Mmu.write`) go through `store`, which tells the same watchers: no
guest-visible write into a watched page bypasses them (issue 11, item 9); a device that
writes guest RAM (DMA) must write through `store` too. The guard owns
the one hook and every page's protection, so that two watchers of one page never disagree
about it. A page's rights never change inside the store's own hook, nor inside an IN/OUT
hook: Unicorn 2.1.4 restarts the store (a read-modify-write done twice) or crashes later
(measured in Linux's boot), or raises a stale #PF. Such a change waits in `pending` for the
end of the slice, which ends at the next block boundary (`stop_soon`); meanwhile a store
into a page that is only waiting to become writable is made here.

What stays writable, and why
----------------------------
* The patch-writable state page (`bt.layout.PATCH_STATE_BASE`): patch code stores the
  virtual IF/IOPL, scratch words, its private EFLAGS stack and rule data there at full
  speed. Patch code and the guest kernel share CPL 1 and flat segments, so the guest
  kernel can write that page too; VMware and Xen kept the guest out of their area by
  truncating the guest's segments, which ring1 does not do. The run loop checks the flags
  word's invariant bytes once per time slice (`VirtualCpu.check_vflags`) and counts a
  corrupted one in `RunStats.vflags_corrupted`.
* Nothing else. The CPU writes into the area only as described above (busy bit, accessed
  bits) or on pages it never reaches while the guest runs: the VMM stacks are used by
  BOOT's IRETD (which only reads) and by the VMM itself; a ring 3 -> 1 call gate pushes
  onto the guest's kernel stack, because the VMM sets TSS.ss1:esp1 before every inward
  transition (runtime/deliver.py). No hardware task switch writes the real TSS: the
  shadows hold no TSS descriptor or task gate (runtime/segments.py `compress`) and the
  VMM's own TSS descriptor is DPL 0. The VMM page table is installed with accessed and
  dirty set (runtime/paging.py), so the page walker never updates it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from unicorn import UC_HOOK_MEM_WRITE_PROT, UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE, Uc

from bt import layout
from runtime.cpu import CS, EIP, Cpu
from runtime.stats import RunStats

#: How many guest stores the report keeps (the count has them all).
KEEP_WRITERS = 16

#: Descriptor high word (bytes 4-7): accessed bit, S (code/data) bit, present bit.
_DESC_A, _DESC_S, _DESC_P = 1 << 8, 1 << 12, 1 << 15
_TABLES = ((layout.VMM_GDT, layout.VMM_GDT + layout.VMM_GDT_SIZE),
           (layout.VMM_LDT, layout.VMM_LDT + layout.VMM_LDT_SIZE))
_VMM_END = layout.VMM_BASE + layout.VMM_SIZE


def protected_ranges() -> tuple[tuple[int, int], ...]:
    """(start, size) of what `install` write-protects: the whole VMM area but the
    patch-writable state page."""
    writable = layout.PATCH_STATE_BASE
    return ((layout.VMM_BASE, writable - layout.VMM_BASE),
            (writable + layout.PATCH_STATE_SIZE, _VMM_END - writable - layout.PATCH_STATE_SIZE))


class PageWatcher(Protocol):
    """Told of every store into a guest RAM page it watches (physical address)."""

    def before_store(self, phys: int, size: int) -> None: ...

    def after_store(self, phys: int, size: int) -> None: ...


_PAGE_MASK = ~(layout.PAGE_SIZE - 1)


class VmmGuard:
    """Owner of the engine's one UC_HOOK_MEM_WRITE_PROT hook (module docstring)."""

    def __init__(self, uc: Uc, cpu: Cpu, stats: RunStats, *, guest_eip: Callable[[int], int],
                 fail: Callable[[BaseException], None]) -> None:
        self.uc = uc
        self.cpu = cpu
        self.stats = stats
        self._guest_eip = guest_eip     # patch-memory EIP -> the guest EIP it stands for
        self._fail = fail               # store an exception for the run loop to re-raise
        #: Watched guest RAM pages: physical page -> watcher -> how many times it asked.
        self._watchers: dict[int, dict[PageWatcher, int]] = {}
        #: Guest RAM pages the CPU may not fetch from (runtime/codewatch.py): physical pages.
        self._noexec: set[int] = set()
        self._hook: Any = None
        #: True when changing a page's rights now would be unsafe (inside an IN/OUT hook:
        #: runtime/traps.py `defer_protect`); the change then waits in `pending` for the end of
        #: the slice (`apply_pending`). None: only this hook's own stores defer (`_on_write`).
        self.defer: Callable[[], bool] | None = None
        #: Pages whose new rights wait for the end of the slice: physical page -> rights.
        self.pending: dict[int, int] = {}
        #: Called when a change was deferred from inside this hook: end the slice at the next
        #: block boundary (runtime/clock.py `stop_soon`), where `apply_pending` runs.
        self.stop_soon: Callable[[], None] | None = None
        #: Called after every change of a page's rights, and after every guest store this hook
        #: made (runtime/vm.py: clears Unicorn's old_exception, which a change made inside a
        #: hook can leave at #PF; so can a handled store: measured, a REP MOVSD into a
        #: monitored kernel code page under guest paging, Linux's text_poke_early, after which
        #: the guest's next #GP became #DF).
        self.after_protect: Callable[[], None] | None = None
        #: True while this hook handles a store into guest RAM: no page's rights change then
        #: (Unicorn 2.1.4 restarts the store, a read-modify-write done twice, or crashes
        #: later: measured in Linux's boot); they wait for the end of the slice.
        self._in_store = False

    def install(self) -> None:
        """Protect the VMM area and add the hook; before the first slice."""
        if self._hook is not None:
            return
        # Unbounded: the hook gets physical addresses, and guest RAM pages share it.
        self._hook = self.uc.hook_add(UC_HOOK_MEM_WRITE_PROT, self._on_write)
        for start, size in protected_ranges():
            self.uc.mem_protect(start, size, UC_PROT_READ | UC_PROT_EXEC)

    def _on_write(self, _uc: Any, _access: int, address: int, size: int, value: int, _data: Any) -> bool:
        try:
            if not layout.VMM_BASE <= address < _VMM_END:
                self._in_store = True
                try:
                    handled = self.ram_writes(address, size, value)
                finally:
                    self._in_store = False
                if handled and self.after_protect is not None:
                    self.after_protect()
                return handled
            if self.cpu.read(CS) & 3 == 0 or self._sets_accessed_bit(address, size, value):
                # Unicorn drops a store whose hook handled it: make it.
                self.cpu.phys_write(address, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
                return True
            self.dropped(address, size)
            return True
        except BaseException as err:   # stored and re-raised by the run loop, never swallowed
            self._fail(err)
            self.uc.emu_stop()
            return False

    # -- watched guest RAM pages ------------------------------------------------------------------
    def watch(self, page: int, watcher: PageWatcher) -> None:
        """Write-monitor guest RAM page `page` (physical, page-aligned) for `watcher`."""
        owners = self._watchers.setdefault(page, {})
        owners[watcher] = owners.get(watcher, 0) + 1
        if len(owners) == 1 and owners[watcher] == 1:
            self._apply(page)

    def watch_pages(self, pages: list[int], watcher: PageWatcher) -> None:
        """`watch` every page of `pages` (sorted), with one mem_protect per run of contiguous
        pages that end up with the same rights (the kernel's code: thousands of pages)."""
        fresh = []
        for page in pages:
            owners = self._watchers.setdefault(page, {})
            owners[watcher] = owners.get(watcher, 0) + 1
            if len(owners) == 1 and owners[watcher] == 1:
                fresh.append(page)
        self._protect(fresh)

    def _protect(self, pages: list[int]) -> None:
        """Give `pages` (sorted) their rights: one mem_protect per run of contiguous pages with
        the same rights. Why runs, not pages: Unicorn 2.1.4 never merges the regions a
        mem_protect splits, and each new region costs O(regions^2) (QEMU's find_ram_offset,
        measured 20 ms a split at 2,400 regions in Linux's boot: 56 s of a 100 s run)."""
        if self._deferring():
            for page in pages:
                self._apply(page)
            return
        run: list[int] = []
        for page in [*pages, -1]:
            if run and (page != run[-1] + layout.PAGE_SIZE or self._rights(page) != self._rights(run[0])):
                for p in run:
                    self.pending.pop(p, None)
                self.uc.mem_protect(run[0], len(run) * layout.PAGE_SIZE, self._rights(run[0]))
                if self.after_protect is not None:
                    self.after_protect()
                run = []
            run.append(page)

    def unwatch(self, page: int, watcher: PageWatcher) -> None:
        owners = self._watchers.get(page)
        if owners is None or watcher not in owners:
            return
        owners[watcher] -= 1
        if owners[watcher] == 0:
            del owners[watcher]
        if not owners:
            del self._watchers[page]
            self._apply(page)

    # -- pages the CPU may not fetch from (runtime/codewatch.py) -------------------------------
    def forbid_exec(self, start: int, end: int) -> None:
        """No fetch from guest RAM pages [start, end) (page-aligned), until `allow_exec`."""
        pages = range(start, end, layout.PAGE_SIZE)
        self._noexec.update(pages)
        if self._deferring():
            for page in pages:
                self._apply(page)
            return
        for page in [p for p in self.pending if start <= p < end]:
            del self.pending[page]          # superseded by what is applied now
        # Guest RAM is one big range: stretches between watched pages are one run each.
        watched = sorted(p for p in self._watchers if start <= p < end)
        lo = start
        for page in watched:
            if lo < page:
                self.uc.mem_protect(lo, page - lo, UC_PROT_READ | UC_PROT_WRITE)
            lo = page + layout.PAGE_SIZE
        if lo < end:
            self.uc.mem_protect(lo, end - lo, UC_PROT_READ | UC_PROT_WRITE)
        self._protect(watched)

    def forbid_exec_pages(self, pages: list[int]) -> None:
        """`forbid_exec` for each of `pages` (sorted), one mem_protect per run (`_protect`)."""
        self._noexec.update(pages)
        self._protect(pages)

    def allow_exec(self, page: int) -> bool:
        """Fetches from `page` allowed again; False if they were not forbidden."""
        if page not in self._noexec:
            return False
        self._noexec.discard(page)
        self._apply(page)
        return True

    def allow_exec_pages(self, pages: list[int]) -> None:
        """`allow_exec` for each of `pages` (sorted), one mem_protect per run (`_protect`)."""
        self._noexec.difference_update(pages)
        self._protect(pages)

    def _rights(self, page: int) -> int:
        prot = UC_PROT_READ
        if page not in self._watchers:
            prot |= UC_PROT_WRITE
        if page not in self._noexec:
            prot |= UC_PROT_EXEC
        return prot

    def _apply(self, page: int) -> None:
        prot = self._rights(page)
        if self._deferring():
            self.pending[page] = prot
            if self._in_store and self.stop_soon is not None:
                self.stop_soon()
            return
        self.pending.pop(page, None)
        self.uc.mem_protect(page, layout.PAGE_SIZE, prot)
        if self.after_protect is not None:
            self.after_protect()

    @property
    def in_store(self) -> bool:
        """True while this hook handles a guest store into guest RAM (`_on_write`): Unicorn's
        translations are not to be dropped then either (runtime/patching.py `drop_written`)."""
        return self._in_store

    def _deferring(self) -> bool:
        return self._in_store or (self.defer is not None and self.defer())

    def apply_pending(self) -> bool:
        """Between slices: give the pages the rights deferred during the slice (`_apply`);
        True if there were any (the caller then drops Unicorn's translations: a block
        translated while a page could still be fetched from would skip the new check)."""
        if not self.pending:
            return False
        pending, self.pending = self.pending, {}
        for page, prot in pending.items():
            self.uc.mem_protect(page, layout.PAGE_SIZE, prot)
        if self.after_protect is not None:
            self.after_protect()
        return True

    def watched(self, phys: int) -> bool:
        return (phys & _PAGE_MASK) in self._watchers

    def ram_writes(self, phys: int, size: int, value: int) -> bool:
        """A guest store Unicorn stopped at a write-protected guest RAM page: made here,
        between the watchers' two calls. False: no watcher has the page (not handled). A
        page no one watches any more whose rights still wait for the end of the slice
        (`pending`) takes the store as it will from then on."""
        if not self.watched(phys):
            page = phys & _PAGE_MASK
            if page not in self.pending or not self.pending[page] & UC_PROT_WRITE:
                return False
            self.cpu.phys_write(phys, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
            return True
        self.store(phys, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
        return True

    def store(self, phys: int, data: bytes) -> None:
        """Write `data` at guest-physical `phys` as a guest store: the watchers of the page
        are told before and after (module docstring). Unicorn's translations of those bytes
        are the watchers' business (the patch manager drops them)."""
        owners = list(self._watchers.get(phys & _PAGE_MASK, {}))
        for w in owners:
            w.before_store(phys, len(data))
        self.cpu.phys_write(phys, data)
        for w in owners:
            w.after_store(phys, len(data))

    def _sets_accessed_bit(self, phys: int, size: int, value: int) -> bool:
        if size != 4 or phys & 7 != 4 or not any(lo <= phys < hi for lo, hi in _TABLES):
            return False
        old = self.cpu.phys_u32(phys)
        return (value == old | _DESC_A and value != old
                and old & (_DESC_S | _DESC_P) == _DESC_S | _DESC_P)

    def dropped(self, address: int, size: int) -> None:
        """Count a guest store into the VMM area at physical `address` that was not made
        (by this hook, or by the VMM emulating a guest instruction: runtime/paging.py)."""
        eip = self.cpu.read(EIP)
        stats = self.stats
        stats.vmm_writes += 1
        if len(stats.vmm_writers) < KEEP_WRITERS:
            stats.vmm_writers.append((self._guest_eip(eip), address, size, layout.region_at(address)))
