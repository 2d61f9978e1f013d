"""QEMU's isa-debug-exit device (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`).

A write of value V, of any size, at any of its ports ends the run with exit status
`(V << 1) | 1`, exactly as QEMU's hw/misc/debugexit.c calls `exit((val << 1) | 1)`,
so the status is always odd and never collides with ring1's own even exit codes
(bt/errors.py). As with any process, the shell sees the status modulo 256
(`exit_code`). Reads return 0, as QEMU's `debug_exit_read` does.

The device never raises across Unicorn: it records the status in `exit_status`
and calls `on_exit` (if given) so the run loop can stop emulation and check the
field after each exit.
"""

from __future__ import annotations

from collections.abc import Callable

DEBUG_EXIT_BASE = 0xF4
DEBUG_EXIT_SIZE = 4


class DebugExit:
    def __init__(self, on_exit: Callable[[int], None] | None = None, *,
                 base: int = DEBUG_EXIT_BASE, size: int = DEBUG_EXIT_SIZE) -> None:
        self.name = "isa-debug-exit"
        self.ports = (range(base, base + size),)
        self.on_exit = on_exit
        #: `(V << 1) | 1` once the guest has written V; None while it runs.
        self.exit_status: int | None = None
        #: The value V the guest wrote.
        self.value: int | None = None

    @property
    def exit_code(self) -> int | None:
        """The process exit code QEMU ends with: the status modulo 256."""
        return None if self.exit_status is None else self.exit_status & 0xFF

    def io_read(self, port: int, size: int) -> int:
        return 0

    def io_write(self, port: int, size: int, value: int) -> None:
        if self.exit_status is not None:
            return  # the first write ends the run; QEMU would be gone already
        self.value = value
        self.exit_status = (value << 1) | 1
        if self.on_exit is not None:
            self.on_exit(self.exit_status)

    def tick(self, now_ns: int) -> None:
        """Not timed."""
