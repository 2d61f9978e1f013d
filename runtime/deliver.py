"""Exception and interrupt delivery through the guest's own IDT (VirtualBox TRPM).

Unicorn never delivers through an IDT once a UC_HOOK_INTR hook exists (notes #2),
so the VMM does what the CPU would (Intel SDM vol. 3 §6.12): read the gate from the
guest's IDT, check it, switch stacks when the privilege level changes, push the
frame (and error code), clear IF for interrupt gates, load CS:EIP.

Two paths, by the CPL the event arrives at:

* CPL 1 (guest kernel): no stack switch; EFLAGS, CS, EIP[, error] go on the
  current stack. The guest believes it runs in ring 0, so the frame shows the
  *virtual* IF/IOPL and a CS whose RPL 1 is stripped to 0 (as VirtualBox did).
  A side effect we want: the guest's IRET of such a frame returns "to a more
  privileged level" from CPL 1, faults, and is emulated (runtime/emulate/
  transfers.py), which is where the virtual IF gets restored.
* CPL 3 (guest user): the CPU must really change privilege. The hook points EIP
  at the user trampoline (a far CALL through the VMM's DPL-3 call gate, see
  runtime/machine.py), having first copied the guest TSS's ss0:esp0 into the
  real TSS's ss1:esp1 and opened the VMM's GDT slots (they are beyond the real GDT's
  limit, the guest's, at every other time). The CPU switches to the guest's kernel stack at CPL 1;
  the INT3 at the gate's target calls `complete_inward`, which replaces the
  16-byte call frame with the interrupt frame (SS, ESP, EFLAGS, CS, EIP[, error]
  of the user context, RPL 3 as the guest expects) and jumps to the handler.

A fault while delivering (gate missing, frame not writable) escalates as on
hardware: to #DF, and a fault delivering #DF is a triple fault (`GuestStop`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bt.errors import GuestStop
from runtime import machine
from runtime.cpu import CR2, CS, EFLAGS, EIP, ESP, SS
from runtime.paging import Mmu, PageFault
from runtime.segments import VMM_CS3, ShadowGdt
from runtime.vcpu import IF, MSR_SYSENTER_CS, MSR_SYSENTER_EIP, MSR_SYSENTER_ESP, VirtualCpu

if TYPE_CHECKING:
    from runtime.ring3.mode import Ring3

VEC_DE, VEC_DB, VEC_BP, VEC_UD, VEC_DF, VEC_TS, VEC_NP, VEC_SS, VEC_GP, VEC_PF = (
    0, 1, 3, 6, 8, 10, 11, 12, 13, 14)
#: Exceptions that push an error code (SDM vol. 3 table 6-1).
WITH_ERROR = frozenset({8, 10, 11, 12, 13, 14, 17, 21})
#: EFLAGS bits cleared on entry to any handler: TF, NT, RF, VM (SDM §6.12.1).
CLEARED_ON_ENTRY = (1 << 8) | (1 << 14) | (1 << 16) | (1 << 17)

GATE_INT32, GATE_TRAP32, GATE_INT16, GATE_TRAP16, GATE_TASK = 0xE, 0xF, 0x6, 0x7, 0x5


class DeliveryFault(Exception):
    """The CPU could not deliver: raise `vector` with `error_code` instead (`linear`: the
    address of a #PF, for CR2)."""

    def __init__(self, vector: int, error_code: int, linear: int | None = None) -> None:
        super().__init__(f"vector {vector} error {error_code:#x}")
        self.vector = vector
        self.error_code = error_code
        #: For #PF: the linear address that faulted (CR2 gets it when the fault is detected).
        self.linear = linear


def _page_fault(pf: PageFault) -> DeliveryFault:
    return DeliveryFault(VEC_PF, pf.error_code, pf.linear)


#: SDM vol. 3 table 6-4: the contributory exceptions.
CONTRIBUTORY = frozenset({0, 10, 11, 12, 13})


@dataclass(frozen=True)
class Gate:
    offset: int
    selector: int
    type: int
    dpl: int
    present: bool

    @classmethod
    def from_bytes(cls, b: bytes) -> Gate:
        lo, sel, _zero, access, hi = struct.unpack("<HHBBH", b)
        return cls(lo | (hi << 16), sel, access & 0x1F, (access >> 5) & 3, bool(access & 0x80))


@dataclass(frozen=True)
class Inward:
    """A delivery from ring 3 in flight between the trampoline and STUB1."""

    vector: int
    error_code: int | None
    eip: int
    cs: int
    eflags: int
    esp: int
    ss: int
    handler_cs: int
    handler_eip: int
    clear_if: bool
    #: SYSENTER: no frame, the kernel stack is SYSENTER_ESP (SDM SYSENTER).
    sysenter: bool = False
    #: A far CALL through a guest call gate (runtime/gates.py): these words pushed, in
    #: push order (SS, ESP, parameters, CS, EIP), EFLAGS and the virtual IF left alone.
    call_frame: tuple[int, ...] | None = None


class Injector:
    def __init__(self, m: machine.Machine, vcpu: VirtualCpu, mmu: Mmu, gdt: ShadowGdt) -> None:
        self.m = m
        self.cpu = m.cpu
        self.vcpu = vcpu
        self.mmu = mmu
        self.gdt = gdt
        self.inward: Inward | None = None
        #: Under `bt run --guest-ring 3`: the transitions the VMM makes itself (runtime/ring3/).
        self.ring3: Ring3 | None = None

    # -- entry point ----------------------------------------------------------------------------
    def deliver(self, vector: int, return_eip: int, error_code: int | None = None,
                soft: bool = False) -> None:
        """Deliver `vector` as the CPU would, escalating to #DF / triple fault."""
        try:
            self._deliver(vector, return_eip, error_code, soft)
        except DeliveryFault as first:
            self._fault_address(first)
            if soft:
                # A fault raised by INT n itself points at the INT instruction (CD ib: 2 bytes;
                # INT3 and INTO: 1 byte), and is delivered alone: INT n is no exception, so
                # no pair of table 6-5 makes a double fault (QEMU: no check_exception for it).
                return_eip -= 1 if vector in (VEC_BP, 4) else 2
                self.deliver(first.vector, return_eip, first.error_code)
                return
            if vector == VEC_DF:
                raise GuestStop("triple fault", return_eip,
                                f"delivering #DF raised vector {first.vector}") from None
            if not self._double(vector, first.vector):
                self.deliver(first.vector, return_eip, first.error_code)
                return
            try:
                self._deliver(VEC_DF, return_eip, 0, False)
            except DeliveryFault as second:
                self._fault_address(second)
                raise GuestStop("triple fault", return_eip,
                                f"vector {vector}, then {first.vector} delivering it, "
                                f"then {second.vector} delivering #DF") from None

    def _fault_address(self, fault: DeliveryFault) -> None:
        """A #PF while delivering loads CR2 like any other #PF (SDM §4.7), also when it
        turns into #DF."""
        if fault.vector == VEC_PF and fault.linear is not None:
            self._set_cr2(fault.linear)

    @staticmethod
    def _double(first: int, second: int) -> bool:
        """SDM vol. 3 table 6-5: a contributory exception during a contributory one, or a
        contributory one or a #PF during a #PF, is a #DF; everything else (benign first, or a
        #PF during a contributory exception) is handled serially. A software interrupt is no
        exception class at all: a fault while delivering it is delivered on its own."""
        if first in CONTRIBUTORY:
            return second in CONTRIBUTORY
        return first == VEC_PF and (second in CONTRIBUTORY or second == VEC_PF)

    def _set_cr2(self, linear: int) -> None:
        self.vcpu.set_cr(2, linear)
        self.cpu.write(CR2, linear)

    # -- the gate -------------------------------------------------------------------------------
    # Error codes as QEMU, the reference, raises them (target/i386 do_interrupt_protected): the
    # IDT index with the IDT bit for a bad gate, the handler's selector for a bad handler
    # segment, and no EXT bit in either.
    def _gate(self, vector: int, soft: bool, cpl: int) -> Gate:
        base, limit = self.vcpu.table("idtr")
        if vector * 8 + 7 > limit:
            raise DeliveryFault(VEC_GP, vector * 8 + 2)
        try:
            gate = Gate.from_bytes(self.mmu.read(base + vector * 8, 8))
        except PageFault as pf:
            raise _page_fault(pf) from None
        if gate.type not in (GATE_INT32, GATE_TRAP32, GATE_INT16, GATE_TRAP16, GATE_TASK):
            raise DeliveryFault(VEC_GP, vector * 8 + 2)
        if soft and gate.dpl < (0 if cpl == 1 else cpl):
            # SDM §6.12.1.1: INT n checks the gate's DPL against CPL, the guest's
            # CPL: ring 1 is the guest's ring 0.
            raise DeliveryFault(VEC_GP, vector * 8 + 2)
        if not gate.present:
            raise DeliveryFault(VEC_NP, vector * 8 + 2)
        if gate.type == GATE_TASK:
            raise GuestStop("task gates are not supported", self.cpu.read(EIP), f"vector {vector}")
        return gate

    def _handler_cs(self, selector: int, cpl: int) -> int:
        """The handler's code segment, checked as the CPU does (SDM §6.12.1.1): #GP(0) if
        null, #GP(selector) if outside the table, not code, or of a DPL above the CPL,
        #NP(selector) if not present. The guest's CPL is 0 at real CPL 1. The result carries
        the real CPL the handler runs at: the guest's ring 0 is real ring 1; a conforming
        segment or a DPL-3 one reached from ring 3 keeps the CPL."""
        if not selector & 0xFFFC:
            raise DeliveryFault(VEC_GP, 0)
        try:
            desc = self.gdt.guest_descriptor(selector)
        except PageFault as pf:
            raise _page_fault(pf) from None
        guest_cpl = 0 if cpl == 1 else cpl
        if desc is None or not desc.is_code or desc.dpl > guest_cpl:
            raise DeliveryFault(VEC_GP, selector & 0xFFFC)
        if not desc.present:
            raise DeliveryFault(VEC_NP, selector & 0xFFFC)
        if desc.type & 0x4:      # conforming: the handler runs at the current CPL
            return (selector & ~3) | cpl
        if desc.dpl not in (0, 3):
            raise GuestStop("an interrupt handler in guest ring 1 or 2 (ring1 runs only guest rings 0 and 3)",
                            self.cpu.read(EIP), f"selector {selector:#x}")
        return (selector & ~3) | (1 if desc.dpl == 0 else 3)

    def _deliver(self, vector: int, return_eip: int, error_code: int | None, soft: bool) -> None:
        cpu, vcpu = self.cpu, self.vcpu
        cs = cpu.read(CS)
        # The CPL in ring 1's terms (1: the guest kernel), also under --guest-ring 3, where
        # both the guest's kernel and its user code run at real CPL 3 (`VirtualCpu.ring1_cpl`).
        cpl = vcpu.ring1_cpl(cs)
        gate = self._gate(vector, soft, cpl)
        handler_cs = self._handler_cs(gate.selector, cpl)
        clear_if = gate.type in (GATE_INT32, GATE_INT16)
        eflags = cpu.read(EFLAGS)
        inward = cpl == 3 and handler_cs & 3 == 1
        if self.ring3 is not None:
            handler_cs |= 3                # every guest ring runs at real CPL 3
            if inward:
                self.ring3.enter_kernel(vector, error_code, return_eip, handler_cs, gate.offset, clear_if,
                                        soft)
                return
            self.ring3.check_mode()
        if inward:
            self._start_inward(vector, error_code, return_eip, cs, eflags, handler_cs, gate, clear_if)
            return
        # No privilege change: EFLAGS, CS, EIP[, error] on the current stack, at the current
        # CPL's rights (the guest kernel's frames show CS with RPL 0, module docstring).
        frame = [vcpu.guest_eflags(eflags), cs & ~3 if cpl == 1 else cs, return_eip]
        if error_code is not None:
            frame.append(error_code)
        esp = cpu.read(ESP)
        new_esp = (esp - 4 * len(frame)) & 0xFFFFFFFF
        try:
            self.mmu.write(new_esp, struct.pack(f"<{len(frame)}I", *reversed(frame)), user=cpl == 3)
        except PageFault as pf:
            raise _page_fault(pf) from None
        cpu.write(ESP, new_esp)
        self._enter(handler_cs, gate.offset, eflags, clear_if)

    def _enter(self, handler_cs: int, handler_eip: int, eflags: int, clear_if: bool) -> None:
        cpu = self.cpu
        cpu.write(EFLAGS, (eflags & ~CLEARED_ON_ENTRY) | IF)
        if clear_if:
            self.vcpu.set_vif(False)
        self.m.load_cs(handler_cs)
        cpu.write(EIP, handler_eip)

    # -- ring 3 -> ring 1 -----------------------------------------------------------------------
    def _start_inward(self, vector: int, error_code: int | None, return_eip: int, cs: int, eflags: int,
                      handler_cs: int, gate: Gate, clear_if: bool) -> None:
        cpu = self.cpu
        ss0, esp0 = self._guest_ring0_stack()
        self.m.write_tss_ring1((ss0 & ~3) | 1, esp0)
        self.inward = Inward(vector, error_code, return_eip, cs, eflags, cpu.read(ESP), cpu.read(SS),
                             handler_cs, gate.offset, clear_if)
        cpu.write(EFLAGS, eflags & ~CLEARED_ON_ENTRY)
        self.m.open_vmm_slots()         # for TRAMP's CS and gate; shut again at STUB1
        cpu.write(CS, VMM_CS3)
        cpu.write(EIP, self.m.linear(machine.TRAMP))

    def _sysenter_cs(self) -> int:
        """SYSENTER_CS, checked: #GP(0) if null (SDM SYSENTER). The CPU itself loads fixed flat
        ring-0 segments whatever the GDT holds there; ring1 loads the guest's descriptors, so
        they must be what the guest's SYSEXIT/SYSENTER convention says: ring-0 code at CS, data
        at CS+8 (else a clean stop: ring1 cannot load hidden state the GDT does not hold)."""
        cs = self.vcpu.msr[MSR_SYSENTER_CS] & 0xFFFC
        if not cs:
            raise DeliveryFault(VEC_GP, 0)
        try:
            code, data = self.gdt.guest_descriptor(cs), self.gdt.guest_descriptor(cs + 8)
        except PageFault as pf:
            raise _page_fault(pf) from None
        if code is None or not code.present or not code.is_code or code.dpl != 0 or data is None \
                or not data.present or data.is_code or data.is_system or not data.type & 2 or data.dpl != 0:
            raise GuestStop("SYSENTER_CS names no ring-0 code segment followed by ring-0 data",
                            self.cpu.read(EIP), f"SYSENTER_CS {cs:#x}")
        return cs

    def sysenter(self, eip: int) -> None:
        """SYSENTER from ring 3 (SDM SYSENTER): to SYSENTER_CS:SYSENTER_EIP on
        SYSENTER_CS+8:SYSENTER_ESP, IF cleared, nothing pushed. The CPL change goes
        through the same call gate as interrupts, with the real TSS's ss1:esp1 set
        to the SYSENTER stack."""
        msr = self.vcpu.msr
        cs = self._sysenter_cs()
        cpu = self.cpu
        self.m.write_tss_ring1((cs + 8) | 1, msr[MSR_SYSENTER_ESP] & 0xFFFFFFFF)
        eflags = cpu.read(EFLAGS)
        self.inward = Inward(0, None, eip, cpu.read(CS), eflags, cpu.read(ESP), cpu.read(SS),
                             cs | 1, msr[MSR_SYSENTER_EIP] & 0xFFFFFFFF, True, sysenter=True)
        cpu.write(EFLAGS, eflags & ~CLEARED_ON_ENTRY)
        self.m.open_vmm_slots()         # for TRAMP's CS and gate; shut again at STUB1
        cpu.write(CS, VMM_CS3)
        cpu.write(EIP, self.m.linear(machine.TRAMP))

    def sysenter_kernel(self) -> None:
        """SYSENTER from the guest kernel (legal at CPL 0): the same transfer without a
        change of privilege."""
        msr = self.vcpu.msr
        cs = self._sysenter_cs()
        cpu = self.cpu
        cpu.write(SS, (cs + 8) | 1)
        cpu.write(ESP, msr[MSR_SYSENTER_ESP] & 0xFFFFFFFF)
        self._enter(cs | 1, msr[MSR_SYSENTER_EIP] & 0xFFFFFFFF, cpu.read(EFLAGS), True)

    def call_inward(self, handler_cs: int, handler_eip: int, frame: tuple[int, ...], ss0: int,
                    esp0: int) -> None:
        """A far CALL from ring 3 through a guest call gate to guest ring-0 code (SDM vol. 3
        §5.8.5): through the VMM gate like an interrupt, onto the guest's ss0:esp0, where
        `complete_inward` pushes `frame`."""
        cpu = self.cpu
        self.m.write_tss_ring1((ss0 & ~3) | 1, esp0)
        eflags = cpu.read(EFLAGS)
        self.inward = Inward(0, None, cpu.read(EIP), cpu.read(CS), eflags, cpu.read(ESP), cpu.read(SS),
                             handler_cs, handler_eip, False, call_frame=frame)
        self.m.open_vmm_slots()         # for TRAMP's CS and gate; shut again at STUB1
        cpu.write(CS, VMM_CS3)
        cpu.write(EIP, self.m.linear(machine.TRAMP))

    def guest_ring0_stack(self) -> tuple[int, int]:
        """The guest TSS's (ss0, esp0)."""
        return self._guest_ring0_stack()

    def _guest_ring0_stack(self) -> tuple[int, int]:
        tr = self.vcpu.tr
        try:
            desc = self.gdt.guest_descriptor(tr) if tr else None
        except PageFault as pf:
            raise _page_fault(pf) from None
        if desc is None:
            raise GuestStop("interrupt from user mode but the guest loaded no TSS", self.cpu.read(EIP))
        try:
            esp0, ss0 = struct.unpack("<II", self.mmu.read(desc.base + machine.TSS_ESP0, 8))
        except PageFault as pf:
            raise _page_fault(pf) from None
        return ss0 & 0xFFFF, esp0

    def complete_inward(self) -> None:
        """At STUB1, CPL 1 on the guest's kernel stack: build the guest's frame."""
        pending, self.inward = self.inward, None
        self.m.close_vmm_slots()
        if pending is None:
            raise GuestStop("VMM call gate used without a delivery in flight", self.cpu.read(EIP))
        cpu = self.cpu
        esp = (cpu.read(ESP) + 16) & 0xFFFFFFFF   # drop the call gate's SS, ESP, CS, EIP
        if pending.call_frame is not None:
            words = pending.call_frame
            new_esp = (esp - 4 * len(words)) & 0xFFFFFFFF
            try:
                self.mmu.write(new_esp, struct.pack(f"<{len(words)}I", *reversed(words)))
            except PageFault:
                raise GuestStop("triple fault", pending.eip, "guest kernel stack (TSS esp0) not writable") \
                    from None
            cpu.write(ESP, new_esp)
            cpu.write(EFLAGS, pending.eflags)
            self.vcpu.set_vif(self.vcpu.user_if())     # a call gate keeps IF: the user's
            self.vcpu.user_flags = False
            self.m.load_cs(pending.handler_cs)
            cpu.write(EIP, pending.handler_eip)
            return
        if pending.sysenter:
            cpu.write(ESP, esp)
            self.vcpu.set_vif(False)
            self.vcpu.user_flags = False
            self._enter(pending.handler_cs, pending.handler_eip, pending.eflags, True)
            return
        shown = self.vcpu.user_eflags(pending.eflags)
        frame = [pending.ss, pending.esp, shown, pending.cs, pending.eip]
        if pending.error_code is not None:
            frame.append(pending.error_code)
        new_esp = (esp - 4 * len(frame)) & 0xFFFFFFFF
        try:
            self.mmu.write(new_esp, struct.pack(f"<{len(frame)}I", *reversed(frame)))
        except PageFault:
            raise GuestStop("triple fault", pending.eip, "guest kernel stack (TSS esp0) not writable") \
                from None
        cpu.write(ESP, new_esp)
        # The handler starts with the user's IF (a trap gate leaves it, an interrupt gate
        # clears it below), and from now on the virtual flags are the kernel's.
        self.vcpu.set_vif(bool(shown & IF))
        self.vcpu.user_flags = False
        self._enter(pending.handler_cs, pending.handler_eip, pending.eflags, pending.clear_if)
