"""8254 programmable interval timer (ports 0x40-0x43) and port 0x61 (channel 2 gate).

Reference: Intel 82C54 datasheet (order no. 231244): "Control word format",
"Read-back command", "Counter latch command", "Mode 0" ... "Mode 5". The input
clock is 1.193182 MHz (the PC's 14.31818 MHz crystal divided by 12). Channel 0's
OUT drives IRQ0; channel 2's gate and OUT are wired to port 0x61 (speaker).

Time is virtual: the VMM passes `clock()` (virtual nanoseconds now) at
construction and calls `tick(now_ns)` as virtual time advances; the counter a guest
reads is derived from virtual time, so two runs of the same guest read the same
values. `next_event_ns(now)` tells the VMM when the next IRQ0 falls due, so that a
HLT can jump virtual time straight to it.

Where the datasheet leaves room, QEMU's hw/timer/i8254.c and i8254_common.c are
followed (guest-visible values ring1 is compared against): the counter read-out
formulas per mode, the OUT level reported in the status byte (including QEMU's
mode 2, where OUT reads 1 only at the period boundary), BCD recorded but counted
in binary, "null count" never set, the reset state (every channel mode 3, count
0x10000, counting from time 0; gate high on channels 0 and 1), and port 0x61's
refresh bit toggling on every read. One deliberate difference: writing a control
word stops the channel until its new count is written, as the datasheet says
("OUT goes to a known initial state... counting does not begin until the count is
written"), where QEMU keeps counting the old count.

IRQ0 is an edge per event: modes 2 and 3 every `count` input clocks after the
count was loaded, modes 0, 4 and 5 once, `count` clocks after. Events the VMM
skipped over between two ticks are coalesced into one edge, as an edge-triggered
8259A would see them.
"""

from __future__ import annotations

from collections.abc import Callable

from runtime.devices.base import IrqLine, no_irq

PIT_BASE = 0x40
PIT_HZ = 1_193_182
NS_PER_S = 1_000_000_000
TIMER_IRQ = 0
SPEAKER_PORT = 0x61

# Access modes (control word bits 5-4) and the read/write flip-flop states.
RW_LATCH, RW_LSB, RW_MSB, RW_WORD = 0, 1, 2, 3
_WORD_HI = 4   # within RW_WORD: the next byte is the high one


def ticks_to_ns(ticks: int) -> int:
    """Virtual ns for `ticks` input clocks, rounded up so that `ns_to_ticks` of it is >= ticks."""
    return -(-ticks * NS_PER_S // PIT_HZ)


def ns_to_ticks(ns: int) -> int:
    return ns * PIT_HZ // NS_PER_S


class Channel:
    """One counter of the 8254."""

    def __init__(self, index: int, gate: bool) -> None:
        self.index = index
        self.gate = gate
        self.mode = 3              # as programmed (0-7); `kind` is the behaviour
        self.rw = RW_LATCH
        self.bcd = False
        self.count = 0x10000
        self.load_ns: int | None = 0   # None: control word written, count not yet
        self.fired = 0             # events already signalled since load
        self.read_state = RW_LATCH
        self.write_state = RW_LATCH
        self.write_low = 0
        self.latched: int | None = None
        self.latched_state = RW_LATCH
        self.status: int | None = None

    @property
    def kind(self) -> int:
        """Modes 6 and 7 are modes 2 and 3 (datasheet: control word "X10", "X11")."""
        return self.mode & 3 if self.mode > 5 else self.mode

    def elapsed(self, now_ns: int) -> int:
        """Input clocks since the count was loaded (0 if the channel is stopped)."""
        if self.load_ns is None:
            return 0
        return ns_to_ticks(max(0, now_ns - self.load_ns))

    def counter(self, now_ns: int) -> int:
        """The 16-bit counting element (QEMU's pit_get_count)."""
        if self.load_ns is None:
            return self.count & 0xFFFF
        d = self.elapsed(now_ns)
        kind = self.kind
        if kind == 3:
            value = self.count - (2 * d) % self.count
        elif kind == 2:
            value = self.count - d % self.count
        else:
            value = self.count - d
        return value & 0xFFFF

    def out(self, now_ns: int) -> bool:
        """The OUT pin (QEMU's pit_get_out); the initial state while stopped."""
        kind = self.kind
        if self.load_ns is None:
            return kind != 0
        d = self.elapsed(now_ns)
        if kind == 0:
            return d >= self.count
        if kind == 1:
            return d < self.count
        if kind == 2:
            return d != 0 and d % self.count == 0
        if kind == 3:
            return d % self.count < (self.count + 1) >> 1
        return d == self.count

    def periodic(self) -> bool:
        return self.kind in (2, 3)

    def next_event_ns(self) -> int | None:
        """Virtual time of the next event not yet signalled, or None if none will come."""
        if self.load_ns is None or (self.kind == 1):
            return None
        if self.periodic():
            return self.load_ns + ticks_to_ns((self.fired + 1) * self.count)
        if self.fired:
            return None
        return self.load_ns + ticks_to_ns(self.count)

    def due(self, now_ns: int) -> bool:
        """Whether an event fell due by `now_ns`; marks it (and any skipped ones) signalled."""
        if self.load_ns is None or self.kind == 1:
            return False
        d = self.elapsed(now_ns)
        if self.periodic():
            n = d // self.count
            if n > self.fired:
                self.fired = n
                return True
            return False
        if not self.fired and d >= self.count:
            self.fired = 1
            return True
        return False

    def load(self, value: int, now_ns: int) -> None:
        self.count = value or 0x10000      # a count of 0 means 2^16 (binary)
        self.load_ns = now_ns
        self.fired = 0

    def control(self, value: int) -> None:
        self.rw = (value >> 4) & 3
        self.read_state = self.write_state = self.rw
        self.mode = (value >> 1) & 7
        self.bcd = bool(value & 1)
        self.load_ns = None                # datasheet: stopped until the count is written
        self.fired = 0

    def latch(self, now_ns: int) -> None:
        if self.latched is None:           # a second latch before the read is ignored
            self.latched = self.counter(now_ns)
            self.latched_state = self.rw

    def latch_status(self, now_ns: int) -> None:
        if self.status is None:
            # Bit 6 (null count) stays 0, as in QEMU.
            self.status = (self.out(now_ns) << 7) | (self.rw << 4) | (self.mode << 1) | int(self.bcd)

    def read(self, now_ns: int) -> int:
        if self.status is not None:
            value, self.status = self.status, None
            return value
        if self.latched is not None:
            state, latched = self.latched_state, self.latched
            if state == RW_MSB:
                self.latched = None
                return latched >> 8
            if state == RW_WORD:
                self.latched_state = _WORD_HI
                return latched & 0xFF
            self.latched = None            # RW_LSB or the high byte of a word
            return (latched >> 8) if state == _WORD_HI else latched & 0xFF
        count = self.counter(now_ns)
        state = self.read_state
        if state == RW_MSB:
            return count >> 8
        if state == RW_WORD:
            self.read_state = _WORD_HI
            return count & 0xFF
        if state == _WORD_HI:
            self.read_state = RW_WORD
            return count >> 8
        return count & 0xFF

    def write(self, value: int, now_ns: int) -> None:
        state = self.write_state
        if state == RW_MSB:
            self.load(value << 8, now_ns)
        elif state == RW_WORD:
            self.write_low = value
            self.write_state = _WORD_HI
        elif state == _WORD_HI:
            self.write_state = RW_WORD
            self.load(self.write_low | (value << 8), now_ns)
        else:
            self.load(value, now_ns)

    def set_gate(self, gate: bool, now_ns: int) -> None:
        # A rising gate restarts modes 1, 2, 3 and 5 (datasheet's gate table; QEMU's pit_set_gate).
        if gate and not self.gate and self.kind in (1, 2, 3, 5) and self.load_ns is not None:
            self.load_ns = now_ns
            self.fired = 0
        self.gate = gate


class Pit8254:
    """The 8254 on ports 0x40-0x43; channel 0 raises IRQ0."""

    def __init__(self, clock: Callable[[], int], irq: IrqLine = no_irq, *, name: str = "pit8254") -> None:
        self.name = name
        self.ports = (range(PIT_BASE, PIT_BASE + 4),)
        self.clock = clock
        self._irq = irq
        self.channels = (Channel(0, True), Channel(1, True), Channel(2, False))
        #: IRQ0 edges raised, for statistics.
        self.irqs = 0

    def bios_setup(self) -> None:
        """Channel 0 as SeaBIOS leaves it: mode 2, lobyte/hibyte, count 0x10000 (18.2 Hz)."""
        ch = self.channels[0]
        ch.control(0x34)
        ch.load(0, self.clock())

    def io_read(self, port: int, size: int) -> int:
        index = port - PIT_BASE
        if index == 3:
            return 0  # the control register is write-only; QEMU reads it as 0 (measured)
        return self.channels[index].read(self.clock())

    def io_write(self, port: int, size: int, value: int) -> None:
        index = port - PIT_BASE
        value &= 0xFF
        now = self.clock()
        if index < 3:
            self.channels[index].write(value, now)
            return
        select = value >> 6
        if select == 3:                    # read-back: bits 3-1 select channels 2-0
            for ch in self.channels:
                if value & (2 << ch.index):
                    if not value & 0x20:
                        ch.latch(now)
                    if not value & 0x10:
                        ch.latch_status(now)
        elif (value >> 4) & 3 == RW_LATCH:  # counter latch command
            self.channels[select].latch(now)
        else:
            self.channels[select].control(value)

    def tick(self, now_ns: int) -> None:
        if self.channels[0].due(now_ns):
            self.irqs += 1
            self._irq(TIMER_IRQ, True)
            self._irq(TIMER_IRQ, False)

    def next_event_ns(self, now_ns: int) -> int | None:
        """When the next IRQ0 falls due, or None if channel 0 will raise none.

        May be <= `now_ns` when one is already due and `tick` has not run yet.
        """
        return self.channels[0].next_event_ns()


class SpeakerPort:
    """Port 0x61 (PC speaker control), QEMU's pcspk: bit 0 gates channel 2, bit 1 is
    speaker data; reads give the gate, data, a refresh bit (4) that toggles on every
    read (polling delay loops see it move) and channel 2's OUT (bit 5)."""

    def __init__(self, pit: Pit8254, *, name: str = "port61") -> None:
        self.name = name
        self.ports = (range(SPEAKER_PORT, SPEAKER_PORT + 1),)
        self.pit = pit
        self.data_on = False
        self._refresh = 0

    def io_read(self, port: int, size: int) -> int:
        ch2 = self.pit.channels[2]
        self._refresh ^= 0x10
        now = self.pit.clock()
        return int(ch2.gate) | (int(self.data_on) << 1) | self._refresh | (int(ch2.out(now)) << 5)

    def io_write(self, port: int, size: int, value: int) -> None:
        self.pit.channels[2].set_gate(bool(value & 1), self.pit.clock())
        self.data_on = bool(value & 2)

    def tick(self, now_ns: int) -> None:
        """Channel 2 raises no interrupt."""
