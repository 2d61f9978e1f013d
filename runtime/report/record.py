"""What one run of a kernel measured, as the report needs it.

`RunRecord` is the report's own view of a run. The VMM's statistics object may
grow or be renamed; `from_run` (the adapter) is the one place that reads it, so
a change in the runtime changes this module and nothing else in the report.

Records also round-trip through plain JSON (`to_json`/`from_json`): tests keep
recorded runs of the samples as fixtures, and reports can be re-rendered from
them without running anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: The runs a comparison can hold, in the order they are shown. `unpatched` is
#: trap-and-emulate only and is the baseline every reduction is measured from.
BASELINE = "unpatched"
DYNAMIC = "dynamic"
STATIC = "static"
MODES = (BASELINE, DYNAMIC, STATIC)

#: Exit kinds, in display order: `runtime.stats.EXIT_KINDS`, which says what each one is.


@dataclass(frozen=True)
class Site:
    """Exits counted at one guest address in one run."""

    address: int
    cls: str  # the instruction's class in bt.isa ("cli", "out", ...)
    text: str  # the instruction as disassembled ("cli", "out dx, al")
    kind: str  # one of EXIT_KINDS
    count: int


@dataclass(frozen=True)
class Patch:
    """One patch the patch manager made, or refused to make, in one run."""

    address: int
    rule: str  # the patch rule's name
    kind: str  # how the site is rewritten: "jump" (5-byte JMP to patch code), "int3", ...
    size: int  # guest bytes the patch covers (0 when refused)
    status: str  # "active", "refused", or "unpatched" (run, never reached by the scan, not patched)
    reason: str = ""  # why a patch was refused or removed
    text: str = ""  # the instruction at `address`
    start: int | None = None  # first guest byte the patch rewrites, when not `address` (a JMP window)

    @property
    def window(self) -> range:
        """Guest addresses the patch covers: a site inside another site's window stops
        trapping too, although no patch of its own is recorded."""
        start = self.address if self.start is None else self.start
        return range(start, start + self.size)


@dataclass(frozen=True)
class Timing:
    """Seconds measured by one run. `guest` is time spent inside Unicorn running guest
    code, `vmm` time spent handling exits; None when the runtime did not measure it."""

    wall: float
    guest: float | None = None
    vmm: float | None = None


@dataclass(frozen=True)
class RunRecord:
    """Everything the report uses from one run of one kernel in one mode."""

    mode: str
    exit_status: int | None  # what `bt run` would exit with; None if the guest stopped abnormally
    stop_reason: str  # empty when the guest exited normally
    serial: bytes  # everything the guest wrote to its serial port
    exits_by_kind: Mapping[str, int]
    exits_by_class: Mapping[str, int]
    sites: tuple[Site, ...]
    patches: tuple[Patch, ...]
    guest_instructions: int | None
    timing: Timing
    options: Mapping[str, Any] = field(default_factory=dict)  # the run configuration, as given

    @property
    def total_exits(self) -> int:
        return sum(self.exits_by_kind.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "exit_status": self.exit_status,
            "stop_reason": self.stop_reason,
            # latin-1 maps each byte to one code point, so any byte string survives JSON.
            "serial": self.serial.decode("latin-1"),
            "exits_by_kind": dict(self.exits_by_kind),
            "exits_by_class": dict(self.exits_by_class),
            "sites": [vars(s) for s in self.sites],
            "patches": [vars(p) for p in self.patches],
            "guest_instructions": self.guest_instructions,
            "timing": vars(self.timing),
            "options": dict(self.options),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRecord:
        return cls(
            mode=data["mode"],
            exit_status=data["exit_status"],
            stop_reason=data.get("stop_reason", ""),
            serial=data["serial"].encode("latin-1"),
            exits_by_kind=dict(data["exits_by_kind"]),
            exits_by_class=dict(data["exits_by_class"]),
            sites=tuple(Site(**s) for s in data["sites"]),
            patches=tuple(Patch(**p) for p in data["patches"]),
            guest_instructions=data.get("guest_instructions"),
            timing=Timing(**data["timing"]),
            options=dict(data.get("options", {})),
        )
