"""The Linux 32-bit boot protocol loader (runtime/linuxboot.py) on a bzImage built here:
the zero page as QEMU's -kernel loader and the kernel's setup code leave it, the entry
state, the initrd's place, and one-line errors for what cannot be booted."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest

from bt import bzimage, layout
from bt.errors import InputError, UsageError
from bt.layout import MiB
from runtime import linuxboot as lb

SETUP_SECTS = 4
PROT = b"\xfa\xf4" + bytes(510)          # cli; hlt


def make_bzimage(version: int = 0x20F, loadflags: int = bzimage.LOADED_HIGH, init_size: int = 4 * MiB,
                 cmdline_size: int = 2047, prot: bytes = PROT) -> bytes:
    """A bzImage whose setup header has the fields the loader reads (boot.rst)."""
    img = bytearray((SETUP_SECTS + 1) * 512)
    img[0x1F1] = SETUP_SECTS
    struct.pack_into("<H", img, 0x1FE, 0xAA55)
    img[0x200:0x202] = bytes((0xEB, 0x26C - 0x202))    # the JMP over the header: its end
    img[0x202:0x206] = bzimage.HEADER_MAGIC
    struct.pack_into("<H", img, 0x206, version)
    img[0x211] = loadflags
    struct.pack_into("<I", img, 0x214, layout.LINUX_PROT_ADDR)
    struct.pack_into("<I", img, 0x22C, 0x7FFFFFFF)
    struct.pack_into("<I", img, 0x230, 0x1000000)
    img[0x234] = 1
    struct.pack_into("<I", img, 0x238, cmdline_size)
    struct.pack_into("<Q", img, 0x258, 0x1000000)
    struct.pack_into("<I", img, 0x260, init_size)
    return bytes(img) + prot


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "bzImage"
    path.write_bytes(make_bzimage())
    return path


def test_zero_page_as_qemu_fills_it(image: Path) -> None:
    k = lb.load_linux(image, ram_size=64 * MiB, cmdline="console=ttyS0 vga=ext")
    zp = k.zero_page
    raw = image.read_bytes()
    # The setup header is the image's, then QEMU's fields (hw/i386/x86.c x86_load_linux).
    assert zp[0x202:0x206] == b"HdrS" and zp[0x1F1] == SETUP_SECTS
    assert zp[lb.HDR_TYPE_OF_LOADER] == lb.TYPE_OF_LOADER == 0xB0
    assert zp[lb.HDR_LOADFLAGS] == raw[0x211] | bzimage.CAN_USE_HEAP
    assert struct.unpack_from("<I", zp, lb.HDR_CMD_LINE_PTR)[0] == layout.LINUX_CMDLINE
    assert struct.unpack_from("<H", zp, lb.HDR_VID_MODE)[0] == 0xFFFE           # vga=ext
    assert struct.unpack_from("<II", zp, lb.HDR_RAMDISK) == (0, 0)
    # The e820 map SeaBIOS gives on the pc machine without ACPI (measured under QEMU).
    n = zp[lb.BP_E820_ENTRIES]
    table = [struct.unpack_from("<QQI", zp, lb.BP_E820_TABLE + 20 * i) for i in range(n)]
    assert table == [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2),
                     (0x100000, 63 * MiB, 1), (0xFFFC0000, 0x40000, 2)]
    assert struct.unpack_from("<I", zp, lb.BP_ALT_MEM_K)[0] == 63 * 1024
    # screen_info: a VGA text screen, mode 3, 80x25 (a headless PC still has SeaBIOS's VGA).
    assert zp[6] == lb.VIDEO_MODE_TEXT80 and zp[7] == 80 and zp[14] == 25 and zp[15] == lb.VIDEO_TYPE_VGAC
    chunks = dict(k.chunks)
    assert chunks[layout.LINUX_PROT_ADDR] == PROT
    assert chunks[layout.LINUX_CMDLINE] == b"console=ttyS0 vga=ext\0"


def test_entry_state_as_pmjump_leaves_it(image: Path) -> None:
    k = lb.load_linux(image, ram_size=64 * MiB)
    s = k.entry_state
    assert k.entry == k.eax == layout.LINUX_PROT_ADDR and k.ebx == 0
    assert s.esi == layout.LINUX_ZERO_PAGE                      # boot.rst: %esi = the zero page
    assert (s.cs, s.ds, s.tr) == (lb.BOOT_CS, lb.BOOT_DS, lb.BOOT_TSS)
    assert s.idtr == (0, 0) and s.eflags & 0x200 == 0           # interrupts off
    assert s.pic_masks == lb.PIC_MASKS


def test_initrd_at_the_top_of_ram(image: Path, tmp_path: Path) -> None:
    rd = tmp_path / "initrd.gz"
    rd.write_bytes(gzip.compress(b"x" * 10000, mtime=0))
    k = lb.load_linux(image, ram_size=64 * MiB, initrd=rd)
    assert k.initrd is not None
    addr, size = k.initrd
    assert size == rd.stat().st_size and addr % 4096 == 0 and addr + size <= 64 * MiB
    assert struct.unpack_from("<II", k.zero_page, lb.HDR_RAMDISK) == (addr, size)
    assert dict(k.chunks)[addr] == rd.read_bytes()


def test_is_linux() -> None:
    assert lb.is_linux(make_bzimage())
    assert not lb.is_linux(b"\x7fELF" + bytes(60))          # an ELF with no Linux note
    assert not lb.is_linux(b"MZ" + bytes(0x300))


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"version": 0x201}, InputError, "boot protocol 2.1"),
    ({"loadflags": 0}, InputError, "zImage"),
    ({"init_size": 200 * MiB}, InputError, "try --ram"),
    ({"prot": b""}, InputError, "truncated bzImage"),
])
def test_images_refused_in_one_line(tmp_path: Path, kwargs: dict[str, object], error: type[Exception],
                                    words: str) -> None:
    path = tmp_path / "bad"
    path.write_bytes(make_bzimage(**kwargs))  # type: ignore[arg-type]
    with pytest.raises(error) as info:
        lb.load_linux(path, ram_size=64 * MiB)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_command_line_and_initrd_refused_in_one_line(image: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cmdline_size"):
        lb.load_linux(image, ram_size=64 * MiB, cmdline="x" * 3000)
    with pytest.raises(InputError, match="no such file"):
        lb.load_linux(image, ram_size=64 * MiB, initrd=tmp_path / "missing")
    with pytest.raises(InputError, match="is a device"):
        lb.load_linux(image, ram_size=64 * MiB, initrd="/dev/zero")
    with pytest.raises(UsageError, match="vga="):
        lb.load_linux(image, ram_size=64 * MiB, cmdline="vga=banana")
