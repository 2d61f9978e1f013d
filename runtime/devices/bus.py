"""The I/O-port bus: maps port numbers to devices, refuses overlaps.

Firecracker's rules: two devices may not claim the same port (a wiring bug in the
VMM, so `InternalError`), and guest misbehaviour is counted, never fatal. An access
to a port nobody claims is counted per port and logged once per port; a read
returns all ones of the access size, which is what a floating ISA data bus reads
on a PC and what QEMU returns for unassigned ports.

The lookup is one dict access per IN/OUT: the table is built per port at
registration time (64 Ki ports at most, a few dozen in use).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TypeVar

from bt.errors import InternalError
from runtime.devices.base import ALL_ONES, Device

log = logging.getLogger(__name__)

D = TypeVar("D", bound=Device)


class IoBus:
    """Port -> device dispatch for guest IN/OUT/INS/OUTS."""

    def __init__(self) -> None:
        self._by_port: dict[int, Device] = {}
        self.devices: list[Device] = []
        #: Accesses to unclaimed ports, by port (reads and writes together).
        self.unknown: Counter[int] = Counter()
        #: Accesses that reached a device, by device name.
        self.accesses: Counter[str] = Counter()

    def register(self, device: D) -> D:
        """Attach `device` at its `ports`; refuse a port another device claims."""
        for r in device.ports:
            for port in r:
                if not 0 <= port <= 0xFFFF:
                    raise InternalError(f"device {device.name}: port {port:#x} outside 0-0xffff")
                other = self._by_port.get(port)
                if other is not None:
                    raise InternalError(
                        f"device {device.name}: port {port:#x} already belongs to {other.name}")
        for r in device.ports:
            for port in r:
                self._by_port[port] = device
        self.devices.append(device)
        return device

    def device_at(self, port: int) -> Device | None:
        return self._by_port.get(port)

    def read(self, port: int, size: int) -> int:
        """An IN of `size` (1, 2, 4) bytes at `port`: the device's value masked to the size."""
        device = self._by_port.get(port)
        if device is None:
            self._unknown(port, size, None)
            return ALL_ONES[size]
        self.accesses[device.name] += 1
        return device.io_read(port, size) & ALL_ONES[size]

    def write(self, port: int, size: int, value: int) -> None:
        """An OUT of `size` bytes of `value` at `port`."""
        device = self._by_port.get(port)
        if device is None:
            self._unknown(port, size, value)
            return
        self.accesses[device.name] += 1
        device.io_write(port, size, value & ALL_ONES[size])

    def tick(self, now_ns: int) -> None:
        """Tell every device virtual time has reached `now_ns`."""
        for device in self.devices:
            device.tick(now_ns)

    def _unknown(self, port: int, size: int, value: int | None) -> None:
        # Counted every time, logged the first time only: a guest probing a port in a
        # loop must neither flood the log nor slow down.
        self.unknown[port] += 1
        if self.unknown[port] == 1:
            if value is None:
                log.info("unassigned I/O port %#06x: IN size %d reads all ones", port, size)
            else:
                log.info("unassigned I/O port %#06x: OUT size %d value %#x ignored", port, size, value)
