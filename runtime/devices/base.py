"""The one shape every emulated device has (Firecracker's devices/legacy is the model).

A port device claims port ranges and answers reads and writes of 1, 2 or 4 bytes at
those ports; a memory-mapped device (`MmioDevice`: the local APIC, the I/O APIC)
claims physical address ranges and answers loads and stores there in the same way.
Both are told the virtual time now and then (`tick`) so that time-driven devices (the
PIT, the APIC timer) can raise their interrupt lines. Interrupt sources do not know
the interrupt controllers: they get an `IrqLine` callable at construction,
`irq(line, level)` (runtime/devices/intc.py routes an ISA line to the 8259 and the
I/O APIC, as the PC wires it).

`io_read`/`io_write` run on the VMM's hot path (one call per guest IN/OUT), so
devices keep them allocation-free and never log from them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

#: How an interrupt source drives an ISA interrupt line: `irq(line, level)`, with
#: level True for asserted. Edge-triggered consumers (the 8259A in its PC
#: configuration) latch a request on the rising edge.
IrqLine = Callable[[int, bool], None]

#: Access sizes of IN/OUT in bytes and the all-ones value a floating ISA bus reads.
ALL_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}


@runtime_checkable
class Device(Protocol):
    """An I/O-port device on the `IoBus`."""

    # Read-only properties, so that a plain attribute of a narrower type satisfies them.
    @property
    def name(self) -> str:
        """Short name for statistics and logs ("uart16550", "pic8259"...)."""
        ...

    @property
    def ports(self) -> tuple[range, ...]:
        """The ports the device answers; the bus refuses two devices that overlap."""
        ...

    def io_read(self, port: int, size: int) -> int:
        """Value of an IN of `size` bytes at `port`; the bus masks it to the size."""
        ...

    def io_write(self, port: int, size: int, value: int) -> None:
        """An OUT of `size` bytes of `value` at `port`."""
        ...

    def tick(self, now_ns: int) -> None:
        """Virtual time has reached `now_ns`; raise whatever interrupts fell due."""
        ...


@runtime_checkable
class MmioDevice(Protocol):
    """A memory-mapped device on the `MmioBus`: loads and stores in its physical ranges
    reach it instead of RAM (Unicorn `mmio_map`)."""

    @property
    def name(self) -> str:
        ...

    @property
    def mmio(self) -> tuple[range, ...]:
        """Physical address ranges, each page-aligned (Unicorn maps whole pages)."""
        ...

    def mmio_read(self, addr: int, size: int) -> int:
        """A load of `size` (1, 2, 4) bytes at physical `addr`."""
        ...

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        """A store of `size` bytes of `value` at physical `addr`."""
        ...

    def tick(self, now_ns: int) -> None:
        ...


def no_irq(line: int, level: bool) -> None:
    """An `IrqLine` that goes nowhere: for devices built without a PIC (tests, tools)."""
