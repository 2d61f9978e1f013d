"""Clearing Unicorn's stale `old_exception` after each handled fault.

Unicorn 2.1.4 hands faults to the UC_HOOK_INTR hook instead of
`x86_cpu_do_interrupt`, so the line of QEMU that marks a fault as delivered
(`env->old_exception = -1`) never runs: the next contributory fault or #PF is
promoted to #DF, and the one after that is a triple fault (unicorn issue #1883).
Software interrupts (INT3, INT n) and #UD never set it.

The field is part of the CPU state `uc_context_save` copies, so the VMM saves the
context, writes -1 at the field's offset and restores it. The offset is derived
once per process, never hard-coded: in a scratch engine, the bytes that read
-1 before a #DE and 0 after it, and 13 after a #GP.
"""

from __future__ import annotations

import ctypes
import functools

from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_32, Uc, UcError
from unicorn.unicorn_py3.unicorn import uclib

from bt.errors import InternalError

#: Vectors after which `old_exception` holds a value (SDM table 6-4 classes).
POISONING = frozenset({0, 8, 10, 11, 12, 13, 14})
_MINUS_ONE = b"\xff\xff\xff\xff"  # -1 as the 32-bit int old_exception is


def _context_after(code: bytes) -> tuple[bytes, bytes]:
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
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


class ExceptionLatch:
    """Writes -1 into `old_exception` of a running engine (from inside its hook)."""

    def __init__(self, uc: Uc) -> None:
        self.uc = uc
        self.offset = old_exception_offset()
        self.ctx = uc.context_save()
        # Raw prototypes (the binding's per-call argument conversion costs ~1 µs).
        lib = ctypes.CDLL(uclib._name)
        self._save, self._restore = lib.uc_context_save, lib.uc_context_restore
        self._save.restype = self._restore.restype = ctypes.c_int
        self._h = ctypes.c_void_p(int(uc._uch.value or 0))  # type: ignore[union-attr]
        self._ctx = ctypes.c_void_p(int(self.ctx.context.value or 0))
        self._field = ctypes.c_int32.from_address(int(self.ctx.context.value or 0) + self.offset)
        self.clears = 0

    def clear(self) -> None:
        if self._save(self._h, self._ctx) != 0:
            raise InternalError("uc_context_save failed")
        self._field.value = -1
        if self._restore(self._h, self._ctx) != 0:
            raise InternalError("uc_context_restore failed")
        self.clears += 1
