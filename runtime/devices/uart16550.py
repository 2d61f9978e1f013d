"""16550A UART (COM1 at 0x3F8-0x3FF): the guest's serial console.

Registers by offset from the base (National Semiconductor PC16550D datasheet,
table II "register summary"):

    0  RBR (read) / THR (write); DLL when LCR.DLAB = 1
    1  IER; DLM when LCR.DLAB = 1
    2  IIR (read) / FCR (write)
    3  LCR   4  MCR   5  LSR   6  MSR   7  SCR

Transmission is instantaneous: a byte written to THR goes to the sink at once
and the transmitter is empty again before the next instruction, so LSR always
shows THRE and TEMT and polling drivers never wait. What the guest writes is what
the sink gets, byte for byte (no newline translation, no encoding).

Reset values and interrupt behaviour follow QEMU's hw/char/serial.c, which is the
reference ring1's guest output is compared with: IIR 0x01, LSR 0x60, MSR 0xB0
(DCD, DSR, CTS), MCR 0x08 (OUT2), divisor 12 (9600 baud); the interrupt line is
not gated by MCR.OUT2 (QEMU does not gate it either); reading IIR while it reports
"THR empty" clears that interrupt; enabling ETBEI while THR is empty raises it.
One simplification: "received data available" is raised as soon as a byte is
waiting, whatever the FIFO trigger level (QEMU waits for the level or a character
timeout, which is timed); ring1 has no timed input, so a guest reading polled or by
interrupt gets every byte either way.
"""

from __future__ import annotations

from collections import deque
from typing import BinaryIO

from runtime.devices.base import IrqLine, no_irq

COM1_BASE = 0x3F8
COM1_IRQ = 4

# IER bits (datasheet: "interrupt enable register").
IER_ERBFI = 0x01   # received data available
IER_ETBEI = 0x02   # transmitter holding register empty
IER_ELSI = 0x04    # receiver line status
IER_EDSSI = 0x08   # modem status
# IIR values, highest priority first; bit 0 = 1 means "no interrupt pending".
IIR_NO_INT = 0x01
IIR_RLS = 0x06
IIR_RDA = 0x04
IIR_THRI = 0x02
IIR_MSI = 0x00     # never raised: the modem lines are constant
IIR_FIFO = 0xC0    # both FIFO-enabled bits, set while FCR bit 0 is 1
# LCR, MCR, LSR, MSR bits.
LCR_DLAB = 0x80
MCR_LOOP = 0x10
MCR_OUT2 = 0x08
LSR_DR = 0x01
LSR_OE = 0x02
LSR_THRE = 0x20
LSR_TEMT = 0x40
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_DCD = 0x80
#: One preallocated bytes object per value, so a transmitted byte allocates nothing.
_BYTE = tuple(bytes((i,)) for i in range(256))
#: Host-side input queue limit; input fed beyond it is an overrun (LSR.OE).
RX_QUEUE_MAX = 1 << 16


class Uart16550:
    """A 16550A with an instant transmitter; output goes to a binary sink."""

    def __init__(self, sink: BinaryIO | None, irq: IrqLine = no_irq, *,
                 base: int = COM1_BASE, irq_line: int = COM1_IRQ, name: str = "uart16550",
                 flush_on_newline: bool = True) -> None:
        self.name = name
        self.base = base
        self.ports = (range(base, base + 8),)
        self.sink = sink
        self._irq = irq
        self._irq_line = irq_line
        self._flush_on_newline = flush_on_newline
        #: Bytes the guest transmitted, for statistics.
        self.tx_bytes = 0
        self._rx: deque[int] = deque()
        self.reset()

    def reset(self) -> None:
        self.ier = 0
        self.lcr = 0
        self.mcr = MCR_OUT2
        self.scr = 0
        self.msr = MSR_DCD | MSR_DSR | MSR_CTS
        self.divisor = 0x0C
        self.fcr = 0
        self._overrun = False
        self._thr_ipending = False
        self._irq_level = False
        self._iir = IIR_NO_INT
        self._rx.clear()

    # -- host side -----------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Input from the host (a terminal, a test): it appears in RBR byte by byte."""
        room = RX_QUEUE_MAX - len(self._rx)
        if len(data) > room:
            self._overrun = True
            data = data[:room]
        self._rx.extend(data)
        self._update_irq()

    def flush(self) -> None:
        if self.sink is not None:
            self.sink.flush()

    # -- Device --------------------------------------------------------------

    def io_read(self, port: int, size: int) -> int:
        offset = port - self.base
        if offset == 0:
            if self.lcr & LCR_DLAB:
                return self.divisor & 0xFF
            value = self._rx.popleft() if self._rx else 0
            self._update_irq()
            return value
        if offset == 1:
            if self.lcr & LCR_DLAB:
                return (self.divisor >> 8) & 0xFF
            return self.ier
        if offset == 2:
            value = self._iir
            if value & 0x0F == IIR_THRI:
                # Datasheet: the THRE interrupt is cleared by reading IIR (when it is the source).
                self._thr_ipending = False
                self._update_irq()
            return value
        if offset == 3:
            return self.lcr
        if offset == 4:
            return self.mcr
        if offset == 5:
            value = LSR_THRE | LSR_TEMT
            if self._rx:
                value |= LSR_DR
            if self._overrun:
                value |= LSR_OE
                self._overrun = False  # OE clears when LSR is read
                self._update_irq()
            return value
        if offset == 6:
            if self.mcr & MCR_LOOP:
                # Loopback: MSR mirrors MCR (DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD).
                m = self.mcr
                return ((m & 0x0C) << 4) | ((m & 0x01) << 5) | ((m & 0x02) << 3)
            return self.msr
        return self.scr

    def io_write(self, port: int, size: int, value: int) -> None:
        offset = port - self.base
        value &= 0xFF
        if offset == 0:
            if self.lcr & LCR_DLAB:
                self.divisor = (self.divisor & 0xFF00) | value
            else:
                self._transmit(value)
        elif offset == 1:
            if self.lcr & LCR_DLAB:
                self.divisor = (self.divisor & 0x00FF) | (value << 8)
            else:
                was = self.ier
                self.ier = value & 0x0F
                if self.ier & IER_ETBEI and not was & IER_ETBEI:
                    # THR is always empty here, so enabling ETBEI makes it pending at once.
                    self._thr_ipending = True
                self._update_irq()
        elif offset == 2:
            self.fcr = value & 0xC9
            if value & 0x02:
                self._rx.clear()  # FCR bit 1: clear the receive FIFO
            self._update_irq()
        elif offset == 3:
            self.lcr = value
        elif offset == 4:
            self.mcr = value & 0x1F
        elif offset == 7:
            self.scr = value
        # LSR (5) and MSR (6) are read-only: writes are ignored, as on the chip.

    def tick(self, now_ns: int) -> None:
        """The transmitter is instant and input arrives through `feed`: nothing is timed."""

    # -- internals -----------------------------------------------------------

    def _transmit(self, byte: int) -> None:
        if self.mcr & MCR_LOOP:
            self._rx.append(byte)
        elif self.sink is not None:
            self.sink.write(_BYTE[byte])
            if byte == 0x0A and self._flush_on_newline:
                self.sink.flush()
        self.tx_bytes += 1
        # Writing THR clears the THRE interrupt; the instant transmitter empties THR
        # again, which raises it anew: the line drops and rises, a fresh edge per byte.
        self._thr_ipending = False
        self._update_irq()
        if self.ier & IER_ETBEI:
            self._thr_ipending = True
            self._update_irq()

    def _update_irq(self) -> None:
        ier = self.ier
        if ier & IER_ELSI and self._overrun:
            iir = IIR_RLS
        elif ier & IER_ERBFI and self._rx:
            iir = IIR_RDA
        elif ier & IER_ETBEI and self._thr_ipending:
            iir = IIR_THRI
        else:  # modem status never changes (no delta bits), so no MSI either

            iir = IIR_NO_INT
        self._iir = iir | (IIR_FIFO if self.fcr & 0x01 else 0)
        level = iir != IIR_NO_INT
        if level != self._irq_level:
            self._irq_level = level
            self._irq(self._irq_line, level)
