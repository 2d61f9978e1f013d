"""A Linux bzImage (a distribution's /boot/vmlinuz): its setup header, and the vmlinux ELF inside.

The x86 boot protocol (Documentation/x86/boot.rst) puts the real-mode setup first,
`setup_sects` 512-byte sectors plus the boot sector, then the protected-mode part,
whose header fields `payload_offset` (0x248) and `payload_length` (0x24C, protocol
2.08+) locate the compressed vmlinux inside it. That is what the kernel's own
scripts/extract-vmlinux finds by searching for compression magics; reading the header
is exact. Only the decompressors in Python's standard library are supported (gzip,
xz, lzma, bzip2): Debian's kernels are xz-compressed.

`SetupHeader` is the header a boot loader reads and partly fills (boot.rst, "The real-mode
kernel header"; runtime/linuxboot.py is ring1's loader). `cached_vmlinux` extracts the ELF
once per image into ring1's cache (bt/cache.py), so that everything that reads a kernel
ELF (`bt scan`, the patch manager, `bt compare`'s symbols) reads a bzImage too: the
decompressor in the image puts exactly that ELF's segments at their physical addresses
when it runs at its preferred address (no relocation, `nokaslr`).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import struct
from dataclasses import dataclass
from pathlib import Path

from bt.cache import cache_dir, write_atomic
from bt.elf import ELF_MAGIC
from bt.errors import InputError

#: "HdrS" at 0x202 marks a kernel with the 2.00+ boot protocol header.
HEADER_MAGIC = b"HdrS"
HEADER_START = 0x1F1
#: loadflags (boot.rst): the protected-mode code is loaded at 0x100000; the heap_end_ptr
#: field is valid; the kernel should not print early messages.
LOADED_HIGH, CAN_USE_HEAP, QUIET_FLAG = 0x01, 0x80, 0x20

_MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x5d\x00\x00", "lzma"),
    (b"BZh", "bzip2"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x02\x21\x4c\x18", "lz4"),
    (b"\x89LZO", "lzo"),
)


def is_bzimage(image: bytes) -> bool:
    return len(image) >= 0x250 and image[0x202:0x206] == HEADER_MAGIC


@dataclass(frozen=True)
class SetupHeader:
    """The setup header of a bzImage (boot.rst "The real-mode kernel header"): the fields
    ring1's loader reads. `raw` is the header as in the file, from 0x1F1 to its end
    (0x202 + the byte at 0x201, the boot sector's short JMP over it), which the loader
    copies into the zero page and then fills in."""

    raw: bytes
    setup_sects: int
    version: int
    loadflags: int
    code32_start: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable: bool
    xloadflags: int
    cmdline_size: int
    pref_address: int
    init_size: int

    @property
    def setup_size(self) -> int:
        """Bytes before the protected-mode code: the boot sector and the setup sectors."""
        return (self.setup_sects + 1) * 512

    @classmethod
    def parse(cls, image: bytes, name: str = "bzImage") -> SetupHeader:
        if not is_bzimage(image):
            raise InputError(f"{name}: not a bzImage (no 'HdrS' boot header at 0x202)")
        version = struct.unpack_from("<H", image, 0x206)[0]
        end = 0x202 + image[0x201]
        if end > len(image) or end < 0x230:
            raise InputError(f"{name}: corrupt bzImage (setup header ends at {end:#x})")
        def u32(at: int) -> int:
            return int(struct.unpack_from("<I", image, at)[0]) if at + 4 <= end else 0
        return cls(raw=bytes(image[HEADER_START:end]), setup_sects=image[0x1F1] or 4, version=version,
                   loadflags=image[0x211], code32_start=u32(0x214),
                   initrd_addr_max=u32(0x22C) if version >= 0x203 else 0x37FFFFFF,
                   kernel_alignment=u32(0x230), relocatable=bool(image[0x234]) if version >= 0x205 else False,
                   xloadflags=int(struct.unpack_from("<H", image, 0x236)[0]) if version >= 0x20C else 0,
                   cmdline_size=u32(0x238) if version >= 0x206 else 255,
                   pref_address=int(struct.unpack_from("<Q", image, 0x258)[0]) if version >= 0x20A else 0,
                   init_size=u32(0x260) if version >= 0x20A else 0)


def payload(image: bytes, name: str = "bzImage") -> tuple[str, bytes]:
    """The compression name and compressed payload of a bzImage."""
    if not is_bzimage(image):
        raise InputError(f"{name}: not a bzImage (no 'HdrS' boot header at 0x202)")
    version = struct.unpack_from("<H", image, 0x206)[0]
    if version < 0x208:
        raise InputError(f"{name}: boot protocol {version >> 8}.{version & 0xFF} has no payload fields")
    setup_sects = image[0x1F1] or 4                      # 0 means 4 (boot.rst)
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + offset
    data = image[start:start + length]
    if len(data) != length:
        raise InputError(f"{name}: truncated bzImage (payload ends past the file)")
    for magic, kind in _MAGICS:
        if data.startswith(magic):
            return kind, data
    raise InputError(f"{name}: unknown payload compression (first bytes {data[:4].hex()})")


def extract_vmlinux(image: bytes, name: str = "bzImage") -> bytes:
    """The uncompressed vmlinux ELF inside a bzImage."""
    kind, data = payload(image, name)
    try:
        if kind == "gzip":
            out = gzip.decompress(data)
        elif kind == "xz":
            # The payload is followed by a 4-byte size, so read one stream and stop.
            out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
        elif kind == "lzma":
            out = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)
        elif kind == "bzip2":
            out = bz2.BZ2Decompressor().decompress(data)
        else:
            raise InputError(f"{name}: {kind}-compressed kernel: Python has no {kind} decompressor")
    except (OSError, lzma.LZMAError, EOFError, ValueError) as err:
        raise InputError(f"{name}: corrupt {kind} payload ({err})") from err
    if not out.startswith(ELF_MAGIC):
        raise InputError(f"{name}: the decompressed payload is not an ELF")
    return out


def cached_vmlinux(image: bytes, name: str = "bzImage") -> Path:
    """The vmlinux ELF inside `image`, extracted into ring1's cache the first time (named by
    the image's SHA-256, so a changed image is extracted again)."""
    digest = hashlib.sha256(image).hexdigest()[:16]
    target = cache_dir() / "bzimage" / f"{digest}.vmlinux"
    if not target.is_file():
        write_atomic(target, extract_vmlinux(image, name))
    return target
