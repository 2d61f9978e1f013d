"""Run statistics: every exit by kind, by instruction class and by guest site.

A plain dataclass; `to_dict()` is what `bt run --stats --json` prints and what the
comparison report (issue 6) consumes. Times are wall-clock nanoseconds spent in the
VMM (inside Unicorn callbacks and between slices), never used for guest decisions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Exit kinds. `trap`: a fault the VMM emulated; `io`: an IN/OUT/INS/OUTS (a #GP exit
#: on hardware with IOPL 0, a hook call in Unicorn); `hypercall`: an INT3 exit from
#: patch code or an int3 patch; `interrupt`: an exception or IRQ injected into the guest.
EXIT_KINDS = ("trap", "io", "hypercall", "interrupt")


@dataclass
class RunStats:
    exits: Counter[str] = field(default_factory=Counter)           #: by kind
    by_class: Counter[str] = field(default_factory=Counter)        #: by bt.isa class name
    by_site: Counter[int] = field(default_factory=Counter)         #: by guest EIP
    class_at: dict[int, str] = field(default_factory=dict)         #: site -> class
    vectors: Counter[int] = field(default_factory=Counter)         #: injected vectors
    io_ports: Counter[int] = field(default_factory=Counter)
    vmm_ns: int = 0          #: wall time inside exit handlers
    vmm_ns_by_kind: Counter[str] = field(default_factory=Counter)
    guest_insns: int = 0     #: guest instructions executed (Unicorn instruction counts)
    virtual_ns: int = 0      #: virtual time at the end of the run
    idle_ns: int = 0         #: virtual time skipped by HLT
    wall_ns: int = 0         #: wall time of the whole run

    def exit(self, kind: str, cls: str | None, site: int) -> None:
        self.exits[kind] += 1
        if cls is not None:
            self.by_class[cls] += 1
            self.class_at[site] = cls
        self.by_site[site] += 1

    @property
    def total_exits(self) -> int:
        return self.exits.total()

    def to_dict(self, symbolize: Callable[[int], str] | None = None) -> dict[str, Any]:
        sym = symbolize or (lambda a: f"{a:#x}")
        return {
            "exits": {k: self.exits.get(k, 0) for k in EXIT_KINDS},
            "total_exits": self.total_exits,
            "by_class": dict(sorted(self.by_class.items(), key=lambda kv: (-kv[1], kv[0]))),
            "by_site": [
                {"address": a, "symbol": sym(a), "class": self.class_at.get(a), "count": n}
                for a, n in sorted(self.by_site.items(), key=lambda kv: (-kv[1], kv[0]))
            ],
            "vectors": {str(v): n for v, n in sorted(self.vectors.items())},
            "io_ports": {f"{p:#x}": n for p, n in sorted(self.io_ports.items())},
            "vmm_ns": self.vmm_ns,
            "vmm_ns_by_kind": dict(self.vmm_ns_by_kind),
            "guest_insns": self.guest_insns,
            "virtual_ns": self.virtual_ns,
            "idle_ns": self.idle_ns,
            "wall_ns": self.wall_ns,
        }

    def counts(self) -> dict[str, Any]:
        """Only the deterministic part (for "two runs give the same counts")."""
        d = self.to_dict()
        for key in ("vmm_ns", "vmm_ns_by_kind", "wall_ns"):
            d.pop(key)
        return d
