"""Stand-in for runtime/boot.py (the multiboot loader, written in parallel by the
devices engineer) until it lands: the same `load_kernel(path, cmdline, ram_size)`
shape, the smallest multiboot v1 hand-off (mem_lower/upper, command line, memory
map), nothing else. runtime/vm.py imports runtime.boot when it exists."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from bt import elf, layout

MB_MAGIC = 0x2BADB002
MB_HEADER_MAGIC = 0x1BADB002


@dataclass(frozen=True)
class BootImage:
    chunks: tuple[tuple[int, bytes], ...]
    entry: int
    eax: int
    ebx: int
    image: elf.KernelImage = field(repr=False)

    def symbolize(self, addr: int) -> str:
        return self.image.symbolize(addr)


def _is_multiboot(raw: bytes) -> bool:
    for off in range(0, min(len(raw), 8192) - 12, 4):
        magic, flags, check = struct.unpack_from("<III", raw, off)
        if magic == MB_HEADER_MAGIC and (magic + flags + check) & 0xFFFFFFFF == 0:
            return True
    return False


def load_kernel(path: str, cmdline: str, ram_size: int) -> BootImage:
    image = elf.load(path)
    if image.bits != 32:
        raise elf.ElfError(path, "not a 32-bit x86 kernel")
    chunks: list[tuple[int, bytes]] = []
    end = 0
    for seg in image.segments:
        data = seg.data + bytes(seg.memsz - seg.filesz)
        chunks.append((seg.paddr, data))
        end = max(end, seg.paddr + seg.memsz)
    if not _is_multiboot(image.raw):
        return BootImage(tuple(chunks), image.entry, 0, 0, image)
    cmd_addr = (end + 0xFFF) & ~0xFFF
    cmd = f"{path} {cmdline}".rstrip().encode() + b"\0"
    chunks.append((cmd_addr, cmd))
    mmap = struct.pack("<IQQI", 20, 0, 0x9FC00, 1) + struct.pack("<IQQI", 20, 0x9FC00, 0x400, 2) \
        + struct.pack("<IQQI", 20, 0xF0000, 0x10000, 2) \
        + struct.pack("<IQQI", 20, 0x100000, ram_size - 0x100000 - 0x20000, 1) \
        + struct.pack("<IQQI", 20, ram_size - 0x20000, 0x20000, 2)
    chunks.append((layout.MULTIBOOT_MMAP, mmap))
    info = bytearray(88)
    flags = 0x1 | 0x4 | 0x40
    struct.pack_into("<III", info, 0, flags, 639, (ram_size >> 10) - 1024)
    struct.pack_into("<I", info, 16, cmd_addr)
    struct.pack_into("<II", info, 44, len(mmap), layout.MULTIBOOT_MMAP)
    chunks.append((layout.MULTIBOOT_INFO, bytes(info)))
    return BootImage(tuple(chunks), image.entry, MB_MAGIC, layout.MULTIBOOT_INFO, image)
