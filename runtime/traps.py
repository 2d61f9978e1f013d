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
from bt.operation import Operation, Reg
from runtime import machine
from runtime.context import HANDLED, Ctx, EmulationFault, Emulator
from runtime.cpu import CR2, EAX, ECX, EDI, EFLAGS, EIP, ESI
from runtime.deliver import VEC_BP, VEC_GP, VEC_PF, WITH_ERROR, DeliveryFault
from runtime.emulate import EMULATORS
from runtime.latch import POISONING, ExceptionLatch
from runtime.paging import CR0_PG, PF_W, PageFault
from runtime.patching import NoPatcher, Patcher
from runtime.vcpu import IOPL_MASK

#: Mnemonics whose #GP may come from a stale shadow GDT (resync and re-execute once).
_SEGMENT_LOADS = frozenset({"mov", "pop", "lds", "les", "lfs", "lgs", "ljmp", "lcall", "jmp", "call"})
#: Mnemonics that write memory without naming it as an operand (for #PF error codes).
_IMPLICIT_WRITES = ("push", "call", "stos", "movs", "enter", "pushal", "pushfd", "pushf")
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
        self._cs = Cs(CS_ARCH_X86, CS_MODE_32)
        self._cs.detail = True
        #: Without details, for counting instructions (runtime/vm.py `_insns_between`).
        self.cs_lite = Cs(CS_ARCH_X86, CS_MODE_32)
        #: The run's instruction clock (runtime/clock.py), told of every exception.
        self.clock: Any = None
        #: Clears Unicorn's skip-EIP-sync flag after this hook wrote EIP (runtime/pcsync.py).
        self.pcsync: Any = None
        self._cache: dict[int, tuple[bytes, Operation]] = {}
        self._resynced_at: int | None = None
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
        #: Page protections asked for inside an IN/OUT hook, applied between slices:
        #: (physical page, Unicorn permissions), in order (`drop_stale_code`).
        self.pending_protect: list[tuple[int, int]] = []
        #: A REP INS/OUTS element whose hook stopped the slice: (EIP, ECX, size, INS?).
        self._rep_element: tuple[int, int, int, bool] | None = None
        #: The instruction of the IN/OUT hook being handled (for `stop_in_io`).
        self._io_op: Operation | None = None

    # -- decoding -------------------------------------------------------------------------------
    def decode(self, eip: int) -> Operation:
        mmu = self.ctx.mmu
        hit = self._cache.get(eip)
        # A cached decode is reused only while the bytes at EIP are still the same.
        if hit is not None:
            raw = hit[0]
            if not self.ctx.vcpu.paging_regs()[0] & CR0_PG:   # paging off: linear == physical
                if self.cpu.phys_read(eip, len(raw)) == raw:
                    return hit[1]
            elif mmu.read(eip, len(raw), fetch=True) == raw:
                return hit[1]
        code = mmu.read(eip, 16, fetch=True) if (eip & 0xFFF) <= 0xFF0 else self._read_code(eip)
        try:
            insn = next(self._cs.disasm(code, eip, 1))
        except (StopIteration, CsError) as err:
            raise GuestStop("unknown opcode", eip, code[:8].hex()) from err
        op = isa.decode(insn)
        self._cache[eip] = (bytes(insn.bytes), op)
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
        if self.exit_status is not None:
            uc.emu_stop()          # after the guest's isa-debug-exit: see `guest_exited`
            return
        t0 = time.perf_counter_ns()
        kind = "interrupt"
        try:
            kind = self._intr(vector)
            if vector in POISONING:
                self.latch.clear()
        except BaseException as err:
            self.error = err
            uc.emu_stop()
        finally:
            self.pcsync.after_hook()
            dt = time.perf_counter_ns() - t0
            self.stats.vmm_ns += dt
            self.stats.vmm_ns_by_kind[kind] += dt

    def _intr(self, vector: int) -> str:
        cpu = self.cpu
        eip, cs = cpu.eip_cs()
        # A software interrupt reports the EIP after it; a fault its own EIP, and it counts as
        # run (runtime/clock.py), as it is by emulation.
        self.clock.fault(eip, not (vector == VEC_BP or vector == 4 or vector >= 32))
        # The guest's CPL, 0 for its kernel (real ring 1, or ring 3 in kernel mode under
        # --guest-ring 3: `VirtualCpu.guest_cpl`).
        cpl = self.ctx.vcpu.guest_cpl(cs)
        m = self.ctx.m
        area = m.vmm
        in_vmm = area.contains(eip) and not area.in_patch_memory(eip)
        # A fault sets Unicorn's old_exception latch to its vector before this hook runs; INT n
        # never does (notes #3). So vector 13 or 14 with the latch clear is the guest's own
        # INT 0x0D or INT 0x0E, a software interrupt (EIP after it), not a fault.
        if vector == VEC_GP and cpl == 0 and not in_vmm and self.latch.latched() == VEC_GP:
            return self._trap(eip)      # the hot path: a privileged instruction of the guest kernel
        if vector == VEC_PF and self.latch.latched() == VEC_PF and self.ctx.shadow_fault(cpu.read(CR2)):
            # The shadow page directory was behind the guest's (runtime/shadowpd.py): caught
            # up; the instruction runs again and the guest sees no fault.
            self.stats.exit("paging", None, self.patcher.to_guest_eip(eip))
            return "paging"
        if vector == VEC_BP:
            return self._int3(eip)
        if eip in (m.linear(machine.IRET_OUT), m.linear(machine.RETF_OUT)):
            raise GuestStop("the CPU refused an emulated return to ring 3", eip,
                            f"vector {vector}; the frame passed the VMM's checks")
        if in_vmm:
            # A fault in the VMM's own trampoline: the call gate could not push onto
            # the guest's kernel stack (TSS.esp0). On hardware: a fault delivering a
            # fault delivering an interrupt, i.e. a triple fault.
            raise GuestStop("triple fault", eip,
                            f"vector {vector} while switching to the guest's kernel stack (TSS ss0:esp0)")
        if vector == VEC_GP and cpl == 0 and self.latch.latched() == VEC_GP:
            return self._trap(eip)
        soft = self._is_soft(vector, eip)
        error: int | None = None
        if vector == VEC_PF and not soft:
            cr2 = cpu.read(CR2)
            self.ctx.vcpu.set_cr(2, cr2)
            error = self._pf_error(cr2, eip, cpl)
        elif vector in WITH_ERROR and not soft:
            error = 0  # Unicorn does not expose error codes; the guest's own #GP is almost always 0
        self.inject(vector, eip, error, soft)
        return "interrupt"

    def _is_soft(self, vector: int, eip: int) -> bool:
        if vector >= 32:
            return True
        try:
            before = self.ctx.mmu.read(eip - 2, 2)
        except PageFault:
            return False
        return before == bytes((0xCD, vector)) or (vector == 4 and before[1] == 0xCE)

    def inject(self, vector: int, eip: int, error: int | None, soft: bool) -> None:
        """Deliver `vector` to the guest (counted as an injected-interrupt exit)."""
        eip = self.patcher.to_guest_eip(eip)   # the guest never sees a patch address in a frame
        self.stats.exit("interrupt", None, eip)
        self.stats.vectors[vector] += 1
        self.last.append(("interrupt", f"vector {vector}", eip))
        self.ctx.inject.deliver(vector, eip, error, soft)

    def _pf_error(self, cr2: int, eip: int, cpl: int) -> int:
        """Rebuild the #PF error code Unicorn does not expose (SDM §4.7), by walking
        the guest's tables for the access the faulting instruction made."""
        user = cpl == 3
        mmu = self.ctx.mmu
        try:
            mmu.translate(cr2, False, user)
        except PageFault as pf:
            # Not present, or (from user mode) a supervisor page: the walk for a read fails
            # the same way as for a write, and W tells which access it was (a user write to a
            # supervisor page is P|W|U = 7, not 5). A fetch is a read; with 32-bit paging it
            # sets no I/D bit (SDM §4.7: only with PAE and NX, or SMEP).
            if self._fetch_faulted(cr2, eip, user):
                return pf.error_code
            return pf.error_code | (PF_W if self._writes(eip) else 0)
        try:
            mmu.translate(cr2, True, user)
        except PageFault as pf:
            return pf.error_code
        return (PF_W if self._writes(eip) else 0) | (4 if user else 0)

    def _fetch_faulted(self, cr2: int, eip: int, user: bool) -> bool:
        """The instruction's own bytes could not be fetched: CR2 lies within the 15 bytes
        an instruction at EIP may span, and the bytes from EIP to CR2 are not readable at
        this privilege."""
        if not 0 <= (cr2 - eip) & 0xFFFFFFFF < 15:
            return False
        try:
            self.ctx.mmu.read(eip, ((cr2 - eip) & 0xFFFFFFFF) + 1, user=user, fetch=True)
        except PageFault:
            return True
        return False

    def _writes(self, eip: int) -> bool:
        try:
            insn = next(self._cs.disasm(self.ctx.mmu.read(eip, 16), eip, 1))
        except (StopIteration, CsError, PageFault):
            return False
        if insn.mnemonic.startswith(_IMPLICIT_WRITES):
            return True
        from capstone import CS_AC_WRITE
        from capstone.x86 import X86_OP_MEM
        return any(o.type == X86_OP_MEM and o.access & CS_AC_WRITE for o in insn.operands)

    # -- #GP at CPL 1: trap and emulate ---------------------------------------------------------
    def _trap(self, eip: int) -> str:
        try:
            op = self.decode(eip)
        except PageFault as pf:
            self.ctx.vcpu.set_cr(2, pf.linear)
            self.inject(VEC_PF, eip, pf.error_code, False)
            return "interrupt"
        emulate = EMULATORS.get(op.cls) if op.cls is not None else None
        if emulate is None or op.cls is None:
            if op.mnemonic in _SEGMENT_LOADS and self._resynced_at != eip:
                # Maybe the guest changed its GDT after LGDT: resync and re-execute once.
                self._resynced_at = eip
                self.ctx.gdt.sync()
                return "trap"
            self._resynced_at = None
            self.inject(VEC_GP, eip, self._gp_error(op), False)
            return "interrupt"
        self._resynced_at = None
        self.stats.exit("trap", op.cls, eip)
        self.last.append(("trap", op.cls or "?", eip))
        self.ctx.retry_deferred(eip)
        self.patcher.on_trap(op)
        self.execute(op, op.next_address, emulate)
        return "trap"

    def _gp_error(self, op: Operation) -> int:
        """The #GP error code of a segment load the CPU refused: the selector
        (SDM §6.13), which Unicorn does not report; 0 for everything else."""
        if op.mnemonic in ("mov", "pop") and op.operands and isinstance(op.operands[0], Reg) \
                and op.operands[0].name in ("ds", "es", "fs", "gs", "ss"):
            try:
                value = self.ctx.read(op.operands[1]) if op.mnemonic == "mov" else self.ctx.mmu.read_u32(
                    self.cpu.read_name("esp"))
            except PageFault:
                return 0
            return value & 0xFFFC
        return 0

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
    def _int3(self, eip: int) -> str:
        at = eip - 1
        m = self.ctx.m
        if at == m.linear(machine.STUB1):
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
        if in_patch:
            raise GuestStop("INT3 in patch memory that the patch manager does not know", at)
        self.inject(VEC_BP, eip, None, True)
        return "interrupt"

    # -- SYSENTER: Unicorn never faults it, it calls this hook ---------------------------------------
    def on_sysenter(self, uc: Uc, _data: Any) -> None:
        """SYSENTER from guest user mode, emulated on the guest's virtual MSRs (the
        real ones stay 0: a real SYSENTER would enter ring 0). Unicorn adds the
        instruction's 2 bytes to EIP after this hook, hence the -2."""
        t0 = time.perf_counter_ns()
        try:
            eip, cs = self.cpu.eip_cs()
            self.stats.exit("trap", "sysenter", eip)
            self.last.append(("trap", "sysenter", eip))
            if self.ctx.vcpu.guest_cpl(cs) != 3:
                raise GuestStop("SYSENTER from kernel mode is not supported", eip)
            if self.ctx.inject.ring3 is not None:
                raise GuestStop("SYSENTER under --guest-ring 3 is not supported yet", eip)
            try:
                self.ctx.inject.sysenter(eip + 2)
            except DeliveryFault as fault:
                self.inject(fault.vector, eip, fault.error_code, False)
            self.cpu.write(EIP, self.cpu.read(EIP) - 2)
        except BaseException as err:  # stored and re-raised by the run loop
            self.error = err
            uc.emu_stop()
        dt = time.perf_counter_ns() - t0
        self.stats.vmm_ns += dt
        self.stats.vmm_ns_by_kind["trap"] += dt

    # -- I/O: exits Unicorn does not fault --------------------------------------------------------
    def on_in(self, _handle: int, port: int, size: int, _data: Any) -> int:
        uc = self.uc
        if self.exit_status is not None:
            return 0
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
            dt = time.perf_counter_ns() - t0
            self.stats.vmm_ns += dt
            self.stats.vmm_ns_by_kind[kind] += dt

    def on_out(self, _handle: int, port: int, size: int, value: int, _data: Any) -> None:
        uc = self.uc
        if self.exit_status is not None:
            return
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

    def drop_stale_code(self) -> None:
        """Between slices: drop Unicorn's translations if guest code was patched inside an
        IN/OUT hook (runtime/patching.py: the invalidation had to wait), after giving the
        patched pages the protection they were to get then."""
        if self.stale_code:
            self.stale_code = False
            uc = self.ctx.m.uc
            for page, perms in self.pending_protect:
                uc.mem_protect(page, 0x1000, perms)
            self.pending_protect.clear()
            from unicorn import unicorn_const as uconst

            uc.ctl(uconst.UC_CTL_TB_FLUSH, uconst.UC_CTL_IO_WRITE)

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
        eip, cs = self.cpu.eip_cs()
        cpl = self.ctx.vcpu.guest_cpl(cs)
        if cpl != 0 and not self._io_permitted(cpl, port, size):
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
        if cpl == 0 and (self.ctx.retry_deferred(eip) | bool(self.patcher.on_trap(op))):
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
        desc = None if tr & 4 else self.ctx.gdt.guest_descriptor(tr)   # TR names a GDT entry
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
