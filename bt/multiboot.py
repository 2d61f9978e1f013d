"""Multiboot headers as bytes of a kernel file: where they are and how long they are.

The scanner needs this because a header placed in `.text` (xv6 puts it at the start of
its entry code) is data in the middle of code: decoded as instructions, its magic and
checksum swallow the first bytes of the real code that follows and throw the linear
sweep out of step. The loader (runtime/boot.py) parses the v1 header's fields itself.

Multiboot 0.6.96 §3.1.1: the v1 header lies in the first 8192 bytes, 32-bit aligned;
magic 0x1BADB002, flags, checksum with magic + flags + checksum == 0 (mod 2^32); the
address fields (offsets 12-28) follow when flags bit 16 is set, the video fields
(offsets 32-44) when bit 2 is. Multiboot2 §3.1.1: the header lies in the first 32768
bytes, 64-bit aligned; magic 0xE85250D6, architecture, header_length, checksum with
the four summing to 0; it is `header_length` bytes long, tags included.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

V1_MAGIC = 0x1BADB002
V2_MAGIC = 0xE85250D6
V1_SEARCH, V1_ALIGN = 8192, 4
V2_SEARCH, V2_ALIGN = 32768, 8
V1_AOUT_KLUDGE = 1 << 16
V1_VIDEO_MODE = 1 << 2


@dataclass(frozen=True)
class Header:
    version: int        # 1 or 2
    offset: int         # file offset of the magic
    size: int           # bytes of the header, fields and tags included


def _v1(raw: bytes) -> Header | None:
    magic = struct.pack("<I", V1_MAGIC)
    end = min(len(raw), V1_SEARCH)
    at = raw.find(magic, 0, end)
    while 0 <= at and at + 12 <= end:
        if at % V1_ALIGN == 0:
            m, flags, checksum = struct.unpack_from("<III", raw, at)
            if (m + flags + checksum) & 0xFFFFFFFF == 0:
                size = 48 if flags & V1_VIDEO_MODE else 32 if flags & V1_AOUT_KLUDGE else 12
                return Header(1, at, min(size, len(raw) - at))
        at = raw.find(magic, at + 1, end)
    return None


def _v2(raw: bytes) -> Header | None:
    magic = struct.pack("<I", V2_MAGIC)
    end = min(len(raw), V2_SEARCH)
    at = raw.find(magic, 0, end)
    while 0 <= at and at + 16 <= end:
        if at % V2_ALIGN == 0:
            m, arch, length, checksum = struct.unpack_from("<IIII", raw, at)
            if (m + arch + length + checksum) & 0xFFFFFFFF == 0 and 16 <= length <= V2_SEARCH:
                return Header(2, at, min(length, len(raw) - at))
        at = raw.find(magic, at + 1, end)
    return None


def headers(raw: bytes) -> tuple[Header, ...]:
    """The valid v1 and v2 headers of a kernel file (a kernel may carry both)."""
    return tuple(h for h in (_v1(raw), _v2(raw)) if h is not None)
