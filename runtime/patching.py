"""The seam between the runtime and the patch manager (issue 5).

`runtime` calls a `Patcher`; `patchmgr` implements it and calls nothing in
`runtime` (layers: runtime -> patchmgr -> bt). The run loop (runtime/vm.py):

(a) calls `on_trap(op)` after each trap of a sensitive site (and each IN/OUT exit
    of the guest kernel), so the patch manager can decide to patch it (PATM patched a
    site the first time it trapped); True means a patch was just installed;
(b) on an INT3 executed in patch memory (`bt.layout.PATCH_BASE`..+`PATCH_SIZE`) or
    at a patched guest site, asks `exit_at(address)` (the address of the INT3) for
    the pre-decoded `Operation` and where to resume; the runtime emulates that
    Operation through the same emulator as a trap of its class, then continues at
    `resume`. `op` None: nothing to emulate, the patch exited at guest address
    `resume` only so that the runtime delivers the pending interrupt there.
    `exit_at` returns None for an INT3 that is not the patcher's: the runtime then
    delivers #BP to the guest like any guest INT3;
(c) calls `to_guest_eip(eip)` to report a patch-memory EIP as the guest EIP it
    stands for (in frames pushed to the guest and in stop reports);
(d) calls `resume_at(eip)` before it continues the guest at an EIP it chose (after
    an emulated instruction, an IRET, at the start of a slice): a guest address inside
    a patched window no longer holds guest code, the patch block does;
(e) calls `relocate(area)` when the VMM area moved in the guest's linear space
    (runtime/relocate.py): patch code at the same offsets, re-made for the new addresses.

The runtime never delivers an interrupt while EIP is in patch memory: it sets the
state block's `pending` word, and the patch block exits at its guest return address
when the virtual IF allows it (patchmgr/block.py). Blocks look at `pending` only
through their gates, so the runtime tells the patch manager each time the word turns
non-zero or zero (`VirtualCpu.on_pending` -> `PatchManager.set_pending`).

`attach(vm, config)` builds the patch manager for a run (`bt run --hot/--eager/
--no-patch`, or a kernel written by `bt patch`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from bt import elf, layout
from bt.errors import InputError, PatchError
from bt.operation import Operation
from runtime.cpu import EIP, UnmappedPhys
from runtime.paging import CR0_PG, PageFault

if TYPE_CHECKING:
    from patchmgr.manager import PatchConfig, PatchManager


@dataclass(frozen=True)
class PatchExit:
    """What an INT3 exit in patch code means: emulate `op`, then continue at `resume`."""

    op: Operation | None
    resume: int


class Patcher(Protocol):
    def on_trap(self, op: Operation) -> bool | None: ...

    def exit_at(self, address: int) -> PatchExit | Any | None: ...

    def to_guest_eip(self, eip: int) -> int: ...

    def resume_at(self, eip: int) -> int: ...

    def relocate(self, area: layout.VmmArea) -> object: ...

    def window_of(self, address: int) -> tuple[int, int] | None: ...


class NoPatcher:
    """The unpatched VMM: traps are only emulated, no INT3 belongs to a patch."""

    def on_trap(self, op: Operation) -> bool | None:
        return None

    def exit_at(self, address: int) -> PatchExit | None:
        return None

    def to_guest_eip(self, eip: int) -> int:
        return eip

    def resume_at(self, eip: int) -> int:
        return eip

    def relocate(self, area: layout.VmmArea) -> None:
        return None

    def window_of(self, address: int) -> tuple[int, int] | None:
        return None


class KernelMap:
    """Where the kernel's ELF puts its loadable segments: virtual <-> physical (the
    program headers' p_vaddr and p_paddr; they differ for a kernel linked high and loaded
    low, like xv6 at 0x80100000 -> 1 MiB)."""

    def __init__(self, segments: Iterable[elf.Segment] = ()) -> None:
        self._segs = [(s.vaddr, s.paddr, s.memsz) for s in segments if s.memsz]

    def paddr(self, vaddr: int) -> int | None:
        for v, p, n in self._segs:
            if v <= vaddr < v + n:
                return p + vaddr - v
        return None

    @property
    def known(self) -> bool:
        """Whether the kernel's segments are known (a raw image under test has none)."""
        return bool(self._segs)

    def holds_phys(self, phys: int) -> bool:
        return any(p <= phys < p + n for _v, p, n in self._segs)


def _runs(pages: list[int]) -> list[tuple[int, int]]:
    """Sorted page addresses as (start, size) runs of contiguous pages."""
    out: list[tuple[int, int]] = []
    for page in pages:
        if out and out[-1][0] + out[-1][1] == page:
            out[-1] = (out[-1][0], out[-1][1] + layout.PAGE_SIZE)
        else:
            out.append((page, layout.PAGE_SIZE))
    return out


class _VmMemory:
    """patchmgr's GuestMemory and WriteWatch over the VM. Kernel code is read and written
    where its ELF loaded it (physical, through the program headers): the patch manager
    works on the kernel's virtual addresses, and the kernel's bytes do not move when the
    guest turns paging on. Other guest addresses go through the guest's page tables, the
    VMM area to where it is now."""

    def __init__(self, vm: Any, kernel: KernelMap | None = None) -> None:
        self.vm = vm
        self.uc = vm.machine.uc
        self.kernel = kernel or KernelMap()
        self.manager: PatchManager | None = None
        self._protected: Counter[int] = Counter()     # physical page -> patches on it (+1 if monitored)
        self._linear: dict[int, int] = {}             # watched physical page -> its linear page
        # CSAM's monitored code pages (`monitor`): physical page -> written (address, size)
        # ranges not yet rescanned, for the pages written since they last ran; and the page
        # the last execute-permission fault was on.
        self._monitored: set[int] = set()
        self._dirty: dict[int, list[tuple[int, int]]] = {}
        self._writes: Counter[int] = Counter()
        self._fetch_fault: int | None = None
        self._revoke_later: set[int] = set()
        self._unmonitor_later: set[int] = set()
        #: Monitored pages without their execute permission now (written, not yet run again).
        self._revoked: set[int] = set()
        self._fetch_hook: object | None = None
        #: Monitored pages given up on (written `MONITOR_WRITES` times without running).
        self.unmonitored = 0
        #: Code ranges to monitor once guest paging is on (`monitor_when_paged`).
        self._monitor_pending: list[tuple[int, int]] = []
        #: True while the patch manager handles a guest store (`_on_write`): `write` defers.
        self._in_write_hook = False

    def _phys(self, address: int) -> int:
        area = self.vm.machine.vmm
        if area.contains(address):
            return area.home(address)
        phys = self.kernel.paddr(address)
        if phys is not None:
            return phys
        try:
            return int(self.vm.mmu.translate(address))
        except PageFault as pf:
            raise PatchError(f"guest address {address:#x} is not mapped") from pf

    def live(self, address: int) -> bool:
        """The guest runs `address` as the kernel's ELF means it: mapped (paging on or not)
        onto guest RAM, at the physical address the program headers give for it if it is
        kernel code, and not an alias of kernel code at another linear address (xv6 runs
        its entry code at 0x10000c before paging; its ELF says 0x8010000c).

        Code outside the kernel's (known) segments is never live while guest paging is off: that is
        boot code that is not the kernel (a bzImage's decompressor, which copies itself to
        the end of its buffer and runs the copy: a patch JMP copied with it would go astray).
        VirtualBox never patched such code either; it ran unpaged guest code in its
        recompiler, not in raw mode."""
        try:
            phys = int(self.vm.mmu.translate(address, fetch=True))
        except PageFault:
            return False
        if phys >= self.vm.machine.ram_size:
            return False
        want = self.kernel.paddr(address)
        if want is not None:
            return want == phys
        if self.kernel.known and not self.vm.vcpu.paging_regs()[0] & CR0_PG:
            return False
        return not self.kernel.holds_phys(phys)

    def read(self, address: int, size: int) -> bytes:
        return bytes(self.vm.cpu.phys_read(self._phys(address), size))

    def write(self, address: int, data: bytes) -> None:
        phys = self._phys(address)
        self.vm.cpu.phys_write(phys, data)
        # Code Unicorn already translated must be translated again (unicorn-ring1.md #7).
        # Unicorn finds it through the linear address it is given, so give one that maps
        # onto these bytes now; kernel code not mapped where its ELF says (before paging)
        # may have been translated at another alias: drop every translation then (rare).
        # Inside an IN/OUT hook Unicorn is in the middle of an instruction (a REP INS between
        # two elements): dropping the code under it makes Unicorn restart that instruction,
        # whose element the device has already given (measured: one element read twice).
        # The hook ends the slice then; the run loop drops the code before the next one.
        if self.vm.traps.in_io_hook:
            self.vm.traps.stale_code = True
            return
        if phys & ~(layout.PAGE_SIZE - 1) in self._revoked:
            return   # nothing is translated from a page that lost its execute permission
        area = self.vm.machine.vmm
        try:
            here = area.contains(address) or int(self.vm.mmu.translate(address)) == phys
        except PageFault:
            here = False
        if self._in_write_hook:
            self._drop_later(address, len(data), here)   # inside a store: see `_on_write`
        elif here:
            self.uc.ctl_remove_cache(address, address + len(data))
        else:
            from unicorn import unicorn_const as uconst

            self.uc.ctl(uconst.UC_CTL_TB_FLUSH, uconst.UC_CTL_IO_WRITE)

    def watch(self, start: int, end: int) -> object:
        # Patched pages are write-protected in Unicorn (physical pages: every alias is
        # caught): a guest store there faults into the VMM guard's one write-protection
        # hook (runtime/guard.py), which hands it to `_on_write`; every other store runs
        # at full speed. A UC_HOOK_MEM_WRITE hook, even one, puts every guest store on
        # Unicorn's slow path (measured: irqsave-pv, iters=200000, patched, 496 ms with
        # one such hook vs 384 ms without).
        from unicorn import UC_PROT_EXEC, UC_PROT_READ

        self.vm.guard.ram_writes = self._on_write
        mask = ~(layout.PAGE_SIZE - 1)
        # Guest code lives in guest RAM; the VMM area is the guard's and stays protected.
        pages = {self._phys(a) & mask: a & mask for a in (start, end - 1)}
        pages = {p: lin for p, lin in pages.items() if p < layout.VMM_BASE}
        for page, linear in pages.items():
            self._protected[page] += 1
            self._linear[page] = linear
            if self._protected[page] == 1:
                self._protect(page, UC_PROT_READ | UC_PROT_EXEC)
        return tuple(pages)

    def _protect(self, page: int, perms: int) -> None:
        traps = self.vm.traps
        if traps.in_io_hook:
            # Unicorn 2.1.4 runs an IN/OUT hook inside the translated block: a protection
            # change of the page the CPU executes from leaves a #PF pending (CR2 0) that it
            # raises at the next instruction (xv6's ideinit: its IN patched on first exit
            # ended in a triple fault). The hook ends the slice (the patch stops it); the
            # run loop applies the change before the next one.
            traps.pending_protect.append((page, perms))
            traps.stale_code = True
        else:
            self.uc.mem_protect(page, layout.PAGE_SIZE, perms)

    def unwatch(self, handle: object) -> None:
        from unicorn import UC_PROT_ALL

        assert isinstance(handle, tuple)
        for page in handle:
            self._protected[page] -= 1
            if self._protected[page] == 0:
                del self._protected[page], self._linear[page]
                self._protect(page, UC_PROT_ALL)

    def _on_write(self, phys: int, size: int, value: int) -> bool:
        """A guest store into a watched code page (the guard's hook calls this with the
        physical address Unicorn reports; an exception goes to the run loop through the
        guard). The patch manager knows linear addresses: the watch remembers which linear
        page each physical page was watched for."""
        assert self.manager is not None
        linear = self._linear.get(phys & ~(layout.PAGE_SIZE - 1))
        if linear is None:        # not one of ours (another write-protected page)
            return False
        address = linear | (phys & (layout.PAGE_SIZE - 1))
        self._in_write_hook = True
        try:
            self.manager.on_guest_write(address, size)
        finally:
            self._in_write_hook = False
        # Unicorn drops the faulting store when the hook handles it: make it, then drop
        # whatever Unicorn translated from those bytes.
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        self.vm.cpu.phys_write(phys, data)
        page = phys & ~(layout.PAGE_SIZE - 1)
        if page in self._monitored:
            self._code_written(page, address, size)
        if page not in self._revoked:
            try:
                here = int(self.vm.mmu.translate(address)) == phys
            except PageFault:
                here = False
            self._drop_later(address, size, here)
        return True

    def _drop_later(self, address: int, size: int, here: bool) -> None:
        # Unicorn finds translations through a linear address and fills its TLB for it.
        # Inside a store's hook that can evict the TLB entry the store is using (another
        # linear page of the same TLB index: the kernel's address of a page the guest writes
        # through an alias, Linux's text_poke, or while paging is off, a bzImage's
        # decompressor): Unicorn 2.1.4 then stores through a stale addend and crashes
        # (measured: SIGSEGV in helper_le_stl_mmu). So the translations are dropped before
        # the next slice (runtime/traps.py `drop_stale_code`: through `address` if it maps the
        # bytes, else all of them), and the slice ends at the next block boundary; the rest of
        # the running block may still run the old bytes, as on a CPU without SMC snooping.
        traps = self.vm.traps
        if here:
            traps.drop_later.append((address, address + size))
        else:
            traps.stale_code = True
        self.vm.insn_clock.stop_soon()

    # -- CSAM's monitored pages (patchmgr/rescan.py) -------------------------------------------
    #: A monitored page written this often without running in between stops being monitored:
    #: code the guest freed and now uses as data (Linux's init text after boot), whose every
    #: store would otherwise be a fault.
    MONITOR_WRITES = 1024

    def monitor(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Write-protect the kernel's code pages (`ranges` of guest addresses and sizes): a
        store there takes the page's execute permission away (`_code_written`), and the
        guest's next instruction fetch from it stops the slice (`_on_fetch`); the run loop
        then calls `fetch_fault`, which has the patch manager rescan what was written."""
        from unicorn import UC_HOOK_MEM_FETCH_PROT, UC_PROT_EXEC, UC_PROT_READ

        self.vm.guard.ram_writes = self._on_write
        mask = ~(layout.PAGE_SIZE - 1)
        pages: dict[int, int] = {}
        for start, size in ranges:
            for linear in range(start & mask, start + size, layout.PAGE_SIZE):
                phys = self._phys(linear) & mask
                if phys + layout.PAGE_SIZE <= self.vm.machine.ram_size:
                    pages[phys] = linear
        for phys, linear in pages.items():
            if phys not in self._monitored:
                self._monitored.add(phys)
                self._protected[phys] += 1
                self._linear[phys] = linear
        for start, size in _runs(sorted(pages)):        # one call per contiguous run
            self.uc.mem_protect(start, size, UC_PROT_READ | UC_PROT_EXEC)
        if self._fetch_hook is None:
            self._fetch_hook = self.uc.hook_add(UC_HOOK_MEM_FETCH_PROT, self._on_fetch)

    def monitor_when_paged(self, ranges: Iterable[tuple[int, int]]) -> None:
        """`monitor` once guest paging is on: a bzImage's kernel is not in memory before its
        decompressor has written it there (and that code runs with paging off, which the
        kernel turns on only after). Monitoring from the start would fault on every store of
        the decompression and give up on every page (`MONITOR_WRITES`)."""
        self._monitor_pending = list(ranges)

    def _code_written(self, page: int, address: int, size: int) -> None:
        # Nothing about the page's permissions or translations changes in here: doing so from
        # a memory hook makes Unicorn 2.1.4 restart the storing instruction (a read-modify-
        # write store done twice) or crash later (measured). The slice ends at the next block
        # boundary instead and `end_of_slice` takes the page's execute permission then.
        dirty = self._dirty.setdefault(page, [])
        if not dirty and page not in self._revoked:
            self._revoke_later.add(page)
            self.vm.insn_clock.stop_soon()
        dirty.append((address, size))
        self._writes[page] += 1
        if self._writes[page] > self.MONITOR_WRITES:
            self._unmonitor_later.add(page)

    def _revoke(self, page: int) -> None:
        """Take the execute permission from written page `page`: every translation from it
        first (a block chained to one of them would skip the permission check)."""
        from unicorn import UC_PROT_READ

        self._drop_page(page)
        self.uc.mem_protect(page, layout.PAGE_SIZE, UC_PROT_READ)
        self._revoked.add(page)

    def end_of_slice(self) -> None:
        """Between slices: written monitored pages lose their execute permission, and pages
        written too often stop being monitored (`_code_written`); monitoring starts when
        guest paging is first on (`monitor_when_paged`)."""
        if self._monitor_pending and self.vm.vcpu.paging_regs()[0] & CR0_PG:
            pending, self._monitor_pending = self._monitor_pending, []
            self.monitor(pending)
        for page in self._unmonitor_later:
            if page in self._monitored:
                self._unmonitor(page)
        self._unmonitor_later.clear()
        pages, self._revoke_later = self._revoke_later, set()
        for page in pages:
            if page in self._dirty and page in self._monitored and page not in self._revoked:
                self._revoke(page)

    def _drop_page(self, page: int) -> None:
        """Drop Unicorn's translations of physical page `page`, through a linear address
        that maps it now (the kernel's, or the physical one while paging is off)."""
        from unicorn import unicorn_const as uconst

        linear = self._linear[page]
        for candidate in (linear, page):
            try:
                if int(self.vm.mmu.translate(candidate, fetch=True)) == page:
                    self.uc.ctl_remove_cache(candidate, candidate + layout.PAGE_SIZE)
                    return
            except PageFault:
                continue
        self.uc.ctl(uconst.UC_CTL_TB_FLUSH, uconst.UC_CTL_IO_WRITE)

    def _unmonitor(self, page: int) -> None:
        from unicorn import UC_PROT_ALL, UC_PROT_EXEC, UC_PROT_READ

        self._monitored.discard(page)
        self._dirty.pop(page, None)
        self._revoke_later.discard(page)
        self._revoked.discard(page)
        self._writes.pop(page, None)
        self.unmonitored += 1
        self._protected[page] -= 1
        if self._protected[page] == 0:
            del self._protected[page], self._linear[page]
            self.uc.mem_protect(page, layout.PAGE_SIZE, UC_PROT_ALL)
        else:
            self.uc.mem_protect(page, layout.PAGE_SIZE, UC_PROT_READ | UC_PROT_EXEC)

    def _on_fetch(self, _uc: Any, _access: int, address: int, _size: int, _value: int, _data: Any) -> bool:
        # Unicorn passes the physical address. Changing permissions inside this hook is not
        # safe in Unicorn 2.1.4 (measured: it crashes the engine for some permission changes),
        # so the hook only says where and lets the fetch fail: the run loop calls `fetch_fault`
        # with EIP at the start of the block that tried to run there.
        self._fetch_fault = address & ~(layout.PAGE_SIZE - 1)
        return False

    def fetch_fault(self) -> bool:
        """After a slice ended with Unicorn's execute-permission fault: if it was a rewritten
        monitored page, rescan it, give it its permission back and say True (the guest goes
        on at EIP, which never ran); False: a fault ring1 did not cause."""
        from unicorn import UC_PROT_EXEC, UC_PROT_READ

        page, self._fetch_fault = self._fetch_fault, None
        if page is None or page not in self._revoked:
            return False
        ranges = self._dirty.pop(page, [])
        self._writes[page] = 0
        self._revoked.discard(page)
        self.uc.mem_protect(page, layout.PAGE_SIZE, UC_PROT_READ | UC_PROT_EXEC)
        if self.manager is not None:
            self.manager.rescan(ranges)
        return True

    def on_first_execution(self, site: int) -> None:
        """Call the patch manager just before the guest first runs `site` (a one-shot
        code hook: Unicorn instruments only that address)."""
        from unicorn import UC_HOOK_CODE

        handle: list[object] = []

        def hook(uc: Any, address: int, _size: int, _data: Any) -> None:
            try:
                uc.hook_del(handle[0])
                assert self.manager is not None
                # Writing EIP in a code hook makes Unicorn leave the translated block
                # and fetch again, from the patch (checked with unicorn 2.1.4).
                self.vm.cpu.write(EIP, self.manager.first_execution(address))
            except BaseException as err:   # stored and re-raised by the run loop
                self.vm.traps.error = err
                uc.emu_stop()

        handle.append(self.uc.hook_add(UC_HOOK_CODE, hook, None, site, site))


def attach(vm: Any, config: PatchConfig) -> PatchManager:
    """The patch manager of one run: the kernel scanned (CSAM) for branch targets and
    blocks, a statically patched kernel's record adopted, every site patched up front
    with `eager`."""
    from bt import isa, scan
    from patchmgr.codemap import ScanCodeMap
    from patchmgr.manager import PatchManager
    from patchmgr.static import original_image, read_record, user_code
    from runtime.linuxboot import LinuxImage

    # The loader's ELF when it has one (a second load of a 64 MiB kernel costs its size twice).
    image = getattr(vm.boot, "kernel", None) or elf.load(vm.config.kernel)
    record = read_record(image)
    # A kernel `bt patch` wrote is scanned as it was before: its JMPs into patch memory
    # would hide the code after each window from the descent.
    result = scan.scan(original_image(image, record) if record is not None else image)
    memory = _VmMemory(vm, KernelMap(image.segments))
    from runtime.emulate import EMULATORS

    manager = PatchManager(config, memory, ScanCodeMap(result), watch=memory,
                           emulable=EMULATORS.__contains__, area=vm.machine.vmm, live=memory.live)
    memory.manager = manager
    vm.vcpu.on_pending = manager.set_pending
    if config.enabled:
        # CSAM: the kernel's code pages are monitored, so code it rewrites (Linux's
        # alternatives) is scanned again before it runs (patchmgr/rescan.py).
        code = [(s.address, s.size) for s in image.executable_sections]
        if isinstance(vm.boot, LinuxImage) and vm.boot.header is not None:
            memory.monitor_when_paged(code)      # a bzImage: decompressed first
        else:
            memory.monitor(code)
        vm.on_fetch_fault = memory.fetch_fault
        vm.on_slice_end.append(memory.end_of_slice)
    if record is not None:
        try:
            manager.adopt(record)
        except (PatchError, UnmappedPhys) as err:
            # The record names guest memory this run does not have: the file's fault (exit 2).
            raise InputError(f"{vm.config.kernel}: patch record: {err}") from err
    kernel_sites = [s for s in result.sites
                    if manager.rules.handles(s.cls.name) and not user_code(image, s.address)]
    if config.enabled:
        # Sites that never trap can't wait for a trap: CSAM marked them and PATM patched
        # them before they ran. Reached ones now; the scanner's unreached ones when they
        # first run (then they are known to be code). A code hook stays costly in Unicorn
        # even when it never fires, so only those few get one.
        silent = [s for s in kernel_sites if s.cls.unicorn is isa.Unicorn.SILENT]
        manager.patch_all(s.address for s in (kernel_sites if config.eager else silent) if s.reached)
        for s in silent:
            if not s.reached and manager.is_unpatched(s.address):
                memory.on_first_execution(s.address)
    return manager
