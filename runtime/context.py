"""What an emulator may touch: one object handed to every emulator.

Emulators take an `Operation` (bt/operation.py) and this context, never raw
Capstone or Unicorn objects, so the trap path and the patch manager's hypercall
path run the same code (one emulation per class).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bt.operation import Imm, Mem, Operand, Operation, Reg
from runtime.cpu import REG_SIZE, Cpu
from runtime.deliver import Injector
from runtime.devices.bus import IoBus
from runtime.machine import Machine
from runtime.paging import Mmu
from runtime.segments import ShadowGdt
from runtime.stats import RunStats
from runtime.vcpu import VirtualCpu

#: An emulator's return value meaning "EIP is already set" (it delivered an interrupt).
HANDLED = -1


class EmulationFault(Exception):
    """The instruction raises an exception in the guest (e.g. #GP(0) for a bad MSR)."""

    def __init__(self, vector: int, error_code: int | None = 0) -> None:
        super().__init__(f"vector {vector}")
        self.vector = vector
        self.error_code = error_code


@dataclass
class Ctx:
    m: Machine
    cpu: Cpu
    vcpu: VirtualCpu
    mmu: Mmu
    gdt: ShadowGdt
    bus: IoBus
    inject: Injector
    stats: RunStats
    #: HLT: the run loop idles virtual time; returns HANDLED if it delivered an IRQ.
    on_halt: Callable[[int], int | None]
    #: The virtual IF just became 1 with the guest about to continue at `eip`:
    #: deliver a pending IRQ now if there is one (returns HANDLED), else None.
    on_vif_set: Callable[[int], int | None]
    #: The guest's paging changed: CR0/CR3/CR4 written (None), or INVLPG of an address:
    #: keep the shadow page directory in step, move the VMM area if need be, flush caches.
    on_paging_change: Callable[[int | None], None]
    #: Whether the guest continuing at this address runs patch code (patch memory, or a
    #: guest address inside a patched window).
    in_patch: Callable[[int], bool]
    #: The guest window [start, end) of the JMP patch covering this address, if any.
    window_of: Callable[[int], tuple[int, int] | None]
    #: A trap of the guest kernel at this EIP: patches waiting for their code to be mapped
    #: where the kernel's ELF puts it may be made now (runtime/vm.py `_retry_deferred`).
    retry_deferred: Callable[[int], bool]
    #: A #PF at this linear address: True if it came from the shadow page directory being
    #: behind the guest's, which is now fixed (the instruction is to run again).
    shadow_fault: Callable[[int], bool]
    #: Virtual time now, in ns (runtime/vm.py): the virtual TSC counts it.
    clock: Callable[[], int]
    #: True while the PIC has an interrupt for the CPU.
    irq_waiting: Callable[[], bool]
    #: True while it has one the guest takes now (virtual IF set, or the guest in ring 3).
    irq_deliverable: Callable[[], bool]
    #: STI's interrupt shadow: let the guest run one more instruction before an IRQ is taken.
    irq_shadow: Callable[[], None]

    # -- operands --------------------------------------------------------------------------------
    def address(self, m: Mem) -> int:
        cpu = self.cpu
        ea = m.disp
        if m.base:
            ea += cpu.read_name(m.base)
        if m.index:
            ea += cpu.read_name(m.index) * m.scale
        # Segment bases: ring1's guests use flat segments (base 0), which the
        # shadow GDT keeps; non-zero bases are not applied here.
        return ea & 0xFFFFFFFF

    def user(self) -> bool:
        return self.vcpu.guest_cpl() == 3

    def read(self, op: Operand, size: int | None = None) -> int:
        if isinstance(op, Reg):
            return self.cpu.read_name(op.name)
        if isinstance(op, Imm):
            return op.value & 0xFFFFFFFF
        n = size or op.size
        return int.from_bytes(self.mmu.read(self.address(op), n), "little")

    def write(self, op: Operand, value: int, size: int | None = None) -> None:
        if isinstance(op, Reg):
            self.cpu.write_name(op.name, value)
            return
        if isinstance(op, Imm):
            raise ValueError("write to an immediate")
        n = size or op.size
        self.mmu.write(self.address(op), (value & ((1 << (8 * n)) - 1)).to_bytes(n, "little"))

    @staticmethod
    def size(op: Operand) -> int:
        if isinstance(op, Reg):
            return REG_SIZE.get(op.name, 4)
        if isinstance(op, Mem):
            return op.size
        return 4

    # -- the stack (flat SS) -----------------------------------------------------------------------
    def pop32(self) -> int:
        esp = self.cpu.read_name("esp")
        value = int.from_bytes(self.mmu.read(esp, 4), "little")
        self.cpu.write_name("esp", esp + 4)
        return value

    def push32(self, value: int) -> None:
        esp = (self.cpu.read_name("esp") - 4) & 0xFFFFFFFF
        self.mmu.write(esp, (value & 0xFFFFFFFF).to_bytes(4, "little"))
        self.cpu.write_name("esp", esp)


Emulator = Callable[[Operation, Ctx, int], int | None]
