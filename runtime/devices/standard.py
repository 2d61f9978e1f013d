"""The PC device set ring1 gives every guest, wired in one call.

    devices = build_standard_bus(sys.stdout.buffer, ram_size, clock, on_exit=stop)
    value = devices.bus.read(port, size)         # from the IN/OUT hook
    devices.tick(now_ns)                         # as virtual time advances
    if devices.pic.pending(): vector = devices.pic.acknowledge()

Port map (the PC/AT's, as QEMU's `pc` machine has it): PIC 0x20-0x21/0xA0-0xA1,
PIT 0x40-0x43, speaker/channel-2 gate 0x61, CMOS 0x70-0x71, POST 0x80,
isa-debug-exit 0xF4-0xF7, COM1 0x3F8-0x3FF (IRQ 4).

`firmware=True` (the default) starts the PIC and PIT the way SeaBIOS leaves them
when QEMU jumps to a -kernel image, measured with qemu-system-i386 (a probe kernel
reading IMR, IRR/ISR and the read-back status at entry): vector bases 0x08 and
0x70, masks 0xB8 and 0x8E, PIT channel 0 in mode 2 with count 0x10000 (18.2 Hz).
A guest that programs its own PIC and PIT, as every sample does, sees no difference;
one that does not sees what it would see under QEMU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from runtime.devices.bus import IoBus
from runtime.devices.cmos import Cmos
from runtime.devices.debugexit import DebugExit
from runtime.devices.pic8259 import Pic8259
from runtime.devices.pit8254 import TIMER_IRQ, Pit8254, SpeakerPort
from runtime.devices.port80 import Port80
from runtime.devices.uart16550 import Uart16550

#: Interrupt masks SeaBIOS leaves (IRQ 0, 1, 2, 6 and 8, 12, 13, 14 enabled).
BIOS_MASTER_IMR = 0xB8
BIOS_SLAVE_IMR = 0x8E


@dataclass(frozen=True)
class StandardDevices:
    bus: IoBus
    pic: Pic8259
    pit: Pit8254
    speaker: SpeakerPort
    uart: Uart16550
    debug_exit: DebugExit
    port80: Port80
    cmos: Cmos

    def tick(self, now_ns: int) -> None:
        """Virtual time reached `now_ns`: the PIT raises IRQ0 if a period ended."""
        self.pit.tick(now_ns)

    def next_event_ns(self, now_ns: int) -> int | None:
        """When the next interrupt that could wake a HLT falls due, or None if none will.

        Only the PIT makes timed events; its IRQ0 counts only while the master PIC
        leaves it unmasked (a HLT with every source masked sleeps forever, as on a PC).
        The result may be <= `now_ns`: an event is due and `tick` has not run yet.
        """
        if self.pic.master.imr & (1 << TIMER_IRQ):
            return None
        return self.pit.next_event_ns(now_ns)

    def flush(self) -> None:
        self.uart.flush()

    def counters(self) -> dict[str, int]:
        """Device statistics for `bt run --stats`: accesses per device, unassigned ports,
        interrupts raised and acknowledged, serial bytes, POST writes."""
        out = {f"io.{name}": n for name, n in sorted(self.bus.accesses.items())}
        out |= {f"io.unassigned.{port:#06x}": n for port, n in sorted(self.bus.unknown.items())}
        out["pit.irq0"] = self.pit.irqs
        out |= {f"pic.ack.irq{irq}": n for irq, n in enumerate(self.pic.acks[:16]) if n}
        if self.pic.acks[16]:
            out["pic.ack.spurious"] = self.pic.acks[16]
        out["uart.tx_bytes"] = self.uart.tx_bytes
        out["port80.writes"] = self.port80.writes
        return out


def build_standard_bus(serial_sink: BinaryIO | None, ram_size: int, clock: Callable[[], int], *,
                       on_exit: Callable[[int], None] | None = None,
                       firmware: bool = True) -> StandardDevices:
    """Build and register the PC devices. `clock()` returns virtual ns now; `on_exit(status)`
    is called (once) when the guest writes the isa-debug-exit port."""
    pic = Pic8259()
    pit = Pit8254(clock, pic.set_irq)
    devices = StandardDevices(
        bus=IoBus(), pic=pic, pit=pit, speaker=SpeakerPort(pit),
        uart=Uart16550(serial_sink, pic.set_irq), debug_exit=DebugExit(on_exit),
        port80=Port80(), cmos=Cmos(ram_size, clock),
    )
    for device in (devices.pic, devices.pit, devices.speaker, devices.cmos, devices.port80,
                   devices.debug_exit, devices.uart):
        devices.bus.register(device)
    if firmware:
        pic.bios_setup()
        pic.master.imr = BIOS_MASTER_IMR
        pic.slave.imr = BIOS_SLAVE_IMR
        pit.bios_setup()
    return devices
