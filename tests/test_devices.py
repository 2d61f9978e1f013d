"""Unit tests of the emulated devices and the I/O bus (runtime/devices/)."""

from __future__ import annotations

import io
import logging

import pytest

from bt.errors import InternalError, Ring1Error
from runtime.devices.bus import IoBus
from runtime.devices.debugexit import DebugExit
from runtime.devices.uart16550 import Uart16550


class Lines:
    """Records IRQ line changes as (line, level) in order."""

    def __init__(self) -> None:
        self.events: list[tuple[int, bool]] = []

    def __call__(self, line: int, level: bool) -> None:
        self.events.append((line, level))


# -- bus -----------------------------------------------------------------------

def test_bus_refuses_overlap() -> None:
    bus = IoBus()
    bus.register(DebugExit())
    with pytest.raises(InternalError) as err:
        bus.register(DebugExit(base=0xF6))
    assert isinstance(err.value, Ring1Error)
    assert "0xf6" in str(err.value) and "isa-debug-exit" in str(err.value)
    # Nothing of the refused device was registered.
    assert bus.device_at(0xF8) is None


def test_unknown_port_reads_all_ones_counted_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    bus = IoBus()
    with caplog.at_level(logging.INFO, logger="runtime.devices.bus"):
        assert bus.read(0x1234, 1) == 0xFF
        assert bus.read(0x1234, 2) == 0xFFFF
        assert bus.read(0x1234, 4) == 0xFFFFFFFF
        bus.write(0x1234, 1, 5)
        bus.write(0x4321, 4, 5)
    assert bus.unknown[0x1234] == 4 and bus.unknown[0x4321] == 1
    assert sum("0x1234" in r.getMessage() for r in caplog.records) == 1
    assert sum("0x4321" in r.getMessage() for r in caplog.records) == 1


def test_bus_masks_to_access_size() -> None:
    bus = IoBus()
    de = bus.register(DebugExit())
    assert bus.read(0xF4, 4) == 0
    bus.write(0xF4, 1, 0x1FF)  # an 8-bit OUT can only carry 0xFF
    assert isinstance(de, DebugExit) and de.value == 0xFF
    assert bus.accesses["isa-debug-exit"] == 2


# -- UART ----------------------------------------------------------------------

def test_uart_byte_exact_output() -> None:
    sink = io.BytesIO()
    bus = IoBus()
    bus.register(Uart16550(sink))
    data = bytes(range(256)) + b"\r\n\n\x00hello"
    for b in data:
        assert bus.read(0x3FD, 1) & 0x20  # LSR.THRE: a polling driver may send
        bus.write(0x3F8, 1, b)
    assert sink.getvalue() == data


def test_uart_lsr_polling_and_input() -> None:
    uart = Uart16550(io.BytesIO())
    assert uart.io_read(0x3FD, 1) == 0x60  # THRE | TEMT, no data
    uart.feed(b"ab")
    assert uart.io_read(0x3FD, 1) == 0x61
    assert uart.io_read(0x3F8, 1) == ord("a")
    assert uart.io_read(0x3F8, 1) == ord("b")
    assert uart.io_read(0x3FD, 1) == 0x60


def test_uart_divisor_latch_and_scratch() -> None:
    sink = io.BytesIO()
    uart = Uart16550(sink)
    assert uart.io_read(0x3FE, 1) == 0xB0  # MSR: DCD DSR CTS, as QEMU resets it
    uart.io_write(0x3FB, 1, 0x80)           # DLAB = 1
    uart.io_write(0x3F8, 1, 0x03)           # 38400 baud
    uart.io_write(0x3F9, 1, 0x00)
    assert uart.io_read(0x3F8, 1) == 0x03 and uart.io_read(0x3F9, 1) == 0
    uart.io_write(0x3FB, 1, 0x03)           # 8N1, DLAB = 0
    assert uart.divisor == 3 and uart.io_read(0x3FB, 1) == 0x03
    uart.io_write(0x3FF, 1, 0x5A)
    assert uart.io_read(0x3FF, 1) == 0x5A
    assert sink.getvalue() == b""           # divisor writes are not output


def test_uart_thr_empty_interrupt() -> None:
    lines = Lines()
    sink = io.BytesIO()
    uart = Uart16550(sink, lines)
    assert uart.io_read(0x3FA, 1) == 0x01
    uart.io_write(0x3F9, 1, 0x02)           # ETBEI: THR is empty, so pending at once
    assert lines.events == [(4, True)]
    assert uart.io_read(0x3FA, 1) == 0x02   # reading IIR clears it
    assert lines.events[-1] == (4, False)
    assert uart.io_read(0x3FA, 1) == 0x01
    lines.events.clear()
    uart.io_write(0x3F8, 1, ord("x"))       # a fresh edge per transmitted byte
    assert lines.events == [(4, True)]
    assert sink.getvalue() == b"x"


def test_uart_receive_interrupt_and_fifo_bits() -> None:
    lines = Lines()
    uart = Uart16550(io.BytesIO(), lines)
    uart.io_write(0x3FA, 1, 0x07)           # enable and clear FIFOs
    uart.io_write(0x3F9, 1, 0x01)           # ERBFI
    assert lines.events == []
    uart.feed(b"k")
    assert lines.events == [(4, True)]
    assert uart.io_read(0x3FA, 1) == 0xC4   # FIFOs enabled, RDA
    assert uart.io_read(0x3F8, 1) == ord("k")
    assert lines.events[-1] == (4, False)
    assert uart.io_read(0x3FA, 1) == 0xC1


def test_uart_loopback() -> None:
    sink = io.BytesIO()
    uart = Uart16550(sink)
    uart.io_write(0x3FC, 1, 0x1F)           # loopback with all modem outputs on
    uart.io_write(0x3F8, 1, 0xAE)
    assert sink.getvalue() == b""
    assert uart.io_read(0x3FD, 1) & 0x01
    assert uart.io_read(0x3F8, 1) == 0xAE
    assert uart.io_read(0x3FE, 1) == 0xF0


# -- isa-debug-exit --------------------------------------------------------------

@pytest.mark.parametrize(("value", "status"), [(0, 1), (1, 3), (0x10, 0x21), (0x7F, 0xFF), (0x80, 0x101)])
def test_debug_exit_status_as_qemu(value: int, status: int) -> None:
    seen: list[int] = []
    de = DebugExit(seen.append)
    assert de.exit_status is None
    de.io_write(0xF4, 1, value)
    assert de.exit_status == status and seen == [status]
    assert de.exit_code == status & 0xFF
    de.io_write(0xF4, 1, 99)                # the first write ends the run
    assert de.exit_status == status and seen == [status]


def test_debug_exit_any_port_any_size() -> None:
    de = DebugExit()
    de.io_write(0xF6, 4, 0x12345)
    assert de.exit_status == (0x12345 << 1) | 1
