"""The I/O APIC (82093AA) at MMIO 0xFEC00000: 24 redirection entries for the ISA lines.

Reference: Intel 82093AA I/O APIC datasheet (order no. 290566): IOREGSEL at offset 0x00,
IOWIN at 0x10, registers 0x00 ID, 0x01 version, 0x02 arbitration, 0x10 + 2n / 0x11 + 2n
the low / high half of redirection entry n (vector, delivery mode, destination mode,
delivery status, polarity, remote IRR, trigger mode, mask; destination in bits 56-63).
Where it matters for what a guest sees, QEMU's hw/intc/ioapic.c (7.2) is followed:

* version 0x20 with 24 entries (register 1 reads 0x00170020), an EOI register at 0x40
  (version 0x20 has one); arbitration reads 0;
* ISA IRQ 0 (the PIT) arrives on pin 2, every other ISA IRQ n on pin n (the MP table's
  routing, runtime/firmware.py);
* an edge-triggered pin latches a request on an assertion while unmasked and delivers
  it at once; a masked edge is lost (the datasheet's rule); a level-triggered pin
  delivers while asserted and sets remote IRR until the local APIC's EOI of its vector
  (`eoi`), and delivers again then if the line is still high;
* only the read-only bits survive a write (delivery status, remote IRR); remote IRR of
  an edge-triggered entry reads 0; entries reset masked (0x00010000).

Delivery goes to the one local APIC when the destination names it (physical ID or
0xFF, or a logical match); fixed and lowest-priority modes deliver the vector, ExtINT
delivers the 8259's vector (`extint`), others (NMI, SMI, INIT) are not modelled.
"""

from __future__ import annotations

from collections.abc import Callable

from runtime.devices.lapic import DM_EXTINT, DM_FIXED, DM_LOWEST, LocalApic

IOAPIC_BASE = 0xFEC00000
IOAPIC_SIZE = 0x1000
PINS = 24
VERSION = 0x20
IOREGSEL, IOWIN, IOEOI = 0x00, 0x10, 0x40
R_ID, R_VERSION, R_ARB, R_TABLE = 0x00, 0x01, 0x02, 0x10

MASKED = 1 << 16
LEVEL = 1 << 15
REMOTE_IRR = 1 << 14
DELIVERY_STATUS = 1 << 12
LOGICAL = 1 << 11
RO_BITS = REMOTE_IRR | DELIVERY_STATUS


def pin_of(isa_irq: int) -> int:
    """QEMU's ioapic_set_irq: ISA IRQ 0 is wired to pin 2, the others 1:1."""
    return 2 if isa_irq == 0 else isa_irq


class IoApic:
    def __init__(self, lapic: LocalApic, *, name: str = "ioapic") -> None:
        self.name = name
        self.mmio = (range(IOAPIC_BASE, IOAPIC_BASE + IOAPIC_SIZE),)
        self.lapic = lapic
        lapic.on_eoi = self.eoi
        #: The 8259's INTA, for an ExtINT entry (runtime/devices/intc.py sets it).
        self.extint: Callable[[], int] = lambda: 0
        self.ioapic_id = 0
        self.regsel = 0
        self.table = [MASKED] * PINS
        self.irr = 0              # pins with a request (edge) or asserted (level)
        self.level = 0            # line levels, for edge detection
        #: Interrupts delivered to the local APIC, by pin.
        self.delivered = [0] * PINS

    # -- lines -------------------------------------------------------------------------------------
    def set_irq(self, isa_irq: int, level: bool) -> None:
        pin = pin_of(isa_irq)
        if pin >= PINS:
            return
        bit = 1 << pin
        entry = self.table[pin]
        rising = level and not self.level & bit
        self.level = (self.level | bit) if level else (self.level & ~bit)
        if entry & LEVEL:
            if level:
                self.irr |= bit
                if not entry & REMOTE_IRR:
                    self._service()
            else:
                self.irr &= ~bit
        elif rising and not entry & MASKED:
            self.irr |= bit
            self._service()

    def unmasked(self, isa_irq: int) -> bool:
        """Whether the pin of ISA IRQ `isa_irq` is unmasked (for HLT wake-up and `--keys`)."""
        return not self.table[pin_of(isa_irq)] & MASKED

    def _service(self) -> None:
        for pin in range(PINS):
            bit = 1 << pin
            if not self.irr & bit:
                continue
            entry = self.table[pin]
            if entry & MASKED:
                continue
            if entry & LEVEL:
                if entry & REMOTE_IRR:
                    continue           # the guest is still handling the previous one
                self.table[pin] = entry | REMOTE_IRR
            else:
                self.irr &= ~bit
            mode = (entry >> 8) & 7
            if not self.lapic.matches(entry >> 56, bool(entry & LOGICAL)):
                continue
            if mode in (DM_FIXED, DM_LOWEST):
                vector = entry & 0xFF
            elif mode == DM_EXTINT:
                vector = self.extint()
            else:
                continue
            self.delivered[pin] += 1
            self.lapic.accept(vector, bool(entry & LEVEL))

    def eoi(self, vector: int) -> None:
        """The local APIC's EOI of a level-triggered `vector`: clear remote IRR of the entries
        with that vector and deliver again if their line is still asserted (QEMU's
        ioapic_eoi_broadcast)."""
        again = False
        for pin, entry in enumerate(self.table):
            if entry & REMOTE_IRR and entry & 0xFF == vector:
                self.table[pin] = entry & ~REMOTE_IRR
                again = again or bool(self.irr >> pin & 1)
        if again:
            self._service()

    # -- MMIO --------------------------------------------------------------------------------------
    def mmio_read(self, addr: int, size: int) -> int:
        offset = (addr - IOAPIC_BASE) & 0xFF
        if offset == IOREGSEL:
            return self.regsel
        if offset != IOWIN or size != 4:
            return 0
        reg = self.regsel
        if reg == R_ID:
            return self.ioapic_id << 24
        if reg == R_VERSION:
            return ((PINS - 1) << 16) | VERSION
        if reg == R_ARB:
            return 0
        index = (reg - R_TABLE) >> 1
        if 0 <= index < PINS:
            return (self.table[index] >> (32 if reg & 1 else 0)) & 0xFFFFFFFF
        return 0

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        offset = (addr - IOAPIC_BASE) & 0xFF
        if offset == IOREGSEL:
            self.regsel = value & 0xFF
            return
        if offset == IOEOI:
            self.eoi(value & 0xFF)
            return
        if offset != IOWIN or size != 4:
            return
        reg = self.regsel
        if reg == R_ID:
            self.ioapic_id = (value >> 24) & 0xF
            return
        index = (reg - R_TABLE) >> 1
        if not 0 <= index < PINS:
            return
        entry = self.table[index]
        ro = entry & RO_BITS
        if reg & 1:
            entry = (entry & 0xFFFFFFFF) | (value << 32)
        else:
            entry = (entry & ~0xFFFFFFFF) | value
        entry = (entry & ~RO_BITS) | ro
        if not entry & LEVEL:
            entry &= ~REMOTE_IRR
        self.table[index] = entry
        self._service()

    def tick(self, now_ns: int) -> None:
        """Not timed."""
