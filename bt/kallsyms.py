"""A Linux kernel's own symbol table (kallsyms), read out of a stripped vmlinux.

Distributions ship the vmlinux inside their bzImage without an ELF symbol table, but a
kernel built with CONFIG_KALLSYMS carries every symbol in .rodata, for /proc/kallsyms and
its own backtraces. The tables are what scripts/kallsyms.c writes (Linux 4.6 to 6.1,
CONFIG_KALLSYMS_BASE_RELATIVE, 32-bit: every table 4-byte aligned, in this order):

    kallsyms_offsets       int32[num_syms]   address - relative_base
    kallsyms_relative_base u32
    kallsyms_num_syms      u32
    kallsyms_names         per symbol: length byte (two bytes if bit 7 is set, the "big
                           symbol" form of 6.1), then that many token numbers; the first
                           character of the expanded name is its type (T, t, W...)
    kallsyms_markers       u32 per 256 symbols: where in kallsyms_names each group starts
    kallsyms_seqs_of_names 3 bytes per symbol (Linux 6.2, backported to later 6.1 releases)
    kallsyms_token_table   256 NUL-terminated strings
    kallsyms_token_index   u16[256]: where each token starts in the token table

None of them has a symbol of its own in a stripped image, so they are found by their
shape: the token table holds the ten digits as tokens 0x30-0x39 ("0", "1", ... "9", one
after the other), the token index points there, the markers start with 0 and end where the
token table (or the seqs table, 3 bytes per symbol before it) begins, and the symbol count
before the names agrees with the number of markers and with walking the names up to the
markers. Anything that does not fit gives
no symbols (an empty tuple), never a guess. (The same idea as the vmlinux-to-elf tool.)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

_DIGITS = b"".join(bytes((c,)) + b"\0" for c in b"0123456789")
#: Symbol types that name code (nm's letters, as kallsyms keeps them).
CODE_TYPES = frozenset("TtWw")


@dataclass(frozen=True)
class KernelSymbol:
    name: str
    address: int
    type: str

    @property
    def is_function(self) -> bool:
        return self.type in CODE_TYPES


def _u16(raw: bytes, at: int) -> int:
    return int(struct.unpack_from("<H", raw, at)[0])


def _u32(raw: bytes, at: int) -> int:
    return int(struct.unpack_from("<I", raw, at)[0])


def _token_table(raw: bytes) -> tuple[int, int] | None:
    """(token table start, token index start) in `raw`, or None."""
    at = raw.find(_DIGITS)
    while at >= 0:
        # The index follows the table (which ends within a few KiB), 4-byte aligned.
        for index in range((at + 3) & ~3, min(at + 0x4000, len(raw) - 512), 4):
            if _u16(raw, index) != 0:
                continue
            zero = _u16(raw, index + 2 * 0x30)
            if all(_u16(raw, index + 2 * (0x30 + k)) == zero + 2 * k for k in range(10)) and zero <= at:
                table = at - zero
                if _index_fits(raw, table, index):
                    return table, index
        at = raw.find(_DIGITS, at + 1)
    return None


def _index_fits(raw: bytes, table: int, index: int) -> bool:
    """Every index entry points just past the previous token's NUL, up to the index."""
    pos = table
    for t in range(256):
        if _u16(raw, index + 2 * t) != pos - table:
            return False
        end = raw.find(b"\0", pos, index)
        if end < 0:
            return False
        pos = end + 1
    return pos <= index


def read(raw: bytes, text_start: int, text_end: int) -> tuple[KernelSymbol, ...]:
    """The kallsyms of the vmlinux file `raw`, sorted by address, or () if it has none this
    module can read. `text_start`/`text_end` bound the kernel's code addresses: a decoded
    table must name symbols there (a check, not a filter)."""
    found = _token_table(raw)
    if found is None:
        return ()
    table, index = found
    tokens = []
    for t in range(256):
        start = table + _u16(raw, index + 2 * t)
        tokens.append(raw[start:raw.index(b"\0", start)].decode("latin-1"))
    for markers_at, markers in _marker_runs(raw, table):
        located = _count_and_names(raw, markers_at, markers, tokens)
        if located is None:
            continue
        count_at, names = located
        gap = table - (markers_at + 4 * len(markers))
        if gap not in (0, (3 * len(names) + 3) & ~3):
            continue                           # neither adjacent nor kallsyms_seqs_of_names between
        base = _u32(raw, count_at - 4)
        offsets_at = count_at - 4 - 4 * len(names)
        if offsets_at < 0:
            return ()
        offsets = struct.unpack_from(f"<{len(names)}i", raw, offsets_at)
        out = [KernelSymbol(name[1:], (base + off) & 0xFFFFFFFF, name[0])
               for name, off in zip(names, offsets, strict=True)]
        if not any(s.is_function and text_start <= s.address < text_end for s in out):
            return ()
        out.sort(key=lambda s: s.address)
        return tuple(out)
    return ()


#: How far before the token table the markers may end: kallsyms_seqs_of_names (Linux 6.2, and
#: backported to 6.1 stable) sits between them, 3 bytes per symbol.
_SEQS_MAX = 3 * (1 << 20)


def _marker_runs(raw: bytes, table: int) -> list[tuple[int, list[int]]]:
    """Candidate kallsyms_markers arrays: a 0, then strictly increasing u32s, ending where
    the token table begins or where a seqs table of the right size (3 bytes per symbol for
    the 256 * (n - 1) + 1 to 256 * n symbols that n markers stand for) does. Vectorised:
    the window before the token table is a few MiB."""
    lo = table - 4 * min(table // 4, _SEQS_MAX // 4)        # the same alignment as the table
    words = np.frombuffer(raw, dtype="<u4", count=(table - lo) // 4, offset=lo)
    if len(words) < 2:
        return []
    breaks = np.flatnonzero(words[1:] <= words[:-1]) + 1      # where an increasing run stops
    zeros = np.flatnonzero(words == 0)
    after = np.searchsorted(breaks, zeros, side="right")
    run_end = np.where(after < len(breaks), breaks[np.minimum(after, len(breaks) - 1)], len(words))
    # Markers z..e (n = e - z words) end 4 * (len - e) bytes before the table; that gap is 0 or
    # holds 3 bytes for each of 256 * (n - 1) + 1 .. 256 * n symbols, rounded up to 4. For a
    # given z that leaves e = len(words), or one or two values of e around (4 * len + 768 z) / 772.
    out = []
    total = len(words)
    for z, limit in zip(zeros[::-1].tolist(), run_end[::-1].tolist(), strict=True):
        first = -(-(4 * total + 768 * z - 3) // 772)
        for e in {total, first, first + 1}:
            n, gap = e - z, 4 * (total - e)
            if not (0 < n and e <= limit):
                continue
            if gap == 0 or 3 * (256 * (n - 1) + 1) <= gap <= ((3 * 256 * n + 3) & ~3):
                out.append((lo + 4 * z, [int(v) for v in words[z:e]]))
    return out


def _count_and_names(raw: bytes, markers_at: int, markers: list[int],
                     tokens: list[str]) -> tuple[int, list[str]] | None:
    """Where kallsyms_num_syms is and the expanded names, for markers at `markers_at`."""
    lowest = max(4, markers_at - markers[-1] - 256 * 260)
    for count_at in range(markers_at - 8 - (markers[-1] & ~3), lowest, -4):
        count = _u32(raw, count_at)
        if not count or (count + 255) // 256 != len(markers):
            continue
        names = _names(raw, count_at + 4, markers_at, count, tokens)
        if names is not None:
            return count_at, names
    return None


def _names(raw: bytes, at: int, end: int, count: int, tokens: list[str]) -> list[str] | None:
    """Expand `count` compressed names from `at`; None unless they end right before `end`."""
    names = []
    for _ in range(count):
        if at >= end:
            return None
        length = raw[at]
        at += 1
        if length & 0x80:
            length = (length & 0x7F) | (raw[at] << 7)
            at += 1
        if not length or at + length > end:
            return None
        names.append("".join(tokens[b] for b in raw[at:at + length]))
        at += length
    return names if end - at < 4 else None
