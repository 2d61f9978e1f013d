"""What the CPU's interrupt pin sees: the 8259 pair, the I/O APIC and the local APIC,
wired as on QEMU's pc machine.

ISA interrupt lines go to both the 8259 and the I/O APIC (QEMU's gsi_handler), so a
device raises one `IrqLine` (`set_irq`) and the guest chooses which controller it
unmasks. The 8259's INTR output reaches the CPU through the local APIC's LINT0 (virtual
wire mode, SeaBIOS's setting) or, with the APIC globally disabled, directly; the I/O
APIC and IPIs and the APIC timer reach it through the local APIC's IRR.

The run loop asks two questions (runtime/vm.py): `pending()` (an interrupt the CPU would
take if IF allowed it) and `acknowledge()` (the INTA cycle: the vector). As in QEMU's
cpu_get_pic_interrupt/apic_get_interrupt, an ExtINT request from the 8259 comes first,
since it ignores the APIC's priority; then the local APIC's highest IRR vector above PPR.
"""

from __future__ import annotations

from runtime.devices.ioapic import IoApic
from runtime.devices.lapic import LocalApic
from runtime.devices.pic8259 import Pic8259


class InterruptController:
    def __init__(self, pic: Pic8259, lapic: LocalApic, ioapic: IoApic) -> None:
        self.pic = pic
        self.lapic = lapic
        self.ioapic = ioapic
        ioapic.extint = pic.acknowledge

    def set_irq(self, line: int, level: bool) -> None:
        """An ISA interrupt line (0-15): the `IrqLine` every device gets."""
        self.pic.set_irq(line, level)
        self.ioapic.set_irq(line, level)

    def pending(self) -> bool:
        # Nothing requested anywhere, the common answer, without the priority logic: asked
        # at the end of every exit (runtime/fastexit.py). A slave 8259's request reaches the
        # CPU only through the master's IRR (its cascade line).
        if not self.lapic.irr and not self.pic.master.irr:
            return False
        if self.lapic.pending_vector() > 0:
            return True
        return self.lapic.accepts_pic() and self.pic.pending()

    def acknowledge(self) -> int:
        if self.lapic.accepts_pic() and self.pic.pending():
            return self.pic.acknowledge()
        return self.lapic.acknowledge()

    def line_enabled(self, line: int) -> bool:
        """Whether an assertion of ISA `line` can reach the CPU: unmasked at the 8259 (and the
        8259 wired to the CPU) or at the I/O APIC pin."""
        pic = self.pic
        if self.lapic.accepts_pic():
            if line < 8:
                if not pic.master.imr >> line & 1:
                    return True
            elif not pic.slave.imr >> (line - 8) & 1 and not pic.master.imr >> 2 & 1:
                return True
        return self.ioapic.unmasked(line) and self.lapic.software_enabled
