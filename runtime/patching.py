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
    (runtime/relocate.py): patch code at the same offsets, re-made for the new addresses;
(f) asks `borrowed_at(eip)` what patch code has borrowed (registers in scratch words, ESP,
    EFLAGS) when one of its instructions faults, and gives it back before it delivers the
    fault at the guest instruction (patchmgr/borrow.py);
(g) hands `code_seen(sites)` the sensitive instructions found in guest code the scanner
    never saw, when the guest first runs it (runtime/codewatch.py);
(h) asks `window_at(address)` whether guest user code (ring 3) reached a patched window,
    and then `lift`s it (the guest's own bytes back, the patch kept) for the one instruction
    ring 3 runs there, and `relay`s the patch after (runtime/userstep.py): patch code and
    patch exits are the guest kernel's, never work done for its user (issue 11, item 2).

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
from patchmgr.borrow import Borrowed
from runtime.cpu import EIP, UnmappedPhys
from runtime.paging import CR0_PG, PageFault

if TYPE_CHECKING:
    from patchmgr.manager import PatchConfig, PatchManager
    from runtime.monitored import KernelCodeMonitor


@dataclass(frozen=True)
class PatchExit:
    """What an INT3 exit in patch code means: emulate `op`, then continue at `resume`."""

    op: Operation | None
    resume: int


class Patcher(Protocol):
    def on_trap(self, op: Operation) -> bool | None: ...

    def quiet(self, op: Operation) -> bool:
        """Whether a trap of `op` will from now on only be counted (`count_traps`), until
        the patcher calls its `on_change` (runtime/fastexit.py takes such traps in C)."""
        ...

    def count_traps(self, site: int, n: int) -> None: ...

    def exit_at(self, address: int) -> PatchExit | Any | None: ...

    def to_guest_eip(self, eip: int) -> int: ...

    def resume_at(self, eip: int) -> int: ...

    def relocate(self, area: layout.VmmArea) -> object: ...

    def window_at(self, address: int) -> tuple[int, int] | None: ...

    def borrowed_at(self, eip: int) -> Borrowed | None: ...

    def code_seen(self, sites: list[int]) -> None: ...

    def lift(self, address: int) -> None: ...

    def relay(self, address: int) -> None: ...

    def window_of(self, address: int) -> tuple[int, int] | None: ...


class NoPatcher:
    """The unpatched VMM: traps are only emulated, no INT3 belongs to a patch."""

    def on_trap(self, op: Operation) -> bool | None:
        return None

    def quiet(self, op: Operation) -> bool:
        return True

    def count_traps(self, site: int, n: int) -> None:
        return None

    def exit_at(self, address: int) -> PatchExit | None:
        return None

    def to_guest_eip(self, eip: int) -> int:
        return eip

    def resume_at(self, eip: int) -> int:
        return eip

    def relocate(self, area: layout.VmmArea) -> None:
        return None

    def window_at(self, address: int) -> tuple[int, int] | None:
        return None

    def borrowed_at(self, eip: int) -> Borrowed | None:
        return None

    def code_seen(self, sites: list[int]) -> None:
        return None

    def lift(self, address: int) -> None:
        return None

    def relay(self, address: int) -> None:
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
        self._protected: Counter[int] = Counter()     # physical page -> patches on it
        self._linear: dict[int, int] = {}             # watched physical page -> its linear page
        self._storing: int | None = None              # linear address of the store in flight
        #: CSAM's monitored pages of the kernel's code (runtime/monitored.py), when patching.
        self.monitor: KernelCodeMonitor | None = None

    def phys(self, address: int) -> int:
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
        return bytes(self.vm.cpu.phys_read(self.phys(address), size))

    def write(self, address: int, data: bytes) -> None:
        phys = self.phys(address)
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
        self.drop_written(address, len(data), phys)

    def watch(self, start: int, end: int) -> object:
        # Patched pages are write-protected in Unicorn (physical pages: every alias is
        # caught): a guest store there faults into the VMM guard's one write-protection
        # hook (runtime/guard.py), which calls `before_store` and `after_store` around it;
        # every other store runs at full speed. A UC_HOOK_MEM_WRITE hook, even one, puts
        # every guest store on Unicorn's slow path (measured: irqsave-pv, iters=200000,
        # patched, 496 ms with one such hook vs 384 ms without).
        mask = ~(layout.PAGE_SIZE - 1)
        # Guest code lives in guest RAM; the VMM area is the guard's and stays protected.
        pages = {self.phys(a) & mask: a & mask for a in (start, end - 1)}
        pages = {p: lin for p, lin in pages.items() if p < layout.VMM_BASE}
        for page, linear in pages.items():
            self._protected[page] += 1
            self._linear[page] = linear
            self.vm.guard.watch(page, self)
        return tuple(pages)

    def unwatch(self, handle: object) -> None:
        assert isinstance(handle, tuple)
        for page in handle:
            self._protected[page] -= 1
            if self._protected[page] == 0:
                del self._protected[page], self._linear[page]
            self.vm.guard.unwatch(page, self)

    def _linear_of(self, phys: int) -> int | None:
        linear = self._linear.get(phys & ~(layout.PAGE_SIZE - 1))
        return None if linear is None else linear | (phys & (layout.PAGE_SIZE - 1))

    def before_store(self, phys: int, size: int) -> None:
        """A guest store (or one the VMM makes for the guest) is about to land in a watched
        code page (the guard calls this with the physical address; an exception goes to the
        run loop through the guard). The patch manager knows linear addresses: the watch
        remembers which linear page each physical page was watched for."""
        assert self.manager is not None
        address = self._linear_of(phys)
        self._storing = address      # on_guest_write may end the watch of this very page
        if address is not None:
            self.manager.on_guest_write(address, size)

    def after_store(self, phys: int, size: int) -> None:
        """The store is made: drop whatever Unicorn translated from those bytes."""
        address, self._storing = self._storing, None
        if address is not None:
            self.drop_written(address, size, phys)

    def drop_written(self, address: int, size: int, phys: int) -> None:
        """Drop Unicorn's translations of `size` guest-code bytes at `address` (physical
        `phys`) just written. Unicorn finds translations through a linear address and fills
        its TLB for it. Inside a store's hook (`VmmGuard.in_store`) that can evict the TLB
        entry the store is using (another linear page of the same TLB index: the kernel's
        address of a page the guest writes through an alias, Linux's text_poke, or while
        paging is off, a bzImage's decompressor): Unicorn 2.1.4 then stores through a stale
        addend and crashes (measured: SIGSEGV in helper_le_stl_mmu). So they are dropped
        before the next slice then (runtime/traps.py `drop_stale_code`: through `address` if
        it maps the bytes, else all of them), and the slice ends at the next block boundary;
        the rest of the running block may still run the old bytes, as on a CPU that does not
        snoop its own stores."""
        if self.monitor is not None and phys & ~(layout.PAGE_SIZE - 1) in self.monitor.revoked:
            return   # nothing is translated from a page without its execute permission
        area = self.vm.machine.vmm
        try:
            here = area.contains(address) or int(self.vm.mmu.translate(address)) == phys
        except PageFault:
            here = False
        traps = self.vm.traps
        if self.vm.guard.in_store:
            if here:
                traps.drop_later.append((address, address + size))
            else:
                traps.stale_code = True
            self.vm.insn_clock.stop_soon()
        elif here:
            self.uc.ctl_remove_cache(address, address + size)
        else:
            from unicorn import unicorn_const as uconst

            self.uc.ctl(uconst.UC_CTL_TB_FLUSH, uconst.UC_CTL_IO_WRITE)

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
        from runtime.monitored import KernelCodeMonitor

        monitor = memory.monitor = KernelCodeMonitor(vm, memory.phys, lambda: memory.manager,
                                                     memory.drop_written)
        code = [(s.address, s.size) for s in image.executable_sections]
        if isinstance(vm.boot, LinuxImage) and vm.boot.header is not None:
            monitor.monitor_when_paged(code)      # a bzImage: decompressed first
        else:
            monitor.monitor(code)
        vm.code.rewritten = monitor.fetch_fault
        vm.on_slice_end.append(monitor.end_of_slice)
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
        # IRET too: an IRET to ring 3 at CPL 1 is legal, runs silently and drops the frame's
        # IF and IOPL; only its patch (an exit on returns to user mode) tells the VMM the
        # user's flags (issue 11, item 5).
        silent = [s for s in kernel_sites if s.cls.unicorn is isa.Unicorn.SILENT or s.cls.name == "iret"]
        manager.patch_all(s.address for s in (kernel_sites if config.eager else silent) if s.reached)
        for s in silent:
            if not s.reached and manager.is_unpatched(s.address):
                memory.on_first_execution(s.address)
        # Code outside the ELF's executable segments is scanned when it first runs (CSAM).
        vm.code.install(vm.config.ram_size, [(seg.paddr, seg.paddr + seg.memsz) for seg in image.segments
                                             if seg.executable])
    return manager
