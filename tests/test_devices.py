"""Unit tests of the emulated devices and the I/O bus (runtime/devices/)."""

from __future__ import annotations

import io
import logging

import pytest

from bt.errors import InternalError, Ring1Error
from runtime.devices.bus import IoBus
from runtime.devices.cmos import Cmos
from runtime.devices.debugexit import DebugExit
from runtime.devices.pic8259 import Pic8259
from runtime.devices.pit8254 import Pit8254, SpeakerPort, ticks_to_ns
from runtime.devices.port80 import Port80
from runtime.devices.standard import build_standard_bus
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


# -- 8259A PIC ---------------------------------------------------------------------

def init_pic(pic: Pic8259, master_base: int = 0x20, slave_base: int = 0x28, *, aeoi: bool = False) -> None:
    """The ICW1-ICW4 sequence every PC kernel sends (Linux's init_8259A, the samples' pic.c)."""
    icw4 = 0x03 if aeoi else 0x01
    for port, value in ((0x20, 0x11), (0xA0, 0x11), (0x21, master_base), (0xA1, slave_base),
                        (0x21, 0x04), (0xA1, 0x02), (0x21, icw4), (0xA1, icw4)):
        pic.io_write(port, 1, value)


def test_pic_init_sets_vectors_and_clears_mask() -> None:
    pic = Pic8259()
    pic.io_write(0x21, 1, 0xFF)
    init_pic(pic)
    assert pic.io_read(0x21, 1) == 0 and pic.io_read(0xA1, 1) == 0  # ICW1 clears IMR
    pic.raise_irq(0)
    assert pic.pending()
    assert pic.acknowledge() == 0x20
    pic.raise_irq(9)
    assert not pic.pending()         # IR0 in service blocks the cascade (IR2)
    pic.io_write(0x20, 1, 0x20)
    assert pic.acknowledge() == 0x29


def test_pic_edge_triggered() -> None:
    pic = Pic8259()
    init_pic(pic)
    pic.raise_irq(3)
    pic.raise_irq(3)                 # still high: no new edge
    assert pic.acknowledge() == 0x23
    pic.io_write(0x20, 1, 0x20)
    assert not pic.pending()         # the request was consumed at INTA
    pic.lower_irq(3)
    pic.raise_irq(3)
    assert pic.pending()


def test_pic_mask() -> None:
    pic = Pic8259()
    init_pic(pic)
    pic.io_write(0x21, 1, 0xFE)      # OCW1: only IRQ0
    pic.pulse_irq(1)
    assert not pic.pending()
    pic.io_write(0x20, 1, 0x0A)      # OCW3: read IRR
    assert pic.io_read(0x20, 1) == 0x02  # masked requests still latch in IRR
    pic.io_write(0x21, 1, 0x00)
    assert pic.pending() and pic.acknowledge() == 0x21


def test_pic_priority_and_nesting() -> None:
    pic = Pic8259()
    init_pic(pic)
    pic.pulse_irq(5)
    pic.pulse_irq(3)
    assert pic.acknowledge() == 0x23                 # lower IR number first
    pic.pulse_irq(4)
    assert not pic.pending()                         # IR4 waits while IR3 is in service
    pic.pulse_irq(1)
    assert pic.pending() and pic.acknowledge() == 0x21  # IR1 nests over IR3
    pic.io_write(0x20, 1, 0x0B)                       # OCW3: read ISR
    assert pic.io_read(0x20, 1) == 0b1010
    pic.io_write(0x20, 1, 0x20)                       # non-specific EOI ends the highest: IR1
    assert pic.io_read(0x20, 1) == 0b1000
    assert not pic.pending()
    pic.io_write(0x20, 1, 0x63)                       # specific EOI for IR3
    assert pic.io_read(0x20, 1) == 0
    assert pic.acknowledge() == 0x24
    pic.io_write(0x20, 1, 0x20)
    assert pic.acknowledge() == 0x25


def test_pic_cascade() -> None:
    pic = Pic8259()
    init_pic(pic, 0x20, 0x28)
    pic.pulse_irq(12)
    assert pic.pending()
    assert pic.acknowledge() == 0x2C
    pic.io_write(0xA0, 1, 0x0B)
    pic.io_write(0x20, 1, 0x0B)
    assert pic.io_read(0xA0, 1) == 0x10 and pic.io_read(0x20, 1) == 0x04  # both in service
    pic.pulse_irq(13)
    assert not pic.pending()         # IR2 of the master is in service
    pic.io_write(0xA0, 1, 0x20)      # EOI to the slave, then the master
    pic.io_write(0x20, 1, 0x20)
    assert pic.acknowledge() == 0x2D
    pic.io_write(0xA1, 1, 0x20)      # masking the slave's IR5 ... (IR13 already in service)
    pic.io_write(0xA0, 1, 0x20)
    pic.io_write(0x20, 1, 0x20)
    pic.pulse_irq(13)
    assert not pic.pending()         # ... hides its next request from the master too


def test_pic_spurious_and_auto_eoi() -> None:
    pic = Pic8259()
    init_pic(pic, aeoi=True)
    assert pic.acknowledge() == 0x27         # nothing pending: IR7, spurious
    assert pic.acks[16] == 1
    pic.pulse_irq(6)
    assert pic.acknowledge() == 0x26
    pic.io_write(0x20, 1, 0x0B)
    assert pic.io_read(0x20, 1) == 0         # AEOI: never in service
    pic.pulse_irq(7)
    assert pic.pending()


def test_pic_poll() -> None:
    pic = Pic8259()
    init_pic(pic)
    pic.io_write(0x20, 1, 0x0C)              # OCW3 poll
    assert pic.io_read(0x20, 1) == 0
    pic.pulse_irq(2 + 3)
    pic.io_write(0x20, 1, 0x0C)
    assert pic.io_read(0x20, 1) == 0x85
    assert not pic.pending()                 # IR5 now in service


def test_pic_rotation() -> None:
    pic = Pic8259()
    init_pic(pic)
    pic.io_write(0x20, 1, 0xC3)              # set priority: IR3 lowest, IR4 highest
    pic.pulse_irq(2 + 0)
    pic.pulse_irq(5)
    assert pic.acknowledge() == 0x25


# -- 8254 PIT ----------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def program(pit: Pit8254, control: int, count: int) -> None:
    pit.io_write(0x43, 1, control)
    pit.io_write(0x40, 1, count & 0xFF)
    pit.io_write(0x40, 1, count >> 8)


def test_pit_rate_generator_periods_and_next_event() -> None:
    clock, lines = Clock(), Lines()
    pit = Pit8254(clock, lines)
    program(pit, 0x34, 11932)                # mode 2, ~100 Hz, the timer sample's setting
    period = ticks_to_ns(11932)
    assert 9_999_000 < period < 10_001_000
    assert pit.next_event_ns(0) == period
    pit.tick(period - 1)
    assert lines.events == []
    pit.tick(period)
    assert lines.events == [(0, True), (0, False)]
    assert pit.next_event_ns(period) == ticks_to_ns(2 * 11932)
    lines.events.clear()
    pit.tick(10 * period)                    # skipped periods coalesce into one edge
    assert lines.events == [(0, True), (0, False)]
    assert pit.next_event_ns(10 * period) == ticks_to_ns(11 * 11932)
    assert pit.irqs == 2


def test_pit_square_wave_and_counter_reads() -> None:
    clock, lines = Clock(), Lines()
    pit = Pit8254(clock, lines)
    program(pit, 0x36, 1000)                 # mode 3
    clock.now = ticks_to_ns(100)
    pit.io_write(0x43, 1, 0x00)              # latch channel 0
    clock.now = ticks_to_ns(300)             # the latch holds the old value
    lo, hi = pit.io_read(0x40, 1), pit.io_read(0x40, 1)
    assert (hi << 8 | lo) == 1000 - 200      # mode 3 counts down by two
    lo, hi = pit.io_read(0x40, 1), pit.io_read(0x40, 1)
    assert (hi << 8 | lo) == 1000 - 600
    pit.tick(ticks_to_ns(1000))
    assert lines.events == [(0, True), (0, False)]


def test_pit_one_shot_mode0() -> None:
    clock, lines = Clock(), Lines()
    pit = Pit8254(clock, lines)
    program(pit, 0x30, 500)
    assert pit.next_event_ns(0) == ticks_to_ns(500)
    pit.tick(ticks_to_ns(500))
    pit.tick(ticks_to_ns(5000))
    assert lines.events == [(0, True), (0, False)]
    assert pit.next_event_ns(ticks_to_ns(5000)) is None
    clock.now = ticks_to_ns(5000)
    assert pit.io_read(0x40, 1) == (500 - 5000) & 0xFF   # mode 0 wraps past terminal count


def test_pit_control_word_stops_until_count_and_readback() -> None:
    clock = Clock()
    pit = Pit8254(clock)
    program(pit, 0x34, 0)                    # count 0 means 0x10000
    assert pit.channels[0].count == 0x10000
    pit.io_write(0x43, 1, 0x34)
    assert pit.next_event_ns(0) is None
    pit.io_write(0x40, 1, 0x10)
    assert pit.next_event_ns(0) is None      # half a word written
    pit.io_write(0x40, 1, 0x00)
    assert pit.next_event_ns(0) == ticks_to_ns(16)
    pit.io_write(0x43, 1, 0xE2)              # read-back: status of channel 0
    assert pit.io_read(0x40, 1) == 0x34      # OUT 0, lobyte/hibyte, mode 2, binary
    pit.io_write(0x43, 1, 0x10 | 0x00)       # channel 0 LSB only
    pit.io_write(0x40, 1, 0x50)
    assert pit.channels[0].count == 0x50 and pit.channels[0].mode == 0


def test_pit_reset_state_and_speaker_port() -> None:
    clock = Clock()
    pit = Pit8254(clock)
    speaker = SpeakerPort(pit)
    pit.io_write(0x43, 1, 0xE4 | 0x08)       # read-back status of channels 1 and 2
    assert pit.io_read(0x41, 1) == 0x86 and pit.io_read(0x42, 1) == 0x86   # as QEMU reports
    assert speaker.io_read(0x61, 1) == 0x30  # OUT2 high, refresh bit ...
    assert speaker.io_read(0x61, 1) == 0x20  # ... toggles on every read
    pit.io_write(0x43, 1, 0xB0)              # channel 2, mode 0
    pit.io_write(0x42, 1, 100)
    pit.io_write(0x42, 1, 0)
    speaker.io_write(0x61, 1, 0x01)
    assert not speaker.io_read(0x61, 1) & 0x20
    clock.now = ticks_to_ns(100)
    assert speaker.io_read(0x61, 1) & 0x20   # terminal count reached
    assert pit.io_read(0x43, 1) == 0         # write-only control register, read as QEMU does


# -- CMOS, port 0x80, the standard set ---------------------------------------------

def cmos_read(cmos: Cmos, index: int) -> int:
    cmos.io_write(0x70, 1, index)
    return cmos.io_read(0x71, 1)


def test_cmos_qemu_values_for_64_mib() -> None:
    cmos = Cmos(64 * 1024 * 1024)
    measured = {0x0A: 0x26, 0x0B: 0x02, 0x0C: 0x00, 0x0D: 0x80, 0x10: 0x50, 0x14: 0x07,
                0x15: 0x80, 0x16: 0x02, 0x17: 0x00, 0x18: 0xFC, 0x30: 0x00, 0x31: 0xFC,
                0x32: 0x20, 0x34: 0x00, 0x35: 0x03, 0x38: 0x30, 0x3D: 0x12, 0x5F: 0x00}
    assert {i: cmos_read(cmos, i) for i in measured} == measured
    assert cmos.io_read(0x70, 1) == 0xFF
    big = Cmos(256 * 1024 * 1024)
    assert cmos_read(big, 0x17) == 0xFF and cmos_read(big, 0x18) == 0xFF
    assert cmos_read(big, 0x35) == 0x0F


def test_cmos_deterministic_clock() -> None:
    clock = Clock()
    cmos = Cmos(64 * 1024 * 1024, clock)
    clock.now = (13 * 3600 + 7 * 60 + 42) * 1_000_000_000
    assert [cmos_read(cmos, i) for i in (0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32)] == \
        [0x42, 0x07, 0x13, 0x07, 0x01, 0x01, 0x00, 0x20]   # Saturday 2000-01-01 13:07:42, BCD
    cmos.io_write(0x70, 1, 0x8B)                 # NMI off, register B
    cmos.io_write(0x71, 1, 0x04)                 # binary, 12-hour
    assert cmos.nmi_disabled
    assert cmos_read(cmos, 0x04) == 0x81         # 1 PM
    assert cmos_read(cmos, 0x00) == 42
    assert not cmos_read(cmos, 0x0A) & 0x80
    clock.now += 1_000_000_000 - 100_000
    assert cmos_read(cmos, 0x0A) & 0x80          # update in progress


def test_port80() -> None:
    p = Port80()
    p.io_write(0x80, 1, 0x42)
    assert p.last == 0x42 and p.writes == 1
    assert p.io_read(0x80, 1) == 0xFF            # QEMU's answer
    assert Port80(echo=True).io_read(0x80, 1) == 0xFF
    echo = Port80(echo=True)
    echo.io_write(0x80, 1, 0x42)
    assert echo.io_read(0x80, 1) == 0x42


def test_standard_bus_firmware_state() -> None:
    clock = Clock()
    sink = io.BytesIO()
    stops: list[int] = []
    dev = build_standard_bus(sink, 64 * 1024 * 1024, clock, on_exit=stops.append)
    bus = dev.bus
    assert bus.read(0x21, 1) == 0xB8 and bus.read(0xA1, 1) == 0x8E      # SeaBIOS's masks
    bus.write(0x43, 1, 0xE2)
    assert bus.read(0x40, 1) == 0x34                                  # channel 0 mode 2
    assert dev.next_event_ns(0) == ticks_to_ns(0x10000)
    dev.tick(ticks_to_ns(0x10000))
    assert dev.pic.pending() and dev.pic.acknowledge() == 0x08        # IRQ0 at SeaBIOS's base
    bus.write(0x21, 1, 0xFF)
    assert dev.next_event_ns(0) is None                               # the timer is masked
    bus.write(0x3F8, 1, ord("A"))
    bus.write(0xF4, 4, 0)
    assert sink.getvalue() == b"A" and stops == [1] and dev.debug_exit.exit_status == 1
    assert bus.read(0x3FD, 1) == 0x60 and bus.read(0x61, 1) & 0x20
    assert bus.read(0x300, 2) == 0xFFFF and bus.unknown[0x300] == 1
    counters = dev.counters()
    assert counters["io.unassigned.0x0300"] == 1 and counters["pic.ack.irq0"] == 1
    assert counters["uart.tx_bytes"] == 1 and counters["pit.irq0"] == 1 and counters["io.uart16550"] == 2


def test_standard_bus_without_firmware() -> None:
    dev = build_standard_bus(None, 64 * 1024 * 1024, Clock(), firmware=False)
    assert dev.bus.read(0x21, 1) == 0
    dev.bus.write(0x3F8, 1, 0x41)                # no sink: output dropped, still counted
    assert dev.uart.tx_bytes == 1
