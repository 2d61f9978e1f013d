"""Counting guest instructions, which is what virtual time is made of (runtime/vm.py).

Two clocks, the same interface (`begin` a slice with a budget, `fault` when an exception
leaves a block in its middle, `end` the slice and get the instructions it ran):

* `BlockClock`, the default: a C hook Unicorn calls once per translated block
  (runtime/native/blockclock.c, in the module `runtime._native`) adds the block's
  instruction count and stops the slice once its budget is spent: at the first block that
  starts after it, which Unicorn then does not run (unicorn 2.1.4, tests/test_clock.py
  pins it) and the hook does not count. A block that starts within the budget runs whole,
  so a slice ends on a block boundary, the same one in every run, and always makes
  progress. A block left in its middle by an exception or an error only ran the
  instructions before it: `fault` and `end` take the rest back, counting them with
  Capstone from the block's start to where the CPU is. A stop from an
  IN/OUT hook lets the block run to its end (unicorn 2.1.4), so it needs nothing.
  Measured on an exit-free loop: within 2x of Unicorn with no count at all, against
  20x for Unicorn's own count.
  A stop from a hook lets the block run to its end. Where the VMM must stop exactly (a
  user-mode I/O instruction the guest's IOPL and TSS deny faults before anything after it
  runs; an interrupt an OUT made deliverable comes right after it; the guest's isa-debug-
  exit ends it), that is not good enough: the hook decodes each block it first sees
  (Capstone, in C) and stops before one with an I/O instruction, which the run loop gives
  a no-op code hook (`_make_exact`): its per-instruction exit check makes Unicorn stop
  exactly. Such blocks exit anyway, so the check costs little; the others keep the speed.
  (A stop from an MMIO callback needs none of this: Unicorn stops a memory access exactly,
  runtime/mmio.py.)
* `CountClock`, the fallback when the C module is not built (no compiler at install):
  `emu_start(count=N)`, which calls a helper before every guest instruction, and the
  count Unicorn keeps (runtime/insncount.py).

Both give the same counts (tests/test_clock.py runs the samples under each). What differs
is where a slice may end: after exactly N instructions (CountClock) or at the first block
boundary after N (BlockClock), so a timer interrupt may land a few instructions later,
at the same place in every run.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import capstone
from capstone import x86_const as x86c
from unicorn import UC_HOOK_BLOCK, Uc
from unicorn import unicorn_const as uconst
from unicorn.unicorn_py3.unicorn import uclib

from runtime.engine import hook_native
from runtime.insncount import SliceCounter

try:
    from runtime import _native  # type: ignore[attr-defined]
except ImportError:   # not built: `pip install` found no C compiler
    _native = None

#: No block entered (the state's `block`).
_NONE = 0xFFFFFFFFFFFFFFFF
#: Table slots to start with (a power of two); doubled when half full.
_SLOTS = 1 << 16


class _State(ctypes.Structure):
    """runtime/native/blockclock.c `block_clock`, field for field."""

    _fields_ = [
        ("insns", ctypes.c_uint64), ("limit", ctypes.c_uint64), ("block", ctypes.c_uint64),
        ("block_insns", ctypes.c_uint32), ("block_size", ctypes.c_uint32), ("stopped", ctypes.c_uint32),
        ("misses", ctypes.c_uint32), ("failed", ctypes.c_uint32), ("used", ctypes.c_uint32),
        ("mask", ctypes.c_uint32), ("full", ctypes.c_uint32),
        ("ctl", ctypes.c_void_p), ("stop", ctypes.c_void_p), ("request", ctypes.c_int64),
        ("keys", ctypes.c_void_p), ("counts", ctypes.c_void_p), ("entered", ctypes.c_uint64),
        ("exec_prot", ctypes.c_uint32), ("insn_size", ctypes.c_uint32),
        ("vmem_read", ctypes.c_void_p), ("flags", ctypes.c_void_p), ("exact_at", ctypes.c_uint64),
        ("exact_size", ctypes.c_uint32), ("pad", ctypes.c_uint32),
        ("cs_handle", ctypes.c_uint64), ("disasm", ctypes.c_void_p), ("cs_free", ctypes.c_void_p),
        ("io_ids", ctypes.c_uint32 * 8),
        ("stepping", ctypes.c_uint32), ("step_left", ctypes.c_uint32), ("stepped", ctypes.c_uint64),
    ]


#: Table entry flags (runtime/native/blockclock.c).
_EXACT = 4
#: Capstone ids of the I/O instructions, whose blocks are made exact.
_IO_IDS = (x86c.X86_INS_IN, x86c.X86_INS_OUT, x86c.X86_INS_INSB, x86c.X86_INS_INSW, x86c.X86_INS_INSD,
           x86c.X86_INS_OUTSB, x86c.X86_INS_OUTSW, x86c.X86_INS_OUTSD)


def native_available() -> bool:
    return _native is not None and _native.state_size() == ctypes.sizeof(_State)


def native_module() -> Any:
    """runtime/native's module (the block clock and the fast exits), None if not built."""
    return _native if native_available() else None


class BlockClock:
    """Guest instructions counted per block by the C hook (module docstring)."""

    name = "block"

    def __init__(self, uc: Uc, insns_between: Callable[[int, int], int]) -> None:
        assert _native is not None
        self.uc = uc
        #: Ring-3 blocks that may do I/O, given a no-op code hook to make them exact.
        self.exact_blocks = 0
        #: [start, end) ranges the exact blocks' code hooks cover.
        self._hooked: list[tuple[int, int]] = []
        #: Instructions from the first address up to (not including) the second, for the
        #: part of a block that ran before an exit: runtime/vm.py decodes guest code.
        self._insns_between = insns_between
        self.state = _State()
        st = self.state
        st.block = _NONE
        st.ctl = ctypes.cast(uclib.uc_ctl, ctypes.c_void_p)
        st.stop = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p)
        st.request = (uconst.UC_CTL_IO_READ_WRITE << 30) | (2 << 26) | uconst.UC_CTL_TB_REQUEST_CACHE
        st.vmem_read = ctypes.cast(uclib.uc_vmem_read, ctypes.c_void_p)
        st.exec_prot = uconst.UC_PROT_EXEC
        self._cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
        st.cs_handle = self._cs.csh.value
        st.disasm = ctypes.cast(capstone._cs.cs_disasm, ctypes.c_void_p)
        st.cs_free = ctypes.cast(capstone._cs.cs_free, ctypes.c_void_p)
        st.insn_size = ctypes.sizeof(capstone._cs_insn)
        st.io_ids[:] = _IO_IDS
        self._table(_SLOTS)
        hook_native(uc, UC_HOOK_BLOCK, _native.hook_address(), ctypes.addressof(st))
        self._mark = 0
        self._cut: int | None = None

    def _table(self, slots: int) -> None:
        self._keys = (ctypes.c_uint64 * slots)()
        self._counts = (ctypes.c_uint16 * slots)()
        self._flags = (ctypes.c_uint8 * slots)()
        st = self.state
        st.keys = ctypes.addressof(self._keys)
        st.counts = ctypes.addressof(self._counts)
        st.flags = ctypes.addressof(self._flags)
        st.mask = slots - 1
        st.used = 0
        st.full = 0

    def _grow(self) -> None:
        """Between slices, when the C side found the table half full: twice the slots."""
        old = [(int(k), int(n), int(f)) for k, n, f in zip(self._keys, self._counts, self._flags, strict=True)
               if k]
        self._table(2 * (self.state.mask + 1))
        mask = self.state.mask
        keys, counts, flags = self._keys, self._counts, self._flags
        for key, n, f in old:
            i = _slot_of(key, mask)
            while keys[i]:
                i = (i + 1) & mask
            keys[i], counts[i], flags[i] = key, n, f
        self.state.used = len(old)

    @property
    def current_block(self) -> tuple[int, int, int] | None:
        """(start, size, which entry) of the translated block the CPU is in, from inside a
        hook; the entry number tells a block's next run (a loop) from this one. None in a
        counted slice (Unicorn's EIP is exact then)."""
        st = self.state
        if st.block == _NONE:
            return None
        return int(st.block), int(st.block_size), int(st.entered)

    def forget(self) -> None:
        """Guest code changed where blocks were counted (the VMM area moved, code was dropped
        wholesale): count them afresh."""
        self._table(self.state.mask + 1)

    def _slot(self, at: int, size: int) -> int | None:
        key = (at << 16) | (size & 0xFFFF)
        mask = self.state.mask
        i = _slot_of(key, mask)
        while self._keys[i]:
            if self._keys[i] == key:
                return i
            i = (i + 1) & mask
        return None

    def _make_exact(self) -> None:
        """The hook stopped before a block with an I/O instruction: give it the no-op code hook
        (and a fresh translation) that makes Unicorn stop exactly at any of its instructions,
        and mark it so in the table. Hooks are kept: such blocks are few."""
        st = self.state
        at, size = int(st.exact_at), int(st.exact_size)
        st.exact_at = 0
        assert _native is not None
        # One code hook per guest address at most: blocks overlap (a block entered in the
        # middle of another, at an address the guest jumps to or a one-instruction slice
        # resumes at), and two hooks on an instruction would count it twice while stepping,
        # stopping before it runs.
        for lo, hi in self._uncovered(at, at + size):
            hook_native(self.uc, uconst.UC_HOOK_CODE, _native.exact_hook_address(), ctypes.addressof(st),
                        lo, hi - 1)
            self._hooked.append((lo, hi))
        self.uc.ctl_remove_cache(at, at + size)
        i = self._slot(at, size)
        if i is not None:
            self._flags[i] |= _EXACT
        self.exact_blocks += 1

    def _uncovered(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The parts of [lo, hi) no exact block's code hook covers yet."""
        parts = [(lo, hi)]
        for a, b in self._hooked:
            parts = [piece for p, q in parts
                     for piece in ((p, min(q, a)), (max(p, b), q)) if piece[0] < piece[1]]
        return parts

    # -- a slice ----------------------------------------------------------------------------
    def begin(self, budget: int) -> dict[str, Any]:
        st = self.state
        if st.exact_at:
            self._make_exact()
        if st.full:
            self._grow()
        self._mark = st.insns
        st.limit = st.insns + budget
        st.stopped = 0
        st.block = _NONE
        # A budget of one is run exactly (an interrupt shadow: runtime/vm.py), through the
        # code hook of an exact block.
        st.stepping = 1 if budget == 1 else 0
        st.step_left = 1
        st.stepped = 0
        return {}

    def stop_soon(self) -> None:
        """From a hook: end the slice at the next block boundary (the block hook then stops
        Unicorn before that block; nothing is restarted, unlike `emu_stop` from a memory hook)."""
        self.state.limit = self.state.insns

    @property
    def mark(self) -> int:
        """The state's instruction count when the running slice began."""
        return self._mark

    def so_far(self) -> int:
        """Instructions the running slice has counted up to now, read from a hook in the
        middle of it: every block entered, the current one whole (after `fault`, up to the
        faulting instruction)."""
        return int(self.state.insns - self._mark)

    def fault(self, eip: int, at: bool) -> None:
        """An exception was raised at `eip` inside the block entered last (`at`: a fault,
        EIP is the instruction's own, which counts as run, as Unicorn's count does; else a
        software interrupt, EIP is after it): the rest of the block did not run."""
        st = self.state
        if st.block == _NONE or st.stepping:
            return
        start, n = st.block, st.block_insns
        st.block = _NONE
        if start <= eip < start + st.block_size:
            st.insns -= n - self._insns_between(start, eip) - (1 if at else 0)

    def cut(self, after: int) -> None:
        """The guest ended at the instruction ending at `after` (its isa-debug-exit OUT): the
        rest of its block, which Unicorn still runs, is not the guest's (runtime/traps.py)."""
        self._cut = after

    def end(self, eip: int, error: bool) -> int:
        """The slice is over, the CPU at `eip`: the instructions it ran (module docstring)."""
        st = self.state
        if st.stepping:
            st.stepping = 0
            st.block = _NONE
            st.insns = self._mark + st.stepped
            return int(st.stepped)
        cut, self._cut = self._cut, None
        if cut is not None and st.block != _NONE and st.block < cut <= st.block + st.block_size:
            st.insns -= st.block_insns - self._insns_between(st.block, cut)
        elif st.block != _NONE:
            start, size = st.block, st.block_size
            if st.stopped:
                pass                                  # stopped before it ran: not counted
            elif error and start <= eip < start + size:
                st.insns -= st.block_insns - self._insns_between(start, eip)
            # A stop from an IN/OUT hook lets the block run to its end (unicorn 2.1.4): EIP
            # may even be inside it again (a loop), which says nothing of what ran.
        st.block = _NONE
        return int(st.insns - self._mark)


def _slot_of(key: int, mask: int) -> int:
    """The C side's hash (runtime/native/blockclock.c `slot_of`), for rehashing."""
    key ^= key >> 29
    key = (key * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    key ^= key >> 32
    return key & mask


class CountClock:
    """Unicorn's own instruction count (module docstring)."""

    name = "count"

    def __init__(self, uc: Uc) -> None:
        self._counter = SliceCounter(uc)
        self._budget = 0

    def begin(self, budget: int) -> dict[str, Any]:
        self._budget = budget
        return {"count": budget}

    def so_far(self) -> int:
        return min(self._counter.so_far(), self._budget)

    def stop_soon(self) -> None:
        pass     # no way to stop early without restarting the instruction: the slice runs out

    def fault(self, eip: int, at: bool) -> None:
        pass

    def cut(self, after: int) -> None:
        pass             # Unicorn's count stops right after the instruction

    def end(self, eip: int, error: bool) -> int:
        return self._counter.executed(self._budget)

    def forget(self) -> None:
        pass
