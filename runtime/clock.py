"""Counting guest instructions, which is what virtual time is made of (runtime/vm.py).

Two clocks, the same interface (`begin` a slice with a budget, `fault` when an exception
leaves a block in its middle, `end` the slice and get the instructions it ran):

* `BlockClock`, the default: a C hook Unicorn calls once per translated block
  (runtime/native/blockclock.c) adds the block's instruction count and stops the slice
  once its budget is spent. Unicorn then stops before that block runs (unicorn 2.1.4,
  tests/test_clock.py pins it), so `end` takes its count back: a slice ends on a block
  boundary, the same one in every run. A block left in its middle by an exception or an
  error only ran the instructions before it: `fault` and `end` take the rest back,
  counting them with Capstone from the block's start to where the CPU is. A stop from an
  IN/OUT hook lets the block run to its end (unicorn 2.1.4), so it needs nothing.
  Measured on an exit-free loop: within 2x of Unicorn with no count at all, against
  20x for Unicorn's own count.
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

from unicorn import UC_HOOK_BLOCK, Uc
from unicorn import unicorn_const as uconst
from unicorn.unicorn_py3.unicorn import uclib

from runtime.insncount import SliceCounter

try:
    from runtime import _blockclock  # type: ignore[attr-defined]
except ImportError:   # not built: `pip install` found no C compiler
    _blockclock = None

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
        ("keys", ctypes.c_void_p), ("counts", ctypes.c_void_p),
    ]


def native_available() -> bool:
    return _blockclock is not None and _blockclock.state_size() == ctypes.sizeof(_State)


class BlockClock:
    """Guest instructions counted per block by the C hook (module docstring)."""

    name = "block"

    def __init__(self, uc: Uc, insns_between: Callable[[int, int], int]) -> None:
        assert _blockclock is not None
        self.uc = uc
        #: Instructions from the first address up to (not including) the second, for the
        #: part of a block that ran before an exit: runtime/vm.py decodes guest code.
        self._insns_between = insns_between
        self.state = _State()
        st = self.state
        st.block = _NONE
        st.ctl = ctypes.cast(uclib.uc_ctl, ctypes.c_void_p)
        st.stop = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p)
        st.request = (uconst.UC_CTL_IO_READ_WRITE << 30) | (2 << 26) | uconst.UC_CTL_TB_REQUEST_CACHE
        self._table(_SLOTS)
        self._hook = ctypes.c_size_t()
        err = uclib.uc_hook_add(uc._uch, ctypes.byref(self._hook), UC_HOOK_BLOCK,  # type: ignore[attr-defined]
                                ctypes.c_void_p(_blockclock.hook_address()),
                                ctypes.c_void_p(ctypes.addressof(st)), ctypes.c_uint64(1), ctypes.c_uint64(0))
        if err != 0:
            raise RuntimeError(f"uc_hook_add(UC_HOOK_BLOCK) failed: {err}")
        self._mark = 0

    def _table(self, slots: int) -> None:
        self._keys = (ctypes.c_uint64 * slots)()
        self._counts = (ctypes.c_uint16 * slots)()
        st = self.state
        st.keys = ctypes.addressof(self._keys)
        st.counts = ctypes.addressof(self._counts)
        st.mask = slots - 1
        st.used = 0
        st.full = 0

    def _grow(self) -> None:
        """Between slices, when the C side found the table half full: twice the slots."""
        old = [(int(k), int(n)) for k, n in zip(self._keys, self._counts, strict=True) if k]
        self._table(2 * (self.state.mask + 1))
        mask = self.state.mask
        keys, counts = self._keys, self._counts
        for key, n in old:
            i = _slot_of(key, mask)
            while keys[i]:
                i = (i + 1) & mask
            keys[i], counts[i] = key, n
        self.state.used = len(old)

    def forget(self) -> None:
        """Guest code changed where blocks were counted (the VMM area moved, code was dropped
        wholesale): count them afresh."""
        self._table(self.state.mask + 1)

    # -- a slice ----------------------------------------------------------------------------
    def begin(self, budget: int) -> dict[str, Any]:
        st = self.state
        if st.full:
            self._grow()
        self._mark = st.insns
        st.limit = st.insns + budget
        st.stopped = 0
        st.block = _NONE
        return {}

    def fault(self, eip: int, at: bool) -> None:
        """An exception was raised at `eip` inside the block entered last (`at`: a fault,
        EIP is the instruction's own, which counts as run, as Unicorn's count does; else a
        software interrupt, EIP is after it): the rest of the block did not run."""
        st = self.state
        if st.block == _NONE:
            return
        start, n = st.block, st.block_insns
        st.block = _NONE
        if start <= eip < start + st.block_size:
            st.insns -= n - self._insns_between(start, eip) - (1 if at else 0)

    def end(self, eip: int, error: bool) -> int:
        """The slice is over, the CPU at `eip`: the instructions it ran (module docstring)."""
        st = self.state
        if st.block != _NONE:
            start, size = st.block, st.block_size
            if st.stopped and eip == start:
                st.insns -= st.block_insns            # the budget stopped it before it ran
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

    def fault(self, eip: int, at: bool) -> None:
        pass

    def end(self, eip: int, error: bool) -> int:
        return self._counter.executed(self._budget)

    def forget(self) -> None:
        pass
