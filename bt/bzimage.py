"""Getting the vmlinux ELF out of a Linux bzImage (a distribution's /boot/vmlinuz).

The x86 boot protocol (Documentation/x86/boot.rst) puts the real-mode setup first,
`setup_sects` 512-byte sectors plus the boot sector, then the protected-mode part,
whose header fields `payload_offset` (0x248) and `payload_length` (0x24C, protocol
2.08+) locate the compressed vmlinux inside it. That is what the kernel's own
scripts/extract-vmlinux finds by searching for compression magics; reading the header
is exact. Only the decompressors in Python's standard library are supported (gzip,
xz, lzma, bzip2): Debian's kernels are xz-compressed.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct

from bt.elf import ELF_MAGIC
from bt.errors import InputError

_MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x5d\x00\x00", "lzma"),
    (b"BZh", "bzip2"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x02\x21\x4c\x18", "lz4"),
    (b"\x89LZO", "lzo"),
)


def payload(image: bytes, name: str = "bzImage") -> tuple[str, bytes]:
    """The compression name and compressed payload of a bzImage."""
    if len(image) < 0x250 or image[0x202:0x206] != b"HdrS":
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
