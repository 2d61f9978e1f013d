"""The PC device set ring1 gives every guest, wired in one call.

    devices = build_standard_bus(sys.stdout.buffer, ram_size, clock, on_exit=stop)
    value = devices.bus.read(port, size)         # from the IN/OUT hook
    value = devices.mmio.read(addr, size)        # from the MMIO hook (runtime/mmio.py)
    devices.tick(now_ns)                         # as virtual time advances
    if devices.intc.pending(): vector = devices.intc.acknowledge()

Port map (the PC/AT's, as QEMU's `pc` machine has it): PIC 0x20-0x21/0xA0-0xA1,
PIT 0x40-0x43, i8042 0x60/0x64 (keyboard IRQ 1, mouse IRQ 12), speaker/channel-2 gate
0x61, CMOS 0x70-0x71, POST 0x80, system control port A 0x92, isa-debug-exit 0xF4-0xF7,
IDE primary 0x1F0-0x1F7/0x3F6 (IRQ 14), VGA 0x3B4-0x3B5/0x3BA/0x3C0-0x3CF/0x3D4-0x3D5/
0x3DA, COM1 0x3F8-0x3FF (IRQ 4). MMIO: I/O APIC 0xFEC00000, local APIC 0xFEE00000.
ISA lines go to the 8259 and the I/O APIC both (runtime/devices/intc.py).

`firmware=True` (the default) starts the PIC and PIT the way SeaBIOS leaves them
when QEMU jumps to a -kernel image, measured with qemu-system-i386 (a probe kernel
reading IMR, IRR/ISR and the read-back status at entry): vector bases 0x08 and
0x70, masks 0xB8 and 0x8E, PIT channel 0 in mode 2 with count 0x10000 (18.2 Hz).
A guest that programs its own PIC and PIT, as every sample does, sees no difference;
one that does not sees what it would see under QEMU. The APICs, the keyboard
controller, the IDE channel and the VGA always start in SeaBIOS's state (their
modules say what that is).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from runtime.devices.bus import IoBus, MmioBus
from runtime.devices.cmos import Cmos
from runtime.devices.debugexit import DebugExit
from runtime.devices.disk import DiskImage
from runtime.devices.i8042 import I8042
from runtime.devices.ide import SECONDARY_BASE, SECONDARY_CONTROL, SECONDARY_IRQ, IdeChannel
from runtime.devices.intc import InterruptController
from runtime.devices.ioapic import IoApic
from runtime.devices.lapic import LocalApic
from runtime.devices.pic8259 import Pic8259
from runtime.devices.pit8254 import TIMER_IRQ, Pit8254, SpeakerPort
from runtime.devices.port80 import Port80
from runtime.devices.port92 import Port92
from runtime.devices.uart16550 import Uart16550
from runtime.devices.vga import Vga

#: Interrupt masks SeaBIOS leaves (IRQ 0, 1, 2, 6 and 8, 12, 13, 14 enabled).
BIOS_MASTER_IMR = 0xB8
BIOS_SLAVE_IMR = 0x8E


def _none() -> None:
    return None


@dataclass(frozen=True)
class StandardDevices:
    bus: IoBus
    mmio: MmioBus
    pic: Pic8259
    lapic: LocalApic
    ioapic: IoApic
    intc: InterruptController
    pit: Pit8254
    speaker: SpeakerPort
    uart: Uart16550
    debug_exit: DebugExit
    port80: Port80
    port92: Port92
    cmos: Cmos
    kbd: I8042
    ide: IdeChannel
    ide2: IdeChannel
    vga: Vga

    def tick(self, now_ns: int) -> None:
        """Virtual time reached `now_ns`: the timers, the disk and the typist catch up."""
        self.pit.tick(now_ns)
        self.lapic.tick(now_ns)
        self.ide.tick(now_ns)
        self.kbd.tick(now_ns)

    def next_event_ns(self, now_ns: int) -> int | None:
        """When the next timed event falls due, or None if none will.

        Timed events: the PIT's IRQ0 (counted only while IRQ 0 can reach the CPU through
        the 8259 or the I/O APIC: a HLT with every source masked sleeps forever, as on a
        PC), the local APIC timer (only armed while unmasked), a disk transfer finishing,
        the next typed key. The result may be <= `now_ns`: an event is due and `tick` has
        not run yet.
        """
        events = [e for e in (self.lapic.next_event_ns(), self.ide.next_event_ns(), self.kbd.next_event_ns())
                  if e is not None]
        if self.intc.line_enabled(TIMER_IRQ):
            pit = self.pit.next_event_ns(now_ns)
            if pit is not None:
                events.append(pit)
        return min(events) if events else None

    def flush(self) -> None:
        self.uart.flush()

    def close(self) -> None:
        self.flush()
        self.ide.close()

    def counters(self) -> dict[str, int]:
        """Device statistics for `bt run --stats`: accesses per device, unassigned ports,
        interrupts raised and acknowledged, serial bytes, POST writes, APIC, disk and
        keyboard activity."""
        out = {f"io.{name}": n for name, n in sorted(self.bus.accesses.items())}
        out |= {f"mmio.{name}": n for name, n in sorted(self.mmio.accesses.items())}
        out |= {f"io.unassigned.{port:#06x}": n for port, n in sorted(self.bus.unknown.items())}
        out["pit.irq0"] = self.pit.irqs
        out |= {f"pic.ack.irq{irq}": n for irq, n in enumerate(self.pic.acks[:16]) if n}
        if self.pic.acks[16]:
            out["pic.ack.spurious"] = self.pic.acks[16]
        out |= {f"ioapic.pin{pin}": n for pin, n in enumerate(self.ioapic.delivered) if n}
        out |= {"lapic.timer": self.lapic.timer_irqs, "lapic.ipi": self.lapic.ipis,
                "lapic.eoi": self.lapic.eois}
        out["uart.tx_bytes"] = self.uart.tx_bytes
        out["port80.writes"] = self.port80.writes
        out |= {"kbd.typed_bytes": self.kbd.typed_bytes, "kbd.reads": self.kbd.reads}
        out |= {"ide.commands": self.ide.commands, "ide.irqs": self.ide.irqs}
        for drive in self.ide.drives:
            if drive.disk is not None:
                out[f"ide.{drive.unit}.sectors_read"] = drive.disk.reads
                out[f"ide.{drive.unit}.sectors_written"] = drive.disk.writes
        return out


def build_standard_bus(serial_sink: BinaryIO | None, ram_size: int, clock: Callable[[], int], *,
                       on_exit: Callable[[int], None] | None = None, firmware: bool = True,
                       disks: tuple[DiskImage, ...] = (), key_delay_ns: int = 0,
                       on_reset: Callable[[], None] = _none) -> StandardDevices:
    """Build and register the PC devices. `clock()` returns virtual ns now; `on_exit(status)`
    is called (once) when the guest writes the isa-debug-exit port, `on_reset()` when it
    resets the machine (keyboard controller, port 0x92)."""
    pic = Pic8259()
    lapic = LocalApic(clock)
    ioapic = IoApic(lapic)
    intc = InterruptController(pic, lapic, ioapic)
    pit = Pit8254(clock, intc.set_irq)
    devices = StandardDevices(
        bus=IoBus(), mmio=MmioBus(), pic=pic, lapic=lapic, ioapic=ioapic, intc=intc, pit=pit,
        speaker=SpeakerPort(pit), uart=Uart16550(serial_sink, intc.set_irq), debug_exit=DebugExit(on_exit),
        port80=Port80(), port92=Port92(on_reset), cmos=Cmos(ram_size, clock),
        kbd=I8042(intc.set_irq, clock, irq_enabled=intc.line_enabled, on_reset=on_reset,
                  start_delay_ns=key_delay_ns),
        ide=IdeChannel(disks, intc.set_irq, clock),
        ide2=IdeChannel((), intc.set_irq, clock, base=SECONDARY_BASE, control=SECONDARY_CONTROL,
                        irq_line=SECONDARY_IRQ, name="ide2"),
        vga=Vga(),
    )
    for device in (devices.pic, devices.pit, devices.kbd, devices.speaker, devices.cmos, devices.port80,
                   devices.port92, devices.debug_exit, devices.ide, devices.ide2, devices.vga, devices.uart):
        devices.bus.register(device)
    devices.mmio.register(ioapic)
    devices.mmio.register(lapic)
    if firmware:
        pic.bios_setup()
        pic.master.imr = BIOS_MASTER_IMR
        pic.slave.imr = BIOS_SLAVE_IMR
        pit.bios_setup()
    return devices
