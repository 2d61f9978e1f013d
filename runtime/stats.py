"""Run statistics: every exit by kind, by instruction class and by guest site.

A plain dataclass; `to_dict()` is what `bt run --stats --json` prints and what the
comparison report (issue 6) consumes. Times are wall-clock nanoseconds spent in the
VMM (inside Unicorn callbacks and between slices), never used for guest decisions.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Exit kinds. `trap`: a fault the VMM emulated; `io`: an IN/OUT/INS/OUTS (a #GP exit
#: on hardware with IOPL 0, a hook call in Unicorn); `hypercall`: an INT3 exit from
#: patch code or an int3 patch; `interrupt`: an exception or IRQ injected into the guest;
#: `paging`: a page fault the guest never sees, taken because the shadow page directory
#: was behind the guest's (runtime/shadowpd.py).
EXIT_KINDS = ("trap", "io", "hypercall", "interrupt", "paging")


@dataclass(frozen=True)
class VmmMove:
    """The VMM area moved in the guest's linear space (runtime/relocate.py)."""

    old: int
    new: int
    why: str
    #: The guest EIP when it moved.
    eip: int


@dataclass
class RunStats:
    #: The one counter the hot path touches: (kind, class, guest EIP) -> exits.
    #: `exits`, `by_class`, `by_site` and `class_at` are views of it.
    hits: dict[tuple[str, str | None, int], int] = field(default_factory=dict)
    exit_count: int = 0      #: sum of `hits`, kept for the virtual clock
    vectors: Counter[int] = field(default_factory=Counter)         #: injected vectors
    io_ports: Counter[int] = field(default_factory=Counter)
    #: Accesses to ports no device claims (the bus logs each port once), by port.
    unknown_ports: Counter[int] = field(default_factory=Counter)
    vmm_ns: int = 0          #: wall time inside exit handlers
    vmm_ns_by_kind: Counter[str] = field(default_factory=Counter)
    guest_insns: int = 0     #: guest instructions executed (Unicorn instruction counts)
    virtual_ns: int = 0      #: virtual time at the end of the run
    idle_ns: int = 0         #: virtual time skipped by HLT
    wall_ns: int = 0         #: wall time of the whole run
    #: Wall time from the start of the host process to the guest's first instruction
    #: (interpreter, imports, loading, scanning, patching, building the machine).
    startup_ns: int = 0
    #: Guest stores into the write-protected VMM area, dropped (runtime/guard.py), and the
    #: first of them as (guest EIP, physical address (== linear in the VMM area), size,
    #: region name from bt.layout.VMM_REGIONS).
    vmm_writes: int = 0
    vmm_writers: list[tuple[int, int, int, str]] = field(default_factory=list)
    #: Times the virtual flags word held bytes neither the VMM nor patch code writes (the
    #: guest wrote the patch-writable state page), and the first such words.
    vflags_corrupted: int = 0
    vflags_bad: list[int] = field(default_factory=list)
    #: Every move of the VMM area, in order.
    vmm_moves: list[VmmMove] = field(default_factory=list)
    #: Guest stores into a page of its GDT or LDT after it loaded them, each followed by a
    #: re-shadow of the descriptors it touched (runtime/tablewatch.py).
    table_writes: int = 0
    #: Instructions guest user code ran at a patched window, from the guest's own bytes
    #: (runtime/userstep.py).
    user_patch_steps: int = 0
    #: Guest RAM pages outside the kernel ELF's code first run (and scanned at CPL 1) while
    #: patching is on (runtime/codewatch.py).
    code_pages_seen: int = 0
    #: Under `bt run --guest-ring 3` only (runtime/ring3/): what ring 3 adds, by cause
    #: ("bounce syscall", "bounce irq", "bounce exception", "bounce iret to user", "view
    #: switches", "view faults" (also counted as `paging` exits), "tlb flushes", "code flushes",
    #: "iret sites").
    ring3: Counter[str] = field(default_factory=Counter)
    #: TLB flushes the VMM made (CR3 loads, INVLPG, shadow entries replaced; under ring 3 also
    #: its view switches). For `bt compare --rings`; not in `to_dict`, whose keys ring 1's
    #: reports and goldens pin.
    tlb_flushes: int = 0

    def exit(self, kind: str, cls: str | None, site: int) -> None:
        key = (kind, cls, site)
        hits = self.hits
        hits[key] = hits.get(key, 0) + 1
        self.exit_count += 1

    @property
    def exits(self) -> Counter[str]:
        """Exits by kind."""
        out: Counter[str] = Counter()
        for (kind, _cls, _site), n in self.hits.items():
            out[kind] += n
        return out

    @property
    def by_class(self) -> Counter[str]:
        """Exits by bt.isa class name (injected interrupts have none)."""
        out: Counter[str] = Counter()
        for (_kind, cls, _site), n in self.hits.items():
            if cls is not None:
                out[cls] += n
        return out

    @property
    def by_site(self) -> Counter[int]:
        """Exits by guest EIP."""
        out: Counter[int] = Counter()
        for (_kind, _cls, site), n in self.hits.items():
            out[site] += n
        return out

    @property
    def class_at(self) -> dict[int, str]:
        return {site: cls for (_k, cls, site) in self.hits if cls is not None}

    @property
    def total_exits(self) -> int:
        return self.exit_count

    def to_dict(self, symbolize: Callable[[int], str] | None = None) -> dict[str, Any]:
        sym = symbolize or (lambda a: f"{a:#x}")
        by_class, by_site, class_at = self.by_class, self.by_site, self.class_at
        exits = self.exits
        return {
            "exits": {k: exits.get(k, 0) for k in EXIT_KINDS},
            "total_exits": self.total_exits,
            "by_class": dict(sorted(by_class.items(), key=lambda kv: (-kv[1], kv[0]))),
            "by_site": [
                {"address": a, "symbol": sym(a), "class": class_at.get(a), "count": n}
                for a, n in sorted(by_site.items(), key=lambda kv: (-kv[1], kv[0]))
            ],
            "vectors": {str(v): n for v, n in sorted(self.vectors.items())},
            "io_ports": {f"{p:#x}": n for p, n in sorted(self.io_ports.items())},
            "unknown_ports": {f"{p:#x}": n for p, n in sorted(self.unknown_ports.items())},
            "vmm_ns": self.vmm_ns,
            "vmm_ns_by_kind": dict(self.vmm_ns_by_kind),
            "guest_insns": self.guest_insns,
            "virtual_ns": self.virtual_ns,
            "idle_ns": self.idle_ns,
            "wall_ns": self.wall_ns,
            "startup_ns": self.startup_ns,
            "vmm_writes": self.vmm_writes,
            "vmm_writers": [{"eip": e, "symbol": sym(e), "address": a, "size": n, "region": r}
                            for e, a, n, r in self.vmm_writers],
            "vflags_corrupted": self.vflags_corrupted,
            "vflags_bad": [f"{w:#010x}" for w in self.vflags_bad],
            "table_writes": self.table_writes,
            "user_patch_steps": self.user_patch_steps,
            "code_pages_seen": self.code_pages_seen,
            "vmm_moves": [{"from": f"{m.old:#010x}", "to": f"{m.new:#010x}", "why": m.why, "eip": m.eip,
                           "symbol": sym(m.eip)} for m in self.vmm_moves],
            # Present only under --guest-ring 3, so ring 1's output stays as it was.
            **({"ring3": dict(sorted(self.ring3.items()))} if self.ring3 else {}),
        }

    def counts(self) -> dict[str, Any]:
        """Only the deterministic part (for "two runs give the same counts")."""
        d = self.to_dict()
        for key in ("vmm_ns", "vmm_ns_by_kind", "wall_ns", "startup_ns"):
            d.pop(key)
        return d


def process_age_ns() -> int:
    """Wall time since this host process started (0 where /proc is missing).

    The kernel records a process's start in clock ticks since boot (proc(5), field 22),
    so this is good to a tick (10 ms at the usual USER_HZ of 100)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        ticks = int(fields[19])            # field 22 counted from 1, after pid and (comm)
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0
    return max(0, time.clock_gettime_ns(time.CLOCK_BOOTTIME) - ticks * 1_000_000_000 // hz)
