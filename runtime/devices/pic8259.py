"""The PC's two 8259A programmable interrupt controllers, master and slave.

Ports 0x20/0x21 (master) and 0xA0/0xA1 (slave); the slave's INT output drives the
master's IR2 (cascade). Reference: Intel 8259A datasheet (order no. 231468):
"Initialization command words" (ICW1-ICW4), "Operation command words" (OCW1 mask,
OCW2 EOI/rotate, OCW3 read register / poll / special mask), "Fully nested mode"
and "Edge and level triggered modes". Details the datasheet leaves to the
implementation follow QEMU's hw/intc/i8259.c, ring1's reference for guest-visible
behaviour: requests are edge-triggered (the PC's default; ICW1.LTIM is recorded
but ignored, as QEMU does), an IRR bit once latched stays set until acknowledged,
ICW1 clears IMR, and an INTA with nothing pending returns IRQ 7 (spurious).

The VMM's side: `raise_irq(n)`/`lower_irq(n)` (or `set_irq(n, level)`, which is the
`IrqLine` devices get), `pending()` (the CPU's INTR pin) and `acknowledge()` (the
INTA cycle: returns the vector and moves the request from IRR to ISR).
"""

from __future__ import annotations

MASTER_BASE = 0x20
SLAVE_BASE = 0xA0
CASCADE_IRQ = 2
#: Vector bases SeaBIOS programs before it hands over to a -kernel image.
BIOS_MASTER_BASE = 0x08
BIOS_SLAVE_BASE = 0x70


def _priority(mask: int, rotation: int) -> int:
    """Priority level (0 highest) of the highest-priority bit set in `mask`, 8 if none.

    Level 0 is IR`rotation`; rotation changes under the rotate commands of OCW2.
    """
    if not mask:
        return 8
    level = 0
    while not mask & (1 << ((level + rotation) & 7)):
        level += 1
    return level


class Chip8259:
    """One 8259A in x86 (8086/8088) mode."""

    def __init__(self, is_master: bool) -> None:
        self.is_master = is_master
        self.reset()

    def reset(self) -> None:
        """State after ICW1 (datasheet: "the interrupt mask register is cleared")."""
        self.last_level = 0      # line levels seen last, for edge detection
        self.irr = 0
        self.imr = 0
        self.isr = 0
        self.rotation = 0        # IR number with the lowest priority + 1
        self.vector_base = 0
        self.read_isr = False    # OCW3 RR/RIS: reading the command port gives ISR
        self.poll = False
        self.special_mask = False
        self.init_step = 0       # 0 ready; 1 expects ICW2; 2 ICW3; 3 ICW4
        self.needs_icw4 = False
        self.single = False
        self.level_triggered = False
        self.auto_eoi = False
        self.rotate_on_auto_eoi = False
        self.special_fully_nested = False

    # -- request lines -------------------------------------------------------

    def set_line(self, irq: int, level: bool) -> None:
        bit = 1 << irq
        if level:
            if not self.last_level & bit:
                self.irr |= bit  # rising edge latches a request
            self.last_level |= bit
        else:
            self.last_level &= ~bit

    # -- priority resolution -------------------------------------------------

    def best(self) -> int:
        """The IR that would be granted now, or -1: unmasked, higher priority than any in service."""
        requested = _priority(self.irr & ~self.imr, self.rotation)
        if requested == 8:
            return -1
        in_service = self.isr
        if self.special_mask:
            in_service &= ~self.imr  # special mask mode: masked levels do not block lower ones
        if self.special_fully_nested and self.is_master:
            in_service &= ~(1 << CASCADE_IRQ)  # SFNM: a higher slave request may nest
        if requested < _priority(in_service, self.rotation):
            return (requested + self.rotation) & 7
        return -1

    def intack(self, irq: int) -> None:
        """The INTA pulses for `irq`: IRR -> ISR (or straight through in AEOI mode)."""
        bit = 1 << irq
        if self.auto_eoi:
            if self.rotate_on_auto_eoi:
                self.rotation = (irq + 1) & 7
        else:
            self.isr |= bit
        self.irr &= ~bit  # edge-triggered: the request is consumed

    # -- ports ---------------------------------------------------------------

    def read(self, a0: int) -> int:
        if self.poll:
            # OCW3 poll: the read is the INTA; bit 7 says whether anything was pending.
            self.poll = False
            irq = self.best()
            if irq < 0:
                return 0
            self.intack(irq)
            return 0x80 | irq
        if a0 == 0:
            return self.isr if self.read_isr else self.irr
        return self.imr

    def write(self, a0: int, value: int) -> None:
        if a0 == 0:
            if value & 0x10:                    # ICW1
                self.reset()
                self.init_step = 1
                self.needs_icw4 = bool(value & 0x01)
                self.single = bool(value & 0x02)
                self.level_triggered = bool(value & 0x08)
            elif value & 0x08:                  # OCW3
                if value & 0x04:
                    self.poll = True
                if value & 0x02:
                    self.read_isr = bool(value & 0x01)
                if value & 0x40:
                    self.special_mask = bool(value & 0x20)
            else:                               # OCW2
                self._ocw2(value)
            return
        step = self.init_step
        if step == 0:                           # OCW1: the mask
            self.imr = value
        elif step == 1:                         # ICW2: vector base, low 3 bits are the IR number
            self.vector_base = value & 0xF8
            if self.single:
                self.init_step = 3 if self.needs_icw4 else 0
            else:
                self.init_step = 2
        elif step == 2:                         # ICW3: cascade wiring, fixed on the PC
            self.init_step = 3 if self.needs_icw4 else 0
        else:                                   # ICW4
            self.special_fully_nested = bool(value & 0x10)
            self.auto_eoi = bool(value & 0x02)
            self.init_step = 0

    def _ocw2(self, value: int) -> None:
        command = value >> 5
        if command in (1, 5):                   # non-specific EOI (5: and rotate)
            level = _priority(self.isr, self.rotation)
            if level != 8:
                irq = (level + self.rotation) & 7
                self.isr &= ~(1 << irq)
                if command == 5:
                    self.rotation = (irq + 1) & 7
        elif command in (3, 7):                 # specific EOI (7: and rotate)
            irq = value & 7
            self.isr &= ~(1 << irq)
            if command == 7:
                self.rotation = (irq + 1) & 7
        elif command == 6:                      # set priority: IR (value & 7) becomes lowest
            self.rotation = ((value & 7) + 1) & 7
        elif command in (0, 4):                 # rotate in automatic EOI mode: clear / set
            self.rotate_on_auto_eoi = command == 4
        # command 2 is a no-op


class Pic8259:
    """The master/slave pair as the PC wires it: a `Device` on ports 0x20-0x21 and 0xA0-0xA1."""

    def __init__(self, name: str = "pic8259") -> None:
        self.name = name
        self.ports = (range(MASTER_BASE, MASTER_BASE + 2), range(SLAVE_BASE, SLAVE_BASE + 2))
        self.master = Chip8259(is_master=True)
        self.slave = Chip8259(is_master=False)
        #: Interrupts acknowledged, by IRQ number (16 = spurious), for statistics.
        self.acks = [0] * 17

    def bios_setup(self) -> None:
        """The state SeaBIOS leaves before it jumps to a -kernel image: vector bases
        0x08/0x70, cascade on IR2 (SeaBIOS's pic_reset; masks are set by the caller)."""
        for chip, base, icw3 in ((self.master, BIOS_MASTER_BASE, 0x04), (self.slave, BIOS_SLAVE_BASE, 0x02)):
            chip.write(0, 0x11)
            chip.write(1, base)
            chip.write(1, icw3)
            chip.write(1, 0x01)
        self._update()

    # -- the VMM's side --------------------------------------------------------

    def set_irq(self, irq: int, level: bool) -> None:
        """Drive request line `irq` (0-15); this is the `IrqLine` interrupt sources get."""
        if irq < 8:
            self.master.set_line(irq, level)
        else:
            self.slave.set_line(irq - 8, level)
        self._update()

    def raise_irq(self, irq: int) -> None:
        self.set_irq(irq, True)

    def lower_irq(self, irq: int) -> None:
        self.set_irq(irq, False)

    def pulse_irq(self, irq: int) -> None:
        """An edge: raise then lower (the PIT's OUT0 as the VMM models it)."""
        self.set_irq(irq, True)
        self.set_irq(irq, False)

    def pending(self) -> bool:
        """The INTR pin: an unmasked request of higher priority than any in service."""
        return self.master.best() >= 0

    def acknowledge(self) -> int:
        """The INTA cycle: the vector to deliver; IRR -> ISR on the chip(s) concerned.

        With nothing pending the 8259A answers IR7 of the chip asked (a spurious
        interrupt, vector base + 7), as the datasheet describes and QEMU does.
        """
        irq = self.master.best()
        if irq < 0:
            self.acks[16] += 1
            vector = self.master.vector_base + 7
        elif irq == CASCADE_IRQ:
            self.master.intack(irq)
            slave_irq = self.slave.best()
            if slave_irq >= 0:
                self.slave.intack(slave_irq)
                self.acks[8 + slave_irq] += 1
            else:
                self.acks[16] += 1
                slave_irq = 7
            vector = self.slave.vector_base + slave_irq
        else:
            self.master.intack(irq)
            self.acks[irq] += 1
            vector = self.master.vector_base + irq
        self._update()
        return vector

    # -- Device ----------------------------------------------------------------

    def io_read(self, port: int, size: int) -> int:
        chip = self.master if port < SLAVE_BASE else self.slave
        value = chip.read(port & 1)
        if chip is self.slave:
            self._update()  # a slave poll is an acknowledge: the cascade line may drop
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        chip = self.master if port < SLAVE_BASE else self.slave
        chip.write(port & 1, value & 0xFF)
        self._update()

    def tick(self, now_ns: int) -> None:
        """The PIC is not timed."""

    def _update(self) -> None:
        # The slave's INT output is the master's IR2 (datasheet: "cascade buffer/comparator").
        self.master.set_line(CASCADE_IRQ, self.slave.best() >= 0)
