"""Port 0x80, the POST-code port.

Firmware and kernels write progress codes here and Linux uses it as an I/O delay.
Writes are recorded (the last value, how many). What a read returns differs among
PCs; ring1 answers as QEMU does (its ioport80 reads 0xFF and ignores writes: measured
with qemu-system-i386 -m 64), since QEMU is the reference for guest-visible values.
`echo=True` makes reads return the last value written instead, as many real
chipsets' POST-card latches do.
"""

from __future__ import annotations

POST_PORT = 0x80


class Port80:
    def __init__(self, *, echo: bool = False, name: str = "port80") -> None:
        self.name = name
        self.ports = (range(POST_PORT, POST_PORT + 1),)
        self.echo = echo
        #: The last POST code written, None before the first write.
        self.last: int | None = None
        #: Writes so far (a guest using port 0x80 as an I/O delay makes many).
        self.writes = 0

    def io_read(self, port: int, size: int) -> int:
        if self.echo and self.last is not None:
            return self.last
        return 0xFF

    def io_write(self, port: int, size: int, value: int) -> None:
        self.last = value & 0xFF
        self.writes += 1

    def tick(self, now_ns: int) -> None:
        """Not timed."""
