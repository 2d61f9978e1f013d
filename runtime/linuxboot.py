"""The Linux/x86 32-bit boot protocol: ring1 as the boot loader of a bzImage or a vmlinux.

Reference: the kernel's Documentation/arch/x86/boot.rst ("32-bit boot protocol") and
zero-page.rst, and QEMU's -kernel loader, which is what a guest's output is compared with:
hw/i386/x86.c `x86_load_linux` (what it puts where and which header fields it fills), its
option ROM pc-bios/optionrom/linuxboot_dma.c (the initrd's final place, the stack), and then
the kernel's own real-mode setup code, which QEMU runs and ring1 cannot (it makes BIOS
calls in real mode): arch/x86/boot/main.c fills the rest of the zero page from the BIOS and
pmjump.S enters the 32-bit kernel. ring1 fills the zero page the way that setup code fills
it on QEMU's `pc` machine, and enters `code32_start` as pmjump.S does:

* the protected-mode part of a bzImage at 1 MiB (QEMU's prot_addr; its decompressor moves
  and unpacks the kernel itself), a vmlinux ELF by its program headers at their physical
  addresses, as the decompressor would have put it (`bt.bzimage` says why that is the same);
* the zero page at `bt.layout.LINUX_ZERO_PAGE`, the command line at `LINUX_CMDLINE`
  (QEMU's real_addr and cmdline_addr), the initrd at the top of RAM where QEMU's option ROM
  moves it;
* the setup header copied from the image, then what QEMU writes: type_of_loader 0xB0
  (QEMU's), CAN_USE_HEAP with heap_end_ptr, cmd_line_ptr, ramdisk_image/size, vid_mode for
  a `vga=` option;
* what the setup code asks the BIOS and stores: the e820 map SeaBIOS returns (measured:
  `e820_map`), the E801/88h memory sizes, the VGA text screen SeaBIOS leaves (mode 3, 80x25,
  cursor below its banner: runtime/firmware.py on the platform branch); no APM, EDD or IST
  (ring1 has no BIOS to answer those calls; the kernel then does without, as on a BIOS
  without them);
* the machine pmjump.S leaves: protected mode, paging off, interrupts off, the setup code's
  GDT (flat code 0x10, flat data 0x18, a TSS 0x20 loaded in TR), the null IDT, LDTR 0,
  ESI = the zero page, EAX = the entry, EBX = ECX = EDX = EDI = EBP = 0, the PIC masked by
  mask_all_interrupts (slave 0xFF, master 0xFB).

A vmlinux has no setup header: ring1 writes one as the image's would read (protocol 2.15,
the fields a boot loader reads, `_VMLINUX_HEADER`) before filling it the same way.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from bt import bzimage, elf, layout
from bt.bzimage import CAN_USE_HEAP, LOADED_HIGH, SetupHeader
from bt.errors import ElfError, InputError, UsageError
from bt.infile import Unreadable, read_input
from bt.layout import KiB, MiB
from runtime.boot import (
    BIOS_AREA,
    BIOS_FLASH,
    EBDA_START,
    LEGACY_HOLE,
    MMAP_RAM,
    MMAP_RESERVED,
    MemoryRegion,
)

ZERO_PAGE_SIZE = 4 * KiB
#: QEMU's type_of_loader ("High nybble = B reserved for QEMU; low nybble is revision").
TYPE_OF_LOADER = 0xB0
#: QEMU subtracts this from the RAM top before placing the initrd (pc machines' acpi_data_size).
ACPI_DATA_SIZE = 0x20000 + 0x8000
#: boot.rst xloadflags: the initrd may lie above 4 GiB (then QEMU's limit is 4 GiB).
XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 3

# struct boot_params offsets (zero-page.rst).
BP_SCREEN_INFO = 0x000
BP_ALT_MEM_K = 0x1E0
BP_E820_ENTRIES = 0x1E8
BP_SENTINEL = 0x1EF
BP_HDR = bzimage.HEADER_START
BP_E820_TABLE = 0x2D0
E820_MAX_ENTRIES = 128
# Setup header fields the loader writes, as offsets in the zero page.
HDR_VID_MODE = 0x1FA
HDR_TYPE_OF_LOADER = 0x210
HDR_LOADFLAGS = 0x211
HDR_RAMDISK = 0x218
HDR_HEAP_END_PTR = 0x224
HDR_CMD_LINE_PTR = 0x228

# struct screen_info (include/uapi/linux/screen_info.h) as arch/x86/boot/video*.c store it
# for SeaBIOS's VGA in text mode 3: cursor (column 0, row 8: below SeaBIOS's banner, where
# the platform's firmware leaves it too), ext_mem_k (int 15h/88h), page 0, mode 3, 80
# columns, EGA BX 0x0003 (int 10h/12h: colour, 256 KiB), 25 lines, VIDEO_TYPE_VGAC, 16-line font.
SCREEN_CURSOR = (0, 8)
VIDEO_MODE_TEXT80 = 3
VIDEO_TYPE_VGAC = 0x22
EGA_BX = 0x0003
TEXT_COLUMNS, TEXT_LINES, FONT_POINTS = 80, 25, 16

#: The GDT arch/x86/boot/pm.c `setup_gdt` loads: null, null, __BOOT_CS flat 32-bit code
#: (0xc09b), __BOOT_DS flat data (0xc093), __BOOT_TSS (base 4096, limit 103), which pmjump.S
#: loads into TR (so it reads busy, type 0xB).
BOOT_CS, BOOT_DS, BOOT_TSS = 0x10, 0x18, 0x20
BOOT_GDT = bytes(16) + bytes.fromhex("ffff0000009bcf00" "ffff00000093cf00" "6700001000008b00")
#: EFLAGS at the jump: CLI before the mode switch; ZF and PF from pmjump.S's last XOR.
ENTRY_EFLAGS = 0x46
#: Top of the setup code's stack (header.S: 0xFFFC in segment 0x1000 when the heap ends at
#: 0xFE00, as QEMU sets it), which pmjump.S turns into a flat ESP. The frames of the calls
#: still on it are not reproduced: the 32-bit code sets up its own stack at once.
ENTRY_ESP = layout.LINUX_ZERO_PAGE + 0xFFFC
#: mask_all_interrupts (arch/x86/boot/pm.c): every IRQ masked but the cascade.
PIC_MASKS = (0xFB, 0xFF)


@dataclass(frozen=True)
class EntryState:
    """The machine a boot loader leaves at the kernel's entry (runtime/vm.py applies it)."""

    gdt_base: int
    gdt: bytes
    cs: int
    ds: int
    idtr: tuple[int, int]
    esp: int
    eflags: int
    tr: int = 0
    esi: int = 0
    #: (master, slave) interrupt masks the loader left at the PIC; None: as the firmware did.
    pic_masks: tuple[int, int] | None = None


@dataclass(frozen=True)
class LinuxImage:
    """A Linux kernel ready to enter: what to write where, the registers and descriptor
    tables at entry, and what the zero page says (for tests and reports)."""

    path: str
    chunks: tuple[tuple[int, bytes], ...] = field(repr=False)
    entry: int
    entry_state: EntryState
    cmdline: str
    e820: tuple[MemoryRegion, ...]
    #: (physical address, size) of the initrd, None without one.
    initrd: tuple[int, int] | None = None
    #: The image's setup header; None for a vmlinux (ring1 wrote one).
    header: SetupHeader | None = None

    @property
    def eax(self) -> int:
        return self.entry       # pmjump.S jumps through EAX

    @property
    def ebx(self) -> int:
        return 0

    @property
    def zero_page(self) -> bytes:
        for addr, data in self.chunks:
            if addr == layout.LINUX_ZERO_PAGE:
                return data
        raise AssertionError("no zero page")

    #: The kernel's ELF (the vmlinux, or the one inside the bzImage), for its symbols.
    kernel: elf.KernelImage | None = field(default=None, repr=False, compare=False)

    def symbolize(self, addr: int) -> str:
        """`function+0xoff` as every report names it (bt/symbols.py), or the hex address."""
        return self.kernel.describe(addr) if self.kernel is not None else f"{addr:#x}"


def is_linux(raw: bytes) -> bool:
    """A bzImage, or a 32-bit vmlinux ELF (one with a "Linux" ELF note: the kernel's
    .notes carry its release that way) and no multiboot header: what `bt run` boots with
    the Linux boot protocol rather than as multiboot or plain ELF."""
    if bzimage.is_bzimage(raw):
        return True
    from runtime.boot import find_header

    return raw[:4] == elf.ELF_MAGIC and find_header(raw) is None and _has_linux_note(raw)


def _has_linux_note(raw: bytes) -> bool:
    if len(raw) < 52 or raw[4] != 1:               # ELF32 only; an x86-64 vmlinux is refused later
        return False
    phoff, = struct.unpack_from("<I", raw, 28)
    phentsize, phnum = struct.unpack_from("<HH", raw, 42)
    for i in range(phnum):
        at = phoff + i * phentsize
        if at + 32 > len(raw):
            return False
        p_type, p_offset, _v, _p, p_filesz = struct.unpack_from("<5I", raw, at)
        if p_type != 4:                            # PT_NOTE
            continue
        pos, end = p_offset, min(p_offset + p_filesz, len(raw))
        while pos + 12 <= end:
            namesz, descsz, _type = struct.unpack_from("<3I", raw, pos)
            name = raw[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Linux":
                return True
            pos += 12 + (namesz + 3 & ~3) + (descsz + 3 & ~3)
    return False


def e820_map(ram_size: int) -> tuple[MemoryRegion, ...]:
    """The e820 map SeaBIOS gives the setup code on QEMU's pc machine without ACPI tables
    (measured, `-machine acpi=off`; ring1 has none): the multiboot map (runtime/boot.py)
    without its last 128 KiB reserved, which only holds SeaBIOS's ACPI tables."""
    return (
        MemoryRegion(0, EBDA_START, MMAP_RAM),
        MemoryRegion(EBDA_START, LEGACY_HOLE[0] - EBDA_START, MMAP_RESERVED),
        MemoryRegion(BIOS_AREA[0], BIOS_AREA[1], MMAP_RESERVED),
        MemoryRegion(1 * MiB, ram_size - 1 * MiB, MMAP_RAM),
        MemoryRegion(BIOS_FLASH[0], BIOS_FLASH[1], MMAP_RESERVED),
    )


#: The setup header written for a vmlinux, as a protocol-2.15 bzImage of this kind reads:
#: root_flags 1 (read-only root), vid_mode 0xFFFF (normal), boot_flag 0xAA55, the short
#: JMP over the header, "HdrS", version 0x20F, LOADED_HIGH, code32_start 1 MiB,
#: initrd_addr_max 0x7FFFFFFF, cmdline_size 2047.
_VMLINUX_HEADER_END = 0x26C


def _vmlinux_header() -> bytes:
    hdr = bytearray(_VMLINUX_HEADER_END - BP_HDR)
    def put(offset: int, fmt: str, value: int | bytes) -> None:
        struct.pack_into(fmt, hdr, offset - BP_HDR, value)
    put(0x1F2, "<H", 1)
    put(0x1FA, "<H", 0xFFFF)
    put(0x1FE, "<H", 0xAA55)
    hdr[0x200 - BP_HDR:0x202 - BP_HDR] = bytes((0xEB, _VMLINUX_HEADER_END - 0x202))
    put(0x202, "4s", bzimage.HEADER_MAGIC)
    put(0x206, "<H", 0x20F)
    put(0x211, "<B", LOADED_HIGH)
    put(0x214, "<I", layout.LINUX_PROT_ADDR)
    put(0x22C, "<I", 0x7FFFFFFF)
    put(0x238, "<I", 2047)
    return bytes(hdr)


def load_linux(path: str | Path, *, ram_size: int, cmdline: str = "",
               initrd: str | Path | None = None, data: bytes | None = None) -> LinuxImage:
    """Load the bzImage or vmlinux at `path` for a guest with `ram_size` bytes of RAM, with
    the kernel command line `cmdline` (what QEMU's -append passes) and an optional initrd.
    Raises `InputError` (one line) for an image or initrd that cannot be booted here
    (`data`: the image's bytes, if the caller has read them already)."""
    name = str(path)
    try:
        raw = data if data is not None else read_input(path)
    except Unreadable as err:
        raise ElfError(name, str(err)) from None
    if bzimage.is_bzimage(raw):
        header: SetupHeader | None = SetupHeader.parse(raw, name)
        assert header is not None
        chunks, entry, kernel_end, hdr_raw = _bzimage(name, raw, header)
        try:
            kernel: elf.KernelImage | None = elf.load(path)   # the vmlinux inside (bt/bzimage.py)
        except InputError:
            kernel = None   # a payload Python cannot unpack: the guest still can; no symbols, no patching
    else:
        header = None
        kernel = elf.load(path, raw)
        chunks, entry, kernel_end = _vmlinux(name, kernel)
        hdr_raw = _vmlinux_header()
    cmdline_size = header.cmdline_size if header is not None else 2047
    encoded = cmdline.encode()
    if len(encoded) > cmdline_size:
        raise UsageError(f"--cmdline of {len(encoded)} bytes: {name} takes at most {cmdline_size} "
                         "(its header's cmdline_size)")
    for addr, data in chunks:
        if addr + len(data) > ram_size:
            raise InputError(f"{name}: the kernel needs RAM up to {addr + len(data):#x}; the guest has "
                             f"{ram_size // MiB} MiB (try --ram)")
    if kernel_end > ram_size:
        raise InputError(f"{name}: the kernel unpacks itself up to {kernel_end:#x} (pref_address + "
                         f"init_size); the guest has {ram_size // MiB} MiB (try --ram)")

    placed = _initrd(name, initrd, ram_size, kernel_end, header) if initrd is not None else None
    e820 = e820_map(ram_size)
    zero_page = _zero_page(hdr_raw, cmdline, placed, e820, ram_size)
    chunks = [*chunks, (layout.LINUX_ZERO_PAGE, zero_page),
              (layout.LINUX_BOOT_GDT, BOOT_GDT), (layout.LINUX_CMDLINE, encoded + b"\0")]
    if placed is not None:
        chunks.append((placed[0], placed[2]))
    state = EntryState(gdt_base=layout.LINUX_BOOT_GDT, gdt=BOOT_GDT, cs=BOOT_CS, ds=BOOT_DS, idtr=(0, 0),
                       esp=ENTRY_ESP, eflags=ENTRY_EFLAGS, tr=BOOT_TSS, esi=layout.LINUX_ZERO_PAGE,
                       pic_masks=PIC_MASKS)
    return LinuxImage(path=name, chunks=tuple(sorted(chunks, key=lambda c: c[0])), entry=entry,
                      entry_state=state, cmdline=cmdline, e820=e820,
                      initrd=(placed[0], len(placed[2])) if placed is not None else None, header=header,
                      kernel=kernel)


def _bzimage(name: str, raw: bytes,
             h: SetupHeader) -> tuple[list[tuple[int, bytes]], int, int, bytes]:
    """The protected-mode part at 1 MiB, entered at code32_start (QEMU loads every 2.02+
    bzImage there and leaves code32_start as the image has it)."""
    if h.version < 0x202 or not h.loadflags & LOADED_HIGH:
        kind = "zImage" if not h.loadflags & LOADED_HIGH else "kernel"
        raise InputError(f"{name}: boot protocol {h.version >> 8}.{h.version & 0xFF} {kind}: ring1 boots "
                         "bzImages of protocol 2.02 or later (loaded high)")
    if h.setup_size >= len(raw):
        raise InputError(f"{name}: truncated bzImage (no protected-mode code after its {h.setup_size} "
                         "setup bytes)")
    prot = raw[h.setup_size:]
    # The decompressor works in [pref_address, pref_address + init_size) (boot.rst init_size).
    end = max(layout.LINUX_PROT_ADDR + len(prot), h.pref_address + h.init_size)
    return [(layout.LINUX_PROT_ADDR, prot)], h.code32_start, end, h.raw


def _vmlinux(name: str, kernel: elf.KernelImage) -> tuple[list[tuple[int, bytes]], int, int]:
    if kernel.bits != 32:
        raise ElfError(name, "x86-64 vmlinux: ring1 boots 32-bit kernels")
    chunks: list[tuple[int, bytes]] = []
    entry = kernel.entry
    for seg in kernel.segments:
        if not seg.memsz:
            continue
        if seg.filesz > seg.memsz:
            raise ElfError(name, f"segment at {seg.paddr:#x}: file size {seg.filesz:#x} > memory size "
                                 f"{seg.memsz:#x}")
        if seg.paddr < layout.LINUX_PROT_ADDR:
            raise InputError(f"{name}: segment at {seg.paddr:#x} below 1 MiB, where the zero page and the "
                             "command line go")
        chunks.append((seg.paddr, seg.data + bytes(seg.memsz - seg.filesz)))
        if seg.executable and seg.vaddr != seg.paddr and seg.vaddr <= entry < seg.vaddr + seg.memsz:
            entry = entry - seg.vaddr + seg.paddr        # paging is off at entry
    if not chunks:
        raise InputError(f"{name}: nothing to load (no PT_LOAD segment with memory)")
    return chunks, entry, max(a + len(d) for a, d in chunks)


def _initrd(name: str, initrd: str | Path, ram_size: int, kernel_end: int,
            h: SetupHeader | None) -> tuple[int, int, bytes]:
    """(address, end, bytes): where QEMU puts it. x86_load_linux places it below
    min(initrd_addr_max, RAM - ACPI_DATA_SIZE - 1); its option ROM then moves it to the top
    of the memory int 15h/E801 reports (linuxboot_dma.c: unless it already ends on the
    header's initrd_addr_max page), which is the RAM top."""
    try:
        data = read_input(initrd)
    except Unreadable as err:
        raise InputError(f"{initrd}: {err} (--initrd)") from None
    addr_max = h.initrd_addr_max if h is not None else 0x7FFFFFFF
    if h is not None and h.version >= 0x20C and h.xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G:
        addr_max = 0xFFFFFFFF
    limit = min(addr_max, ram_size - ACPI_DATA_SIZE - 1)
    if len(data) >= limit:
        raise InputError(f"{initrd}: initrd of {len(data)} bytes does not fit below {limit:#x} (try --ram)")
    addr = (limit - len(data)) & ~0xFFF
    if (addr + len(data)) & ~0xFFF != addr_max & ~0xFFF:
        addr = (ram_size - len(data)) & ~0xFFF
    if addr < kernel_end:
        raise InputError(f"{initrd}: initrd of {len(data)} bytes at {addr:#x} would overlap the kernel "
                         f"(up to {kernel_end:#x}); try --ram")
    return addr, addr + len(data), data


def _zero_page(hdr: bytes, cmdline: str, initrd: tuple[int, int, bytes] | None,
               e820: tuple[MemoryRegion, ...], ram_size: int) -> bytes:
    zp = bytearray(ZERO_PAGE_SIZE)
    zp[BP_HDR:BP_HDR + len(hdr)] = hdr
    # What x86_load_linux writes into the header (protocol 2.02+).
    zp[HDR_TYPE_OF_LOADER] = TYPE_OF_LOADER
    zp[HDR_LOADFLAGS] |= CAN_USE_HEAP
    struct.pack_into("<H", zp, HDR_HEAP_END_PTR, layout.LINUX_CMDLINE - layout.LINUX_ZERO_PAGE - 0x200)
    struct.pack_into("<I", zp, HDR_CMD_LINE_PTR, layout.LINUX_CMDLINE)
    vid_mode = _vga_option(cmdline)
    if vid_mode is not None:
        struct.pack_into("<H", zp, HDR_VID_MODE, vid_mode)
    if initrd is not None:
        struct.pack_into("<II", zp, HDR_RAMDISK, initrd[0], len(initrd[2]))
    # What the setup code stores from the BIOS (arch/x86/boot/memory.c, video*.c).
    extended_k = (ram_size - 1 * MiB) // KiB          # E801: all RAM above 1 MiB, in KiB
    x, y = SCREEN_CURSOR
    ext_mem_k = min(extended_k, 0xFFFF)
    struct.pack_into("<BBHHBBBBHHBBH", zp, BP_SCREEN_INFO, x, y, ext_mem_k, 0, VIDEO_MODE_TEXT80,
                     TEXT_COLUMNS, 0, 0, EGA_BX, 0, TEXT_LINES, VIDEO_TYPE_VGAC, FONT_POINTS)
    struct.pack_into("<I", zp, BP_ALT_MEM_K, extended_k)
    zp[BP_E820_ENTRIES] = len(e820)
    for i, r in enumerate(e820[:E820_MAX_ENTRIES]):
        struct.pack_into("<QQI", zp, BP_E820_TABLE + 20 * i, r.base, r.length, r.type)
    zp[BP_SENTINEL] = 0
    return bytes(zp)


def _vga_option(cmdline: str) -> int | None:
    """QEMU's handling of `vga=` (x86_load_linux): normal, ext, ask or a number."""
    at = cmdline.find("vga=")
    if at < 0:
        return None
    word = cmdline[at + 4:].split(" ", 1)[0]
    named = {"normal": 0xFFFF, "ext": 0xFFFE, "ask": 0xFFFD}
    for key, mode in named.items():
        if word.startswith(key):
            return mode
    try:
        return int(word, 0) & 0xFFFF
    except ValueError:
        raise UsageError(f"--cmdline: invalid 'vga=' kernel parameter {word!r} (QEMU refuses it too)") \
            from None
