"""Byte tables at the start of patch memory that let patch code change flag bits
without touching EFLAGS.

AND/OR/BTR on the virtual flags word would clobber the guest's arithmetic flags, and
saving them around the operation (PUSHFD/POPFD) costs two flag helpers in Unicorn's
translator. A byte load through a 256-entry table (MOVZX r32, byte [table + r32])
changes no flag, so CLI/STI/PUSHF/POPF and the pending-interrupt check need neither.
They work on byte 1 of EFLAGS images, which holds IF (bit 9 -> 0x02) and IOPL (bits
12-13 -> 0x30), the only bits the virtual flags word owns; TF, DF and OF, the other
bits of that byte, are always the real ones.
"""

from __future__ import annotations

from bt import layout

IF_B1 = 0x02                #: EFLAGS.IF in byte 1 of an EFLAGS image
VIRTUAL_B1 = 0x32           #: IF and IOPL in byte 1

#: name -> function of the byte; each table is 256 bytes, in this order.
_TABLES = {
    "virtual": lambda b: b & VIRTUAL_B1,      # IF and IOPL bits only
    "clear_if": lambda b: b & ~IF_B1 & 0xFF,
    "set_if": lambda b: b | IF_B1,
    "if_set": lambda b: 1 if b & IF_B1 else 0,
    "nonzero": lambda b: 1 if b else 0,
}

BASE = layout.PATCH_BASE

#: One bit per guest address modulo 1 MiB: set where a patched window holds the start of
#: an instruction other than its first (a guest EIP there must continue in the patch
#: block, `PatchManager.resume_at`). The inline IRET tests its return EIP here and exits
#: when the bit is set. Addresses 1 MiB apart share a bit: that only costs an exit.
INTERIOR_SPAN = 1 << 20
INTERIOR = BASE + 256 * len(_TABLES)
SIZE = 256 * len(_TABLES) + INTERIOR_SPAN // 8


def address(name: str) -> int:
    """Guest address of table `name`."""
    return BASE + 256 * list(_TABLES).index(name)


def interior_bit(guest: int) -> tuple[int, int]:
    """(byte address, bit mask) of `guest`'s bit in the interior bitmap."""
    index = guest % INTERIOR_SPAN
    return INTERIOR + index // 8, 1 << (index % 8)


def image() -> bytes:
    """The tables as patch memory holds them from `BASE` (the bitmap empty)."""
    return b"".join(bytes(f(b) for b in range(256)) for f in _TABLES.values()) + bytes(INTERIOR_SPAN // 8)
