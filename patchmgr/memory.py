"""Patch memory: where patch blocks go, inside bt.layout's PATCH_BASE..PATCH_BASE+PATCH_SIZE.

A bump allocator with 16-byte alignment: blocks are small (tens of bytes) and are
hardly ever freed (only when self-modifying code removes a patch), so 2 MiB (PATM's
size) holds tens of thousands of them; freed space is not reused, which keeps every
patch address unique for the life of a run and so keeps reports unambiguous.
"""

from __future__ import annotations

from bt import layout
from bt.errors import PatchError

ALIGN = 16


class PatchMemory:
    def __init__(self, base: int = layout.PATCH_BASE, size: int = layout.PATCH_SIZE) -> None:
        self.base = base
        self.size = size
        self.top = base

    def rebase(self, delta: int) -> None:
        """The VMM area moved by `delta` (patchmgr/manager.py `relocate`): every block keeps
        its offset, so the allocator just follows."""
        self.base += delta
        self.top += delta

    def contains(self, address: int) -> bool:
        return self.base <= address < self.base + self.size

    def reserve(self, size: int) -> int:
        """Address of `size` fresh bytes (an upper bound: the block may use fewer)."""
        start = (self.top + ALIGN - 1) & ~(ALIGN - 1)
        if start + size > self.base + self.size:
            raise PatchError(f"patch memory full ({self.size} bytes at {self.base:#x})")
        return start

    def commit(self, address: int, used: int) -> None:
        self.top = max(self.top, address + used)

    @property
    def used(self) -> int:
        return self.top - self.base
