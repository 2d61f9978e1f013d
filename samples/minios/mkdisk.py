#!/usr/bin/env python3
"""Builds the minios disk image (disk.h): sector 0 holds "MINIOSFS", the number of
files and a table of (name, first sector, size); each file follows on a sector
boundary. The image is padded to a multiple of 64 sectors (32 KiB).

    python3 mkdisk.py OUT NAME=PATH...

A program file (a flat image with a "MOSP" program header) is checked: its header's
file size must be the file's size.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

SECTOR = 512
MAGIC = b"MINIOSFS"
MAX_FILES = 15
NAME_MAX = 24
PROGRAM_MAGIC = 0x50534F4D
#: The image's size in sectors is rounded up to this (a tidy size for the drive).
ROUND_SECTORS = 64


def build(files: list[tuple[str, bytes]]) -> bytes:
    if len(files) > MAX_FILES:
        raise SystemExit(f"mkdisk: {len(files)} files, at most {MAX_FILES}")
    table = b""
    body = b""
    lba = 1
    for name, data in files:
        raw = name.encode("ascii")
        if not raw or len(raw) > NAME_MAX or b" " in raw:
            raise SystemExit(f"mkdisk: bad file name {name!r}")
        if data[:4] == struct.pack("<I", PROGRAM_MAGIC):
            file_size = struct.unpack_from("<I", data, 8)[0]
            if file_size != len(data):
                raise SystemExit(f"mkdisk: {name}: header says {file_size} bytes, file has {len(data)}")
        table += raw.ljust(NAME_MAX, b"\0") + struct.pack("<II", lba, len(data))
        padded = data + bytes(-len(data) % SECTOR)
        body += padded
        lba += len(padded) // SECTOR
    header = MAGIC + struct.pack("<II", len(files), 0) + table
    image = header.ljust(SECTOR, b"\0") + body
    sectors = -(-len(image) // SECTOR)
    sectors = -(-sectors // ROUND_SECTORS) * ROUND_SECTORS
    return image.ljust(sectors * SECTOR, b"\0")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    files = []
    for spec in argv[1:]:
        name, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"mkdisk: expected NAME=PATH, got {spec!r}")
        files.append((name, Path(path).read_bytes()))
    Path(argv[0]).write_bytes(build(files))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
