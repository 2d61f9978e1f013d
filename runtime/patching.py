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
    a patched window no longer holds guest code, the patch block does.

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from bt import layout
from bt.operation import Operation
from runtime.cpu import EIP

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


class _VmMemory:
    """patchmgr's GuestMemory and WriteWatch over the VM: guest-virtual addresses
    through the guest's page tables, the VMM area as it is (linear == physical)."""

    def __init__(self, vm: Any) -> None:
        self.vm = vm
        self.uc = vm.machine.uc
        self.manager: PatchManager | None = None
        self._protected: Counter[int] = Counter()     # physical page -> patches on it
        self._linear: dict[int, int] = {}             # watched physical page -> its linear page

    def _phys(self, address: int) -> int:
        return address if address >= layout.VMM_BASE else int(self.vm.mmu.translate(address))

    def read(self, address: int, size: int) -> bytes:
        return bytes(self.vm.cpu.phys_read(self._phys(address), size))

    def write(self, address: int, data: bytes) -> None:
        self.vm.cpu.phys_write(self._phys(address), data)
        # Code Unicorn already translated must be translated again (unicorn-ring1.md #7).
        self.uc.ctl_remove_cache(address, address + len(data))

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
                self.uc.mem_protect(page, layout.PAGE_SIZE, UC_PROT_READ | UC_PROT_EXEC)
        return tuple(pages)

    def unwatch(self, handle: object) -> None:
        from unicorn import UC_PROT_ALL

        assert isinstance(handle, tuple)
        for page in handle:
            self._protected[page] -= 1
            if self._protected[page] == 0:
                del self._protected[page], self._linear[page]
                self.uc.mem_protect(page, layout.PAGE_SIZE, UC_PROT_ALL)

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
        self.manager.on_guest_write(address, size)
        # Unicorn drops the faulting store when the hook handles it: make it, then drop
        # whatever Unicorn translated from those bytes.
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        self.vm.cpu.phys_write(phys, data)
        self.uc.ctl_remove_cache(address, address + size)
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
    from bt import elf, isa, scan
    from patchmgr.codemap import ScanCodeMap
    from patchmgr.manager import PatchManager
    from patchmgr.static import read_record, user_code

    # The loader's ELF when it has one (a second load of a 64 MiB kernel costs its size twice).
    image = getattr(vm.boot, "kernel", None) or elf.load(vm.config.kernel)
    result = scan.scan(image)
    memory = _VmMemory(vm)
    from runtime.emulate import EMULATORS

    manager = PatchManager(config, memory, ScanCodeMap(result), watch=memory,
                           emulable=EMULATORS.__contains__)
    memory.manager = manager
    vm.vcpu.on_pending = manager.set_pending
    record = read_record(image)
    if record is not None:
        manager.adopt(record)
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
