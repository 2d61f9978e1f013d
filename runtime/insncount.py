"""How many guest instructions the last `emu_start(count=N)` executed.

Unicorn counts them (`uc_struct.emu_counter`, "current counter of
uc_emu_start()", uc_priv.h) but has no API to read it, and a slice the guest cuts
short (isa-debug-exit, a stop) would otherwise go uncounted. ring1 only *reads*
that field: its offset in the engine struct is found once per process in a
scratch engine (the one 8-byte word that equals a distinctive executed count
after an early stop, and count + 1 after a full slice), never hard-coded. If it
cannot be found, `SliceCounter` falls back to whole slices and says so
(`exact = False`).
"""

from __future__ import annotations

import ctypes
import functools
import struct

from unicorn import UC_HOOK_INTR, Uc, UcError

from runtime.engine import SCRATCH_TCG_BUFFER, new_engine

#: How far into the engine struct to look (the field sits ~1.4 KB in for 2.1.4).
_SCAN = 8192


def _handle(uc: Uc) -> int:
    """The address of the engine's `uc_struct` (what the binding passes to libunicorn)."""
    return int(uc._uch.value or 0)  # type: ignore[union-attr]


def _words(uc: Uc) -> bytes:
    return ctypes.string_at(_handle(uc), _SCAN)


def _find(raw: bytes, value: int) -> set[int]:
    return {o for o in range(0, _SCAN - 7, 8) if struct.unpack_from("<Q", raw, o)[0] == value}


@functools.cache
def counter_offset() -> int | None:
    try:
        uc = new_engine(SCRATCH_TCG_BUFFER)
        uc.mem_map(0x1000, 0x10000)
        nops = 0x2345
        uc.mem_write(0x1000, b"\x90" * nops + b"\xcc")
        uc.hook_add(UC_HOOK_INTR, lambda u, v, d: u.emu_stop())
        uc.emu_start(0x1000, 0xF000, count=987_651)      # stops early, at the INT3
        early = _find(_words(uc), nops + 1)               # the INT3 counts too
        uc.emu_start(0x1000, 0xF000, count=4_321)        # runs the whole slice
        full = _find(_words(uc), 4_322)
    except UcError:
        return None
    both = early & full
    return both.pop() if len(both) == 1 else None


class SliceCounter:
    def __init__(self, uc: Uc) -> None:
        self.offset = counter_offset()
        self.exact = self.offset is not None
        self._addr = _handle(uc) + (self.offset or 0)

    def executed(self, count: int) -> int:
        """Instructions the last slice of `count` ran (`count` if it is not known)."""
        if self.offset is None:
            return count
        done = ctypes.c_uint64.from_address(self._addr).value
        return min(done, count)
