"""Guest code the scanner never saw, scanned when the guest first runs it (VirtualBox CSAM).

The patch manager patches what `bt scan` found in the kernel ELF's executable segments. A
kernel can run code from anywhere else in its RAM: code it copied there, loaded later (a
module), built itself. There, PUSHF/POPF/IRET and the other sensitive instructions that do
not fault at CPL 1 would run natively and silently lose or leak the virtual IF and IOPL: a
POPF that enables interrupts followed by HLT "halts with interrupts disabled" where the
hardware wakes on its timer (issue 11, item 6). CSAM kept such pages not present and
scanned each on its first execution; ring1 does the same with page rights:

* while patching is on, every guest RAM page outside the kernel ELF's executable segments
  is mapped without execute permission in Unicorn (physical pages, so every alias);
* the first fetch from one stops in Unicorn's UC_HOOK_MEM_FETCH_PROT hook, and the run loop
  then gives the page execute permission back and, at CPL 1, decodes the page from the
  fetched address to its end and hands the sensitive instructions that never trap (`bt.isa`: Unicorn runs them
  silently) and IRETs to the patch manager, which patches them as it patches the scanner's
  (`Patcher.code_seen`); a fetch at CPL 3 only gives the permission back (user code is not
  patched, as under PATM);
* a scanned page is write-monitored (runtime/guard.py `watch`): the first store into it
  takes the execute permission away again, so rewritten code is scanned again when it runs.
* the kernel ELF's own code pages are runtime/monitored.py's: a fetch stopped on one of
  those (rewritten, its execute permission taken) goes to it first (`rewritten`), which
  rescans only what was written.

Measured cost: nothing for guests that run only their ELF's code (no page ever faults);
one hook call and one slice restart per page on its first execution, and one per first
store after each scan. Left as it is (docs/threat-model.md): code entered at an address of
a scanned page *before* the first fetched one is not scanned (CSAM followed branches from
the entry point; ring1 sweeps forward).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from capstone import CS_ARCH_X86, CS_MODE_32, Cs, CsError
from unicorn import UC_HOOK_MEM_FETCH_PROT

from bt import isa, layout
from runtime.cpu import CS, EIP
from runtime.paging import PageFault

if TYPE_CHECKING:
    from runtime.guard import VmmGuard
    from runtime.paging import Mmu
    from runtime.patching import Patcher
    from runtime.stats import RunStats

_PAGE = layout.PAGE_SIZE
_MASK = ~(_PAGE - 1)
#: Classes a scan hands to the patch manager: the ones that never trap at CPL 1 in Unicorn
#: (the patch manager patches the scanner's before they run, runtime/patching.py `attach`).
SCANNED = frozenset(c.name for c in isa.CLASSES if c.unicorn is isa.Unicorn.SILENT) | {"iret"}


class CodeWatch:
    def __init__(self, uc: Any, guard: VmmGuard, mmu: Mmu, stats: RunStats,
                 patcher: Callable[[], Patcher], fail: Callable[[BaseException], None]) -> None:
        self.uc = uc
        self.cpu = guard.cpu
        self.guard = guard
        self.mmu = mmu
        self.stats = stats
        self._patcher = patcher
        self._fail = fail
        self._cs = Cs(CS_ARCH_X86, CS_MODE_32)
        self._cs.detail = True
        self._hook: Any = None
        #: The page of the fetch the hook stopped, until `resume`.
        self.pending: int | None = None
        #: Asked first about a stopped fetch: True if the page was a rewritten kernel code
        #: page, rescanned and executable again (runtime/monitored.py `fetch_fault`).
        self.rewritten: Callable[[int], bool] | None = None

    def install(self, ram_size: int, scanned: list[tuple[int, int]]) -> None:
        """Forbid fetches from every guest RAM page but those of the physical ranges
        `scanned` (the ELF's executable segments), and add the hook."""
        limit = ram_size & _MASK
        lo = 0
        for start, end in sorted((s & _MASK, (e + _PAGE - 1) & _MASK) for s, e in scanned if e > s):
            start, end = min(start, limit), min(end, limit)
            if lo < start:
                self.guard.forbid_exec(lo, start)
            lo = max(lo, end)
        if lo < limit:
            self.guard.forbid_exec(lo, limit)
        self._hook = self.uc.hook_add(UC_HOOK_MEM_FETCH_PROT, self._on_fetch)

    def _on_fetch(self, uc: Any, _access: int, address: int, _size: int, _value: int, _data: Any) -> bool:
        """Only records the fetch: page rights, code patches and translation-cache drops are
        not safe while Unicorn translates (measured: a crash). Returning False ends the slice
        with UC_ERR_FETCH_PROT, and the run loop calls `resume`."""
        try:
            self.pending = address & _MASK
        except BaseException as err:   # stored and re-raised by the run loop
            self._fail(err)
        return False

    def resume(self) -> bool:
        """After a slice that ended on a fetch from a forbidden page: True if the page was one
        of ours, now executable (and scanned at CPL 1); the guest continues at EIP."""
        page, self.pending = self.pending, None
        if page is None:
            return False
        if self.rewritten is not None and self.rewritten(page):
            return True
        if not self.guard.allow_exec(page):
            return False
        self.stats.code_pages_seen += 1
        if self.cpu.read(CS) & 3 != 3:
            self._scan(self.cpu.read(EIP))
            self.guard.watch(page, self)
        return True

    def _scan(self, linear: int) -> None:
        end = (linear & _MASK) + _PAGE
        try:
            code = self.mmu.read(linear, end - linear, fetch=True)
        except PageFault:
            return
        sites = []
        try:
            for insn in self._cs.disasm(code, linear):
                cls = isa.classify(insn)
                if cls is not None and cls.name in SCANNED:
                    sites.append(insn.address)
        except CsError:
            pass
        if sites:
            self._patcher().code_seen(sites)

    # -- a scanned page rewritten: scanned again when it next runs -----------------------------
    def before_store(self, phys: int, size: int) -> None:
        return None

    def after_store(self, phys: int, size: int) -> None:
        page = phys & _MASK
        self.guard.unwatch(page, self)
        self.guard.forbid_exec(page, page + _PAGE)
        # The guard made the store in host memory, behind Unicorn's back: drop what it
        # translated (a rare event, once per scan of a page, so all of it).
        self.uc.ctl_flush_tb()
