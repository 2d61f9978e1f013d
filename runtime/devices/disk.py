"""A raw disk image as the IDE controller sees it: 512-byte sectors, never modified unless
the user asks for it.

`bt run --disk FILE` opens the file read-only and keeps the guest's writes in an
in-memory overlay (sector -> bytes), so the image on the host is the same after the run
whatever the guest did, as QEMU's `snapshot=on`; `--disk-writable` writes them through
to the file. Sectors are read from the file when the guest asks, so a large image costs
no memory up front.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from bt.errors import InputError

SECTOR = 512


def chs_geometry(sectors: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors per track) QEMU gives a raw image without a partition
    table (hw/block/hd-geometry.c guess_chs_for_size): 16 heads, 63 sectors, 2 to 16383
    cylinders. Images with an MBR partition table may get another guess under QEMU."""
    return max(2, min(sectors // (16 * 63), 16383)), 16, 63


class DiskImage:
    def __init__(self, path: str | Path, *, writable: bool = False) -> None:
        self.path = str(path)
        self.writable = writable
        try:
            self._file: BinaryIO = open(path, "r+b" if writable else "rb")
        except FileNotFoundError:
            raise InputError(f"{path}: no such file (--disk)") from None
        except OSError as err:
            raise InputError(f"{path}: cannot open (--disk): {err.strerror or err}") from err
        size = self._file.seek(0, 2)
        if size < SECTOR:
            self._file.close()
            raise InputError(f"{path}: a disk image needs at least one 512-byte sector (it has {size} bytes)")
        #: Whole sectors (a partial last sector is not visible, as with QEMU's raw format).
        self.sectors = size // SECTOR
        self.overlay: dict[int, bytes] = {}
        self.reads = 0
        self.writes = 0

    def read(self, lba: int, count: int = 1) -> bytes:
        self.reads += count
        out = bytearray()
        for n in range(lba, lba + count):
            data = self.overlay.get(n)
            if data is None:
                self._file.seek(n * SECTOR)
                data = self._file.read(SECTOR).ljust(SECTOR, b"\0")
            out += data
        return bytes(out)

    def write(self, lba: int, data: bytes) -> None:
        for i in range(len(data) // SECTOR):
            sector = data[i * SECTOR:(i + 1) * SECTOR]
            self.writes += 1
            if self.writable:
                self._file.seek((lba + i) * SECTOR)
                self._file.write(sector)
            else:
                self.overlay[lba + i] = sector

    def close(self) -> None:
        if self.writable:
            self._file.flush()
        self._file.close()
