"""Linux milestone 2's initramfs (bt/initramfs.py): cpio "newc" as the kernel reads it
(Documentation/driver-api/early-userspace/buffer-format.rst), the same bytes every build,
and the committed one is what the samples' Makefile builds from samples/linux/init.elf."""

from __future__ import annotations

import gzip
from pathlib import Path

from bt import elf, initramfs

ROOT = Path(__file__).resolve().parent.parent
INIT = ROOT / "samples/linux/init.elf"


def _entries(archive: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    """(name, mode, data, rdev) for each entry up to the trailer, read as the kernel does."""
    out, at = [], 0
    while True:
        assert archive[at:at + 6] == initramfs.MAGIC
        f = [int(archive[at + 6 + 8 * i:at + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = f[1], f[6], f[9], f[10], f[11]
        name_at = at + 110
        name = archive[name_at:name_at + namesize - 1].decode()
        data_at = name_at + namesize + (-(110 + namesize) % 4)
        if name == initramfs.TRAILER:
            return out
        out.append((name, mode, archive[data_at:data_at + size], (rmaj, rmin)))
        at = data_at + size + (-size % 4)


def test_layout_the_kernel_reads() -> None:
    init = INIT.read_bytes()
    archive = gzip.decompress(initramfs.build(init))
    entries = {name: (mode, data, rdev) for name, mode, data, rdev in _entries(archive)}
    assert entries["init"] == (initramfs.S_IFREG | 0o755, init, (0, 0))
    assert entries["dev/console"] == (initramfs.S_IFCHR | 0o600, b"", (5, 1))
    assert entries["proc"][0] == initramfs.S_IFDIR | 0o755
    assert len(archive) % 4 == 0


def test_reproducible_and_committed() -> None:
    init = INIT.read_bytes()
    assert initramfs.build(init) == initramfs.build(init)
    assert (ROOT / "samples/linux/initramfs.cpio.gz").read_bytes() == initramfs.build(init)


def test_init_is_a_static_i386_program() -> None:
    image = elf.load(INIT)
    assert image.bits == 32 and image.machine == "i386"
    assert all(s.vaddr >= 0x08048000 for s in image.segments)       # user space, below PAGE_OFFSET
