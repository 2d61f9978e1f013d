"""Port 0x92, "system control port A" (PS/2 fast A20 gate and fast reset), as QEMU's pc
machine has it (hw/i386/pc.c: port92): bit 1 is the A20 gate (reads 0x02 at entry,
measured), writing bit 0 as 1 resets the machine (`on_reset`). A20 is always on under
ring1 (Unicorn does not wrap at 1 MiB), so the bit is only stored.
"""

from __future__ import annotations

from collections.abc import Callable

PORT = 0x92


def _none() -> None:
    return None


class Port92:
    def __init__(self, on_reset: Callable[[], None] = _none, *, name: str = "port92") -> None:
        self.name = name
        self.ports = (range(PORT, PORT + 1),)
        self.on_reset = on_reset
        self.value = 0x02

    def io_read(self, port: int, size: int) -> int:
        return self.value

    def io_write(self, port: int, size: int, value: int) -> None:
        self.value = value & 0xFE
        if value & 1:
            self.on_reset()

    def tick(self, now_ns: int) -> None:
        """Not timed."""
