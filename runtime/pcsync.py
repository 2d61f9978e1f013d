"""Keeping the EIP Unicorn shows IN/OUT hooks right after a hook wrote EIP.

Unicorn syncs EIP for an IN/OUT hook from the host return address into the translated
block (`cpu_restore_state`, qemu/softmmu/ioport.c in unicorn 2.1.4), unless
`uc_struct.skip_sync_pc_on_exit` is set. `uc_reg_write` of EIP sets that flag (uc.c:
"force to quit execution and flush TB") and, when the write happened in an interrupt
hook, nothing clears it before the next `emu_start`: every IN/OUT hook for the rest of
the slice sees the EIP of its block's start, not of its instruction. The VMM writes EIP
in its interrupt hook on every exit it emulates, and decodes the IN/OUT at EIP in the I/O
hook, so it clears the flag when its interrupt hook returns (`PcSync.after_hook`).
Unicorn's own instruction count hid this: its per-instruction helper syncs EIP anyway
(runtime/clock.py no longer uses it).

The flag's offset in the engine struct is found once per process in a scratch engine,
never hard-coded (as runtime/latch.py and runtime/insncount.py do for their fields): the
last byte that `uc_reg_write(EIP)` sets and `emu_start` clears (the flag is the struct's
last field), which must then, cleared by the VMM after a hook wrote EIP, make an IN hook
later in the same slice see its instruction's EIP. If
no single byte passes, `PcSync.available` is False and the caller keeps Unicorn's
instruction count (which syncs EIP) instead.
"""

from __future__ import annotations

import ctypes
import functools

from unicorn import UC_HOOK_INSN, UC_HOOK_INTR, Uc, UcError
from unicorn import x86_const as ux

from runtime.engine import SCRATCH_TCG_BUFFER, new_engine

#: How far into the engine struct to look: the flag is its last field, after the
#: per-level jump buffers (~13 KB in 2.1.4).
_SCAN = 32768
#: int3; mov dx, 0x80; in al, dx; hlt. The IN is not the first instruction of its block.
_CODE = b"\xcc\x66\xba\x80\x00\xec\xf4"
_BASE = 0x1000
_IN_AT = _BASE + 5


def _handle(uc: Uc) -> int:
    return int(uc._uch.value or 0)  # type: ignore[union-attr]


def _readable(addr: int, size: int) -> bool:
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, perms = line.split()[:2]
            lo, hi = (int(x, 16) for x in span.split("-"))
            if perms.startswith("r") and lo <= addr and addr + size <= hi:
                return True
    return False


def _scratch(write_eip: bool, clear: int | None) -> tuple[int, bytes]:
    """Run _CODE; the INT3 hook writes EIP if asked (then clears byte `clear`); returns
    (the EIP the IN hook saw, the engine struct as the IN hook saw it)."""
    uc = new_engine(SCRATCH_TCG_BUFFER)
    uc.mem_map(_BASE, 0x1000)
    uc.mem_write(_BASE, _CODE)
    seen: list[tuple[int, bytes]] = []
    size = _SCAN if _readable(_handle(uc), _SCAN) else 0

    def on_intr(u: Uc, _vector: int, _data: object) -> None:
        if write_eip:
            u.reg_write(ux.UC_X86_REG_EIP, u.reg_read(ux.UC_X86_REG_EIP))
            if clear is not None:
                ctypes.c_uint8.from_address(_handle(u) + clear).value = 0

    def on_in(u: Uc, _port: int, _size: int, _data: object) -> int:
        seen.append((u.reg_read(ux.UC_X86_REG_EIP), ctypes.string_at(_handle(u), size) if size else b""))
        return 0

    uc.hook_add(UC_HOOK_INTR, on_intr)
    uc.hook_add(UC_HOOK_INSN, on_in, None, 1, 0, ux.UC_X86_INS_IN)
    uc.emu_start(_BASE, _BASE + len(_CODE) - 1)
    return seen[0]


@functools.cache
def flag_offset() -> int | None:
    try:
        eip_plain, _ = _scratch(False, None)
        if eip_plain != _IN_AT or _scratch(True, None)[0] == _IN_AT:
            return None          # nothing to make up for
        # In one engine, with no emulation in between: `uc_reg_write(EIP)` sets the flag
        # (and quit_request), `emu_start` clears both. The flag is the struct's last field,
        # so the highest such byte; only that one is then tried.
        uc = new_engine(SCRATCH_TCG_BUFFER)
        uc.mem_map(_BASE, 0x1000)
        uc.mem_write(_BASE, b"\xf4")
        if not _readable(_handle(uc), _SCAN):
            return None
        before = ctypes.string_at(_handle(uc), _SCAN)
        uc.reg_write(ux.UC_X86_REG_EIP, _BASE)
        during = ctypes.string_at(_handle(uc), _SCAN)
        uc.emu_start(_BASE, _BASE + 1)
        after = ctypes.string_at(_handle(uc), _SCAN)
        # Walked from each 1 byte of `during` (bytes.find) rather than over all 32 KiB in
        # Python: 3 ms of every `bt run`'s start-up (issue 14).
        candidates = []
        o = during.find(1)
        while o >= 0:
            if before[o] == 0 and after[o] == 0:
                candidates.append(o)
            o = during.find(1, o + 1)
        if not candidates or _scratch(True, candidates[-1])[0] != _IN_AT:
            return None
    except (UcError, IndexError, ValueError):
        return None
    return candidates[-1]


class PcSync:
    def __init__(self, uc: Uc) -> None:
        offset = flag_offset()
        #: False: the flag could not be located (or this Unicorn does not need it).
        self.available = offset is not None
        self._flag = ctypes.c_uint8.from_address(_handle(uc) + offset) if offset is not None else None

    def flag_address(self) -> int | None:
        """Host address of the flag (runtime/native/fastexit.c clears it too)."""
        return ctypes.addressof(self._flag) if self._flag is not None else None

    def after_hook(self) -> None:
        """The interrupt hook that may have written EIP is returning: Unicorn's later IN/OUT
        hooks in this slice must see their own EIP again."""
        if self._flag is not None:
            self._flag.value = 0
