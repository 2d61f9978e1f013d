"""Byte tables at the start of patch memory that let patch code change flag bits
without touching EFLAGS.

AND/OR/BTR on the virtual flags word would clobber the guest's arithmetic flags, and
saving them around the operation (PUSHFD/POPFD) costs two flag helpers in Unicorn's
translator. A byte load through a 256-entry table (MOVZX r32, byte [table + r32])
changes no flag, so CLI/STI/PUSHF/POPF and the pending-interrupt check need neither.
They work on byte 1 of EFLAGS images, which holds IF (bit 9 -> 0x02) and IOPL (bits
12-13 -> 0x30), the only bits the virtual flags word owns; TF, DF and OF, the other
bits of that byte, are always the real ones.

The virtual flags word keeps IF alone in its byte 1 (0x02 or 0x00, so CLI and STI are
one byte store) and IOPL (0-3) at bits 4-5 of its byte 0 (bt/layout.py `vflags`), so
that PUSHF and POPF use its low 16 bits as one aligned word. `popf_word` (256 16-bit
entries) maps an image's byte 1 to that word; `pushf_rows` maps the word to a row of
`pushf_merge`, which maps the real image's byte 1 to the guest's.
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

#: name -> (size in bytes, contents) of the larger tables that follow the byte tables.
_WIDE = {
    "popf_word": (512, b"".join((0x02 | (b & 0x30) | (b & IF_B1) << 8).to_bytes(2, "little")
                                for b in range(256))),
    # PUSHF with one register: the virtual word's low 16 bits -> 256 * row (row: IF | IOPL << 1),
    # then row and the real image's byte 1 -> the guest's byte 1.
    "pushf_rows": (0x234 * 4, b"".join((256 * ((i >> 9 & 1) | (i >> 4 & 3) << 1)
                                        if i & ~0x230 == 0x02 else 0).to_bytes(4, "little")
                                       for i in range(0x234))),
    "pushf_merge": (2048, bytes((b & ~VIRTUAL_B1 & 0xFF) | (row & 1) << 1 | (row >> 1) << 4
                                for row in range(8) for b in range(256))),
}

#: Home addresses (bt/layout.py): patch code asks `EmitContext.table`, which gives the
#: linear address where the VMM area is now.
BASE = layout.PATCH_BASE

#: One bit per guest address modulo 1 MiB: set where a patched window holds the start of
#: an instruction other than its first (a guest EIP there must continue in the patch
#: block, `PatchManager.resume_at`). The inline IRET tests its return EIP here and exits
#: when the bit is set. Addresses 1 MiB apart share a bit: that only costs an exit.
INTERIOR_SPAN = 1 << 20
INTERIOR = BASE
#: The tables come after the bitmap, 128 KiB into patch memory, not at its start: Unicorn's
#: TLB is direct-mapped by the low bits of the page number, and a page at a 1 MiB boundary
#: shares its slot with the first page of every kernel loaded at 1 MiB or 16 MiB, so the
#: PUSHF tables there were evicted by the guest's own accesses on every pass (measured with
#: callgrind on irqsave: two victim-TLB loads per iteration).
_BYTE_BASE = INTERIOR + INTERIOR_SPAN // 8
_WIDE_BASE = _BYTE_BASE + 256 * len(_TABLES)
SIZE = _WIDE_BASE + sum(size for size, _ in _WIDE.values()) - BASE


def address(name: str) -> int:
    """Home address of table `name` ("interior": the interior bitmap)."""
    if name == "interior":
        return INTERIOR
    if name in _WIDE:
        names = list(_WIDE)
        return _WIDE_BASE + sum(_WIDE[n][0] for n in names[:names.index(name)])
    return _BYTE_BASE + 256 * list(_TABLES).index(name)


def interior_bit(guest: int) -> tuple[int, int]:
    """(home byte address, bit mask) of `guest`'s bit in the interior bitmap."""
    index = guest % INTERIOR_SPAN
    return INTERIOR + index // 8, 1 << (index % 8)


def image() -> bytes:
    """The tables as patch memory holds them from `BASE` (the bitmap empty)."""
    return (bytes(INTERIOR_SPAN // 8) + b"".join(bytes(f(b) for b in range(256)) for f in _TABLES.values())
            + b"".join(data for _, data in _WIDE.values()))
