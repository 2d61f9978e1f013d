"""Patch memory: where patch blocks go, inside bt.layout's PATCH_BASE..PATCH_BASE+PATCH_SIZE.

Blocks are small (tens of bytes), 16-byte aligned, handed out from the top like a bump
allocator. A block is freed when its patch is removed (the guest wrote into the patched
window: self-modifying code), and its bytes are used again: a guest that rewrites a
patched site forever would otherwise fill the 2 MiB (PATM's size) after some 60,000
rewrites, and Unicorn would translate a new address each time.

Freed bytes are not reused at once. The guest may still be running the removed block
(a store from inside a block into its own window removes the patch while EIP is in
it), so `free` only queues them; `settle()` makes them reusable, and the patch manager
calls it when the CPU is known to be at a guest instruction outside patch memory (a
trap or a first execution at a guest site). Nothing else ever holds a patch address:
frames and stacks the guest sees carry guest addresses (runtime/patching.py), so once
EIP has left a block, no one returns into it.
"""

from __future__ import annotations

import bisect

from bt import layout
from bt.errors import PatchError

ALIGN = 16


def _aligned(address: int) -> int:
    return (address + ALIGN - 1) & ~(ALIGN - 1)


class PatchMemory:
    def __init__(self, base: int = layout.PATCH_BASE, size: int = layout.PATCH_SIZE) -> None:
        self.base = base
        self.size = size
        self.top = base
        self._free: list[tuple[int, int]] = []       # [start, end), sorted, 16-byte aligned starts
        self._pending: list[tuple[int, int]] = []    # freed while the guest may still run them

    def rebase(self, delta: int) -> None:
        """The VMM area moved by `delta` (patchmgr/manager.py `relocate`): every block keeps
        its offset, so the allocator just follows."""
        self.base += delta
        self.top += delta
        self._free = [(a + delta, b + delta) for a, b in self._free]
        self._pending = [(a + delta, b + delta) for a, b in self._pending]

    def contains(self, address: int) -> bool:
        return self.base <= address < self.base + self.size

    def reserve(self, size: int) -> int:
        """Address of `size` fresh bytes (an upper bound: the block may use fewer): the
        first freed range that holds them, else the top."""
        for start, end in self._free:
            if end - start >= size:
                return start
        start = _aligned(self.top)
        if start + size > self.base + self.size:
            raise PatchError(f"patch memory full ({self.size} bytes at {self.base:#x})")
        return start

    def commit(self, address: int, used: int) -> None:
        """`used` bytes at `address` (from `reserve`) now hold a block."""
        for k, (start, end) in enumerate(self._free):
            if start == address:
                rest = _aligned(address + used)
                self._free[k:k + 1] = [(rest, end)] if rest < end else []
                return
        self.top = max(self.top, address + used)

    def free(self, address: int, size: int) -> None:
        """A removed block's bytes: reusable after the next `settle()`."""
        self._pending.append((address, _aligned(address + size)))

    @property
    def unsettled(self) -> bool:
        """Freed blocks wait for `settle`."""
        return bool(self._pending)

    def settle(self) -> None:
        """The guest runs outside patch memory: what was freed may be handed out again."""
        if not self._pending:
            # Nothing freed since the last settle: `_free` is already merged (`commit` only
            # shrinks its ranges, the top only rises). Asked on every trap (issue 14).
            return
        for start, end in self._pending:
            bisect.insort(self._free, (start, end))
        self._pending.clear()
        merged: list[tuple[int, int]] = []
        for start, end in self._free:
            if merged and merged[-1][1] >= start:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        if merged and merged[-1][1] >= _aligned(self.top):      # the last block went: lower the top
            self.top = merged.pop()[0]
        self._free = merged

    @property
    def used(self) -> int:
        """Bytes from the base to the top (freed ranges below the top included)."""
        return self.top - self.base

    @property
    def free_bytes(self) -> int:
        return sum(end - start for start, end in self._free + self._pending)
