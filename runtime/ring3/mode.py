"""The guest kernel deprivileged to ring 3: transitions and paging views (`bt run --guest-ring 3`).

What ring 1 gets from the CPU and ring 3 must make itself (runtime/ring3/__init__.py):

* **Guest CPL.** Guest kernel and guest user code both run at real CPL 3, so the guest's CPL
  is virtual: `VirtualCpu.kernel_mode`, set here on every transition, is what
  `VirtualCpu.guest_cpl` answers for the trap, delivery and I/O decisions.
* **User -> kernel** (INT n, exceptions and IRQs in guest user mode). The real CPL does not
  change, so the CPU would switch no stack: the VMM reads the guest TSS's ss0:esp0, pushes
  the frame the CPU would push there (SS, ESP, EFLAGS, CS, EIP[, error]: SDM vol. 3 §6.12.1),
  sets kernel mode, switches the paging view and loads the handler's CS:EIP with RPL 3.
  Counted as a "bounce" by what it was: a system call (INT n), an IRQ, an exception.
* **Kernel -> user** is the guest kernel's IRET to an RPL-3 frame. At CPL 3 that IRET is a
  same-privilege return that would not even pop SS:ESP, and it does not fault, so the VMM must
  see it another way: every IRET the scanner finds in the kernel's ELF (CSAM's list) is
  replaced by an INT3 before the guest runs (as PATM did for sites it could not patch with a
  JMP; both are one byte), and emulated here (`iret`). Frames the VMM builds for interrupts
  in kernel mode carry CS with RPL 0, so an IRET of one the scanner did not see faults (#GP:
  a return to a more privileged RPL at CPL 3) and is emulated as in ring 1. An IRET the
  scanner did not see that returns to user mode leaves the guest in user code with kernel
  mode set: the run stops cleanly at the next delivery or the end of the slice
  (`check_mode`); emulating it (from issue 11's first-run scanning) is not done yet, nor are
  SYSEXIT and far RET to user mode, which stop the run cleanly ("not supported yet").
* **Paging views** (`view`): "flat" is one view, the kernel view (runtime/ring3/vtlb.py), in
  kernel and user mode alike: guest user code can then read and write guest kernel memory.
  "split" uses the kernel view in kernel mode and the guest's own tables (the shadow page
  directory of runtime/shadowpd.py, under which guest supervisor pages stay supervisor) in
  user mode, and switches on every transition: a real CR3 write, which flushes the TLB.

Segments: every guest descriptor below DPL 3 is shadowed with DPL 3 (runtime/segments.py
`compress`), so the guest kernel can load its own; the price, besides the RPL/DPL 3 that MOV
r,CS, PUSH CS, LAR and VERR show (zoo), is that guest user code can load the kernel's data
selectors too, which faults on hardware (not made up for yet: one GDT for both modes).

Ring 3 runs unpatched: patch code lives on supervisor pages of the VMM area and could not
run at CPL 3. The INT3s on IRET sites are the only change to guest code.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capstone import CS_ARCH_X86, CS_MODE_32, Cs
from unicorn import UC_HOOK_CODE
from unicorn import unicorn_const as uconst

from bt import elf, isa, layout, scan
from bt.errors import GuestStop
from bt.operation import Operation
from runtime.context import HANDLED, Ctx
from runtime.cpu import CR3, CS, DS, EFLAGS, EIP, ES, ESP, FS, GS, SS
from runtime.deliver import Injector
from runtime.emulate import transfers
from runtime.machine import Machine
from runtime.paging import CR0_PG, CR0_WP, CR4_PSE, Mmu, PageFault
from runtime.patching import KernelMap
from runtime.ring3.vtlb import REPLACED, UNCHANGED, KernelView
from runtime.segments import ShadowGdt
from runtime.stats import RunStats
from runtime.vcpu import IF, VIRTUAL_FLAGS, VirtualCpu

VIEWS = ("split", "flat")
_IRET = b"\xcf"
_INT3 = b"\xcc"


class Ring3:
    def __init__(self, m: Machine, vcpu: VirtualCpu, mmu: Mmu, gdt: ShadowGdt, inject: Injector,
                 stats: RunStats, view: str, flush_tlb: Callable[[], None]) -> None:
        if view not in VIEWS:
            raise ValueError(f"ring 3 view {view!r}")
        self.m, self.cpu, self.vcpu, self.mmu, self.gdt, self.inject = m, m.cpu, vcpu, mmu, gdt, inject
        self.view = view
        self.stats = stats
        #: `RunStats.ring3`: bounces by cause, view switches, view faults, the TLB flushes
        #: ring 3 adds (view switches, view entries replaced).
        self.counts = stats.ring3
        self._flush = flush_tlb
        self.kernel = KernelView(m.vmm_memory, m.ram, lambda: m.vmm,
                                 wp=lambda: bool(vcpu.cr(0) & CR0_WP),
                                 pse=lambda: bool(vcpu.cr(4) & CR4_PSE))
        #: Physical addresses of the IRETs made INT3 (`plant_irets`).
        self._irets: set[int] = set()
        self._ops: dict[int, Operation] = {}
        self._cs = Cs(CS_ARCH_X86, CS_MODE_32)
        self._cs.detail = True
        vcpu.ring = 3
        vcpu.kernel_mode = True

    def clear_latch_at_entry(self, entry: int, clear: Callable[[], None]) -> None:
        """Unicorn 2.1.4 quirk made up for: when the CPU pages while the guest does not (issue
        11's identity shadow), the first slice after BOOT (whose IRETD lands at real CPL 3)
        started with Unicorn's `old_exception` at #PF, CR2 = BOOT's address, a supervisor page
        at CPL 3 (measured: set inside `emu_start`, after the run loop cleared it), and the
        guest's first fault became #DF (higherhalf's MOV from CR4). A code hook on the entry
        instruction clears it there; the entry rarely runs again."""
        def hook(_uc: Any, _address: int, _size: int, _data: Any) -> None:
            clear()
        self.m.uc.hook_add(UC_HOOK_CODE, hook, None, entry, entry)

    # -- IRET sites --------------------------------------------------------------------------------
    def plant_irets(self, kernel: Path) -> int:
        """Replace every IRET the scanner finds in the kernel by an INT3, where the ELF loads
        it (physical: the same bytes whatever maps them). Returns how many."""
        image = elf.load(kernel)
        where = KernelMap(image.segments)
        for site in scan.scan(image).sites:
            if site.cls.name != "iret" or site.code != _IRET:
                continue
            phys = where.paddr(site.address)
            if phys is None or phys >= self.m.ram_size or self.cpu.phys_read(phys, 1) != _IRET:
                continue
            self.cpu.phys_write(phys, _INT3)
            self._irets.add(phys)
        self.counts["iret sites"] = len(self._irets)
        return len(self._irets)

    def iret_site(self, at: int) -> Operation | None:
        """The IRET an INT3 at linear `at` stands for, or None if it is not one of ours."""
        if not self._irets:
            return None
        try:
            phys = self.mmu.translate(at, fetch=True)
        except PageFault:
            return None
        if phys not in self._irets:
            return None
        op = self._ops.get(at)
        if op is None:
            op = isa.decode(next(self._cs.disasm(_IRET, at, 1)))
            self._ops[at] = op
        return op

    # -- kernel -> user ----------------------------------------------------------------------------
    def iret(self, op: Operation, ctx: Ctx, next_eip: int) -> int | None:
        """The emulator of an IRET site (an `Emulator`): to user mode here, within the kernel
        as ring 1 does (runtime/emulate/transfers.py)."""
        cpu, vcpu = self.cpu, self.vcpu
        if not vcpu.kernel_mode:
            # Guest user code ran kernel code it can reach (flat view): IRET at CPL 3 of the
            # guest is the CPU's; not emulated here.
            raise GuestStop("an IRET site of the kernel ran in guest user mode (--guest-ring 3)", op.address)
        esp = cpu.read(ESP)
        raw = self.mmu.read(esp, 12)
        eip, cs, flags = struct.unpack("<III", raw)
        cs &= 0xFFFF
        if cs & 3 != 3:
            return transfers.iret(op, ctx, next_eip)
        code = self.gdt.guest_descriptor(cs)
        if code is not None and code.is_code and code.dpl < 3:
            return self._iret_same_level(ctx, esp, eip, cs, flags)
        user_esp, ss = struct.unpack("<II", self.mmu.read(esp + 12, 8))
        ss &= 0xFFFF
        transfers._check_user_frame(ctx, cs, ss)
        vcpu.vflags = (vcpu.vflags & ~VIRTUAL_FLAGS) | (flags & VIRTUAL_FLAGS)
        real = cpu.read(EFLAGS)
        # In user mode the real IF is 1 and IOPL 0, as in ring 1 (the guest's own go to vflags).
        mask = transfers.IRET_MASK
        cpu.write(EFLAGS, (real & ~mask) | (flags & mask & ~VIRTUAL_FLAGS) | IF | 0x2)
        vcpu.user_flags = True          # the user's IF/IOPL are the frame's, in vflags
        self._set_mode(kernel=False)
        self.m.load_cs(cs)
        cpu.write(SS, ss)
        cpu.write(ESP, user_esp)
        # SDM IRET, return to an outer level: data segments the new CPL may not use are nulled
        # (the CPU does it in ring 1; at real CPL 3 every shadow DPL is 3, so the guest's own
        # descriptors decide).
        for reg in (DS, ES, FS, GS):
            sel = cpu.read(reg)
            desc = self.gdt.guest_descriptor(sel) if sel & ~3 else None
            if desc is not None and desc.dpl < 3 and not (desc.is_code and desc.type & 4):
                cpu.write(reg, 0)
        self.counts["bounce iret to user"] += 1
        return eip

    def _iret_same_level(self, ctx: Ctx, esp: int, eip: int, cs: int, flags: int) -> int | None:
        """An IRET of the kernel to its own code with RPL 3: a frame it built from PUSH CS, which
        shows the real RPL (the ring-compression leak ring 1 has with RPL 1). At real CPL 3 the
        CPU makes that a same-level return, as it does at CPL 1 in ring 1: pop EIP, CS, EFLAGS
        (the virtual IF/IOPL from the frame, as runtime/emulate/transfers.py `iret` does)."""
        cpu, vcpu = self.cpu, self.vcpu
        cpu.write(ESP, esp + 12)
        mask = transfers.IRET_MASK
        cpu.write(EFLAGS, (cpu.read(EFLAGS) & ~mask) | (flags & mask & ~VIRTUAL_FLAGS) | IF | 0x2)
        vcpu.vflags = (vcpu.vflags & ~VIRTUAL_FLAGS) | (flags & VIRTUAL_FLAGS)
        self.m.load_cs(cs)
        if flags & IF:
            cpu.write(EIP, eip)
            if ctx.on_vif_set(eip) is not None:
                return HANDLED
        return eip

    # -- user -> kernel ----------------------------------------------------------------------------
    def enter_kernel(self, vector: int, error_code: int | None, return_eip: int, handler_cs: int,
                     handler_eip: int, clear_if: bool, soft: bool) -> None:
        """An interrupt or exception in guest user mode: what the CPU does for an inward
        privilege change (SDM vol. 3 §6.12.1), made by the VMM."""
        cpu, vcpu = self.cpu, self.vcpu
        ss0, esp0 = self.inject._guest_ring0_stack()
        stack = self.gdt.guest_descriptor(ss0)
        if stack is None or not stack.present or stack.is_code or stack.is_system or not stack.type & 2:
            raise GuestStop("interrupt from user mode: the guest TSS's SS0 is not a writable data segment",
                            return_eip, f"SS0 {ss0:#x}")
        eflags = cpu.read(EFLAGS)
        # The user's EFLAGS as the guest sees them: its virtual IF/IOPL once a return the VMM
        # emulated set them (`VirtualCpu.user_flags`), as ring 1 shows them.
        shown = vcpu.user_eflags(eflags)
        frame = [cpu.read(SS), cpu.read(ESP), shown, cpu.read(CS), return_eip]
        if error_code is not None:
            frame.append(error_code)
        new_esp = (esp0 - 4 * len(frame)) & 0xFFFFFFFF
        try:
            self.mmu.write(new_esp, struct.pack(f"<{len(frame)}I", *reversed(frame)))
        except PageFault:
            raise GuestStop("triple fault", return_eip,
                            "guest kernel stack (TSS esp0) not writable") from None
        self._set_mode(kernel=True)
        cpu.write(SS, (ss0 & ~3) | 3)
        cpu.write(ESP, new_esp)
        # The handler starts with the user's IF (a trap gate leaves it, an interrupt gate clears
        # it), and from now on the virtual flags are the kernel's.
        vcpu.set_vif(bool(shown & IF))
        vcpu.user_flags = False
        self.inject._enter(handler_cs, handler_eip, eflags, clear_if)
        cause = "syscall" if soft else "irq" if vector >= 32 else "exception"
        self.counts[f"bounce {cause}"] += 1

    # -- paging views ------------------------------------------------------------------------------
    def _set_mode(self, kernel: bool) -> None:
        self.vcpu.kernel_mode = kernel
        self._apply_view()

    def _apply_view(self) -> None:
        """Point the real CR3 at the view the guest's mode needs (split); a change is a view
        switch and, in Unicorn as on hardware without tagged TLBs, a TLB flush."""
        if not self.vcpu.cr(0) & CR0_PG:
            return
        want = self._view_pd()
        if self.cpu.read(CR3) != want:
            self.cpu.write(CR3, want)
            self.counts["view switches"] += 1
            self.counts["tlb flushes"] += 1
            self.stats.tlb_flushes += 1

    def _view_pd(self) -> int:
        """The directory the CPU walks now: the kernel view's, or in split user mode the guest's
        own tables (runtime/shadowpd.py's shadow directory)."""
        if self.view == "flat" or self.vcpu.kernel_mode:
            return layout.VMM_RING3_PD
        return layout.VMM_SHADOW_PD

    def paging_changed(self, linear: int | None) -> None:
        """After the guest's CR0/CR3/CR4 write (`linear` None) or INVLPG: the kernel view follows
        (runtime/vm.py has just pointed the real CR3 at the user view's directory)."""
        cr0, cr3, _cr4 = self.vcpu.paging_regs()
        if not cr0 & CR0_PG:
            self.kernel.unload()
            return
        if linear is None:
            self.kernel.load(cr3)
            self.cpu.write(CR3, self._view_pd())
            # Unicorn gap made up for (2.1.4): with guest kernel and guest user code at the same
            # CPL, translated code of one address space was run in another after a CR3 load
            # (seen on the mini-OS under issue 11's page-directory watch: a new process ran code
            # of the page's previous contents). Dropping translations on every guest CR3 load
            # cured it; the exact cause in Unicorn's lookup is not pinned down yet.
            self.m.uc.ctl(uconst.UC_CTL_TB_FLUSH, uconst.UC_CTL_IO_WRITE)
            self.counts["code flushes"] += 1
        else:
            self.kernel.invlpg(linear)

    def pde_written(self, index: int) -> bool:
        """The guest stored into entry `index` of its current directory, which takes effect at
        once where the VMM watches the directory (issue 11): the kernel view drops that entry
        too, so both views see the same directory. True if a shadow entry went."""
        return self.kernel.invlpg(index << 22)

    def fault(self, linear: int) -> bool:
        """A #PF while the kernel view is the CPU's: True if it only filled the view (a
        `paging` exit the guest never sees, counted as a view fault)."""
        if self.cpu.read(CR3) != layout.VMM_RING3_PD:
            return False
        done = self.kernel.fault(linear)
        if done == UNCHANGED:
            return False
        self.counts["view faults"] += 1
        if done == REPLACED:
            self.counts["tlb flushes"] += 1
            self._flush()
        return True

    def after_slice(self) -> None:
        """The VMM area may have moved (runtime/relocate.py): the kernel view's slot with it.
        And a safety net for the IRETs the scanner did not see (module docstring): the guest in
        kernel mode on a code segment of its user DPL got there without the VMM, so kernel
        mode, stack and view are wrong from then on; stop cleanly, at the end of its slice at
        the latest (an exit on the way may already have been handled as the kernel's)."""
        if self.kernel.guest_pd is not None and self.kernel.place_vmm():
            self._flush()
        self.check_mode()

    def check_mode(self) -> None:
        """Kernel mode on a code segment of the guest's user DPL: stop (`after_slice`). Also
        asked before every delivery in kernel mode (runtime/deliver.py)."""
        if not self.vcpu.kernel_mode:
            return
        cs = self.cpu.read(CS)
        try:
            code = self.gdt.guest_descriptor(cs) if cs & ~3 else None
        except PageFault:        # the guest's GDT is not mapped now: nothing to compare with
            return
        if code is not None and code.is_code and code.dpl == 3 and not code.type & 4:
            raise GuestStop("guest user code runs in kernel mode (--guest-ring 3): an IRET or far "
                            "return to user mode the scanner did not see", self.cpu.read(EIP))

