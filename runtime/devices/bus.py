"""The I/O-port bus and the MMIO bus: map ports / physical addresses to devices,
refuse overlaps.

Firecracker's rules: two devices may not claim the same port (a wiring bug in the
VMM, so `InternalError`), and guest misbehaviour is counted, never fatal. An access
to a port nobody claims is counted per port and logged once per port; a read
returns all ones of the access size, which is what a floating ISA data bus reads
on a PC and what QEMU returns for unassigned ports.

The lookup is one dict access per IN/OUT: the table is built per port at
registration time (64 Ki ports at most, a few dozen in use).

`MmioBus` has the same rules for memory-mapped devices: ranges are page-aligned
(Unicorn maps MMIO by page), two devices may not overlap, and each range is handed
to Unicorn's `mmio_map` (runtime/mmio.py) so that loads and stores there reach the
device while the rest of physical memory stays plain RAM at full speed.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TypeVar

from bt.errors import InternalError
from bt.layout import PAGE_SIZE
from runtime.devices.base import ALL_ONES, Device, MmioDevice

log = logging.getLogger(__name__)

D = TypeVar("D", bound=Device)
M = TypeVar("M", bound=MmioDevice)


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


class MmioBus:
    """Physical address -> device dispatch for memory-mapped devices."""

    def __init__(self) -> None:
        #: (start, end, device) in address order.
        self._ranges: list[tuple[int, int, MmioDevice]] = []
        self.devices: list[MmioDevice] = []
        #: Loads and stores that reached a device, by device name.
        self.accesses: Counter[str] = Counter()

    def register(self, device: M) -> M:
        """Attach `device` at its `mmio` ranges; refuse an overlap or a range not page-aligned."""
        for r in device.mmio:
            if r.start % PAGE_SIZE or len(r) % PAGE_SIZE or not len(r) or r.stop > 1 << 32:
                raise InternalError(f"device {device.name}: MMIO range {r.start:#x}-{r.stop:#x} is not "
                                    "whole pages of the 32-bit space")
            for start, end, other in self._ranges:
                if r.start < end and start < r.stop:
                    raise InternalError(f"device {device.name}: MMIO {r.start:#x}-{r.stop:#x} overlaps "
                                        f"{other.name} at {start:#x}-{end:#x}")
        for r in device.mmio:
            self._ranges.append((r.start, r.stop, device))
        self._ranges.sort(key=lambda t: t[0])
        self.devices.append(device)
        return device

    @property
    def windows(self) -> tuple[tuple[int, int], ...]:
        """(start, size) of every range, for `mmio_map`."""
        return tuple((start, end - start) for start, end, _ in self._ranges)

    def device_at(self, addr: int) -> MmioDevice | None:
        for start, end, device in self._ranges:
            if start <= addr < end:
                return device
        return None

    def read(self, addr: int, size: int) -> int:
        mask = (1 << (8 * size)) - 1     # Unicorn may hand 8-byte accesses (MOVQ, CMPXCHG8B)
        device = self.device_at(addr)
        if device is None:
            return mask
        self.accesses[device.name] += 1
        return device.mmio_read(addr, size) & mask

    def write(self, addr: int, size: int, value: int) -> None:
        device = self.device_at(addr)
        if device is None:
            return
        self.accesses[device.name] += 1
        device.mmio_write(addr, size, value & ((1 << (8 * size)) - 1))

    def tick(self, now_ns: int) -> None:
        for device in self.devices:
            device.tick(now_ns)
