"""A minimal MC146818 real-time clock and CMOS RAM (index port 0x70, data port 0x71).

Reference: Motorola MC146818A datasheet ("register A" .. "register D", "time,
calendar and alarm locations"); the PC/AT CMOS layout for bytes 0x0E-0x3F (IBM PC AT
technical reference). Values the guest can read follow QEMU (hw/rtc/mc146818rtc.c and
hw/i386/pc.c: pc_cmos_init), measured with qemu-system-i386 at -m 16, 32, 64, 128,
256 and 3000: register A 0x26 (32.768 kHz, 1024 Hz rate), B 0x02 (24-hour, BCD),
D 0x80 (valid RAM and time), century at 0x32, base memory 640 KiB at 0x15/0x16,
extended memory above 1 MiB in KiB (capped at 0xFFFF) at 0x17/0x18 and 0x30/0x31,
memory above 16 MiB in 64 KiB units (capped at 0xFFFF) at 0x34/0x35, and QEMU's
default equipment/floppy/boot-order bytes. Reading the index port gives 0xFF.

Time is deterministic: the clock reads `EPOCH` plus the guest's virtual seconds
(`clock()`), so two runs print the same time. To get the same clock out of QEMU,
run it with `-rtc base=2000-01-01T00:00:00,clock=vm`. UIP (register A bit 7) is
set during the last 244 µs of every virtual second, the datasheet's "update in
progress" window. Guest writes to the time registers are accepted and ignored
(the clock cannot be set); no alarm, periodic or update-ended interrupts
(register C reads 0), so IRQ 8 never fires.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

from bt.layout import MiB

CMOS_BASE = 0x70
#: The fixed, documented start of ring1's guest time: 2000-01-01 00:00:00 UTC (a Saturday).
EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
#: Datasheet: UIP rises 244 µs before the update cycle.
UIP_WINDOW_NS = 244_000

REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
REG_B_24H = 0x02
REG_B_BINARY = 0x04
REG_B_SET = 0x80
CENTURY = 0x32
#: Seconds, minutes, hours, day of week, day, month, year, century (0x01, 0x03, 0x05
#: are the alarm registers: plain RAM).
TIME_FIELDS = frozenset((0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, CENTURY))

#: Bytes QEMU's pc_cmos_init sets for the default machine (besides memory sizes).
QEMU_DEFAULTS = {
    0x10: 0x50,   # floppy drive types
    0x14: 0x07,   # equipment byte
    0x38: 0x30,   # boot flags
    0x3D: 0x12,   # boot order
}


def memory_bytes(ram_size: int) -> dict[int, int]:
    """The CMOS memory-size bytes QEMU writes for `ram_size` bytes of RAM."""
    base_kib = 640
    ext_kib = min(max(ram_size // 1024 - 1024, 0), 0xFFFF)
    above_16m = min(max((ram_size - 16 * MiB) // (64 * 1024), 0), 0xFFFF)
    return {
        0x15: base_kib & 0xFF, 0x16: base_kib >> 8,
        0x17: ext_kib & 0xFF, 0x18: ext_kib >> 8,
        0x30: ext_kib & 0xFF, 0x31: ext_kib >> 8,
        0x34: above_16m & 0xFF, 0x35: above_16m >> 8,
    }


def _zero() -> int:
    return 0


class Cmos:
    def __init__(self, ram_size: int, clock: Callable[[], int] = _zero, *, name: str = "cmos") -> None:
        self.name = name
        self.ports = (range(CMOS_BASE, CMOS_BASE + 2),)
        self.clock = clock
        self.ram = bytearray(128)
        self.ram[REG_A] = 0x26
        self.ram[REG_B] = REG_B_24H
        self.ram[REG_D] = 0x80
        for index, value in (QEMU_DEFAULTS | memory_bytes(ram_size)).items():
            self.ram[index] = value
        self.index = 0
        #: Bit 7 of the last index write: NMI masked (there are no NMI sources to mask).
        self.nmi_disabled = False

    def io_read(self, port: int, size: int) -> int:
        if port == CMOS_BASE:
            return 0xFF
        index = self.index
        if index in TIME_FIELDS:
            return self._time_field(index)
        if index == REG_A:
            value = self.ram[REG_A]
            if self.clock() % 1_000_000_000 >= 1_000_000_000 - UIP_WINDOW_NS:
                value |= 0x80
            return value
        if index == REG_C:
            return 0   # no interrupt flags ever set; reading would clear them
        return self.ram[index]

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == CMOS_BASE:
            self.index = value & 0x7F
            self.nmi_disabled = bool(value & 0x80)
            return
        index = self.index
        if index in TIME_FIELDS or index in (REG_C, REG_D):
            return     # the clock cannot be set; C and D are read-only
        if index == REG_A:
            value &= 0x7F  # UIP is read-only
        self.ram[index] = value

    def tick(self, now_ns: int) -> None:
        """No RTC interrupts are modelled."""

    def now(self) -> datetime.datetime:
        """The guest's wall-clock time: `EPOCH` plus virtual seconds."""
        return EPOCH + datetime.timedelta(seconds=self.clock() // 1_000_000_000)

    def _time_field(self, index: int) -> int:
        t = self.now()
        reg_b = self.ram[REG_B]
        if index == 0x00:
            value = t.second
        elif index == 0x02:
            value = t.minute
        elif index == 0x04:
            hour = t.hour
            if not reg_b & REG_B_24H:
                pm = 0x80 if hour >= 12 else 0
                hour = hour % 12 or 12
                return self._encode(hour, reg_b) | pm
            value = hour
        elif index == 0x06:
            value = (t.weekday() + 1) % 7 + 1    # 1 = Sunday
        elif index == 0x07:
            value = t.day
        elif index == 0x08:
            value = t.month
        elif index == 0x09:
            value = t.year % 100
        else:
            value = t.year // 100
        return self._encode(value, reg_b)

    @staticmethod
    def _encode(value: int, reg_b: int) -> int:
        if reg_b & REG_B_BINARY:
            return value
        return ((value // 10) << 4) | (value % 10)
