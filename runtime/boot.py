"""The multiboot (v1) boot loader: what a kernel finds in memory and registers at entry.

Reference: the Multiboot Specification 0.6.96 (section 3.1 "OS image format",
3.2 "Machine state", 3.3 "Boot information format"). Where the specification leaves
a choice, ring1 does what QEMU's -kernel loader does (hw/i386/multiboot.c, its
multiboot.bin option ROM and SeaBIOS's e820 table), because QEMU is the reference
a guest's output is compared with and a guest can print everything it is handed.
Measured with qemu-system-i386 -m 16/32/64/128/256/3000 and a probe kernel that
prints its multiboot information:

* the info structure at 0x9500, the memory map at 0x9000 (`bt.layout`);
* flags 0x24F: mem_lower/mem_upper, boot_device 0x8000FFFF, cmdline, mods, mmap,
  boot_loader_name "qemu";
* after the kernel, at kernel start + page-aligned kernel size, QEMU's buffer: the
  module list (16 bytes per module, mods_addr points there even with no module), the
  command lines (each module's "<file> <args>" as given to -initrd, then the kernel's
  "<kernel path> <append>", so "path " when nothing is appended), the loader name at
  the end of the room reserved for the command lines; then each module at the next
  page boundary, one after the other (mod_end is not rounded);
* the memory map is SeaBIOS's e820 table: 0-0x9FC00 RAM, 0x9FC00-0xA0000 reserved
  (EBDA), 0xF0000-0x100000 reserved (BIOS), 1 MiB to RAM top - 128 KiB RAM, the last
  128 KiB reserved, 0xFFFC0000-4 GiB reserved (BIOS flash); mem_lower 639,
  mem_upper = that RAM region above 1 MiB in KiB;
* ELF kernels load by program headers at their physical addresses (p_paddr);
  an entry point that lies in an executable segment whose p_vaddr differs from its
  p_paddr is translated to the physical address (QEMU's load_elf does the same);
  header flag 16 (the "a.out kludge") makes the header's address fields win over
  the ELF headers, as in QEMU.

A plain ELF kernel (no multiboot header) is loaded the same way and entered at its
entry point with EAX = EBX = 0 and no information structure.

The result is a `BootImage`: the memory chunks to write, the entry point and EAX/EBX.
Guest RAM is zero-filled by the VMM, so gaps between chunks need no bytes.
"""

from __future__ import annotations

import itertools
import logging
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bt import elf
from bt.errors import ElfError, InputError, UsageError
from bt.infile import Unreadable, read_input
from bt.layout import MULTIBOOT_INFO, MULTIBOOT_MMAP, PAGE_SIZE, RAM_DEFAULT, VMM_BASE, KiB, MiB
from patchmgr.static import patch_segment

log = logging.getLogger(__name__)

HEADER_MAGIC = 0x1BADB002
BOOT_MAGIC = 0x2BADB002          # EAX at entry (spec 3.2)
#: Spec 3.1.1: the header lies in the first 8192 bytes, 32-bit aligned.
HEADER_SEARCH = 8192
FLAG_PAGE_ALIGN = 1 << 0         # align modules on pages: QEMU always does
FLAG_MEMORY_INFO = 1 << 1        # mem_* fields: always provided
FLAG_VIDEO_MODE = 1 << 2         # ring1 has no video; QEMU warns and goes on
FLAG_AOUT_KLUDGE = 1 << 16       # load by the header's address fields
#: Spec 3.1.2: bits 0-15 are requirements; a loader that does not know one must refuse.
KNOWN_REQUIRED = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO | FLAG_VIDEO_MODE

# Multiboot information structure (spec 3.3): flag bits and field offsets.
MBI_MEM = 1 << 0
MBI_BOOT_DEVICE = 1 << 1
MBI_CMDLINE = 1 << 2
MBI_MODS = 1 << 3
MBI_MMAP = 1 << 6
MBI_LOADER_NAME = 1 << 9
#: The structure's size up to and including boot_loader_name, apm_table and the VBE
#: fields, as QEMU writes it (its MBI_SIZE).
MBI_SIZE = 88
#: One entry of the module list: mod_start, mod_end, string, reserved (spec 3.3).
MB_MOD_SIZE = 16
#: QEMU's boot_device: BIOS drive 0x80, no partition ("XXX: use the -boot switch?").
BOOT_DEVICE = 0x8000FFFF
BOOT_LOADER_NAME = "qemu"

# Memory map entry types (spec 3.3: 1 available RAM, anything else reserved).
MMAP_RAM = 1
MMAP_RESERVED = 2
#: SeaBIOS's EBDA starts here; mem_lower is this in KiB (639).
EBDA_START = 0x9FC00
#: No RAM between 640 KiB and 1 MiB on a PC (VGA memory, option ROMs, BIOS).
LEGACY_HOLE = (0xA0000, 0x100000)
BIOS_AREA = (0xF0000, 0x10000)
#: SeaBIOS reserves the top 128 KiB of RAM for its own tables.
BIOS_HIGH_RESERVED = 128 * KiB
#: The BIOS flash mapping at the top of the 32-bit space, reserved in QEMU's map.
BIOS_FLASH = (0xFFFC0000, 0x40000)
ADDRESS_LIMIT = 1 << 32
#: The most guest RAM ring1 gives (`bt run --ram 3072`): the rest of the 32-bit space below
#: the VMM area holds the PCI hole and BIOS flash on a PC.
RAM_MAX = 3072 * MiB


#: The GDT QEMU's multiboot option ROM leaves (bt.layout.LOADER_GDT_BASE): CS 0x08, DS 0x10.
LOADER_GDT = bytes.fromhex("0000000000000000" "ffff0000009acf00" "ffff00000093cf00"
                           "ffff0000009e0000" "ffff000000920000")
LOADER_CS, LOADER_DS = 0x08, 0x10
#: The IDTR it leaves: the real-mode interrupt vector table.
LOADER_IDTR = (0, 0x3FF)


@dataclass(frozen=True)
class MemoryRegion:
    """One entry of the multiboot memory map."""

    base: int
    length: int
    type: int


@dataclass(frozen=True)
class BootModule:
    """A multiboot module (`bt run --module FILE[,ARGS]`, QEMU's `-initrd "FILE ARGS"`)."""

    path: str
    args: str = ""

    @property
    def cmdline(self) -> str:
        """What the kernel finds as the module's string: the file name as given, then the
        arguments, as QEMU passes the whole -initrd item."""
        return f"{self.path} {self.args}" if self.args else self.path

    @classmethod
    def parse(cls, spec: str) -> BootModule:
        """`FILE` or `FILE,ARGS` (the first comma separates them)."""
        path, _, args = spec.partition(",")
        return cls(path, args)


@dataclass(frozen=True)
class MultibootHeader:
    offset: int                   # file offset of the magic
    flags: int
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0

    @property
    def aout_kludge(self) -> bool:
        return bool(self.flags & FLAG_AOUT_KLUDGE)


@dataclass(frozen=True)
class BootImage:
    """What the VMM writes into guest RAM and the registers it enters the kernel with."""

    path: str
    #: (physical address, bytes) to write, in address order; bss is included as zeros.
    chunks: tuple[tuple[int, bytes], ...] = field(repr=False)
    entry: int
    eax: int
    ebx: int
    #: The ELF, for symbolization; None for a non-ELF a.out-kludge image.
    kernel: elf.KernelImage | None = field(repr=False)
    #: The multiboot header found, None for a plain ELF kernel.
    header: MultibootHeader | None
    #: The command line handed to the kernel, None without multiboot.
    cmdline: str | None
    #: Physical extent of the kernel image (lowest load address, end of bss).
    kernel_start: int
    kernel_end: int
    memory_map: tuple[MemoryRegion, ...] = ()
    mem_lower: int = 0
    mem_upper: int = 0
    #: (start, end) physical of each module loaded, in --module order.
    modules: tuple[tuple[int, int], ...] = ()

    @property
    def multiboot(self) -> bool:
        return self.header is not None

    def symbolize(self, addr: int) -> str:
        """`function+0xoff` as `bt compare` names it too (bt/symbols.py), or the hex address."""
        return self.kernel.describe(addr) if self.kernel is not None else f"{addr:#x}"


def memory_map(ram_size: int) -> tuple[MemoryRegion, ...]:
    """The e820 map QEMU (SeaBIOS) reports for `ram_size` bytes of RAM."""
    top = ram_size - BIOS_HIGH_RESERVED
    return (
        MemoryRegion(0, EBDA_START, MMAP_RAM),
        MemoryRegion(EBDA_START, LEGACY_HOLE[0] - EBDA_START, MMAP_RESERVED),
        MemoryRegion(BIOS_AREA[0], BIOS_AREA[1], MMAP_RESERVED),
        MemoryRegion(1 * MiB, top - 1 * MiB, MMAP_RAM),
        MemoryRegion(top, BIOS_HIGH_RESERVED, MMAP_RESERVED),
        MemoryRegion(BIOS_FLASH[0], BIOS_FLASH[1], MMAP_RESERVED),
    )


def find_header(raw: bytes) -> MultibootHeader | None:
    """The first valid multiboot header (magic + flags + checksum == 0 mod 2^32) in the
    first 8 KiB at a 4-byte boundary, or None."""
    limit = min(len(raw), HEADER_SEARCH) - 12
    offset = raw.find(struct.pack("<I", HEADER_MAGIC), 0, limit + 4)
    while 0 <= offset <= limit:
        if offset % 4 == 0:
            magic, flags, checksum = struct.unpack_from("<III", raw, offset)
            if (magic + flags + checksum) & 0xFFFFFFFF == 0:
                if flags & FLAG_AOUT_KLUDGE and offset + 32 <= len(raw):
                    return MultibootHeader(offset, flags, *struct.unpack_from("<5I", raw, offset + 12))
                return MultibootHeader(offset, flags)
        offset = raw.find(struct.pack("<I", HEADER_MAGIC), offset + 1, limit + 4)
    return None


def load_boot_image(path: str | Path, *, ram_size: int = RAM_DEFAULT, cmdline: str = "",
                    image_name: str | None = None, modules: Sequence[BootModule] = ()) -> BootImage:
    """Load the kernel at `path` for a guest with `ram_size` bytes of RAM.

    `cmdline` is what `-append` would be; the kernel sees "<image_name> <cmdline>" as
    under QEMU, `image_name` defaulting to `path` as given. `modules` are loaded after
    it as QEMU's `-initrd` loads them. Raises `ElfError` for a file that is no usable
    ELF and `InputError` (one line, naming the file) for a kernel or module that cannot
    be placed in this guest.
    """
    name = str(path)
    if not 2 * MiB <= ram_size <= RAM_MAX:
        raise UsageError(f"guest RAM of {ram_size:#x} bytes: ring1 needs 2 MiB to {RAM_MAX // MiB} MiB")
    raw = _read(name, path)
    header = _check_header(name, raw)
    kernel = _elf(name, path, raw, header)

    # Where everything goes is checked before a byte is copied: a p_memsz of 4 GiB must be
    # refused, not zero-filled first (issue 12).
    places, entry = _plan(name, raw, header, kernel, ram_size)
    chunks = [(p.address, raw[p.offset:p.offset + p.filesz] + bytes(p.size - p.filesz)) for p in places]
    start = min(p.address for p in places)
    end = max(p.end for p in places)

    if header is None:
        if modules:
            raise InputError(f"{name}: --module needs a multiboot kernel (this ELF has no multiboot header)")
        return BootImage(path=name, chunks=tuple(sorted(chunks)), entry=entry, eax=0, ebx=0, kernel=kernel,
                         header=None, cmdline=None, kernel_start=start, kernel_end=end)

    full_cmdline = f"{image_name if image_name is not None else name} {cmdline}"
    loaded = [(m, _read_module(m)) for m in modules]
    info = _boot_information(name, start, end, full_cmdline, ram_size, loaded)
    return BootImage(path=name, chunks=tuple(sorted(chunks + info.chunks)), entry=entry, eax=BOOT_MAGIC,
                     ebx=MULTIBOOT_INFO, kernel=kernel, header=header, cmdline=full_cmdline,
                     kernel_start=start, kernel_end=end, memory_map=info.regions,
                     mem_lower=EBDA_START // KiB, mem_upper=info.mem_upper, modules=info.modules)


def _read(name: str, path: str | Path) -> bytes:
    try:
        return read_input(path)
    except Unreadable as err:
        raise ElfError(name, str(err)) from None


def _check_header(name: str, raw: bytes) -> MultibootHeader | None:
    header = find_header(raw)
    if header is not None:
        unknown = header.flags & 0xFFFF & ~KNOWN_REQUIRED
        if unknown:
            raise InputError(f"{name}: multiboot header requires features ring1 does not know "
                             f"(flags {unknown:#06x}; spec 3.1.2)")
        if header.flags & FLAG_VIDEO_MODE:
            log.warning("%s: the kernel asks for a video mode; ring1 has no video and ignores it", name)
    return header


def _elf(name: str, path: str | Path, raw: bytes, header: MultibootHeader | None) -> elf.KernelImage | None:
    """The ELF (for its segments or, with the a.out kludge, its symbols); None for a
    non-ELF a.out-kludge image."""
    if raw[:4] != elf.ELF_MAGIC and header is not None and header.aout_kludge:
        return None
    kernel = elf.load(path, data=raw)
    if kernel.bits != 32:
        raise ElfError(name, "x86-64 ELF: ring1 boots 32-bit kernels (QEMU's multiboot loader refuses it)")
    return kernel


def load_kernel(path: str | Path, cmdline: str = "", ram_size: int = RAM_DEFAULT,
                modules: Sequence[BootModule] = (), image_name: str | None = None) -> BootImage:
    """`load_boot_image` in the positional shape the run loop calls (runtime/bootstub.py's)."""
    return load_boot_image(path, ram_size=ram_size, cmdline=cmdline, modules=modules,
                           image_name=image_name)


def _read_module(module: BootModule) -> bytes:
    try:
        return read_input(module.path)      # a device (/dev/zero) never ends: refused
    except Unreadable as err:
        raise InputError(f"{module.path} (--module): {err}") from None


@dataclass(frozen=True)
class Placement:
    """One piece of the kernel in guest memory: `filesz` bytes of the file from `offset`,
    then zeros up to `size`, at physical `address`."""

    address: int
    size: int
    offset: int
    filesz: int

    @property
    def end(self) -> int:
        return self.address + self.size


@dataclass(frozen=True)
class BootPlan:
    """Where `bt run` puts a kernel file's bytes, checked but not copied: what `bt patch`
    asks to make sure the run will see the bytes it patched."""

    raw: bytes = field(repr=False)
    places: tuple[Placement, ...]
    entry: int
    #: The ELF, None for a non-ELF a.out-kludge image.
    kernel: elf.KernelImage | None = field(repr=False)

    def read(self, address: int, size: int) -> bytes | None:
        """The `size` bytes the guest finds at physical `address` at entry, if one piece
        covers them all (None otherwise)."""
        for p in self.places:
            if p.address <= address and address + size <= p.end:
                at = address - p.address
                data = self.raw[p.offset + at:p.offset + min(at + size, p.filesz)] if at < p.filesz else b""
                return data + bytes(size - len(data))
        return None


def plan_boot(path: str | Path, ram_size: int = RAM_MAX, data: bytes | None = None) -> BootPlan:
    """Check a kernel file as `load_boot_image` does (header, ELF, placement in `ram_size`
    bytes of RAM) without building its memory image. Raises what it raises. `data`: the
    file's bytes when they are not (yet) at `path`, which then only names them."""
    name = str(path)
    raw = _read(name, path) if data is None else data
    header = _check_header(name, raw)
    kernel = _elf(name, path, raw, header)
    places, entry = _plan(name, raw, header, kernel, ram_size)
    return BootPlan(raw, tuple(places), entry, kernel)


def _plan(name: str, raw: bytes, header: MultibootHeader | None, kernel: elf.KernelImage | None,
          ram_size: int) -> tuple[list[Placement], int]:
    if header is not None and header.aout_kludge:
        places, entry = _plan_aout_kludge(name, raw, header)
    else:
        assert kernel is not None
        places, entry = _plan_elf(name, kernel)
    if not places:
        raise InputError(f"{name}: nothing to load (no PT_LOAD segment with memory)")
    for p in places:
        _check_placement(name, p.address, p.end, ram_size, header is not None)
    places.sort(key=lambda p: p.address)
    for a, b in itertools.pairwise(places):
        if b.address < a.end:
            # QEMU refuses overlapping segments too ("Some ROM regions are overlapping"); which
            # bytes would win is not worth guessing.
            raise InputError(f"{name}: segments {a.address:#x}-{a.end:#x} and {b.address:#x}-{b.end:#x} "
                             "overlap in guest memory")
    return places, entry


def _plan_elf(name: str, kernel: elf.KernelImage) -> tuple[list[Placement], int]:
    places = []
    entry = kernel.entry
    # A kernel `bt patch` wrote brings its patch code as a segment at patch memory, which the
    # patch manager installs (patchmgr/static.py); any other segment is placed as it says.
    patch_code = patch_segment(kernel)
    for seg in kernel.segments:
        if seg.memsz == 0:
            continue  # QEMU skips empty segments too
        if seg == patch_code:
            continue
        if seg.filesz > seg.memsz:
            raise ElfError(name, f"segment at {seg.paddr:#x}: file size {seg.filesz:#x} > memory size "
                                 f"{seg.memsz:#x}")
        places.append(Placement(seg.paddr, seg.memsz, seg.offset, seg.filesz))
        if (seg.executable and seg.vaddr != seg.paddr
                and seg.vaddr <= kernel.entry < seg.vaddr + seg.filesz):
            # Paging is off at entry: start at the physical address of the entry point.
            entry = kernel.entry - seg.vaddr + seg.paddr
    return places, entry


def _plan_aout_kludge(name: str, raw: bytes, h: MultibootHeader) -> tuple[list[Placement], int]:
    """Spec 3.1.3: the header's address fields say where the file's bytes go."""
    if h.header_addr < h.load_addr or h.header_addr - h.load_addr > h.offset:
        raise InputError(f"{name}: multiboot header_addr {h.header_addr:#x} does not fit load_addr "
                         f"{h.load_addr:#x} and the header's file offset {h.offset:#x}")
    text_offset = h.offset - (h.header_addr - h.load_addr)
    if h.load_end_addr:
        if h.load_end_addr < h.load_addr:
            raise InputError(f"{name}: multiboot load_end_addr {h.load_end_addr:#x} below load_addr "
                             f"{h.load_addr:#x}")
        load_size = h.load_end_addr - h.load_addr
        if text_offset + load_size > len(raw):
            raise InputError(f"{name}: truncated: the multiboot header loads {load_size:#x} bytes from file "
                             f"offset {text_offset:#x}, the file has {len(raw):#x}")
    else:
        load_size = len(raw) - text_offset
    size = load_size
    if h.bss_end_addr:
        if h.bss_end_addr < h.load_addr + load_size:
            raise InputError(f"{name}: multiboot bss_end_addr {h.bss_end_addr:#x} below the loaded image's "
                             f"end {h.load_addr + load_size:#x}")
        size = h.bss_end_addr - h.load_addr
    return [Placement(h.load_addr, size, text_offset, load_size)], h.entry_addr


def _check_placement(name: str, start: int, end: int, ram_size: int, multiboot: bool) -> None:
    where = f"{name}: segment {start:#x}-{end:#x}"
    if end > VMM_BASE or end > ADDRESS_LIMIT:
        raise InputError(f"{where} reaches ring1's VMM area ({VMM_BASE:#x}-0xffffffff, bt/layout.py)")
    if end > ram_size:
        raise InputError(f"{where} lies outside guest RAM (0-{ram_size:#x}, {ram_size // MiB} MiB)")
    if start < LEGACY_HOLE[1] and end > LEGACY_HOLE[0]:
        raise InputError(f"{where} overlaps the PC's VGA/BIOS hole "
                         f"({LEGACY_HOLE[0]:#x}-{LEGACY_HOLE[1]:#x}), which is not RAM")
    if multiboot and start < MULTIBOOT_INFO + MBI_SIZE and end > MULTIBOOT_MMAP:
        raise InputError(f"{where} overlaps the multiboot information the loader writes at "
                         f"{MULTIBOOT_MMAP:#x}-{MULTIBOOT_INFO + MBI_SIZE:#x}")


def _page_align(n: int) -> int:
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


@dataclass(frozen=True)
class _Information:
    chunks: list[tuple[int, bytes]]
    regions: tuple[MemoryRegion, ...]
    mem_upper: int
    modules: tuple[tuple[int, int], ...]


def _boot_information(name: str, start: int, end: int, cmdline: str, ram_size: int,
                      modules: Sequence[tuple[BootModule, bytes]]) -> _Information:
    """The info structure, the memory map, the module list and strings after the kernel, and
    the modules, placed as QEMU's load_multiboot places them (hw/i386/multiboot.c)."""
    # QEMU's buffer: the kernel (start..end), page-aligned, then the module list, the command
    # lines (every module's, then the kernel's), the loader name after the room reserved for
    # the command lines (kernel path + 1 + append + 1 + the whole -initrd string + 1).
    mods_addr = start + _page_align(end - start)
    cmdlines_addr = mods_addr + MB_MOD_SIZE * len(modules)
    # The bytes as given, UTF-8 or not (a command-line argument that is not UTF-8 arrives as
    # surrogate escapes, os.fsencode gives them back): QEMU passes -append's bytes through.
    cmdline_bytes = os.fsencode(cmdline) + b"\0"
    module_strings = [os.fsencode(m.cmdline) + b"\0" for m, _ in modules]
    loader_addr = cmdlines_addr + len(cmdline_bytes) + sum(len(s) for s in module_strings)
    loader_bytes = BOOT_LOADER_NAME.encode() + b"\0"
    strings_end = start + _page_align(loader_addr + len(loader_bytes) - start)
    if strings_end > ram_size:
        raise InputError(f"{name}: no room in guest RAM after the kernel (ends {end:#x}) for the "
                         f"multiboot command line")
    # Modules: each at the next page boundary, its string before the kernel's command line.
    mod_list = bytearray()
    placed: list[tuple[int, int]] = []
    chunks: list[tuple[int, bytes]] = []
    at, string_at = strings_end, cmdlines_addr
    for (module, data), string in zip(modules, module_strings, strict=True):
        if at + len(data) > ram_size - BIOS_HIGH_RESERVED:
            raise InputError(f"{module.path}: module of {len(data):#x} bytes does not fit in guest RAM at "
                             f"{at:#x} ({ram_size // MiB} MiB; try --ram)")
        mod_list += struct.pack("<IIII", at, at + len(data), string_at, 0)
        placed.append((at, at + len(data)))
        if data:
            chunks.append((at, data))
        string_at += len(string)
        at = _page_align(at + len(data))
    strings = (bytes(mod_list) + b"".join(module_strings) + cmdline_bytes).ljust(
        loader_addr - mods_addr, b"\0") + loader_bytes
    strings = strings.ljust(strings_end - mods_addr, b"\0")
    kernel_cmdline_addr = cmdlines_addr + sum(len(s) for s in module_strings)

    regions = memory_map(ram_size)
    mmap = b"".join(struct.pack("<IQQI", 20, r.base, r.length, r.type) for r in regions)
    mem_upper = regions[3].length // KiB
    flags = MBI_MEM | MBI_BOOT_DEVICE | MBI_CMDLINE | MBI_MODS | MBI_MMAP | MBI_LOADER_NAME
    info = bytearray(MBI_SIZE)
    struct.pack_into("<IIIIIII", info, 0, flags, EBDA_START // KiB, mem_upper, BOOT_DEVICE,
                     kernel_cmdline_addr, len(modules), mods_addr)
    struct.pack_into("<II", info, 44, len(mmap), MULTIBOOT_MMAP)
    struct.pack_into("<I", info, 64, loader_addr)
    assert MULTIBOOT_MMAP + len(mmap) <= MULTIBOOT_INFO
    chunks += [(MULTIBOOT_MMAP, mmap), (MULTIBOOT_INFO, bytes(info)), (mods_addr, strings)]
    return _Information(chunks, regions, mem_upper, tuple(placed))
