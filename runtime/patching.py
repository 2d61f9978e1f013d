"""The seam between the runtime and the patch manager (issue 5).

`runtime` calls a `Patcher`; `patchmgr` implements it and calls nothing in
`runtime` (layers: runtime -> patchmgr -> bt). The run loop (runtime/vm.py):

(a) calls `on_trap(op)` after each trap of a sensitive site, so the patch manager
    can decide to patch it (PATM patched a site the first time it trapped);
(b) on an INT3 executed in patch memory (`bt.layout.PATCH_BASE`..+`PATCH_SIZE`) or
    at a patched guest site, asks `exit_at(address)` (the address of the INT3) for
    the pre-decoded `Operation` and where to resume; the runtime emulates that
    Operation through the same emulator as a trap of its class, then continues at
    `resume`. `exit_at` returns None for an INT3 that is not the patcher's: the
    runtime then delivers #BP to the guest like any guest INT3;
(c) calls `to_guest_eip(eip)` to report a patch-memory EIP as the guest EIP it
    stands for (in frames pushed to the guest and in stop reports).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bt.operation import Operation


@dataclass(frozen=True)
class PatchExit:
    """What an INT3 exit in patch code means: emulate `op`, then continue at `resume`."""

    op: Operation
    resume: int


class Patcher(Protocol):
    def on_trap(self, op: Operation) -> None: ...

    def exit_at(self, address: int) -> PatchExit | None: ...

    def to_guest_eip(self, eip: int) -> int: ...


class NoPatcher:
    """The unpatched VMM: traps are only emulated, no INT3 belongs to a patch."""

    def on_trap(self, op: Operation) -> None:
        return None

    def exit_at(self, address: int) -> PatchExit | None:
        return None

    def to_guest_eip(self, eip: int) -> int:
        return eip
