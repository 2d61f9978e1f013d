"""The VMM's exits: Unicorn's interrupt and I/O hooks (VirtualBox TRPM + EM).

`on_intr` gets every exception and software interrupt the guest raises:

* #GP at CPL 1: decode the instruction (Capstone, through `bt.isa.decode`, cached
  per address and checked against the bytes), look up its class and run the one
  emulator of that class (runtime/emulate/). A #GP of an instruction the table
  does not emulate is the guest's own: delivered through its IDT.
* INT3 at the VMM's ring-1 stub: the second half of a ring 3 -> 1 delivery.
* INT3 in patch memory or at a patched site: a hypercall (`Patcher.exit_at`).
* Everything else (#PF, #DE, #UD, #GP from ring 3, INT n) belongs to the guest
  and is delivered through its IDT (runtime/deliver.py).

`on_in`/`on_out` are the IN/OUT exits Unicorn never faults (notes #1). From guest
user mode they first make the CPU's I/O permission check (virtual IOPL, the guest's
TSS bitmap) that Unicorn skips; a denied access is stopped in the hook and the run
loop reflects it as #GP(0) (`reflect_io_fault`).

An exception raised in here is stored in `self.error`, emulation is stopped and
the run loop re-raises it (runtime/vm.py): never swallowed.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from capstone import CS_ARCH_X86, CS_MODE_32, Cs, CsError
from unicorn import Uc

from bt import isa
from bt.errors import GuestStop
from bt.operation import Operation
from runtime import machine
from runtime.context import HANDLED, Ctx, EmulationFault, Emulator
from runtime.cpu import CR2, EAX, ECX, EDI, EFLAGS, EIP, ESI
from runtime.deliver import VEC_BP, VEC_GP, VEC_NP, VEC_PF, VEC_UD, WITH_ERROR, DeliveryFault
from runtime.emulate import EMULATORS
from runtime.fastexit import FastExits
from runtime.gates import Gates
from runtime.latch import POISONING, ExceptionInfo, ExceptionLatch
from runtime.paging import CR0_PG, PF_P, PF_U, PageFault
from runtime.patching import NoPatcher, Patcher
from runtime.userstep import UserSteps
from runtime.vcpu import IOPL_MASK, MSR_EFER

#: EFER.SCE: SYSCALL enabled.
EFER_SCE = 1

#: 32-bit TSS descriptor types (available, busy) and where a TSS holds its I/O map base.
TSS32, TSS32_BUSY, IOMAP_BASE = 0x9, 0xB, 0x66
#: EFLAGS.DF: string instructions walk down.
DF = 1 << 10
#: What a denied I/O instruction may have changed by the time the hook stops it.
_IO_REGS = (EAX, ECX, ESI, EDI)


@dataclass(frozen=True)
class IoFault:
    """An I/O instruction from guest user mode the permission check denied."""

    eip: int
    #: (register, value) before the instruction: what Unicorn changes after the hook.
    regs: tuple[tuple[int, int], ...]
    #: INS: the hook's return value goes to memory, not to EAX.
    string_in: bool


#: EFLAGS.VM: virtual-8086 mode.
VM86 = 1 << 17
#: EFLAGS bits patch code may have changed and gives back: CF PF AF ZF SF TF DF OF.
_ARITH = 0xDD5
#: The classes runtime/native/fastexit.c emulates.
FAST_CLASSES = frozenset({"cli", "sti", "rdtsc"})
#: Instruction classes whose hypercall may change what the PIC has pending.
_IO_CLASSES = frozenset({"in", "out", "ins", "outs"})

class Traps:
    def __init__(self, ctx: Ctx, patcher: Patcher | None = None, history: int = 16,
                 latch: str = "direct") -> None:
        self.ctx = ctx
        self.uc = ctx.m.uc
        self.cpu = ctx.cpu
        self.stats = ctx.stats
        self.patcher: Patcher = patcher or NoPatcher()
        self.latch = ExceptionLatch(ctx.m.uc, latch)
        self.exc = ExceptionInfo(self.latch)
        self.steps = UserSteps(ctx, lambda: self.patcher)
        self.gates = Gates(ctx, self.decode)
        self._cs = Cs(CS_ARCH_X86, CS_MODE_32)
        self._cs.detail = True
        #: Without details, for counting instructions (runtime/vm.py `_insns_between`).
        self.cs_lite = Cs(CS_ARCH_X86, CS_MODE_32)
        #: The run's instruction clock (runtime/clock.py), told of every exception.
        self.clock: Any = None
        #: Clears Unicorn's skip-EIP-sync flag after this hook wrote EIP (runtime/pcsync.py).
        self.pcsync: Any = None
        #: Decoded instructions by linear EIP: their bytes, the operation, and while paging is
        #: off a live view of the bytes in guest memory (`decode`).
        self._cache: dict[int, tuple[bytes, Operation, memoryview | None]] = {}
        self.error: BaseException | None = None
        self.exit_status: int | None = None
        #: A user-mode I/O the guest's IOPL and TSS deny, stopped in its hook (`_io_permitted`).
        self.io_fault: IoFault | None = None
        #: The last exits, for stop reports: (kind, class or vector, guest EIP).
        self.last: deque[tuple[str, str, int]] = deque(maxlen=history)
        #: True while an IN/OUT hook runs (Unicorn is inside the instruction), and whether
        #: guest code was patched then: its translations are dropped before the next slice
        #: (runtime/patching.py, `drop_stale_code`).
        self.in_io_hook = False
        self.stale_code = False
        #: Linear ranges [start, end) of guest code written inside a memory hook, whose
        #: translations are dropped before the next slice (runtime/patching.py `drop_written`).
        self.drop_later: list[tuple[int, int]] = []
        #: A REP INS/OUTS element whose hook stopped the slice: (EIP, ECX, size, INS?).
        self._rep_element: tuple[int, int, int, bool] | None = None
        #: The instruction of the IN/OUT hook being handled (for `stop_in_io`).
        self._io_op: Operation | None = None
        #: The C hook in front of `on_intr` that takes CLI/STI at quiet sites
        #: (runtime/fastexit.py); None when the run has none. Every Python hook starts with
        #: its `enter`, so what C counted is folded in first.
        self.fast: FastExits | None = None

    # -- decoding -------------------------------------------------------------------------------
    def decode(self, eip: int) -> Operation:
        hit = self._cache.get(eip)
        # A cached decode is reused only while the bytes at EIP are still the same: checked on
        # every exit (guest code may rewrite itself, or remap it, without the VMM being told).
        # Paging off, linear == physical: the bytes are compared in place through the view
        # taken at decode (no copy, no lookup: a third of this exit's decode cost, issue 14).
        if hit is not None:
            raw, op, view = hit
            if not self.ctx.vcpu.paging_regs()[0] & CR0_PG:
                if view is not None and view == raw:
                    return op
            elif self.ctx.mmu.read(eip, len(raw), fetch=True) == raw:
                return op
        mmu = self.ctx.mmu
        code = mmu.read(eip, 16, fetch=True) if (eip & 0xFFF) <= 0xFF0 else self._read_code(eip)
        try:
            insn = next(self._cs.disasm(code, eip, 1))
        except (StopIteration, CsError) as err:
            raise GuestStop("unknown opcode", eip, code[:8].hex()) from err
        op = isa.decode(insn)
        raw = bytes(insn.bytes)
        paged = self.ctx.vcpu.paging_regs()[0] & CR0_PG
        self._cache[eip] = (raw, op, None if paged else self.cpu.phys_view(eip, len(raw)))
        return op

    def _read_code(self, eip: int) -> bytes:
        # Near a page end: read what is mapped (the instruction may end before it).
        try:
            return self.ctx.mmu.read(eip, 16, fetch=True)
        except PageFault:
            return self.ctx.mmu.read(eip, 0x1000 - (eip & 0xFFF), fetch=True)

    def forget_code(self) -> None:
        """Guest code or its mapping may have changed (paging switched): drop decodes."""
        self._cache.clear()

    # -- the interrupt hook ---------------------------------------------------------------------
    # The three hooks below are called straight from C (runtime/engine.py `hook_raw`):
    # the first argument is the engine's handle, and every exception is caught here.
    def on_intr(self, _handle: int, vector: int, _data: Any) -> None:
        uc = self.uc
        if self.fast is not None:
            self.fast.enter()
        if self.exit_status is not None:
            uc.emu_stop()          # after the guest's isa-debug-exit: see `guest_exited`
            return
        t0 = time.perf_counter_ns()
        kind = "interrupt"
        try:
            kind = self._intr(vector)
            if vector in POISONING:
                self.latch.clear()
            else:
                self.unlatch()
        except BaseException as err:
            self.error = err
            uc.emu_stop()
        finally:
            self.pcsync.after_hook()
            if self.fast is not None:
                self.fast.leave()
            dt = time.perf_counter_ns() - t0
            self.stats.vmm_ns += dt
            self.stats.vmm_ns_by_kind[kind] += dt

    def _intr(self, vector: int) -> str:
        cpu = self.cpu
        eip, cs, eflags = cpu.eip_cs_flags()
        if eflags & VM86:
            self.refuse_vm86()
        # The CPL in ring 1's terms: 1 for the guest kernel, also under --guest-ring 3 where
        # it runs at real CPL 3 (`VirtualCpu.ring1_cpl`).
        cpl = self.ctx.vcpu.ring1_cpl(cs)
        # What the CPU knew and the hook is not told (runtime/latch.py): the error code it
        # would push, and whether INT n raised the vector rather than a fault (a guest's
        # `int $13` at CPL 1 is no #GP to emulate, SDM vol. 3 §6.4.2).
        error, soft = self.exc.read()
        # A software interrupt reports the EIP after it; a fault its own EIP, and it counts as
        # run (runtime/clock.py), as it is by emulation.
        self.clock.fault(eip, not soft)
        m = self.ctx.m
        area = m.vmm
        in_vmm = area.contains(eip) and not area.in_patch_memory(eip)
        if not soft and vector == VEC_GP and cpl == 1 and not in_vmm:
            return self._trap(eip, error)   # the hot path: a privileged instruction of the guest kernel
        if not soft and vector == VEC_PF and self.ctx.shadow_fault(cpu.read(CR2)):
            # The shadow page directory was behind the guest's (runtime/shadowpd.py): caught
            # up; the instruction runs again and the guest sees no fault.
            self.stats.exit("paging", None, self.patcher.to_guest_eip(eip))
            return "paging"
        if soft and vector == VEC_BP:
            return self._int3(eip, cpl)
        if eip in (m.linear(machine.IRET_OUT), m.linear(machine.RETF_OUT)):
            raise GuestStop("the CPU refused an emulated return to ring 3", eip,
                            f"vector {vector}; the frame passed the VMM's checks")
        if in_vmm:
            if cpl == 3 and self.ctx.inject.inward is None:
                # Guest user code jumped into the VMM's one user-readable page (the
                # trampoline). The guest maps nothing there: its #PF, as on hardware.
                return self._user_fetch_fault(eip if not soft else eip - 1)
            # A fault in the VMM's own trampoline: the call gate could not push onto
            # the guest's kernel stack (TSS.esp0). On hardware: a fault delivering a
            # fault delivering an interrupt, i.e. a triple fault. Reported at the guest
            # user instruction that started it, not at the VMM's trampoline.
            inward = self.ctx.inject.inward
            raise GuestStop("triple fault", inward.eip if inward is not None else eip,
                            f"vector {vector} while switching to the guest's kernel stack (TSS ss0:esp0)")
        if cpl == 3 and not soft and vector == VEC_GP and error == 0 and self._user_iopl(eip):
            return "trap"
        if cpl == 3 and not soft and vector == VEC_GP and error == 0 and self._user_rdtsc(eip):
            return "trap"
        if cpl == 3 and self.steps.user_at_patch(eip, vector, soft):
            return "interrupt"          # ring 3 runs the guest's own bytes there (runtime/userstep.py)
        if not soft and vector == VEC_GP and cpl == 1:
            return self._trap(eip, error)
        if not soft and vector == VEC_NP and self.gates.through_gate(eip, error):
            return "trap"               # a guest call gate, emulated (runtime/gates.py)
        if soft:
            self.inject(vector, eip, None, True)
            return "interrupt"
        if vector == VEC_PF:
            cr2 = cpu.read(CR2)
            if not self.ctx.vcpu.paging_regs()[0] & CR0_PG:
                # The guest does not page: only the VMM's page table refused this (ring 3 in
                # the VMM's top 4 MiB, runtime/shadowpd.py). Hardware would reach what lies at
                # those physical addresses; the guest gets #GP(0), never a #PF it cannot expect.
                self.inject(VEC_GP, eip, 0, False)
                return "interrupt"
            self.ctx.vcpu.set_cr(2, cr2)
            if cpl == 1 and self.ctx.inject.ring3 is not None:
                error &= ~PF_U         # the guest kernel's access, made at real CPL 3 (ring 3)
            if area.contains(cr2):
                # The VMM's slot is one the guest's directory leaves empty (else the area
                # would have moved): not present, whatever the VMM's own page table says.
                error &= ~PF_P
        self.inject(vector, eip, error if vector in WITH_ERROR else None, False)
        return "interrupt"

    def _user_rdtsc(self, eip: int) -> bool:
        """An RDTSC of guest user code faults only because of the VMM's own CR4.TSD
        (runtime/machine.py): unless the guest set CR4.TSD itself, run it as the CPU would
        have (reading the virtual TSC) and say True; False: the #GP is the guest's."""
        if self.ctx.vcpu.cr(4) & machine.CR4_TSD:
            return False
        try:
            op = self.decode(eip)
        except (GuestStop, PageFault):
            return False
        if op.cls != "rdtsc":
            return False
        self.stats.exit("trap", op.cls, eip)
        self.last.append(("trap", op.cls, eip))
        self.execute(op, op.next_address)
        return True

    def refuse_vm86(self) -> None:
        """The guest is in virtual-8086 mode, which ring1 does not emulate: Unicorn's IRET
        enters it from CPL 1 too (QEMU's helper_ret_protected honours EFLAGS.VM in the frame
        at any CPL, where the SDM says only CPL 0 may). Stopped cleanly at the first exit."""
        if self.cpu.read(EFLAGS) & VM86:
            raise GuestStop("virtual-8086 mode is not supported", self.cpu.read(EIP))

    def _user_iopl(self, eip: int) -> bool:
        """CLI/STI in guest user mode with the guest's IOPL 3: legal on hardware (CPL <=
        IOPL), a #GP here because the real IOPL is 0. Emulated on the virtual IF, which from
        now on is the user's (`VirtualCpu.user_flags`): interrupts wait while it is clear."""
        vcpu = self.ctx.vcpu
        if (vcpu.vflags & IOPL_MASK) >> 12 != 3:
            return False
        try:
            op = self.decode(eip)
        except PageFault:
            return False
        if op.cls not in ("cli", "sti"):
            return False
        if not vcpu.user_flags:
            vcpu.set_vif(True)      # what user mode ran with until now (the real IF)
            vcpu.user_flags = True
        self.stats.exit("trap", op.cls, eip)
        self.last.append(("trap", op.cls, eip))
        self.execute(op, op.next_address)
        return True

    def _give_back(self, eip: int) -> None:
        """A fault inside patch code: put back what it borrowed from the guest, so that the
        fault is the guest instruction's, with the guest's registers (patchmgr/borrow.py)."""
        held = self.patcher.borrowed_at(eip)
        if held is None:
            return
        cpu, mmu = self.cpu, self.ctx.mmu
        for reg, where in held.saved.items():
            cpu.write_name(reg, mmu.read_u32(where))
        if held.eflags_at is not None:
            image = mmu.read_u32(held.eflags_at)
            cpu.write(EFLAGS, (cpu.read(EFLAGS) & ~_ARITH) | (image & _ARITH))
        if held.pushed:
            cpu.write_name("esp", (cpu.read_name("esp") + held.pushed) & 0xFFFFFFFF)

    def _user_fetch_fault(self, eip: int) -> str:
        if not self.ctx.vcpu.paging_regs()[0] & CR0_PG:
            self.inject(VEC_GP, eip, 0, False)      # as above: a guest that does not page
            return "interrupt"
        self.ctx.vcpu.set_cr(2, eip)
        self.cpu.write(CR2, eip)
        self.inject(VEC_PF, eip, PF_U, False)
        return "interrupt"

    def inject(self, vector: int, eip: int, error: int | None, soft: bool) -> None:
        """Deliver `vector` to the guest (counted as an injected-interrupt exit)."""
        if not soft and self.ctx.m.vmm.in_patch_memory(eip):
            self._give_back(eip)
        eip = self.patcher.to_guest_eip(eip)   # the guest never sees a patch address in a frame
        self.stats.exit("interrupt", None, eip)
        self.stats.vectors[vector] += 1
        self.last.append(("interrupt", f"vector {vector}", eip))
        self.ctx.inject.deliver(vector, eip, error, soft)

    # -- #GP at CPL 1: trap and emulate ---------------------------------------------------------
    def _trap(self, eip: int, error: int) -> str:
        try:
            op = self.decode(eip)
        except PageFault as pf:
            self.ctx.vcpu.set_cr(2, pf.linear)
            self.inject(VEC_PF, eip, pf.error_code, False)
            return "interrupt"
        emulate = EMULATORS.get(op.cls) if op.cls is not None else None
        if emulate is None or op.cls is None:
            # Not ring compression's doing: the guest's own #GP, with the CPU's error code.
            self.gates.refuse_task_switch(op, error)
            self.inject(VEC_GP, eip, error, False)
            return "interrupt"
        self.stats.exit("trap", op.cls, eip)
        self.last.append(("trap", op.cls or "?", eip))
        self.ctx.retry_deferred(eip)
        self.patcher.on_trap(op)
        self.execute(op, op.next_address, emulate)
        if self.fast is not None and op.cls in FAST_CLASSES:
            self._to_fast(op)
        return "trap"

    def _to_fast(self, op: Operation) -> None:
        """After Python emulated a CLI, STI or RDTSC: C takes the site's next traps if the patcher
        will only count them (runtime/fastexit.py)."""
        fast = self.fast
        assert fast is not None
        hit = self._cache.get(op.address)
        quiet = getattr(self.patcher, "quiet", None)
        if hit is not None and quiet is not None and quiet(op):
            fast.register(op.address, op.cls or "", hit[0], self.patcher)

    def execute(self, op: Operation, next_eip: int, emulate: Emulator | None = None) -> None:
        """Run `op`'s emulator; continue at `next_eip` unless it transferred control.
        The guest's own exceptions raised by the instruction are delivered."""
        if emulate is None:
            assert op.cls is not None
            emulate = EMULATORS[op.cls]
        before = self.ctx.m.vmm
        try:
            result = emulate(op, self.ctx, next_eip)
        except EmulationFault as fault:
            self.inject(fault.vector, op.address, fault.error_code, False)
            return
        except PageFault as pf:
            self.ctx.vcpu.set_cr(2, pf.linear)
            self.cpu.write(CR2, pf.linear)
            self.inject(VEC_PF, op.address, pf.error_code, False)
            return
        if self.ctx.m.vmm is not before:    # a move makes a new VmmArea
            # The instruction moved the VMM area (a CR3 load: runtime/relocate.py), so a patch
            # address the caller chose to continue at has moved with it.
            now = self.ctx.m.vmm
            next_eip = before.carry(next_eip, now)
            if result is not None and result != HANDLED:
                result = before.carry(result, now)
        if result is None:
            self.cpu.write(EIP, self.patcher.resume_at(next_eip))
        elif result != HANDLED:
            self.cpu.write(EIP, self.patcher.resume_at(result))
        else:
            eip = self.cpu.read(EIP)   # an IRET or a delivered interrupt chose it
            if (to := self.patcher.resume_at(eip)) != eip:
                self.cpu.write(EIP, to)

    # -- INT3: the VMM's stub, hypercalls, or the guest's own breakpoint ------------------------------
    def _int3(self, eip: int, cpl: int) -> str:
        at = eip - 1
        m = self.ctx.m
        if at == m.linear(machine.STUB1) and cpl == 1 and self.ctx.inject.inward is not None:
            self.ctx.inject.complete_inward()
            return "interrupt"
        ring3 = self.ctx.inject.ring3
        if ring3 is not None and (iret_op := ring3.iret_site(at)) is not None:
            # Under --guest-ring 3 every IRET of the kernel the scanner saw is an INT3
            # (runtime/ring3/mode.py): emulated, it may return to guest user mode.
            self.stats.exit("hypercall", "iret", at)
            self.last.append(("hypercall", "iret", at))
            self.execute(iret_op, at + 1, ring3.iret)
            return "hypercall"
        if cpl == 3:
            # Patch exits are the guest kernel's: from ring 3 an INT3 replacement is the guest's
            # own instruction run by its user (runtime/userstep.py), anything else its #BP.
            if m.vmm.contains(at):
                return self._user_fetch_fault(at)      # the trampoline page's INT3 filler
            if not self.steps.user_at_patch(eip, VEC_BP, True):
                self.inject(VEC_BP, eip, None, True)
            return "interrupt"
        in_patch = m.vmm.in_patch_memory(at)
        record = self.patcher.exit_at(at)
        if record is not None:
            op = record.op
            site = self.patcher.to_guest_eip(at)
            if op is None:
                # The patch only stopped at a guest address to let a pending interrupt in.
                self.stats.exit("hypercall", "pending", site)
                self.last.append(("hypercall", "pending", site))
                if self.ctx.on_vif_set(record.resume) is None:
                    self.cpu.write(EIP, record.resume)
                return "hypercall"
            self.stats.exit("hypercall", op.cls, site)
            self.last.append(("hypercall", op.cls or "?", site))
            self.execute(op, record.resume)
            if self.exit_status is not None:   # a patched OUT to isa-debug-exit
                self.ctx.m.uc.emu_stop()
            if op.cls in _IO_CLASSES:
                self._stop_for_irq(self.ctx.m.uc)
            return "hypercall"
        if in_patch or m.vmm.contains(at):
            raise GuestStop("INT3 in VMM memory the VMM does not know (the guest kernel ran VMM code)", at)
        self.inject(VEC_BP, eip, None, True)
        return "interrupt"

    # -- SYSENTER: Unicorn never faults it, it calls this hook ---------------------------------------
    def on_sysenter(self, uc: Uc, _data: Any) -> None:
        """SYSENTER, emulated on the guest's virtual MSRs (the real ones stay 0: a real
        SYSENTER would enter ring 0). From ring 3 through the VMM's gate, from the guest
        kernel (legal at CPL 0) directly (runtime/deliver.py). Unicorn adds the
        instruction's 2 bytes to EIP after this hook, hence the -2."""
        self._fast_call(uc, "sysenter")

    def on_syscall(self, uc: Uc, _data: Any) -> None:
        """SYSCALL: Unicorn runs it as a no-op. Outside 64-bit mode it is #UD while
        EFER.SCE = 0 (SDM SYSCALL; QEMU's helper_syscall), which ring1's guests always have:
        QEMU's 32-bit CPU models cannot set SCE."""
        self._fast_call(uc, "syscall")

    def _fast_call(self, uc: Uc, cls: str) -> None:
        if self.fast is not None:
            self.fast.enter()
        t0 = time.perf_counter_ns()
        try:
            self.refuse_vm86()
            eip, cs = self.cpu.eip_cs()
            self.stats.exit("trap", cls, eip)
            self.last.append(("trap", cls, eip))
            try:
                if cls == "syscall":
                    if self.ctx.vcpu.msr[MSR_EFER] & EFER_SCE:
                        raise GuestStop("SYSCALL with EFER.SCE = 1 outside 64-bit mode is not supported", eip)
                    raise DeliveryFault(VEC_UD, 0)
                if self.ctx.inject.ring3 is not None:
                    raise GuestStop("SYSENTER under --guest-ring 3 is not supported yet", eip)
                if cs & 3 == 3:
                    self.ctx.inject.sysenter(eip + 2)
                else:
                    self.ctx.inject.sysenter_kernel()
            except DeliveryFault as fault:
                error = fault.error_code if fault.vector in WITH_ERROR else None
                self.inject(fault.vector, eip, error, False)
            self.cpu.write(EIP, self.cpu.read(EIP) - 2)
        except BaseException as err:  # stored and re-raised by the run loop
            self.error = err
            uc.emu_stop()
        if self.fast is not None:
            self.fast.leave()
        dt = time.perf_counter_ns() - t0
        self.stats.vmm_ns += dt
        self.stats.vmm_ns_by_kind["trap"] += dt

    # -- I/O: exits Unicorn does not fault --------------------------------------------------------
    def on_in(self, _handle: int, port: int, size: int, _data: Any) -> int:
        uc = self.uc
        if self.exit_status is not None:
            return 0
        if self.fast is not None:
            self.fast.enter()
        t0 = time.perf_counter_ns()
        kind = "io"
        self.in_io_hook = True
        try:
            if self._io_exit("in", port, size):
                value = self.ctx.bus.read(port, size)
                self._stop_for_irq(uc)
                return value
            # Denied: the device is not read. Unicorn stores what this returns into
            # AL/AX/EAX (IN) or ES:[EDI] (INS) before it stops: give IN the register's own
            # value (the run loop restores EAX anyway), INS the 0 its probe store left.
            kind = "interrupt"
            if self.io_fault is not None and self.io_fault.string_in:
                return 0
            return self.cpu.read(EAX) & ((1 << (8 * size)) - 1)
        except BaseException as err:
            self.error = err
            uc.emu_stop()
            return 0
        finally:
            self.in_io_hook = False
            if self.fast is not None:
                self.fast.leave()
            dt = time.perf_counter_ns() - t0
            self.stats.vmm_ns += dt
            self.stats.vmm_ns_by_kind[kind] += dt

    def on_out(self, _handle: int, port: int, size: int, value: int, _data: Any) -> None:
        uc = self.uc
        if self.exit_status is not None:
            return
        if self.fast is not None:
            self.fast.enter()
        t0 = time.perf_counter_ns()
        kind = "io"
        self.in_io_hook = True
        try:
            if self._io_exit("out", port, size):
                self.ctx.bus.write(port, size, value)
                if self.exit_status is not None:
                    self.guest_exited(uc)
                    return
                self._stop_for_irq(uc)
            else:
                kind = "interrupt"
        except BaseException as err:
            self.error = err
            uc.emu_stop()
        finally:
            self.in_io_hook = False
            if self.fast is not None:
                self.fast.leave()
            dt = time.perf_counter_ns() - t0
            self.stats.vmm_ns += dt
            self.stats.vmm_ns_by_kind[kind] += dt

    def guest_exited(self, uc: Uc) -> None:
        """The OUT just run wrote the isa-debug-exit port: QEMU ends there. Unicorn stops at the
        end of the translated block (with the block clock): until then every exit is inert
        (the hooks return at once) and the clock counts the block only up to this OUT."""
        op = self._io_op
        if op is not None:
            self.clock.cut(self.cpu.read(EIP) + op.length)
        self.stop_in_io(uc)

    def stop_in_io(self, uc: Uc) -> None:
        """`emu_stop` from an IN/OUT hook. For a REP INS/OUTS, Unicorn 2.1.4 then stops
        after the element's store to memory (INS) or its output (OUTS) but before it
        advances ECX and EDI/ESI, so the resumed instruction would do that element again
        (measured on a bare engine: tests/test_patch_io.py). Remember the element;
        `finish_rep_element` completes it when the slice has ended."""
        op = self._io_op
        if op is not None and op.rep and op.cls in ("ins", "outs") and self._rep_element is None:
            cpu = self.cpu
            size = {"b": 1, "w": 2, "d": 4}[op.mnemonic[-1]]
            self._rep_element = (cpu.read(EIP), cpu.read(ECX), size, op.cls == "ins")
        uc.emu_stop()

    def finish_rep_element(self) -> None:
        """After a slice: advance ECX and EDI/ESI past the REP INS/OUTS element the stop
        left done but uncounted (`stop_in_io`), and EIP past the instruction when it was the
        last. Only if the CPU is still where the hook left it."""
        pending, self._rep_element = self._rep_element, None
        if pending is None:
            return
        eip, ecx, size, ins = pending
        cpu = self.cpu
        if cpu.read(EIP) != eip or cpu.read(ECX) != ecx or ecx == 0:
            return
        step = -size if cpu.read(EFLAGS) & DF else size
        index = EDI if ins else ESI
        cpu.write(index, (cpu.read(index) + step) & 0xFFFFFFFF)
        cpu.write(ECX, ecx - 1)
        if ecx == 1:
            assert self._io_op is not None
            cpu.write(EIP, eip + self._io_op.length)

    def unlatch(self) -> None:
        """Clear Unicorn's old_exception if something the VMM did inside a hook set it: a
        page-rights change (uc_mem_protect) or a translation-cache drop (uc_ctl
        TB_REMOVE_CACHE) of a linear address the guest's tables do not map raises a #PF
        inside Unicorn that no hook sees but that stays latched (measured: xv6 --eager, its
        LGDT patch's hypercall watching the new GDT's page, CR2 = that physical page), and
        the guest's next #PF became a #DF. No exception is in flight when a VMM hook
        returns, so the latch is -1 then, as QEMU's x86_cpu_do_interrupt leaves it."""
        if self.latch.latched() != -1:
            self.latch.clear()

    def defer_protect(self) -> bool:
        """Whether a page's new Unicorn rights (runtime/guard.py `_apply`) must wait for the
        end of the slice: inside an IN/OUT hook. Unicorn 2.1.4 runs that hook inside the
        translated block, and a protection change of the page the CPU executes from leaves
        a #PF pending (CR2 0) that it raises at the next instruction (xv6's ideinit: its IN
        patched on first exit ended in a triple fault). The hook ends the slice (the patch
        stops it); the run loop applies the change before the next one (`VmmGuard.apply_pending`),
        then `drop_stale_code` drops every translation."""
        if not self.in_io_hook:
            return False
        self.stale_code = True
        return True

    def drop_stale_code(self) -> None:
        """Between slices: drop Unicorn's translations if guest code was patched or page
        rights changed inside a hook (runtime/patching.py: the invalidation had to wait); else
        only the code written inside a memory hook (`drop_later`)."""
        if self.drop_later:
            ranges, self.drop_later = self.drop_later, []
            if not self.stale_code:
                for start, end in ranges:
                    self.ctx.m.uc.ctl_remove_cache(start, end)
        if self.stale_code:
            self.stale_code = False
            from unicorn import unicorn_const as uconst

            self.ctx.m.uc.ctl(uconst.UC_CTL_TB_FLUSH, uconst.UC_CTL_IO_WRITE)

    def _stop_for_irq(self, uc: Uc) -> None:
        """End the slice when the I/O just done left an interrupt the guest takes now (it
        unmasked or acknowledged a line at the PIC, or a device raised one): the run loop
        delivers it after this instruction, where the CPU would take it, instead of at the
        end of a slice up to `RunConfig.slice_insns` instructions later. `emu_stop` in an
        I/O hook takes effect before the next instruction (unicorn 2.1.4, measured)."""
        if self.ctx.irq_deliverable():
            self.stop_in_io(uc)

    def _io_exit(self, cls: str, port: int, size: int) -> bool:
        """Account for one IN/OUT hook call; False: the access is denied (a #GP is pending)."""
        self.refuse_vm86()
        eip, cs = self.cpu.eip_cs()
        cpl = self.ctx.vcpu.ring1_cpl(cs)
        if cpl != 1 and not self._io_permitted(cpl, port, size):
            self._deny_io(eip)
            return False
        eip = self.patcher.to_guest_eip(eip)
        op = self.decode(eip)
        self._io_op = op
        # Unicorn's hook says only "in" or "out"; the decoded instruction tells INS/OUTS apart,
        # so string I/O is counted in its own class, as the table lists it.
        cls = op.cls or cls
        self.stats.exit("io", cls, eip)
        self.stats.io_ports[port] += 1
        self.last.append(("io", f"{cls} {port:#x}", eip))
        if cpl == 1 and (self.ctx.retry_deferred(eip) | bool(self.patcher.on_trap(op))):
            # A patch now covers this IN/OUT (or others were just made). Unicorn finishes the
            # instruction and would run on into a window; stop, so the run loop resumes
            # through `resume_at`.
            self.stop_in_io(self.ctx.m.uc)
        return True

    # -- I/O from guest user mode: the protection check Unicorn skips -----------------------------
    #
    # On hardware, IN/OUT/INS/OUTS at CPL > IOPL consult the I/O permission bitmap of the
    # current TSS and raise #GP(0) *before* any I/O when a bit for an accessed port is 1 or
    # lies beyond the TSS limit (Intel SDM vol. 1 §19.5.2). Unicorn skips that check and
    # calls the IN/OUT hook instead (notes/unicorn-ring1.md #1), so the VMM applies it here,
    # in the hook, with the state the *guest* set up: its virtual IOPL and its own TSS (the
    # virtual TR). Guest ring 0 (real CPL 1) is always allowed: the guest believes it runs at
    # CPL 0. The real IOPL stays 0 and nothing is intercepted before the CPU sees it.
    #
    # Unicorn calls the hook in the middle of the instruction (measured with unicorn 2.1.4;
    # tests/test_runtime_userio.py pins it on a bare engine): EIP, ECX, ESI and EDI still
    # hold their values from before the instruction; after the hook it writes the IN value
    # to AL/AX/EAX or ES:[EDI] and advances ESI/EDI/ECX and EIP. `emu_stop()` in the hook
    # takes effect before the next element or instruction. So a denied access records the
    # registers and stops; the run loop (`reflect_io_fault`) puts them back and delivers
    # #GP(0) at the instruction. Limitation: for INS, Unicorn has already stored a dummy 0
    # to ES:[EDI] (QEMU's probe write, to be restartable on #PF) before the hook runs, so a
    # denied INS leaves one element of zeros there, in memory the user process may write.
    def _io_permitted(self, cpl: int, port: int, size: int) -> bool:
        vcpu = self.ctx.vcpu
        if cpl <= (vcpu.vflags & IOPL_MASK) >> 12:
            return True
        tr = vcpu.tr
        try:
            desc = None if tr & 4 else self.ctx.gdt.guest_descriptor(tr)   # TR names a GDT entry
        except PageFault:
            return False                 # its GDT unmapped: denied (hardware: #PF)
        if desc is None or not desc.present or not desc.is_system or desc.type not in (TSS32, TSS32_BUSY):
            return False
        limit = desc.limit
        if limit < IOMAP_BASE + 1:       # too short for a 32-bit TSS with an I/O map base
            return False
        try:
            offset = int.from_bytes(self.ctx.mmu.read(desc.base + IOMAP_BASE, 2), "little") + (port >> 3)
            if offset + 1 > limit:       # the CPU reads two bytes of the bitmap (SDM §19.5.2)
                return False
            bits = int.from_bytes(self.ctx.mmu.read((desc.base + offset) & 0xFFFFFFFF, 2), "little")
        except PageFault:
            return False                 # unmapped TSS: denied (hardware would raise #PF instead)
        mask = (1 << size) - 1
        return not (bits >> (port & 7)) & mask

    def _deny_io(self, eip: int) -> None:
        if self.io_fault is None:        # the first element of a string instruction decides
            cpu = self.cpu
            self.io_fault = IoFault(eip, tuple((reg, cpu.read(reg)) for reg in _IO_REGS),
                                    self.decode(eip).cls == "ins")
        self.ctx.m.uc.emu_stop()

    def reflect_io_fault(self) -> bool:
        """After a slice: undo what Unicorn did to a denied I/O instruction and deliver
        #GP(0) at it through the guest's IDT (an exit reflected to the guest, not I/O)."""
        pending, self.io_fault = self.io_fault, None
        if pending is None:
            return False
        t0 = time.perf_counter_ns()
        eip = pending.eip
        for reg, value in pending.regs:
            self.cpu.write(reg, value)
        self.cpu.write(EIP, eip)
        self.inject(VEC_GP, eip, 0, False)
        dt = time.perf_counter_ns() - t0
        self.stats.vmm_ns += dt
        self.stats.vmm_ns_by_kind["interrupt"] += dt
        return True
