"""The fast exits: the guest kernel's CLI, STI and RDTSC traps emulated in C (issue 14).

runtime/native/fastexit.c is the VMM's interrupt hook; it hands every exception it does not
take to `Traps.on_intr`, untouched. It takes a #GP of CLI, STI or RDTSC at CPL 1 at a site
this module registered, and does there what the Python path does (the virtual IF or the
virtual TSC, EIP, the block clock's count, Unicorn's old_exception and EIP-sync flag, the
exit's statistics), at a thirtieth of the cost. The C file's comment lists what each side guarantees.

The division of work:

* `register` (from `Traps._trap`, after Python handled a trap): the site becomes fast once
  the patch manager says a trap there will from now on only be counted (`Patcher.quiet`:
  the site was refused, or the run patches nothing).
* `invalidate` (the patch manager's `on_change`): every site is forgotten when a patch or
  a refusal changes, so a registered site never hides a patch decision or a new resume
  address.
* `enter` (at the start of every Python hook): fold what C counted into `RunStats` and
  the trap history, in order.
* `leave` (at the end of every Python hook) and `begin_slice`: whether an interrupt waits,
  asked of the interrupt controller (the hook may have changed that; nothing else does
  until the next hook or the slice's end, where devices tick). C takes an STI only when
  none waits. Once an RDTSC site is registered, also virtual time's base (a HLT in a hook
  moves it).
* `hold`/`release`: whether C may take exits at all (`holds` lists the reasons it may not).
"""

from __future__ import annotations

import ctypes
from collections import deque
from collections.abc import Callable
from typing import Any

from unicorn import UC_HOOK_INTR, Uc
from unicorn import x86_const as ux
from unicorn.unicorn_py3.unicorn import uclib

from runtime.clock import BlockClock, native_module
from runtime.config import NS_PER_EXIT, NS_PER_INSN
from runtime.engine import HOOK_INTR, hook_native
from runtime.stats import RunStats

#: Site kinds (fastexit.c KIND_*), by bt.isa class.
KINDS = ("cli", "sti", "rdtsc")
_OPCODES = {"cli": b"\xfa", "sti": b"\xfb", "rdtsc": b"\x0f\x31"}
RING = 64
#: Sites the table holds at most (half its slots: probes stay short).
_SLOTS = 1 << 12


class _Site(ctypes.Structure):
    _fields_ = [("eip", ctypes.c_uint32), ("kind", ctypes.c_uint32), ("count", ctypes.c_uint32),
                ("dirty", ctypes.c_uint32), ("block", ctypes.c_uint64), ("between", ctypes.c_uint64)]


class _State(ctypes.Structure):
    """runtime/native/fastexit.c `fast_exits`, field for field."""

    _fields_ = [
        ("enabled", ctypes.c_uint32), ("irq_hint", ctypes.c_uint32), ("mask", ctypes.c_uint32),
        ("ndirty", ctypes.c_uint32), ("sites", ctypes.c_void_p), ("dirty", ctypes.c_void_p),
        ("ring_n", ctypes.c_uint32), ("pad", ctypes.c_uint32),
        ("ring_eip", ctypes.c_uint32 * RING), ("ring_kind", ctypes.c_uint32 * RING),
        ("exits", ctypes.c_uint64), ("ns", ctypes.c_uint64),
        ("clock", ctypes.c_void_p), ("python", ctypes.c_void_p), ("python_data", ctypes.c_void_p),
        ("reg_read", ctypes.c_void_p), ("reg_write", ctypes.c_void_p),
        ("reg_eip", ctypes.c_int32), ("reg_cs", ctypes.c_int32), ("reg_eflags", ctypes.c_int32),
        ("pad2", ctypes.c_int32),
        ("old_exception", ctypes.c_void_p), ("error_code", ctypes.c_void_p), ("is_int", ctypes.c_void_p),
        ("skip_sync", ctypes.c_void_p), ("vflags", ctypes.c_void_p),
        ("time_base", ctypes.c_int64), ("ns_per_insn", ctypes.c_uint64), ("ns_per_exit", ctypes.c_uint64),
        ("reg_eax", ctypes.c_int32), ("reg_edx", ctypes.c_int32),
    ]


def _slot(eip: int, mask: int) -> int:
    return (((eip ^ (eip >> 15)) * 0x9E3779B1) & 0xFFFFFFFF) & mask


class FastExits:
    """The C interrupt hook in front of `on_intr` and its state (module docstring)."""

    def __init__(self, uc: Uc, on_intr: Callable[[int, int, Any], None], clock: BlockClock,
                 fields: tuple[int, int, int], skip_sync: int, vflags: int,
                 stats: RunStats, last: deque[tuple[str, str, int]], count_traps: Callable[[int, int], None],
                 latch_cleared: Callable[[int], None], irq_waiting: Callable[[], bool],
                 time_base: Callable[[], int]) -> None:
        native = native_module()
        assert native is not None and native.fast_state_size() == ctypes.sizeof(_State)
        self.stats = stats
        self.last = last
        self._count_traps = count_traps
        self._latch_cleared = latch_cleared
        self._irq_waiting = irq_waiting
        self._time_base = time_base
        #: An RDTSC site is registered: `leave` keeps `time_base` current.
        self._timed = False
        #: Why C may not take exits now (`hold`/`release`); it may when this is empty.
        self.holds: set[str] = set()
        self._sites = (_Site * _SLOTS)()
        self._dirty = (ctypes.c_uint32 * _SLOTS)()
        self._registered: set[int] = set()
        st = self.state = _State()
        st.mask = _SLOTS - 1
        st.sites = ctypes.addressof(self._sites)
        st.dirty = ctypes.addressof(self._dirty)
        st.irq_hint = 1
        st.clock = ctypes.addressof(clock.state)
        self._python = HOOK_INTR(on_intr)          # kept alive with this object
        st.python = ctypes.cast(self._python, ctypes.c_void_p)
        st.reg_read = ctypes.cast(uclib.uc_reg_read, ctypes.c_void_p)
        st.reg_write = ctypes.cast(uclib.uc_reg_write, ctypes.c_void_p)
        st.reg_eip, st.reg_cs, st.reg_eflags = ux.UC_X86_REG_EIP, ux.UC_X86_REG_CS, ux.UC_X86_REG_EFLAGS
        st.old_exception, st.error_code, st.is_int = fields
        st.skip_sync = skip_sync
        st.vflags = vflags
        st.ns_per_insn, st.ns_per_exit = NS_PER_INSN, NS_PER_EXIT
        st.reg_eax, st.reg_edx = ux.UC_X86_REG_EAX, ux.UC_X86_REG_EDX
        hook_native(uc, UC_HOOK_INTR, native.fast_hook_address(), ctypes.addressof(st))
        #: Exits C took over the whole run.
        self.taken = 0
        #: The patcher whose `quiet` the registered sites rely on (`begin_slice`).
        self._patcher: Any = None

    # -- when C may take exits ------------------------------------------------------------
    def hold(self, why: str) -> None:
        self.holds.add(why)
        self.state.enabled = 0

    def release(self, why: str) -> None:
        self.holds.discard(why)
        if not self.holds:
            self.state.enabled = 1

    def begin_slice(self, patcher: Any) -> None:
        """Before a slice: whether an interrupt waits, and the run's patcher, whose changes
        must reach `invalidate` (a patcher swapped in since, as tests do, makes every site
        Python's again)."""
        self.leave()
        if patcher is not self._patcher:
            self.invalidate()
            self._patcher = patcher
            if hasattr(patcher, "on_change"):
                patcher.on_change = self.invalidate

    # -- sites ----------------------------------------------------------------------------
    def register(self, eip: int, cls: str, raw: bytes, patcher: Any) -> None:
        """After Python emulated `cls` at `eip` and `patcher` said the site stays as it is."""
        if patcher is not self._patcher or eip in self._registered or not eip or _OPCODES.get(cls) != raw:
            return
        if 2 * len(self._registered) >= _SLOTS:
            return
        mask = _SLOTS - 1
        i = _slot(eip, mask)
        sites = self._sites
        while sites[i].eip:
            i = (i + 1) & mask
        site = sites[i]
        site.kind = KINDS.index(cls)
        site.count = site.dirty = 0
        site.block = 0xFFFFFFFFFFFFFFFF
        site.between = 0
        site.eip = eip            # last: the entry is complete before C can find it
        self._registered.add(eip)
        if cls == "rdtsc":
            self._timed = True

    def invalidate(self) -> None:
        """The patch manager changed a patch or a refusal: every site goes back to Python."""
        if not self._registered:
            return
        self.fold()
        ctypes.memset(self._sites, 0, ctypes.sizeof(self._sites))
        self._registered.clear()

    # -- folding C's counts into the run's ------------------------------------------------
    def enter(self) -> None:
        """At the start of a Python hook."""
        if self.state.exits:
            self.fold()

    def leave(self) -> None:
        """At the end of a Python hook (0.4 µs: the interrupt controller is asked)."""
        st = self.state
        st.irq_hint = 1 if self._irq_waiting() else 0
        if self._timed:
            st.time_base = self._time_base()

    def fold(self) -> None:
        st = self.state
        n = int(st.exits)
        if not n:
            return
        hits = self.stats.hits
        sites = self._sites
        dirty = self._dirty
        for k in range(st.ndirty):
            site = sites[dirty[k]]
            key = ("trap", KINDS[site.kind], int(site.eip))
            hits[key] = hits.get(key, 0) + site.count
            self._count_traps(int(site.eip), int(site.count))
            site.count = 0
            site.dirty = 0
        st.ndirty = 0
        ring = int(st.ring_n)
        for j in range(max(0, ring - RING), ring):
            self.last.append(("trap", KINDS[st.ring_kind[j % RING]], int(st.ring_eip[j % RING])))
        st.ring_n = 0
        ns = int(st.ns)
        self.stats.exit_count += n
        self.stats.vmm_ns += ns
        self.stats.vmm_ns_by_kind["trap"] += ns
        self._latch_cleared(n)
        self.taken += n
        st.exits = 0
        st.ns = 0
