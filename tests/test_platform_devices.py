"""Unit tests of the PC platform devices (runtime/devices/: lapic, ioapic, intc, i8042,
keymap, vga, ide, disk, port92, the MMIO bus) and of the firmware tables (runtime/firmware.py).
What a guest sees of them end to end is checked against QEMU in tests/test_platform_qemu.py."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from bt.errors import InputError, InternalError
from runtime import firmware
from runtime.devices import keymap
from runtime.devices.bus import MmioBus
from runtime.devices.disk import DiskImage, chs_geometry
from runtime.devices.i8042 import BYTE_GAP_NS, I8042
from runtime.devices.ide import IdeChannel, identify_words
from runtime.devices.intc import InterruptController
from runtime.devices.ioapic import IOAPIC_BASE, IoApic
from runtime.devices.lapic import LAPIC_BASE, LocalApic
from runtime.devices.pic8259 import Pic8259
from runtime.devices.port92 import Port92
from runtime.devices.vga import CP437, Vga, render_screen


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


class Lines:
    def __init__(self) -> None:
        self.levels: dict[int, bool] = {}
        self.edges: list[int] = []

    def __call__(self, line: int, level: bool) -> None:
        if level and not self.levels.get(line):
            self.edges.append(line)
        self.levels[line] = level


def lapic_reg(apic: LocalApic, offset: int) -> int:
    return apic.mmio_read(LAPIC_BASE + offset, 4)


def lapic_set(apic: LocalApic, offset: int, value: int) -> None:
    apic.mmio_write(LAPIC_BASE + offset, 4, value)


# -- MMIO bus ---------------------------------------------------------------------------

def test_mmio_bus_refuses_overlap_and_partial_pages() -> None:
    bus = MmioBus()
    apic = bus.register(LocalApic(Clock()))
    with pytest.raises(InternalError, match="overlaps lapic"):
        bus.register(LocalApic(Clock(), name="second"))
    odd = LocalApic(Clock(), name="odd")
    odd.mmio = (range(0xFED00010, 0xFED01010),)
    with pytest.raises(InternalError, match="whole pages"):
        bus.register(odd)
    assert bus.windows == ((LAPIC_BASE, 0x1000),)
    assert bus.read(LAPIC_BASE + 0x30, 4) == 0x00050014 and bus.accesses["lapic"] == 1
    assert bus.device_at(LAPIC_BASE + 0xFFF) is apic and bus.device_at(0xFEB00000) is None


# -- local APIC -------------------------------------------------------------------------

def test_lapic_state_as_seabios_leaves_it() -> None:
    apic = LocalApic(Clock())
    assert [lapic_reg(apic, r) for r in (0x20, 0x30, 0xE0, 0xF0, 0x300, 0x320, 0x350, 0x360, 0x370)] == [
        0, 0x00050014, 0xFFFFFFFF, 0x1FF, 0x000C4610, 0x10000, 0x8700, 0x8400, 0x10000]
    assert apic.accepts_pic()


def test_lapic_narrow_and_illegal_accesses() -> None:
    apic = LocalApic(Clock())
    assert apic.mmio_read(LAPIC_BASE + 0x30, 2) == 0         # narrower than 32 bits: 0 (QEMU)
    apic.mmio_write(LAPIC_BASE + 0x80, 1, 0xFF)              # ignored
    assert lapic_reg(apic, 0x80) == 0
    assert lapic_reg(apic, 0x40) == 0 and lapic_reg(apic, 0x280) == 0x80     # ESR: illegal register
    lapic_set(apic, 0x280, 0)                                 # ESR writes are ignored, as in QEMU
    assert lapic_reg(apic, 0x280) == 0x80


def test_lapic_timer_one_shot_and_periodic_follow_qemu() -> None:
    clock = Clock()
    apic = LocalApic(clock)
    lapic_set(apic, 0x3E0, 0xB)                               # divide by 1
    lapic_set(apic, 0x320, 0x40)                              # one-shot, vector 0x40
    lapic_set(apic, 0x380, 1000)
    assert apic.next_event_ns() == 1001                       # (count + 1) << shift, as QEMU
    clock.now = 500
    assert lapic_reg(apic, 0x390) == 500
    clock.now = 1001
    apic.tick(1001)
    assert apic.irr == 1 << 0x40 and apic.next_event_ns() is None and lapic_reg(apic, 0x390) == 0
    apic.irr = 0
    clock.now = 2000
    lapic_set(apic, 0x3E0, 0x1)                               # divide by 4
    lapic_set(apic, 0x320, 0x20041)                           # periodic, vector 0x41
    lapic_set(apic, 0x380, 99)
    assert apic.next_event_ns() == 2000 + 400
    apic.tick(2000 + 400 * 5 + 10)                            # five periods stepped over: one interrupt
    assert apic.irr == 1 << 0x41 and apic.timer_irqs == 2
    assert apic.next_event_ns() == 2000 + 400 * 6
    lapic_set(apic, 0x320, 0x30041)                           # masked: not armed
    assert apic.next_event_ns() is None


def test_lapic_priority_eoi_and_level_broadcast() -> None:
    apic = LocalApic(Clock())
    eois: list[int] = []
    apic.on_eoi = eois.append
    apic.accept(0x45)
    apic.accept(0x61, level=True)
    assert apic.pending_vector() == 0x61 and apic.acknowledge() == 0x61
    assert apic.ppr() == 0x60 and apic.pending_vector() == -1     # 0x45 is below the class in service
    lapic_set(apic, 0xB0, 0)
    assert eois == [0x61]                                     # level-triggered: the I/O APIC is told
    lapic_set(apic, 0x80, 0x50)                               # TPR 0x50 holds back class 4
    assert apic.pending_vector() == -1 and lapic_reg(apic, 0xA0) == 0x50
    lapic_set(apic, 0x80, 0)
    assert apic.acknowledge() == 0x45
    lapic_set(apic, 0xB0, 0)
    assert eois == [0x61] and apic.isr == 0
    lapic_set(apic, 0xF0, 0x0FF)                              # software-disabled: nothing delivered
    apic.accept(0x70)
    assert apic.pending_vector() == 0


def test_lapic_ipis_to_this_cpu_only() -> None:
    apic = LocalApic(Clock())
    lapic_set(apic, 0x300, (1 << 18) | 0x55)                  # self
    lapic_set(apic, 0x310, 0x01000000)
    lapic_set(apic, 0x300, 0x56)                              # physical destination 1: another CPU
    lapic_set(apic, 0x300, (3 << 18) | 0x57)                  # all but self
    lapic_set(apic, 0x300, (2 << 18) | 0x4500)                # INIT to all: no other CPU, nothing
    lapic_set(apic, 0x300, (3 << 18) | 0x4610)                # STARTUP
    assert apic.irr == 1 << 0x55 and apic.ipis == 1
    lapic_set(apic, 0xD0, 0x02000000)                         # logical ID bit 1, flat model
    lapic_set(apic, 0x310, 0x02000000)
    lapic_set(apic, 0x300, (1 << 11) | 0x58)
    assert apic.irr >> 0x58 & 1
    assert lapic_reg(apic, 0x300) & (1 << 12) == 0            # delivery status always idle


# -- I/O APIC and the interrupt controller ---------------------------------------------------

def ioapic_set(io: IoApic, reg: int, value: int) -> None:
    io.mmio_write(IOAPIC_BASE, 4, reg)
    io.mmio_write(IOAPIC_BASE + 0x10, 4, value)


def ioapic_get(io: IoApic, reg: int) -> int:
    io.mmio_write(IOAPIC_BASE, 4, reg)
    return io.mmio_read(IOAPIC_BASE + 0x10, 4)


def test_ioapic_registers_and_isa_routing() -> None:
    apic = LocalApic(Clock())
    io = IoApic(apic)
    assert [ioapic_get(io, r) for r in (0, 1, 2, 0x10, 0x11)] == [0, 0x170020, 0, 0x10000, 0]
    ioapic_set(io, 0x10 + 2 * 2, 0x30)                        # pin 2: the PIT's IRQ 0
    io.set_irq(0, True)
    io.set_irq(0, False)
    assert apic.irr == 1 << 0x30 and io.delivered[2] == 1
    io.set_irq(1, True)                                       # masked edge: lost
    ioapic_set(io, 0x10 + 2 * 1, 0x31)
    assert apic.irr == 1 << 0x30
    ioapic_set(io, 0x10 + 2 * 1, 0x12345 | 0x4000 | 0x1000)  # read-only bits keep their value
    assert ioapic_get(io, 0x12) == 0x12345 & ~0x1000 & ~0x4000 | 0  # edge: no remote IRR


def test_ioapic_level_remote_irr_until_eoi() -> None:
    apic = LocalApic(Clock())
    io = IoApic(apic)
    ioapic_set(io, 0x10 + 2 * 4, 0x8000 | 0x44)               # level, vector 0x44
    io.set_irq(4, True)
    assert apic.acknowledge() == 0x44 and ioapic_get(io, 0x18) & 0x4000
    io.set_irq(4, True)                                       # still high: held by remote IRR
    assert not apic.irr
    lapic_set(apic, 0xB0, 0)                                  # EOI: remote IRR clears, line still high
    assert apic.irr == 1 << 0x44 and ioapic_get(io, 0x18) & 0x4000
    assert apic.acknowledge() == 0x44
    io.set_irq(4, False)
    lapic_set(apic, 0xB0, 0)
    assert not apic.irr and not ioapic_get(io, 0x18) & 0x4000


def test_intc_pic_through_lint0_and_apic_priority() -> None:
    pic = Pic8259()
    pic.bios_setup()
    pic.master.imr = 0
    apic = LocalApic(Clock())
    msr = [0xFEE00900]
    apic.base_msr = lambda: msr[0]
    intc = InterruptController(pic, apic, IoApic(apic))
    intc.set_irq(3, True)
    assert intc.pending() and intc.acknowledge() == 0x08 + 3  # the 8259 in virtual wire mode
    pic.io_write(0x20, 1, 0x20)                               # EOI at the 8259
    apic.accept(0x90)
    intc.set_irq(4, True)
    assert intc.acknowledge() == 0x08 + 4                     # ExtINT first: it ignores the APIC's priority
    assert intc.acknowledge() == 0x90
    pic.io_write(0x20, 1, 0x20)
    lapic_set(apic, 0x350, 0x10700)                           # LINT0 masked: the 8259 is cut off
    intc.set_irq(5, True)
    assert not intc.pending() and not intc.line_enabled(5)
    msr[0] = 0xFEE00100                                       # APIC globally disabled: the 8259 again
    assert intc.pending() and intc.line_enabled(5)


# -- i8042 and typing ----------------------------------------------------------------------------

def test_keymap_strokes_and_scan_codes() -> None:
    assert keymap.strokes("a") == [(0x1E, False), (0x1E, True)]
    assert keymap.strokes("A") == [(0x2A, False), (0x1E, False), (0x1E, True), (0x2A, True)]
    assert keymap.strokes("\n") == [(0x1C, False), (0x1C, True)]
    assert keymap.strokes("\x03") == [(0x1D, False), (0x2E, False), (0x2E, True), (0x1D, True)]
    assert keymap.strokes("é") == []
    assert keymap.scan_bytes((0x1E, True), set1=True) == b"\x9e"
    assert keymap.scan_bytes((0x1E, True), set1=False) == b"\xf0\x1c"
    assert all(len(keymap.strokes(chr(c))) for c in range(0x20, 0x7F))     # every printable ASCII


def test_i8042_typing_waits_for_irq1_and_the_guest() -> None:
    clock = Clock()
    lines = Lines()
    enabled = [False]
    kbd = I8042(lines, clock, irq_enabled=lambda line: enabled[0], start_delay_ns=5_000)
    assert kbd.type_text("hi") == 0 and kbd.type_text("é") == 1
    kbd.tick(100_000)
    assert kbd.next_event_ns() is None and not kbd.queue           # IRQ 1 masked: not ready
    enabled[0] = True
    clock.now = 200_000
    kbd.tick(200_000)                                             # ready now: first key 5 us later
    assert kbd.next_event_ns() == 205_000 and not kbd.queue
    kbd.tick(205_000)
    assert kbd.io_read(0x64, 1) & 1 and lines.edges == [1]
    kbd.tick(300_000)                                             # not read yet: nothing more
    assert len(kbd.queue) == 1
    clock.now = 310_000
    assert kbd.io_read(0x60, 1) == 0x23                           # 'h' make, set 1
    assert kbd.next_event_ns() == 310_000 + BYTE_GAP_NS
    kbd.tick(310_000 + BYTE_GAP_NS)
    assert kbd.io_read(0x60, 1) == 0xA3 and lines.edges == [1, 1]  # one edge per byte


def test_i8042_set2_without_translation_and_commands() -> None:
    kbd = I8042()
    kbd.io_write(0x64, 1, 0x60)
    kbd.io_write(0x60, 1, 0x01)                                   # translation off
    kbd.type_text("a")
    kbd.tick(0)
    got = []
    for _ in range(3):
        got.append(kbd.io_read(0x60, 1))
        kbd.tick(10 * BYTE_GAP_NS * (len(got) + 1))
    assert got == [0x1C, 0xF0, 0x1C]
    kbd.io_write(0x60, 1, 0xF0)
    kbd.io_write(0x60, 1, 0x00)                                   # the first ACK is dropped (QEMU 7.2)
    assert [kbd.io_read(0x60, 1), kbd.io_read(0x60, 1)] == [0xFA, 0x02]


def test_reset_requests() -> None:
    resets: list[str] = []
    kbd = I8042(on_reset=lambda: resets.append("kbd"))
    kbd.io_write(0x64, 1, 0xFE)
    port = Port92(on_reset=lambda: resets.append("92"))
    assert port.io_read(0x92, 1) == 0x02
    port.io_write(0x92, 1, 0x03)
    assert resets == ["kbd", "92"]


# -- VGA -------------------------------------------------------------------------------------------

def test_screen_format() -> None:
    cells = bytearray(b"\0\x07" * 2000)
    for i, ch in enumerate(b"Hi \x01\xdb\x7f  "):
        cells[2 * i] = ch
    cells[2 * 80] = 0xFF                                          # NBSP is not stripped: only spaces are
    text = render_screen(bytes(cells))
    lines = text.split("\n")
    assert len(lines) == 26 and lines[-1] == "" and lines[0] == "Hi ☺█⌂" and lines[1] == "\xa0"
    assert all(line == "" for line in lines[2:25])
    assert len(CP437) == 256 and CP437[0] == " " and CP437[0xB3] == "│"


def test_vga_crtc_status_and_start_address() -> None:
    vga = Vga()
    vga.io_write(0x3D4, 2, 0x1234 & 0xFF00 | 0x0E)                # OUTW: index 0x0E, data 0x12
    assert vga.io_read(0x3D5, 1) == 0x12 and vga.io_read(0x3D4, 1) == 0x0E
    vga.io_write(0x3D4, 1, 0x00)
    vga.io_write(0x3D5, 1, 0x00)                                  # protected by CR11 bit 7
    assert vga.crtc[0] == 0x5F
    assert [vga.io_read(0x3DA, 1) for _ in range(3)] == [0x09, 0x00, 0x09]
    assert vga.io_read(0x3BA, 1) == 0xFF and vga.io_read(0x3CC, 1) == 0x67
    vga.crtc[0x0C], vga.crtc[0x0D] = 0x3F, 0xFF                   # start near the window's end: wraps
    window = bytes(range(256)) * 128
    cells = vga.visible_cells(window)
    assert len(cells) == 4000 and cells[:2] == window[0x7FFE:0x8000] and cells[2:4] == window[:2]


# -- disks and IDE -----------------------------------------------------------------------------------

def test_disk_overlay_keeps_the_file(tmp_path: Path) -> None:
    path = tmp_path / "d.img"
    path.write_bytes(bytes(range(256)) * 4 + b"tail")
    disk = DiskImage(path)
    assert disk.sectors == 2
    disk.write(1, b"\xaa" * 512)
    assert disk.read(0, 2)[512:] == b"\xaa" * 512
    disk.close()
    assert path.read_bytes()[512:1024] == bytes(range(256)) * 2
    writable = DiskImage(path, writable=True)
    writable.write(1, b"\xbb" * 512)
    writable.close()
    assert path.read_bytes()[512:1024] == b"\xbb" * 512
    (tmp_path / "small.img").write_bytes(b"x" * 100)
    with pytest.raises(InputError, match="at least one 512-byte sector"):
        DiskImage(tmp_path / "small.img")
    with pytest.raises(InputError, match="no such file"):
        DiskImage(tmp_path / "none.img")


def test_identify_and_geometry() -> None:
    assert chs_geometry(100) == (2, 16, 63) and chs_geometry(10_000) == (9, 16, 63)
    words = struct.unpack("<256H", identify_words(2048, 0, 16))
    assert words[1] == 2 and words[3] == 16 and words[6] == 63 and words[47] == 0x8010
    assert (words[61] << 16 | words[60]) == 2048 and words[59] == 0x110
    raw = identify_words(2048, 1, 16)
    unswap = lambda b: bytes(b[i ^ 1] for i in range(len(b))).rstrip()  # noqa: E731 (ATA strings)
    assert unswap(raw[20:40]) == b"QM00002" and unswap(raw[54:94]) == b"QEMU HARDDISK"


def test_ide_no_disk_reads_zero_and_ignores_commands(tmp_path: Path) -> None:
    lines = Lines()
    ide = IdeChannel((), lines)
    ide.io_write(0x1F7, 1, 0xEC)
    assert [ide.io_read(p, 1) for p in range(0x1F1, 0x1F8)] == [0] * 7 and not lines.edges


def test_ide_pio_read_is_timed(tmp_path: Path) -> None:
    path = tmp_path / "d.img"
    path.write_bytes(b"".join(bytes([n]) * 512 for n in range(8)))
    clock = Clock()
    lines = Lines()
    ide = IdeChannel((DiskImage(path),), lines, clock, latency_ns=1000)
    ide.io_write(0x1F6, 1, 0xE0)
    ide.io_write(0x1F2, 1, 2)
    ide.io_write(0x1F3, 1, 3)
    ide.io_write(0x1F7, 1, 0x20)
    assert ide.io_read(0x3F6, 1) & 0x80 and ide.next_event_ns() == 1000     # busy
    ide.tick(1000)
    assert lines.edges == [14] and ide.io_read(0x1F7, 1) == 0x58 and not lines.levels[14]
    first = [ide.io_read(0x1F0, 2) for _ in range(256)]
    assert first == [0x0303] * 256 and ide.io_read(0x1F2, 1) == 1 and ide.io_read(0x1F3, 1) == 4
    clock.now = 5000
    ide.tick(6000)
    assert ide.io_read(0x1F0, 4) == 0x04040404


def test_ide_secondary_channel_is_empty() -> None:
    ide = IdeChannel((), base=0x170, control=0x376, irq_line=15)
    assert ide.io_read(0x177, 1) == 0 and ide.io_read(0x170, 1) == 0


# -- firmware tables ----------------------------------------------------------------------------------

def test_mp_tables_checksums_and_entries() -> None:
    fp, table = firmware.mp_floating_pointer(), firmware.mp_config_table()
    assert fp[:4] == b"_MP_" and sum(fp) % 256 == 0
    assert struct.unpack_from("<I", fp, 4)[0] == firmware.MP_CONFIG
    assert table[:4] == b"PCMP" and sum(table) % 256 == 0
    assert len(table) == struct.unpack_from("<H", table, 4)[0]
    assert struct.unpack_from("<H", table, 34)[0] == 19        # entries: 1 CPU, 2 buses, 1 I/O APIC, 13 + 2
    assert firmware.MP_FLOATING % 16 == 0 and firmware.MP_FLOATING + 16 == firmware.MP_CONFIG


@pytest.mark.parametrize(("mib", "line"), [
    (2, "PMM+0018F100+00000000"), (16, "PMM+00F8F100+00ECF100"), (64, "PMM+02FCF100+02F0F100"),
    (3000, "PMM+BA7CF100+BA70F100")])
def test_banner_as_measured_under_qemu(mib: int, line: str) -> None:
    assert line in firmware.banner(mib << 20)[3]


def test_low_memory_bda_and_ebda() -> None:
    chunks = dict(firmware.low_memory(64 << 20, (2048, 100)))
    bda = chunks[firmware.BDA]
    assert struct.unpack_from("<HHH", bda, 0) == (0x3F8, 0, 0)
    assert struct.unpack_from("<H", bda, 0x0E)[0] == 0x9FC0
    assert struct.unpack_from("<H", bda, 0x13)[0] == 639 and bda[0x75] == 2
    ebda = chunks[firmware.EBDA]
    assert ebda[0] == 1 and struct.unpack_from("<HB", ebda, 0x3D) == (2, 16)
