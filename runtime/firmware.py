"""What the PC firmware leaves in low memory before a multiboot kernel runs.

Under QEMU's `pc` machine, SeaBIOS (1.16.2, Debian's build in QEMU 7.2) runs before
the -kernel image and leaves tables that small OSes read: the BIOS data area (BDA,
0x400: COM port addresses, the EBDA segment, the base memory size, the video state),
the extended BIOS data area (EBDA, 0x9FC00: its size and SeaBIOS's fixed-disk
parameter tables), the Intel MultiProcessor Specification 1.4 floating pointer and
configuration table in the F segment (one CPU, one I/O APIC, the PCI and ISA buses
and the interrupt routing; xv6's mpinit and Linux's MP parser read it), and the text
screen with the BIOS banners and the cursor below them.

Every byte here was measured with `tests/data/pcprobe.S`, a probe kernel that dumps
low memory over serial, under qemu-system-i386 -m 2 to 3000 and with 0, 1 and 2 IDE
disks; the test compares ring1's memory with QEMU's byte for byte
(tests/test_platform_qemu.py). What differs from QEMU on purpose:

* the BIOS tick count at 0x46C is 0 (midnight): QEMU's counts host time since
  midnight, ring1's clock starts at 2000-01-01 00:00:00 (runtime/devices/cmos.py);
* the interrupt vector table (0-0x3FF) is zero: no real-mode BIOS runs under ring1;
* no ACPI tables (no RSDP in the F segment): kernels fall back to the MP table, as
  Linux does when it finds no RSDP;
* fixed-disk parameter tables are written as SeaBIOS does for disks of at most 1024
  cylinders of 16 heads and 63 sectors (504 MiB); larger disks get the same simple
  geometry, where SeaBIOS would translate it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from bt.layout import MiB
from runtime.devices.disk import chs_geometry

BDA = 0x400
EBDA = 0x9FC00
#: The EBDA is 1 KiB (its first byte says so in KiB); the BDA holds its segment.
EBDA_KIB = 1
#: Where SeaBIOS 1.16.2 puts the MP floating pointer and the configuration table (F segment).
MP_FLOATING = 0xF5BA0
MP_CONFIG = 0xF5BB0
LAPIC_BASE = 0xFEE00000
IOAPIC_BASE = 0xFEC00000
#: The text screen and where SeaBIOS leaves the cursor: row 8, below its three banner lines.
TEXT_BASE = 0xB8000
TEXT_COLUMNS, TEXT_ROWS = 80, 25
CURSOR_ROW = 8
#: SeaBIOS's fixed-disk parameter tables, 16 bytes each, inside the EBDA (ide0 master, slave).
FDPT_OFFSET = 0x3D
FDPT_SIZE = 16


@dataclass(frozen=True)
class BdaField:
    offset: int
    fmt: str
    value: int
    why: str


#: The BIOS data area as SeaBIOS leaves it (IBM PC/AT BIOS listing; SeaBIOS src/std/bda.h).
BDA_FIELDS: tuple[BdaField, ...] = (
    BdaField(0x00, "<H", 0x3F8, "COM1 base port (COM2-4 absent)"),
    BdaField(0x08, "<H", 0x378, "LPT1 base port"),
    BdaField(0x0E, "<H", EBDA >> 4, "EBDA segment"),
    BdaField(0x10, "<H", 0x4227, "equipment word: floppy, FPU, 80x25 colour, one serial, one parallel port"),
    BdaField(0x13, "<H", EBDA // 1024, "base memory in KiB (639)"),
    BdaField(0x1A, "<H", 0x1E, "keyboard buffer head"),
    BdaField(0x1C, "<H", 0x1E, "keyboard buffer tail (empty)"),
    BdaField(0x49, "<B", 0x03, "video mode 3: 80x25 colour text"),
    BdaField(0x4A, "<H", TEXT_COLUMNS, "text columns"),
    BdaField(0x4C, "<H", 0x1000, "video page size"),
    BdaField(0x50, "<H", CURSOR_ROW << 8, "cursor of page 0: row 8, column 0"),
    BdaField(0x60, "<H", 0x0607, "cursor shape: scan lines 6-7"),
    BdaField(0x63, "<H", 0x3D4, "CRTC index port"),
    BdaField(0x6C, "<I", 0, "timer ticks since midnight (QEMU: host time; ring1: 0)"),
    BdaField(0x76, "<B", 0xC0, "fixed disk control byte"),
    BdaField(0x78, "<B", 0x14, "LPT1 timeout"),
    BdaField(0x7C, "<B", 0x0A, "COM1 timeout"),
    BdaField(0x80, "<H", 0x1E, "keyboard buffer start"),
    BdaField(0x82, "<H", 0x3E, "keyboard buffer end"),
    BdaField(0x84, "<B", TEXT_ROWS - 1, "text rows - 1"),
    BdaField(0x85, "<H", 16, "character height"),
    BdaField(0x87, "<B", 0x60, "video mode options"),
    BdaField(0x88, "<B", 0xF9, "EGA feature switches"),
    BdaField(0x89, "<B", 0x51, "VGA video flags"),
    BdaField(0x8A, "<B", 0x08, "display combination code index"),
    BdaField(0x8F, "<B", 0x07, "floppy controller information"),
    BdaField(0x96, "<B", 0x10, "keyboard status: 101/102-key keyboard"),
    BdaField(0xA8, "<I", 0xC0006820, "video save pointer table (far pointer into the VGA BIOS)"),
    BdaField(0xB9, "<H", 0x0340, "VGA BIOS private bytes"),
    BdaField(0xBC, "<H", 0x68C6, "VGA BIOS private bytes"),
)

#: MP configuration table (MP spec 1.4, chapter 4): what SeaBIOS's mptable_setup writes
#: for one CPU. Processor entry: APIC ID 0, version 0x14, enabled BSP, QEMU's default
#: CPU signature (family 6, model 6, stepping 3) and feature flags.
MP_CPU_SIGNATURE = 0x663
MP_CPU_FEATURES = 0x0781ABFD
LAPIC_VERSION = 0x14
IOAPIC_ID, IOAPIC_VERSION = 0, 0x11
MP_BUS_PCI, MP_BUS_ISA = 0, 1
#: I/O interrupt entries: (type, flags, source bus, source bus IRQ, I/O APIC pin). Type 0
#: is INT (vectored), 3 ExtINT, 1 NMI; flags 0 = conforming polarity and trigger, 1 =
#: active high. The two PCI entries are the PCI devices of QEMU's pc machine with an
#: interrupt pin (source IRQ = device << 2 | pin).
MP_IO_INTERRUPTS: tuple[tuple[int, int, int, int, int], ...] = (
    (0, 1, MP_BUS_PCI, 1 << 2, 9),
    (0, 1, MP_BUS_PCI, 3 << 2, 11),
    (0, 0, MP_BUS_ISA, 0, 2),          # the PIT's IRQ 0 on pin 2 (the override QEMU wires)
    *((0, 0, MP_BUS_ISA, irq, irq) for irq in (1, 3, 4, 6, 7, 8, 12, 13, 14, 15)),
)
#: Local interrupt entries: (type, flags, source bus, source IRQ, destination APIC, LINTn).
MP_LOCAL_INTERRUPTS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (3, 0, MP_BUS_ISA, 0, 0x00, 0),     # ExtINT (the 8259) on LINT0: virtual wire mode
    (1, 0, MP_BUS_ISA, 0, 0xFF, 1),     # NMI on LINT1 of every CPU
)


def _checksummed(data: bytearray, at: int) -> bytes:
    data[at] = (-sum(data)) & 0xFF
    return bytes(data)


def mp_config_table() -> bytes:
    entries = [struct.pack("<BBBBIIII", 0, 0, LAPIC_VERSION, 0x03, MP_CPU_SIGNATURE, MP_CPU_FEATURES, 0, 0)]
    entries += [struct.pack("<BB6s", 1, MP_BUS_PCI, b"PCI   "),
                struct.pack("<BB6s", 1, MP_BUS_ISA, b"ISA   ")]
    entries.append(struct.pack("<BBBBI", 2, IOAPIC_ID, IOAPIC_VERSION, 0x01, IOAPIC_BASE))
    entries += [struct.pack("<BBHBBBB", 3, t, f, bus, irq, IOAPIC_ID, pin)
                for t, f, bus, irq, pin in MP_IO_INTERRUPTS]
    entries += [struct.pack("<BBHBBBB", 4, t, f, bus, irq, dest, lint)
                for t, f, bus, irq, dest, lint in MP_LOCAL_INTERRUPTS]
    body = b"".join(entries)
    header = bytearray(struct.pack("<4sHBB8s12sIHHIHBB", b"PCMP", 44 + len(body), 4, 0, b"BOCHSCPU",
                                   b"0.1".ljust(12), 0, 0, len(entries), LAPIC_BASE, 0, 0, 0))
    return _checksummed(bytearray(header + body), 7)


def mp_floating_pointer() -> bytes:
    """MP spec 1.4 §4.1: "_MP_", the configuration table's address, length 1 (16 bytes),
    revision 4, checksum, no default configuration, no IMCR (virtual wire mode)."""
    return _checksummed(bytearray(struct.pack("<4sIBBBB4s", b"_MP_", MP_CONFIG, 1, 4, 0, 0, bytes(4))), 10)


def bda(disks: int) -> bytes:
    area = bytearray(0x100)
    for f in BDA_FIELDS:
        struct.pack_into(f.fmt, area, f.offset, f.value)
    area[0x75] = disks          # number of fixed disks SeaBIOS found
    return bytes(area)


def ebda(disk_sectors: Sequence[int]) -> bytes:
    area = bytearray(EBDA_KIB * 1024)
    area[0] = EBDA_KIB
    for i, sectors in enumerate(disk_sectors[:2]):
        cylinders, heads, spt = chs_geometry(sectors)
        # SeaBIOS fill_fdpt without translation: cylinders, heads, precompensation 0xFFFF,
        # control byte 0xC8 (more than 8 heads), landing zone = cylinders, sectors.
        fdpt = struct.pack("<HBBBHBBHBHBB", cylinders, heads, 0, 0, 0xFFFF, 0, 0xC8, 0, 0, cylinders, spt, 0)
        at = FDPT_OFFSET + i * FDPT_SIZE
        area[at:at + FDPT_SIZE] = fdpt
    return bytes(area)


def banner(ram_size: int) -> tuple[str, ...]:
    """The lines SeaBIOS and QEMU's iPXE option ROM print before the kernel runs. The PMM
    addresses iPXE shows depend on the RAM size (measured for -m 2 to 3000)."""
    pmm = ram_size - (0x70F00 if ram_size <= 32 * MiB else 0x1030F00)
    second = pmm - 0xC0000 if pmm - 0xC0000 >= 1 * MiB else 0
    return ("SeaBIOS (version 1.16.2-debian-1.16.2-1)", "", "",
            f"iPXE (http://ipxe.org) 00:03.0 CA00 PCI2.10 PnP PMM+{pmm:08X}+{second:08X} CA00",
            "", "", "", "Booting from ROM...")


def text_screen(ram_size: int) -> bytes:
    """80x25 character/attribute pairs: the banner in light grey on black (0x07), spaces after."""
    cells = bytearray(b" \x07" * (TEXT_COLUMNS * TEXT_ROWS))
    for row, line in enumerate(banner(ram_size)):
        for col, ch in enumerate(line.encode("ascii")):
            cells[2 * (row * TEXT_COLUMNS + col)] = ch
    return bytes(cells)


def low_memory(ram_size: int, disk_sectors: Sequence[int] = ()) -> tuple[tuple[int, bytes], ...]:
    """(physical address, bytes) of everything above, for the VMM to write before the kernel."""
    return (
        (BDA, bda(len(disk_sectors))),
        (EBDA, ebda(disk_sectors)),
        (TEXT_BASE, text_screen(ram_size)),
        (MP_FLOATING, mp_floating_pointer()),
        (MP_CONFIG, mp_config_table()),
    )
