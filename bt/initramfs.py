"""A Linux initramfs: a gzip'd cpio archive in the "newc" format the kernel unpacks
(Documentation/driver-api/early-userspace/buffer-format.rst). Only what an init needs:
directories, regular files and device nodes. Every timestamp is 0 and gzip writes none,
so the same files always give the same bytes.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
S_IFDIR, S_IFREG, S_IFCHR = 0o040000, 0o100000, 0o020000


@dataclass(frozen=True)
class Entry:
    name: str                    # path inside the archive, no leading "/"
    mode: int                    # type and permission bits
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _pad4(n: int) -> bytes:
    return bytes(-n % 4)


def cpio(entries: list[Entry]) -> bytes:
    out = bytearray()
    for ino, e in enumerate([*entries, Entry(TRAILER, 0)], start=1):
        name = e.name.encode() + b"\0"
        nlink = 2 if e.mode & S_IFDIR == S_IFDIR else 1
        fields = (ino if e.name != TRAILER else 0, e.mode, 0, 0, nlink, 0, len(e.data), 0, 0,
                  e.rdev[0], e.rdev[1], len(name), 0)
        header = MAGIC + b"".join(b"%08X" % f for f in fields)
        out += header + name + _pad4(len(header) + len(name))
        out += e.data + _pad4(len(e.data))
    return bytes(out)


def build(init: bytes) -> bytes:
    """The initramfs of ring1's Linux milestone 2: /init, /proc to mount proc on, and
    /dev/console (5, 1), which the kernel opens as init's stdin, stdout and stderr."""
    entries = [Entry("dev", S_IFDIR | 0o755), Entry("dev/console", S_IFCHR | 0o600, rdev=(5, 1)),
               Entry("proc", S_IFDIR | 0o755), Entry("init", S_IFREG | 0o755, init)]
    return gzip.compress(cpio(entries), mtime=0)


def write(init: Path, target: Path) -> Path:
    target.write_bytes(build(init.read_bytes()))
    return target


if __name__ == "__main__":      # the samples' Makefile: python3 -m bt.initramfs INIT TARGET
    import sys

    write(Path(sys.argv[1]), Path(sys.argv[2]))
