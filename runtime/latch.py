"""Unicorn's exception state: clearing the stale `old_exception` after each handled
fault, and reading what the CPU knew about the exception it hands the hook.

Unicorn 2.1.4 hands faults to the UC_HOOK_INTR hook instead of
`x86_cpu_do_interrupt`, so the line of QEMU that marks a fault as delivered
(`env->old_exception = -1`) never runs: the next contributory fault or #PF is
promoted to #DF, and the one after that is a triple fault (unicorn issue #1883).
Software interrupts (INT3, INT n) and #UD never set it.

The field is part of the CPU state `uc_context_save` copies (a plain memcpy of
the engine's CPUX86State), so the VMM can save the context, write -1 at the
field's offset and restore it ("context" method, ~2 µs). The offset is derived
once per process, never hard-coded: in a scratch engine, the bytes that read -1
before a #DE and 0 after it, and 13 after a #GP.

Faster ("direct" method, ~0.1 µs): write the same 4 bytes in the engine's live
CPU state. Its address is found without guessing: put marker values in EAX..EBX,
locate them in the saved context (the start of the CPU state there) and in
memory reachable from one pointer of the engine struct (only readable mappings
of /proc/self/maps are read), then check that writing EAX through the API
changes that memory and that the field reads -1. The first engine of a process
searches every pointer of the struct (~30 ms); later ones try the pointer that
led there first (~0.1 ms), with the same checks. If any step
fails the latch falls back to the context method. Either way only the field the
context method would write is written.

What the hook is not told (`ExceptionInfo`)
-------------------------------------------
Unicorn's UC_HOOK_INTR hook gets only the vector. Two more facts sit in the same CPU
state, set by QEMU's `raise_interrupt2` for every exception (target/i386/excp_helper.c):

* `error_code`: the code the CPU would push (the selector of a refused segment load,
  the #PF error code with its W bit for a read-modify-write, 0...), so the VMM never
  has to guess it;
* `exception_is_int`: 1 for a software interrupt (INT n, INT3, INTO), 0 for a fault.
  A guest's `int $13` at CPL 1 is then never taken for a #GP, whose EIP it shares the
  vector with (issue 11, item 7).

Their offsets are derived the same way as `old_exception`'s, by diffing contexts saved
in a scratch engine around a #GP with a known selector and around an INT 0x0D, never
hard-coded; they are read at the live address when the latch found one (a few ns),
otherwise from a saved context (~2 µs).
"""

from __future__ import annotations

import bisect
import ctypes
import functools
import struct

from unicorn import UC_HOOK_INTR, Uc, UcError
from unicorn import x86_const as ux
from unicorn.unicorn_py3.unicorn import uclib

from bt.errors import InternalError
from runtime.engine import SCRATCH_TCG_BUFFER, new_engine

#: Vectors after which `old_exception` holds a value (SDM table 6-4 classes).
POISONING = frozenset({0, 8, 10, 11, 12, 13, 14})
_MINUS_ONE = b"\xff\xff\xff\xff"  # -1 as the 32-bit int old_exception is


def _context_after(code: bytes) -> tuple[bytes, bytes]:
    uc = new_engine(SCRATCH_TCG_BUFFER)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, code + b"\xf4")
    uc.hook_add(UC_HOOK_INTR, lambda u, v, d: u.emu_stop())
    before = bytes(uc.context_save())
    try:
        uc.emu_start(0x1000, 0x1FFF, count=len(code) + 2)
    except UcError:
        pass
    return before, bytes(uc.context_save())


@functools.cache
def old_exception_offset() -> int:
    b0, a0 = _context_after(b"\x31\xc9\xf7\xf1")          # xor ecx, ecx; div ecx -> #DE (0)
    b2, a2 = _context_after(b"\x66\xb8\x34\x12\x8e\xd8")  # mov ax, 0x1234; mov ds, ax -> #GP (13)
    candidates = [off for off in range(0, len(b0) - 3, 4)
                  if b0[off:off + 4] == _MINUS_ONE and a0[off:off + 4] == bytes(4)
                  and b2[off:off + 4] == _MINUS_ONE and a2[off:off + 4] == b"\x0d\0\0\0"]
    if len(candidates) != 1:
        raise InternalError(f"cannot locate Unicorn's old_exception field (candidates {candidates})")
    return candidates[0]


def _context_at_hook(code: bytes) -> bytes:
    """The context saved inside the interrupt hook, after `code` raised its exception."""
    uc = new_engine(SCRATCH_TCG_BUFFER)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, code + b"\xf4")
    seen: list[bytes] = []

    def hook(u: Uc, _vector: int, _data: object) -> None:
        seen.append(bytes(u.context_save()))
        u.emu_stop()

    uc.hook_add(UC_HOOK_INTR, hook)
    try:
        uc.emu_start(0x1000, 0x1FFF, count=len(code) + 2)
    except UcError:
        pass
    if not seen:
        raise InternalError("Unicorn raised no exception in the scratch engine")
    return seen[0]


@functools.cache
def exception_offsets() -> tuple[int, int]:
    """Context offsets of (`error_code`, `exception_is_int`) (module docstring)."""
    gp = _context_at_hook(b"\x66\xb8\x34\x12\x8e\xd8")   # mov ax, 0x1234; mov ds, ax -> #GP(0x1234)
    soft = _context_at_hook(b"\x90\xcd\x0d")              # nop; int 0x0d
    de = _context_at_hook(b"\x31\xc9\xf7\xf1")           # xor ecx, ecx; div ecx -> #DE

    def word(ctx: bytes, off: int) -> int:
        return int(struct.unpack_from("<I", ctx, off)[0])

    size = min(len(gp), len(soft), len(de))
    errors = [o for o in range(0, size - 3, 4)
              if word(gp, o) == 0x1234 and word(soft, o) == 0 and word(de, o) == 0]
    is_int = [o for o in range(0, size - 3, 4)
              if word(soft, o) == 1 and word(gp, o) == 0 and word(de, o) == 0]
    # QEMU declares them next to each other (CPUX86State: error_code, exception_is_int).
    pairs = [(e, i) for e in errors for i in is_int if i == e + 4]
    if len(pairs) != 1:
        raise InternalError(f"cannot locate Unicorn's error_code, exception_is_int ({errors}, {is_int})")
    return pairs[0]


_MARKS = (0x5A17C0DE, 0x0BADF00D, 0x1337BEEF, 0x7EEDFACE)
_MARK_REGS = (ux.UC_X86_REG_EAX, ux.UC_X86_REG_ECX, ux.UC_X86_REG_EDX, ux.UC_X86_REG_EBX)


def _readable_ranges() -> tuple[list[int], list[int]]:
    """Readable mappings of this process, sorted: (starts, ends)."""
    spans = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, perms = line.split()[:2]
            if perms.startswith("r"):
                lo, hi = (int(x, 16) for x in span.split("-"))
                spans.append((lo, hi))
    spans.sort()
    return [lo for lo, _ in spans], [hi for _, hi in spans]


def _readable_size(ranges: tuple[list[int], list[int]], addr: int, limit: int) -> int:
    """How many bytes from `addr` (at most `limit`) lie in one readable mapping."""
    starts, ends = ranges
    i = bisect.bisect_right(starts, addr) - 1
    if i < 0 or addr >= ends[i]:
        return 0
    return min(limit, ends[i] - addr)


#: Where the live register file was found last, as (offset in the engine struct of the
#: pointer that leads to it, distance from that pointer's target): the same for every
#: engine of one libunicorn, so later engines check it first (`live_field_address`).
_known_path: tuple[int, int] | None = None


def _marked(uc: Uc) -> bytes:
    """Write the marker values into EAX..EBX; their bytes as the CPU state holds them."""
    for reg, mark in zip(_MARK_REGS, _MARKS, strict=True):
        uc.reg_write(reg, mark)
    return b"".join(struct.pack("<Q", m) for m in _MARKS)


def _search(handle: int, pattern: bytes) -> dict[int, tuple[int, int]]:
    """Places reachable from one pointer of the engine struct that hold `pattern`:
    address -> (pointer's offset in the struct, distance from its target)."""
    ranges = _readable_ranges()
    found: dict[int, tuple[int, int]] = {}
    if _readable_size(ranges, handle, 8192) < 8192:
        return found
    words = ctypes.string_at(handle, 8192)
    for at in range(0, 8192, 8):
        p = struct.unpack_from("<Q", words, at)[0]
        size = _readable_size(ranges, p, 0x20000)
        if size < 0x1000:
            continue
        hit = ctypes.string_at(p, size).find(pattern)
        if hit >= 0:
            found.setdefault(p + hit, (at, hit))
    return found


def _known(handle: int, pattern: bytes) -> dict[int, tuple[int, int]]:
    """Where `_known_path` leads in this engine, if the marker values are there."""
    if _known_path is None:
        return {}
    at, hit = _known_path
    p = ctypes.c_uint64.from_address(handle + at).value
    if _readable_size(_readable_ranges(), p + hit, len(pattern)) < len(pattern) \
            or ctypes.string_at(p + hit, len(pattern)) != pattern:
        return {}
    return {p + hit: _known_path}


def live_field_address(uc: Uc, offset: int) -> int | None:
    """Address of `old_exception` in `uc`'s live CPU state, or None (module docstring)."""
    global _known_path
    saved = [uc.reg_read(r) for r in _MARK_REGS]
    handle = int(uc._uch.value or 0)  # type: ignore[union-attr]
    try:
        for search in (_known, _search):
            pattern = _marked(uc)
            start = bytes(uc.context_save()).find(pattern)   # where the CPU state's regs[] sit
            if start < 0:
                return None
            found = search(handle, pattern)
            # Only the live state follows a register write (a saved context does not).
            uc.reg_write(_MARK_REGS[0], 0x600DCAFE)
            live = [a for a in found if ctypes.c_uint64.from_address(a).value == 0x600DCAFE]
            if len(live) != 1:
                continue
            field = live[0] - start + offset
            if ctypes.c_int32.from_address(field).value != -1:
                continue
            _known_path = found[live[0]]
            return field
        return None
    finally:
        for reg, value in zip(_MARK_REGS, saved, strict=True):
            uc.reg_write(reg, value)


class ExceptionLatch:
    """Writes -1 into `old_exception` of a running engine (from inside its hook)."""

    def __init__(self, uc: Uc, method: str = "direct") -> None:
        self.uc = uc
        self.offset = old_exception_offset()
        self._live = live_field_address(uc, self.offset) if method == "direct" else None
        #: "direct" or "context" (module docstring).
        self.method = "direct" if self._live is not None else "context"
        if self._live is not None:
            self._live_field = ctypes.c_int32.from_address(self._live)
        self.ctx = uc.context_save()
        # Raw prototypes (the binding's per-call argument conversion costs ~1 µs).
        lib = ctypes.CDLL(uclib._name)
        self._save, self._restore = lib.uc_context_save, lib.uc_context_restore
        self._save.restype = self._restore.restype = ctypes.c_int
        self._h = ctypes.c_void_p(int(uc._uch.value or 0))  # type: ignore[union-attr]
        self._ctx = ctypes.c_void_p(int(self.ctx.context.value or 0))
        self._field = ctypes.c_int32.from_address(int(self.ctx.context.value or 0) + self.offset)
        self.clears = 0

    def latched(self) -> int:
        """`old_exception` now: the vector of the fault the CPU is delivering (a #GP or #PF
        hook sees 13 or 14), -1 for a software interrupt (INT n never sets it, notes #3)."""
        if self._live is not None:
            return int(self._live_field.value)
        if self._save(self._h, self._ctx) != 0:
            raise InternalError("uc_context_save failed")
        return int(self._field.value)

    def count_clears(self, n: int) -> None:
        """`n` clears made in C (runtime/fastexit.py) through `live_fields`."""
        self.clears += n

    def clear(self) -> None:
        if self._live is not None:
            self._live_field.value = -1
            self.clears += 1
            return
        if self._save(self._h, self._ctx) != 0:
            raise InternalError("uc_context_save failed")
        self._field.value = -1
        if self._restore(self._h, self._ctx) != 0:
            raise InternalError("uc_context_restore failed")
        self.clears += 1


class ExceptionInfo:
    """The error code and the software-interrupt flag of the exception Unicorn is
    handing its hook right now (module docstring). Uses the latch's live CPU state
    when it found one, else a saved context."""

    def __init__(self, latch: ExceptionLatch) -> None:
        self._latch = latch
        error_off, int_off = exception_offsets()
        self._error: ctypes.c_int32 | None = None
        self._is_int: ctypes.c_int32 | None = None
        if latch._live is not None:
            base = latch._live - latch.offset
            self._error = ctypes.c_int32.from_address(base + error_off)
            self._is_int = ctypes.c_int32.from_address(base + int_off)
        self._offsets = (error_off, int_off)

    def live_fields(self) -> tuple[int, int, int] | None:
        """Host addresses of the live `old_exception`, `error_code` and `exception_is_int`
        (for runtime/native/fastexit.c), None without the direct method."""
        if self._error is None or self._is_int is None or self._latch._live is None:
            return None
        return (self._latch._live, ctypes.addressof(self._error), ctypes.addressof(self._is_int))

    def read(self) -> tuple[int, bool]:
        """(error code, True for INT n / INT3 / INTO)."""
        if self._error is not None and self._is_int is not None:
            return self._error.value & 0xFFFFFFFF, bool(self._is_int.value)
        latch = self._latch
        if latch._save(latch._h, latch._ctx) != 0:
            raise InternalError("uc_context_save failed")
        raw = ctypes.string_at(int(latch.ctx.context.value or 0), max(self._offsets) + 4)
        error = struct.unpack_from("<I", raw, self._offsets[0])[0]
        return int(error), bool(struct.unpack_from("<i", raw, self._offsets[1])[0])
